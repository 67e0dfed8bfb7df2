// PipelinedWriter: appends a byte stream to a file in large writes while a
// second thread hashes it, so that the caller (an HTTP I/O thread) only
// copies each chunk into a buffer and goes back to receiving.
//
// Chunks are gathered into buffers of `buffer_bytes` (256 KiB by default: the
// threads then meet in the CPU caches; 1 MiB measured the same, 4 MiB about
// twice as slow); a full buffer goes at once to the writer thread and to the
// hasher thread (Sha256::Update of the same buffer), which work on it in
// parallel.
//
// Two writer threads each take the buffers that are ready (up to
// `kMaxBatchBuffers`, 2 MiB by default) in one pwritev at their own offset: a
// direct write's speed is bound by the device's latency per request, and on
// the dev VM's disk 256 KiB requests reached ~520 MB/s, 4 MiB ones ~850 MB/s,
// and two 4 MiB streams at once ~1070 MB/s (dd oflag=direct). So writers that
// fall behind catch up with larger requests, two in flight, instead of
// staying behind. Writes go to explicit offsets (pwrite): the fd's position
// is not used or moved, and an O_APPEND fd loses that flag while the writer
// lives.
//
// The writer uses direct I/O (O_DIRECT, set on `fd` with fcntl and taken off
// again when the writer is destroyed) when the file offset and the buffer
// size are multiples of 4 KiB: the device reads the buffer itself, so no CPU
// copies the bytes into the page cache (on the 2-core dev VM a buffered
// write(2) of 512 MiB cost ~1.2 s of CPU, a direct one ~0.1 s), and the
// fsync that ends an upload has no dirty pages left. The tail that is not a
// multiple of 4 KiB, and everything when the file system refuses O_DIRECT
// (EINVAL), is written through the page cache, followed by sync_file_range
// to start its writeback early. At most `buffers` buffers exist, so memory stays at
// buffers x buffer_bytes (8 MiB by default) whatever the stream's size; when all are in flight
// Append waits (a slow disk slows the sender down instead of growing memory).
// The threads start with the first full buffer: a stream shorter than one
// buffer is written and hashed by the caller at Flush.
//
// A whole buffer of zeros beyond the file's size when the writer was made
// (the file's hole, or the region a fresh file does not have yet) is not
// written: it stays a hole, so a sparse image stays sparse on disk and costs
// no device writes; Flush extends the file to the stream's end. Bytes the
// file already had are always overwritten.
//
// The hash sees every appended byte in order, also bytes whose write failed;
// after a failure the hash does not describe the file and callers drop it.
// Not thread-safe: one caller appends and flushes.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdlib>
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/sha256.h"
#include "common/status.h"

namespace berth::images {

class PipelinedWriter {
 public:
  static constexpr size_t kDefaultBufferBytes = 256u << 10;
  static constexpr size_t kDirectAlignment = 4096;
  static constexpr size_t kDefaultBuffers = 32;
  // Most buffers one pwritev takes (and at most a quarter of the ring, so
  // that with both writers busy the caller fills the other half meanwhile).
  static constexpr size_t kMaxBatchBuffers = 8;
  static constexpr int kWriterThreads = 2;
  // A thread waiting for work is woken once this many buffers wait for it
  // (or when the caller waits or flushes), and a caller waiting for a free
  // buffer once this many are free: one wakeup per MiB instead of one per
  // buffer for each of the three threads and the caller, which cost ~10 % of
  // an upload's CPU on 2 cores.
  static constexpr size_t kWakeBatch = 4;

  // `fd` (open for writing; the first appended byte lands at `file_offset`) and `hash` (null: no hashing) stay the caller's and
  // must outlive this. `what` prefixes write errors.
  PipelinedWriter(int fd, uint64_t file_offset, Sha256* hash, std::string what,
                  size_t buffer_bytes = kDefaultBufferBytes, size_t buffers = kDefaultBuffers);
  // Drops what was not written yet and stops the threads: Flush first to keep
  // it. Gives `fd` its original flags back (O_DIRECT off).
  ~PipelinedWriter();
  PipelinedWriter(const PipelinedWriter&) = delete;
  PipelinedWriter& operator=(const PipelinedWriter&) = delete;

  // Copies `chunk` for writing. Returns the first write error so far (the
  // stream is failed from then on and every later call returns it).
  Status Append(std::string_view chunk);
  // Writes what is buffered and waits until every appended byte is written
  // (not fsync'd) and hashed. Returns the first write error, if any.
  Status Flush();
  // Bytes appended so far.
  uint64_t appended() const { return appended_; }
  // Whether writes still go around the page cache (false once the tail or an
  // EINVAL switched to buffered writes; for tests and benchmarks).
  bool direct_io() const { return direct_.load(); }
  // Bytes of zeros left as holes instead of written (tests, benchmarks).
  uint64_t hole_bytes() const { return hole_bytes_.load(); }

 private:
  struct FreeBytes {
    void operator()(char* p) const { std::free(p); }
  };
  struct Buffer {
    std::unique_ptr<char[], FreeBytes> data;  // kDirectAlignment-aligned
    size_t size = 0;
  };
  // Waits for a free buffer and makes it the one being filled.
  void TakeBuffer();
  // Hands the buffer being filled to the threads.
  void HandOff();
  void StartThreads();
  // Buffers both threads are done with (mu_ held).
  uint64_t DoneLocked() const { return hash_ ? std::min(written_, hashed_) : written_; }
  // Whether the threads should stop waiting for a fuller batch (mu_ held).
  bool UrgentLocked() const { return caller_waiting_ || flushing_; }
  // Wakes the caller if it waits and what it waits for is there (mu_ held).
  void NotifyCallerLocked();
  void WriterLoop();
  void HasherLoop();
  // Writes bytes at file offset `at`: directly while aligned, else buffered
  // with their writeback started.
  Status WriteAt(const char* data, size_t size, uint64_t at);
  // Writes ring buffers [first, first + count) (consecutive in the stream) at
  // `at`, leaving zero buffers beyond initial_size_ as holes; each run of
  // the others goes to WriteRun.
  Status WriteBuffers(uint64_t first, uint64_t count, uint64_t at);
  // In one pwritev while direct I/O holds and the buffers are whole aligned
  // blocks, else one WriteAt each.
  Status WriteRun(uint64_t first, uint64_t count, uint64_t at);
  // Takes O_DIRECT off the fd; writes are buffered from then on.
  void StopDirect();

  const int fd_;
  const uint64_t start_offset_;
  Sha256* const hash_;
  const std::string what_;
  const size_t buffer_bytes_;
  std::vector<Buffer> ring_;
  int original_flags_ = -1;  // the fd's status flags before O_DIRECT (-1: unknown)
  int base_flags_ = -1;      // the flags writes use apart from O_DIRECT (O_APPEND taken off)
  int writer_threads_ = kWriterThreads;
  uint64_t initial_size_ = 0;  // the file's size at construction (UINT64_MAX: unknown, no holes)
  std::atomic<uint64_t> hole_bytes_{0};
  // Only StopDirect (from WriteAt/WriteBuffers) turns it off; atomic because
  // both writers read it.
  std::atomic<bool> direct_{false};
  // Caller side.
  Buffer* filling_ = nullptr;
  uint64_t appended_ = 0;
  uint64_t handed_bytes_ = 0;  // bytes handed to the threads (the writer's file position)

  std::mutex mu_;
  std::condition_variable work_cv_;   // writers and hasher wait for buffers
  std::condition_variable space_cv_;  // the caller waits for free buffers or for Flush
  const size_t wake_batch_;           // kWakeBatch, at most a quarter of the ring
  bool caller_waiting_ = false;
  bool flushing_ = false;
  int writers_waiting_ = 0;
  bool hasher_waiting_ = false;
  // Buffer counters since the start; buffer n is ring_[n % ring_.size()].
  // written_ counts the longest prefix of written buffers; writers claim
  // batches from claim_next_ (at file offset claim_at_) and mark their
  // buffers in slot_written_ when done, in whatever order they finish.
  uint64_t produced_ = 0, written_ = 0, hashed_ = 0;
  uint64_t claim_next_ = 0;
  uint64_t claim_at_ = 0;
  std::vector<char> slot_written_;
  bool stop_ = false;
  bool failed_ = false;  // a write failed: the writer skips the rest
  Status error_;
  std::vector<std::thread> writers_;
  std::thread hasher_;
};

}  // namespace berth::images
