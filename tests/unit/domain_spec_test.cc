// ValidateDomainSpec, WriteDomainXml's refusal of bad specs, and berth's
// domain metadata round trip: through our own XML, through XML reformatted
// the way libvirt (or another tool) may print it, and through libvirt's test
// driver via `virsh -c test:///default` (no libvirt headers in tests).
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "tests/support/temp_dir.h"
#include "common/env.h"
#include "common/status.h"
#include "hypervisor/domain_spec.h"
#include "hypervisor/domain_xml.h"

namespace berth::hv {
namespace {

namespace fs = std::filesystem;

DomainSpec ValidSpec() {
  DomainSpec s;
  s.name = "berth-ex-42";
  s.title = "unit test";
  s.kernel_path = "/var/lib/berth/runtime/vmlinuz";
  s.initrd_path = "/var/lib/berth/runtime/initrd.img";
  s.disks.push_back({"/var/lib/libvirt/images/berth/ex-42.qcow2", "qcow2", "vda", false});
  s.console_log_path = "/var/log/berth/ex-42.console.log";
  s.metadata.execution_id = "ex-42";
  s.metadata.function = "resize & <crop> \"fast\" 'n' cheap";
  s.metadata.tenant = "acme";
  s.metadata.pid = 42;
  s.metadata.ppid = 7;
  s.metadata.image = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
  s.metadata.created_unix_ms = 1700000000123;
  return s;
}

void ExpectSameMetadata(const DomainMetadata& a, const DomainMetadata& b) {
  EXPECT_EQ(a.execution_id, b.execution_id);
  EXPECT_EQ(a.function, b.function);
  EXPECT_EQ(a.tenant, b.tenant);
  EXPECT_EQ(a.pid, b.pid);
  EXPECT_EQ(a.ppid, b.ppid);
  EXPECT_EQ(a.image, b.image);
  EXPECT_EQ(a.created_unix_ms, b.created_unix_ms);
}

// ---- ValidateDomainSpec ----------------------------------------------------

TEST(ValidateDomainSpec, AcceptsValidSpecs) {
  EXPECT_TRUE(ValidateDomainSpec(ValidSpec()).ok());

  DomainSpec full = ValidSpec();
  full.name = "berth-" + std::string(58, 'x');  // exactly 64
  full.uuid = "6F1C0B7E-2D4A-4C1B-9E3F-0A1B2C3D4E5F";
  full.accel = Accel::kKvm;
  full.emulator = "/usr/bin/qemu-system-x86_64";
  full.vcpus = 256;
  full.memory_mib = 1048576;
  full.disks.push_back({"/srv/data.raw", "raw", "vdz", true});
  full.agent_channel.socket_path = "/run/berth/ex-42.sock";
  full.nics.push_back({"berth-egress", "52:54:00:AB:cd:01"});
  full.nics.push_back({"default", ""});
  full.title = "Zürich ☃ & <friends>";
  Status st = ValidateDomainSpec(full);
  EXPECT_TRUE(st.ok()) << st.ToString();

  DomainSpec small = ValidSpec();
  small.vcpus = 1;
  small.memory_mib = 16;
  small.disks.clear();
  small.console_log_path.clear();
  small.title.clear();
  small.cmdline.clear();
  small.metadata = DomainMetadata{};
  small.metadata.execution_id = "e";
  st = ValidateDomainSpec(small);
  EXPECT_TRUE(st.ok()) << st.ToString();
}

struct RejectCase {
  std::string what;
  std::function<void(DomainSpec&)> mutate;
  std::string field;
};

TEST(ValidateDomainSpec, RejectsEachBadFieldByName) {
  const std::vector<RejectCase> cases = {
      {"empty name", [](DomainSpec& s) { s.name = ""; }, "name"},
      {"name without prefix", [](DomainSpec& s) { s.name = "ex-42"; }, "name"},
      {"name that is only the prefix", [](DomainSpec& s) { s.name = "berth-"; }, "name"},
      {"name with space", [](DomainSpec& s) { s.name = "berth-a b"; }, "name"},
      {"name with slash", [](DomainSpec& s) { s.name = "berth-a/b"; }, "name"},
      {"name with quote", [](DomainSpec& s) { s.name = "berth-a'b"; }, "name"},
      {"name of 65 chars", [](DomainSpec& s) { s.name = "berth-" + std::string(59, 'x'); },
       "name"},
      {"uuid not hex", [](DomainSpec& s) { s.uuid = "zf1c0b7e-2d4a-4c1b-9e3f-0a1b2c3d4e5f"; },
       "uuid"},
      {"uuid without dashes", [](DomainSpec& s) { s.uuid = "6f1c0b7e2d4a4c1b9e3f0a1b2c3d4e5f"; },
       "uuid"},
      {"uuid with braces", [](DomainSpec& s) { s.uuid = "{6f1c0b7e-2d4a-4c1b-9e3f-0a1b2c3d4e5}"; },
       "uuid"},
      {"title with newline", [](DomainSpec& s) { s.title = "two\nlines"; }, "title"},
      {"title with CR", [](DomainSpec& s) { s.title = "two\rlines"; }, "title"},
      {"title with invalid UTF-8", [](DomainSpec& s) { s.title = "bad \xff byte"; }, "title"},
      {"title with overlong UTF-8", [](DomainSpec& s) { s.title = "\xc0\xaf"; }, "title"},
      {"machine empty", [](DomainSpec& s) { s.machine = ""; }, "machine"},
      {"machine with quote", [](DomainSpec& s) { s.machine = "q35'"; }, "machine"},
      {"emulator relative", [](DomainSpec& s) { s.emulator = "qemu-system-x86_64"; }, "emulator"},
      {"zero vcpus", [](DomainSpec& s) { s.vcpus = 0; }, "vcpus"},
      {"257 vcpus", [](DomainSpec& s) { s.vcpus = 257; }, "vcpus"},
      {"15 MiB", [](DomainSpec& s) { s.memory_mib = 15; }, "memory_mib"},
      {"too much memory", [](DomainSpec& s) { s.memory_mib = 1048577; }, "memory_mib"},
      {"missing kernel", [](DomainSpec& s) { s.kernel_path = ""; }, "kernel_path"},
      {"relative kernel", [](DomainSpec& s) { s.kernel_path = "vmlinuz"; }, "kernel_path"},
      {"kernel with quote", [](DomainSpec& s) { s.kernel_path = "/boot/vm'linuz"; }, "kernel_path"},
      {"kernel with newline", [](DomainSpec& s) { s.kernel_path = "/boot/vm\nlinuz"; },
       "kernel_path"},
      {"missing initrd", [](DomainSpec& s) { s.initrd_path = ""; }, "initrd_path"},
      {"relative initrd", [](DomainSpec& s) { s.initrd_path = "./initrd.img"; }, "initrd_path"},
      {"initrd with ampersand", [](DomainSpec& s) { s.initrd_path = "/a&b/initrd"; },
       "initrd_path"},
      {"cmdline with newline", [](DomainSpec& s) { s.cmdline = "quiet\ninit=/bin/sh"; },
       "cmdline"},
      {"cmdline too long", [](DomainSpec& s) { s.cmdline = std::string(2048, 'a'); }, "cmdline"},
      {"relative disk", [](DomainSpec& s) { s.disks[0].path = "ex-42.qcow2"; }, "disks[0].path"},
      {"disk with <", [](DomainSpec& s) { s.disks[0].path = "/img/<x>.qcow2"; }, "disks[0].path"},
      {"disk with double quote", [](DomainSpec& s) { s.disks[0].path = "/img/\"x\".qcow2"; },
       "disks[0].path"},
      {"disk with control char", [](DomainSpec& s) { s.disks[0].path = "/img/\x01x.qcow2"; },
       "disks[0].path"},
      {"disk with NUL", [](DomainSpec& s) { s.disks[0].path = std::string("/img/a\0b", 8); },
       "disks[0].path"},
      {"disk format vmdk", [](DomainSpec& s) { s.disks[0].format = "vmdk"; }, "disks[0].format"},
      {"disk format empty", [](DomainSpec& s) { s.disks[0].format = ""; }, "disks[0].format"},
      {"disk target sda", [](DomainSpec& s) { s.disks[0].target = "sda"; }, "disks[0].target"},
      {"disk target vd1", [](DomainSpec& s) { s.disks[0].target = "vd1"; }, "disks[0].target"},
      {"disk target vdaa", [](DomainSpec& s) { s.disks[0].target = "vdaa"; }, "disks[0].target"},
      {"duplicate target",
       [](DomainSpec& s) { s.disks.push_back({"/img/b.raw", "raw", "vda", true}); },
       "disks[1].target"},
      {"second disk relative",
       [](DomainSpec& s) { s.disks.push_back({"b.raw", "raw", "vdb", true}); }, "disks[1].path"},
      {"empty channel name", [](DomainSpec& s) { s.agent_channel.name = ""; },
       "agent_channel.name"},
      {"channel name with space", [](DomainSpec& s) { s.agent_channel.name = "org berth"; },
       "agent_channel.name"},
      {"relative socket", [](DomainSpec& s) { s.agent_channel.socket_path = "agent.sock"; },
       "agent_channel.socket_path"},
      {"socket with apostrophe", [](DomainSpec& s) { s.agent_channel.socket_path = "/run/a'.sock"; },
       "agent_channel.socket_path"},
      {"socket path too long",
       [](DomainSpec& s) { s.agent_channel.socket_path = "/run/" + std::string(110, 's'); },
       "agent_channel.socket_path"},
      {"relative console log", [](DomainSpec& s) { s.console_log_path = "console.log"; },
       "console_log_path"},
      {"console log with tab", [](DomainSpec& s) { s.console_log_path = "/var/log/a\tb.log"; },
       "console_log_path"},
      {"nic without network", [](DomainSpec& s) { s.nics.push_back({"", ""}); },
       "nics[0].network"},
      {"nic network with slash", [](DomainSpec& s) { s.nics.push_back({"a/b", ""}); },
       "nics[0].network"},
      {"nic bad mac", [](DomainSpec& s) { s.nics.push_back({"default", "52:54:00:zz:00:01"}); },
       "nics[0].mac"},
      {"nic short mac", [](DomainSpec& s) { s.nics.push_back({"default", "52:54:00:00:01"}); },
       "nics[0].mac"},
      {"nic multicast mac",
       [](DomainSpec& s) { s.nics.push_back({"default", "01:00:5e:00:00:01"}); }, "nics[0].mac"},
      {"second nic bad",
       [](DomainSpec& s) {
         s.nics.push_back({"default", ""});
         s.nics.push_back({"default", "nope"});
       },
       "nics[1].mac"},
      {"no execution id", [](DomainSpec& s) { s.metadata.execution_id = ""; },
       "metadata.execution_id"},
      {"function with newline", [](DomainSpec& s) { s.metadata.function = "a\nb"; },
       "metadata.function"},
      {"tenant with control char", [](DomainSpec& s) { s.metadata.tenant = "a\x1f"; },
       "metadata.tenant"},
      {"image with DEL", [](DomainSpec& s) { s.metadata.image = "sha256:\x7f"; },
       "metadata.image"},
      {"negative pid", [](DomainSpec& s) { s.metadata.pid = -1; }, "metadata.pid"},
      {"negative ppid", [](DomainSpec& s) { s.metadata.ppid = -2; }, "metadata.ppid"},
      {"negative created", [](DomainSpec& s) { s.metadata.created_unix_ms = -3; },
       "metadata.created_unix_ms"},
  };
  for (const RejectCase& c : cases) {
    SCOPED_TRACE(c.what);
    DomainSpec spec = ValidSpec();
    c.mutate(spec);
    Status st = ValidateDomainSpec(spec);
    EXPECT_EQ(st.code(), Code::kInvalidArgument) << st.ToString();
    EXPECT_EQ(st.field(), c.field) << st.ToString();
    EXPECT_FALSE(st.message().empty());
  }
}

TEST(ValidateDomainSpec, MemoryMessageNamesTheLimits) {
  DomainSpec spec = ValidSpec();
  spec.memory_mib = 8;
  Status st = ValidateDomainSpec(spec);
  ASSERT_EQ(st.field(), "memory_mib");
  EXPECT_NE(st.message().find("16"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("1048576"), std::string::npos) << st.message();
}

TEST(ValidateDomainMetadata, ChecksOnlyMetadata) {
  DomainMetadata m;
  EXPECT_EQ(ValidateDomainMetadata(m).field(), "metadata.execution_id");
  m.execution_id = "ex-1";
  EXPECT_TRUE(ValidateDomainMetadata(m).ok());
}

// ---- WriteDomainXml --------------------------------------------------------

TEST(WriteDomainXml, RefusesInvalidSpec) {
  DomainSpec spec = ValidSpec();
  spec.disks[0].format = "vmdk";
  Result<std::string> xml = WriteDomainXml(spec);
  ASSERT_FALSE(xml.ok());
  EXPECT_EQ(xml.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(xml.status().field(), "disks[0].format");
}

TEST(WriteDomainXml, IsDeterministicAndHasNoDeclaration) {
  Result<std::string> a = WriteDomainXml(ValidSpec());
  Result<std::string> b = WriteDomainXml(ValidSpec());
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_EQ(a->rfind("<domain type='qemu'>\n", 0), 0u) << *a;
  EXPECT_EQ(a->find("<?xml"), std::string::npos);
  EXPECT_EQ(a->back(), '\n');
  EXPECT_EQ(a->find("<cpu"), std::string::npos) << "TCG guests get no <cpu>";
  EXPECT_EQ(a->find("<interface"), std::string::npos) << "no NIC unless asked for";
  EXPECT_EQ(a->find("<graphics"), std::string::npos);
}

// ---- metadata --------------------------------------------------------------

TEST(ParseDomainMetadata, RoundTripsGeneratedXml) {
  const DomainSpec spec = ValidSpec();
  Result<std::string> xml = WriteDomainXml(spec);
  ASSERT_TRUE(xml.ok()) << xml.status().ToString();
  Result<DomainMetadata> md = ParseDomainMetadata(*xml);
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  ExpectSameMetadata(*md, spec.metadata);
}

// What `virsh dumpxml` may hand back: other applications' metadata first
// (one even with an <execution> of its own), berth's element under another
// prefix, attributes in double quotes, an unknown child from a newer berth.
constexpr const char* kReformatted = R"(<?xml version="1.0"?>
<domain type="kvm" id="7">
  <name>berth-ex-42</name>
  <uuid>6f1c0b7e-2d4a-4c1b-9e3f-0a1b2c3d4e5f</uuid>
  <metadata>
    <app1:foo xmlns:app1="http://app1.org/app1/">..</app1:foo>
    <other:execution xmlns:other="https://example.com/not-berth">
      <other:id>wrong</other:id>
    </other:execution>
    <ns0:execution xmlns:ns0="https://berth.dev/xmlns/domain/1">
      <ns0:id>ex-42</ns0:id>
      <ns0:function>resize &amp; &lt;crop&gt; "fast" &apos;n&apos; cheap</ns0:function>
      <ns0:tenant>acme</ns0:tenant>
      <ns0:pid> 42 </ns0:pid>
      <ns0:ppid>7</ns0:ppid>
      <ns0:future>ignored</ns0:future>
      <ns0:image>sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08</ns0:image>
      <ns0:created>1700000000123</ns0:created>
    </ns0:execution>
  </metadata>
  <memory unit="KiB">262144</memory>
</domain>
)";

TEST(ParseDomainMetadata, MatchesByNamespaceUriNotPrefix) {
  Result<DomainMetadata> md = ParseDomainMetadata(kReformatted);
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  ExpectSameMetadata(*md, ValidSpec().metadata);
}

TEST(ParseDomainMetadata, AcceptsDefaultNamespaceAndUnqualifiedChildren) {
  Result<DomainMetadata> md = ParseDomainMetadata(
      "<domain><metadata><execution xmlns='https://berth.dev/xmlns/domain/1'>"
      "<id>a</id><pid>3</pid></execution></metadata></domain>");
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  EXPECT_EQ(md->execution_id, "a");
  EXPECT_EQ(md->pid, 3);

  md = ParseDomainMetadata(
      "<domain><metadata><b:execution xmlns:b='https://berth.dev/xmlns/domain/1'>"
      "<id>u</id><created>9</created></b:execution></metadata></domain>");
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  EXPECT_EQ(md->execution_id, "u");
  EXPECT_EQ(md->created_unix_ms, 9);
}

TEST(ParseDomainMetadata, NotFoundWithoutBerthMetadata) {
  const std::vector<std::string> docs = {
      "<domain type='qemu'><name>berth-x</name></domain>",
      "<domain><metadata/></domain>",
      "<domain><metadata><app1:foo xmlns:app1='http://app1.org/'/></metadata></domain>",
      // Right prefix, wrong namespace.
      "<domain><metadata><berth:execution xmlns:berth='https://berth.dev/xmlns/domain/2'>"
      "<berth:id>x</berth:id></berth:execution></metadata></domain>",
      // Right namespace, but not under <metadata>.
      "<domain><berth:execution xmlns:berth='https://berth.dev/xmlns/domain/1'>"
      "<berth:id>x</berth:id></berth:execution></domain>",
  };
  for (const std::string& doc : docs) {
    Result<DomainMetadata> md = ParseDomainMetadata(doc);
    EXPECT_EQ(md.status().code(), Code::kNotFound) << doc << "\n" << md.status().ToString();
  }
}

TEST(ParseDomainMetadata, RejectsMalformedInput) {
  const std::vector<std::string> docs = {
      "",
      "<domain><metadata>",
      "<network><metadata/></network>",
      "<domain><metadata><b:execution xmlns:b='https://berth.dev/xmlns/domain/1'>"
      "<b:pid>1</b:pid></b:execution></metadata></domain>",  // no id
      "<domain><metadata><b:execution xmlns:b='https://berth.dev/xmlns/domain/1'>"
      "<b:id>x</b:id><b:pid>12a</b:pid></b:execution></metadata></domain>",
      "<domain><metadata><b:execution xmlns:b='https://berth.dev/xmlns/domain/1'>"
      "<b:id>x</b:id><b:created>99999999999999999999999</b:created></b:execution>"
      "</metadata></domain>",
  };
  for (const std::string& doc : docs) {
    Result<DomainMetadata> md = ParseDomainMetadata(doc);
    EXPECT_EQ(md.status().code(), Code::kInvalidArgument) << doc << "\n" << md.status().ToString();
    EXPECT_EQ(md.status().field(), "domain_xml");
  }
}

TEST(MetadataXml, IsTheUnprefixedCompactElement) {
  DomainMetadata m;
  m.execution_id = "ex-1";
  m.tenant = "R&D <ops>";
  m.pid = 42;
  m.ppid = 1;
  m.image = "sha256:ab";
  m.created_unix_ms = 1700000000000;
  EXPECT_EQ(MetadataXml(m),
            "<execution><id>ex-1</id><function/><tenant>R&amp;D &lt;ops&gt;</tenant>"
            "<pid>42</pid><ppid>1</ppid><image>sha256:ab</image>"
            "<created>1700000000000</created></execution>");
  Result<DomainMetadata> back = ParseMetadataXml(MetadataXml(m));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ExpectSameMetadata(*back, m);
}

TEST(ParseMetadataXml, AcceptsNamespacedFormAndRejectsOthers) {
  Result<DomainMetadata> md = ParseMetadataXml(
      "<x:execution xmlns:x='https://berth.dev/xmlns/domain/1'><x:id>q</x:id></x:execution>");
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  EXPECT_EQ(md->execution_id, "q");
  md = ParseMetadataXml("<x:execution xmlns:x='urn:other'><x:id>q</x:id></x:execution>");
  EXPECT_EQ(md.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(md.status().field(), "metadata_xml");
  md = ParseMetadataXml("<foo/>");
  EXPECT_EQ(md.status().code(), Code::kInvalidArgument);
}

// ---- through libvirt's test driver ------------------------------------------

using ::berth::testing::TempDir;

// Runs one virsh script on a fresh test:///default connection (its state
// lives only as long as the connection, hence one invocation per test).
Result<std::string> Virsh(const std::string& script) {
  Result<CommandResult> r =
      Env::Default()->Run({"virsh", "-q", "-c", "test:///default", script}, {}, 60'000);
  if (!r.ok()) {
    if (r.status().code() == Code::kUnavailable) {
      return Status::Unavailable("virsh is not installed; install libvirt-clients: " +
                                 r.status().message());
    }
    return r.status();
  }
  if (r->exit_code != 0) {
    return Status::Internal("virsh exited with " + std::to_string(r->exit_code) + ": " + r->err);
  }
  return r->out;
}

std::string Section(const std::string& text, const std::string& from, const std::string& to) {
  const size_t a = text.find(from);
  if (a == std::string::npos) return {};
  const size_t b = text.find(to, a);
  return b == std::string::npos ? text.substr(a) : text.substr(a, b + to.size() - a);
}

TEST(LibvirtTestDriver, DefineDumpxmlKeepsMetadata) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  const DomainSpec spec = ValidSpec();
  Result<std::string> xml = WriteDomainXml(spec);
  ASSERT_TRUE(xml.ok()) << xml.status().ToString();
  const std::string file = dir.path() + "/domain.xml";
  { std::ofstream(file) << *xml; }

  Result<std::string> out = Virsh("define " + file + "; dumpxml " + spec.name);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  const std::string dumped = Section(*out, "<domain", "</domain>");
  ASSERT_FALSE(dumped.empty()) << *out;

  Result<DomainMetadata> md = ParseDomainMetadata(dumped);
  ASSERT_TRUE(md.ok()) << md.status().ToString() << "\n" << dumped;
  ExpectSameMetadata(*md, spec.metadata);
  // libvirt prints the metadata block exactly as we wrote it.
  EXPECT_EQ(Section(dumped, "<metadata>", "</metadata>"),
            Section(*xml, "<metadata>", "</metadata>"));
}

TEST(LibvirtTestDriver, SetMetadataFormGivesTheSameXmlAsWriteDomainXml) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  DomainSpec spec = ValidSpec();
  Result<std::string> xml = WriteDomainXml(spec);
  ASSERT_TRUE(xml.ok()) << xml.status().ToString();
  const std::string file = dir.path() + "/domain.xml";
  { std::ofstream(file) << *xml; }

  // The metadata after a fork: new pid, still escaping-heavy text.
  DomainSpec updated = spec;
  updated.metadata.pid = 4242;
  updated.metadata.ppid = 42;
  updated.metadata.function = "a&b <c> \"d\" 'e'";
  const std::string fragment = MetadataXml(updated.metadata);
  ASSERT_EQ(fragment.find('\''), std::string::npos) << "would break the virsh quoting below";

  // `virsh metadata --key K --uri U --set X` is virDomainSetMetadata(dom,
  // VIR_DOMAIN_METADATA_ELEMENT, X, K, U, flags).
  const std::string uri = kMetadataNamespace;
  Result<std::string> out = Virsh(
      "define " + file + "; metadata " + spec.name + " --uri " + uri + " --key " + kMetadataKey +
      " --config --set '" + fragment + "'; dumpxml --inactive " + spec.name +
      "; metadata " + spec.name + " --uri " + uri + " --config");
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  const std::string dumped = Section(*out, "<domain", "</domain>");
  ASSERT_FALSE(dumped.empty()) << *out;

  Result<DomainMetadata> md = ParseDomainMetadata(dumped);
  ASSERT_TRUE(md.ok()) << md.status().ToString() << "\n" << dumped;
  ExpectSameMetadata(*md, updated.metadata);

  Result<std::string> expected = WriteDomainXml(updated);
  ASSERT_TRUE(expected.ok());
  EXPECT_EQ(Section(dumped, "<metadata>", "</metadata>"),
            Section(*expected, "<metadata>", "</metadata>"));

  // virDomainGetMetadata hands back the element without its namespace.
  const std::string got = Section(out->substr(out->find("</domain>")), "<execution", "</execution>");
  ASSERT_FALSE(got.empty()) << *out;
  Result<DomainMetadata> from_get = ParseMetadataXml(got);
  ASSERT_TRUE(from_get.ok()) << from_get.status().ToString() << "\n" << got;
  ExpectSameMetadata(*from_get, updated.metadata);
}

TEST(LibvirtTestDriver, DifferentKeyStillParses) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  const DomainSpec spec = ValidSpec();
  Result<std::string> xml = WriteDomainXml(spec);
  ASSERT_TRUE(xml.ok());
  const std::string file = dir.path() + "/domain.xml";
  { std::ofstream(file) << *xml; }
  Result<std::string> out =
      Virsh("define " + file + "; metadata " + spec.name + " --uri " + kMetadataNamespace +
            " --key zz --config --set '" + MetadataXml(spec.metadata) + "'; dumpxml --inactive " +
            spec.name);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  const std::string dumped = Section(*out, "<domain", "</domain>");
  ASSERT_NE(dumped.find("<zz:execution"), std::string::npos) << dumped;
  Result<DomainMetadata> md = ParseDomainMetadata(dumped);
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  ExpectSameMetadata(*md, spec.metadata);
}

}  // namespace
}  // namespace berth::hv
