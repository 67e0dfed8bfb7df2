// Five-field cron schedules (minute hour day-of-month month day-of-week),
// evaluated in UTC at minute resolution.
//
// Each field is a comma list of items; an item is `*`, `N`, `N-M`, or one of
// those followed by `/STEP` (`N/STEP` means N through the field's maximum).
// Months accept jan..dec and days of week sun..sat (any case); day of week
// is 0..7 with both 0 and 7 meaning Sunday. As in Vixie cron, when both the
// day-of-month and the day-of-week field are restricted (neither starts with
// `*`), a day matches if EITHER matches; otherwise both must match.
#pragma once

#include <bitset>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/status.h"

namespace berth::events {

class CronSchedule {
 public:
  // InvalidArgument (field "schedule") with the offending field named in the message.
  static Result<CronSchedule> Parse(std::string_view text);

  // The first fire time strictly after `after_unix_ms` (a whole minute, in
  // Unix ms), or nullopt when there is none within the next 10 years (e.g. "0 0 30 2 *").
  std::optional<int64_t> NextAfter(int64_t after_unix_ms) const;

  // True when the minute containing `unix_ms` is a fire time.
  bool Matches(int64_t unix_ms) const;

  const std::string& text() const { return text_; }

 private:
  bool DayMatches(unsigned day_of_month, unsigned day_of_week) const;

  std::string text_;
  std::bitset<60> minutes_;
  std::bitset<24> hours_;
  std::bitset<32> days_of_month_;  // 1..31
  std::bitset<13> months_;         // 1..12
  std::bitset<7> days_of_week_;    // 0..6, Sunday = 0
  bool dom_star_ = false;
  bool dow_star_ = false;
};

}  // namespace berth::events
