// VMs as processes (seed 001) through berthd's HTTP API with real TCG guests:
// exec, fork, children, kill (TERM and KILL, with --tree), wait, logs, what
// virsh shows, tenancy, and bad input on every process route.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "tests/integration/support/harness.h"

namespace berth::testing {
namespace {

using nlohmann::json;

// An instance command that prints its user-data, then idles; TERM makes it
// say so and exit 7.
const json kIdle = {"/bin/sh", "-c",
                    "trap 'echo got-term; exit 7' TERM; echo ud=$BERTH_USERDATA pid=$BERTH_PID ppid=$BERTH_PPID; "
                    "while true; do sleep 1; done"};

class ProcsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    daemon_ = new BerthdProcess({"--kill-grace-ms", "8000"});
    ASSERT_TRUE(daemon_->running()) << "berthd did not start:\n" << daemon_->log();
    image_ = daemon_->UploadBusybox();
  }
  static void TearDownTestSuite() {
    delete daemon_;
    daemon_ = nullptr;
  }

  static json Exec(const json& body, int expect = 201) {
    auto r = daemon_->Post("/v1/procs", body.dump());
    EXPECT_EQ(r.status, expect) << r.body;
    return r.json();
  }
  static json Proc(int64_t pid) { return daemon_->Get("/v1/procs/" + std::to_string(pid)).json(); }
  // Polls until the process is running (agent said hello) or ended.
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
  static std::string Stdout(int64_t pid, const std::string& want, int timeout_ms = 30000) {
    std::string out;
    for (int waited = 0; waited < timeout_ms; waited += 200) {
      out = daemon_->Get("/v1/procs/" + std::to_string(pid) + "/logs").json().value("stdout", "");
      if (out.find(want) != std::string::npos) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return out;
  }
  static json Wait(int64_t pid, int64_t timeout_ms = 60000) {
    auto r = daemon_->Get("/v1/procs/" + std::to_string(pid) + "/wait?timeout_ms=" + std::to_string(timeout_ms));
    EXPECT_EQ(r.status, 200) << r.body;
    return r.json();
  }
  static void ExpectError(const HttpResult& r, long status, const std::string& field) {
    EXPECT_EQ(r.status, status) << r.body;
    json j = r.json();
    ASSERT_TRUE(j.is_object() && j.contains("error")) << r.body;
    if (!field.empty()) {
      EXPECT_EQ(j["error"].value("field", ""), field) << r.body;
    }
    EXPECT_FALSE(j["error"].value("message", "").empty()) << r.body;
  }

  static BerthdProcess* daemon_;
  static std::string image_;
};

BerthdProcess* ProcsTest::daemon_ = nullptr;
std::string ProcsTest::image_;

TEST_F(ProcsTest, ExecForkChildrenAndTreeKill) {
  json a = Exec({{"name", "web1"}, {"image", "busybox"}, {"userdata", "#hello"}, {"command", kIdle}});
  const int64_t pa = a["pid"];
  EXPECT_EQ(a["ppid"], 1);
  EXPECT_EQ(a["kind"], "instance");
  EXPECT_EQ(a["userdata"], "#hello");
  EXPECT_EQ(a["image"], image_) << "an image named by its name resolves to its id";
  ASSERT_EQ(WaitRunning(pa)["status"], "running");
  EXPECT_NE(Stdout(pa, "ud=#hello").find("ud=#hello pid=" + std::to_string(pa) + " ppid=1"), std::string::npos);

  // fork: same image and user-data, child of the forked process.
  auto fb = daemon_->Post("/v1/procs/" + std::to_string(pa) + "/fork", json{{"name", "web2"}}.dump());
  ASSERT_EQ(fb.status, 201) << fb.body;
  json b = fb.json();
  const int64_t pb = b["pid"];
  EXPECT_EQ(b["ppid"], pa);
  EXPECT_EQ(b["userdata"], "#hello");
  EXPECT_EQ(b["image"], image_);
  EXPECT_EQ(b["command"], kIdle);
  json c = daemon_->Post("/v1/procs/" + std::to_string(pb) + "/fork", "{}").json();
  const int64_t pc = c["pid"];
  EXPECT_EQ(c["ppid"], pb);
  EXPECT_EQ(c["name"], "web2") << "a fork without a name keeps its parent's";
  ASSERT_EQ(WaitRunning(pb)["status"], "running");
  ASSERT_EQ(WaitRunning(pc)["status"], "running");
  EXPECT_NE(Stdout(pb, "ppid=").find("ppid=" + std::to_string(pa)), std::string::npos);
  // "running" means the command was started; its TERM trap is set once it printed.
  EXPECT_NE(Stdout(pc, "ppid=").find("ppid=" + std::to_string(pb)), std::string::npos);
  EXPECT_NE(Stdout(pa, "ppid=").find("ppid=1"), std::string::npos);

  // children and ps.
  json kids = daemon_->Get("/v1/procs/" + std::to_string(pa) + "/children").json()["procs"];
  ASSERT_EQ(kids.size(), 1u);
  EXPECT_EQ(kids[0]["pid"], pb);
  json roots = daemon_->Get("/v1/procs/0/children").json()["procs"];
  ASSERT_EQ(roots.size(), 1u);
  EXPECT_EQ(roots[0]["name"], "init");
  json ps = daemon_->Get("/v1/procs").json()["procs"];
  ASSERT_GE(ps.size(), 5u);
  EXPECT_EQ(ps[0]["pid"], 0);
  EXPECT_EQ(ps[0]["name"], "kernel");
  EXPECT_EQ(ps[1]["pid"], 1);
  EXPECT_EQ(ps[1]["name"], "init");

  // virsh sees it with a name saying tenant + pid, a title and berth metadata.
  const std::string domain = Proc(pa)["domain"];
  EXPECT_EQ(domain.rfind("berth-default-" + std::to_string(pa) + "-", 0), 0u) << domain;
  EXPECT_TRUE(DomainRunning(domain));
  std::string title = Shell("virsh -q -c qemu:///system list --title | grep " + domain);
  EXPECT_NE(title.find("web1 pid " + std::to_string(pa)), std::string::npos) << title;
  std::string md = Shell("virsh -c qemu:///system metadata " + domain + " https://berth.dev/xmlns/domain/1");
  EXPECT_NE(md.find("<pid>" + std::to_string(pa) + "</pid>"), std::string::npos) << md;
  EXPECT_NE(md.find("<ppid>1</ppid>"), std::string::npos) << md;
  EXPECT_NE(md.find("<id>" + a["execution_id"].get<std::string>() + "</id>"), std::string::npos) << md;
  EXPECT_NE(md.find(image_), std::string::npos) << md;

  // kill --tree TERM: all three end "killed", descendants first.
  auto k = daemon_->Post("/v1/procs/" + std::to_string(pa) + "/kill", json{{"signal", "TERM"}, {"tree", true}}.dump());
  ASSERT_EQ(k.status, 202) << k.body;
  EXPECT_EQ(k.json()["signalled"], json({pc, pb, pa}));
  for (int64_t pid : {pa, pb, pc}) {
    json w = Wait(pid);
    EXPECT_EQ(w["status"], "killed") << w.dump();
    EXPECT_EQ(w["signal"], 15) << w.dump();
    EXPECT_EQ(w["exit_code"], 7) << "the TERM trap ran: " << w.dump();
    EXPECT_NE(w["stdout"].get<std::string>().find("got-term"), std::string::npos) << w.dump();
    EXPECT_EQ(WaitForTeardown(*daemon_, w["execution_id"]), "");
  }
  EXPECT_TRUE(daemon_->Get("/v1/procs/" + std::to_string(pa) + "/children").json()["procs"].empty())
      << "children lists live processes by default";
  EXPECT_EQ(daemon_->Get("/v1/procs/" + std::to_string(pa) + "/children?all=1").json()["procs"].size(), 1u);
}

TEST_F(ProcsTest, KillWithKillDestroysAtOnceAndTermFallsBackToDestroy) {
  json a = Exec({{"name", "stubborn"}, {"image", image_}, {"command", {"/bin/sh", "-c", "trap '' TERM; while true; do sleep 1; done"}}});
  json b = Exec({{"name", "victim"}, {"image", image_}, {"command", kIdle}});
  ASSERT_EQ(WaitRunning(a["pid"])["status"], "running");
  ASSERT_EQ(WaitRunning(b["pid"])["status"], "running");

  auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(daemon_->Post("/v1/procs/" + std::to_string(b["pid"].get<int64_t>()) + "/kill", R"({"signal":"KILL"})").status, 202);
  json wb = Wait(b["pid"]);
  EXPECT_EQ(wb["status"], "killed");
  EXPECT_EQ(wb["signal"], 9);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(8)) << "KILL destroys without a grace period";

  // A process that ignores TERM is destroyed (SIGKILL) after the grace period (8 s here).
  t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(daemon_->Post("/v1/procs/" + std::to_string(a["pid"].get<int64_t>()) + "/kill", "{}").status, 202);
  json wa = Wait(a["pid"]);
  auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_EQ(wa["status"], "killed");
  EXPECT_EQ(wa["signal"], 9) << "it died by the SIGKILL that followed the TERM";
  EXPECT_GE(took, std::chrono::seconds(7)) << "destroyed only after the grace period";
  EXPECT_EQ(WaitForTeardown(*daemon_, wa["execution_id"]), "");
}

TEST_F(ProcsTest, FunctionRunsAreChildrenAndWaitReturnsTheirStatus) {
  ASSERT_EQ(daemon_->CreateFunction("exit3", image_, {{"entrypoint", {"/bin/sh", "-c", "echo out; exit 3"}}}).status, 201);
  json parent = Exec({{"name", "parent"}, {"image", image_}, {"command", kIdle}});
  const int64_t pp = parent["pid"];
  json run = Exec({{"ppid", pp}, {"function", "exit3"}});
  EXPECT_EQ(run["kind"], "run");
  EXPECT_EQ(run["ppid"], pp);
  json w = Wait(run["pid"]);
  EXPECT_EQ(w["status"], "failed");
  EXPECT_EQ(w["exit_code"], 3);
  EXPECT_EQ(w["stdout"], "out\n");
  // Timings for each phase are recorded.
  EXPECT_GT(w["timings"]["boot_ms"].get<int64_t>(), 0);
  EXPECT_GT(w["timings"]["agent_ready_at"].get<int64_t>(), 0);
  // Wait with a deadline on a live process: 504.
  auto r = daemon_->Get("/v1/procs/" + std::to_string(pp) + "/wait?timeout_ms=200");
  ExpectError(r, 504, "");
  // Executions filter by state and function.
  json list = daemon_->Get("/v1/executions?function=exit3&state=failed").json()["executions"];
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0]["pid"], run["pid"]);
  EXPECT_TRUE(daemon_->Get("/v1/executions?function=exit3&state=succeeded").json()["executions"].empty());
  // cancel = KILL.
  auto c = daemon_->Post("/v1/executions/" + parent["execution_id"].get<std::string>() + "/cancel", "");
  ASSERT_EQ(c.status, 200) << c.body;
  EXPECT_EQ(c.json()["status"], "killed");
  ExpectError(daemon_->Post("/v1/executions/" + parent["execution_id"].get<std::string>() + "/cancel", ""), 422, "id");
}

TEST_F(ProcsTest, BadInputOnEveryProcessRoute) {
  const size_t before = daemon_->Get("/v1/procs?all=1").json()["procs"].size();
  ExpectError(daemon_->Get("/v1/procs/999999"), 404, "pid");
  ExpectError(daemon_->Get("/v1/procs/abc"), 400, "pid");
  ExpectError(daemon_->Post("/v1/procs/0/kill", "{}"), 400, "pid");
  ExpectError(daemon_->Post("/v1/procs/1/kill", R"({"signal":"KILL"})"), 400, "pid");
  ExpectError(daemon_->Post("/v1/procs/999999/kill", "{}"), 404, "pid");
  ExpectError(daemon_->Post("/v1/procs/1/fork", "{}"), 400, "pid");
  ExpectError(daemon_->Post("/v1/procs/999999/fork", "{}"), 404, "pid");
  ExpectError(daemon_->Post("/v1/procs", R"({"image":"busybox","vcpus":"two"})"), 400, "vcpus");
  ExpectError(daemon_->Post("/v1/procs", R"({"image":"busybox","colour":"red"})"), 400, "colour");
  ExpectError(daemon_->Post("/v1/procs", R"({"image":"no-such-image"})"), 404, "image");
  ExpectError(daemon_->Post("/v1/procs", R"({"name":"x"})"), 400, "image");
  ExpectError(daemon_->Post("/v1/procs", R"({"image":"busybox","ppid":999999})"), 404, "ppid");
  ExpectError(daemon_->Post("/v1/procs", R"({"image":"busybox","ppid":0})"), 400, "ppid");
  ExpectError(daemon_->Post("/v1/procs", R"({"image":"busybox","boot":"floppy"})"), 400, "boot");
  ExpectError(daemon_->Post("/v1/procs", R"({"image":"busybox","name":"Bad Name"})"), 400, "name");
  ExpectError(daemon_->Post("/v1/procs", R"({"function":"nope"})"), 404, "");
  ExpectError(daemon_->Post("/v1/procs", "[1,2]"), 400, "");
  ExpectError(daemon_->Post("/v1/procs/2/kill", R"({"signal":"HUP"})"), 400, "signal");
  ExpectError(daemon_->Post("/v1/procs/2/kill", R"({"tree":"yes"})"), 400, "tree");
  ExpectError(daemon_->Get("/v1/procs/2/wait?timeout_ms=-5"), 400, "timeout_ms");
  ExpectError(daemon_->Get("/v1/executions?state=sleeping"), 400, "state");
  ExpectError(daemon_->Get("/v1/executions?since_ms=yesterday"), 400, "since_ms");
  // An oversized body is refused before it is read.
  ExpectError(daemon_->Post("/v1/procs", std::string(17 << 20, ' ')), 413, "");
  // Fork and exec under a process that has exited.
  json done = Exec({{"image", image_}, {"command", {"/bin/true"}}});
  EXPECT_EQ(Wait(done["pid"])["status"], "succeeded");
  ExpectError(daemon_->Post("/v1/procs/" + std::to_string(done["pid"].get<int64_t>()) + "/fork", "{}"), 422, "pid");
  ExpectError(daemon_->Post("/v1/procs", json{{"image", image_}, {"ppid", done["pid"]}}.dump()), 422, "ppid");
  ExpectError(daemon_->Post("/v1/procs/" + std::to_string(done["pid"].get<int64_t>()) + "/kill", "{}"), 422, "pid");
  // Nothing half-created: only the one valid exec added a record.
  EXPECT_EQ(daemon_->Get("/v1/procs?all=1").json()["procs"].size(), before + 1);
}

TEST_F(ProcsTest, AnotherTenantCannotSeeOrTouchProcesses) {
  json a = Exec({{"name", "private"}, {"image", image_}, {"command", kIdle}});
  const std::string pid = std::to_string(a["pid"].get<int64_t>());
  const std::string other = daemon_->CreateToken("intruder");
  EXPECT_EQ(daemon_->CallAs(other, "GET", "/v1/procs/" + pid).status, 404);
  EXPECT_EQ(daemon_->CallAs(other, "POST", "/v1/procs/" + pid + "/kill", "{}").status, 404);
  EXPECT_EQ(daemon_->CallAs(other, "POST", "/v1/procs/" + pid + "/fork", "{}").status, 404);
  EXPECT_EQ(daemon_->CallAs(other, "GET", "/v1/procs/" + pid + "/wait?timeout_ms=10").status, 404);
  EXPECT_EQ(daemon_->CallAs(other, "GET", "/v1/procs/" + pid + "/logs").status, 404);
  EXPECT_EQ(daemon_->CallAs(other, "GET", "/v1/procs/" + pid + "/children").status, 404);
  EXPECT_EQ(daemon_->CallAs(other, "POST", "/v1/procs", json{{"image", image_}, {"ppid", a["pid"]}}.dump()).status, 404)
      << "neither the parent nor the image are the intruder's";
  json theirs = daemon_->CallAs(other, "GET", "/v1/procs").json()["procs"];
  EXPECT_EQ(theirs.size(), 2u) << "only the roots: " << theirs.dump();
  EXPECT_EQ(daemon_->CallAs("", "GET", "/v1/procs").status, 401);
  ASSERT_EQ(daemon_->Post("/v1/procs/" + pid + "/kill", R"({"signal":"KILL"})").status, 202);
  EXPECT_EQ(Wait(a["pid"])["status"], "killed");
}

}  // namespace
}  // namespace berth::testing
