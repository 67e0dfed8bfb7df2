// From berth's view of networking (tenant, function, policy, subnet) to the
// libvirt objects the hypervisor creates: the tenant network, the
// per-function nwfilter and the guest NIC.
//
// How the manager gives an execution a NIC (policy.mode != kNone):
//   1. subnet = the (node, tenant, mode) subnet, from SubnetAllocator once;
//   2. hv.EnsureNetwork(MakeTenantNetworkSpec(tenant, mode, subnet));
//   3. hv.EnsureNwFilter(WriteNwFilterXml(*MakeFunctionFilterSpec(...)));
//   4. spec.nics.push_back(MakeNic(network, RandomMac(), filter name));
//   5. after boot, the guest runs a DHCP client on eth0;
//      hv.GetDomainInterfaceAddresses(domain) then shows its lease.
#pragma once

#include <string>

#include "common/status.h"
#include "hypervisor/domain_spec.h"
#include "hypervisor/network_xml.h"
#include "hypervisor/nwfilter_xml.h"
#include "net/ipv4.h"
#include "net/network_policy.h"

namespace berth::net {

// DHCP lease time on tenant networks (the default; NetworksConfig and
// berthd's --dhcp-lease-minutes may lower it, e.g. for tests). The manager
// recycles the MACs of destroyed VMs (manager/networks.h), so the leases a
// network holds are bounded by its peak number of VMs, not by how often VMs
// start: the lease time need not be short to give addresses back. The guest
// agent keeps a udhcpc running that renews at half the lease time
// (guest/agent/network.h), so a long-lived VM keeps its address however
// long the lease; a long lease still rides out a guest that is paused or
// too busy to renew for a while.
inline constexpr int kTenantLeaseMinutes = 24 * 60;
// dnsmasq's shortest lease: it raises anything shorter to 2 minutes.
inline constexpr int kMinLeaseMinutes = 2;

// The tenant network for `mode` (kEgress: NAT + DNS; kIsolated: no forward,
// DNS off) on `subnet`: gateway = first address, DHCP pool from the 10th
// address (the 2nd in subnets smaller than /27) to the last but one, leases
// of `lease_minutes`.
// InvalidArgument (field "network.mode") for kNone; (field
// "dhcp_lease_minutes") for a lease shorter than kMinLeaseMinutes.
Result<hv::NetworkSpec> MakeTenantNetworkSpec(const std::string& tenant, NetworkMode mode, const Cidr& subnet,
                                              int lease_minutes = kTenantLeaseMinutes);

// The function's filter: policy.allow in order, DeniedRanges() dropped
// unless allowed, the rest accepted in egress mode. Validates the policy
// (ValidateNetworkPolicy, fields "network.*"); InvalidArgument for kNone.
Result<hv::NwFilterSpec> MakeFunctionFilterSpec(const std::string& tenant, const std::string& function,
                                                const NetworkPolicy& policy, const Cidr& subnet);

// A virtio NIC on `network` with the filter applied. With `ip` (a static
// DHCP host entry the caller added) the filter is pinned to it (IP=ip);
// without, libvirt learns the address from the guest's DHCP exchange with
// the gateway (CTRL_IP_LEARNING=dhcp, DHCPSERVER=gateway) and blocks all
// but DHCP until then. MAC is passed too, so clean-traffic pins it.
hv::NicSpec MakeNic(const hv::NetworkSpec& network, const std::string& mac, const std::string& filter,
                    const std::string& ip = "");

}  // namespace berth::net
