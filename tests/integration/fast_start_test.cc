// Fast start through a real berthd with real TCG guests: snapshot templates
// built ahead of demand, clone restores as the normal start, warm pools that
// refill and scale to zero, and the /metrics counters.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <future>
#include <iostream>
#include <thread>

#include "tests/integration/support/harness.h"

namespace berth::testing {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

// Prints the execution id, 16 random bytes, whether a marker file exists on
// the root disk, then writes the marker (the write must stay in this VM's overlay).
const json kProbe = {"sh", "-c",
                     "echo $BERTH_EXECUTION_ID; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; "
                     "if [ -e /fast-marker ]; then echo seen; else echo fresh; fi; echo x > /fast-marker; sync"};

std::vector<std::string> Lines(const std::string& s) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at < s.size()) {
    size_t nl = s.find('\n', at);
    if (nl == std::string::npos) nl = s.size();
    out.push_back(s.substr(at, nl - at));
    at = nl + 1;
  }
  return out;
}

// Names of complete templates (tpl-<64 hex>.json) in the pool.
std::vector<std::string> TemplateRecords(const std::string& pool) {
  std::vector<std::string> out;
  for (const auto& v : PoolVolumes(pool)) {
    if (v.size() == 4 + 64 + 5 && v.rfind("tpl-", 0) == 0 && v.ends_with(".json")) out.push_back(v);
  }
  return out;
}

std::vector<std::string> RunningDomains(const std::string& prefix) {
  std::vector<std::string> out;
  for (const auto& name : Lines(Shell("virsh -q -c qemu:///system list --name"))) {
    if (name.rfind(prefix, 0) == 0) out.push_back(name);
  }
  return out;
}

// The value of one sample line of /metrics (-1: not there).
double MetricValue(const std::string& metrics, const std::string& sample) {
  size_t at = metrics.find(sample + " ");
  return at == std::string::npos ? -1 : std::atof(metrics.c_str() + at + sample.size() + 1);
}

// Per-phase timings (issue 6, item 6): every phase of a start that ran is
// recorded, in order.
void ExpectPhases(const json& ex) {
  const json& t = ex["timings"];
  SCOPED_TRACE(ex.dump());
  EXPECT_GE(t["queue_ms"].get<int64_t>(), 0);
  const int64_t created = ex["created_ms"].get<int64_t>();
  const int64_t placed = t["placed_at"].get<int64_t>(), disk = t["disk_ready_at"].get<int64_t>();
  const int64_t booted = t["booted_at"].get<int64_t>(), ready = t["agent_ready_at"].get<int64_t>();
  EXPECT_GE(placed, created);
  EXPECT_GE(disk, placed);
  EXPECT_GE(booted, disk);
  EXPECT_GE(ready, booted);
  EXPECT_GE(ex["finished_ms"].get<int64_t>(), ready);
  EXPECT_GE(t["prepare_ms"].get<int64_t>(), 0);
  EXPECT_GT(t["run_ms"].get<int64_t>(), 0);
  EXPECT_GE(t["total_ms"].get<int64_t>(), t["run_ms"].get<int64_t>() + t["boot_ms"].get<int64_t>());
  if (t["start"] == "warm") {
    EXPECT_EQ(t["boot_ms"].get<int64_t>(), 0);
  } else {
    EXPECT_GT(t["boot_ms"].get<int64_t>(), 0);
  }
}

template <typename Pred>
bool WaitFor(Pred pred, int timeout_ms) {
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  while (Clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  return pred();
}

class FastStartTest : public ::testing::Test {
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
  static json Invoke(const std::string& fn) {
    auto r = daemon_->Post("/v1/functions/" + fn + "/invoke", "{}");
    EXPECT_EQ(r.status, 200) << r.body;
    return r.json();
  }

  // Idle VMs of fn's pool as /metrics reports them (-1: not reported).
  static int PoolSize(const std::string& fn) {
    const std::string body = daemon_->Get("/metrics").body;
    const std::string key = "berth_pool_vms{tenant=\"default\",function=\"" + fn + "\"} ";
    size_t at = body.find(key);
    return at == std::string::npos ? -1 : std::atoi(body.c_str() + at + key.size());
  }

  static BerthdProcess* daemon_;
  static std::string image_;
};

BerthdProcess* FastStartTest::daemon_ = nullptr;
std::string FastStartTest::image_;

TEST_F(FastStartTest, TemplatesRestoreIsolatedClonesAndFollowUpdates) {
  ASSERT_EQ(daemon_->CreateFunction("probe", image_, {{"entrypoint", kProbe}}).status, 201);
  // The template is built ahead of demand; this first call boots cold meanwhile.
  json first = Invoke("probe");
  EXPECT_EQ(first["status"], "succeeded") << first.dump();
  EXPECT_EQ(first["timings"]["start"], "cold") << first.dump();
  ExpectPhases(first);
  ASSERT_TRUE(WaitFor([&] { return TemplateRecords(daemon_->pool()).size() == 1; }, 180'000))
      << "no template built:\n" << daemon_->log();
  const auto old_templates = TemplateRecords(daemon_->pool());

  json second = Invoke("probe");
  EXPECT_EQ(second["status"], "succeeded") << second.dump();
  EXPECT_EQ(second["timings"]["start"], "template") << second.dump();
  auto lines = Lines(second["stdout"].get<std::string>());
  ASSERT_EQ(lines.size(), 3u) << second.dump();
  EXPECT_EQ(lines[0], second["execution_id"].get<std::string>());
  EXPECT_EQ(lines[1].size(), 32u);
  EXPECT_EQ(lines[2], "fresh");  // the first call's disk write is not seen
  ExpectPhases(second);
  EXPECT_GT(MetricValue(daemon_->Get("/metrics").body, "berth_starts_total{kind=\"template\"}"), 0);
  EXPECT_GT(MetricValue(daemon_->Get("/metrics").body, "berth_starts_total{kind=\"cold\"}"), 0);

  // Two clones at once: own execution ids, own random streams, own disks.
  auto a = std::async(std::launch::async, [] { return Invoke("probe"); });
  auto b = std::async(std::launch::async, [] { return Invoke("probe"); });
  json ja = a.get(), jb = b.get();
  for (const json* j : {&ja, &jb}) {
    EXPECT_EQ((*j)["status"], "succeeded") << j->dump();
    EXPECT_EQ((*j)["timings"]["start"], "template") << j->dump();
  }
  auto la = Lines(ja["stdout"].get<std::string>()), lb = Lines(jb["stdout"].get<std::string>());
  ASSERT_EQ(la.size(), 3u);
  ASSERT_EQ(lb.size(), 3u);
  EXPECT_NE(la[0], lb[0]);
  EXPECT_EQ(la[0], ja["execution_id"].get<std::string>());
  EXPECT_EQ(lb[0], jb["execution_id"].get<std::string>());
  EXPECT_NE(la[1], lb[1]) << "two clones read the same random bytes";
  EXPECT_NE(la[1], lines[1]);
  EXPECT_EQ(la[2], "fresh");
  EXPECT_EQ(lb[2], "fresh");
  EXPECT_EQ(WaitForTeardown(*daemon_, ja["execution_id"]), "");
  EXPECT_EQ(WaitForTeardown(*daemon_, jb["execution_id"]), "");

  // An update makes a new version: the old template is deleted, the next
  // start is never from it.
  json spec = {{"image", image_}, {"entrypoint", {"echo", "v2"}}, {"memory_mib", 192}};
  auto put = daemon_->Call("PUT", "/v1/functions/probe", spec.dump());
  ASSERT_EQ(put.status, 200) << put.body;
  EXPECT_TRUE(WaitFor(
      [&] {
        for (const auto& t : TemplateRecords(daemon_->pool())) {
          if (t == old_templates[0]) return false;
        }
        return true;
      },
      10'000))
      << "the old version's template was not pruned";
  json v2 = Invoke("probe");
  EXPECT_EQ(v2["status"], "succeeded") << v2.dump();
  EXPECT_EQ(v2["stdout"], "v2\n");
  ASSERT_TRUE(WaitFor([&] { return TemplateRecords(daemon_->pool()).size() == 1; }, 180'000));
  EXPECT_NE(TemplateRecords(daemon_->pool())[0], old_templates[0]);
  json v2b = Invoke("probe");
  EXPECT_EQ(v2b["stdout"], "v2\n");
  EXPECT_EQ(v2b["timings"]["start"], "template");

  // snapshot: false never restores.
  ASSERT_EQ(daemon_->CreateFunction("nosnap", image_, {{"entrypoint", {"echo", "cold"}}, {"snapshot", false}}).status,
            201);
  json cold = Invoke("nosnap");
  EXPECT_EQ(cold["stdout"], "cold\n");
  EXPECT_EQ(cold["timings"]["start"], "cold");
  EXPECT_EQ(daemon_->Get("/v1/functions/nosnap").json()["snapshot"], false);

  ASSERT_EQ(daemon_->Call("DELETE", "/v1/functions/probe").status, 200);
  EXPECT_TRUE(TemplateRecords(daemon_->pool()).empty()) << "the deleted function's template is still there";
}

TEST_F(FastStartTest, WarmPoolRefillsAfterUseAndEmptiesWhenIdle) {
  const std::string fn = "pool" + std::to_string(getpid());
  const std::string prefix = "berth-pool-" + fn + "-";
  ASSERT_EQ(daemon_->CreateFunction(fn, image_,
                                    {{"entrypoint", {"echo", "warm"}},
                                     {"min_warm", 1},
                                     {"max_warm", 2},
                                     {"idle_timeout_ms", 20'000}})
                .status,
            201);
  // Pooled means past hello, which is a little after the domain runs.
  ASSERT_TRUE(WaitFor([&] { return PoolSize(fn) == 1 && RunningDomains(prefix).size() == 1; }, 180'000))
      << "the pool never filled:\n" << daemon_->log();
  const std::string pooled = RunningDomains(prefix)[0];

  json warm = Invoke(fn);
  EXPECT_EQ(warm["status"], "succeeded") << warm.dump();
  EXPECT_EQ(warm["stdout"], "warm\n");
  EXPECT_EQ(warm["timings"]["start"], "warm");
  EXPECT_EQ(warm["domain"], pooled);
  ExpectPhases(warm);
  // The taken VM is torn down (never reused) and the pool refills with a new one.
  ASSERT_TRUE(WaitFor(
      [&] {
        auto now = RunningDomains(prefix);
        return now.size() == 1 && now[0] != pooled && PoolSize(fn) == 1;
      },
      120'000))
      << "the pool did not refill";
  auto metrics = daemon_->Get("/metrics");
  ASSERT_EQ(metrics.status, 200);
  EXPECT_NE(metrics.body.find("berth_starts_total{kind=\"warm\"} "), std::string::npos);
  EXPECT_EQ(metrics.body.find("berth_starts_total{kind=\"warm\"} 0\n"), std::string::npos) << metrics.body;
  EXPECT_NE(metrics.body.find("berth_pool_vms{tenant=\"default\",function=\"" + fn + "\"} 1"), std::string::npos)
      << metrics.body;
  EXPECT_NE(metrics.body.find("berth_execution_phase_seconds_count{phase=\"boot\"}"), std::string::npos);
  for (const char* phase : {"queue", "prepare", "run", "cleanup", "total"}) {
    EXPECT_GT(MetricValue(metrics.body, std::string("berth_execution_phase_seconds_count{phase=\"") + phase + "\"}"), 0)
        << phase;
  }
  // Teardown happens after the answer; its duration is then added to the record.
  json after;
  EXPECT_TRUE(WaitFor(
      [&] {
        after = daemon_->Get("/v1/executions/" + warm["execution_id"].get<std::string>()).json();
        return after["timings"].value("cleanup_ms", int64_t{0}) > 0;
      },
      30'000))
      << "no teardown time recorded: " << after.dump();
  EXPECT_EQ(after["timings"]["run_ms"], warm["timings"]["run_ms"]) << "the answer was the final record";
  EXPECT_NE(metrics.body.find("berth_executions_total{state=\"succeeded\"}"), std::string::npos);
  EXPECT_EQ(daemon_->CallAs("", "GET", "/metrics").status, 401);

  // No calls for idle_timeout_ms: the pool goes to zero; the next call wakes it.
  EXPECT_TRUE(WaitFor([&] { return RunningDomains(prefix).empty(); }, 60'000)) << "the idle pool did not empty";
  json woken = Invoke(fn);
  EXPECT_EQ(woken["stdout"], "warm\n");
  EXPECT_NE(woken["timings"]["start"], "warm");
  EXPECT_TRUE(WaitFor([&] { return RunningDomains(prefix).size() == 1; }, 120'000)) << "the pool did not wake";

  // Deleting the function removes its pool.
  ASSERT_EQ(daemon_->Call("DELETE", "/v1/functions/" + fn).status, 200);
  EXPECT_TRUE(WaitFor([&] { return RunningDomains(prefix).empty(); }, 30'000));
  for (const auto& v : PoolVolumes(daemon_->pool())) EXPECT_NE(v.rfind("povl-", 0), 0u) << v;
}

// keep_alive: the VM of a successful run serves the next call (it sees the
// earlier call's disk write); without it every call gets a fresh VM.
TEST_F(FastStartTest, KeepAliveReusesTheVmAndDefaultDoesNot) {
  const json marker = {"sh", "-c", "if [ -e /reuse-marker ]; then echo seen; else echo fresh; fi; echo x > /reuse-marker"};
  ASSERT_EQ(daemon_->CreateFunction("reuse", image_, {{"entrypoint", marker}, {"keep_alive", true}}).status, 201);
  ASSERT_EQ(daemon_->Get("/v1/functions/reuse").json()["keep_alive"], true);
  json first = Invoke("reuse");
  EXPECT_EQ(first["stdout"], "fresh\n") << first.dump();
  json second = Invoke("reuse");
  EXPECT_EQ(second["stdout"], "seen\n") << "keep_alive did not reuse the VM: " << second.dump();
  EXPECT_EQ(second["timings"]["start"], "warm") << second.dump();
  EXPECT_EQ(second["domain"], first["domain"]);
  // A failed run's VM is not given back.
  ASSERT_EQ(daemon_->Call("PUT", "/v1/functions/reuse",
                          json{{"image", image_}, {"entrypoint", {"sh", "-c", "echo x > /reuse-marker; exit 3"}},
                               {"keep_alive", true}}
                              .dump())
                .status,
            200);
  json failed = Invoke("reuse");
  EXPECT_EQ(failed["status"], "failed") << failed.dump();
  json after = Invoke("reuse");
  EXPECT_NE(after["domain"], failed["domain"]) << "a failed run's VM was reused";
  ASSERT_EQ(daemon_->Call("DELETE", "/v1/functions/reuse").status, 200);

  ASSERT_EQ(daemon_->CreateFunction("noreuse", image_, {{"entrypoint", marker}}).status, 201);
  EXPECT_EQ(Invoke("noreuse")["stdout"], "fresh\n");
  json again = Invoke("noreuse");
  EXPECT_EQ(again["stdout"], "fresh\n") << "a default function saw an earlier call's VM";
  ASSERT_EQ(daemon_->Call("DELETE", "/v1/functions/noreuse").status, 200);
}

// Autoscaling cap: at max_instances further calls queue, and past max_queued
// they get 429 with a JSON error naming the reason.
TEST_F(FastStartTest, CallsPastMaxInstancesQueueThenGet429) {
  ASSERT_EQ(daemon_->CreateFunction("capped", image_,
                                    {{"entrypoint", {"sh", "-c", "sleep 3; echo done"}},
                                     {"snapshot", false},
                                     {"max_instances", 1},
                                     {"max_queued", 1},
                                     {"target_concurrency", 1}})
                .status,
            201);
  json fn = daemon_->Get("/v1/functions/capped").json();
  EXPECT_EQ(fn["max_instances"], 1);
  EXPECT_EQ(fn["max_queued"], 1);
  auto running = std::async(std::launch::async, [] { return Invoke("capped"); });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  auto queued = std::async(std::launch::async, [] { return Invoke("capped"); });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  auto refused = daemon_->Post("/v1/functions/capped/invoke", "{}");
  EXPECT_EQ(refused.status, 429) << refused.body;
  json err = refused.json();
  ASSERT_TRUE(err.contains("error")) << refused.body;
  EXPECT_EQ(err["error"].value("field", ""), "max_instances") << refused.body;
  EXPECT_NE(err["error"].value("message", "").find("max_queued"), std::string::npos) << refused.body;
  json a = running.get(), b = queued.get();
  EXPECT_EQ(a["stdout"], "done\n") << a.dump();
  EXPECT_EQ(b["stdout"], "done\n") << "the queued call ran once a slot was free: " << b.dump();
  // Bad values are refused by name.
  auto bad = daemon_->CreateFunction("badcap", image_, {{"entrypoint", {"true"}}, {"target_concurrency", 0}});
  EXPECT_EQ(bad.status, 400) << bad.body;
  EXPECT_EQ(bad.json()["error"].value("field", ""), "target_concurrency");
  ASSERT_EQ(daemon_->Call("DELETE", "/v1/functions/capped").status, 200);
}

// A corrupt template save image: the call still succeeds (cold boot), the
// template is invalidated and rebuilt at once, and later calls restore again.
TEST_F(FastStartTest, CorruptTemplateFallsBackToColdAndIsRebuilt) {
  ASSERT_EQ(daemon_->CreateFunction("corrupt", image_, {{"entrypoint", {"echo", "ok"}}}).status, 201);
  ASSERT_TRUE(WaitFor([&] { return TemplateRecords(daemon_->pool()).size() == 1; }, 180'000))
      << "no template built:\n" << daemon_->log();
  const std::string record = TemplateRecords(daemon_->pool())[0];
  const std::string save = record.substr(0, record.size() - 5) + ".save";
  std::string path = Shell("virsh -q -c qemu:///system vol-path --pool " + daemon_->pool() + " " + save);
  while (!path.empty() && (path.back() == '\n' || path.back() == ' ')) path.pop_back();
  ASSERT_FALSE(path.empty());
  // Garbage over the start of QEMU's stream, which follows the 92-byte
  // header and data_len (u32 at offset 20) bytes of XML.
  const long data_len = std::atol(Shell("od -An -tu4 -j20 -N4 " + path).c_str());
  ASSERT_GT(data_len, 0);
  int code = -1;
  Shell("dd if=/dev/urandom of=" + path + " bs=1 seek=" + std::to_string(92 + data_len) +
            " count=4096 conv=notrunc status=none",
        &code);
  ASSERT_EQ(code, 0);

  auto t0 = Clock::now();
  json call = Invoke("corrupt");
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
  EXPECT_EQ(call["status"], "succeeded") << call.dump();
  EXPECT_EQ(call["stdout"], "ok\n");
  EXPECT_EQ(call["timings"]["start"], "cold") << call.dump();
  std::cout << "call over a corrupt template: " << ms << " ms\n";
  ASSERT_TRUE(WaitFor(
      [&] {
        auto now = TemplateRecords(daemon_->pool());
        return now.size() == 1 && Shell("virsh -q -c qemu:///system vol-info --pool " + daemon_->pool() + " " + save)
                                          .find("Capacity") != std::string::npos;
      },
      180'000))
      << "the template was not rebuilt:\n" << daemon_->log();
  // Rebuilt: the header is intact again and the next call restores.
  WaitFor([&] { return Invoke("corrupt")["timings"]["start"] == "template"; }, 60'000);
  json restored = Invoke("corrupt");
  EXPECT_EQ(restored["timings"]["start"], "template") << restored.dump();
  EXPECT_EQ(restored["stdout"], "ok\n");
  ASSERT_EQ(daemon_->Call("DELETE", "/v1/functions/corrupt").status, 200);
}

}  // namespace
}  // namespace berth::testing
