#include "api/worker_pool.h"

#include <chrono>
#include <exception>

#include <spdlog/spdlog.h>

namespace berth::api {

WorkerPool::WorkerPool(size_t max_threads, size_t max_queue, int idle_exit_ms)
    : max_threads_(max_threads == 0 ? 1 : max_threads), max_queue_(max_queue), idle_exit_ms_(idle_exit_ms) {}

WorkerPool::~WorkerPool() {
  std::unique_lock lock(mu_);
  stopping_ = true;
  work_cv_.notify_all();
  done_cv_.wait(lock, [&] { return threads_ == 0; });
}

bool WorkerPool::Submit(std::function<void()> job) {
  std::lock_guard lock(mu_);
  if (stopping_) return false;
  if (max_queue_ != 0 && queue_.size() >= max_queue_ + idle_) return false;
  queue_.push_back(std::move(job));
  if (idle_ >= queue_.size()) {
    work_cv_.notify_one();
  } else if (threads_ < max_threads_) {
    ++threads_;
    std::thread(&WorkerPool::Loop, this).detach();
  }
  return true;
}

size_t WorkerPool::queued() const {
  std::lock_guard lock(mu_);
  return queue_.size();
}

void WorkerPool::Loop() {
  std::unique_lock lock(mu_);
  for (;;) {
    if (queue_.empty()) {
      if (stopping_) break;
      ++idle_;
      bool woke = work_cv_.wait_for(lock, std::chrono::milliseconds(idle_exit_ms_),
                                    [&] { return !queue_.empty() || stopping_; });
      --idle_;
      if (!woke) break;  // idle long enough: leave
      continue;
    }
    auto job = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    try {
      job();
    } catch (const std::exception& e) {
      spdlog::error("worker job threw: {}", e.what());
    }
    job = nullptr;  // captured state goes before the lock is taken again
    lock.lock();
  }
  --threads_;
  // Notify under the lock: the destructor may free the pool right after.
  done_cv_.notify_all();
}

}  // namespace berth::api
