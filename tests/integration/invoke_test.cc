// End to end through berthd's HTTP API with real TCG guests: every invocation
// boots a fresh VM from a copy-on-write overlay, runs the command through the
// guest agent and tears everything down again (checked with virsh).
#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

#include "tests/integration/support/harness.h"

namespace berth::testing {
namespace {

using nlohmann::json;

class InvokeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    daemon_ = new BerthdProcess();
    ASSERT_TRUE(daemon_->running()) << "berthd did not start:\n" << daemon_->log();
    image_ = daemon_->UploadBusybox();
  }
  static void TearDownTestSuite() {
    delete daemon_;
    daemon_ = nullptr;
  }

  // Registers `name` with the given fields, invokes it with `invoke_body`,
  // and checks that nothing of the execution is left on the node.
  static HttpResult RegisterAndInvoke(const std::string& name, const json& fields, const json& invoke_body = json::object()) {
    auto created = daemon_->CreateFunction(name, image_, fields);
    EXPECT_EQ(created.status, 201) << created.body;
    auto r = daemon_->Post("/v1/functions/" + name + "/invoke", invoke_body.dump());
    json j = r.json();
    json ex = j.contains("execution") ? j["execution"] : j;
    EXPECT_TRUE(ex.contains("execution_id")) << r.body;
    if (ex.contains("execution_id")) {
      // virsh names say what a domain is: tenant, pid and a short id.
      EXPECT_EQ(ex["domain"], "berth-default-" + std::to_string(ex["pid"].get<int64_t>()) + "-" +
                                  ex["execution_id"].get<std::string>().substr(0, 6));
      EXPECT_EQ(WaitForTeardown(*daemon_, ex["execution_id"]), "") << "left behind after the execution";
    }
    // Nothing of any execution is left, not only of this one.
    for (const auto& vol : PoolVolumes(daemon_->pool())) {
      EXPECT_EQ(vol.rfind("ovl-", 0), std::string::npos) << "overlay volume left behind: " << vol;
    }
    EXPECT_TRUE(PoolVolumes(daemon_->log_pool()).empty()) << "console log left behind";
    EXPECT_EQ(Shell("virsh -q -c qemu:///system list --name | grep -c '^berth-default-' || true"), "0\n");
    return r;
  }

  static BerthdProcess* daemon_;
  static std::string image_;
};

BerthdProcess* InvokeTest::daemon_ = nullptr;
std::string InvokeTest::image_;

TEST_F(InvokeTest, EchoReturnsItsOutput) {
  auto r = RegisterAndInvoke("echo", {{"entrypoint", {"echo"}}}, {{"args", {"hello", "from", "a", "vm"}}});
  ASSERT_EQ(r.status, 200) << r.body;
  json j = r.json();
  EXPECT_EQ(j["status"], "succeeded");
  EXPECT_EQ(j["exit_code"], 0);
  EXPECT_EQ(j["stdout"], "hello from a vm\n");
  EXPECT_EQ(j["stderr"], "");
  EXPECT_EQ(j["execution_id"].get<std::string>().size(), 16u);
  EXPECT_GT(j["pid"].get<int64_t>(), 0);
  EXPECT_GT(j["timings"]["boot_ms"].get<int64_t>(), 0);
  EXPECT_GE(j["duration_ms"].get<int64_t>(), 0);

  // The record is durable and readable afterwards.
  auto rec = daemon_->Get("/v1/executions/" + j["execution_id"].get<std::string>());
  ASSERT_EQ(rec.status, 200);
  EXPECT_EQ(rec.json()["stdout"], "hello from a vm\n");
  EXPECT_EQ(rec.json()["status"], "succeeded");
}

TEST_F(InvokeTest, NonZeroExitCodeComesBackAsSuch) {
  auto r = RegisterAndInvoke("exit3", {{"entrypoint", {"sh", "-c", "exit 3"}}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.json()["status"], "failed");
  EXPECT_EQ(r.json()["exit_code"], 3);
}

TEST_F(InvokeTest, StderrIsSeparateFromStdout) {
  auto r = RegisterAndInvoke("streams", {{"entrypoint", {"sh", "-c", "echo to-out; echo to-err >&2; echo more-out"}}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.json()["stdout"], "to-out\nmore-out\n");
  EXPECT_EQ(r.json()["stderr"], "to-err\n");
}

TEST_F(InvokeTest, StdinEnvAndCwdReachTheCommand) {
  auto r = RegisterAndInvoke("stdin-env",
                             {{"entrypoint", {"sh", "-c", "cat; echo \"$GREETING $EXTRA\"; pwd"}},
                              {"env", {{"GREETING", "hi"}}},
                              {"cwd", "/tmp"}},
                             {{"stdin", "line from stdin\n"}, {"env", {{"EXTRA", "there"}}}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.json()["stdout"], "line from stdin\nhi there\n/tmp\n");
}

TEST_F(InvokeTest, CommandOutlivingItsTimeoutIsKilled) {
  auto r = RegisterAndInvoke("sleeper", {{"entrypoint", {"sleep", "120"}}, {"timeout_ms", 2000}});
  ASSERT_EQ(r.status, 200) << r.body;
  json j = r.json();
  EXPECT_EQ(j["status"], "timed_out");
  EXPECT_EQ(j["signal"], 9);
  EXPECT_GE(j["duration_ms"].get<int64_t>(), 2000);
  EXPECT_LT(j["duration_ms"].get<int64_t>(), 20000);
}

TEST_F(InvokeTest, MissingEntrypointIsAClearError) {
  auto r = RegisterAndInvoke("missing", {{"entrypoint", {"/usr/bin/no-such-program"}}});
  EXPECT_EQ(r.status, 422) << r.body;
  json j = r.json();
  EXPECT_EQ(j["error"]["field"], "entrypoint");
  EXPECT_NE(j["error"]["message"].get<std::string>().find("no-such-program"), std::string::npos);
  EXPECT_EQ(j["execution"]["status"], "error");
  EXPECT_EQ(j["execution"]["error_code"], "entrypoint_not_found");
}

// The agent starts commands with clone(CLONE_VM | CLONE_VFORK) and runs
// itself as SCHED_BATCH: the command must still start as a session leader
// (its own process group), as a child of PID 1, with an empty signal mask, no
// ignored signals and the normal scheduling policy; a failure before execve
// still names its cause. The entrypoint is a single busybox cat, not a shell
// (ash ignores SIGQUIT itself).
TEST_F(InvokeTest, CommandStartsCleanInItsOwnSession) {
  auto r = RegisterAndInvoke("clean-start", {{"entrypoint", {"cat", "/proc/self/stat", "/proc/self/status"}}});
  ASSERT_EQ(r.status, 200) << r.body;
  const std::string out = r.json()["stdout"];
  // /proc/self/stat: "pid (comm) state ppid pgrp session ...", policy is field 41.
  std::istringstream head(out.substr(0, out.find('\n')));
  std::string pid;
  head >> pid;
  std::istringstream rest(out.substr(out.find(") ") + 2, out.find('\n') - out.find(") ") - 2));
  std::vector<std::string> fields;  // fields[0] is field 3 (state)
  for (std::string f; rest >> f;) fields.push_back(f);
  ASSERT_GE(fields.size(), 39u) << out;
  EXPECT_EQ(fields[4 - 3], "1") << "parent is PID 1\n" << out;
  EXPECT_EQ(fields[5 - 3], pid) << "process group\n" << out;
  EXPECT_EQ(fields[6 - 3], pid) << "session\n" << out;
  EXPECT_EQ(fields[41 - 3], "0") << "scheduling policy SCHED_OTHER\n" << out;
  EXPECT_NE(out.find("\nSigBlk:\t0000000000000000\n"), std::string::npos) << out;
  EXPECT_NE(out.find("\nSigIgn:\t0000000000000000\n"), std::string::npos) << out;

  auto bad_cwd = RegisterAndInvoke("bad-cwd", {{"entrypoint", {"true"}}, {"cwd", "/no/such/dir"}});
  json j = bad_cwd.json();
  json ex = j.contains("execution") ? j["execution"] : j;
  EXPECT_EQ(ex["error_code"], "spawn_failed") << bad_cwd.body;
  EXPECT_NE(bad_cwd.body.find("/no/such/dir"), std::string::npos) << bad_cwd.body;
}

TEST_F(InvokeTest, ExecutionsAreListedNewestFirst) {
  auto r = daemon_->Get("/v1/executions?limit=3");
  ASSERT_EQ(r.status, 200);
  auto list = r.json()["executions"];
  ASSERT_FALSE(list.empty());
  for (size_t i = 1; i < list.size(); ++i) {
    EXPECT_GT(list[i - 1]["pid"].get<int64_t>(), list[i]["pid"].get<int64_t>());
  }
}

}  // namespace
}  // namespace berth::testing
