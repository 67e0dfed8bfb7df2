#include "events/dispatcher.h"

#include <algorithm>
#include <chrono>

namespace berth::events {

Dispatcher::Dispatcher(EventLog* log, FunctionRunner* runner, DispatcherOptions options)
    : log_(log), runner_(runner), options_(options), env_(log->env()) {
  if (options_.workers < 1) options_.workers = 1;
  if (options_.poll_interval_ms < 1) options_.poll_interval_ms = 1;
  options_.jitter = std::clamp(options_.jitter, 0.0, 1.0);
  rng_.seed(options_.seed != 0 ? options_.seed : (uint64_t{std::random_device{}()} << 32) ^ std::random_device{}());
}

Dispatcher::~Dispatcher() { Stop(); }

void Dispatcher::Start() {
  // Outside mu_: the log calls the listener under its listener lock, and the
  // listener takes mu_.
  log_->SetDeliveryListener([this] {
    std::lock_guard<std::mutex> lk(mu_);
    ++wakeups_;
    cv_.notify_all();
  });
  std::lock_guard<std::mutex> lk(mu_);
  if (running_) return;
  running_ = true;
  stopping_ = false;
  for (int i = 0; i < options_.workers; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

void Dispatcher::BeginStop() {
  std::lock_guard<std::mutex> lk(mu_);
  if (!running_) return;
  stopping_ = true;
  cv_.notify_all();
}

void Dispatcher::Stop() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!running_) return;
    stopping_ = true;
    cv_.notify_all();
  }
  log_->SetDeliveryListener({});
  for (auto& t : workers_) t.join();
  workers_.clear();
  std::lock_guard<std::mutex> lk(mu_);
  running_ = false;
}

int64_t Dispatcher::RetryDelayMs(int attempts, const RetryPolicy& p) {
  int64_t delay = p.backoff_initial_ms;
  for (int i = 1; i < attempts && delay < p.backoff_max_ms; ++i) delay *= 2;
  delay = std::min(delay, p.backoff_max_ms);
  if (options_.jitter > 0) {
    std::lock_guard<std::mutex> lk(rng_mu_);
    double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng_);
    delay -= static_cast<int64_t>(static_cast<double>(delay) * options_.jitter * u);
  }
  return std::max<int64_t>(delay, 1);
}

bool Dispatcher::Admit(const Delivery& d) const {
  if (options_.per_function_limit > 0) {
    auto it = in_flight_by_function_.find({d.tenant, d.function});
    if (it != in_flight_by_function_.end() && it->second >= options_.per_function_limit) return false;
  }
  if (options_.per_tenant_limit > 0) {
    auto it = in_flight_by_tenant_.find(d.tenant);
    if (it != in_flight_by_tenant_.end() && it->second >= options_.per_tenant_limit) return false;
  }
  return true;
}

Result<std::vector<Delivery>> Dispatcher::ClaimOne() {
  std::lock_guard<std::mutex> lk(mu_);
  BERTH_ASSIGN_OR_RETURN(auto claimed,
                         log_->ClaimDue(env_->NowUnixMs(), 1, [this](const Delivery& d) { return Admit(d); }));
  for (const Delivery& d : claimed) {
    ++in_flight_by_function_[{d.tenant, d.function}];
    ++in_flight_by_tenant_[d.tenant];
  }
  return claimed;
}

void Dispatcher::Execute(const Delivery& d) {
  AttemptResult result;
  bool runner_failed = false;  // the runner could not run it (not: the function failed)
  int64_t now = env_->NowUnixMs();
  bool too_old = d.retry.max_event_age_ms > 0 && now - d.age_base_ms > d.retry.max_event_age_ms;
  if (too_old) {
    result.error = "event older than max_event_age_ms (" + std::to_string(d.retry.max_event_age_ms) + " ms)";
    result.dead = true;
  } else {
    auto event = log_->GetEvent(d.tenant, d.event_id);
    Result<RunOutcome> outcome = event.ok() ? runner_->Run(d, *event) : Result<RunOutcome>(event.status());
    if (outcome.ok()) {
      result.ok = outcome->ok;
      result.error = outcome->error;
      result.execution_id = outcome->execution_id;
      if (!result.ok && result.error.empty()) result.error = "failed";
    } else {
      result.error = outcome.status().ToString();
      runner_failed = true;
    }
    if (!result.ok) {
      now = env_->NowUnixMs();
      int64_t next = now + RetryDelayMs(d.attempts, d.retry);
      bool out_of_attempts = d.attempts >= d.retry.max_attempts;
      bool out_of_age = d.retry.max_event_age_ms > 0 && next - d.age_base_ms > d.retry.max_event_age_ms;
      result.dead = out_of_attempts || out_of_age;
      if (out_of_age && !out_of_attempts) result.error += " (next retry would exceed max_event_age_ms)";
      result.next_attempt_ms = next;
    }
  }
  bool interrupted = false;
  {
    std::lock_guard<std::mutex> lk(mu_);
    interrupted = stopping_ && runner_failed;
  }
  // A failure to record leaves the delivery "running" until the next start,
  // which puts it back to pending: at-least-once either way. So does an
  // attempt cut short by a stop (BeginStop).
  if (!interrupted) (void)log_->FinishAttempt(d.id, result);
  std::lock_guard<std::mutex> lk(mu_);
  if (--in_flight_by_function_[{d.tenant, d.function}] <= 0) in_flight_by_function_.erase({d.tenant, d.function});
  if (--in_flight_by_tenant_[d.tenant] <= 0) in_flight_by_tenant_.erase(d.tenant);
  ++wakeups_;
  cv_.notify_all();
}

Result<int> Dispatcher::RunDue() {
  int attempts = 0;
  while (true) {
    BERTH_ASSIGN_OR_RETURN(auto claimed, ClaimOne());
    if (claimed.empty()) return attempts;
    Execute(claimed.front());
    ++attempts;
  }
}

void Dispatcher::WorkerLoop() {
  while (true) {
    uint64_t seen;
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (stopping_) return;
      seen = wakeups_;
    }
    auto claimed = ClaimOne();
    if (claimed.ok() && !claimed->empty()) {
      Execute(claimed->front());
      continue;
    }
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait_for(lk, std::chrono::milliseconds(options_.poll_interval_ms),
                 [&] { return stopping_ || wakeups_ != seen; });
  }
}

}  // namespace berth::events
