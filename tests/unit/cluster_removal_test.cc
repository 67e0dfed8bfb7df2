// A node removed while the cluster reads it through libvirt outside its lock
// (the locality refresh, the monitor's health check): the read finishes on a
// Node that is still alive, the Node goes when the read lets go of it, and
// the answer does not bring the removed node back. Nodes here have a fake
// hypervisor (ClusterOptions::connect) whose gated call blocks until the
// test has removed the node.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "common/env.h"
#include "manager/cluster.h"
#include "manager/store.h"
#include "tests/support/fake_cluster.h"
#include "tests/support/temp_dir.h"
#include "tests/support/unimplemented_hypervisor.h"

namespace berth::manager {
namespace {

// Shared by a fake hypervisor and the test; outlives both.
struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  std::string method;  // the call that blocks while closed ("" : none)
  bool open = true;
  bool entered = false;
  std::atomic<bool> destroyed{false};
  std::atomic<bool> destroyed_while_blocked{false};

  void Pass(const char* name) {
    std::unique_lock lock(mu);
    if (open || method != name) return;
    entered = true;
    cv.notify_all();
    cv.wait(lock, [&] { return open; });
    destroyed_while_blocked = destroyed.load();
  }
  void Close(const std::string& m) {
    std::lock_guard lock(mu);
    method = m;
    open = false;
    entered = false;
  }
  void Open() {
    {
      std::lock_guard lock(mu);
      open = true;
    }
    cv.notify_all();
  }
  bool WaitEntered() {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, std::chrono::seconds(10), [&] { return entered; });
  }
};

// A host (4 cpus, 8 GiB) whose GetNodeInfo and ListVolumes pass the test's
// Gate, and which tells the gate when it is destroyed.
class FakeHypervisor : public berth::testing::FakeNodeHypervisor {
 public:
  FakeHypervisor(std::string uri, std::shared_ptr<Gate> gate)
      : FakeNodeHypervisor(std::move(uri), 4, 8192), gate_(std::move(gate)) {}
  ~FakeHypervisor() override { gate_->destroyed = true; }

  Result<hv::NodeInfo> GetNodeInfo() override {
    std::shared_ptr<Gate> gate = gate_;  // not `this`: the test checks it is still alive
    gate->Pass("GetNodeInfo");
    hv::NodeInfo info;  // (no member read after the gate: `this` may be gone if the cluster is wrong)
    info.hostname = "fake";
    info.uri = "fake";
    info.cpus = 4;
    info.memory_mib = 8192;
    return info;
  }
  Result<std::vector<hv::VolumeInfo>> ListVolumes(const std::string&) override {
    std::shared_ptr<Gate> gate = gate_;
    gate->Pass("ListVolumes");
    return std::vector<hv::VolumeInfo>{};
  }

 private:
  std::shared_ptr<Gate> gate_;
};

class ClusterRemovalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = Store::Open(tmp_.path() + "/berth.db");
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(*store);
  }
  std::unique_ptr<Cluster> MakeCluster(int64_t monitor_interval_ms = 60'000) {
    auto cluster = berth::testing::MakeClusterWithLocalNode(
        store_.get(), tmp_.path(),
        [this](const std::string& uri) -> Result<std::unique_ptr<hv::Hypervisor>> {
          auto& gate = gates_[uri];
          if (!gate) gate = std::make_shared<Gate>();
          return std::unique_ptr<hv::Hypervisor>(new FakeHypervisor(uri, gate));
        },
        monitor_interval_ms);
    NodeSpec spec;
    spec.name = "n1";
    spec.uri = kUri;
    spec.accel = "tcg";
    auto added = cluster->Add(spec);
    EXPECT_TRUE(added.ok()) << added.status().ToString();
    return cluster;
  }

  static constexpr const char* kUri = "qemu+tcp://10.0.0.1/system";
  berth::testing::TempDir tmp_;
  std::unique_ptr<Store> store_;
  std::map<std::string, std::shared_ptr<Gate>> gates_;  // by URI
};

TEST_F(ClusterRemovalTest, NodeRemovedDuringLocalityRefreshStaysAliveUntilTheReadEnds) {
  auto cluster = MakeCluster();
  std::shared_ptr<Gate> gate = gates_[kUri];
  gate->Close("ListVolumes");
  std::thread refresh([&] { cluster->RefreshLocality("n1"); });
  ASSERT_TRUE(gate->WaitEntered());
  ASSERT_TRUE(cluster->Remove("n1").ok());
  EXPECT_FALSE(gate->destroyed) << "the refresh still reads through it";
  gate->Open();
  refresh.join();
  EXPECT_FALSE(gate->destroyed_while_blocked);
  EXPECT_TRUE(gate->destroyed) << "the last reference went with the refresh";
  EXPECT_EQ(cluster->View("n1").status().code(), Code::kNotFound);
  EXPECT_EQ(cluster->Views().size(), 1u);
  EXPECT_EQ(cluster->Get("n1"), nullptr);
}

TEST_F(ClusterRemovalTest, NodeRemovedDuringHealthCheckIsNotBroughtBack) {
  auto cluster = MakeCluster(/*monitor_interval_ms=*/5);
  std::shared_ptr<Gate> gate = gates_[kUri];
  gate->Close("GetNodeInfo");
  cluster->StartMonitor();
  ASSERT_TRUE(gate->WaitEntered());
  ASSERT_TRUE(cluster->Remove("n1").ok());
  EXPECT_FALSE(gate->destroyed) << "the health check still reads through it";
  gate->Open();
  for (int i = 0; i < 1000 && !gate->destroyed; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  cluster->StopMonitor();
  EXPECT_FALSE(gate->destroyed_while_blocked);
  EXPECT_TRUE(gate->destroyed);
  EXPECT_EQ(cluster->View("n1").status().code(), Code::kNotFound);
  EXPECT_EQ(cluster->Views().size(), 1u);
}

}  // namespace
}  // namespace berth::manager
