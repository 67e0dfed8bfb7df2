#include "images/pipelined_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "common/sha256.h"

namespace berth::images {
namespace {

class PipelinedWriterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/pipelined-writer-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/out";
  }
  void TearDown() override { std::system(("rm -rf " + dir_).c_str()); }

  std::string ReadBack() {
    std::ifstream in(path_, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  // Deterministic bytes that differ from buffer to buffer.
  static std::string Pattern(size_t n) {
    std::string s(n, '\0');
    uint32_t x = 12345;
    for (size_t i = 0; i < n; ++i) {
      x = x * 1103515245 + 12345;
      s[i] = static_cast<char>(x >> 24);
    }
    return s;
  }

  std::string dir_, path_;
};

TEST_F(PipelinedWriterTest, WritesAndHashesAStreamLongerThanTheBuffers) {
  const std::string data = Pattern(3 * 1000 * 1000 + 17);
  int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0);
  Sha256 hash;
  {
    // Small buffers and a ring of 2, so the caller waits for the threads many times.
    PipelinedWriter w(fd, 0, &hash, "test write", 64 * 1024, 2);
    size_t off = 0, step = 1;
    while (off < data.size()) {
      size_t n = std::min(data.size() - off, step);
      ASSERT_TRUE(w.Append(std::string_view(data).substr(off, n)).ok());
      off += n;
      step = step * 3 % 100'003 + 1;  // odd sizes, some larger than a buffer
    }
    ASSERT_TRUE(w.Flush().ok());
    EXPECT_EQ(w.appended(), data.size());
  }
  ::close(fd);
  EXPECT_EQ(ReadBack(), data);
  EXPECT_EQ(hash.FinishHex(), Sha256::HexOf(data));
}

TEST_F(PipelinedWriterTest, AppendsAtTheGivenOffsetAndCanFlushRepeatedly) {
  const std::string head = "already here:";
  {
    std::ofstream out(path_, std::ios::binary);
    out << head;
  }
  int fd = ::open(path_.c_str(), O_WRONLY | O_APPEND);
  ASSERT_GE(fd, 0);
  const std::string a = Pattern(200'000), b = "tail";
  {
    PipelinedWriter w(fd, head.size(), /*hash=*/nullptr, "test write", 32 * 1024, 3);
    ASSERT_TRUE(w.Append(a).ok());
    ASSERT_TRUE(w.Flush().ok());
    ASSERT_TRUE(w.Append(b).ok());
    ASSERT_TRUE(w.Flush().ok());
  }
  ::close(fd);
  EXPECT_EQ(ReadBack(), head + a + b);
}

TEST_F(PipelinedWriterTest, AShortStreamIsWrittenAtFlush) {
  int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0);
  Sha256 hash;
  {
    PipelinedWriter w(fd, 0, &hash, "test write");
    ASSERT_TRUE(w.Append("hello ").ok());
    ASSERT_TRUE(w.Append("world").ok());
    EXPECT_EQ(ReadBack(), "");  // still buffered
    ASSERT_TRUE(w.Flush().ok());
  }
  ::close(fd);
  EXPECT_EQ(ReadBack(), "hello world");
  EXPECT_EQ(hash.FinishHex(), Sha256::HexOf("hello world"));
}

// Aligned streams go around the page cache; the unaligned tail goes through
// it; the fd gets its flags back. On a file system without O_DIRECT every
// write is buffered and the bytes are the same.
TEST_F(PipelinedWriterTest, DirectIoForAlignedBlocksBufferedTailFlagsRestored) {
  const std::string data = Pattern(5 * 64 * 1024 + 4096 * 3 + 123);
  int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0);
  const int flags_before = ::fcntl(fd, F_GETFL);
  Sha256 hash;
  {
    PipelinedWriter w(fd, 0, &hash, "test write", 64 * 1024, 3);
    const bool direct_at_start = w.direct_io();
    if (direct_at_start) {
      EXPECT_NE(::fcntl(fd, F_GETFL) & O_DIRECT, 0);
    }
    for (size_t off = 0; off < data.size(); off += 7000) {
      ASSERT_TRUE(w.Append(std::string_view(data).substr(off, 7000)).ok());
    }
    ASSERT_TRUE(w.Flush().ok());
    EXPECT_FALSE(w.direct_io()) << "the 123-byte tail was written buffered";
  }
  EXPECT_EQ(::fcntl(fd, F_GETFL), flags_before);
  ::close(fd);
  EXPECT_EQ(ReadBack(), data);
  EXPECT_EQ(hash.FinishHex(), Sha256::HexOf(data));
}

// A ring of many small aligned buffers filled by large appends: the writer
// takes several ready buffers per writev (wrapping around the ring), and the
// file and hash are still the stream in order, whatever the batches were.
TEST_F(PipelinedWriterTest, BatchedWritesAcrossTheRingKeepTheStreamInOrder) {
  const std::string data = Pattern(97 * 4096 + 4096 * 5 + 77);
  int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0);
  Sha256 hash;
  {
    PipelinedWriter w(fd, 0, &hash, "test write", 4096, 12);
    for (size_t off = 0; off < data.size(); off += 40000) {
      ASSERT_TRUE(w.Append(std::string_view(data).substr(off, 40000)).ok());
    }
    ASSERT_TRUE(w.Flush().ok());
    EXPECT_EQ(w.appended(), data.size());
  }
  ::close(fd);
  EXPECT_EQ(ReadBack(), data);
  EXPECT_EQ(hash.FinishHex(), Sha256::HexOf(data));
}

// Zero buffers beyond the file's end stay holes (a sparse image stays
// sparse and costs no writes), the file still has the stream's size and
// bytes; zeros over bytes the file already had are written.
TEST_F(PipelinedWriterTest, ZeroBlocksBeyondTheEndStayHolesExistingBytesAreOverwritten) {
  const size_t kBuf = 64 * 1024;
  const std::string zeros(8 * kBuf, '\0');
  const std::string data = Pattern(kBuf) + zeros + Pattern(kBuf + 100) + zeros;
  int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0);
  Sha256 hash;
  {
    PipelinedWriter w(fd, 0, &hash, "test write", kBuf, 8);
    for (size_t off = 0; off < data.size(); off += 50'000) {
      ASSERT_TRUE(w.Append(std::string_view(data).substr(off, 50'000)).ok());
    }
    ASSERT_TRUE(w.Flush().ok());
    EXPECT_GE(w.hole_bytes(), 14 * kBuf) << "zero buffers were written";
  }
  struct stat st;
  ASSERT_EQ(::fstat(fd, &st), 0);
  ::close(fd);
  EXPECT_EQ(static_cast<size_t>(st.st_size), data.size()) << "a trailing hole must still count in the size";
  EXPECT_LT(static_cast<size_t>(st.st_blocks) * 512, data.size() / 2) << "the zeros take disk space";
  EXPECT_EQ(ReadBack(), data);
  EXPECT_EQ(hash.FinishHex(), Sha256::HexOf(data));

  // Zeros over bytes the file already has are real writes.
  {
    std::ofstream out(path_, std::ios::binary | std::ios::trunc);
    out << std::string(4 * kBuf, 'x');
  }
  fd = ::open(path_.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  {
    PipelinedWriter w(fd, 0, nullptr, "test write", kBuf, 4);
    ASSERT_TRUE(w.Append(std::string(4 * kBuf, '\0')).ok());
    ASSERT_TRUE(w.Flush().ok());
    EXPECT_EQ(w.hole_bytes(), 0u);
  }
  ::close(fd);
  EXPECT_EQ(ReadBack(), std::string(4 * kBuf, '\0'));
}

TEST_F(PipelinedWriterTest, UnalignedOffsetOrBufferMeansBufferedWrites) {
  int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0);
  {
    PipelinedWriter odd_buffer(fd, 0, nullptr, "test write", 10'000, 2);
    EXPECT_FALSE(odd_buffer.direct_io());
    PipelinedWriter odd_offset(fd, 100, nullptr, "test write", 64 * 1024, 2);
    EXPECT_FALSE(odd_offset.direct_io());
  }
  EXPECT_EQ(::fcntl(fd, F_GETFL) & O_DIRECT, 0);
  ::close(fd);
}

TEST_F(PipelinedWriterTest, AWriteErrorIsReportedAndSticks) {
  int fd = ::open("/dev/full", O_WRONLY);
  if (fd < 0) GTEST_SKIP() << "no /dev/full";
  Sha256 hash;
  PipelinedWriter w(fd, 0, &hash, "test write", 16 * 1024, 2);
  const std::string data = Pattern(200'000);
  Status st = Status::Ok();
  for (size_t off = 0; off < data.size() && st.ok(); off += 1000) st = w.Append(std::string_view(data).substr(off, 1000));
  if (st.ok()) st = w.Flush();
  EXPECT_EQ(st.code(), Code::kResourceExhausted) << st.ToString();
  EXPECT_EQ(st.field(), "image");
  EXPECT_FALSE(w.Append("more").ok());
  EXPECT_FALSE(w.Flush().ok());
  ::close(fd);
}

TEST_F(PipelinedWriterTest, DestroyingWithoutFlushStopsPromptly) {
  int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0);
  {
    Sha256 hash;
    PipelinedWriter w(fd, 0, &hash, "test write", 16 * 1024, 2);
    ASSERT_TRUE(w.Append(Pattern(100'000)).ok());
  }  // no Flush: dropped, threads joined
  ::close(fd);
  EXPECT_LE(ReadBack().size(), 100'000u);
}

}  // namespace
}  // namespace berth::images
