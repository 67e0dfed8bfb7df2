// InspectImage against crafted hostile headers and against real images made
// by qemu-img and mke2fs.
#include "tests/support/temp_dir.h"
#include "images/image_format.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace berth::images {
namespace {

using ::berth::testing::TempDir;

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

void PutBe32(std::string& b, size_t off, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[off + i] = static_cast<char>((v >> (24 - 8 * i)) & 0xff);
}
void PutBe64(std::string& b, size_t off, uint64_t v) {
  PutBe32(b, off, static_cast<uint32_t>(v >> 32));
  PutBe32(b, off + 4, static_cast<uint32_t>(v));
}

struct Qcow2Header {
  uint32_t version = 3;
  uint64_t backing_file_offset = 0;
  uint32_t cluster_bits = 16;
  uint64_t virtual_size = uint64_t{1} << 30;
  uint32_t crypt_method = 0;
  uint64_t incompatible = 0;
  // Extra header extensions (type, payload) placed after the header.
  std::vector<std::pair<uint32_t, std::string>> extensions;
};

// One cluster (64 KiB) holding a qcow2 header: enough for the header parser,
// not a usable image (qemu-img is faked for the crafted cases).
std::string MakeQcow2(const Qcow2Header& h) {
  std::string b(65536, '\0');
  std::memcpy(b.data(), "QFI\xfb", 4);
  PutBe32(b, 4, h.version);
  PutBe64(b, 8, h.backing_file_offset);
  if (h.backing_file_offset) {
    PutBe32(b, 16, 9);
    std::memcpy(b.data() + h.backing_file_offset, "/etc/passwd", 11);
  }
  PutBe32(b, 20, h.cluster_bits);
  PutBe64(b, 24, h.virtual_size);
  PutBe32(b, 32, h.crypt_method);
  size_t ext = 72;
  if (h.version == 3) {
    PutBe64(b, 72, h.incompatible);
    PutBe32(b, 96, 4);    // refcount_order
    PutBe32(b, 100, 104);  // header_length
    ext = 104;
  }
  for (const auto& [type, payload] : h.extensions) {
    PutBe32(b, ext, type);
    PutBe32(b, ext + 4, static_cast<uint32_t>(payload.size()));
    std::memcpy(b.data() + ext + 8, payload.data(), payload.size());
    ext += 8 + (payload.size() + 7) / 8 * 8;
  }
  return b;
}

// The real Env, except that qemu-img answers with a canned result.
class FakeQemuImgEnv : public Env {
 public:
  int64_t NowUnixMs() override { return real_->NowUnixMs(); }
  int64_t MonotonicMs() override { return real_->MonotonicMs(); }
  void SleepMs(int64_t ms) override { real_->SleepMs(ms); }
  Result<CommandResult> Run(const std::vector<std::string>& argv, std::string_view input,
                            int64_t timeout_ms) override {
    if (!argv.empty() && argv[0] == "qemu-img") {
      calls.push_back(argv);
      last_timeout_ms = timeout_ms;
      if (!run_status.ok()) return run_status;
      return result;
    }
    return real_->Run(argv, input, timeout_ms);
  }
  Result<std::string> ReadFile(const std::string& path) override { return real_->ReadFile(path); }
  Status WriteFileAtomic(const std::string& path, std::string_view data, int mode) override {
    return real_->WriteFileAtomic(path, data, mode);
  }
  bool Exists(const std::string& path) override { return real_->Exists(path); }
  Status RemoveFile(const std::string& path) override { return real_->RemoveFile(path); }
  Status RemoveTree(const std::string& path) override { return real_->RemoveTree(path); }
  Status CreateDirs(const std::string& path, int mode) override { return real_->CreateDirs(path, mode); }
  Status Rename(const std::string& from, const std::string& to) override { return real_->Rename(from, to); }
  Result<uint64_t> FileSize(const std::string& path) override { return real_->FileSize(path); }

  void SayQcow2(uint64_t virtual_size, const std::string& extra = "") {
    result.exit_code = 0;
    result.out = "{\"virtual-size\": " + std::to_string(virtual_size) +
                 ", \"filename\": \"x\", \"format\": \"qcow2\"" + extra + "}";
  }

  std::vector<std::vector<std::string>> calls;
  int64_t last_timeout_ms = 0;
  CommandResult result;
  Status run_status;

 private:
  Env* real_ = Env::Default();
};

void ExpectRejected(const Result<ImageInfo>& r, const std::string& needle) {
  ASSERT_FALSE(r.ok()) << "accepted, expected rejection mentioning: " << needle;
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << r.status().ToString();
  EXPECT_EQ(r.status().field(), "image");
  EXPECT_NE(r.status().message().find(needle), std::string::npos)
      << "message '" << r.status().message() << "' does not mention '" << needle << "'";
}

bool Sh(const std::vector<std::string>& argv) {
  auto r = Env::Default()->Run(argv);
  return r.ok() && r->exit_code == 0;
}

class ImageFormatTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_FALSE(dir_.path().empty()); }
  std::string Crafted(const std::string& name, const Qcow2Header& h) {
    std::string p = dir_.File(name);
    WriteFile(p, MakeQcow2(h));
    return p;
  }
  TempDir dir_;
  FakeQemuImgEnv env_;
};

// ---------------------------------------------------------------- crafted qcow2

TEST_F(ImageFormatTest, CraftedV2HeaderAcceptedAfterQemuImgCrossCheck) {
  Qcow2Header h;
  h.version = 2;
  std::string p = Crafted("v2.qcow2", h);
  env_.SayQcow2(h.virtual_size);
  auto r = InspectImage(&env_, p);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->format, "qcow2");
  EXPECT_EQ(r->virtual_size_bytes, h.virtual_size);
  EXPECT_EQ(r->size_bytes, 65536u);
  EXPECT_EQ(r->filesystem, "");
  ASSERT_EQ(env_.calls.size(), 1u);
  const auto& argv = env_.calls[0];
  EXPECT_EQ(argv[1], "info");
  EXPECT_NE(std::find(argv.begin(), argv.end(), "--output=json"), argv.end());
  auto f = std::find(argv.begin(), argv.end(), "-f");
  ASSERT_NE(f, argv.end());
  EXPECT_EQ(*(f + 1), "qcow2");
  EXPECT_EQ(argv.back(), p);
  EXPECT_GT(env_.last_timeout_ms, 0);
  EXPECT_LE(env_.last_timeout_ms, 120'000);
}

TEST_F(ImageFormatTest, CraftedV3HeaderAccepted) {
  Qcow2Header h;
  h.incompatible = 1;  // dirty bit: known, harmless
  h.extensions.push_back({0x6803f857, std::string(48, 'x')});  // feature name table
  std::string p = Crafted("v3.qcow2", h);
  env_.SayQcow2(h.virtual_size);
  auto r = InspectImage(&env_, p);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->virtual_size_bytes, h.virtual_size);
}

TEST_F(ImageFormatTest, BackingFileRejectedBeforeRunningQemuImg) {
  for (uint32_t version : {2u, 3u}) {
    Qcow2Header h;
    h.version = version;
    h.backing_file_offset = 512;
    std::string p = Crafted("backed" + std::to_string(version), h);
    env_.SayQcow2(h.virtual_size);
    ExpectRejected(InspectImage(&env_, p), "backing file");
  }
  EXPECT_TRUE(env_.calls.empty()) << "qemu-img must never see an image with a backing file";
}

TEST_F(ImageFormatTest, ExternalDataFileBitRejected) {
  Qcow2Header h;
  h.incompatible = 1u << 2;
  env_.SayQcow2(h.virtual_size);
  ExpectRejected(InspectImage(&env_, Crafted("datafile.qcow2", h)), "external data file");
  EXPECT_TRUE(env_.calls.empty());
}

TEST_F(ImageFormatTest, ExternalDataFileNameExtensionRejected) {
  Qcow2Header h;
  h.extensions.push_back({0x44415441, "/etc/shadow"});
  env_.SayQcow2(h.virtual_size);
  ExpectRejected(InspectImage(&env_, Crafted("dataext.qcow2", h)), "external data file");
}

TEST_F(ImageFormatTest, UnknownIncompatibleBitRejected) {
  for (int bit : {5, 17, 63}) {
    Qcow2Header h;
    h.incompatible = uint64_t{1} << bit;
    env_.SayQcow2(h.virtual_size);
    ExpectRejected(InspectImage(&env_, Crafted("unknown" + std::to_string(bit), h)), "unknown incompatible");
  }
}

TEST_F(ImageFormatTest, CorruptBitRejected) {
  Qcow2Header h;
  h.incompatible = 1u << 1;
  env_.SayQcow2(h.virtual_size);
  ExpectRejected(InspectImage(&env_, Crafted("corrupt.qcow2", h)), "corrupt");
}

TEST_F(ImageFormatTest, EncryptedRejected) {
  for (uint32_t version : {2u, 3u}) {
    Qcow2Header h;
    h.version = version;
    h.crypt_method = version == 2 ? 1 : 2;  // AES, LUKS
    env_.SayQcow2(h.virtual_size);
    ExpectRejected(InspectImage(&env_, Crafted("enc" + std::to_string(version), h)), "encrypted");
  }
  Qcow2Header h;
  h.extensions.push_back({0x0537be77, std::string(16, '\0')});
  ExpectRejected(InspectImage(&env_, Crafted("fde.qcow2", h)), "encryption");
}

TEST_F(ImageFormatTest, SanityLimitsEnforced) {
  Qcow2Header h;
  h.virtual_size = (uint64_t{1} << 40) + 512;
  ExpectRejected(InspectImage(&env_, Crafted("huge.qcow2", h)), "1 TiB");
  h = {};
  h.cluster_bits = 22;
  ExpectRejected(InspectImage(&env_, Crafted("cb22.qcow2", h)), "cluster_bits");
  h.cluster_bits = 8;
  ExpectRejected(InspectImage(&env_, Crafted("cb8.qcow2", h)), "cluster_bits");
  h = {};
  h.version = 1;
  ExpectRejected(InspectImage(&env_, Crafted("v1.qcow", h)), "version 1");
  h.version = 4;
  ExpectRejected(InspectImage(&env_, Crafted("v4.qcow2", h)), "version 4");
  WriteFile(dir_.File("short.qcow2"), std::string("QFI\xfb\0\0\0\3", 8));
  ExpectRejected(InspectImage(&env_, dir_.File("short.qcow2")), "truncated");
  EXPECT_TRUE(env_.calls.empty());
}

TEST_F(ImageFormatTest, UnterminatedExtensionsRejected) {
  Qcow2Header h;
  std::string b = MakeQcow2(h);
  // An extension whose length runs past the first cluster.
  PutBe32(b, 104, 0x12345678);
  PutBe32(b, 108, 0xfffffff0);
  WriteFile(dir_.File("ext.qcow2"), b);
  ExpectRejected(InspectImage(&env_, dir_.File("ext.qcow2")), "header extensions");
}

TEST_F(ImageFormatTest, QemuImgVerdictIsCrossChecked) {
  Qcow2Header h;
  std::string p = Crafted("x.qcow2", h);

  env_.SayQcow2(h.virtual_size, ", \"backing-filename\": \"/etc/passwd\"");
  ExpectRejected(InspectImage(&env_, p), "backing file");

  env_.SayQcow2(h.virtual_size,
                ", \"format-specific\": {\"type\": \"qcow2\", \"data\": {\"data-file\": \"/dev/sda\"}}");
  ExpectRejected(InspectImage(&env_, p), "external data file");

  env_.SayQcow2(h.virtual_size + 512);
  ExpectRejected(InspectImage(&env_, p), "virtual size");

  env_.result = {1, "", "qemu-img: Could not open 'x': Image is not in qcow2 format\n"};
  ExpectRejected(InspectImage(&env_, p), "Image is not in qcow2 format");

  env_.result = {0, "not json", ""};
  EXPECT_EQ(InspectImage(&env_, p).status().code(), Code::kInternal);

  env_.run_status = Status::Unavailable("cannot run 'qemu-img': No such file or directory");
  EXPECT_EQ(InspectImage(&env_, p).status().code(), Code::kUnavailable);
  env_.run_status = Status::DeadlineExceeded("'qemu-img' did not finish");
  EXPECT_EQ(InspectImage(&env_, p).status().code(), Code::kDeadlineExceeded);
}

// ------------------------------------------------------------- real qcow2 files

TEST_F(ImageFormatTest, QemuImgCreatedV3AndV2Accepted) {
  std::string v3 = dir_.File("clean.qcow2");
  std::string v2 = dir_.File("clean-v2.qcow2");
  ASSERT_TRUE(Sh({"qemu-img", "create", "-q", "-f", "qcow2", v3, "64M"}));
  ASSERT_TRUE(Sh({"qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", v2, "3G"}));
  auto r = InspectImage(Env::Default(), v3);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->format, "qcow2");
  EXPECT_EQ(r->virtual_size_bytes, 64u * 1024 * 1024);
  EXPECT_GT(r->size_bytes, 0u);
  r = InspectImage(Env::Default(), v2);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->virtual_size_bytes, uint64_t{3} << 30);
}

TEST_F(ImageFormatTest, QemuImgCreatedWithBackingFileRejected) {
  std::string base = dir_.File("base.raw");
  std::string top = dir_.File("top.qcow2");
  ASSERT_TRUE(Sh({"qemu-img", "create", "-q", "-f", "raw", base, "16M"}));
  ASSERT_TRUE(Sh({"qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", top}));
  ExpectRejected(InspectImage(Env::Default(), top), "backing file");
}

TEST_F(ImageFormatTest, QemuImgCreatedWithDataFileRejected) {
  std::string img = dir_.File("img.qcow2");
  ASSERT_TRUE(Sh({"qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file=" + dir_.File("data.raw"), img, "16M"}));
  ExpectRejected(InspectImage(Env::Default(), img), "external data file");
}

TEST_F(ImageFormatTest, RelativePathsCannotBecomeQemuProtocols) {
  Qcow2Header h;
  std::string p = Crafted("nbd:localhost:10809", h);
  env_.SayQcow2(h.virtual_size);
  std::string cwd = std::filesystem::current_path().string();
  std::filesystem::current_path(dir_.path());
  auto r = InspectImage(&env_, "nbd:localhost:10809");
  std::filesystem::current_path(cwd);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(env_.calls.at(0).back(), "./nbd:localhost:10809");
  EXPECT_EQ(SafePathArg("/abs/x"), "/abs/x");
  EXPECT_EQ(SafePathArg("-rf"), "./-rf");
}

// ---------------------------------------------------------------------- raw

TEST_F(ImageFormatTest, RawExtFilesystemsAccepted) {
  for (const char* type : {"ext4", "ext3", "ext2"}) {
    std::string p = dir_.File(std::string("fs.") + type);
    ASSERT_TRUE(Sh({"mke2fs", "-q", "-t", type, "-F", p, "8M"})) << type;
    auto r = InspectImage(Env::Default(), p);
    ASSERT_TRUE(r.ok()) << type << ": " << r.status().ToString();
    EXPECT_EQ(r->format, "raw");
    EXPECT_EQ(r->filesystem, type);
    EXPECT_EQ(r->size_bytes, 8u << 20);
    EXPECT_EQ(r->virtual_size_bytes, 8u << 20);
  }
}

TEST_F(ImageFormatTest, RawExtWithOddSizeOrTruncationRejected) {
  std::string p = dir_.File("fs.ext4");
  ASSERT_TRUE(Sh({"mke2fs", "-q", "-t", "ext4", "-F", p, "8M"}));
  std::filesystem::resize_file(p, (8u << 20) + 100);
  ExpectRejected(InspectImage(Env::Default(), p), "multiple of 512");
  std::filesystem::resize_file(p, 4u << 20);
  ExpectRejected(InspectImage(Env::Default(), p), "truncated");
}

// ----------------------------------------------------------- everything else

TEST_F(ImageFormatTest, NonImagesRejectedNamingWhatWasFound) {
  std::mt19937 rng(42);
  std::string random(1 << 20, '\0');
  for (auto& c : random) c = static_cast<char>(rng());
  random[510] = 0;  // no accidental MBR signature

  std::string vmdk =
      "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n"
      "RW 2048 FLAT \"/etc/shadow\" 0\n";
  std::string vhd = "conectix" + std::string(4096, '\0');
  std::string vmdk_sparse = "KDMV" + std::string(4096, '\0');
  std::string iso(64 * 1024, '\0');
  std::memcpy(iso.data() + 0x8001, "CD001", 5);
  std::string tar(10240, '\0');
  std::memcpy(tar.data(), "hello.txt", 9);
  std::memcpy(tar.data() + 257, "ustar", 5);
  std::string vdi(4096, '\0');
  std::memcpy(vdi.data(), "<<< Oracle VM VirtualBox Disk Image >>>\n", 40);
  std::string mbr(1 << 20, '\0');
  mbr[510] = '\x55';
  mbr[511] = '\xaa';

  struct Case {
    std::string name, data, needle;
  };
  std::vector<Case> cases = {
      {"random.bin", random, "unrecognized data"},
      {"empty.img", "", "empty file"},
      {"desc.vmdk", vmdk, "VMDK descriptor"},
      {"sparse.vmdk", vmdk_sparse, "VMDK"},
      {"disk.vhd", vhd, "VHD"},
      {"disk.iso", iso, "ISO 9660"},
      {"root.tar", tar, "tar archive"},
      {"disk.vdi", vdi, "VDI"},
      {"disk.mbr", mbr, "MBR"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    WriteFile(dir_.File(c.name), c.data);
    auto r = InspectImage(&env_, dir_.File(c.name));
    ExpectRejected(r, "not a disk image");
    ExpectRejected(r, c.needle);
  }
  // The VMDK message says why descriptors are dangerous.
  auto r = InspectImage(&env_, dir_.File("desc.vmdk"));
  ExpectRejected(r, "host files");
  EXPECT_TRUE(env_.calls.empty());
}

TEST_F(ImageFormatTest, VmdkDescriptorWithExtSuperblockStillRejected) {
  // A polyglot: descriptor text up front, ext magic at 1080.
  std::string p = dir_.File("fs.ext4");
  ASSERT_TRUE(Sh({"mke2fs", "-q", "-t", "ext4", "-F", p, "8M"}));
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  std::string desc = "# Disk DescriptorFile\nRW 2048 FLAT \"/etc/shadow\" 0\n";
  f.write(desc.data(), static_cast<std::streamsize>(desc.size()));
  f.close();
  ExpectRejected(InspectImage(Env::Default(), p), "VMDK descriptor");
}

TEST_F(ImageFormatTest, MissingFileAndDirectory) {
  EXPECT_EQ(InspectImage(&env_, dir_.File("nope")).status().code(), Code::kNotFound);
  ExpectRejected(InspectImage(&env_, dir_.path()), "not a regular file");
}

}  // namespace
}  // namespace berth::images
