#include "events/types.h"

#include <cctype>
#include <cstdint>

namespace berth::events {
namespace {

bool IsNameChar(char c, std::string_view extra) {
  return std::isalnum(static_cast<unsigned char>(c)) || extra.find(c) != std::string_view::npos;
}

}  // namespace

std::string Base64Encode(std::string_view in) {
  static const char* kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = (uint32_t(uint8_t(in[i])) << 16) | (uint32_t(uint8_t(in[i + 1])) << 8) | uint8_t(in[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out += kAlphabet[(v >> s) & 63];
  }
  if (i < in.size()) {
    uint32_t v = uint32_t(uint8_t(in[i])) << 16;
    if (i + 1 < in.size()) v |= uint32_t(uint8_t(in[i + 1])) << 8;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += i + 1 < in.size() ? kAlphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

const char* DeliveryStateName(DeliveryState s) {
  switch (s) {
    case DeliveryState::kPending: return "pending";
    case DeliveryState::kRunning: return "running";
    case DeliveryState::kSucceeded: return "succeeded";
    case DeliveryState::kDead: return "dead";
  }
  return "unknown";
}

std::optional<DeliveryState> ParseDeliveryState(std::string_view s) {
  for (auto st : {DeliveryState::kPending, DeliveryState::kRunning, DeliveryState::kSucceeded,
                  DeliveryState::kDead}) {
    if (s == DeliveryStateName(st)) return st;
  }
  return std::nullopt;
}

Status ValidateTopic(std::string_view topic, bool allow_reserved, const std::string& field) {
  if (topic.empty() || topic.size() > 200) {
    return Status::InvalidArgument(field, "must be 1 to 200 characters");
  }
  if (topic[0] == '_' && !allow_reserved) {
    return Status::InvalidArgument(field, "topics starting with '_' are reserved for the system");
  }
  if (!(std::isalnum(static_cast<unsigned char>(topic[0])) || topic[0] == '_')) {
    return Status::InvalidArgument(field, "must start with a letter or digit");
  }
  for (char c : topic) {
    if (!IsNameChar(c, "._:/-")) {
      return Status::InvalidArgument(field, "may contain only letters, digits and . _ : / -");
    }
  }
  return Status::Ok();
}

Status ValidateName(std::string_view name, const std::string& field) {
  if (name.empty() || name.size() > 100) return Status::InvalidArgument(field, "must be 1 to 100 characters");
  if (!std::isalnum(static_cast<unsigned char>(name[0]))) {
    return Status::InvalidArgument(field, "must start with a letter or digit");
  }
  for (char c : name) {
    if (!IsNameChar(c, "._-")) return Status::InvalidArgument(field, "may contain only letters, digits and . _ -");
  }
  return Status::Ok();
}

Status ValidateRetryPolicy(const RetryPolicy& p) {
  if (p.max_attempts < 1 || p.max_attempts > 1000) {
    return Status::InvalidArgument("max_attempts", "must be 1 to 1000");
  }
  if (p.backoff_initial_ms < 1) return Status::InvalidArgument("backoff_initial_ms", "must be at least 1");
  if (p.backoff_max_ms < p.backoff_initial_ms) {
    return Status::InvalidArgument("backoff_max_ms", "must be at least backoff_initial_ms");
  }
  if (p.max_event_age_ms < 0) return Status::InvalidArgument("max_event_age_ms", "must be 0 (unlimited) or more");
  if (!p.dead_letter_topic.empty()) {
    BERTH_RETURN_IF_ERROR(ValidateTopic(p.dead_letter_topic, /*allow_reserved=*/true, "dead_letter_topic"));
  }
  return Status::Ok();
}

}  // namespace berth::events
