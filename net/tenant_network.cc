#include "net/tenant_network.h"

#include "net/names.h"

namespace berth::net {

Result<hv::NetworkSpec> MakeTenantNetworkSpec(const std::string& tenant, NetworkMode mode, const Cidr& subnet,
                                              int lease_minutes) {
  if (mode == NetworkMode::kNone) {
    return Status::InvalidArgument("network.mode", "mode 'none' has no network");
  }
  if (subnet.prefix < 8 || subnet.prefix > 29) {
    return Status::InvalidArgument("subnet", "a tenant subnet must be a /8 to /29, got " + subnet.ToString());
  }
  if (lease_minutes < kMinLeaseMinutes) {
    return Status::InvalidArgument("dhcp_lease_minutes", "a DHCP lease must last at least " +
                                                             std::to_string(kMinLeaseMinutes) + " minutes, got " +
                                                             std::to_string(lease_minutes));
  }
  hv::NetworkSpec spec;
  spec.name = TenantNetworkName(tenant, mode);
  spec.bridge = TenantBridgeName(tenant, mode);
  spec.forward = mode == NetworkMode::kEgress ? hv::NetworkForward::kNat : hv::NetworkForward::kNone;
  spec.gateway_ip = FormatIpv4Address(subnet.first() + 1);
  spec.prefix_length = subnet.prefix;
  // The first addresses stay free for the gateway and static entries.
  spec.dhcp_start = FormatIpv4Address(subnet.first() + (subnet.size() >= 32 ? 10 : 2));
  spec.dhcp_end = FormatIpv4Address(subnet.last() - 1);
  spec.dhcp_lease_minutes = lease_minutes;
  spec.dns = mode == NetworkMode::kEgress;  // why: see hv::NetworkSpec::dns
  spec.dhcp_ping_check = false;  // only berth's own guests lease here; see hv::NetworkSpec
  BERTH_RETURN_IF_ERROR(hv::ValidateNetworkSpec(spec));
  return spec;
}

Result<hv::NwFilterSpec> MakeFunctionFilterSpec(const std::string& tenant, const std::string& function,
                                                const NetworkPolicy& policy, const Cidr& subnet) {
  BERTH_RETURN_IF_ERROR(ValidateNetworkPolicy(policy));
  if (policy.mode == NetworkMode::kNone) {
    return Status::InvalidArgument("network.mode", "mode 'none' has no NIC to filter");
  }
  hv::NwFilterSpec spec;
  spec.name = FunctionFilterName(tenant, function);
  spec.mode = policy.mode == NetworkMode::kEgress ? hv::NwFilterMode::kEgress : hv::NwFilterMode::kIsolated;
  spec.gateway_ip = FormatIpv4Address(subnet.first() + 1);
  spec.subnet = subnet.ToString();
  // Isolated networks run no DNS (hv::NetworkSpec::dns), so nothing to allow.
  spec.allow_gateway_dns = policy.mode == NetworkMode::kEgress;
  spec.answer_host_connections = policy.expose_port != 0;
  for (const EgressRule& r : policy.allow) {
    hv::NwFilterAllowRule rule;
    rule.cidr = ParseCidr("cidr", r.cidr)->ToString();  // canonical "a.b.c.d/len"
    rule.protocol = r.protocol == Protocol::kTcp   ? hv::FilterProtocol::kTcp
                    : r.protocol == Protocol::kUdp ? hv::FilterProtocol::kUdp
                                                   : hv::FilterProtocol::kAny;
    rule.port_start = r.port_start;
    rule.port_end = r.port_end;
    spec.allow.push_back(rule);
  }
  for (const Cidr& d : DeniedRanges()) spec.deny.push_back(d.ToString());
  BERTH_RETURN_IF_ERROR(hv::ValidateNwFilterSpec(spec));
  return spec;
}

hv::NicSpec MakeNic(const hv::NetworkSpec& network, const std::string& mac, const std::string& filter,
                    const std::string& ip) {
  hv::NicSpec nic;
  nic.network = network.name;
  nic.mac = mac;
  nic.filter = filter;
  if (!filter.empty()) {
    if (!ip.empty()) {
      nic.filter_parameters.emplace_back("IP", ip);
    } else {
      nic.filter_parameters.emplace_back("CTRL_IP_LEARNING", "dhcp");
      nic.filter_parameters.emplace_back("DHCPSERVER", network.gateway_ip);
    }
    if (!mac.empty()) nic.filter_parameters.emplace_back("MAC", mac);
  }
  return nic;
}

}  // namespace berth::net
