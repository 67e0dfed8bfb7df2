// net/tenant_network (plans -> hypervisor specs) and the validation of
// hv::NetworkSpec, hv::NwFilterSpec and NIC filters.
#include <gtest/gtest.h>

#include <string>

#include "hypervisor/domain_spec.h"
#include "hypervisor/domain_xml.h"
#include "hypervisor/network_xml.h"
#include "hypervisor/nwfilter_xml.h"
#include "net/names.h"
#include "net/tenant_network.h"

namespace berth::net {
namespace {

Cidr C(const char* text) { return *ParseCidr("c", text); }

TEST(TenantNetworkSpec, EgressIsNatWithDnsIsolatedHasNeither) {
  hv::NetworkSpec e = *MakeTenantNetworkSpec("acme", NetworkMode::kEgress, C("10.240.3.0/24"));
  EXPECT_EQ(e.name, TenantNetworkName("acme", NetworkMode::kEgress));
  EXPECT_EQ(e.bridge, TenantBridgeName("acme", NetworkMode::kEgress));
  EXPECT_EQ(e.forward, hv::NetworkForward::kNat);
  EXPECT_TRUE(e.dns);
  EXPECT_EQ(e.gateway_ip, "10.240.3.1");
  EXPECT_EQ(e.prefix_length, 24);
  EXPECT_EQ(e.dhcp_start, "10.240.3.10");
  EXPECT_EQ(e.dhcp_end, "10.240.3.254");

  hv::NetworkSpec i = *MakeTenantNetworkSpec("acme", NetworkMode::kIsolated, C("10.240.4.0/24"));
  EXPECT_EQ(i.forward, hv::NetworkForward::kNone);
  EXPECT_FALSE(i.dns);
  std::string xml = *hv::WriteNetworkXml(i);
  EXPECT_EQ(xml.find("<forward"), std::string::npos) << xml;
  EXPECT_NE(xml.find("<dns enable='no'/>"), std::string::npos) << xml;

  hv::NetworkSpec small = *MakeTenantNetworkSpec("acme", NetworkMode::kEgress, C("10.240.5.0/29"));
  EXPECT_EQ(small.dhcp_start, "10.240.5.2");
  EXPECT_EQ(small.dhcp_end, "10.240.5.6");

  EXPECT_EQ(MakeTenantNetworkSpec("acme", NetworkMode::kNone, C("10.240.3.0/24")).status().field(), "network.mode");
}

TEST(TenantNetworkSpec, LeaseTimeDefaultsToADayAndMayBeLoweredToDnsmasqsMinimum) {
  EXPECT_EQ(MakeTenantNetworkSpec("acme", NetworkMode::kEgress, C("10.240.3.0/24"))->dhcp_lease_minutes,
            kTenantLeaseMinutes);
  EXPECT_EQ(kTenantLeaseMinutes, 24 * 60);
  hv::NetworkSpec short_lease = *MakeTenantNetworkSpec("acme", NetworkMode::kIsolated, C("10.240.4.0/24"), 2);
  EXPECT_EQ(short_lease.dhcp_lease_minutes, 2);
  EXPECT_NE(hv::WriteNetworkXml(short_lease)->find("<lease expiry='2' unit='minutes'/>"), std::string::npos);
  for (int bad : {1, 0, -5}) {
    auto r = MakeTenantNetworkSpec("acme", NetworkMode::kEgress, C("10.240.3.0/24"), bad);
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << bad;
    EXPECT_EQ(r.status().field(), "dhcp_lease_minutes") << bad;
  }
}

TEST(FunctionFilterSpec, CarriesPolicyAndDeniedRanges) {
  NetworkPolicy p;
  p.mode = NetworkMode::kIsolated;
  p.allow.push_back({"198.51.100.7", Protocol::kUdp, 53, 0});
  hv::NwFilterSpec f = *MakeFunctionFilterSpec("acme", "fn", p, C("10.240.3.0/24"));
  EXPECT_EQ(f.name, FunctionFilterName("acme", "fn"));
  EXPECT_EQ(f.mode, hv::NwFilterMode::kIsolated);
  EXPECT_FALSE(f.allow_gateway_dns);
  EXPECT_EQ(f.gateway_ip, "10.240.3.1");
  EXPECT_EQ(f.subnet, "10.240.3.0/24");
  ASSERT_EQ(f.allow.size(), 1u);
  EXPECT_EQ(f.allow[0].cidr, "198.51.100.7/32");
  EXPECT_EQ(f.allow[0].protocol, hv::FilterProtocol::kUdp);
  EXPECT_EQ(f.deny.size(), DeniedRanges().size());

  std::string xml = *hv::WriteNwFilterXml(f);
  EXPECT_NE(xml.find("<filterref filter='clean-traffic'/>"), std::string::npos);
  EXPECT_EQ(xml.find("priority='900'"), std::string::npos) << "isolated must not accept the rest:\n" << xml;
  EXPECT_EQ(xml.find("dstportstart='53'/>\n  </rule>\n  <rule action='drop' direction='out' priority='200'"),
            std::string::npos);

  p.mode = NetworkMode::kEgress;
  std::string egress = *hv::WriteNwFilterXml(*MakeFunctionFilterSpec("acme", "fn", p, C("10.240.3.0/24")));
  EXPECT_NE(egress.find("<rule action='accept' direction='out' priority='900'>"), std::string::npos) << egress;
  EXPECT_NE(egress.find("<udp dstipaddr='10.240.3.1' dstportstart='53'/>"), std::string::npos) << egress;

  p.allow[0].cidr = "198.51.100.7/16";
  EXPECT_EQ(MakeFunctionFilterSpec("acme", "fn", p, C("10.240.3.0/24")).status().field(),
            "network.allow[0].cidr");
  p.allow.clear();
  p.mode = NetworkMode::kNone;
  EXPECT_EQ(MakeFunctionFilterSpec("acme", "fn", p, C("10.240.3.0/24")).status().field(), "network.mode");
}

TEST(MakeNic, PinsTheIpOrLearnsItFromDhcp) {
  hv::NetworkSpec net = *MakeTenantNetworkSpec("acme", NetworkMode::kEgress, C("10.240.3.0/24"));
  hv::NicSpec learn = MakeNic(net, "52:54:00:00:00:01", "berth-fw-x");
  EXPECT_EQ(learn.network, net.name);
  ASSERT_EQ(learn.filter_parameters.size(), 3u);
  EXPECT_EQ(learn.filter_parameters[0], (std::pair<std::string, std::string>{"CTRL_IP_LEARNING", "dhcp"}));
  EXPECT_EQ(learn.filter_parameters[1], (std::pair<std::string, std::string>{"DHCPSERVER", "10.240.3.1"}));
  EXPECT_EQ(learn.filter_parameters[2], (std::pair<std::string, std::string>{"MAC", "52:54:00:00:00:01"}));
  hv::NicSpec pinned = MakeNic(net, "52:54:00:00:00:01", "berth-fw-x", "10.240.3.5");
  ASSERT_EQ(pinned.filter_parameters.size(), 2u);
  EXPECT_EQ(pinned.filter_parameters[0], (std::pair<std::string, std::string>{"IP", "10.240.3.5"}));
  EXPECT_TRUE(MakeNic(net, "", "").filter_parameters.empty());
}

hv::NetworkSpec GoodNetwork() {
  hv::NetworkSpec s;
  s.name = "berth-net-e-0123456789";
  s.bridge = "bne-0123456789";
  s.gateway_ip = "10.240.0.1";
  s.dhcp_start = "10.240.0.10";
  s.dhcp_end = "10.240.0.254";
  return s;
}

TEST(ValidateNetworkSpec, NamesTheField) {
  EXPECT_TRUE(hv::ValidateNetworkSpec(GoodNetwork()).ok());
  struct Case {
    const char* what;
    void (*mutate)(hv::NetworkSpec&);
    const char* field;
  };
  const Case cases[] = {
      {"no name", [](hv::NetworkSpec& s) { s.name.clear(); }, "name"},
      {"slash in name", [](hv::NetworkSpec& s) { s.name = "a/b"; }, "name"},
      {"bridge too long", [](hv::NetworkSpec& s) { s.bridge = "bne-0123456789ab"; }, "bridge"},
      {"bridge with space", [](hv::NetworkSpec& s) { s.bridge = "bn 1"; }, "bridge"},
      {"bad gateway", [](hv::NetworkSpec& s) { s.gateway_ip = "10.240.0"; }, "gateway_ip"},
      {"gateway is network address", [](hv::NetworkSpec& s) { s.gateway_ip = "10.240.0.0"; }, "gateway_ip"},
      {"prefix too small", [](hv::NetworkSpec& s) { s.prefix_length = 31; }, "prefix_length"},
      {"range outside", [](hv::NetworkSpec& s) { s.dhcp_end = "10.240.1.5"; }, "dhcp_end"},
      {"range reversed", [](hv::NetworkSpec& s) { s.dhcp_end = "10.240.0.9"; }, "dhcp_end"},
      {"range over gateway", [](hv::NetworkSpec& s) { s.dhcp_start = "10.240.0.1"; }, "dhcp_start"},
      {"half a range", [](hv::NetworkSpec& s) { s.dhcp_end.clear(); }, "dhcp_end"},
      {"broadcast in range", [](hv::NetworkSpec& s) { s.dhcp_end = "10.240.0.255"; }, "dhcp_end"},
      {"host bad mac", [](hv::NetworkSpec& s) { s.dhcp_hosts.push_back({"52:54:00:zz:00:01", "10.240.0.5", ""}); },
       "dhcp_hosts[0].mac"},
      {"host multicast mac",
       [](hv::NetworkSpec& s) { s.dhcp_hosts.push_back({"01:54:00:00:00:01", "10.240.0.5", ""}); },
       "dhcp_hosts[0].mac"},
      {"host outside",
       [](hv::NetworkSpec& s) { s.dhcp_hosts.push_back({"52:54:00:00:00:01", "10.241.0.5", ""}); },
       "dhcp_hosts[0].ip"},
      {"host is gateway",
       [](hv::NetworkSpec& s) { s.dhcp_hosts.push_back({"52:54:00:00:00:01", "10.240.0.1", ""}); },
       "dhcp_hosts[0].ip"},
      {"duplicate mac",
       [](hv::NetworkSpec& s) {
         s.dhcp_hosts.push_back({"52:54:00:00:00:01", "10.240.0.5", ""});
         s.dhcp_hosts.push_back({"52:54:00:00:00:01", "10.240.0.6", ""});
       },
       "dhcp_hosts[1].mac"},
      {"bad host name",
       [](hv::NetworkSpec& s) { s.dhcp_hosts.push_back({"52:54:00:00:00:01", "10.240.0.5", "a b"}); },
       "dhcp_hosts[0].name"},
  };
  for (const Case& c : cases) {
    hv::NetworkSpec s = GoodNetwork();
    c.mutate(s);
    Status st = hv::ValidateNetworkSpec(s);
    EXPECT_EQ(st.code(), Code::kInvalidArgument) << c.what;
    EXPECT_EQ(st.field(), c.field) << c.what << ": " << st.ToString();
    EXPECT_FALSE(hv::WriteNetworkXml(s).ok()) << c.what;
  }
}

TEST(ParseNetworkXml, ReadsWhatLibvirtPrints) {
  // As `virsh net-dumpxml` prints a started NAT network.
  const char* dumped = R"(<network>
  <name>berth-net-e-0123456789</name>
  <uuid>37fc5c4c-5309-482d-930b-fe7c683cbf51</uuid>
  <forward mode='nat'>
    <nat>
      <port start='1024' end='65535'/>
    </nat>
  </forward>
  <bridge name='bne-0123456789' stp='off' delay='0'/>
  <mac address='52:54:00:91:54:f6'/>
  <ip address='10.240.0.1' prefix='24'>
    <dhcp>
      <range start='10.240.0.10' end='10.240.0.254'/>
    </dhcp>
  </ip>
</network>
)";
  hv::NetworkSpec s = *hv::ParseNetworkXml(dumped);
  EXPECT_EQ(s.name, "berth-net-e-0123456789");
  EXPECT_EQ(s.bridge, "bne-0123456789");
  EXPECT_EQ(s.forward, hv::NetworkForward::kNat);
  EXPECT_EQ(s.gateway_ip, "10.240.0.1");
  EXPECT_EQ(s.prefix_length, 24);
  EXPECT_TRUE(s.dns);
  EXPECT_EQ(hv::ParseNetworkXml("<domain/>").status().field(), "network_xml");
  EXPECT_EQ(hv::ParseNetworkXml("<network>").status().field(), "network_xml");
}

hv::NwFilterSpec GoodFilter() {
  hv::NwFilterSpec f;
  f.name = "berth-fw-0123456789abcdef";
  f.gateway_ip = "10.240.0.1";
  f.subnet = "10.240.0.0/24";
  return f;
}

TEST(ValidateNwFilterSpec, NamesTheField) {
  EXPECT_TRUE(hv::ValidateNwFilterSpec(GoodFilter()).ok());
  struct Case {
    const char* what;
    void (*mutate)(hv::NwFilterSpec&);
    const char* field;
  };
  const Case cases[] = {
      {"no name", [](hv::NwFilterSpec& f) { f.name.clear(); }, "name"},
      {"stock name", [](hv::NwFilterSpec& f) { f.name = "clean-traffic"; }, "name"},
      {"bad uuid", [](hv::NwFilterSpec& f) { f.uuid = "nope"; }, "uuid"},
      {"gateway outside", [](hv::NwFilterSpec& f) { f.gateway_ip = "10.241.0.1"; }, "gateway_ip"},
      {"subnet host bits", [](hv::NwFilterSpec& f) { f.subnet = "10.240.0.1/24"; }, "subnet"},
      {"allow cidr", [](hv::NwFilterSpec& f) { f.allow.push_back({"300.0.0.0/8"}); }, "allow[0].cidr"},
      {"allow ports reversed",
       [](hv::NwFilterSpec& f) { f.allow.push_back({"1.2.3.4", hv::FilterProtocol::kTcp, 90, 80}); },
       "allow[0].port_end"},
      {"deny cidr", [](hv::NwFilterSpec& f) { f.deny.push_back("10.0.0.0/99"); }, "deny[0]"},
  };
  for (const Case& c : cases) {
    hv::NwFilterSpec f = GoodFilter();
    c.mutate(f);
    Status st = hv::ValidateNwFilterSpec(f);
    EXPECT_EQ(st.field(), c.field) << c.what << ": " << st.ToString();
  }
}

TEST(NwFilterUuid, IsReadAndReplaced) {
  std::string xml = *hv::WriteNwFilterXml(GoodFilter());
  hv::NwFilterIdentity id = *hv::ParseNwFilterIdentity(xml);
  EXPECT_EQ(id.name, "berth-fw-0123456789abcdef");
  EXPECT_EQ(id.uuid, "");
  std::string with = *hv::SetNwFilterUuid(xml, "6f1a2b3c-4d5e-4f60-8172-839405a6b7c8");
  EXPECT_EQ(hv::ParseNwFilterIdentity(with)->uuid, "6f1a2b3c-4d5e-4f60-8172-839405a6b7c8");
  EXPECT_EQ(with.find("<uuid>"), with.find('\n') + 3) << "uuid must be the first child:\n" << with;
  std::string again = *hv::SetNwFilterUuid(with, "00000000-0000-4000-8000-000000000001");
  EXPECT_EQ(hv::ParseNwFilterIdentity(again)->uuid, "00000000-0000-4000-8000-000000000001");
  // Everything but the uuid line is untouched.
  hv::NwFilterSpec f = GoodFilter();
  f.uuid = "00000000-0000-4000-8000-000000000001";
  EXPECT_EQ(again, *hv::WriteNwFilterXml(f));
  EXPECT_FALSE(hv::SetNwFilterUuid(xml, "x").ok());
  EXPECT_FALSE(hv::ParseNwFilterIdentity("<network/>").ok());
}

TEST(NicFilter, IsValidatedAndRendered) {
  hv::DomainSpec spec;
  spec.name = "berth-ex-1";
  spec.kernel_path = "/k";
  spec.initrd_path = "/i";
  spec.metadata.execution_id = "ex-1";
  hv::NicSpec nic{"berth-net-e-0123456789", "52:54:00:00:00:01", "berth-fw-0123456789abcdef",
                  {{"IP", "10.240.0.5"}, {"MAC", "52:54:00:00:00:01"}}};
  spec.nics.push_back(nic);
  std::string xml = *hv::WriteDomainXml(spec);
  EXPECT_NE(xml.find("      <model type='virtio'/>\n      <filterref filter='berth-fw-0123456789abcdef'>\n"
                     "        <parameter name='IP' value='10.240.0.5'/>\n"),
            std::string::npos)
      << xml;

  spec.nics[0].filter_parameters = {{"I P", "x"}};
  EXPECT_EQ(hv::ValidateDomainSpec(spec).field(), "nics[0].filter_parameters[0].name");
  spec.nics[0].filter_parameters = {{"IP", ""}};
  EXPECT_EQ(hv::ValidateDomainSpec(spec).field(), "nics[0].filter_parameters[0].value");
  spec.nics[0].filter_parameters = {{"IP", "a\nb"}};
  EXPECT_EQ(hv::ValidateDomainSpec(spec).field(), "nics[0].filter_parameters[0].value");
  spec.nics[0].filter = "bad name";
  EXPECT_EQ(hv::ValidateDomainSpec(spec).field(), "nics[0].filter");
  spec.nics[0].filter.clear();
  EXPECT_EQ(hv::ValidateDomainSpec(spec).field(), "nics[0].filter");
  spec.nics[0].filter_parameters.clear();
  EXPECT_TRUE(hv::ValidateDomainSpec(spec).ok());
}

}  // namespace
}  // namespace berth::net
