// Live fork (issue 6, item 5) with real TCG guests through berthd's HTTP API:
// POST /v1/procs/{pid}/fork {"live": true} clones a running instance's
// memory and disk state into a child that continues the parent's command.
// The child sees what the parent wrote to tmpfs and to its disk before the
// fork, knows it is a child (/run/berth/forked holds the parent's pid), does
// not share the parent's random stream, and the parent keeps running.
#include <gtest/gtest.h>

#include <chrono>
#include <iostream>
#include <thread>

#include "tests/integration/support/harness.h"

namespace berth::testing {
namespace {

using nlohmann::json;

// Writes state to tmpfs (/tmp, memory only) and to the disk (/root), then
// waits until it finds itself forked. The parent never is: it keeps looping
// (and heartbeating) until killed. The forked child reports what it sees
// and exits 0. Random bytes are drawn after the fork in both.
const json kForkable = {
    "/bin/sh", "-c",
    "echo tmpfs-state-$$ > /tmp/state; echo disk-state > /root/disk-state; sync; echo ready; "
    "while [ ! -f /run/berth/forked ]; do sleep 0.2; echo beat > /tmp/beat; done; "
    "echo child tmpfs=$(cat /tmp/state) disk=$(cat /root/disk-state) forked_from=$(cat /run/berth/forked) "
    "random=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'); exit 0"};

class LiveForkTest : public ::testing::Test {
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
  static json Proc(int64_t pid) { return daemon_->Get("/v1/procs/" + std::to_string(pid)).json(); }
  static json WaitRunning(int64_t pid, int timeout_ms = 120000) {
    json p;
    for (int waited = 0; waited < timeout_ms; waited += 200) {
      p = Proc(pid);
      std::string st = p.value("status", "");
      if (st != "pending" && st != "placing" && st != "starting") return p;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return p;
  }
  static std::string Stdout(int64_t pid, const std::string& want, int timeout_ms = 60000) {
    std::string out;
    for (int waited = 0; waited < timeout_ms; waited += 200) {
      out = daemon_->Get("/v1/procs/" + std::to_string(pid) + "/logs").json().value("stdout", "");
      if (out.find(want) != std::string::npos) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return out;
  }
  static json Wait(int64_t pid, int64_t timeout_ms = 120000) {
    auto r = daemon_->Get("/v1/procs/" + std::to_string(pid) + "/wait?timeout_ms=" + std::to_string(timeout_ms));
    EXPECT_EQ(r.status, 200) << r.body;
    return r.json();
  }

  static BerthdProcess* daemon_;
  static std::string image_;
};

BerthdProcess* LiveForkTest::daemon_ = nullptr;
std::string LiveForkTest::image_;

TEST_F(LiveForkTest, ChildSeesParentMemoryAndDiskAndParentKeepsRunning) {
  auto r = daemon_->Post("/v1/procs", json{{"name", "forkme"}, {"image", image_}, {"command", kForkable}}.dump());
  ASSERT_EQ(r.status, 201) << r.body;
  const int64_t parent = r.json()["pid"];
  json started = WaitRunning(parent);
  ASSERT_EQ(started["status"], "running") << started.dump(2) << "\n" << daemon_->log();
  ASSERT_NE(Stdout(parent, "ready").find("ready"), std::string::npos) << daemon_->log();

  auto f = daemon_->Post("/v1/procs/" + std::to_string(parent) + "/fork", json{{"live", true}, {"name", "kid"}}.dump());
  ASSERT_EQ(f.status, 201) << f.body;
  const int64_t child = f.json()["pid"];
  EXPECT_EQ(f.json()["ppid"], parent);
  EXPECT_EQ(f.json()["name"], "kid");

  json done = Wait(child);
  ASSERT_EQ(done.value("status", ""), "succeeded") << done.dump(2) << "\n" << daemon_->log();
  EXPECT_EQ(done.value("exit_code", -1), 0);
  const std::string out = daemon_->Get("/v1/procs/" + std::to_string(child) + "/logs").json().value("stdout", "");
  EXPECT_NE(out.find("child tmpfs=tmpfs-state-"), std::string::npos) << "the child sees the parent's tmpfs: " << out;
  EXPECT_NE(out.find("disk=disk-state"), std::string::npos) << "the child sees the parent's disk writes: " << out;
  EXPECT_NE(out.find("forked_from=" + std::to_string(parent)), std::string::npos)
      << "the child knows its parent: " << out;
  EXPECT_EQ(done["timings"].value("start", ""), "fork") << done.dump(2);
  {
    const std::string log = daemon_->log();
    auto at = log.find("live fork of pid");
    if (at != std::string::npos) std::cout << log.substr(at, log.find('\n', at) - at) << "\n";
  }

  // The parent was only paused: it still runs, its domain too, and it never
  // saw the fork marker (the child's disk and memory are its own).
  std::this_thread::sleep_for(std::chrono::seconds(1));
  json p = Proc(parent);
  EXPECT_EQ(p.value("status", ""), "running") << p.dump(2);
  const std::string parent_domain = p.value("domain", "");
  EXPECT_EQ(Shell("virsh -q -c qemu:///system domstate " + parent_domain).find("running"), 0u) << parent_domain;
  const std::string parent_out =
      daemon_->Get("/v1/procs/" + std::to_string(parent) + "/logs").json().value("stdout", "");
  EXPECT_EQ(parent_out.find("child tmpfs="), std::string::npos) << parent_out;

  // A second live fork of the same parent: another independent child, with
  // its own random stream (fresh entropy at its hello).
  auto f2 = daemon_->Post("/v1/procs/" + std::to_string(parent) + "/fork", json{{"live", true}}.dump());
  ASSERT_EQ(f2.status, 201) << f2.body;
  const int64_t child2 = f2.json()["pid"];
  json done2 = Wait(child2);
  ASSERT_EQ(done2.value("status", ""), "succeeded") << done2.dump(2);
  const std::string out2 = daemon_->Get("/v1/procs/" + std::to_string(child2) + "/logs").json().value("stdout", "");
  auto random_of = [](const std::string& s) {
    auto at = s.find("random=");
    return at == std::string::npos ? std::string() : s.substr(at + 7, 32);
  };
  EXPECT_EQ(random_of(out2).size(), 32u) << out2;
  EXPECT_NE(random_of(out), random_of(out2)) << "two live-forked children drew the same random bytes";

  // The children's VMs are gone; the parent ends when killed.
  for (int64_t pid : {child, child2}) {
    const std::string dom = Proc(pid).value("domain", "");
    for (int i = 0; i < 100 && Shell("virsh -q -c qemu:///system list --name | grep -x " + dom).size(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    EXPECT_TRUE(Shell("virsh -q -c qemu:///system list --name | grep -x " + dom).empty()) << dom;
  }
  auto k = daemon_->Post("/v1/procs/" + std::to_string(parent) + "/kill", json{{"signal", "KILL"}}.dump());
  EXPECT_EQ(k.status, 202) << k.body;
  EXPECT_EQ(Wait(parent).value("status", ""), "killed");
}

TEST_F(LiveForkTest, BadInput) {
  // An instance that is not running any more cannot be live-forked.
  auto r = daemon_->Post("/v1/procs", json{{"image", image_}, {"command", {"/bin/true"}}}.dump());
  ASSERT_EQ(r.status, 201) << r.body;
  const int64_t pid = r.json()["pid"];
  Wait(pid);
  auto f = daemon_->Post("/v1/procs/" + std::to_string(pid) + "/fork", json{{"live", true}}.dump());
  EXPECT_EQ(f.status, 422) << f.body;
  // "live" must be a boolean.
  auto g = daemon_->Post("/v1/procs/" + std::to_string(pid) + "/fork", json{{"live", "yes"}}.dump());
  EXPECT_EQ(g.status, 400) << g.body;
  EXPECT_EQ(g.json()["error"].value("field", ""), "live") << g.body;
}

}  // namespace
}  // namespace berth::testing
