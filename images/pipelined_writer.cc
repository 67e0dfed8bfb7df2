#include "images/pipelined_writer.h"

#include <fcntl.h>

#include <cerrno>
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
      ring_(buffers < 2 ? 2 : buffers) {
  original_flags_ = ::fcntl(fd_, F_GETFL);
  if (original_flags_ >= 0 && start_offset_ % kDirectAlignment == 0 && buffer_bytes_ % kDirectAlignment == 0) {
    direct_ = (original_flags_ & O_DIRECT) != 0 || ::fcntl(fd_, F_SETFL, original_flags_ | O_DIRECT) == 0;
  }
}

PipelinedWriter::~PipelinedWriter() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
    failed_ = true;  // nothing more reaches the file
  }
  cv_.notify_all();
  if (writer_.joinable()) writer_.join();
  if (hasher_.joinable()) hasher_.join();
  if (original_flags_ >= 0) (void)::fcntl(fd_, F_SETFL, original_flags_);
}

void PipelinedWriter::StopDirect() {
  if (!direct_) return;
  direct_ = false;
  if (original_flags_ >= 0) (void)::fcntl(fd_, F_SETFL, original_flags_ & ~O_DIRECT);
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
  if (!writer_.joinable()) {
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
  cv_.wait(lock, [&] { return DoneLocked() == produced_; });
  return error_;
}

void PipelinedWriter::TakeBuffer() {
  uint64_t n;
  {
    std::unique_lock lock(mu_);
    // Buffer `produced_` is free once both threads are past its previous use.
    cv_.wait(lock, [&] { return produced_ - DoneLocked() < ring_.size(); });
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
  {
    std::lock_guard lock(mu_);
    ++produced_;
  }
  if (!writer_.joinable()) StartThreads();
  cv_.notify_all();
}

void PipelinedWriter::StartThreads() {
  writer_ = std::thread([this] { WriterLoop(); });
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
    ssize_t n = ::write(fd_, data + off, want);
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

void PipelinedWriter::WriterLoop() {
  uint64_t next = 0;
  uint64_t at = start_offset_;
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return next < produced_ || stop_; });
    if (next >= produced_) return;  // stopped and nothing left
    const Buffer& buf = ring_[next % ring_.size()];
    const bool skip = failed_;
    lock.unlock();
    Status st = skip ? Status::Ok() : WriteAt(buf.data.get(), buf.size, at);
    at += buf.size;
    lock.lock();
    if (!st.ok()) {
      failed_ = true;
      if (error_.ok()) error_ = st;
    }
    written_ = ++next;
    cv_.notify_all();
  }
}

void PipelinedWriter::HasherLoop() {
  uint64_t next = 0;
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return next < produced_ || stop_; });
    if (next >= produced_) return;
    const Buffer& buf = ring_[next % ring_.size()];
    lock.unlock();
    hash_->Update(std::string_view(buf.data.get(), buf.size));
    lock.lock();
    hashed_ = ++next;
    cv_.notify_all();
  }
}

}  // namespace berth::images
