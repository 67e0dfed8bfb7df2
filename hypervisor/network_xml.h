// The typed model of one berth libvirt network, and NetworkSpec <-> XML.
//
// A berth network is one bridge per (node, tenant) with an IPv4 subnet whose
// first usable address is the host side (gateway); libvirt's dnsmasq serves
// DHCP on it. `egress` networks NAT to the outside (<forward mode='nat'/>),
// `isolated` ones have no <forward> at all (libvirt's isolated network: the
// guests reach each other and the host, nothing else).
//
// Output layout is that of `virsh net-dumpxml` (2-space indentation, single
// quotes, elements in libvirt's order, no XML declaration, one trailing
// newline). The golden files in tests/golden/network/network/ pin it down.
//
//   <network>
//     <name>berth-net-0123456789</name>
//     <forward mode='nat'/>                          (egress only)
//     <bridge name='bn-0123456789' stp='off' delay='0'/>
//     <dns enable='no'/>                             (dns == false only)
//     <ip address='10.240.0.1' netmask='255.255.255.0'>
//       <dhcp>
//         <range start='10.240.0.10' end='10.240.0.254'>
//           <lease expiry='1440' unit='minutes'/>      (dhcp_lease_minutes > 0 only)
//         </range>
//         <host mac='52:54:00:00:00:01' name='x' ip='10.240.0.5'/>
//       </dhcp>
//     </ip>
//     <dnsmasq:options>                              (dhcp_ping_check == false only)
//       <dnsmasq:option value='no-ping'/>
//     </dnsmasq:options>
//   </network>                                      (xmlns:dnsmasq on <network> then)
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace berth::hv {

enum class NetworkForward {
  kNat,   // egress: libvirt NATs guest traffic out of the host's default route
  kNone,  // isolated: no <forward>; guests see only the bridge
};

struct DhcpHost {
  std::string mac;   // 52:54:00:xx:xx:xx
  std::string ip;    // inside the network's subnet
  std::string name;  // optional hostname (letters, digits, '-', '.')
};

struct NetworkSpec {
  std::string name;    // libvirt network name
  std::string bridge;  // Linux bridge device: at most 15 characters (IFNAMSIZ - 1)
  NetworkForward forward = NetworkForward::kNat;
  std::string gateway_ip;  // host address on the bridge, e.g. "10.240.3.1"
  int prefix_length = 24;  // subnet = gateway_ip/prefix_length; 8..30
  // DHCP pool; both empty: no DHCP server (dnsmasq then serves only DNS).
  std::string dhcp_start;
  std::string dhcp_end;
  std::vector<DhcpHost> dhcp_hosts;  // static leases (need a DHCP range)
  // Lease time of the range's addresses; 0 leaves libvirt's default (1 hour).
  // 1..35791394 (dnsmasq's minimum is 2 minutes; libvirt raises shorter ones).
  int dhcp_lease_minutes = 0;
  // false writes <dns enable='no'/>: dnsmasq answers no DNS at all. berth
  // turns DNS off on isolated networks, because dnsmasq forwards queries it
  // cannot answer to the host's resolvers, which would be a way out of an
  // "isolated" network (DNS tunnelling). Egress networks keep it on so
  // guests can resolve the names their allow-list is about.
  bool dns = true;
  // false writes dnsmasq's `no-ping` option (libvirt's dnsmasq namespace):
  // by default dnsmasq pings an address and waits up to 3 s before it
  // offers it, which is most of a guest's DHCP time. berth's tenant
  // networks hand out addresses only to berth's own guests, whose leases
  // dnsmasq tracks itself, so the check buys nothing there.
  bool dhcp_ping_check = true;
};

// Checks names, addresses and ranges. InvalidArgument naming the field
// ("name", "bridge", "gateway_ip", "prefix_length", "dhcp_start",
// "dhcp_hosts[0].ip", ...).
Status ValidateNetworkSpec(const NetworkSpec& spec);

// Validates `spec` and returns the network XML for virNetworkDefineXML.
// Deterministic: the same spec always gives the same bytes.
Result<std::string> WriteNetworkXml(const NetworkSpec& spec);

// Reads back what berth cares about from network XML (virNetworkGetXMLDesc,
// `virsh net-dumpxml`, or WriteNetworkXml output): name, bridge, forward
// (nat, or none when there is no <forward> / another mode is kNone too),
// the first IPv4 <ip> (address + netmask or prefix), its DHCP range and
// hosts, and <dns enable>. InvalidArgument (field "network_xml") when the
// XML is not well-formed or not a <network>.
Result<NetworkSpec> ParseNetworkXml(const std::string& xml);

// "a.b.c.d" -> host-order address. InvalidArgument (field) otherwise.
Result<uint32_t> ParseIpv4(const std::string& field, std::string_view text);
std::string FormatIpv4(uint32_t address);
// Netmask of a prefix length 0..32 (0 -> 0.0.0.0).
uint32_t PrefixMask(int prefix_length);

}  // namespace berth::hv
