// Guest networking wiring (issue 8) without guests: the API's "network"
// field, the policy's JSON forms, a function's policy, the NIC read back from
// domain XML, the metadata with addresses, and the agent's NetUp messages.
#include <gtest/gtest.h>

#include "api/svc_routes.h"
#include "guest/protocol.h"
#include "hypervisor/domain_xml.h"
#include "manager/networks.h"
#include "net/tenant_network.h"

namespace berth {
namespace {

using nlohmann::json;

TEST(NetworkField, StringAndObjectForms) {
  auto p = api::ParseNetworkPolicy(json("egress"));
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->mode, net::NetworkMode::kEgress);
  p = api::ParseNetworkPolicy(json{{"mode", "isolated"},
                                   {"allow", {{{"cidr", "192.168.5.0/24"}, {"protocol", "tcp"}, {"ports", "80-90"}},
                                              {{"cidr", "10.1.2.3"}, {"ports", 53}}}},
                                   {"expose_port", 8080}});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->mode, net::NetworkMode::kIsolated);
  ASSERT_EQ(p->allow.size(), 2u);
  EXPECT_EQ(p->allow[0].protocol, net::Protocol::kTcp);
  EXPECT_EQ(p->allow[0].port_start, 80);
  EXPECT_EQ(p->allow[0].port_end, 90);
  EXPECT_EQ(p->allow[1].port_start, 53);
  EXPECT_EQ(p->expose_port, 8080);
  // JSON round trip as the store keeps it.
  EXPECT_EQ(manager::NetworkPolicyFromJson(manager::NetworkPolicyToJson(*p)), *p);
}

TEST(NetworkField, ErrorsNameTheField) {
  struct Case {
    json value;
    std::string field;
  };
  for (const Case& c : std::vector<Case>{
           {json("bridge"), "network"},
           {json(5), "network"},
           {json{{"mode", 1}}, "network.mode"},
           {json{{"mode", "egress"}, {"allow", "all"}}, "network.allow"},
           {json{{"mode", "egress"}, {"allow", {{{"cidr", "300.0.0.0/8"}}}}}, "network.allow[0].cidr"},
           {json{{"mode", "egress"}, {"allow", {{{"ports", "80"}}}}}, "network.allow[0].cidr"},
           {json{{"mode", "egress"}, {"allow", {{{"cidr", "10.0.0.0/8"}, {"ports", "0"}}}}}, "network.allow[0].ports"},
           {json{{"mode", "egress"}, {"allow", {{{"cidr", "10.0.0.0/8"}, {"x", 1}}}}}, "network.allow[0].x"},
           {json{{"mode", "egress"}, {"expose_port", 0}}, "network.expose_port"},
           {json{{"expose_port", 80}}, "network.expose_port"},  // mode none
       }) {
    auto p = api::ParseNetworkPolicy(c.value);
    ASSERT_FALSE(p.ok()) << c.value.dump();
    EXPECT_EQ(p.status().code(), Code::kInvalidArgument) << c.value.dump();
    EXPECT_EQ(p.status().field(), c.field) << c.value.dump() << ": " << p.status().ToString();
  }
}

TEST(NetworkField, FunctionDefinitionTakesTheObject) {
  json obj = {{"name", "f"}, {"network", {{"mode", "egress"}, {"allow", {{{"cidr", "203.0.113.0/24"}}}}}}};
  manager::FunctionSpec spec;
  ASSERT_TRUE(api::TakeFunctionNetwork(obj, &spec).ok());
  EXPECT_FALSE(obj.contains("network"));
  EXPECT_EQ(spec.network, "egress");
  ASSERT_EQ(spec.network_allow.size(), 1u);
  auto policy = manager::FunctionNetworkPolicy(spec);
  ASSERT_TRUE(policy.ok());
  EXPECT_EQ(policy->mode, net::NetworkMode::kEgress);
  spec.network = "";
  EXPECT_EQ(manager::FunctionNetworkPolicy(spec).status().field(), "network");
  spec.network = "none";
  EXPECT_EQ(manager::FunctionNetworkPolicy(spec).status().field(), "network.allow");
}

TEST(DomainNics, ReadBackFromDomainXml) {
  hv::DomainSpec spec;
  spec.name = "berth-t-1-abcdef";
  spec.kernel_path = "/k";
  spec.initrd_path = "/i";
  spec.disks.push_back({"/d.qcow2", "qcow2", "vda", false});
  spec.metadata.execution_id = "abcdef";
  spec.metadata.network = "egress";
  spec.metadata.addresses = {"10.240.0.17"};
  auto subnet = net::ParseCidr("s", "10.240.0.0/24");
  auto network = net::MakeTenantNetworkSpec("t", net::NetworkMode::kEgress, *subnet);
  ASSERT_TRUE(network.ok());
  spec.nics.push_back(net::MakeNic(*network, "52:54:00:00:00:01", "berth-fw-0123456789abcdef"));
  auto xml = hv::WriteDomainXml(spec);
  ASSERT_TRUE(xml.ok()) << xml.status().ToString();
  auto nics = hv::ParseDomainNics(*xml);
  ASSERT_TRUE(nics.ok());
  ASSERT_EQ(nics->size(), 1u);
  EXPECT_EQ((*nics)[0].network, network->name);
  EXPECT_EQ((*nics)[0].mac, "52:54:00:00:00:01");
  EXPECT_EQ((*nics)[0].filter, "berth-fw-0123456789abcdef");
  auto md = hv::ParseDomainMetadata(*xml);
  ASSERT_TRUE(md.ok());
  EXPECT_EQ(md->network, "egress");
  EXPECT_EQ(md->addresses, std::vector<std::string>{"10.240.0.17"});
  auto bare = hv::ParseMetadataXml(hv::MetadataXml(spec.metadata));
  ASSERT_TRUE(bare.ok());
  EXPECT_EQ(bare->addresses, spec.metadata.addresses);
}

TEST(AgentProtocol, NetUpAndNetReady) {
  agent::NetUpMsg up;
  up.mac = "52:54:00:00:00:02";
  up.timeout_ms = 1234;
  auto back = agent::ParseBody<agent::NetUpMsg>(json(up).dump());
  ASSERT_TRUE(back);
  EXPECT_EQ(back->mac, up.mac);
  EXPECT_EQ(back->timeout_ms, 1234);
  agent::NetReadyMsg ready;
  ready.interface = "eth0";
  ready.ip = "10.240.0.9";
  ready.prefix_length = 24;
  ready.gateway = "10.240.0.1";
  auto r = agent::ParseBody<agent::NetReadyMsg>(json(ready).dump());
  ASSERT_TRUE(r);
  EXPECT_EQ(r->ip, "10.240.0.9");
  EXPECT_EQ(r->prefix_length, 24);
  EXPECT_STREQ(agent::MsgTypeName(agent::MsgType::kNetUp), "netup");
}

}  // namespace
}  // namespace berth
