// net/: network modes, allow-list parsing and validation, denied ranges,
// IPv4/CIDR parsing, names and MACs.
#include <gtest/gtest.h>

#include <regex>
#include <set>
#include <string>

#include "net/ipv4.h"
#include "net/names.h"
#include "net/network_policy.h"

namespace berth::net {
namespace {

TEST(NetworkMode, ParsesTheThreeModesAndDefaultsToNone) {
  EXPECT_EQ(*ParseNetworkMode(""), NetworkMode::kNone);
  EXPECT_EQ(*ParseNetworkMode("none"), NetworkMode::kNone);
  EXPECT_EQ(*ParseNetworkMode("egress"), NetworkMode::kEgress);
  EXPECT_EQ(*ParseNetworkMode("isolated"), NetworkMode::kIsolated);
  Result<NetworkMode> bad = ParseNetworkMode("nat");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(bad.status().field(), "network.mode");
  for (NetworkMode m : {NetworkMode::kNone, NetworkMode::kEgress, NetworkMode::kIsolated}) {
    EXPECT_EQ(*ParseNetworkMode(NetworkModeName(m)), m);
  }
  EXPECT_EQ(NetworkPolicy{}.mode, NetworkMode::kNone);
}

TEST(Protocol, ParsesTcpUdpAny) {
  EXPECT_EQ(*ParseProtocol("f", "tcp"), Protocol::kTcp);
  EXPECT_EQ(*ParseProtocol("f", "udp"), Protocol::kUdp);
  EXPECT_EQ(*ParseProtocol("f", "any"), Protocol::kAny);
  EXPECT_EQ(*ParseProtocol("f", ""), Protocol::kAny);
  EXPECT_EQ(ParseProtocol("network.allow[0].protocol", "icmp").status().field(), "network.allow[0].protocol");
}

TEST(PortRange, ParsesSinglePortsAndRanges) {
  EgressRule r;
  ASSERT_TRUE(ParsePortRange("p", "443", &r).ok());
  EXPECT_EQ(r.port_start, 443);
  EXPECT_EQ(r.port_end, 0);
  EXPECT_EQ(FormatPortRange(r), "443");
  ASSERT_TRUE(ParsePortRange("p", "8000-8080", &r).ok());
  EXPECT_EQ(r.port_start, 8000);
  EXPECT_EQ(r.port_end, 8080);
  EXPECT_EQ(FormatPortRange(r), "8000-8080");
  ASSERT_TRUE(ParsePortRange("p", "", &r).ok());
  EXPECT_EQ(r.port_start, 0);
  EXPECT_EQ(FormatPortRange(r), "");
  for (const char* bad : {"0", "65536", "80-", "-80", "90-80", "http", "1-2-3", " 80", "+80"}) {
    Status s = ParsePortRange("network.allow[1].ports", bad, &r);
    EXPECT_EQ(s.code(), Code::kInvalidArgument) << bad;
    EXPECT_EQ(s.field(), "network.allow[1].ports") << bad;
  }
}

TEST(Cidr, ParsesFormatsAndRejectsHostBits) {
  Cidr c = *ParseCidr("c", "10.240.3.0/24");
  EXPECT_EQ(c.ToString(), "10.240.3.0/24");
  EXPECT_EQ(FormatIpv4Address(c.first()), "10.240.3.0");
  EXPECT_EQ(FormatIpv4Address(c.last()), "10.240.3.255");
  EXPECT_EQ(c.size(), 256u);
  EXPECT_EQ(ParseCidr("c", "203.0.113.7")->ToString(), "203.0.113.7/32");
  EXPECT_EQ(ParseCidr("c", "0.0.0.0/0")->ToString(), "0.0.0.0/0");
  Status host_bits = ParseCidr("x", "10.0.0.1/8").status();
  EXPECT_EQ(host_bits.field(), "x");
  EXPECT_NE(host_bits.message().find("10.0.0.0/8"), std::string::npos) << host_bits.message();
  for (const char* bad : {"", "10.0.0.0/33", "10.0.0/8", "256.0.0.0/8", "10.0.0.0/", "10.0.0.0/08",
                          "010.0.0.0/8", "10.0.0.0/8x", "::1/128", "a.b.c.d"}) {
    EXPECT_FALSE(ParseCidr("c", bad).ok()) << bad;
  }
  EXPECT_TRUE(ParseCidr("c", "10.0.0.0/8")->Contains(*ParseCidr("c", "10.240.0.0/16")));
  EXPECT_TRUE(ParseCidr("c", "10.240.0.0/16")->Overlaps(*ParseCidr("c", "10.0.0.0/8")));
  EXPECT_FALSE(ParseCidr("c", "10.240.0.0/24")->Overlaps(*ParseCidr("c", "10.240.1.0/24")));
}

TEST(ValidateNetworkPolicy, NamesTheOffendingField) {
  NetworkPolicy p;
  p.mode = NetworkMode::kEgress;
  p.allow.push_back({"203.0.113.0/24", Protocol::kTcp, 443, 0});
  p.allow.push_back({"10.1.0.0/16", Protocol::kAny, 0, 0});
  EXPECT_TRUE(ValidateNetworkPolicy(p).ok());

  NetworkPolicy bad_cidr = p;
  bad_cidr.allow[1].cidr = "10.1.0.1/16";
  EXPECT_EQ(ValidateNetworkPolicy(bad_cidr).field(), "network.allow[1].cidr");

  NetworkPolicy bad_range = p;
  bad_range.allow[0].port_end = 80;
  EXPECT_EQ(ValidateNetworkPolicy(bad_range).field(), "network.allow[0].port_end");

  NetworkPolicy end_only = p;
  end_only.allow[1].port_end = 80;
  EXPECT_EQ(ValidateNetworkPolicy(end_only).field(), "network.allow[1].port_start");

  NetworkPolicy none_with_allow = p;
  none_with_allow.mode = NetworkMode::kNone;
  EXPECT_EQ(ValidateNetworkPolicy(none_with_allow).field(), "network.allow");

  NetworkPolicy too_many = p;
  too_many.allow.assign(kMaxAllowRules + 1, {"203.0.113.0/24"});
  EXPECT_EQ(ValidateNetworkPolicy(too_many, "spec.network").field(), "spec.network.allow");
}

TEST(DeniedRanges, CoverThePrivateRanges) {
  std::set<std::string> ranges;
  for (const Cidr& c : DeniedRanges()) ranges.insert(c.ToString());
  for (const char* r : {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
                        "127.0.0.0/8"}) {
    EXPECT_TRUE(ranges.count(r)) << r;
  }
  auto denied = [](const char* ip) {
    const uint32_t a = *ParseIpv4Address("ip", ip);
    for (const Cidr& c : DeniedRanges()) {
      if (c.Contains(a)) return true;
    }
    return false;
  };
  EXPECT_TRUE(denied("169.254.169.254"));  // cloud metadata
  EXPECT_TRUE(denied("172.31.255.255"));
  EXPECT_FALSE(denied("172.32.0.1"));
  EXPECT_FALSE(denied("8.8.8.8"));
  EXPECT_FALSE(denied("100.128.0.1"));
}

TEST(Names, AreDeterministicShortAndDistinct) {
  const std::string net = TenantNetworkName("acme", NetworkMode::kEgress);
  EXPECT_EQ(net, TenantNetworkName("acme", NetworkMode::kEgress));
  EXPECT_NE(net, TenantNetworkName("acme", NetworkMode::kIsolated));
  EXPECT_NE(net, TenantNetworkName("acme2", NetworkMode::kEgress));
  EXPECT_EQ(net.rfind(kNetworkNamePrefix, 0), 0u);
  EXPECT_TRUE(std::regex_match(net, std::regex("berth-net-e-[0-9a-f]{10}"))) << net;
  EXPECT_EQ(TenantNetworkName("acme", NetworkMode::kNone), "");

  for (const std::string tenant : {"acme", "", "a very long tenant name with spaces and ünïcødé / slashes"}) {
    for (NetworkMode m : {NetworkMode::kEgress, NetworkMode::kIsolated}) {
      const std::string bridge = TenantBridgeName(tenant, m);
      EXPECT_LE(bridge.size(), 15u) << bridge;
      EXPECT_TRUE(std::regex_match(bridge, std::regex("bn[ei]-[0-9a-f]{10}"))) << bridge;
    }
  }
  EXPECT_NE(TenantBridgeName("acme", NetworkMode::kEgress), TenantBridgeName("acme", NetworkMode::kIsolated));

  const std::string f = FunctionFilterName("acme", "fetch");
  EXPECT_TRUE(std::regex_match(f, std::regex("berth-fw-[0-9a-f]{16}"))) << f;
  EXPECT_EQ(f, FunctionFilterName("acme", "fetch"));
  EXPECT_NE(FunctionFilterName("a", "bc"), FunctionFilterName("ab", "c"));
  EXPECT_NE(f, FunctionFilterName("other", "fetch"));
}

TEST(RandomMac, IsInQemuRangeAndUsesTheSource) {
  EXPECT_EQ(RandomMac([](size_t n) { return std::string(n, 'a'); }), "52:54:00:aa:aa:aa");
  EXPECT_EQ(RandomMac([](size_t) { return std::string("0123456789"); }), "52:54:00:01:23:45");
  std::set<std::string> seen;
  for (int i = 0; i < 50; ++i) {
    const std::string mac = RandomMac();
    EXPECT_TRUE(std::regex_match(mac, std::regex("52:54:00:[0-9a-f]{2}:[0-9a-f]{2}:[0-9a-f]{2}"))) << mac;
    seen.insert(mac);
  }
  EXPECT_GT(seen.size(), 45u);
}

}  // namespace
}  // namespace berth::net
