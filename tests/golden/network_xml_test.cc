// Golden files for guest networking XML: WriteNetworkXml, WriteNwFilterXml,
// and WriteDomainXml of domains with a filtered NIC.
//
// tests/golden/network/<kind>/<case>.json -> <case>.xml, kind being
//   network/   an hv::NetworkSpec (member names as keys), or {"plan": {tenant,
//              mode, subnet}} run through net::MakeTenantNetworkSpec, with
//              any other keys overriding the plan's result;
//   nwfilter/  an hv::NwFilterSpec, or {"policy": {tenant, function, subnet,
//              mode, allow: [{cidr, protocol, ports}]}} run through
//              net::MakeFunctionFilterSpec (other keys override);
//   domain/    an hv::DomainSpec (as in tests/golden/domain/) whose nics may
//              carry "filter" and "filter_parameters" [[name, value], ...], or
//              "plan_nic": {tenant, mode, subnet, mac, function, ip} built with
//              net::MakeNic.
// The XML must equal <case>.xml byte for byte and pass `virt-xml-validate
// <file> network|nwfilter|domain`. Unknown JSON keys are errors.
//
// BERTH_REGENERATE_GOLDEN=1 rewrites the .xml files instead of comparing
// (review the diff). A .json without .xml, or an .xml without .json, fails.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/env.h"
#include "hypervisor/domain_spec.h"
#include "hypervisor/domain_xml.h"
#include "hypervisor/network_xml.h"
#include "hypervisor/nwfilter_xml.h"
#include "net/names.h"
#include "net/network_policy.h"
#include "net/tenant_network.h"

namespace berth {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::vector<std::string> kKinds = {"network", "nwfilter", "domain"};

fs::path FixtureDir(const std::string& kind) {
  return fs::path(BERTH_SOURCE_DIR) / "tests" / "golden" / "network" / kind;
}

bool Regenerating() {
  const char* v = std::getenv("BERTH_REGENERATE_GOLDEN");
  return v != nullptr && std::string(v) == "1";
}

// ---- JSON helpers ----------------------------------------------------------

void RejectUnknownKeys(const json& j, const std::set<std::string>& known, const std::string& where) {
  if (!j.is_object()) throw std::runtime_error(where + " must be a JSON object");
  for (const auto& [key, _] : j.items()) {
    if (!known.count(key)) throw std::runtime_error("unknown key '" + key + "' in " + where);
  }
}

template <typename T>
void Get(const json& j, const char* key, T* out) {
  if (j.contains(key)) *out = j.at(key).get<T>();
}

template <typename T>
T OrThrow(Result<T> r) {
  if (!r.ok()) throw std::runtime_error(r.status().ToString());
  return std::move(*r);
}

net::NetworkMode ModeFromJson(const json& j) { return OrThrow(net::ParseNetworkMode(j.get<std::string>())); }

net::Cidr SubnetFromJson(const json& j) { return OrThrow(net::ParseCidr("subnet", j.get<std::string>())); }

// ---- network ---------------------------------------------------------------

hv::NetworkSpec NetworkFromJson(const json& j) {
  RejectUnknownKeys(j,
                    {"plan", "name", "bridge", "forward", "gateway_ip", "prefix_length", "dhcp_start",
                     "dhcp_end", "dhcp_hosts", "dhcp_lease_minutes", "dns"},
                    "network spec");
  hv::NetworkSpec s;
  if (j.contains("plan")) {
    const json& p = j.at("plan");
    RejectUnknownKeys(p, {"tenant", "mode", "subnet"}, "plan");
    s = OrThrow(net::MakeTenantNetworkSpec(p.at("tenant").get<std::string>(), ModeFromJson(p.at("mode")),
                                           SubnetFromJson(p.at("subnet"))));
  }
  Get(j, "name", &s.name);
  Get(j, "bridge", &s.bridge);
  if (j.contains("forward")) {
    const std::string f = j.at("forward").get<std::string>();
    if (f != "nat" && f != "none") throw std::runtime_error("forward must be \"nat\" or \"none\"");
    s.forward = f == "nat" ? hv::NetworkForward::kNat : hv::NetworkForward::kNone;
  }
  Get(j, "gateway_ip", &s.gateway_ip);
  Get(j, "prefix_length", &s.prefix_length);
  Get(j, "dhcp_start", &s.dhcp_start);
  Get(j, "dhcp_end", &s.dhcp_end);
  Get(j, "dhcp_lease_minutes", &s.dhcp_lease_minutes);
  if (j.contains("dhcp_hosts")) {
    for (const json& h : j.at("dhcp_hosts")) {
      RejectUnknownKeys(h, {"mac", "ip", "name"}, "dhcp host");
      hv::DhcpHost host;
      Get(h, "mac", &host.mac);
      Get(h, "ip", &host.ip);
      Get(h, "name", &host.name);
      s.dhcp_hosts.push_back(host);
    }
  }
  Get(j, "dns", &s.dns);
  return s;
}

// ---- nwfilter --------------------------------------------------------------

hv::NwFilterSpec NwFilterFromJson(const json& j) {
  RejectUnknownKeys(j,
                    {"policy", "name", "uuid", "mode", "gateway_ip", "subnet", "allow_gateway_dns", "allow",
                     "deny"},
                    "nwfilter spec");
  hv::NwFilterSpec s;
  if (j.contains("policy")) {
    const json& p = j.at("policy");
    RejectUnknownKeys(p, {"tenant", "function", "subnet", "mode", "allow", "expose_port"}, "policy");
    net::NetworkPolicy policy;
    policy.mode = ModeFromJson(p.at("mode"));
    Get(p, "expose_port", &policy.expose_port);
    if (p.contains("allow")) {
      for (size_t i = 0; i < p.at("allow").size(); ++i) {
        const json& a = p.at("allow")[i];
        RejectUnknownKeys(a, {"cidr", "protocol", "ports"}, "allow entry");
        net::EgressRule rule;
        Get(a, "cidr", &rule.cidr);
        rule.protocol = OrThrow(net::ParseProtocol("protocol", a.value("protocol", "")));
        const Status ports = net::ParsePortRange("ports", a.value("ports", ""), &rule);
        if (!ports.ok()) throw std::runtime_error(ports.ToString());
        policy.allow.push_back(rule);
      }
    }
    s = OrThrow(net::MakeFunctionFilterSpec(p.at("tenant").get<std::string>(),
                                            p.at("function").get<std::string>(), policy,
                                            SubnetFromJson(p.at("subnet"))));
  }
  Get(j, "name", &s.name);
  Get(j, "uuid", &s.uuid);
  if (j.contains("mode")) {
    const std::string m = j.at("mode").get<std::string>();
    if (m != "egress" && m != "isolated") throw std::runtime_error("mode must be egress or isolated");
    s.mode = m == "egress" ? hv::NwFilterMode::kEgress : hv::NwFilterMode::kIsolated;
  }
  Get(j, "gateway_ip", &s.gateway_ip);
  Get(j, "subnet", &s.subnet);
  Get(j, "allow_gateway_dns", &s.allow_gateway_dns);
  if (j.contains("allow")) {
    s.allow.clear();
    for (const json& a : j.at("allow")) {
      RejectUnknownKeys(a, {"cidr", "protocol", "port_start", "port_end"}, "allow rule");
      hv::NwFilterAllowRule r;
      Get(a, "cidr", &r.cidr);
      const std::string proto = a.value("protocol", "any");
      r.protocol = proto == "tcp"   ? hv::FilterProtocol::kTcp
                   : proto == "udp" ? hv::FilterProtocol::kUdp
                                    : hv::FilterProtocol::kAny;
      Get(a, "port_start", &r.port_start);
      Get(a, "port_end", &r.port_end);
      s.allow.push_back(r);
    }
  }
  if (j.contains("deny")) s.deny = j.at("deny").get<std::vector<std::string>>();
  return s;
}

// ---- domain ----------------------------------------------------------------

hv::DomainSpec DomainFromJson(const json& j) {
  RejectUnknownKeys(j,
                    {"name", "uuid", "title", "machine", "vcpus", "memory_mib", "kernel_path", "initrd_path",
                     "cmdline", "disks", "console_log_path", "nics", "plan_nic", "metadata"},
                    "domain spec");
  hv::DomainSpec s;
  Get(j, "name", &s.name);
  Get(j, "uuid", &s.uuid);
  Get(j, "title", &s.title);
  Get(j, "machine", &s.machine);
  Get(j, "vcpus", &s.vcpus);
  Get(j, "memory_mib", &s.memory_mib);
  Get(j, "kernel_path", &s.kernel_path);
  Get(j, "initrd_path", &s.initrd_path);
  Get(j, "cmdline", &s.cmdline);
  Get(j, "console_log_path", &s.console_log_path);
  if (j.contains("disks")) {
    for (const json& d : j.at("disks")) {
      RejectUnknownKeys(d, {"path", "format", "target", "read_only"}, "disk");
      hv::DiskSpec disk;
      Get(d, "path", &disk.path);
      Get(d, "format", &disk.format);
      Get(d, "target", &disk.target);
      Get(d, "read_only", &disk.read_only);
      s.disks.push_back(disk);
    }
  }
  if (j.contains("nics")) {
    for (const json& n : j.at("nics")) {
      RejectUnknownKeys(n, {"network", "mac", "filter", "filter_parameters"}, "nic");
      hv::NicSpec nic;
      Get(n, "network", &nic.network);
      Get(n, "mac", &nic.mac);
      Get(n, "filter", &nic.filter);
      Get(n, "filter_parameters", &nic.filter_parameters);
      s.nics.push_back(nic);
    }
  }
  if (j.contains("plan_nic")) {
    const json& p = j.at("plan_nic");
    RejectUnknownKeys(p, {"tenant", "function", "mode", "subnet", "mac", "ip"}, "plan_nic");
    const std::string tenant = p.at("tenant").get<std::string>();
    const hv::NetworkSpec network =
        OrThrow(net::MakeTenantNetworkSpec(tenant, ModeFromJson(p.at("mode")), SubnetFromJson(p.at("subnet"))));
    s.nics.push_back(net::MakeNic(network, p.at("mac").get<std::string>(),
                                  net::FunctionFilterName(tenant, p.at("function").get<std::string>()),
                                  p.value("ip", "")));
  }
  if (j.contains("metadata")) {
    const json& m = j.at("metadata");
    RejectUnknownKeys(m, {"execution_id", "function", "tenant", "pid", "ppid", "image", "created_unix_ms"},
                      "metadata");
    Get(m, "execution_id", &s.metadata.execution_id);
    Get(m, "function", &s.metadata.function);
    Get(m, "tenant", &s.metadata.tenant);
    Get(m, "pid", &s.metadata.pid);
    Get(m, "ppid", &s.metadata.ppid);
    Get(m, "image", &s.metadata.image);
    Get(m, "created_unix_ms", &s.metadata.created_unix_ms);
  }
  return s;
}

// ---- files -----------------------------------------------------------------

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool WriteAll(const fs::path& p, const std::string& data) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << data;
  return static_cast<bool>(out);
}

std::set<std::string> StemsWithExtension(const std::string& kind, const std::string& ext) {
  std::set<std::string> stems;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(FixtureDir(kind), ec)) {
    if (entry.is_regular_file() && entry.path().extension() == ext) stems.insert(entry.path().stem().string());
  }
  return stems;
}

// libvirt's schema validator; "" when valid, else why not.
std::string VirtXmlValidate(const std::string& xml, const std::string& schema) {
  std::string tmpl = (fs::temp_directory_path() / "berth-net-XXXXXX.xml").string();
  int fd = ::mkstemps(tmpl.data(), 4);
  if (fd < 0) return "cannot create a temporary file";
  ::close(fd);
  if (!WriteAll(tmpl, xml)) return "cannot write " + tmpl;
  Result<CommandResult> r = Env::Default()->Run({"virt-xml-validate", tmpl, schema}, {}, 60'000);
  fs::remove(tmpl);
  if (!r.ok()) {
    if (r.status().code() == Code::kUnavailable) {
      return "virt-xml-validate is not installed; install the libvirt-clients package: " + r.status().ToString();
    }
    return r.status().ToString();
  }
  if (r->exit_code != 0) {
    return "virt-xml-validate exited with " + std::to_string(r->exit_code) + ":\n" + r->out + r->err;
  }
  return {};
}

// ---- tests -----------------------------------------------------------------

TEST(NetworkXmlGoldenFixtures, EveryJsonHasXmlAndEveryXmlHasJson) {
  size_t total = 0;
  for (const std::string& kind : kKinds) {
    const std::set<std::string> jsons = StemsWithExtension(kind, ".json");
    const std::set<std::string> xmls = StemsWithExtension(kind, ".xml");
    EXPECT_GE(jsons.size(), 2u) << "expected golden cases in " << FixtureDir(kind);
    total += jsons.size();
    for (const std::string& x : xmls) {
      EXPECT_TRUE(jsons.count(x)) << "unused fixture " << (FixtureDir(kind) / (x + ".xml")) << ": no " << x
                                  << ".json; delete it or add the spec";
    }
    if (Regenerating()) continue;
    for (const std::string& j : jsons) {
      EXPECT_TRUE(xmls.count(j)) << "fixture " << (FixtureDir(kind) / (j + ".json")) << " has no " << j
                                 << ".xml; run with BERTH_REGENERATE_GOLDEN=1 to create it";
    }
  }
  EXPECT_GE(total, 9u);
}

struct Case {
  std::string kind;
  std::string name;
};

std::vector<Case> AllCases() {
  std::vector<Case> out;
  for (const std::string& kind : kKinds) {
    for (const std::string& stem : StemsWithExtension(kind, ".json")) out.push_back({kind, stem});
  }
  return out;
}

// Generates the XML of one case; also checks what each kind can round-trip.
std::string Generate(const Case& c, const json& j) {
  if (c.kind == "network") {
    const hv::NetworkSpec spec = NetworkFromJson(j);
    std::string xml = OrThrow(hv::WriteNetworkXml(spec));
    const hv::NetworkSpec back = OrThrow(hv::ParseNetworkXml(xml));
    EXPECT_EQ(back.name, spec.name);
    EXPECT_EQ(back.bridge, spec.bridge);
    EXPECT_EQ(back.gateway_ip, spec.gateway_ip);
    EXPECT_EQ(back.prefix_length, spec.prefix_length);
    EXPECT_EQ(back.forward, spec.forward);
    EXPECT_EQ(back.dns, spec.dns);
    EXPECT_EQ(back.dhcp_start, spec.dhcp_start);
    EXPECT_EQ(back.dhcp_lease_minutes, spec.dhcp_lease_minutes);
    EXPECT_EQ(back.dhcp_hosts.size(), spec.dhcp_hosts.size());
    return xml;
  }
  if (c.kind == "nwfilter") {
    const hv::NwFilterSpec spec = NwFilterFromJson(j);
    std::string xml = OrThrow(hv::WriteNwFilterXml(spec));
    const hv::NwFilterIdentity id = OrThrow(hv::ParseNwFilterIdentity(xml));
    EXPECT_EQ(id.name, spec.name);
    return xml;
  }
  return OrThrow(hv::WriteDomainXml(DomainFromJson(j)));
}

class NetworkXmlGolden : public testing::TestWithParam<Case> {};

TEST_P(NetworkXmlGolden, MatchesFileAndValidates) {
  const Case c = GetParam();
  const fs::path json_path = FixtureDir(c.kind) / (c.name + ".json");
  const fs::path xml_path = FixtureDir(c.kind) / (c.name + ".xml");
  std::string xml;
  try {
    xml = Generate(c, json::parse(ReadAll(json_path)));
  } catch (const std::exception& e) {
    FAIL() << json_path << ": " << e.what();
  }
  EXPECT_EQ(VirtXmlValidate(xml, c.kind), "") << "generated XML for " << c.kind << "/" << c.name
                                              << " fails libvirt's schema:\n" << xml;
  if (Regenerating()) {
    ASSERT_TRUE(WriteAll(xml_path, xml)) << "cannot write " << xml_path;
    return;
  }
  ASSERT_TRUE(fs::exists(xml_path)) << xml_path << " is missing; run with BERTH_REGENERATE_GOLDEN=1 to create it";
  EXPECT_EQ(ReadAll(xml_path), xml) << "generated XML differs from " << xml_path
                                    << "; if intended, rerun with BERTH_REGENERATE_GOLDEN=1 and review the diff";
}

INSTANTIATE_TEST_SUITE_P(Cases, NetworkXmlGolden, testing::ValuesIn(AllCases()),
                         [](const testing::TestParamInfo<Case>& info) {
                           std::string n = info.param.kind + "_" + info.param.name;
                           std::replace_if(
                               n.begin(), n.end(), [](char ch) { return !std::isalnum(static_cast<unsigned char>(ch)); },
                               '_');
                           return n;
                         });

}  // namespace
}  // namespace berth
