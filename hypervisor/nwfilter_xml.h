// The typed model of one berth network filter (libvirt nwfilter), and
// NwFilterSpec -> XML. One filter per function; a guest NIC refers to it with
// <filterref filter='NAME'> and passes the parameters IP and MAC (or lets
// libvirt learn the IP from DHCP: CTRL_IP_LEARNING=dhcp, DHCPSERVER=gateway).
//
// What the filter does, first match wins (libvirt orders rules by priority,
// lower first; `out` = sent by the guest, `in` = sent to it):
//
//   filterref clean-traffic      no MAC / IP / ARP spoofing, no non-IPv4 L2
//                                traffic (so no IPv6), using $IP and $MAC
//   100  accept out udp 68->67   DHCP requests (broadcast and to the gateway)
//   101  accept in  udp 67->68   DHCP answers
//   110  accept out udp/53, 111 tcp/53 to the gateway   (allow_gateway_dns)
//   150  accept out tcp to the gateway, state ESTABLISHED only
//                                (answer_host_connections: replies to
//                                connections the host opened, e.g. the
//                                gateway's /svc proxy; the guest still cannot
//                                open one to the host)
//   200  drop   out all to the gateway: every other service the host offers
//                                on the bridge, whatever the allow-list says
//   300+ accept out allow-list entries, in order (cidr, protocol, ports)
//   600  accept out all to the tenant subnet, 601 accept in all from it
//                                (the tenant's own guests, both ways)
//   700+ drop   out all to each `deny` range (private ranges not allowed)
//   900  accept out all          egress mode only: the rest of the world
//   1000 drop   inout all        anything else, incl. new inbound connections
//
// Rules are stateful (libvirt's default statematch): answers to an accepted
// outbound connection come back in. DHCP rules are stateless, because DHCP
// answers go to broadcast and conntrack does not see them as replies.
//
// Verified on libvirt 9.0 with `iptables -S` (tests/integration/
// network_lifecycle_test.cc): the rules land in the FI-/FO-/HI-<tap> chains
// (from guest / to guest / from guest to the host itself) in this order;
// with CTRL_IP_LEARNING=dhcp they appear once the guest's lease is seen.
// Limit: in egress mode the host's own *public* addresses are "the rest of
// the world"; add them to `deny` if the host serves anything there.
//
// Output layout is that of `virsh nwfilter-dumpxml`; the golden files in
// tests/golden/network/nwfilter/ pin it down.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace berth::hv {

// Name of libvirt's stock anti-spoofing filter (libvirt-daemon-config-nwfilter).
inline constexpr const char* kCleanTrafficFilter = "clean-traffic";

enum class NwFilterMode {
  kEgress,    // the rest of the world is allowed after the deny ranges
  kIsolated,  // only DHCP/DNS, the tenant subnet and allow-list entries
};

enum class FilterProtocol { kAny, kTcp, kUdp };

struct NwFilterAllowRule {
  std::string cidr;  // destination "a.b.c.d/len" (len 0..32; "a.b.c.d" = /32)
  FilterProtocol protocol = FilterProtocol::kAny;
  // Destination ports; 0/0 = all ports. A port with kAny makes a tcp and a
  // udp rule.
  uint16_t port_start = 0;
  uint16_t port_end = 0;  // 0: same as port_start
};

struct NwFilterSpec {
  std::string name;  // libvirt filter name
  std::string uuid;  // empty: libvirt assigns (EnsureNwFilter keeps an existing one)
  NwFilterMode mode = NwFilterMode::kEgress;
  std::string gateway_ip;  // the host's address on the tenant bridge
  std::string subnet;      // the tenant subnet, "10.240.3.0/24"
  bool allow_gateway_dns = true;
  // Rule 150: the guest may answer TCP connections the host opened to it
  // (connections from the subnet, gateway included, are accepted by 601).
  bool answer_host_connections = false;
  std::vector<NwFilterAllowRule> allow;
  std::vector<std::string> deny;  // CIDRs dropped unless an allow rule matched first
};

// InvalidArgument naming the field ("name", "gateway_ip", "subnet",
// "allow[2].cidr", "allow[0].port_end", "deny[1]", ...).
Status ValidateNwFilterSpec(const NwFilterSpec& spec);

// Validates `spec` and returns the filter XML for virNWFilterDefineXML.
// Deterministic: the same spec always gives the same bytes.
Result<std::string> WriteNwFilterXml(const NwFilterSpec& spec);

// The filter's name and uuid from nwfilter XML (empty uuid when it has none).
struct NwFilterIdentity {
  std::string name;
  std::string uuid;
};
Result<NwFilterIdentity> ParseNwFilterIdentity(const std::string& xml);

// `xml` with its <uuid> set to `uuid` (added after <name>'s position, i.e.
// as the filter's first child, or replaced). libvirt refuses to redefine a
// filter under a new uuid, so EnsureNwFilter reuses the existing one.
Result<std::string> SetNwFilterUuid(const std::string& xml, const std::string& uuid);

}  // namespace berth::hv
