#include "events/cron.h"

#include <array>
#include <cctype>
#include <chrono>
#include <vector>

namespace berth::events {
namespace {

constexpr int64_t kMinuteMs = 60'000;
constexpr int64_t kHourMs = 3'600'000;
constexpr int64_t kDayMs = 86'400'000;

int64_t FloorDiv(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }

constexpr std::array<const char*, 12> kMonthNames = {"jan", "feb", "mar", "apr", "may", "jun",
                                                     "jul", "aug", "sep", "oct", "nov", "dec"};
constexpr std::array<const char*, 7> kDayNames = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};

struct FieldSpec {
  const char* name;
  int min;
  int max;
  const char* const* names;  // names[i] is value min_name + i
  int names_count;
  int names_base;
};

Status FieldError(const FieldSpec& f, std::string_view item, const std::string& why) {
  return Status::InvalidArgument("schedule", std::string(f.name) + " field: '" + std::string(item) + "': " + why);
}

// Parses a number or a name; false when it is neither.
bool ParseValue(const FieldSpec& f, std::string_view s, int* out) {
  if (s.empty()) return false;
  if (std::isdigit(static_cast<unsigned char>(s[0]))) {
    if (s.size() > 4) return false;
    int v = 0;
    for (char c : s) {
      if (!std::isdigit(static_cast<unsigned char>(c))) return false;
      v = v * 10 + (c - '0');
    }
    *out = v;
    return true;
  }
  if (s.size() != 3) return false;
  std::string lower;
  for (char c : s) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (int i = 0; i < f.names_count; ++i) {
    if (lower == f.names[i]) {
      *out = f.names_base + i;
      return true;
    }
  }
  return false;
}

// Sets the bits of one comma-separated field in `bits` (indexed by value).
Status ParseField(const FieldSpec& f, std::string_view text, std::vector<bool>* bits) {
  bits->assign(static_cast<size_t>(f.max) + 1, false);
  size_t start = 0;
  while (true) {
    size_t comma = text.find(',', start);
    std::string_view item = text.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
    if (item.empty()) return FieldError(f, text, "empty list item");
    std::string_view range = item;
    int step = 1;
    bool has_step = false;
    if (size_t slash = item.find('/'); slash != std::string_view::npos) {
      range = item.substr(0, slash);
      std::string_view step_text = item.substr(slash + 1);
      if (step_text.empty() || !std::isdigit(static_cast<unsigned char>(step_text[0])) ||
          !ParseValue(f, step_text, &step) || step < 1 || step > f.max - f.min + 1) {
        return FieldError(f, item, "bad step");
      }
      has_step = true;
    }
    int lo, hi;
    if (range == "*") {
      lo = f.min;
      hi = f.max;
    } else if (size_t dash = range.find('-'); dash != std::string_view::npos) {
      if (!ParseValue(f, range.substr(0, dash), &lo) || !ParseValue(f, range.substr(dash + 1), &hi)) {
        return FieldError(f, item, "bad range");
      }
      if (lo > hi) return FieldError(f, item, "range start after its end");
    } else {
      if (!ParseValue(f, range, &lo)) return FieldError(f, item, "not a number or name");
      hi = has_step ? f.max : lo;  // "N/STEP" runs from N to the maximum
    }
    if (lo < f.min || hi > f.max) {
      return FieldError(f, item, "out of range " + std::to_string(f.min) + "-" + std::to_string(f.max));
    }
    for (int v = lo; v <= hi; v += step) (*bits)[static_cast<size_t>(v)] = true;
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return Status::Ok();
}

template <size_t N>
void CopyBits(const std::vector<bool>& from, int offset, std::bitset<N>* to) {
  for (size_t i = 0; i < from.size(); ++i) {
    if (from[i]) to->set(static_cast<size_t>(static_cast<int>(i) + offset));
  }
}

}  // namespace

Result<CronSchedule> CronSchedule::Parse(std::string_view text) {
  std::vector<std::string_view> fields;
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
    size_t start = i;
    while (i < text.size() && !std::isspace(static_cast<unsigned char>(text[i]))) ++i;
    if (i > start) fields.push_back(text.substr(start, i - start));
  }
  if (fields.size() != 5) {
    return Status::InvalidArgument("schedule", "want 5 fields (minute hour day-of-month month day-of-week), got " +
                                                   std::to_string(fields.size()));
  }
  static const FieldSpec kMinute{"minute", 0, 59, nullptr, 0, 0};
  static const FieldSpec kHour{"hour", 0, 23, nullptr, 0, 0};
  static const FieldSpec kDom{"day-of-month", 1, 31, nullptr, 0, 0};
  static const FieldSpec kMonth{"month", 1, 12, kMonthNames.data(), 12, 1};
  static const FieldSpec kDow{"day-of-week", 0, 7, kDayNames.data(), 7, 0};

  CronSchedule s;
  std::vector<bool> bits;
  BERTH_RETURN_IF_ERROR(ParseField(kMinute, fields[0], &bits));
  CopyBits(bits, 0, &s.minutes_);
  BERTH_RETURN_IF_ERROR(ParseField(kHour, fields[1], &bits));
  CopyBits(bits, 0, &s.hours_);
  BERTH_RETURN_IF_ERROR(ParseField(kDom, fields[2], &bits));
  CopyBits(bits, 0, &s.days_of_month_);
  BERTH_RETURN_IF_ERROR(ParseField(kMonth, fields[3], &bits));
  CopyBits(bits, 0, &s.months_);
  BERTH_RETURN_IF_ERROR(ParseField(kDow, fields[4], &bits));
  if (bits[7]) bits[0] = true;  // 7 is Sunday too
  bits.resize(7);
  CopyBits(bits, 0, &s.days_of_week_);
  s.dom_star_ = fields[2][0] == '*';
  s.dow_star_ = fields[4][0] == '*';
  s.text_ = std::string(text);
  return s;
}

bool CronSchedule::DayMatches(unsigned dom, unsigned dow) const {
  // Vixie cron: a '*' in either day field means both must match; otherwise either.
  if (dom_star_ || dow_star_) return days_of_month_[dom] && days_of_week_[dow];
  return days_of_month_[dom] || days_of_week_[dow];
}

bool CronSchedule::Matches(int64_t unix_ms) const {
  using namespace std::chrono;
  int64_t day = FloorDiv(unix_ms, kDayMs);
  int64_t in_day = unix_ms - day * kDayMs;
  sys_days d{days{day}};
  year_month_day ymd{d};
  unsigned dow = weekday{d}.c_encoding();
  return months_[static_cast<unsigned>(ymd.month())] && DayMatches(static_cast<unsigned>(ymd.day()), dow) &&
         hours_[static_cast<size_t>(in_day / kHourMs)] && minutes_[static_cast<size_t>((in_day / kMinuteMs) % 60)];
}

std::optional<int64_t> CronSchedule::NextAfter(int64_t after_unix_ms) const {
  using namespace std::chrono;
  int64_t t = FloorDiv(after_unix_ms, kMinuteMs) * kMinuteMs + kMinuteMs;
  const int64_t limit = t + 10 * 366 * kDayMs;
  while (t < limit) {
    int64_t day = FloorDiv(t, kDayMs);
    sys_days d{days{day}};
    year_month_day ymd{d};
    if (!months_[static_cast<unsigned>(ymd.month())]) {
      year_month first_of_next = year_month{ymd.year(), ymd.month()} + months{1};
      t = static_cast<int64_t>(sys_days{first_of_next / 1}.time_since_epoch().count()) * kDayMs;
      continue;
    }
    if (!DayMatches(static_cast<unsigned>(ymd.day()), weekday{d}.c_encoding())) {
      t = (day + 1) * kDayMs;
      continue;
    }
    int64_t in_day = t - day * kDayMs;
    int64_t hour = in_day / kHourMs;
    if (!hours_[static_cast<size_t>(hour)]) {
      t = day * kDayMs + (hour + 1) * kHourMs;
      continue;
    }
    if (!minutes_[static_cast<size_t>((in_day / kMinuteMs) % 60)]) {
      t += kMinuteMs;
      continue;
    }
    return t;
  }
  return std::nullopt;
}

}  // namespace berth::events
