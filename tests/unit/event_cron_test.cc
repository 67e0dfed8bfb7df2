// CronSchedule: parsing (fields, lists, ranges, steps, names, errors) and
// next-fire computation (month ends, leap years, the Vixie day OR rule).
#include "events/cron.h"

#include <gtest/gtest.h>

#include <chrono>
#include <string>

namespace berth::events {
namespace {

using namespace std::chrono;

// Unix ms of a UTC civil time.
int64_t At(int y, unsigned mo, unsigned d, int h = 0, int mi = 0) {
  sys_days date = year{y} / month{mo} / day{d};
  return (static_cast<int64_t>(date.time_since_epoch().count()) * 86400 + h * 3600 + mi * 60) * 1000;
}

int64_t Next(const std::string& schedule, int64_t after) {
  auto s = CronSchedule::Parse(schedule);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  if (!s.ok()) return -1;
  auto n = s->NextAfter(after);
  return n ? *n : -1;
}

TEST(EventCronTest, RejectsMalformedSchedules) {
  for (const char* bad : {"", "* * * *", "* * * * * *", "60 * * * *", "* 24 * * *", "* * 0 * *", "* * 32 * *",
                          "* * * 0 *", "* * * 13 *", "* * * * 8", "*/0 * * * *", "5-1 * * * *", "1,,2 * * * *",
                          "a * * * *", "* * * foo *", "*/61 * * * *", "1- * * * *", "-1 * * * *"}) {
    auto s = CronSchedule::Parse(bad);
    EXPECT_FALSE(s.ok()) << "accepted '" << bad << "'";
    if (!s.ok()) {
      EXPECT_EQ(s.status().code(), Code::kInvalidArgument);
      EXPECT_EQ(s.status().field(), "schedule");
    }
  }
}

TEST(EventCronTest, AcceptsListsRangesStepsAndNames) {
  for (const char* good : {"* * * * *", "0 0 1 1 *", "*/15 * * * *", "0-30/10 8-18 * * mon-fri",
                           "1,2,3 1,5 1-7,15 jan,JUL * ", "0 0 * * 7", "5/20 * * * *", "0 12 * DEC sun",
                           "  0   0  *  *  *  "}) {
    EXPECT_TRUE(CronSchedule::Parse(good).ok()) << good;
  }
}

TEST(EventCronTest, EveryMinuteIsTheNextWholeMinute) {
  int64_t t = At(2024, 3, 10, 12, 30);
  EXPECT_EQ(Next("* * * * *", t), t + 60'000);          // strictly after
  EXPECT_EQ(Next("* * * * *", t + 1), t + 60'000);      // mid-minute rounds up
  EXPECT_EQ(Next("* * * * *", t - 1), t);
}

TEST(EventCronTest, StepsAndRanges) {
  EXPECT_EQ(Next("*/15 * * * *", At(2024, 1, 1, 10, 7)), At(2024, 1, 1, 10, 15));
  EXPECT_EQ(Next("*/15 * * * *", At(2024, 1, 1, 10, 45)), At(2024, 1, 1, 11, 0));
  EXPECT_EQ(Next("5/20 * * * *", At(2024, 1, 1, 10, 26)), At(2024, 1, 1, 10, 45));  // 5,25,45
  EXPECT_EQ(Next("0-30/10 9-17 * * *", At(2024, 1, 1, 17, 31)), At(2024, 1, 2, 9, 0));
  EXPECT_EQ(Next("0 */6 * * *", At(2024, 1, 1, 19, 0)), At(2024, 1, 2, 0, 0));
  EXPECT_EQ(Next("30 1,13 * * *", At(2024, 1, 1, 1, 30)), At(2024, 1, 1, 13, 30));
}

TEST(EventCronTest, MonthEndsAndLeapYears) {
  // The 31st skips the months without one.
  EXPECT_EQ(Next("0 0 31 * *", At(2024, 1, 31, 0, 0)), At(2024, 3, 31));
  EXPECT_EQ(Next("0 0 31 * *", At(2024, 4, 1)), At(2024, 5, 31));
  // 30th skips February.
  EXPECT_EQ(Next("0 0 30 * *", At(2023, 1, 30)), At(2023, 3, 30));
  // February 29th only in leap years.
  EXPECT_EQ(Next("0 0 29 2 *", At(2023, 3, 1)), At(2024, 2, 29));
  EXPECT_EQ(Next("0 0 29 2 *", At(2024, 2, 29)), At(2028, 2, 29));
  // Year end rolls over.
  EXPECT_EQ(Next("59 23 31 12 *", At(2023, 12, 31, 23, 58)), At(2023, 12, 31, 23, 59));
  EXPECT_EQ(Next("0 0 1 1 *", At(2023, 12, 31, 23, 59)), At(2024, 1, 1));
  // Never: 30 February.
  auto s = CronSchedule::Parse("0 0 30 2 *");
  ASSERT_TRUE(s.ok());
  EXPECT_FALSE(s->NextAfter(At(2024, 1, 1)).has_value());
}

TEST(EventCronTest, DayOfWeekIncludingSevenAsSunday) {
  // 2024-01-01 is a Monday.
  EXPECT_EQ(Next("0 9 * * 0", At(2024, 1, 1)), At(2024, 1, 7, 9, 0));
  EXPECT_EQ(Next("0 9 * * 7", At(2024, 1, 1)), At(2024, 1, 7, 9, 0));
  EXPECT_EQ(Next("0 9 * * sun", At(2024, 1, 1)), At(2024, 1, 7, 9, 0));
  EXPECT_EQ(Next("0 9 * * mon-fri", At(2024, 1, 5, 9, 0)), At(2024, 1, 8, 9, 0));  // Friday -> Monday
  EXPECT_EQ(Next("0 0 * * 5-7", At(2024, 1, 1)), At(2024, 1, 5));
}

TEST(EventCronTest, VixieOrRuleWhenBothDayFieldsAreRestricted) {
  // "1st of the month OR any Friday": from Mon 2024-01-01 00:00 the next is Friday the 5th,
  // then Friday the 12th ..., and Thursday 2024-02-01 (the 1st) before Friday the 2nd.
  EXPECT_EQ(Next("0 0 1 * 5", At(2024, 1, 1)), At(2024, 1, 5));
  EXPECT_EQ(Next("0 0 1 * 5", At(2024, 1, 26)), At(2024, 2, 1));
  // A '*' day-of-month (even "*/1"-like steps starting with '*') makes it AND:
  // only Fridays.
  EXPECT_EQ(Next("0 0 * * 5", At(2024, 1, 26)), At(2024, 2, 2));
  EXPECT_EQ(Next("0 0 */1 * 5", At(2024, 1, 26)), At(2024, 2, 2));
  // '*' day-of-week: only the day of month.
  EXPECT_EQ(Next("0 0 13 * *", At(2024, 1, 1)), At(2024, 1, 13));
  // Friday the 13th needs AND, which cron cannot say: "13 * 5" is the 13th OR Fridays.
  EXPECT_EQ(Next("0 0 13 * 5", At(2024, 1, 6)), At(2024, 1, 12));
  // Day-of-week with a step starting with '*' also means AND.
  // (OR would give Tuesday 2024-01-02; AND gives Thursday 2024-02-01.)
  EXPECT_EQ(Next("0 0 1 * */2", At(2024, 1, 1)), At(2024, 2, 1));
}

TEST(EventCronTest, MatchesAgreesWithNextAfter) {
  auto s = CronSchedule::Parse("*/7 3-5 1,15 * mon");
  ASSERT_TRUE(s.ok());
  int64_t t = At(2024, 1, 1);
  for (int i = 0; i < 50; ++i) {
    auto n = s->NextAfter(t);
    ASSERT_TRUE(n.has_value());
    EXPECT_TRUE(s->Matches(*n));
    for (int64_t m = t + 60'000; m < *n; m += 60'000) ASSERT_FALSE(s->Matches(m)) << m;
    t = *n;
  }
}

TEST(EventCronTest, MonthRestrictionJumpsAcrossYears) {
  EXPECT_EQ(Next("0 0 1 feb *", At(2024, 2, 1)), At(2025, 2, 1));
  EXPECT_EQ(Next("15 10 * 6 *", At(2024, 6, 30, 10, 15)), At(2025, 6, 1, 10, 15));
}

}  // namespace
}  // namespace berth::events
