// Network policy of one execution. The foundation runs every guest without
// any network device (the safe default); the networking issue adds opt-in
// NAT egress per tenant.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"

namespace berth::net {

enum class NetworkMode { kNone, kNat };

struct NetworkPolicy {
  NetworkMode mode = NetworkMode::kNone;
};

// Parses "none" / "nat" (as found in function definitions).
Result<NetworkMode> ParseNetworkMode(const std::string& text);
const char* NetworkModeName(NetworkMode mode);

}  // namespace berth::net
