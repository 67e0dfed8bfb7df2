// WorkerPool: a bounded set of threads running queued jobs. Threads are
// started on demand up to max_threads and leave after idling; the queue is
// bounded too, so a burst is refused (Submit returns false) instead of
// growing without limit. The destructor runs what is queued, then joins.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace berth::api {

class WorkerPool {
 public:
  // max_queue: jobs waiting for a free thread (0: unbounded).
  WorkerPool(size_t max_threads, size_t max_queue, int idle_exit_ms = 30'000);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Queues `job`; false when the queue is full or the pool is shutting down.
  bool Submit(std::function<void()> job);
  // Jobs queued and not yet started.
  size_t queued() const;
  size_t max_threads() const { return max_threads_; }

 private:
  void Loop();

  const size_t max_threads_;
  const size_t max_queue_;
  const int idle_exit_ms_;
  mutable std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  std::deque<std::function<void()>> queue_;
  size_t threads_ = 0;
  size_t idle_ = 0;
  bool stopping_ = false;
};

}  // namespace berth::api
