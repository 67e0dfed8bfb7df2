// Sha256: FIPS 180-2 vectors, streaming == one-shot, HexOfFile, IsSha256Hex.
#include "tests/support/temp_dir.h"
#include "common/sha256.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <fstream>
#include <random>
#include <string>

#include "common/env.h"

namespace berth {
namespace {

constexpr const char* kEmpty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
constexpr const char* kAbc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
constexpr const char* kTwoBlock = "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1";
constexpr const char* kMillionA = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";

using ::berth::testing::TempDir;

using ::berth::testing::RandomBytes;

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

TEST(Sha256Test, KnownVectors) {
  EXPECT_EQ(Sha256::HexOf(""), kEmpty);
  EXPECT_EQ(Sha256::HexOf("abc"), kAbc);
  EXPECT_EQ(Sha256::HexOf("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"), kTwoBlock);
  EXPECT_EQ(Sha256::HexOf(std::string(1'000'000, 'a')), kMillionA);
}

TEST(Sha256Test, EmbeddedNulBytesAreHashed) {
  std::string with_nul("a\0b", 3);
  EXPECT_NE(Sha256::HexOf(with_nul), Sha256::HexOf("a"));
  EXPECT_NE(Sha256::HexOf(with_nul), Sha256::HexOf("ab"));
  EXPECT_NE(Sha256::HexOf(std::string(1, '\0')), kEmpty);
}

TEST(Sha256Test, NoUpdateGivesEmptyDigest) {
  Sha256 h;
  EXPECT_EQ(h.FinishHex(), kEmpty);
}

TEST(Sha256Test, StreamingInPiecesEqualsOneShot) {
  const std::string data = RandomBytes(200'003, 7);
  const std::string expected = Sha256::HexOf(data);
  // Piece sizes around the 64-byte block boundary and larger ones.
  for (size_t piece : {1u, 3u, 63u, 64u, 65u, 4096u, 65537u}) {
    Sha256 h;
    for (size_t off = 0; off < data.size(); off += piece) h.Update(std::string_view(data).substr(off, piece));
    EXPECT_EQ(h.FinishHex(), expected) << "piece size " << piece;
  }
  // Empty updates change nothing.
  Sha256 h;
  h.Update("");
  h.Update("ab");
  h.Update("");
  h.Update("c");
  EXPECT_EQ(h.FinishHex(), kAbc);
}

TEST(Sha256Test, MillionAStreamed) {
  Sha256 h;
  const std::string chunk(1000, 'a');
  for (int i = 0; i < 1000; ++i) h.Update(chunk);
  EXPECT_EQ(h.FinishHex(), kMillionA);
}

TEST(Sha256Test, DigestIsLowercaseHex64) {
  for (const char* s : {"", "abc", "x"}) {
    std::string d = Sha256::HexOf(s);
    EXPECT_EQ(d.size(), 64u);
    EXPECT_TRUE(IsSha256Hex(d)) << d;
  }
}

TEST(Sha256Test, HexOfFile) {
  TempDir tmp;
  ASSERT_FALSE(tmp.path().empty());
  const std::string empty = tmp.path() + "/empty";
  WriteFile(empty, "");
  auto e = Sha256::HexOfFile(empty);
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  EXPECT_EQ(*e, kEmpty);

  const std::string abc = tmp.path() + "/abc";
  WriteFile(abc, "abc");
  auto a = Sha256::HexOfFile(abc);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(*a, kAbc);

  // Larger than the 1 MiB read buffer and not a multiple of it.
  const std::string big_data = RandomBytes((3u << 20) + 17, 11);
  const std::string big = tmp.path() + "/big";
  WriteFile(big, big_data);
  auto b = Sha256::HexOfFile(big);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(*b, Sha256::HexOf(big_data));

  // Exactly 1 MiB (the buffer size): the final empty read must not matter.
  const std::string exact_data = RandomBytes(1u << 20, 12);
  const std::string exact = tmp.path() + "/exact";
  WriteFile(exact, exact_data);
  auto x = Sha256::HexOfFile(exact);
  ASSERT_TRUE(x.ok());
  EXPECT_EQ(*x, Sha256::HexOf(exact_data));
}

TEST(Sha256Test, HexOfMissingFileIsNotFound) {
  auto r = Sha256::HexOfFile("/nonexistent/berth/sha256/file");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kNotFound);
}

TEST(Sha256Test, HexOfDirectoryFails) {

  TempDir tmp;
  ASSERT_FALSE(tmp.path().empty());
  auto r = Sha256::HexOfFile(tmp.path());
  EXPECT_FALSE(r.ok()) << "a directory hashed to " << (r.ok() ? *r : "");
}

TEST(Sha256Test, IsSha256Hex) {
  EXPECT_TRUE(IsSha256Hex(kEmpty));
  EXPECT_TRUE(IsSha256Hex(std::string(64, '0')));
  EXPECT_TRUE(IsSha256Hex(std::string(64, 'f')));
  EXPECT_FALSE(IsSha256Hex(""));
  EXPECT_FALSE(IsSha256Hex(std::string(63, 'a')));
  EXPECT_FALSE(IsSha256Hex(std::string(65, 'a')));
  EXPECT_FALSE(IsSha256Hex(std::string(64, 'A')));  // uppercase is not canonical
  EXPECT_FALSE(IsSha256Hex(std::string(63, 'a') + "g"));
  EXPECT_FALSE(IsSha256Hex(std::string(63, 'a') + " "));
  EXPECT_FALSE(IsSha256Hex("sha256:" + std::string(57, 'a')));
  std::string with_nul(64, 'a');
  with_nul[10] = '\0';
  EXPECT_FALSE(IsSha256Hex(with_nul));
  std::string upper_one = kAbc;
  upper_one[0] = 'B';
  EXPECT_FALSE(IsSha256Hex(upper_one));
}

}  // namespace
}  // namespace berth
