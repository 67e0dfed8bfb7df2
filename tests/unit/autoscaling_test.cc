// Autoscaling (manager/warm_pool.h): the scaling decision (DesiredWarm) and
// the Autoscaler's admission, queueing and observed concurrency, driven by a
// manual clock.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "common/env.h"
#include "common/manual_clock_env.h"
#include "hypervisor/hypervisor.h"
#include "manager/executor.h"
#include "manager/metrics.h"
#include "manager/node.h"
#include "manager/store.h"
#include "manager/warm_pool.h"
#include "tests/support/temp_dir.h"

namespace berth::manager {
namespace {


ScalingPolicy Policy(uint32_t min_warm, uint32_t max_warm, uint32_t target = 1, uint32_t max_instances = 0) {
  ScalingPolicy p;
  p.min_warm = min_warm;
  p.max_warm = max_warm;
  p.target_concurrency = target;
  p.max_instances = max_instances;
  p.idle_timeout_ms = 60'000;
  return p;
}

ScalingObservation Seen(double avg, uint32_t in_flight, size_t queued = 0, int64_t idle_ms = 0) {
  return {avg, in_flight, queued, idle_ms};
}

// A number after `key` in the /metrics text (-1 if absent).
double MetricValue(const std::string& text, const std::string& key) {
  size_t at = text.find(key + " ");
  return at == std::string::npos ? -1 : std::stod(text.substr(at + key.size() + 1));
}

TEST(DesiredWarmTest, GrowsWithObservedConcurrencyWithinMinAndMaxWarm) {
  EXPECT_EQ(DesiredWarm(Policy(0, 8), Seen(0, 0)), 0u);
  EXPECT_EQ(DesiredWarm(Policy(2, 8), Seen(0, 0)), 2u) << "min_warm is the floor while active";
  EXPECT_EQ(DesiredWarm(Policy(0, 8), Seen(0.2, 0)), 1u) << "any traffic asks for one";
  EXPECT_EQ(DesiredWarm(Policy(0, 8), Seen(3.0, 1)), 3u);
  EXPECT_EQ(DesiredWarm(Policy(0, 8), Seen(3.4, 1)), 4u);
  EXPECT_EQ(DesiredWarm(Policy(0, 8), Seen(1.0, 5)), 5u) << "calls in flight now count even before the average";
  EXPECT_EQ(DesiredWarm(Policy(0, 8), Seen(1.0, 2, 3)), 5u) << "queued calls count too";
  EXPECT_EQ(DesiredWarm(Policy(0, 4), Seen(20.0, 20)), 4u) << "capped by max_warm";
}

TEST(DesiredWarmTest, TargetConcurrencyDividesTheDemand) {
  EXPECT_EQ(DesiredWarm(Policy(0, 8, 4), Seen(8.0, 0)), 2u);
  EXPECT_EQ(DesiredWarm(Policy(0, 8, 4), Seen(9.0, 0)), 3u);
  EXPECT_EQ(DesiredWarm(Policy(0, 8, 10), Seen(2.0, 0)), 1u);
}

TEST(DesiredWarmTest, MaxInstancesLeavesRoomOnlyForWhatMayStillRun) {
  EXPECT_EQ(DesiredWarm(Policy(0, 8, 1, 5), Seen(6.0, 3)), 2u);
  EXPECT_EQ(DesiredWarm(Policy(0, 8, 1, 5), Seen(6.0, 5)), 0u);
  EXPECT_EQ(DesiredWarm(Policy(3, 8, 1, 2), Seen(0, 0)), 2u) << "the cap beats min_warm";
}

TEST(DesiredWarmTest, ScalesToZeroWhenIdleOrWithoutAPool) {
  EXPECT_EQ(DesiredWarm(Policy(2, 8), Seen(0, 0, 0, 60'001)), 0u);
  EXPECT_EQ(DesiredWarm(Policy(2, 8), Seen(0, 0, 0, 60'000)), 2u);
  EXPECT_EQ(DesiredWarm(Policy(0, 0), Seen(5.0, 5)), 0u) << "max_warm 0: no pool";
}

TEST(AutoscalerTest, ObservesTimeWeightedConcurrencyOverTheWindow) {
  ManualClockEnv env;
  Autoscaler scaler(&env, 10'000);
  ScalingPolicy p = Policy(0, 8);
  {
    auto a = scaler.Admit("t/f", p);
    auto b = scaler.Admit("t/f", p);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(scaler.Observe("t/f").in_flight, 2u);
    env.Advance(5'000);  // two calls for 5 s
    a->Release();
    env.Advance(5'000);  // one call for 5 s
    auto seen = scaler.Observe("t/f");
    EXPECT_NEAR(seen.avg_concurrency, 1.5, 1e-9);
    EXPECT_EQ(seen.in_flight, 1u);
    EXPECT_EQ(seen.idle_ms, 0);
    EXPECT_EQ(scaler.DesiredWarm("t/f", p), 2u);
  }
  // Both ended; the window slides past them.
  env.Advance(5'000);
  EXPECT_NEAR(scaler.Observe("t/f").avg_concurrency, 0.5, 1e-9);
  EXPECT_EQ(scaler.Observe("t/f").idle_ms, 5'000);
  env.Advance(10'000);
  EXPECT_NEAR(scaler.Observe("t/f").avg_concurrency, 0.0, 1e-9);
  EXPECT_EQ(scaler.DesiredWarm("t/f", p), 0u);
  ScalingPolicy floor = Policy(1, 8);
  EXPECT_EQ(scaler.DesiredWarm("t/f", floor), 1u);
  env.Advance(60'000);
  EXPECT_EQ(scaler.DesiredWarm("t/f", floor), 0u) << "idle past idle_timeout_ms: scale to zero";
  EXPECT_EQ(scaler.Observe("t/other").in_flight, 0u) << "functions are counted apart";
}

TEST(AutoscalerTest, PastMaxInstancesCallsQueueThenAreRefusedNamingTheReason) {
  ManualClockEnv env;
  Autoscaler scaler(&env);
  ScalingPolicy p = Policy(0, 8, 1, 2);
  p.max_queued = 1;
  p.queue_timeout_ms = 10'000;  // real time; the waiter below is admitted long before
  auto a = scaler.Admit("t/f", p);
  auto b = scaler.Admit("t/f", p);
  ASSERT_TRUE(a.ok() && b.ok());

  // The third call waits for a slot ...
  std::atomic<bool> admitted{false};
  std::thread waiter([&] {
    auto c = scaler.Admit("t/f", p);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    admitted = true;
  });
  for (int i = 0; i < 500 && scaler.Observe("t/f").queued == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ASSERT_EQ(scaler.Observe("t/f").queued, 1u);
  EXPECT_FALSE(admitted);
  // ... the fourth finds the queue full: refused at once.
  auto d = scaler.Admit("t/f", p);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), Code::kResourceExhausted);
  EXPECT_EQ(d.status().field(), "max_instances");
  EXPECT_NE(d.status().message().find("max_queued 1"), std::string::npos) << d.status().message();
  // A call ends: the queued one runs.
  a->Release();
  waiter.join();
  EXPECT_TRUE(admitted);
  EXPECT_EQ(scaler.Observe("t/f").queued, 0u);
}

TEST(AutoscalerTest, AQueuedCallGivesUpAfterTheQueueTimeout) {
  ManualClockEnv env;
  Autoscaler scaler(&env);
  ScalingPolicy p = Policy(0, 8, 1, 1);
  p.queue_timeout_ms = 0;
  auto a = scaler.Admit("t/f", p);
  ASSERT_TRUE(a.ok());
  auto b = scaler.Admit("t/f", p);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().field(), "max_instances");
  EXPECT_EQ(scaler.Observe("t/f").queued, 0u) << "a call that gave up leaves the queue";
  a->Release();
  EXPECT_TRUE(scaler.Admit("t/f", p).ok());
}

TEST(AutoscalerTest, NoCapAdmitsEverything) {
  ManualClockEnv env;
  Autoscaler scaler(&env);
  std::vector<Autoscaler::Ticket> tickets;
  for (int i = 0; i < 50; ++i) {
    auto t = scaler.Admit("t/f", Policy(0, 0));
    ASSERT_TRUE(t.ok());
    tickets.push_back(std::move(*t));
  }
  EXPECT_EQ(scaler.Observe("t/f").in_flight, 50u);
  tickets.clear();
  EXPECT_EQ(scaler.Observe("t/f").in_flight, 0u);
}

// The wait for admission at max_instances is part of the call's queue time:
// the ticket's queued_ms goes into the execution's timings.queue_ms (and so
// into the record and the "queue" histogram of /metrics), however the call
// then ends (here: libvirt's test driver has no capacity, so it ends in error
// right after placement starts).
TEST(AutoscalerTest, TheQueueWaitIsInTheExecutionsQueueTiming) {
  ManualClockEnv clock;
  Autoscaler scaler(&clock);
  ScalingPolicy p = Policy(0, 0, 1, 1);
  p.queue_timeout_ms = 10'000;  // real time; the waiter is admitted long before
  auto running = scaler.Admit("default/f", p);
  ASSERT_TRUE(running.ok());
  Result<Autoscaler::Ticket> queued = Status::Internal("not admitted");
  std::thread waiter([&] { queued = scaler.Admit("default/f", p); });
  for (int i = 0; i < 500 && scaler.Observe("default/f").queued == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ASSERT_EQ(scaler.Observe("default/f").queued, 1u);
  clock.Advance(1'500);  // it waits 1.5 s for the running call to end
  running->Release();
  waiter.join();
  ASSERT_TRUE(queued.ok()) << queued.status().ToString();
  EXPECT_EQ(queued->queued_ms(), 1'500);

  berth::testing::TempDir tmp;
  auto store = Store::Open(tmp.path() + "/berth.db");
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  auto hv = hv::ConnectLibvirt("test:///default");
  ASSERT_TRUE(hv.ok()) << hv.status().ToString();
  NodeConfig config;
  config.name = "test";
  config.uri = "test:///default";
  Node node(Env::Default(), config, std::move(*hv));
  const std::string before = Metrics::Global().RenderPrometheus();
  const std::string sum_key = "berth_execution_phase_seconds_sum{phase=\"queue\"}";
  const std::string count_key = "berth_execution_phase_seconds_count{phase=\"queue\"}";
  ExecutionRecord ex;
  {
    Executor executor(Env::Default(), store->get(), ExecutorOptions{});
    FunctionRecord fn;
    fn.tenant = "default";
    fn.version = 1;
    fn.spec.name = "f";
    fn.spec.entrypoint = {"/bin/true"};
    fn.spec.vcpus = 1;
    fn.spec.memory_mib = 64;
    images::ImageRecord image;
    image.id = std::string(64, 'a');
    InvokeRequest request;
    request.queued_ms = queued->queued_ms();
    auto ran = executor.Run(node, fn, image, request);
    ASSERT_TRUE(ran.ok()) << ran.status().ToString();
    ex = *ran;
  }
  EXPECT_EQ(ex.state, ExecState::kError) << ex.error;
  EXPECT_GE(ex.timings.queue_ms, 1'500);
  EXPECT_LT(ex.timings.queue_ms, 1'500 + 60'000);
  auto stored = (*store)->GetExecution(ex.id);
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->timings.queue_ms, ex.timings.queue_ms) << "the record has it too";
  const std::string after = Metrics::Global().RenderPrometheus();
  EXPECT_EQ(MetricValue(after, count_key), MetricValue(before, count_key) + 1) << after;
  EXPECT_GE(MetricValue(after, sum_key) - MetricValue(before, sum_key), 1.5 - 1e-9) << after;
}

}  // namespace
}  // namespace berth::manager
