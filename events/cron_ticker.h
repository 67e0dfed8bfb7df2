// CronTicker: fires cron triggers. At each tick, every enabled cron trigger
// whose schedule has a fire time in (max(last_fired_ms, created_ms), now]
// fires once, for the LATEST such time: slots missed while berth was down
// are caught up by one event, not one per slot. EventLog::FireCron records
// the fire time in the same transaction as the timer event, so a fire time
// is published at most once, also across restarts.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <thread>

#include "common/status.h"
#include "events/event_log.h"

namespace berth::events {

struct CronTickerOptions {
  int64_t poll_interval_ms = 1000;  // how often the thread ticks (fire times are whole minutes)
  // Also fire the slot of the minute a cron trigger was created in, when the
  // schedule matches it and the trigger never fired: "* * * * *" then fires
  // at once instead of at the next whole minute (tests, demos).
  bool fire_creation_minute = false;
};

class CronTicker {
 public:
  explicit CronTicker(EventLog* log, CronTickerOptions options = {});
  ~CronTicker();  // Stop()s

  void Start();
  void Stop();  // joins the thread

  // One pass at the Env's current time; returns how many cron triggers fired.
  Result<int> Tick();

  // The fire time Tick() would use for `cron` at `now_ms`, or nullopt.
  static std::optional<int64_t> DueFireTime(const CronTrigger& cron, int64_t now_ms);

 private:
  void Loop();

  EventLog* log_;
  CronTickerOptions options_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace berth::events
