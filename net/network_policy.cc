#include "net/network_policy.h"

namespace berth::net {

Result<NetworkMode> ParseNetworkMode(const std::string& text) {
  if (text.empty() || text == "none") return NetworkMode::kNone;
  if (text == "nat") {
    return Status::Unimplemented("network mode 'nat' is not available yet; use 'none'");
  }
  return Status::InvalidArgument("network", "unknown network mode '" + text + "' (expected 'none')");
}

const char* NetworkModeName(NetworkMode mode) { return mode == NetworkMode::kNat ? "nat" : "none"; }

}  // namespace berth::net
