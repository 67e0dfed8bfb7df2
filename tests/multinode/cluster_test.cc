// A cluster of three libvirt hosts (tests/multinode/hosts.sh: each a
// libvirtd in its own network and mount namespace, reached over qemu+tcp://)
// registered with one berthd, running real TCG guests: placement by
// capacity, a full node skipped, cordon, label selectors, drain, removal
// with work (409), bad node input, a berthd crash (kill -9) with work on
// two hosts (all of it adopted; nothing leaked, no claim left), and a host
// whose libvirtd dies (down, its executions lost).
#include <gtest/gtest.h>

#include <chrono>
#include <set>
#include <sstream>
#include <thread>

#include "common/ids.h"
#include "tests/integration/support/harness.h"
#include "tests/multinode/hosts.h"

namespace berth::testing {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

class ClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    HostSet hosts = StartHosts(3, "multinode");
    state_ = hosts.state;
    uris_ = hosts.uris;
    ASSERT_EQ(uris_.size(), 3u) << hosts.output;
    daemon_ = new BerthdProcess({"--node-down-after-ms", "4000", "--node-monitor-ms", "1000"});
    ASSERT_TRUE(daemon_->running()) << daemon_->log();
    image_ = daemon_->UploadBusybox();
  }
  static void TearDownTestSuite() {
    delete daemon_;
    daemon_ = nullptr;
    StopHosts(state_);
  }

  static json Node(const std::string& name) { return daemon_->Get("/v1/nodes/" + name).json(); }
  static json Exec(const json& selector = json::object()) {
    json body = {{"image", image_}, {"memory_mib", 192}, {"command", {"sleep", "600"}}};
    if (!selector.empty()) body["node_selector"] = selector;
    auto r = daemon_->Post("/v1/procs", body.dump());
    EXPECT_EQ(r.status, 201) << r.body;
    return r.json();
  }
  static json WaitEnd(int64_t pid) {
    return daemon_->Get("/v1/procs/" + std::to_string(pid) + "/wait?timeout_ms=60000").json();
  }
  static void Kill(int64_t pid) {
    auto r = daemon_->Post("/v1/procs/" + std::to_string(pid) + "/kill", R"({"signal":"KILL"})");
    EXPECT_EQ(r.status, 202) << r.body;
    EXPECT_EQ(WaitEnd(pid)["status"], "killed");
  }
  static std::string Virsh(const std::string& uri, const std::string& args) {
    return Shell("timeout 20 virsh -q -c " + uri + " " + args + " 2>/dev/null");
  }

  static std::string state_;
  static std::vector<std::string> uris_;
  static BerthdProcess* daemon_;
  static std::string image_;
};

std::string ClusterTest::state_;
std::vector<std::string> ClusterTest::uris_;
BerthdProcess* ClusterTest::daemon_ = nullptr;
std::string ClusterTest::image_;

TEST_F(ClusterTest, PlacementCordonSelectorsDrainFailureAndRestart) {
  // The local node is registered by default; keep this test's work on the three hosts.
  json nodes = daemon_->Get("/v1/nodes").json()["nodes"];
  ASSERT_EQ(nodes.size(), 1u) << nodes.dump();
  const std::string local = nodes[0]["name"];
  ASSERT_EQ(daemon_->Post("/v1/nodes/" + local + "/cordon", "").status, 200);

  // Register the hosts. Each offers 400 MiB to guests: two 192 MiB instances.
  const uint64_t total = Node(local)["memory_mib"];
  const std::vector<std::string> names = {"n1", "n2", "n3"};
  const std::vector<std::string> zones = {"a", "b", "b"};
  for (size_t i = 0; i < 3; ++i) {
    json spec = {{"name", names[i]},
                 {"uri", uris_[i]},
                 {"accel", "tcg"},
                 {"labels", {{"zone", zones[i]}}},
                 {"reserved_memory_mib", total - 400}};
    auto r = daemon_->Post("/v1/nodes", spec.dump());
    ASSERT_EQ(r.status, 201) << r.body;
    EXPECT_EQ(r.json()["state"], "up");
    EXPECT_EQ(r.json()["capacity"]["memory_mib"], 400);
  }

  // Bad node input.
  auto dup = daemon_->Post("/v1/nodes", json{{"name", "n1"}, {"uri", "qemu+tcp://10.9.9.9/system"}}.dump());
  EXPECT_EQ(dup.status, 409) << dup.body;
  auto dup_uri = daemon_->Post("/v1/nodes", json{{"name", "n9"}, {"uri", uris_[0]}}.dump());
  EXPECT_EQ(dup_uri.status, 409) << dup_uri.body;
  auto xen = daemon_->Post("/v1/nodes", json{{"name", "n9"}, {"uri", "xen:///system"}}.dump());
  EXPECT_EQ(xen.status, 400) << xen.body;
  EXPECT_EQ(xen.json()["error"]["field"], "uri");
  // A bridge address where no libvirtd listens: refused at once.
  std::string bridge = uris_[0].substr(0, uris_[0].rfind('.')) + ".1:1/system";
  auto unreachable = daemon_->Post("/v1/nodes", json{{"name", "n9"}, {"uri", bridge}, {"accel", "tcg"}}.dump());
  EXPECT_EQ(unreachable.status, 422) << unreachable.body;
  EXPECT_EQ(unreachable.json()["error"]["field"], "uri");
  EXPECT_EQ(daemon_->Get("/v1/nodes").json()["nodes"].size(), 4u) << "nothing half-registered";

  // Spread by capacity: six instances, two per host; a seventh fits nowhere.
  std::map<std::string, std::vector<int64_t>> on;
  for (int i = 0; i < 6; ++i) {
    json p = Exec();
    on[p["node"]].push_back(p["pid"]);
  }
  EXPECT_EQ(on.size(), 3u);
  for (const auto& n : names) EXPECT_EQ(on[n].size(), 2u) << n;
  auto full = daemon_->Post("/v1/procs", json{{"image", image_}, {"memory_mib", 192}}.dump());
  EXPECT_EQ(full.status, 503) << full.body;
  EXPECT_NE(full.body.find("memory"), std::string::npos) << full.body;
  EXPECT_EQ(Node("n1")["allocated"]["memory_mib"], 384);
  // They really run there.
  for (const auto& [node, pids] : on) {
    for (int64_t pid : pids) {
      json p;
      for (int i = 0; i < 600; ++i) {
        p = daemon_->Get("/v1/procs/" + std::to_string(pid)).json();
        if (p["status"] != "pending" && p["status"] != "placing" && p["status"] != "starting") break;
        std::this_thread::sleep_for(std::chrono::milliseconds(250));
      }
      EXPECT_EQ(p["status"], "running") << p.dump();
      size_t idx = node == "n1" ? 0 : node == "n2" ? 1 : 2;
      EXPECT_NE(Virsh(uris_[idx], "list --name").find(p["domain"].get<std::string>()), std::string::npos);
    }
  }

  // Cordon: a freed slot on a cordoned node takes no new work.
  Kill(on["n1"][0]);
  Kill(on["n2"][0]);
  ASSERT_EQ(daemon_->Post("/v1/nodes/n1/cordon", "").status, 200);
  EXPECT_EQ(Node("n1")["state"], "cordoned");
  // A claim is held until the VM and its volumes are gone (teardown runs after the answer).
  for (int i = 0; i < 80 && Node("n2")["allocated"]["memory_mib"] != 192; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  ASSERT_EQ(Node("n2")["allocated"]["memory_mib"], 192);
  json moved = Exec();
  EXPECT_EQ(moved["node"], "n2");
  // A label selector pins work to a partition: zone=a is only n1.
  auto pinned_refused = daemon_->Post(
      "/v1/procs", json{{"image", image_}, {"memory_mib", 192}, {"node_selector", {{"zone", "a"}}}}.dump());
  EXPECT_EQ(pinned_refused.status, 503) << "n1 is cordoned: " << pinned_refused.body;
  ASSERT_EQ(daemon_->Post("/v1/nodes/n1/uncordon", "").status, 200);
  for (int i = 0; i < 80 && Node("n1")["allocated"]["memory_mib"] != 192; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  json pinned = Exec({{"zone", "a"}});
  EXPECT_EQ(pinned["node"], "n1");

  // Drain n2: no new work, removal refused while it runs, cordoned once empty.
  auto drain = daemon_->Post("/v1/nodes/n2/drain", "");
  ASSERT_EQ(drain.status, 200) << drain.body;
  EXPECT_EQ(drain.json()["state"], "draining");
  auto busy = daemon_->Call("DELETE", "/v1/nodes/n2");
  EXPECT_EQ(busy.status, 409) << busy.body;
  Kill(on["n2"][1]);
  Kill(moved["pid"]);
  json n2;
  for (int i = 0; i < 80; ++i) {
    n2 = Node("n2");
    if (n2["state"] == "cordoned") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  EXPECT_EQ(n2["state"], "cordoned") << n2.dump();
  EXPECT_EQ(n2["allocated"]["memory_mib"], 0);
  auto removed = daemon_->Call("DELETE", "/v1/nodes/n2");
  EXPECT_EQ(removed.status, 200) << removed.body;

  // berthd crashes (kill -9) with work running on n1 and n3; the restarted
  // berthd adopts it all: still running, claims re-installed, live again
  // (kill works, and a node loss ends adopted work lost).
  std::map<int64_t, std::string> domains;  // pid -> domain
  std::vector<int64_t> running = on["n3"];
  running.push_back(on["n1"][1]);
  running.push_back(pinned["pid"]);
  for (int64_t pid : running) {
    json p;  // (pinned was started last: it may still be booting)
    for (int i = 0; i < 600; ++i) {
      p = daemon_->Get("/v1/procs/" + std::to_string(pid)).json();
      if (p["status"] != "pending" && p["status"] != "placing" && p["status"] != "starting") break;
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    ASSERT_EQ(p["status"], "running") << p.dump();
    domains[pid] = p["domain"];
  }
  daemon_->Kill();
  ASSERT_TRUE(daemon_->Start()) << daemon_->log();
  for (int64_t pid : running) {
    json p = daemon_->Get("/v1/procs/" + std::to_string(pid)).json();
    EXPECT_EQ(p["status"], "running") << "adopted: " << p.dump() << "\n" << daemon_->log();
  }
  EXPECT_EQ(Node("n1")["allocated"]["memory_mib"], 384) << "claims re-installed";
  EXPECT_EQ(Node("n3")["allocated"]["memory_mib"], 384);
  Kill(on["n1"][1]);  // an adopted process is live: kill works
  for (int i = 0; i < 80 && Node("n1")["allocated"]["memory_mib"] != 192; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  EXPECT_EQ(Node("n1")["allocated"]["memory_mib"], 192);
  EXPECT_EQ(Virsh(uris_[0], "list --name").find(domains[on["n1"][1]]), std::string::npos);

  // n3's libvirtd dies: down within 15 s, its (adopted) executions lost.
  auto t0 = Clock::now();
  Shell(HostsScript() + " kill 3 " + state_);
  json n3;
  while (Clock::now() - t0 < std::chrono::seconds(20)) {
    n3 = Node("n3");
    if (n3["state"] == "down") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  EXPECT_EQ(n3["state"], "down") << n3.dump();
  EXPECT_LE(Clock::now() - t0, std::chrono::seconds(15));
  for (int64_t pid : on["n3"]) {
    json w = WaitEnd(pid);
    EXPECT_EQ(w["status"], "lost") << w.dump();
    EXPECT_EQ(w.value("error_code", ""), "node_lost") << w.dump();
  }

  // The adopted run on n1 ends cleanly: no claim and no overlay left.
  Kill(pinned["pid"]);
  for (int i = 0; i < 80 && Node("n1")["allocated"]["memory_mib"] != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  EXPECT_EQ(Virsh(uris_[0], "list --name").find(domains[pinned["pid"]]), std::string::npos);
  std::string vols = Virsh(uris_[0], "vol-list " + daemon_->pool());
  EXPECT_EQ(vols.find("ovl-"), std::string::npos) << vols;
  const json all_nodes = daemon_->Get("/v1/nodes").json()["nodes"];
  for (const auto& n : all_nodes) {
    if (n["name"] == "n3") continue;  // down: its claims go when it is reconciled
    EXPECT_EQ(n["allocated"]["memory_mib"], 0) << "claim leaked on " << n.dump();
  }
  // Registered nodes come back with berthd; n1 is up, n3 still down.
  EXPECT_EQ(Node("n1")["state"], "up");
  EXPECT_EQ(Node("n3")["state"], "down");
  EXPECT_EQ(daemon_->Get("/v1/nodes/n2").status, 404);
}

}  // namespace
}  // namespace berth::testing
