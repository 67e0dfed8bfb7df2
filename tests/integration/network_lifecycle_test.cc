// Guest networking against the real qemu:///system: two tenants' networks
// with distinct subnets (one egress/NAT, one isolated), a per-function
// nwfilter, a guest NIC that gets a DHCP lease through that filter, and a
// teardown that leaves nothing behind -- checked with virsh, ip and iptables,
// not only through berth's own API.
//
// The guest is a BIOS-only domain without disks (named bnettest-*, not
// berth-*, so other tests' "no berth domains left" checks are unaffected):
// SeaBIOS hands over to QEMU's iPXE option ROM, whose DHCP request is the
// only traffic it makes beyond the bridge's gateway (its TFTP attempt goes
// to the gateway, which the filter drops). Nothing is sent to outside
// addresses.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "common/ids.h"
#include "hypervisor/hypervisor.h"
#include "hypervisor/nwfilter_xml.h"
#include "net/names.h"
#include "net/subnet_allocator.h"
#include "net/tenant_network.h"
#include "tests/integration/support/harness.h"

namespace berth::testing {
namespace {

const std::string kVirsh = "virsh -q -c qemu:///system ";

bool Has(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

class NetworkLifecycleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto hv = hv::ConnectLibvirt("qemu:///system");
    ASSERT_TRUE(hv.ok()) << hv.status().ToString();
    hv_ = std::move(*hv);
  }

  void TearDown() override {
    if (!hv_) return;
    // Best effort, in dependency order, whatever the test got to.
    if (!domain_.empty()) Shell(kVirsh + "destroy " + domain_ + " >/dev/null 2>&1");
    for (const std::string& f : filters_) (void)hv_->DeleteNwFilter(f);
    for (const std::string& n : networks_) (void)hv_->DestroyNetwork(n);
  }

  // Every subnet of every network on the host, so the test never picks one
  // a bridge already uses (libvirt would refuse to start it).
  std::vector<net::Cidr> UsedSubnets() {
    std::vector<net::Cidr> used;
    auto names = hv_->ListNetworks("");
    EXPECT_TRUE(names.ok()) << names.status().ToString();
    for (const std::string& n : names.ok() ? *names : std::vector<std::string>{}) {
      auto spec = hv_->GetNetwork(n);
      if (!spec.ok() || spec->gateway_ip.empty()) continue;
      auto gw = net::ParseIpv4Address("gw", spec->gateway_ip);
      if (!gw.ok()) continue;
      net::Cidr c;
      c.prefix = spec->prefix_length;
      c.network = *gw & c.mask();
      used.push_back(c);
    }
    return used;
  }

  std::unique_ptr<hv::Hypervisor> hv_;
  std::vector<std::string> networks_;
  std::vector<std::string> filters_;
  std::string domain_;
};

TEST_F(NetworkLifecycleTest, TwoTenantsFilterLeaseAndTeardown) {
  const std::string run = RandomHex(8);
  const std::string tenant_a = "nettest-a-" + run;
  const std::string tenant_b = "nettest-b-" + run;
  net::SubnetAllocator alloc = *net::SubnetAllocator::Create({});
  std::vector<net::Cidr> used = UsedSubnets();
  const net::Cidr subnet_a = *alloc.Allocate(used);
  used.push_back(subnet_a);
  const net::Cidr subnet_b = *alloc.Allocate(used);
  ASSERT_FALSE(subnet_a.Overlaps(subnet_b));

  auto net_a = net::MakeTenantNetworkSpec(tenant_a, net::NetworkMode::kEgress, subnet_a);
  auto net_b = net::MakeTenantNetworkSpec(tenant_b, net::NetworkMode::kIsolated, subnet_b);
  ASSERT_TRUE(net_a.ok() && net_b.ok());
  networks_ = {net_a->name, net_b->name};

  // --- networks: created, started, idempotent, conflicts refused.
  for (const hv::NetworkSpec* s : {&*net_a, &*net_b}) {
    Status st = hv_->EnsureNetwork(*s);
    ASSERT_TRUE(st.ok()) << st.ToString()
                         << "\n(NAT networks need dnsmasq-base and iptables on the host; see README)";
    st = hv_->EnsureNetwork(*s);
    EXPECT_TRUE(st.ok()) << "not idempotent: " << st.ToString();
  }
  hv::NetworkSpec conflicting = *net_a;
  conflicting.gateway_ip = net_b->gateway_ip;
  conflicting.dhcp_start = net_b->dhcp_start;
  conflicting.dhcp_end = net_b->dhcp_end;
  EXPECT_EQ(hv_->EnsureNetwork(conflicting).code(), Code::kFailedPrecondition);

  const std::string list = Shell(kVirsh + "net-list --all");
  for (const hv::NetworkSpec* s : {&*net_a, &*net_b}) {
    EXPECT_TRUE(Has(list, s->name)) << list;
    const std::string dump = Shell(kVirsh + "net-dumpxml " + s->name);
    EXPECT_TRUE(Has(dump, "<bridge name='" + s->bridge + "' stp='off'")) << dump;
    EXPECT_TRUE(Has(dump, "<ip address='" + s->gateway_ip + "' netmask='255.255.255.0'")) << dump;
    EXPECT_TRUE(Has(Shell(kVirsh + "net-info " + s->name), "Active:         yes"));
    EXPECT_TRUE(Has(Shell(kVirsh + "net-info " + s->name), "Autostart:      no"));
    EXPECT_TRUE(Has(Shell("ip -4 -o addr show dev " + s->bridge + " 2>&1"),
                    s->gateway_ip + "/24"));
  }
  EXPECT_TRUE(Has(Shell(kVirsh + "net-dumpxml " + net_a->name), "<forward mode='nat'"));
  const std::string dump_b = Shell(kVirsh + "net-dumpxml " + net_b->name);
  EXPECT_FALSE(Has(dump_b, "<forward")) << dump_b;
  EXPECT_TRUE(Has(dump_b, "<dns enable='no'/>")) << dump_b;
  auto ours = hv_->ListNetworks(net::kNetworkNamePrefix);
  ASSERT_TRUE(ours.ok());
  EXPECT_NE(std::find(ours->begin(), ours->end(), net_a->name), ours->end());

  // --- a function filter: defined, redefined in place (same uuid).
  net::NetworkPolicy policy;
  policy.mode = net::NetworkMode::kEgress;
  policy.allow.push_back({"10.99.0.0/16", net::Protocol::kTcp, 5432, 0});
  auto filter = net::MakeFunctionFilterSpec(tenant_a, "fetch", policy, subnet_a);
  ASSERT_TRUE(filter.ok()) << filter.status().ToString();
  filters_ = {filter->name};
  ASSERT_TRUE(hv_->EnsureNwFilter(*hv::WriteNwFilterXml(*filter)).ok());
  const std::string uuid_before = Shell(kVirsh + "nwfilter-dumpxml " + filter->name + " | grep '<uuid>'");
  policy.allow.push_back({"10.98.0.0/16", net::Protocol::kUdp, 53, 0});
  filter = net::MakeFunctionFilterSpec(tenant_a, "fetch", policy, subnet_a);
  Status redefine = hv_->EnsureNwFilter(*hv::WriteNwFilterXml(*filter));
  ASSERT_TRUE(redefine.ok()) << redefine.ToString();
  EXPECT_TRUE(Has(Shell(kVirsh + "nwfilter-list"), filter->name));
  const std::string filter_dump = Shell(kVirsh + "nwfilter-dumpxml " + filter->name);
  EXPECT_TRUE(Has(filter_dump, "10.98.0.0")) << filter_dump;
  EXPECT_TRUE(Has(filter_dump, "<filterref filter='clean-traffic'/>")) << filter_dump;
  EXPECT_EQ(Shell(kVirsh + "nwfilter-dumpxml " + filter->name + " | grep '<uuid>'"), uuid_before);
  auto listed = hv_->ListNwFilters(net::kNwFilterNamePrefix);
  ASSERT_TRUE(listed.ok());
  EXPECT_NE(std::find(listed->begin(), listed->end(), filter->name), listed->end());

  // --- a guest NIC on tenant A's network with the filter: the rules reach
  // iptables, and the guest's DHCP request gets a lease through them.
  const std::string mac = net::RandomMac();
  const hv::NicSpec nic = net::MakeNic(*net_a, mac, filter->name);
  std::string params;
  for (const auto& [k, v] : nic.filter_parameters) {
    params += "<parameter name='" + k + "' value='" + v + "'/>";
  }
  domain_ = "bnettest-" + run;
  const std::string domain_xml =
      "<domain type='qemu'><name>" + domain_ + "</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
      "<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='network'/></os>"
      "<on_reboot>destroy</on_reboot><devices>"
      "<interface type='network'><mac address='" + mac + "'/><source network='" + nic.network + "'/>"
      "<model type='virtio'/><filterref filter='" + nic.filter + "'>" + params + "</filterref></interface>"
      "<memballoon model='none'/></devices></domain>";
  int code = 0;
  const std::string xml_path = "/tmp/" + domain_ + ".xml";
  { std::ofstream(xml_path) << domain_xml; }
  const std::string created = Shell(kVirsh + "create " + xml_path + " 2>&1; rc=$?; rm -f " + xml_path + "; exit $rc", &code);
  ASSERT_EQ(code, 0) << created;
  EXPECT_TRUE(Has(Shell(kVirsh + "nwfilter-binding-list"), filter->name));

  std::vector<hv::InterfaceAddress> addrs;
  for (int i = 0; i < 60 && addrs.empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    auto r = hv_->GetDomainInterfaceAddresses(domain_);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    addrs = *r;
  }
  ASSERT_EQ(addrs.size(), 1u) << "no DHCP lease within 60 s through the filter";
  EXPECT_EQ(addrs[0].mac, mac);
  EXPECT_EQ(addrs[0].prefix_length, 24);
  auto ip = net::ParseIpv4Address("ip", addrs[0].ip);
  ASSERT_TRUE(ip.ok());
  EXPECT_TRUE(subnet_a.Contains(*ip)) << addrs[0].ip;
  EXPECT_EQ(hv_->GetDomainInterfaceAddresses("bnettest-missing-" + run).status().code(), Code::kNotFound);

  // With CTRL_IP_LEARNING=dhcp libvirt installs the filter's iptables rules
  // once it has seen the lease (until then only DHCP passes).
  // libvirt builds the chains under temporary names and swaps them in, so
  // poll for the final ones (FI-/FO-/HI-<tap>).
  std::string rules;
  const std::vector<std::string> expected = {
      "-d " + net_a->gateway_ip + "/32 -j DROP",            // the host's services on the bridge
      "-d 169.254.0.0/16 -j DROP",                          // a denied private range
      "-d 10.99.0.0/16 -p tcp -m tcp --dport 5432",         // the allow-list entry
      "-s " + subnet_a.ToString() + " -m conntrack --ctstate NEW,ESTABLISHED"};  // tenant peers in
  auto all_there = [&] {
    return std::all_of(expected.begin(), expected.end(), [&](const std::string& e) { return Has(rules, e); }) &&
           Has(rules, "-N FI-") && Has(rules, "-N HI-");
  };
  for (int i = 0; i < 40 && !all_there(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    rules = Shell("iptables -S 2>&1");
  }
  for (const std::string& e : expected) EXPECT_TRUE(Has(rules, e)) << e << " missing in:\n" << rules;

  // A filter in use cannot go away.
  EXPECT_FALSE(hv_->DeleteNwFilter(filter->name).ok());

  // --- teardown: nothing of it is left.
  Shell(kVirsh + "destroy " + domain_ + " >/dev/null 2>&1");
  EXPECT_TRUE(hv_->DeleteNwFilter(filter->name).ok());
  EXPECT_TRUE(hv_->DeleteNwFilter(filter->name).ok()) << "a missing filter is not an error";
  for (const hv::NetworkSpec* s : {&*net_a, &*net_b}) {
    EXPECT_TRUE(hv_->DestroyNetwork(s->name).ok());
    EXPECT_TRUE(hv_->DestroyNetwork(s->name).ok()) << "a missing network is not an error";
  }
  const std::string list_after = Shell(kVirsh + "net-list --all");
  const std::string filters_after = Shell(kVirsh + "nwfilter-list");
  for (const hv::NetworkSpec* s : {&*net_a, &*net_b}) {
    EXPECT_FALSE(Has(list_after, s->name)) << list_after;
    EXPECT_FALSE(Has(Shell("ip -o link show 2>&1"), s->bridge));
    EXPECT_FALSE(Has(Shell("iptables -S 2>&1"), s->bridge));
  }
  EXPECT_FALSE(Has(filters_after, filter->name)) << filters_after;
  EXPECT_FALSE(Has(Shell(kVirsh + "list --all --name"), domain_));
}

}  // namespace
}  // namespace berth::testing
