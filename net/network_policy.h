// Network policy of one function: whether its guests get a NIC at all, on
// which kind of tenant network, and where they may send traffic.
//
//   none      (default) no network device at all: the guest talks to the host
//             only over the agent's virtio-serial channel.
//   egress    a NIC on the tenant's NAT network: the internet is reachable,
//             private ranges (PrivateRanges) only where `allow` says so.
//   isolated  a NIC on the tenant's network without forwarding: only the
//             tenant's own guests, DHCP, and what `allow` lists.
//
// In both NIC modes the host's own services on the bridge stay closed except
// DHCP (and DNS in egress mode), whatever `allow` says (see
// hypervisor/nwfilter_xml.h for the rule table).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "net/ipv4.h"

namespace berth::net {

enum class NetworkMode { kNone, kEgress, kIsolated };
enum class Protocol { kAny, kTcp, kUdp };

// One allow-list entry: destination block, protocol, destination ports.
struct EgressRule {
  std::string cidr;  // "203.0.113.0/24", or an address meaning /32
  Protocol protocol = Protocol::kAny;
  uint16_t port_start = 0;  // 0: all ports
  uint16_t port_end = 0;    // 0: only port_start
  friend bool operator==(const EgressRule&, const EgressRule&) = default;
};

struct NetworkPolicy {
  NetworkMode mode = NetworkMode::kNone;
  std::vector<EgressRule> allow;
  // A TCP port the guest serves on (instances): the host (the gateway's
  // /svc/<instance>/ proxy) may connect to it over the tenant network and
  // the filter lets the answers through. 0: nothing exposed.
  uint16_t expose_port = 0;
  friend bool operator==(const NetworkPolicy&, const NetworkPolicy&) = default;
};

inline constexpr size_t kMaxAllowRules = 64;

// "none" (or empty), "egress", "isolated". InvalidArgument, field "network.mode".
Result<NetworkMode> ParseNetworkMode(const std::string& text);
const char* NetworkModeName(NetworkMode mode);

// "tcp", "udp", "any" (or empty). InvalidArgument naming `field`.
Result<Protocol> ParseProtocol(const std::string& field, const std::string& text);
const char* ProtocolName(Protocol protocol);

// "" (all ports), "443" or "8000-8080" into rule->port_start/port_end.
// InvalidArgument naming `field`.
Status ParsePortRange(const std::string& field, const std::string& text, EgressRule* rule);
// Inverse of ParsePortRange: "", "443" or "8000-8080".
std::string FormatPortRange(const EgressRule& rule);

// Checks a policy as it arrives from a function definition. Fields are named
// "<prefix>.mode", "<prefix>.allow", "<prefix>.allow[i].cidr",
// "<prefix>.allow[i].port_start", "<prefix>.allow[i].port_end": the cidr must
// parse with no host bits, ports are 1..65535 with end >= start, and `allow`
// must be empty for mode none (it would silently mean nothing); so must
// "<prefix>.expose_port".
Status ValidateNetworkPolicy(const NetworkPolicy& policy, const std::string& prefix = "network");

// Destinations dropped unless an allow rule names them: RFC 1918
// (10/8, 172.16/12, 192.168/16), CGNAT 100.64/10, link-local 169.254/16 (cloud
// metadata services live there), loopback 127/8, plus "this network" 0/8,
// multicast 224/4 and reserved 240/4, which no guest should send to.
const std::vector<Cidr>& DeniedRanges();

}  // namespace berth::net
