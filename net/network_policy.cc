#include "net/network_policy.h"

#include <charconv>

namespace berth::net {

Result<NetworkMode> ParseNetworkMode(const std::string& text) {
  if (text.empty() || text == "none") return NetworkMode::kNone;
  if (text == "egress") return NetworkMode::kEgress;
  if (text == "isolated") return NetworkMode::kIsolated;
  return Status::InvalidArgument("network.mode", "unknown network mode '" + text +
                                                     "' (expected 'none', 'egress' or 'isolated')");
}

const char* NetworkModeName(NetworkMode mode) {
  switch (mode) {
    case NetworkMode::kEgress: return "egress";
    case NetworkMode::kIsolated: return "isolated";
    case NetworkMode::kNone: break;
  }
  return "none";
}

Result<Protocol> ParseProtocol(const std::string& field, const std::string& text) {
  if (text.empty() || text == "any") return Protocol::kAny;
  if (text == "tcp") return Protocol::kTcp;
  if (text == "udp") return Protocol::kUdp;
  return Status::InvalidArgument(field, field + " must be 'tcp', 'udp' or 'any', got '" + text + "'");
}

const char* ProtocolName(Protocol protocol) {
  switch (protocol) {
    case Protocol::kTcp: return "tcp";
    case Protocol::kUdp: return "udp";
    case Protocol::kAny: break;
  }
  return "any";
}

namespace {
bool ParsePort(std::string_view s, uint16_t* out) {
  unsigned v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || ptr != s.data() + s.size() || v < 1 || v > 65535) return false;
  *out = static_cast<uint16_t>(v);
  return true;
}
}  // namespace

Status ParsePortRange(const std::string& field, const std::string& text, EgressRule* rule) {
  rule->port_start = rule->port_end = 0;
  if (text.empty()) return Status::Ok();
  const size_t dash = text.find('-');
  const std::string_view first = std::string_view(text).substr(0, dash);
  const std::string_view second =
      dash == std::string::npos ? first : std::string_view(text).substr(dash + 1);
  uint16_t start = 0, end = 0;
  if (!ParsePort(first, &start) || !ParsePort(second, &end)) {
    return Status::InvalidArgument(
        field, field + " must be a port (1-65535) or a range like 8000-8080, got '" + text + "'");
  }
  if (end < start) {
    return Status::InvalidArgument(field, field + " range '" + text + "' ends before it starts");
  }
  rule->port_start = start;
  rule->port_end = end == start ? 0 : end;
  return Status::Ok();
}

std::string FormatPortRange(const EgressRule& rule) {
  if (rule.port_start == 0) return {};
  std::string out = std::to_string(rule.port_start);
  if (rule.port_end != 0 && rule.port_end != rule.port_start) out += "-" + std::to_string(rule.port_end);
  return out;
}

Status ValidateNetworkPolicy(const NetworkPolicy& policy, const std::string& prefix) {
  if (policy.mode == NetworkMode::kNone && !policy.allow.empty()) {
    return Status::InvalidArgument(prefix + ".allow", prefix +
                                                          ".allow needs mode 'egress' or 'isolated'; "
                                                          "with mode 'none' the guest has no NIC");
  }
  if (policy.mode == NetworkMode::kNone && policy.expose_port != 0) {
    return Status::InvalidArgument(prefix + ".expose_port", prefix +
                                                                ".expose_port needs mode 'egress' or 'isolated'; "
                                                                "with mode 'none' the guest has no NIC");
  }
  if (policy.allow.size() > kMaxAllowRules) {
    return Status::InvalidArgument(prefix + ".allow", prefix + ".allow has " +
                                                          std::to_string(policy.allow.size()) +
                                                          " entries; at most " +
                                                          std::to_string(kMaxAllowRules) + " are allowed");
  }
  for (size_t i = 0; i < policy.allow.size(); ++i) {
    const EgressRule& r = policy.allow[i];
    const std::string base = prefix + ".allow[" + std::to_string(i) + "]";
    BERTH_RETURN_IF_ERROR(ParseCidr(base + ".cidr", r.cidr).status());
    if (r.port_start == 0 && r.port_end != 0) {
      return Status::InvalidArgument(base + ".port_start", base + ".port_start is required with port_end");
    }
    if (r.port_end != 0 && r.port_end < r.port_start) {
      return Status::InvalidArgument(base + ".port_end", base + ".port_end " + std::to_string(r.port_end) +
                                                             " is below port_start " +
                                                             std::to_string(r.port_start));
    }
  }
  return Status::Ok();
}

const std::vector<Cidr>& DeniedRanges() {
  static const std::vector<Cidr> ranges = [] {
    std::vector<Cidr> out;
    for (const char* c : {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                          "169.254.0.0/16", "127.0.0.0/8", "0.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4"}) {
      out.push_back(*ParseCidr("range", c));
    }
    return out;
  }();
  return ranges;
}

}  // namespace berth::net
