// The warm pool's refill hold (manager/warm_pool.h, WarmPoolOptions::
// refill_hold_ms): after a call takes a pooled VM, the refill waits while
// the function still has calls in flight, at most refill_hold_ms; it starts
// as soon as the last call ends, or when the hold has run out.
//
// A fake hypervisor counts refills: a refill's first hypervisor call is the
// lookup of the function's image volume on the node (Node::EnsureImage),
// which the fake fails, so every refill is one count and leaves nothing.
// The pool gets its idle VM through GiveBack (keep_alive), so no VM is ever
// started. Pool time comes from a manual clock; the pool's loop ticks in
// real time (every 5 ms).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>

#include "common/manual_clock_env.h"
#include "manager/node.h"
#include "manager/runtime.h"
#include "manager/warm_pool.h"
#include "tests/support/fake_cluster.h"

namespace berth::manager {
namespace {

// ManualClockEnv whose time may be read by the pool's loop thread while the
// test advances it.
class AtomicClockEnv : public ManualClockEnv {
 public:
  int64_t NowUnixMs() override { return now_.load(); }
  int64_t MonotonicMs() override { return now_.load(); }
  void SleepMs(int64_t ms) override { now_ += ms; }
  void Advance(int64_t ms) { now_ += ms; }

 private:
  std::atomic<int64_t> now_{1'700'000'000'000};
};

// A fake host whose image lookup counts refills (and stops them there).
class RefillCountingHypervisor : public berth::testing::FakeNodeHypervisor {
 public:
  explicit RefillCountingHypervisor(std::atomic<int>* refills)
      : FakeNodeHypervisor("fake:///", 4, 16'384), refills_(refills) {}
  Result<hv::NodeInfo> GetNodeInfo() override {
    BERTH_ASSIGN_OR_RETURN(hv::NodeInfo info, FakeNodeHypervisor::GetNodeInfo());
    info.cpu_model = "fake";
    return info;
  }
  Result<hv::VolumeInfo> LookupVolume(const std::string& pool, const std::string& name) override {
    if (name.rfind("img-", 0) == 0) {  // a refill puts the function's image on the node first
      ++*refills_;
      return Status::Unavailable("fake: refills stop here");
    }
    return FakeNodeHypervisor::LookupVolume(pool, name);  // the runtime's kernel and initramfs
  }
  Status DestroyDomain(const std::string&) override { return Status::Ok(); }
  Status DeleteVolume(const std::string&, const std::string&) override { return Status::Ok(); }

 private:
  std::atomic<int>* refills_;
};

class WarmPoolRefillTest : public ::testing::Test {
 protected:
  void SetUp() override {
    NodeConfig config;
    config.name = "fake";
    config.accel = "tcg";
    config.pool_dir = "/fake/pool";
    config.log_dir = "/fake/logs";
    node_ = std::make_unique<Node>(&clock_, config, std::make_unique<RefillCountingHypervisor>(&refills_));
    RuntimeArtifacts runtime;
    runtime.kernel_path = "/fake/vmlinuz";
    runtime.initrd_path = "/fake/initramfs.cpio.gz";
    runtime.kernel_sha256 = std::string(64, 'a');
    runtime.initrd_sha256 = std::string(64, 'b');
    ASSERT_TRUE(node_->Prepare(runtime).ok());

    fn_.tenant = "default";
    fn_.version = 1;
    fn_.spec.name = "hold";
    fn_.spec.entrypoint = {"/bin/true"};
    fn_.spec.vcpus = 1;
    fn_.spec.memory_mib = 64;
    fn_.spec.snapshot = false;
    fn_.spec.min_warm = 1;
    fn_.spec.max_warm = 1;
    fn_.spec.keep_alive = true;
    fn_.spec.idle_timeout_ms = 3'600'000;
    image_.id = std::string(64, 'c');
    image_.format = "raw";

    WarmPoolOptions options;
    options.tick_ms = 5;
    options.refill_hold_ms = 2'000;
    options.failure_backoff_ms = 3'600'000;  // one refill attempt per test
    pools_ = std::make_unique<WarmPools>(&clock_, options);
    // One idle VM, given back by an earlier call: the pool is full.
    PooledVm vm;
    vm.domain = "berth-pool-hold-00000001";
    vm.function_version = 1;
    vm.vcpus = 1;
    vm.memory_mib = 64;
    ASSERT_TRUE(pools_->GiveBack(*node_, fn_, image_, vm));
    ASSERT_EQ(pools_->IdleCount("default", "hold"), 1u);
  }

  void TearDown() override {
    if (pools_) pools_->Shutdown();
  }

  // Lets the pool's loop tick for `ms` of real time; the refills counted.
  int RefillsAfter(int ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return refills_.load();
  }
  // Waits (real time, bounded) for the first refill.
  bool RefillStarts() {
    for (int i = 0; i < 400 && refills_.load() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return refills_.load() > 0;
  }

  // A call of the function: admitted, then it takes the pool's VM.
  Autoscaler::Ticket StartCall() {
    auto ticket = pools_->autoscaler().Admit("default/hold", ScalingPolicyOf(fn_.spec));
    EXPECT_TRUE(ticket.ok()) << ticket.status().ToString();
    auto vm = pools_->Take(*node_, fn_, image_);
    EXPECT_TRUE(vm.has_value());
    return ticket.ok() ? std::move(*ticket) : Autoscaler::Ticket();
  }

  AtomicClockEnv clock_;
  std::atomic<int> refills_{0};
  std::unique_ptr<Node> node_;
  std::unique_ptr<WarmPools> pools_;
  FunctionRecord fn_;
  images::ImageRecord image_;
};

TEST_F(WarmPoolRefillTest, FullPoolDoesNotRefill) { EXPECT_EQ(RefillsAfter(100), 0); }

TEST_F(WarmPoolRefillTest, RefillWaitsForTheCallInFlightThenStartsWhenItEnds) {
  Autoscaler::Ticket call = StartCall();
  EXPECT_EQ(pools_->IdleCount("default", "hold"), 0u);
  clock_.Advance(1'000);
  EXPECT_EQ(RefillsAfter(150), 0) << "held: the call that took the VM still runs";
  call.Release();
  EXPECT_TRUE(RefillStarts()) << "the call ended: the refill starts";
  EXPECT_EQ(RefillsAfter(50), 1) << "one refill at a time";
}

TEST_F(WarmPoolRefillTest, HoldEndsAfterRefillHoldMs) {
  Autoscaler::Ticket call = StartCall();
  clock_.Advance(1'999);
  EXPECT_EQ(RefillsAfter(150), 0) << "still within refill_hold_ms";
  clock_.Advance(1);
  EXPECT_TRUE(RefillStarts()) << "refill_hold_ms passed with the call still running";
  call.Release();
}

TEST_F(WarmPoolRefillTest, NoHoldWithoutCallsInFlight) {
  // A VM taken by a call that already ended (or was not admitted here).
  auto vm = pools_->Take(*node_, fn_, image_);
  ASSERT_TRUE(vm.has_value());
  EXPECT_TRUE(RefillStarts()) << "nothing runs: the refill starts at once";
}

}  // namespace
}  // namespace berth::manager
