#include "events/cron_ticker.h"

#include <algorithm>
#include <chrono>

#include "events/cron.h"

namespace berth::events {

CronTicker::CronTicker(EventLog* log, CronTickerOptions options) : log_(log), options_(options) {
  if (options_.poll_interval_ms < 1) options_.poll_interval_ms = 1;
}

CronTicker::~CronTicker() { Stop(); }

void CronTicker::Start() {
  std::lock_guard<std::mutex> lk(mu_);
  if (thread_.joinable()) return;
  stopping_ = false;
  thread_ = std::thread([this] { Loop(); });
}

void CronTicker::Stop() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void CronTicker::Loop() {
  while (true) {
    (void)Tick();
    std::unique_lock<std::mutex> lk(mu_);
    if (cv_.wait_for(lk, std::chrono::milliseconds(options_.poll_interval_ms), [&] { return stopping_; })) return;
  }
}

std::optional<int64_t> CronTicker::DueFireTime(const CronTrigger& cron, int64_t now_ms) {
  auto schedule = CronSchedule::Parse(cron.schedule);
  if (!schedule.ok()) return std::nullopt;
  constexpr int64_t kDayMs = 86'400'000;
  int64_t base = std::max(cron.last_fired_ms, cron.created_ms);
  // Search from at most a day back so a frequent schedule after a long
  // outage costs at most a day of minutes; rarer ones search from `base`.
  std::optional<int64_t> fire = schedule->NextAfter(std::max(base, now_ms - kDayMs));
  if ((!fire || *fire > now_ms) && base < now_ms - kDayMs) fire = schedule->NextAfter(base);
  if (!fire || *fire > now_ms) return std::nullopt;
  while (true) {
    auto next = schedule->NextAfter(*fire);
    if (!next || *next > now_ms) return fire;
    fire = next;
  }
}

Result<int> CronTicker::Tick() {
  int64_t now = log_->env()->NowUnixMs();
  BERTH_ASSIGN_OR_RETURN(auto crons, log_->ListEnabledCronTriggers());
  int fired = 0;
  for (CronTrigger cron : crons) {
    if (options_.fire_creation_minute && cron.last_fired_ms == 0) {
      // Fire times are whole minutes strictly after created_ms: move it to just before its minute.
      cron.created_ms = cron.created_ms - cron.created_ms % 60'000 - 1;
    }
    auto fire = DueFireTime(cron, now);
    if (!fire) continue;
    BERTH_ASSIGN_OR_RETURN(bool did, log_->FireCron(cron.id, *fire));
    if (did) ++fired;
  }
  return fired;
}

}  // namespace berth::events
