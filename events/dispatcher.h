// Dispatcher: runs due deliveries through a FunctionRunner with a worker
// pool, per-function and per-tenant concurrency limits, retries with
// exponential backoff and jitter, and dead letters (at-least-once: a
// delivery may run again after a crash, so functions should be idempotent).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "events/event_log.h"
#include "events/types.h"

namespace berth::events {

// What one attempt of a delivery came to.
struct RunOutcome {
  bool ok = false;
  std::string error;         // why it failed (when !ok)
  std::string execution_id;  // the execution that ran it, if any (recorded on the delivery)

  static RunOutcome Succeeded(std::string execution_id = {}) { return {true, {}, std::move(execution_id)}; }
  static RunOutcome Failed(std::string error, std::string execution_id = {}) {
    return {false, std::move(error), std::move(execution_id)};
  }
};

// The seam to the function runner (the manager implements it). Called from
// dispatcher worker threads, possibly concurrently (within the limits).
// A non-ok Result counts as a failed attempt with the status as its error.
class FunctionRunner {
 public:
  virtual ~FunctionRunner() = default;
  virtual Result<RunOutcome> Run(const Delivery& delivery, const Event& event) = 0;
};

struct DispatcherOptions {
  int workers = 4;
  int per_function_limit = 0;  // concurrent attempts per (tenant, function); 0 = unlimited
  int per_tenant_limit = 0;    // concurrent attempts per tenant; 0 = unlimited
  // Workers look for due deliveries at least this often (they are also woken
  // at once by new deliveries and finished attempts).
  int64_t poll_interval_ms = 100;
  // Each retry delay is backoff * (1 - jitter * u), u uniform in [0, 1).
  double jitter = 0.2;
  uint64_t seed = 0;  // 0 = seeded from std::random_device
};

class Dispatcher {
 public:
  // `log` and `runner` must outlive the Dispatcher (Stop() it before closing the log).
  Dispatcher(EventLog* log, FunctionRunner* runner, DispatcherOptions options = {});
  ~Dispatcher();  // Stop()s
  Dispatcher(const Dispatcher&) = delete;
  Dispatcher& operator=(const Dispatcher&) = delete;

  // Starts the worker threads (no-op when running).
  void Start();
  // Stops taking deliveries, waits for attempts in flight and joins the workers.
  void Stop();
  // The first half of Stop, without waiting: no new deliveries are taken,
  // and an attempt in flight that now fails to run (its runner returns an
  // error, e.g. the manager detaching its executions) is not recorded: it
  // stays claimed, and the next start puts it back to pending without
  // counting the attempt (at-least-once).
  void BeginStop();

  // Runs, in the calling thread, every delivery due at the Env's current time
  // (also those that become due because of it, e.g. dead-letter fan-out),
  // one at a time. For tests with a fake clock and for draining. Returns the
  // number of attempts made.
  Result<int> RunDue();

  // The delay before attempt `attempts + 1` after `attempts` failed ones:
  // min(backoff_max, backoff_initial * 2^(attempts-1)) minus the jitter.
  int64_t RetryDelayMs(int attempts, const RetryPolicy& policy);

 private:
  void WorkerLoop();
  // Claims one admissible due delivery (counting it against the limits).
  Result<std::vector<Delivery>> ClaimOne();
  // Runs it, records the outcome and releases its limits.
  void Execute(const Delivery& d);
  bool Admit(const Delivery& d) const;

  EventLog* log_;
  FunctionRunner* runner_;
  DispatcherOptions options_;
  Env* env_;

  std::mutex mu_;
  std::condition_variable cv_;
  bool running_ = false;
  bool stopping_ = false;
  uint64_t wakeups_ = 0;  // bumped by every notification, so waiters don't miss one
  std::map<std::pair<std::string, std::string>, int> in_flight_by_function_;
  std::map<std::string, int> in_flight_by_tenant_;
  std::vector<std::thread> workers_;

  std::mutex rng_mu_;
  std::mt19937_64 rng_;
};

}  // namespace berth::events
