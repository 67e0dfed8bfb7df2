// Network lifecycle through the Hypervisor interface against libvirt's
// in-memory test driver (test:///default): EnsureNetwork is idempotent and
// refuses a conflicting definition, ListNetworks / GetNetwork read back,
// DestroyNetwork tolerates a missing network.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "hypervisor/hypervisor.h"
#include "net/names.h"
#include "net/subnet_allocator.h"
#include "net/tenant_network.h"

namespace berth::net {
namespace {

TEST(NetworkLifecycleTestDriver, EnsureListGetDestroy) {
  auto hv = hv::ConnectLibvirt("test:///default");
  ASSERT_TRUE(hv.ok()) << hv.status().ToString();
  SubnetAllocator alloc = *SubnetAllocator::Create({});
  std::vector<Cidr> used;
  std::vector<hv::NetworkSpec> specs;
  for (const char* tenant : {"acme", "globex"}) {
    Cidr subnet = *alloc.Allocate(used);
    used.push_back(subnet);
    specs.push_back(*MakeTenantNetworkSpec(tenant, NetworkMode::kEgress, subnet));
  }
  for (const hv::NetworkSpec& s : specs) {
    Status first = (*hv)->EnsureNetwork(s);
    ASSERT_TRUE(first.ok()) << first.ToString();
    Status again = (*hv)->EnsureNetwork(s);
    EXPECT_TRUE(again.ok()) << "EnsureNetwork must be idempotent: " << again.ToString();
  }
  auto names = (*hv)->ListNetworks(kNetworkNamePrefix);
  ASSERT_TRUE(names.ok()) << names.status().ToString();
  std::vector<std::string> want = {specs[0].name, specs[1].name};
  std::sort(want.begin(), want.end());
  EXPECT_EQ(*names, want);

  auto back = (*hv)->GetNetwork(specs[1].name);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->bridge, specs[1].bridge);
  EXPECT_EQ(back->gateway_ip, "10.240.1.1");
  EXPECT_EQ(back->prefix_length, 24);
  EXPECT_EQ(back->forward, hv::NetworkForward::kNat);

  // Same name, another subnet: refused, and the existing network is kept.
  hv::NetworkSpec conflicting = specs[0];
  conflicting.gateway_ip = "10.240.9.1";
  conflicting.dhcp_start = "10.240.9.10";
  conflicting.dhcp_end = "10.240.9.254";
  Status c = (*hv)->EnsureNetwork(conflicting);
  EXPECT_EQ(c.code(), Code::kFailedPrecondition) << c.ToString();
  EXPECT_EQ((*hv)->GetNetwork(specs[0].name)->gateway_ip, "10.240.0.1");

  for (const hv::NetworkSpec& s : specs) EXPECT_TRUE((*hv)->DestroyNetwork(s.name).ok());
  EXPECT_TRUE((*hv)->DestroyNetwork(specs[0].name).ok()) << "a missing network is not an error";
  EXPECT_TRUE((*hv)->ListNetworks(kNetworkNamePrefix)->empty());
  EXPECT_EQ((*hv)->GetNetwork(specs[0].name).status().code(), Code::kNotFound);
}

}  // namespace
}  // namespace berth::net
