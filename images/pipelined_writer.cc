#include "images/pipelined_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <new>

#include "images/store_files.h"

namespace berth::images {

PipelinedWriter::PipelinedWriter(int fd, uint64_t file_offset, Sha256* hash, std::string what, size_t buffer_bytes,
                                 size_t buffers)
    : fd_(fd),
      start_offset_(file_offset),
      hash_(hash),
      what_(std::move(what)),
      buffer_bytes_(buffer_bytes == 0 ? kDefaultBufferBytes : buffer_bytes),
      ring_(buffers < 2 ? 2 : buffers),
      wake_batch_(std::max<size_t>(1, std::min(kWakeBatch, ring_.size() / 4))),
      claim_at_(file_offset),
      slot_written_(ring_.size(), 0) {
  original_flags_ = ::fcntl(fd_, F_GETFL);
  base_flags_ = original_flags_;
  if (original_flags_ >= 0 && (original_flags_ & O_APPEND) != 0) {
    // Every pwrite of an O_APPEND fd lands at the end, so parallel writers
    // would append in completion order: writes go to their offsets instead
    // (the first is the end anyway), or, if the flag stays, one at a time.
    if (::fcntl(fd_, F_SETFL, original_flags_ & ~O_APPEND) == 0) {
      base_flags_ = original_flags_ & ~O_APPEND;
    } else {
      writer_threads_ = 1;
    }
  }
  struct stat st;
  initial_size_ = ::fstat(fd_, &st) == 0 ? static_cast<uint64_t>(st.st_size) : UINT64_MAX;
  if (base_flags_ >= 0 && start_offset_ % kDirectAlignment == 0 && buffer_bytes_ % kDirectAlignment == 0) {
    direct_ = (base_flags_ & O_DIRECT) != 0 || ::fcntl(fd_, F_SETFL, base_flags_ | O_DIRECT) == 0;
  }
}

PipelinedWriter::~PipelinedWriter() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
    failed_ = true;  // nothing more reaches the file
  }
  work_cv_.notify_all();
  space_cv_.notify_all();
  for (auto& w : writers_) w.join();
  if (hasher_.joinable()) hasher_.join();
  if (original_flags_ >= 0) (void)::fcntl(fd_, F_SETFL, original_flags_);
}

void PipelinedWriter::StopDirect() {
  if (!direct_.exchange(false)) return;
  if (base_flags_ >= 0) (void)::fcntl(fd_, F_SETFL, base_flags_ & ~O_DIRECT);
}

Status PipelinedWriter::Append(std::string_view chunk) {
  {
    std::lock_guard lock(mu_);
    if (!error_.ok()) return error_;
  }
  appended_ += chunk.size();
  while (!chunk.empty()) {
    if (!filling_) TakeBuffer();
    size_t n = std::min(chunk.size(), buffer_bytes_ - filling_->size);
    std::memcpy(filling_->data.get() + filling_->size, chunk.data(), n);
    filling_->size += n;
    chunk.remove_prefix(n);
    if (filling_->size == buffer_bytes_) HandOff();
  }
  return Status::Ok();
}

Status PipelinedWriter::Flush() {
  if (writers_.empty()) {
    // Never handed anything off: the caller writes the short stream itself.
    if (filling_ && filling_->size > 0) {
      Status st = WriteAt(filling_->data.get(), filling_->size, start_offset_ + handed_bytes_);
      if (hash_) hash_->Update(std::string_view(filling_->data.get(), filling_->size));
      handed_bytes_ += filling_->size;
      filling_->size = 0;
      std::lock_guard lock(mu_);
      if (!st.ok() && error_.ok()) error_ = st;
    }
    std::lock_guard lock(mu_);
    return error_;
  }
  if (filling_ && filling_->size > 0) HandOff();
  std::unique_lock lock(mu_);
  flushing_ = true;
  work_cv_.notify_all();  // partial batches go now
  caller_waiting_ = true;
  space_cv_.wait(lock, [&] { return DoneLocked() == produced_; });
  caller_waiting_ = false;
  flushing_ = false;
  if (error_.ok() && hole_bytes_ > 0) {
    // Zero blocks at the end were left as a hole: the file still ends where the stream does.
    const uint64_t end = start_offset_ + handed_bytes_;
    struct stat st;
    if (::fstat(fd_, &st) != 0) {
      error_ = StoreWriteError(what_, errno);
    } else if (static_cast<uint64_t>(st.st_size) < end && ::ftruncate(fd_, static_cast<off_t>(end)) != 0) {
      error_ = StoreWriteError(what_, errno);
    }
  }
  return error_;
}

void PipelinedWriter::TakeBuffer() {
  uint64_t n;
  {
    std::unique_lock lock(mu_);
    // Buffer `produced_` is free once both threads are past its previous use.
    if (produced_ - DoneLocked() >= ring_.size()) {
      // Full: the threads take what they have, and the caller sleeps until a
      // batch of buffers is free rather than one.
      caller_waiting_ = true;
      work_cv_.notify_all();
      space_cv_.wait(lock, [&] { return ring_.size() - (produced_ - DoneLocked()) >= wake_batch_; });
      caller_waiting_ = false;
    }
    n = produced_;
  }
  filling_ = &ring_[n % ring_.size()];
  // Allocated on first use (no initialisation: pages become resident as they
  // are filled), aligned for direct I/O.
  if (!filling_->data) {
    const size_t bytes = (buffer_bytes_ + kDirectAlignment - 1) / kDirectAlignment * kDirectAlignment;
    filling_->data.reset(static_cast<char*>(std::aligned_alloc(kDirectAlignment, bytes)));
    if (!filling_->data) throw std::bad_alloc();
  }
  filling_->size = 0;
}

void PipelinedWriter::HandOff() {
  handed_bytes_ += filling_->size;
  filling_ = nullptr;
  bool wake;
  {
    std::lock_guard lock(mu_);
    ++produced_;
    // Only when a waiting thread's batch just became full.
    wake = (writers_waiting_ > 0 && produced_ - claim_next_ >= wake_batch_) ||
           (hasher_waiting_ && produced_ - hashed_ >= wake_batch_);
  }
  if (writers_.empty()) {
    StartThreads();
    return;
  }
  if (wake) work_cv_.notify_all();
}

void PipelinedWriter::NotifyCallerLocked() {
  if (!caller_waiting_) return;
  const uint64_t busy = produced_ - DoneLocked();
  if (busy == 0 || (!flushing_ && ring_.size() - busy >= wake_batch_)) space_cv_.notify_one();
}

void PipelinedWriter::StartThreads() {
  for (int i = 0; i < writer_threads_; ++i) writers_.emplace_back([this] { WriterLoop(); });
  if (hash_) hasher_ = std::thread([this] { HasherLoop(); });
}

Status PipelinedWriter::WriteAt(const char* data, size_t size, uint64_t at) {
  size_t off = 0;
  bool buffered = false;
  while (off < size) {
    size_t want = size - off;
    if (direct_) {
      // Direct I/O takes whole aligned blocks at aligned offsets only.
      if (want < kDirectAlignment || (at + off) % kDirectAlignment != 0) {
        StopDirect();
      } else {
        want -= want % kDirectAlignment;
      }
    }
    const bool direct = direct_;
    ssize_t n = ::pwrite(fd_, data + off, want, static_cast<off_t>(at + off));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EINVAL && direct) {  // the file system refuses direct I/O: buffered from now on
        StopDirect();
        continue;
      }
      return StoreWriteError(what_, errno);
    }
    if (!direct) buffered = true;
    off += static_cast<size_t>(n);
  }
  // Start writing buffered pages back now: the final fsync then waits for
  // the last ones only instead of the whole file. Advisory: errors show at fsync.
  if (buffered) (void)::sync_file_range(fd_, static_cast<off_t>(at), static_cast<off_t>(size), SYNC_FILE_RANGE_WRITE);
  return Status::Ok();
}

namespace {
// Whether `n` bytes (a multiple of 4 KiB) are all zero; random data answers
// at its first byte.
bool AllZero(const char* p, size_t n) {
  static const char kZeros[PipelinedWriter::kDirectAlignment] = {};
  for (size_t off = 0; off < n; off += sizeof(kZeros)) {
    if (std::memcmp(p + off, kZeros, sizeof(kZeros)) != 0) return false;
  }
  return true;
}
}  // namespace

Status PipelinedWriter::WriteBuffers(uint64_t first, uint64_t count, uint64_t at) {
  uint64_t run_first = first, run_at = at;
  for (uint64_t i = first; i <= first + count; ++i) {
    const bool end = i == first + count;
    bool hole = false;
    size_t size = 0;
    if (!end) {
      const Buffer& buf = ring_[i % ring_.size()];
      size = buf.size;
      hole = at >= initial_size_ && size > 0 && size % kDirectAlignment == 0 && AllZero(buf.data.get(), size);
    }
    if (end || hole) {
      if (i > run_first) BERTH_RETURN_IF_ERROR(WriteRun(run_first, i - run_first, run_at));
      if (hole) hole_bytes_ += size;
      run_first = i + 1;
      run_at = at + size;
    }
    at += size;
  }
  return Status::Ok();
}

Status PipelinedWriter::WriteRun(uint64_t first, uint64_t count, uint64_t at) {
  std::vector<iovec> iov;
  iov.reserve(count);
  size_t total = 0;
  bool whole_blocks = direct_ && at % kDirectAlignment == 0;
  for (uint64_t i = first; i < first + count; ++i) {
    const Buffer& buf = ring_[i % ring_.size()];
    iov.push_back(iovec{buf.data.get(), buf.size});
    total += buf.size;
    whole_blocks = whole_blocks && buf.size % kDirectAlignment == 0;
  }
  if (!whole_blocks || count == 1) {
    for (const iovec& v : iov) {
      BERTH_RETURN_IF_ERROR(WriteAt(static_cast<const char*>(v.iov_base), v.iov_len, at));
      at += v.iov_len;
    }
    return Status::Ok();
  }
  // Direct pwritev; a short write (rare) resumes at the first unwritten byte,
  // which stays block-aligned because every buffer is.
  size_t done = 0;
  size_t k = 0;  // first iovec not fully written
  while (done < total) {
    ssize_t n = ::pwritev(fd_, iov.data() + k, static_cast<int>(std::min<size_t>(iov.size() - k, IOV_MAX)),
                          static_cast<off_t>(at + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EINVAL) {  // the file system refuses direct I/O: the rest one by one, buffered
        StopDirect();
        for (; k < iov.size(); ++k) {
          BERTH_RETURN_IF_ERROR(WriteAt(static_cast<const char*>(iov[k].iov_base), iov[k].iov_len, at + done));
          done += iov[k].iov_len;
        }
        return Status::Ok();
      }
      return StoreWriteError(what_, errno);
    }
    done += static_cast<size_t>(n);
    for (size_t left = static_cast<size_t>(n); left > 0 && k < iov.size();) {
      if (left >= iov[k].iov_len) {
        left -= iov[k].iov_len;
        ++k;
      } else {
        iov[k].iov_base = static_cast<char*>(iov[k].iov_base) + left;
        iov[k].iov_len -= left;
        left = 0;
      }
    }
  }
  return Status::Ok();
}

void PipelinedWriter::WriterLoop() {
  const uint64_t max_batch = std::max<size_t>(1, std::min(kMaxBatchBuffers, ring_.size() / 4));
  std::unique_lock lock(mu_);
  for (;;) {
    ++writers_waiting_;
    work_cv_.wait(lock, [&] {
      return produced_ - claim_next_ >= wake_batch_ || (claim_next_ < produced_ && UrgentLocked()) || stop_;
    });
    --writers_waiting_;
    if (claim_next_ >= produced_) return;  // stopped and nothing left
    const uint64_t first = claim_next_;
    const uint64_t count = std::min(produced_ - first, max_batch);
    const uint64_t at = claim_at_;
    for (uint64_t i = first; i < first + count; ++i) claim_at_ += ring_[i % ring_.size()].size;
    claim_next_ += count;
    const bool skip = failed_;
    lock.unlock();
    Status st = skip ? Status::Ok() : WriteBuffers(first, count, at);
    lock.lock();
    if (!st.ok()) {
      failed_ = true;
      if (error_.ok()) error_ = st;
    }
    for (uint64_t i = first; i < first + count; ++i) slot_written_[i % ring_.size()] = 1;
    // A buffer counts as written (and its slot reusable) once every earlier one is.
    while (written_ < claim_next_ && slot_written_[written_ % ring_.size()]) {
      slot_written_[written_ % ring_.size()] = 0;
      ++written_;
    }
    NotifyCallerLocked();
  }
}

void PipelinedWriter::HasherLoop() {
  uint64_t next = 0;
  std::unique_lock lock(mu_);
  for (;;) {
    hasher_waiting_ = true;
    work_cv_.wait(lock, [&] {
      return produced_ - next >= wake_batch_ || (next < produced_ && UrgentLocked()) || stop_;
    });
    hasher_waiting_ = false;
    if (next >= produced_) return;
    // Everything handed off so far, one buffer at a time.
    while (next < produced_) {
      const Buffer& buf = ring_[next % ring_.size()];
      lock.unlock();
      hash_->Update(std::string_view(buf.data.get(), buf.size));
      lock.lock();
      hashed_ = ++next;
      NotifyCallerLocked();
    }
  }
}

}  // namespace berth::images
