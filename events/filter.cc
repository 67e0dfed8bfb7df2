#include "events/filter.h"

namespace berth::events {

Status ValidateFilter(const nlohmann::json& filter) {
  if (!filter.is_object()) return Status::InvalidArgument("filter", "must be a JSON object");
  for (const auto& [key, value] : filter.items()) {
    if (key.empty() || key.front() == '.' || key.back() == '.' || key.find("..") != std::string::npos) {
      return Status::InvalidArgument("filter", "bad key '" + key + "': a dotted path without empty segments");
    }
  }
  return Status::Ok();
}

std::optional<nlohmann::json> ParsePayload(std::string_view payload) {
  auto j = nlohmann::json::parse(payload.begin(), payload.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return std::nullopt;
  return j;
}

bool FilterMatches(const nlohmann::json& filter, const std::optional<nlohmann::json>& payload) {
  if (filter.empty()) return true;
  if (!payload) return false;
  for (const auto& [key, want] : filter.items()) {
    const nlohmann::json* node = &*payload;
    size_t start = 0;
    while (true) {
      size_t dot = key.find('.', start);
      std::string part = key.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      if (!node->is_object()) return false;
      auto it = node->find(part);
      if (it == node->end()) return false;
      node = &*it;
      if (dot == std::string::npos) break;
      start = dot + 1;
    }
    if (*node != want) return false;
  }
  return true;
}

}  // namespace berth::events
