// berthd is killed (-9) while executions run on two libvirt hosts
// (tests/multinode/hosts.sh), and meanwhile an orphan appears on each: on
// n1 a running berth domain whose disk is in this berthd's pool there but
// which no record names, on n2 an overlay volume of no execution. The
// restarted berthd (manager/reconcile.h) adopts what runs on both hosts, so
// each execution ends with its own exit code and output; it destroys the
// orphan domain and deletes the stray overlay; and once the work ended, no
// node holds a claim and no ovl-*.qcow2 is left in any host's pool (virsh
// against each host's own URI).
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <thread>

#include "common/ids.h"
#include "tests/integration/support/harness.h"
#include "tests/multinode/hosts.h"

namespace berth::testing {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

std::string Virsh(const std::string& uri, const std::string& args) {
  return Shell("timeout 30 virsh -q -c " + uri + " " + args + " 2>&1");
}

bool Lists(const std::string& listing, const std::string& name) {
  return listing.find(name) != std::string::npos;
}

template <typename Pred>
bool WaitFor(Pred pred, int seconds) {
  for (auto t0 = Clock::now(); Clock::now() - t0 < std::chrono::seconds(seconds);) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return pred();
}

// A running domain that looks like one of this berthd's executions on the
// host at `uri` (berth- name, berth metadata, its disk an ovl- volume in
// `pool` there) but whose execution id no record has. It boots nothing (no
// kernel, an empty disk): the firmware idles. Returns the domain name ("" on
// failure, and `*error` says why).
std::string CreateOrphanDomain(const std::string& uri, const std::string& pool, const std::string& dir,
                               const std::string& id, std::string* error) {
  const std::string volume = "ovl-" + id + ".qcow2";
  Virsh(uri, "vol-create-as " + pool + " " + volume + " 16M --format qcow2");
  std::string path = Virsh(uri, "vol-path --pool " + pool + " " + volume);
  while (!path.empty() && (path.back() == '\n' || path.back() == ' ')) path.pop_back();
  if (path.empty() || path[0] != '/') {
    *error = "no volume " + volume + ": " + path;
    return "";
  }
  const std::string name = "berth-default-999999-" + id.substr(0, 6);
  const std::string xml_path = dir + "/orphan.xml";
  std::ofstream(xml_path) << "<domain type='qemu'>\n"
                             "  <name>" << name << "</name>\n"
                             "  <memory unit='MiB'>32</memory>\n"
                             "  <vcpu>1</vcpu>\n"
                             "  <metadata>\n"
                             "    <berth:execution xmlns:berth='https://berth.dev/xmlns/domain/1'>\n"
                             "      <berth:id>" << id << "</berth:id>\n"
                             "      <berth:function/>\n"
                             "      <berth:tenant>default</berth:tenant>\n"
                             "      <berth:pid>999999</berth:pid>\n"
                             "      <berth:ppid>1</berth:ppid>\n"
                             "      <berth:image/>\n"
                             "      <berth:created>1700000000000</berth:created>\n"
                             "    </berth:execution>\n"
                             "  </metadata>\n"
                             "  <os><type arch='x86_64'>hvm</type></os>\n"
                             "  <devices>\n"
                             "    <disk type='file' device='disk'>\n"
                             "      <driver name='qemu' type='qcow2'/>\n"
                             "      <source file='" << path << "'/>\n"
                             "      <target dev='vda' bus='virtio'/>\n"
                             "    </disk>\n"
                             "  </devices>\n"
                             "</domain>\n";
  *error = Virsh(uri, "create " + xml_path);
  return Lists(Virsh(uri, "list --name"), name) ? name : "";
}

TEST(MultinodeRestartTest, CrashWithWorkOnTwoHostsAdoptsItDestroysOrphansAndLeaksNothing) {
  HostSet hosts = StartHosts(2, "mn-restart");
  struct Teardown {
    std::string state;
    ~Teardown() { StopHosts(state); }
  } teardown{hosts.state};
  ASSERT_EQ(hosts.uris.size(), 2u) << hosts.output;
  BerthdProcess daemon;
  ASSERT_TRUE(daemon.running()) << daemon.log();
  const std::string image = daemon.UploadBusybox();
  auto node = [&](const std::string& name) { return daemon.Get("/v1/nodes/" + name).json(); };

  // Only the two hosts take work, one label each so that work can be pinned.
  const json nodes = daemon.Get("/v1/nodes").json()["nodes"];
  ASSERT_EQ(nodes.size(), 1u) << nodes.dump();
  const std::string local = nodes[0]["name"];
  ASSERT_EQ(daemon.Post("/v1/nodes/" + local + "/cordon", "").status, 200);
  const std::vector<std::string> names = {"n1", "n2"};
  for (size_t i = 0; i < names.size(); ++i) {
    json spec = {{"name", names[i]}, {"uri", hosts.uris[i]}, {"accel", "tcg"}, {"labels", {{"host", names[i]}}}};
    auto r = daemon.Post("/v1/nodes", spec.dump());
    ASSERT_EQ(r.status, 201) << r.body;
  }

  // n1: an instance (image + command); n2: a function run started through
  // /v1/procs. Both sleep past the crash, print, and exit with their own code.
  ASSERT_EQ(daemon.CreateFunction("slow", image,
                                  {{"entrypoint", {"sh", "-c", "sleep 12; echo done; exit 3"}},
                                   {"timeout_ms", 120000},
                                   {"snapshot", false}})
                .status,
            201);
  auto inst = daemon.Post("/v1/procs", json{{"image", image},
                                            {"name", "inst"},
                                            {"command", {"sh", "-c", "sleep 12; echo bye; exit 7"}},
                                            {"node_selector", {{"host", "n1"}}}}
                                           .dump());
  ASSERT_EQ(inst.status, 201) << inst.body;
  auto run = daemon.Post("/v1/procs", json{{"function", "slow"}, {"node_selector", {{"host", "n2"}}}}.dump());
  ASSERT_EQ(run.status, 201) << run.body;
  struct Work {
    int64_t pid;
    std::string id, node, uri, domain, stdout_data;
    int exit_code;
  };
  std::vector<Work> work = {{inst.json()["pid"], inst.json()["execution_id"], "n1", hosts.uris[0], "", "bye\n", 7},
                            {run.json()["pid"], run.json()["execution_id"], "n2", hosts.uris[1], "", "done\n", 3}};
  for (auto& w : work) {
    json p;
    ASSERT_TRUE(WaitFor(
        [&] {
          p = daemon.Get("/v1/procs/" + std::to_string(w.pid)).json();
          const std::string s = p.value("status", "");
          return s != "pending" && s != "placing" && s != "starting";
        },
        180))
        << p.dump() << "\n" << daemon.log();
    ASSERT_EQ(p["status"], "running") << p.dump() << "\n" << daemon.log();
    ASSERT_EQ(p["node"], w.node) << p.dump();
    w.domain = p["domain"];
  }

  daemon.Kill();
  for (const auto& w : work) EXPECT_TRUE(Lists(Virsh(w.uri, "list --name"), w.domain)) << "the VM outlives berthd";
  // What a crash (of this or another berthd run) may leave: an orphan domain
  // on n1, an overlay of no execution on n2.
  const std::string orphan_id = RandomHex(16), stray_id = RandomHex(16);
  std::string error;
  const std::string orphan = CreateOrphanDomain(hosts.uris[0], daemon.pool(), daemon.data_dir(), orphan_id, &error);
  ASSERT_FALSE(orphan.empty()) << error << Virsh(hosts.uris[0], "list --all") << Virsh(hosts.uris[0], "vol-list " + daemon.pool());
  const std::string stray = "ovl-" + stray_id + ".qcow2";
  Virsh(hosts.uris[1], "vol-create-as " + daemon.pool() + " " + stray + " 16M --format qcow2");
  ASSERT_TRUE(Lists(Virsh(hosts.uris[1], "vol-list " + daemon.pool()), stray));

  ASSERT_TRUE(daemon.Start()) << daemon.log();
  // Reconciled before it serves: the orphans are gone, the work is adopted
  // on both hosts with its claims.
  EXPECT_FALSE(Lists(Virsh(hosts.uris[0], "list --all --name"), orphan)) << daemon.log();
  EXPECT_FALSE(Lists(Virsh(hosts.uris[0], "vol-list " + daemon.pool()), orphan_id));
  EXPECT_FALSE(Lists(Virsh(hosts.uris[1], "vol-list " + daemon.pool()), stray));
  EXPECT_TRUE(Lists(daemon.log(), "destroying orphan domain " + orphan + " on node n1 (no record)")) << daemon.log();
  for (const auto& w : work) {
    json p = daemon.Get("/v1/procs/" + std::to_string(w.pid)).json();
    EXPECT_EQ(p["status"], "running") << "adopted: " << p.dump() << "\n" << daemon.log();
    EXPECT_EQ(node(w.node)["executions"], 1) << node(w.node).dump();
  }

  // Each ends with its own result, as if berthd had never stopped.
  for (const auto& w : work) {
    json end = daemon.Get("/v1/procs/" + std::to_string(w.pid) + "/wait?timeout_ms=90000").json();
    EXPECT_EQ(end["status"], "failed") << end.dump() << "\n" << daemon.log();
    EXPECT_EQ(end["exit_code"], w.exit_code) << end.dump();
    EXPECT_EQ(end["stdout"], w.stdout_data) << end.dump();
    EXPECT_EQ(end["node"], w.node) << end.dump();
  }

  // Nothing leaked: no claim on any node, no domain and no overlay on either host.
  for (const std::string& n : {local, names[0], names[1]}) {
    EXPECT_TRUE(WaitFor([&] { return node(n)["executions"] == 0; }, 60)) << "claim leaked: " << node(n).dump();
    EXPECT_EQ(node(n)["allocated"]["memory_mib"], 0) << node(n).dump();
  }
  for (size_t i = 0; i < hosts.uris.size(); ++i) {
    std::string domains, volumes;
    EXPECT_TRUE(WaitFor(
        [&] {
          domains = Virsh(hosts.uris[i], "list --all --name");
          volumes = Virsh(hosts.uris[i], "vol-list " + daemon.pool());
          return !Lists(domains, work[i].domain) && !Lists(volumes, "ovl-");
        },
        30))
        << names[i] << ": domains: " << domains << "\nvolumes: " << volumes;
  }
}

}  // namespace
}  // namespace berth::testing
