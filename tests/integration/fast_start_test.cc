// Fast start through a real berthd with real TCG guests: snapshot templates
// built ahead of demand, clone restores as the normal start, warm pools that
// refill and scale to zero, and the /metrics counters.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <future>
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
  EXPECT_GT(second["timings"]["boot_ms"].get<int64_t>(), 0);

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

}  // namespace
}  // namespace berth::testing
