// Golden files for WriteDomainXml.
//
// Each tests/golden/domain/<case>.json is a DomainSpec (keys = member names,
// missing keys keep the struct defaults, unknown keys are an error); the XML
// generated from it must equal <case>.xml byte for byte and must pass
// `virt-xml-validate <file> domain` (libvirt's own RelaxNG schema).
//
// BERTH_REGENERATE_GOLDEN=1 rewrites the .xml files instead of comparing
// (review the diff before committing). A .json without .xml, or an .xml
// without .json, fails the suite so stale fixtures cannot pile up.
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

namespace berth::hv {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

fs::path FixtureDir() { return fs::path(BERTH_SOURCE_DIR) / "tests" / "golden" / "domain"; }

bool Regenerating() {
  const char* v = std::getenv("BERTH_REGENERATE_GOLDEN");
  return v != nullptr && std::string(v) == "1";
}

// ---- JSON -> DomainSpec ----------------------------------------------------

// Throws std::runtime_error naming the key on anything unexpected.
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

DiskSpec DiskFromJson(const json& j) {
  RejectUnknownKeys(j, {"path", "format", "target", "read_only"}, "disk");
  DiskSpec d;
  Get(j, "path", &d.path);
  Get(j, "format", &d.format);
  Get(j, "target", &d.target);
  Get(j, "read_only", &d.read_only);
  return d;
}

NicSpec NicFromJson(const json& j) {
  RejectUnknownKeys(j, {"network", "mac", "filter", "filter_parameters"}, "nic");
  NicSpec n;
  Get(j, "network", &n.network);
  Get(j, "mac", &n.mac);
  Get(j, "filter", &n.filter);
  Get(j, "filter_parameters", &n.filter_parameters);
  return n;
}

DomainSpec SpecFromJson(const json& j) {
  RejectUnknownKeys(j,
                    {"name", "uuid", "title", "accel", "emulator", "machine", "vcpus",
                     "memory_mib", "kernel_path", "initrd_path", "cmdline", "disks",
                     "agent_channel", "console_log_path", "nics", "metadata"},
                    "spec");
  DomainSpec s;
  Get(j, "name", &s.name);
  Get(j, "uuid", &s.uuid);
  Get(j, "title", &s.title);
  if (j.contains("accel")) {
    const std::string accel = j.at("accel").get<std::string>();
    if (accel == "kvm") {
      s.accel = Accel::kKvm;
    } else if (accel == "tcg") {
      s.accel = Accel::kTcg;
    } else {
      throw std::runtime_error("accel must be \"kvm\" or \"tcg\"");
    }
  }
  Get(j, "emulator", &s.emulator);
  Get(j, "machine", &s.machine);
  Get(j, "vcpus", &s.vcpus);
  Get(j, "memory_mib", &s.memory_mib);
  Get(j, "kernel_path", &s.kernel_path);
  Get(j, "initrd_path", &s.initrd_path);
  Get(j, "cmdline", &s.cmdline);
  if (j.contains("disks")) {
    for (const json& d : j.at("disks")) s.disks.push_back(DiskFromJson(d));
  }
  if (j.contains("agent_channel")) {
    const json& c = j.at("agent_channel");
    RejectUnknownKeys(c, {"name", "socket_path"}, "agent_channel");
    Get(c, "name", &s.agent_channel.name);
    Get(c, "socket_path", &s.agent_channel.socket_path);
  }
  Get(j, "console_log_path", &s.console_log_path);
  if (j.contains("nics")) {
    for (const json& n : j.at("nics")) s.nics.push_back(NicFromJson(n));
  }
  if (j.contains("metadata")) {
    const json& m = j.at("metadata");
    RejectUnknownKeys(m,
                      {"execution_id", "function", "tenant", "pid", "ppid", "image",
                       "created_unix_ms", "network", "addresses"},
                      "metadata");
    Get(m, "network", &s.metadata.network);
    Get(m, "addresses", &s.metadata.addresses);
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

// ---- helpers ---------------------------------------------------------------

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

std::set<std::string> StemsWithExtension(const std::string& ext) {
  std::set<std::string> stems;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(FixtureDir(), ec)) {
    if (entry.is_regular_file() && entry.path().extension() == ext) {
      stems.insert(entry.path().stem().string());
    }
  }
  return stems;
}

// Runs libvirt's schema validator on `xml`. Empty string = valid; otherwise
// the reason, including how to get the tool when it is missing.
std::string VirtXmlValidate(const std::string& xml) {
  std::string tmpl = (fs::temp_directory_path() / "berth-domain-XXXXXX.xml").string();
  int fd = ::mkstemps(tmpl.data(), 4);
  if (fd < 0) return "cannot create a temporary file";
  ::close(fd);
  if (!WriteAll(tmpl, xml)) return "cannot write " + tmpl;
  Result<CommandResult> r = Env::Default()->Run({"virt-xml-validate", tmpl, "domain"}, {}, 60'000);
  fs::remove(tmpl);
  if (!r.ok()) {
    if (r.status().code() == Code::kUnavailable) {
      return "virt-xml-validate is not installed; install the libvirt-clients package "
             "(apt-get install libvirt-clients): " + r.status().ToString();
    }
    return r.status().ToString();
  }
  if (r->exit_code != 0) {
    return "virt-xml-validate exited with " + std::to_string(r->exit_code) + ":\n" + r->out +
           r->err;
  }
  return {};
}

// ---- tests -----------------------------------------------------------------

std::vector<std::string> CaseNames() {
  const std::set<std::string> stems = StemsWithExtension(".json");
  return {stems.begin(), stems.end()};
}

TEST(DomainXmlGoldenFixtures, EveryJsonHasXmlAndEveryXmlHasJson) {
  const std::set<std::string> jsons = StemsWithExtension(".json");
  const std::set<std::string> xmls = StemsWithExtension(".xml");
  EXPECT_GE(jsons.size(), 7u) << "expected the golden cases in " << FixtureDir();
  for (const std::string& x : xmls) {
    EXPECT_TRUE(jsons.count(x)) << "unused fixture " << (FixtureDir() / (x + ".xml"))
                                << ": no " << x << ".json; delete it or add the spec";
  }
  if (Regenerating()) return;  // the case tests write the missing .xml files
  for (const std::string& j : jsons) {
    EXPECT_TRUE(xmls.count(j)) << "fixture " << (FixtureDir() / (j + ".json"))
                               << " has no " << j
                               << ".xml; run with BERTH_REGENERATE_GOLDEN=1 to create it";
  }
}

class DomainXmlGolden : public testing::TestWithParam<std::string> {};

TEST_P(DomainXmlGolden, MatchesFileAndValidates) {
  const std::string name = GetParam();
  const fs::path json_path = FixtureDir() / (name + ".json");
  const fs::path xml_path = FixtureDir() / (name + ".xml");

  DomainSpec spec;
  try {
    spec = SpecFromJson(json::parse(ReadAll(json_path)));
  } catch (const std::exception& e) {
    FAIL() << json_path << ": " << e.what();
  }
  Result<std::string> xml = WriteDomainXml(spec);
  ASSERT_TRUE(xml.ok()) << json_path << ": " << xml.status().ToString();

  const std::string problem = VirtXmlValidate(*xml);
  EXPECT_EQ(problem, "") << "generated XML for " << name << " fails libvirt's schema:\n" << *xml;

  // The metadata must survive the round trip through the generated XML.
  Result<DomainMetadata> md = ParseDomainMetadata(*xml);
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  EXPECT_EQ(md->execution_id, spec.metadata.execution_id);
  EXPECT_EQ(md->function, spec.metadata.function);
  EXPECT_EQ(md->tenant, spec.metadata.tenant);
  EXPECT_EQ(md->image, spec.metadata.image);
  EXPECT_EQ(md->pid, spec.metadata.pid);
  EXPECT_EQ(md->ppid, spec.metadata.ppid);
  EXPECT_EQ(md->created_unix_ms, spec.metadata.created_unix_ms);

  if (Regenerating()) {
    ASSERT_TRUE(WriteAll(xml_path, *xml)) << "cannot write " << xml_path;
    return;
  }
  ASSERT_TRUE(fs::exists(xml_path))
      << xml_path << " is missing; run with BERTH_REGENERATE_GOLDEN=1 to create it";
  EXPECT_EQ(ReadAll(xml_path), *xml)
      << "generated XML differs from " << xml_path
      << "; if the change is intended, rerun with BERTH_REGENERATE_GOLDEN=1 and review the diff";
}

INSTANTIATE_TEST_SUITE_P(Cases, DomainXmlGolden, testing::ValuesIn(CaseNames()),
                         [](const testing::TestParamInfo<std::string>& info) {
                           std::string n = info.param;
                           std::replace_if(
                               n.begin(), n.end(),
                               [](char c) { return !std::isalnum(static_cast<unsigned char>(c)); },
                               '_');
                           return n;
                         });

}  // namespace
}  // namespace berth::hv
