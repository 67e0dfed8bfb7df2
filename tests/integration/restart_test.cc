// berthd crashes (SIGKILL) while a VM runs: the restarted berthd ends the
// orphaned execution's record and removes its domain and volumes, so nothing
// is left behind and nothing accepted is silently lost.
#include <gtest/gtest.h>

#include <chrono>
#include <iostream>
#include <thread>

#include "tests/integration/support/harness.h"

namespace berth::testing {
namespace {

using nlohmann::json;

TEST(RestartTest, CrashDuringExecutionIsReconciledOnRestart) {
  BerthdProcess daemon;
  ASSERT_TRUE(daemon.running()) << daemon.log();
  std::string image = daemon.UploadBusybox();
  ASSERT_EQ(daemon.CreateFunction("long", image, {{"entrypoint", {"sleep", "300"}}, {"timeout_ms", 600000}}).status,
            201);

  // The invocation's HTTP call dies with the daemon; run it on the side.
  std::thread caller([url = daemon.base_url(), token = daemon.admin_token()] {
    HttpCall("POST", url + "/v1/functions/long/invoke", "{}", "application/json", token);
  });
  std::string id, domain;
  for (int i = 0; i < 600 && id.empty(); ++i) {
    auto list = daemon.Get("/v1/executions").json()["executions"];
    if (!list.empty() && list[0]["status"] == "running") {
      id = list[0]["execution_id"];
      domain = list[0]["domain"];
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  ASSERT_FALSE(id.empty()) << "the execution never reached running:\n" << daemon.log();
  ASSERT_TRUE(DomainRunning(domain));

  daemon.Kill();
  caller.join();
  EXPECT_TRUE(DomainRunning(domain)) << "the VM outlives a crashed berthd until reconciliation";

  ASSERT_TRUE(daemon.Start()) << daemon.log();
  EXPECT_FALSE(DomainRunning(domain));
  for (const auto& vol : PoolVolumes(daemon.pool())) EXPECT_NE(vol, "ovl-" + id + ".qcow2");
  auto rec = daemon.Get("/v1/executions/" + id).json();
  EXPECT_EQ(rec["status"], "lost") << "a crash loses what ran (it is not adopted)";
  EXPECT_EQ(rec["error_code"], "manager_restarted");

  // And the restarted daemon still works, with the earlier records intact.
  ASSERT_EQ(daemon.CreateFunction("after", image, {{"entrypoint", {"echo", "still here"}}}).status, 201);
  auto r = daemon.Post("/v1/functions/after/invoke", "{}");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.json()["stdout"], "still here\n");
  EXPECT_GT(r.json()["pid"].get<int64_t>(), rec["pid"].get<int64_t>());
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

}  // namespace
}  // namespace berth::testing
