// Failure paths of a cluster of two libvirt hosts (tests/multinode/hosts.sh)
// registered with one berthd (default monitor settings), running real TCG
// guests:
//  - a host's libvirtd is killed while function runs execute there: the node
//    is down within 15 s, the retryable run is run again on the other node and
//    finishes there, the non-retryable synchronous caller gets a clear 503,
//    a retryable run started through /v1/procs (nobody waits on it) runs
//    again on the other node while berthd keeps running,
//    no record stays running; the libvirtd is started again: the node is
//    reconciled (orphan domains destroyed, overlays deleted, claims released)
//    before it takes new work, then takes work again;
//  - berthd is killed (-9) and the domain of a retryable run vanishes
//    meanwhile: the restarted berthd ends the record lost and runs it again
//    (a non-retryable one is not run again);
//  - a start that fails on one node (its runtime kernel is gone) moves to the
//    scheduler's alternate node without a new scheduling round; so does a
//    /v1/procs instance, whose pid the caller already has: the same process
//    (pid, execution id) runs on the alternate node.
// One set of hosts and one berthd serve the whole suite; tests run in order.
#include <gtest/gtest.h>

#include <chrono>
#include <future>
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

class FailoverTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    HostSet hosts = StartHosts(2, "multinode");
    state_ = hosts.state;
    uris_ = hosts.uris;
    ASSERT_EQ(uris_.size(), 2u) << hosts.output;
    daemon_ = new BerthdProcess();  // default --node-monitor-ms / --node-down-after-ms
    ASSERT_TRUE(daemon_->running()) << daemon_->log();
    image_ = daemon_->UploadBusybox();

    // Only the two hosts take work; each offers 520 MiB to guests (two 192 MiB
    // runs and a 128 MiB one).
    json nodes = daemon_->Get("/v1/nodes").json()["nodes"];
    ASSERT_EQ(nodes.size(), 1u) << nodes.dump();
    const std::string local = nodes[0]["name"];
    ASSERT_EQ(daemon_->Post("/v1/nodes/" + local + "/cordon", "").status, 200);
    const uint64_t total = Node(local)["memory_mib"];
    for (size_t i = 0; i < 2; ++i) {
      json spec = {{"name", kNames[i]}, {"uri", uris_[i]}, {"accel", "tcg"}, {"reserved_memory_mib", total - 520}};
      auto r = daemon_->Post("/v1/nodes", spec.dump());
      ASSERT_EQ(r.status, 201) << r.body;
    }
    // No snapshot templates: a template build would boot one more VM on a host.
    const json slow = {{"entrypoint", {"/bin/sh", "-c", "sleep 15; echo done"}}, {"timeout_ms", 90000}, {"snapshot", false}};
    json retryable = slow;
    retryable["retryable"] = true;
    ASSERT_EQ(daemon_->CreateFunction("slow-retryable", image_, retryable).status, 201);
    ASSERT_EQ(daemon_->CreateFunction("slow-once", image_, slow).status, 201);
    retryable["memory_mib"] = 128;  // started through /v1/procs beside the two above
    ASSERT_EQ(daemon_->CreateFunction("bg-retryable", image_, retryable).status, 201);
    ASSERT_EQ(daemon_->CreateFunction("quick", image_, {{"entrypoint", {"/bin/echo", "hi"}}, {"snapshot", false}}).status, 201);
  }
  static void TearDownTestSuite() {
    // berthd waits for live work when stopped: kill what a failed test left.
    if (daemon_ && daemon_->running()) {
      json procs = daemon_->Get("/v1/procs").json();
      if (procs.is_object() && procs["procs"].is_array()) {
        for (const auto& p : procs["procs"]) {
          daemon_->Post("/v1/procs/" + std::to_string(p["pid"].get<int64_t>()) + "/kill", R"({"signal":"KILL"})");
        }
      }
    }
    delete daemon_;
    daemon_ = nullptr;
    StopHosts(state_);
  }
  static json Node(const std::string& name) { return daemon_->Get("/v1/nodes/" + name).json(); }
  static std::string Virsh(const std::string& uri, const std::string& args) {
    return Shell("timeout 20 virsh -q -c " + uri + " " + args + " 2>/dev/null");
  }
  static json Executions(const std::string& function) {
    return daemon_->Get("/v1/executions?function=" + function + "&limit=50").json()["executions"];
  }
  // Waits until `function` has `count` executions running; returns them.
  static json WaitRunning(const std::string& function, size_t count, int seconds = 180) {
    json running = json::array();
    for (auto t0 = Clock::now(); Clock::now() - t0 < std::chrono::seconds(seconds);) {
      running = json::array();
      for (const auto& e : Executions(function)) {
        if (e["status"] == "running") running.push_back(e);
      }
      if (running.size() >= count) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    return running;
  }
  template <typename Pred>
  static bool WaitFor(Pred pred, int seconds) {
    for (auto t0 = Clock::now(); Clock::now() - t0 < std::chrono::seconds(seconds);) {
      if (pred()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return pred();
  }
  // Earlier work's claims go once its VMs are torn down (after the answers).
  static void WaitIdle() {
    for (const char* n : kNames) {
      EXPECT_TRUE(WaitFor([n] { return Node(n)["allocated"]["memory_mib"] == 0; }, 60)) << Node(n).dump();
    }
  }
  static std::future<HttpResult> InvokeAsyncCall(const std::string& function) {
    const std::string url = daemon_->base_url() + "/v1/functions/" + function + "/invoke";
    const std::string token = daemon_->admin_token();
    return std::async(std::launch::async, [url, token] { return HttpCall("POST", url, "{}", "application/json", token); });
  }

  static constexpr const char* kNames[2] = {"n1", "n2"};
  static std::string state_;
  static std::vector<std::string> uris_;
  static BerthdProcess* daemon_;
  static std::string image_;
};

std::string FailoverTest::state_;
std::vector<std::string> FailoverTest::uris_;
BerthdProcess* FailoverTest::daemon_ = nullptr;
std::string FailoverTest::image_;

TEST_F(FailoverTest, HostDiesMidRunRetryableRunsElsewhereThenHostIsReconciledBeforeNewWork) {
  // Both runs on n1: n2 takes no new work until they run.
  ASSERT_EQ(daemon_->Post("/v1/nodes/n2/cordon", "").status, 200);
  auto retryable = InvokeAsyncCall("slow-retryable");
  auto once = InvokeAsyncCall("slow-once");
  // And one that nobody waits on.
  auto bg = daemon_->Post("/v1/procs", json{{"function", "bg-retryable"}}.dump());
  ASSERT_EQ(bg.status, 201) << bg.body;
  const std::string bg_id = bg.json()["execution_id"];
  json r1 = WaitRunning("slow-retryable", 1), r2 = WaitRunning("slow-once", 1), r3 = WaitRunning("bg-retryable", 1);
  ASSERT_EQ(r1.size(), 1u) << daemon_->log();
  ASSERT_EQ(r2.size(), 1u) << daemon_->log();
  ASSERT_EQ(r3.size(), 1u) << daemon_->log();
  ASSERT_EQ(r1[0]["node"], "n1");
  ASSERT_EQ(r2[0]["node"], "n1");
  ASSERT_EQ(r3[0]["node"], "n1");
  const std::string lost_domains[] = {r1[0]["domain"], r2[0]["domain"], r3[0]["domain"]};
  ASSERT_EQ(daemon_->Post("/v1/nodes/n2/uncordon", "").status, 200);

  // n1's libvirtd dies (its QEMUs live on, as they do on a real host).
  const auto t0 = Clock::now();
  Shell(HostsScript() + " kill 1 " + state_);
  EXPECT_TRUE(WaitFor([] { return Node("n1")["state"] == "down"; }, 20)) << Node("n1").dump();
  EXPECT_LE(Clock::now() - t0, std::chrono::seconds(15)) << "node marked down too late";

  // The retryable run was run again on n2 and finished there.
  HttpResult ok = retryable.get();
  ASSERT_EQ(ok.status, 200) << ok.body << "\n" << daemon_->log();
  EXPECT_EQ(ok.json()["status"], "succeeded") << ok.body;
  EXPECT_EQ(ok.json()["node"], "n2") << ok.body;
  EXPECT_EQ(ok.json()["stdout"], "done\n") << ok.body;
  // The other caller: a clear 503 saying why.
  HttpResult refused = once.get();
  EXPECT_EQ(refused.status, 503) << refused.body;
  EXPECT_NE(refused.body.find("not retryable"), std::string::npos) << refused.body;
  EXPECT_NE(refused.body.find("n1"), std::string::npos) << refused.body;
  // The /v1/procs run was lost with n1 and runs again on n2 (a new process),
  // while berthd keeps running.
  json lost_bg = daemon_->Get("/v1/executions/" + bg_id).json();
  EXPECT_EQ(lost_bg["status"], "lost") << lost_bg.dump();
  EXPECT_EQ(lost_bg.value("error_code", ""), "node_lost") << lost_bg.dump();
  json bg_again;
  EXPECT_TRUE(WaitFor(
      [&] {
        for (const auto& e : Executions("bg-retryable")) {
          if (e["execution_id"] != bg_id && (e["status"] == "succeeded" || e["status"] == "failed" || e["status"] == "error")) {
            bg_again = e;
            return true;
          }
        }
        return false;
      },
      120))
      << Executions("bg-retryable").dump() << daemon_->log();
  EXPECT_EQ(bg_again["status"], "succeeded") << bg_again.dump();
  EXPECT_EQ(bg_again["node"], "n2") << bg_again.dump();
  EXPECT_EQ(bg_again["stdout"], "done\n") << bg_again.dump();
  EXPECT_NE(daemon_->log().find("execution " + bg_id + " of retryable function bg-retryable was lost; running it again"),
            std::string::npos);

  // No record stays running: the two on n1 ended lost, the retry succeeded.
  std::map<std::string, int> states;
  for (const char* fn : {"slow-retryable", "slow-once"}) {
    for (const auto& e : Executions(fn)) {
      states[e["status"]]++;
      if (e["status"] == "lost") {
        EXPECT_EQ(e["node"], "n1");
        EXPECT_EQ(e.value("error_code", ""), "node_lost") << e.dump();
      }
    }
  }
  EXPECT_EQ(states["lost"], 2) << json(states).dump();
  EXPECT_EQ(states["succeeded"], 1) << json(states).dump();
  EXPECT_EQ(states.size(), 2u) << "no other state (running, error): " << json(states).dump();
  // The lost runs' claims are gone; n2's retry ended too.
  EXPECT_TRUE(WaitFor([] { return Node("n1")["allocated"]["memory_mib"] == 0; }, 30)) << Node("n1").dump();
  EXPECT_TRUE(WaitFor([] { return Node("n2")["allocated"]["memory_mib"] == 0; }, 30)) << Node("n2").dump();

  // Start n1's libvirtd again: it still runs the two orphan guests until berthd reconciles it.
  int code = 0;
  std::string out = Shell(HostsScript() + " restart 1 " + state_, &code);
  ASSERT_EQ(code, 0) << out;
  if (Node("n1")["state"] == "down") {
    std::string listed = Virsh(uris_[0], "list --name");
    EXPECT_NE(listed.find(lost_domains[0]), std::string::npos) << "orphans before reconciliation: " << listed;
  }
  // The moment n1 says "up", the orphans are gone: reconciliation ran first.
  json n1;
  ASSERT_TRUE(WaitFor([&] { return (n1 = Node("n1"))["state"] == "up"; }, 30)) << n1.dump() << daemon_->log();
  std::string listed = Virsh(uris_[0], "list --name");
  for (const auto& d : lost_domains) EXPECT_EQ(listed.find(d), std::string::npos) << d << " still runs: " << listed;
  std::string vols = Virsh(uris_[0], "vol-list " + daemon_->pool());
  EXPECT_EQ(vols.find("ovl-"), std::string::npos) << vols;
  EXPECT_EQ(n1["allocated"]["memory_mib"], 0) << n1.dump();
  EXPECT_NE(daemon_->log().find("node n1 reconciled"), std::string::npos);

  // And it takes work again.
  ASSERT_EQ(daemon_->Post("/v1/nodes/n2/cordon", "").status, 200);
  auto quick = daemon_->Post("/v1/functions/quick/invoke", "{}");
  EXPECT_EQ(quick.status, 200) << quick.body;
  EXPECT_EQ(quick.json()["node"], "n1") << quick.body;
  ASSERT_EQ(daemon_->Post("/v1/nodes/n2/uncordon", "").status, 200);
}

TEST_F(FailoverTest, RestartEndsVanishedRunsLostAndRunsRetryableOnesAgain) {
  WaitIdle();
  // Two runs started through /v1/procs (nobody waits on them), on n1.
  ASSERT_EQ(daemon_->Post("/v1/nodes/n2/cordon", "").status, 200);
  std::map<std::string, json> procs;
  for (const char* fn : {"slow-retryable", "slow-once"}) {
    auto r = daemon_->Post("/v1/procs", json{{"function", fn}}.dump());
    ASSERT_EQ(r.status, 201) << r.body << Node("n1").dump();
    procs[fn] = r.json();
  }
  ASSERT_EQ(WaitRunning("slow-retryable", 1).size(), 1u) << daemon_->log();
  ASSERT_EQ(WaitRunning("slow-once", 1).size(), 1u) << daemon_->log();
  ASSERT_EQ(daemon_->Post("/v1/nodes/n2/uncordon", "").status, 200);

  // berthd crashes; meanwhile both domains vanish from n1.
  daemon_->Kill();
  std::string listed = Virsh(uris_[0], "list --name");
  int destroyed = 0;
  std::istringstream in(listed);
  for (std::string d; std::getline(in, d);) {
    if (d.rfind("berth-", 0) == 0 && Virsh(uris_[0], "destroy " + d).find("error") == std::string::npos) ++destroyed;
  }
  EXPECT_EQ(destroyed, 2) << listed;
  ASSERT_TRUE(daemon_->Start()) << daemon_->log();

  // Both records ended lost; only the retryable function runs again, and finishes.
  std::map<std::string, std::vector<json>> by_fn;
  for (const char* fn : {"slow-retryable", "slow-once"}) {
    for (const auto& e : Executions(fn)) by_fn[fn].push_back(e);
  }
  auto lost_count = [](const std::vector<json>& v) {
    int n = 0;
    for (const auto& e : v) n += e["status"] == "lost" && e.value("error_code", "") == "manager_restarted";
    return n;
  };
  // (The first test's lost runs say node_lost.)
  EXPECT_EQ(lost_count(by_fn["slow-retryable"]), 1) << json(by_fn["slow-retryable"]).dump();
  EXPECT_EQ(lost_count(by_fn["slow-once"]), 1) << json(by_fn["slow-once"]).dump();
  json again;
  ASSERT_TRUE(WaitFor(
      [&] {
        for (const auto& e : Executions("slow-retryable")) {
          if (e["status"] == "succeeded" && e["created_ms"] > procs["slow-retryable"].value("created_ms", int64_t{0})) {
            again = e;
            return true;
          }
        }
        return false;
      },
      180))
      << Executions("slow-retryable").dump() << daemon_->log();
  EXPECT_EQ(again["stdout"], "done\n");
  const std::string lost_id = procs["slow-retryable"]["execution_id"];
  EXPECT_NE(daemon_->log().find("reconcile: execution " + lost_id + " of retryable function slow-retryable was lost; running it again"),
            std::string::npos);
  for (const char* fn : {"slow-retryable", "slow-once"}) {
    for (const auto& e : Executions(fn)) EXPECT_NE(e["status"], "running") << e.dump();
  }
  EXPECT_TRUE(WaitFor([] { return Node("n1")["allocated"]["memory_mib"] == 0 && Node("n2")["allocated"]["memory_mib"] == 0; }, 30));
}

TEST_F(FailoverTest, FailedStartMovesToAlternateNodeWithoutNewSchedulingRound) {
  WaitIdle();
  // Both nodes cache the image (locality must not decide here).
  ASSERT_EQ(daemon_->Post("/v1/nodes/n1/cordon", "").status, 200);
  auto seeded = daemon_->Post("/v1/functions/quick/invoke", "{}");
  ASSERT_EQ(seeded.status, 200) << seeded.body;
  ASSERT_EQ(seeded.json()["node"], "n2");
  ASSERT_EQ(daemon_->Post("/v1/nodes/n1/uncordon", "").status, 200);
  WaitIdle();
  // Spread placement picks the emptier node first: keep n1 half full so that
  // n2 is the first choice and n1 the alternate.
  ASSERT_EQ(daemon_->Post("/v1/nodes/n2/cordon", "").status, 200);
  auto hold = daemon_->Post("/v1/procs", json{{"image", image_}, {"memory_mib", 192}, {"command", {"sleep", "600"}}}.dump());
  ASSERT_EQ(hold.status, 201) << hold.body;
  const int64_t hold_pid = hold.json()["pid"];
  ASSERT_EQ(hold.json()["node"], "n1");
  ASSERT_TRUE(WaitFor([&] { return daemon_->Get("/v1/procs/" + std::to_string(hold_pid)).json()["status"] == "running"; }, 180));
  ASSERT_EQ(daemon_->Post("/v1/nodes/n2/uncordon", "").status, 200);

  // n2 refuses every domain: its runtime kernel volume is gone.
  std::string vols = Virsh(uris_[1], "vol-list " + daemon_->pool());
  std::string kernel;
  std::istringstream in(vols);
  for (std::string line; std::getline(in, line);) {
    std::istringstream words(line);
    std::string name;
    words >> name;
    if (name.size() > 8 && name.substr(name.size() - 8) == "-vmlinuz") kernel = name;
  }
  ASSERT_FALSE(kernel.empty()) << vols;
  Shell("timeout 20 virsh -q -c " + uris_[1] + " vol-delete --pool " + daemon_->pool() + " " + kernel);

  auto r = daemon_->Post("/v1/functions/quick/invoke", "{}");
  ASSERT_EQ(r.status, 200) << r.body << daemon_->log();
  EXPECT_EQ(r.json()["node"], "n1") << r.body;
  EXPECT_EQ(r.json()["stdout"], "hi\n");
  json failed;
  for (const auto& e : Executions("quick")) {
    if (e["node"] == "n2" && e["status"] == "error") failed = e;
  }
  EXPECT_EQ(Node("n1")["state"], "up");
  EXPECT_EQ(Node("n2")["state"], "up") << "a failed start does not take the node down";
  ASSERT_TRUE(failed.is_object()) << Executions("quick").dump();
  EXPECT_EQ(failed.value("error_code", ""), "start_failed") << failed.dump();  // the command never ran
  const std::string log = daemon_->log();
  EXPECT_NE(log.find("retrying on alternate node n1"), std::string::npos) << log;
  EXPECT_TRUE(WaitFor([] { return Node("n2")["allocated"]["memory_mib"] == 0; }, 30)) << "the failed start's claim";

  // A /v1/procs instance: its pid is the caller's before it starts. It fails
  // on n2 and the same process (pid, execution id) moves to n1.
  EXPECT_TRUE(WaitFor([] { return Node("n1")["allocated"]["memory_mib"] == 192; }, 30)) << Node("n1").dump();
  auto inst = daemon_->Post("/v1/procs", json{{"image", image_}, {"memory_mib", 128}, {"command", {"sleep", "600"}}}.dump());
  ASSERT_EQ(inst.status, 201) << inst.body;
  const int64_t pid = inst.json()["pid"];
  const std::string id = inst.json()["execution_id"];
  EXPECT_EQ(inst.json()["node"], "n2") << "spread placement: the emptier node first; " << inst.body;
  json moved;
  ASSERT_TRUE(WaitFor(
      [&] {
        moved = daemon_->Get("/v1/procs/" + std::to_string(pid)).json();
        const std::string status = moved.value("status", "");
        return status != "pending" && status != "placing" && status != "starting";  // running, or ended
      },
      180))
      << moved.dump() << daemon_->log();
  EXPECT_EQ(moved["status"], "running") << moved.dump();
  EXPECT_EQ(moved["node"], "n1") << moved.dump();
  EXPECT_EQ(moved["execution_id"], id);
  const std::string domain = moved["domain"];
  EXPECT_NE(Virsh(uris_[0], "list --name").find(domain), std::string::npos) << "virsh on n1 shows the moved process";
  EXPECT_EQ(Virsh(uris_[1], "list --all --name").find(domain), std::string::npos) << "nothing of it left on n2";
  EXPECT_EQ(Virsh(uris_[1], "vol-list " + daemon_->pool()).find("ovl-" + id), std::string::npos);
  EXPECT_NE(daemon_->log().find("process " + id + " (pid " + std::to_string(pid) +
                                ") could not start on node n2 (start_failed); moving it to alternate node n1"),
            std::string::npos)
      << daemon_->log();
  EXPECT_EQ(Node("n2")["allocated"]["memory_mib"], 0) << "its claim moved with it";
  EXPECT_EQ(Node("n1")["allocated"]["memory_mib"], 192 + 128) << Node("n1").dump();
  auto killed_inst = daemon_->Post("/v1/procs/" + std::to_string(pid) + "/kill", R"({"signal":"KILL"})");
  EXPECT_EQ(killed_inst.status, 202) << killed_inst.body;

  auto killed = daemon_->Post("/v1/procs/" + std::to_string(hold_pid) + "/kill", R"({"signal":"KILL"})");
  EXPECT_EQ(killed.status, 202) << killed.body;
  EXPECT_TRUE(WaitFor([] { return Node("n1")["allocated"]["memory_mib"] == 0; }, 30));
}

}  // namespace
}  // namespace berth::testing
