// Trigger filters: a JSON object whose every key (a dotted path) must name a
// field of the event's JSON payload with an equal value.
#pragma once

#include <optional>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace berth::events {

// InvalidArgument (field "filter") unless `filter` is an object whose keys
// are non-empty dotted paths without empty segments.
Status ValidateFilter(const nlohmann::json& filter);

// Parses a payload as JSON; nullopt when it is not JSON.
std::optional<nlohmann::json> ParsePayload(std::string_view payload);

// True when every filter entry matches. `payload` is nullopt for a non-JSON
// payload, which matches only the empty filter. "a.b" looks up payload["a"]["b"];
// values compare with JSON equality (1 == 1.0, "1" != 1).
bool FilterMatches(const nlohmann::json& filter, const std::optional<nlohmann::json>& payload);

}  // namespace berth::events
