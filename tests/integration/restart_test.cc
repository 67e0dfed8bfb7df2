// berthd crashes (SIGKILL) or stops (SIGTERM) while VMs run: the restarted berthd reconciles
// (manager/reconcile.h): it adopts what still runs, so those executions end
// with their real outcome, and removes what belongs to nothing, so nothing
// is left behind and nothing accepted is silently lost.
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <iostream>
#include <thread>

#include "tests/integration/support/harness.h"

namespace berth::testing {
namespace {

using nlohmann::json;

// Polls a record until it is final (or timeout_ms passed); returns it.
json WaitFinal(const BerthdProcess& daemon, const std::string& id, int timeout_ms = 60000) {
  json rec;
  for (int waited = 0; waited < timeout_ms; waited += 200) {
    rec = daemon.Get("/v1/executions/" + id).json();
    std::string st = rec.value("status", "");
    if (st != "pending" && st != "placing" && st != "starting" && st != "running") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return rec;
}

// Polls the execution list until one that `match`es has got past starting
// (or 120 s passed: then null).
json WaitRunning(const BerthdProcess& daemon, const std::function<bool(const json&)>& match) {
  for (int i = 0; i < 600; ++i) {
    const json list = daemon.Get("/v1/executions").json()["executions"];
    for (const auto& e : list) {
      if (match(e) && e["status"] != "pending" && e["status"] != "placing" && e["status"] != "starting") return e;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return json();
}

// Registers function "slow" (sleeps run_s, prints "done", exits 3) and starts
// instance "inst" (sleeps inst_s, prints "bye", exits 7); returns the
// instance's execution id ("" on failure).
std::string StartSlowWork(const BerthdProcess& daemon, const std::string& image, int run_s, int inst_s) {
  auto fn = daemon.CreateFunction(
      "slow", image,
      {{"entrypoint", {"sh", "-c", "sleep " + std::to_string(run_s) + "; echo done; exit 3"}},
       {"timeout_ms", 120000},
       {"snapshot", false}});
  EXPECT_EQ(fn.status, 201) << fn.body;
  auto inst = daemon.Post("/v1/procs", json({{"image", image},
                                             {"name", "inst"},
                                             {"command", {"sh", "-c", "sleep " + std::to_string(inst_s) +
                                                                          "; echo bye; exit 7"}}})
                                           .dump());
  EXPECT_EQ(inst.status, 201) << inst.body;
  if (fn.status != 201 || inst.status != 201) return "";
  return inst.json()["execution_id"];
}

int64_t NodeClaims(const BerthdProcess& daemon) {
  int64_t claims = 0;
  const json nodes = daemon.Get("/v1/nodes").json().value("nodes", json::array());
  for (const auto& n : nodes) claims += n.value("executions", 0);
  return claims;
}

// kill -9 while a function run and an instance run: the restarted berthd
// adopts both (their agent channels are reopened), they finish with their
// real exit status and the output they produced after the crash, their
// claims are re-installed and released at the end, nothing is leaked.
TEST(RestartTest, CrashDuringExecutionAdoptsWhatRuns) {
  BerthdProcess daemon;
  ASSERT_TRUE(daemon.running()) << daemon.log();
  std::string image = daemon.UploadBusybox();
  // The instance first (it runs longer), then the run; both must still be
  // running when berthd dies.
  const std::string inst_id = StartSlowWork(daemon, image, 10, 30);
  ASSERT_FALSE(inst_id.empty());
  auto wait_running = [&](const std::function<bool(const json&)>& match) { return WaitRunning(daemon, match); };
  json inst_rec = wait_running([&](const json& e) { return e["execution_id"] == inst_id; });
  ASSERT_TRUE(inst_rec.is_object()) << daemon.Get("/v1/executions").body << "\n" << daemon.log();
  ASSERT_EQ(inst_rec.value("status", ""), "running") << inst_rec.dump() << "\n" << daemon.log();
  const std::string inst_domain = inst_rec["domain"];

  // The invocation's HTTP call dies with the daemon; run it on the side.
  std::thread caller([url = daemon.base_url(), token = daemon.admin_token()] {
    HttpCall("POST", url + "/v1/functions/slow/invoke", "{}", "application/json", token);
  });
  struct Joiner {
    std::thread& t;
    ~Joiner() {
      if (t.joinable()) t.join();
    }
  } joiner{caller};
  json run_rec = wait_running([](const json& e) { return e.value("function", "") == "slow"; });
  ASSERT_TRUE(run_rec.is_object()) << daemon.Get("/v1/executions").body << "\n" << daemon.log();
  ASSERT_EQ(run_rec.value("status", ""), "running") << run_rec.dump() << "\n" << daemon.log();
  const std::string run_id = run_rec["execution_id"], run_domain = run_rec["domain"];
  EXPECT_EQ(NodeClaims(daemon), 2);

  daemon.Kill();
  caller.join();
  EXPECT_TRUE(DomainRunning(run_domain)) << "the VM outlives a crashed berthd";
  EXPECT_TRUE(DomainRunning(inst_domain));

  ASSERT_TRUE(daemon.Start()) << daemon.log();
  EXPECT_EQ(NodeClaims(daemon), 2) << "adopted executions hold their claims again";

  json run = WaitFinal(daemon, run_id);
  EXPECT_EQ(run["status"], "failed") << run.dump() << "\n" << daemon.log();
  EXPECT_EQ(run["exit_code"], 3);
  EXPECT_EQ(run["stdout"], "done\n") << "output produced after the crash reaches the record";
  json in = WaitFinal(daemon, inst_id);
  EXPECT_EQ(in["status"], "failed") << in.dump();
  EXPECT_EQ(in["exit_code"], 7);
  EXPECT_EQ(in["stdout"], "bye\n");

  EXPECT_EQ(WaitForTeardown(daemon, run_id), "") << "adopted run leaked";
  EXPECT_EQ(WaitForTeardown(daemon, inst_id), "") << "adopted instance leaked";
  for (int i = 0; i < 50 && NodeClaims(daemon) != 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(NodeClaims(daemon), 0) << "no claim leaked";

  // And the restarted daemon still works, with the earlier records intact.
  ASSERT_EQ(daemon.CreateFunction("after", image, {{"entrypoint", {"echo", "still here"}}}).status, 201);
  auto r = daemon.Post("/v1/functions/after/invoke", "{}");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.json()["stdout"], "still here\n");
  EXPECT_GT(r.json()["pid"].get<int64_t>(), run["pid"].get<int64_t>());
}

// The answer comes before teardown; a berthd killed right after answering
// leaves the VM behind, and its restart removes it.
TEST(RestartTest, CrashDuringTeardownLeavesNothingAfterRestart) {
  BerthdProcess daemon;
  ASSERT_TRUE(daemon.running()) << daemon.log();
  std::string image = daemon.UploadBusybox();
  ASSERT_EQ(daemon.CreateFunction("quick", image, {{"entrypoint", {"true"}}}).status, 201);
  auto r = daemon.Post("/v1/functions/quick/invoke", "{}");
  daemon.Kill();
  ASSERT_EQ(r.status, 200) << r.body;
  std::string id = r.json()["execution_id"];
  // Usually still there: teardown takes a second or more under TCG.
  std::cout << "left behind by the crash:" << WaitForTeardown(daemon, id, 0) << "\n";
  ASSERT_TRUE(daemon.Start()) << daemon.log();
  EXPECT_EQ(WaitForTeardown(daemon, id, 0), "") << "restart did not remove the leftovers";
  EXPECT_EQ(daemon.Get("/v1/executions/" + id).json()["status"], "succeeded");
}

// SIGTERM while a function run and an instance run (twice: once with the
// executions it started, once with the ones it adopted): berthd exits at once
// instead of waiting for them, the waiting caller gets 503, the VMs go on,
// and the next berthd adopts them, so they end with their real outcome.
TEST(RestartTest, GracefulStopLeavesRunningWorkForTheNextStart) {
  BerthdProcess daemon;
  ASSERT_TRUE(daemon.running()) << daemon.log();
  std::string image = daemon.UploadBusybox();
  const std::string inst_id = StartSlowWork(daemon, image, 25, 45);
  ASSERT_FALSE(inst_id.empty());
  HttpResult answer;
  std::thread caller([&answer, url = daemon.base_url(), token = daemon.admin_token()] {
    answer = HttpCall("POST", url + "/v1/functions/slow/invoke", "{}", "application/json", token);
  });
  struct Joiner {
    std::thread& t;
    ~Joiner() {
      if (t.joinable()) t.join();
    }
  } joiner{caller};
  const json inst_rec = WaitRunning(daemon, [&](const json& e) { return e["execution_id"] == inst_id; });
  const json run_rec = WaitRunning(daemon, [](const json& e) { return e.value("function", "") == "slow"; });
  ASSERT_EQ(inst_rec.value("status", ""), "running") << daemon.Get("/v1/executions").body << "\n" << daemon.log();
  ASSERT_EQ(run_rec.value("status", ""), "running") << daemon.Get("/v1/executions").body << "\n" << daemon.log();
  const std::string run_id = run_rec["execution_id"], run_domain = run_rec["domain"];
  const std::string inst_domain = inst_rec["domain"];

  ASSERT_TRUE(daemon.Stop(30000)) << "berthd waited for its running executions\n" << daemon.log();
  caller.join();
  // Usually the 503 names the execution that goes on; if the server's own
  // stop answered first, it says the server is shutting down.
  EXPECT_EQ(answer.status, 503) << answer.body;
  std::cout << "the waiting caller got: " << answer.body << "\n";
  EXPECT_TRUE(DomainRunning(run_domain)) << "a stop leaves running VMs alone";
  EXPECT_TRUE(DomainRunning(inst_domain));

  ASSERT_TRUE(daemon.Start()) << daemon.log();
  EXPECT_EQ(daemon.Get("/v1/executions/" + run_id).json()["status"], "running");
  EXPECT_EQ(daemon.Get("/v1/executions/" + inst_id).json()["status"], "running");
  EXPECT_EQ(NodeClaims(daemon), 2) << "adopted executions hold their claims again";
  // Stopped again while following what it adopted.
  ASSERT_TRUE(daemon.Stop(30000)) << "berthd waited for the executions it adopted\n" << daemon.log();
  EXPECT_TRUE(DomainRunning(run_domain));
  EXPECT_TRUE(DomainRunning(inst_domain));

  ASSERT_TRUE(daemon.Start()) << daemon.log();
  json run = WaitFinal(daemon, run_id);
  EXPECT_EQ(run["status"], "failed") << run.dump() << "\n" << daemon.log();
  EXPECT_EQ(run["exit_code"], 3);
  EXPECT_EQ(run["stdout"], "done\n");
  json in = WaitFinal(daemon, inst_id);
  EXPECT_EQ(in["status"], "failed") << in.dump();
  EXPECT_EQ(in["exit_code"], 7);
  EXPECT_EQ(in["stdout"], "bye\n");
  EXPECT_EQ(WaitForTeardown(daemon, run_id), "");
  EXPECT_EQ(WaitForTeardown(daemon, inst_id), "");
  for (int i = 0; i < 50 && NodeClaims(daemon) != 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(NodeClaims(daemon), 0) << "no claim leaked";
}

}  // namespace
}  // namespace berth::testing
