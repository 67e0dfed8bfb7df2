// A process whose start fails before its command ran moves, as the same
// record (id, pid), to the node Launch::move_failed_start gives: what the
// failed node holds of it is torn down, the record goes back from starting to
// placing and names the new node. Nodes here run on a fake hypervisor whose
// StartDomain fails (start_failed, record starting) or whose image upload
// fails (image_unavailable, record still placing).
#include <gtest/gtest.h>

#include <atomic>
#include <csignal>
#include <memory>
#include <mutex>
#include <vector>

#include "manager/executor.h"
#include "manager/node.h"
#include "manager/store.h"
#include "tests/support/temp_dir.h"
#include "tests/support/unimplemented_hypervisor.h"

namespace berth::manager {
namespace {

// A node whose disks work and whose domains never start; calls are logged.
class StartFailsHypervisor : public hv::UnimplementedHypervisor {
 public:
  using UnimplementedHypervisor::UnimplementedHypervisor;
  Result<hv::NodeInfo> GetNodeInfo() override {
    hv::NodeInfo info;
    info.cpus = 2;
    info.memory_mib = 4096;
    return info;
  }
  Status EnsureDirPool(const std::string&, const std::string&) override { return Status::Ok(); }
  Result<hv::VolumeInfo> LookupVolume(const std::string&, const std::string& name) override {
    return Status::NotFound("volume " + name);
  }
  Result<hv::VolumeInfo> UploadVolume(const std::string& pool, const std::string& name, const std::string&,
                                      const std::string& format) override {
    if (fail_image_upload && name.rfind("img-", 0) == 0) return Status::Unavailable("pool is full");
    return hv::VolumeInfo{pool, name, "/fake/" + name, format, 0, 0};
  }
  Result<hv::VolumeInfo> CreateOverlay(const std::string& pool, const std::string& name, const hv::VolumeInfo&,
                                       uint64_t) override {
    Log("overlay " + name);
    return hv::VolumeInfo{pool, name, "/fake/" + name, "qcow2", 0, 0};
  }
  Status DeleteVolume(const std::string&, const std::string& name) override {
    Log("delete " + name);
    return Status::Ok();
  }
  Result<std::string> DownloadVolumeTail(const std::string&, const std::string&, uint64_t) override {
    return std::string("no kernel\n");
  }
  Status StartDomain(const hv::DomainSpec& spec) override {
    Log("start " + spec.name);
    return Status::Unavailable("cannot open the kernel");
  }
  Status DestroyDomain(const std::string& name) override {
    Log("destroy " + name);
    return Status::Ok();
  }
  Result<std::vector<std::string>> ListDomains(const std::string&) override { return std::vector<std::string>{}; }
  Result<std::vector<hv::VolumeInfo>> ListVolumes(const std::string&) override {
    return std::vector<hv::VolumeInfo>{};
  }
  bool fail_image_upload = false;
  std::vector<std::string> calls() {
    std::lock_guard lock(mu_);
    return calls_;
  }

 private:
  void Log(const std::string& call) {
    std::lock_guard lock(mu_);
    calls_.push_back(call);
  }
  std::mutex mu_;
  std::vector<std::string> calls_;
};

class ExecStateMoveTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = Store::Open(dir_.File("berth.db"));
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(*store);
    executor_ = std::make_unique<Executor>(Env::Default(), store_.get(), ExecutorOptions{});
    executor_->SetReleaseHook([this](const std::string& id) {
      std::lock_guard lock(mu_);
      released_.push_back(id);
    });
    executor_->SetStartedEndHook([this](const ExecutionRecord& ex) {
      std::lock_guard lock(mu_);
      ended_.push_back(ex);
    });
  }
  // Prepared on a StartFailsHypervisor (kept in *hv): starts fail start_failed.
  std::unique_ptr<Node> MakePreparedNode(const std::string& name, StartFailsHypervisor** hv) {
    auto fake = std::make_unique<StartFailsHypervisor>("fake:///" + name);
    *hv = fake.get();
    auto node = std::make_unique<Node>(Env::Default(), ConfigFor(name), std::move(fake));
    RuntimeArtifacts runtime;
    runtime.kernel_path = "/fake/vmlinuz";
    runtime.initrd_path = "/fake/initramfs.cpio.gz";
    runtime.kernel_sha256 = std::string(64, 'a');
    runtime.initrd_sha256 = std::string(64, 'b');
    Status prepared = node->Prepare(runtime);
    EXPECT_TRUE(prepared.ok()) << prepared.ToString();
    return node;
  }
  NodeConfig ConfigFor(const std::string& name) {
    NodeConfig config;
    config.name = name;
    config.uri = "fake:///" + name;
    config.accel = "tcg";
    config.pool_dir = dir_.File(name + "-pool");
    config.log_dir = dir_.File(name + "-logs");
    return config;
  }
  static Launch InstanceLaunch() {
    Launch launch;
    launch.name = "mover";
    launch.kind = ProcKind::kInstance;
    launch.image.id = std::string(64, 'c');
    launch.spec.command = {"sleep", "600"};
    launch.spec.memory_mib = 128;
    return launch;
  }

  testing::TempDir dir_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Executor> executor_;
  std::mutex mu_;
  std::vector<std::string> released_;
  std::vector<ExecutionRecord> ended_;
};

TEST_F(ExecStateMoveTest, StartFailedOnOneNodeGoesBackToPlacingOnTheOtherAndItsLeftoversGo) {
  StartFailsHypervisor *hv_a = nullptr, *hv_b = nullptr;
  auto a = MakePreparedNode("a", &hv_a), b = MakePreparedNode("b", &hv_b);
  std::vector<ExecutionRecord> asked;  // what the hook saw (one thread: the execution's)
  Launch launch = InstanceLaunch();
  launch.move_failed_start = [&](const ExecutionRecord& failed) -> Node* {
    asked.push_back(failed);
    // While the hook runs, the record in the store still says where it failed.
    auto stored = store_->GetExecution(failed.id);
    EXPECT_TRUE(stored.ok() && stored->node == failed.node && stored->state == failed.state);
    return failed.node == "a" ? b.get() : nullptr;
  };
  auto first = executor_->Start(*a, launch);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  ASSERT_TRUE(executor_->Wait(first->id, 30'000).ok());
  executor_->WaitForCleanups();

  ASSERT_EQ(asked.size(), 2u);
  EXPECT_EQ(asked[0].node, "a");
  EXPECT_EQ(asked[0].state, ExecState::kStarting) << "the domain was created, the command never ran";
  EXPECT_EQ(asked[0].error_code, "start_failed");
  EXPECT_NE(asked[0].error.find("cannot open the kernel"), std::string::npos) << asked[0].error;
  EXPECT_EQ(asked[1].node, "b");
  EXPECT_EQ(asked[1].state, ExecState::kStarting) << "placing again on b, then starting there";
  EXPECT_EQ(asked[1].id, first->id);
  EXPECT_EQ(asked[1].pid, first->pid);
  EXPECT_EQ(asked[1].domain, first->domain);

  // a's overlay and console log went before the move; b's with its end.
  const std::string overlay = OverlayVolumeName(first->id), console = ConsoleLogVolumeName(first->domain);
  const std::vector<std::string> each = {"overlay " + overlay, "start " + first->domain, "destroy " + first->domain,
                                         "delete " + overlay, "delete " + console};
  EXPECT_EQ(hv_a->calls(), each);
  EXPECT_EQ(hv_b->calls(), each);

  auto rec = store_->GetExecution(first->id);
  ASSERT_TRUE(rec.ok());
  EXPECT_EQ(rec->state, ExecState::kError);
  EXPECT_EQ(rec->error_code, "start_failed");
  EXPECT_EQ(rec->node, "b");
  std::lock_guard lock(mu_);
  ASSERT_EQ(ended_.size(), 1u);
  EXPECT_EQ(ended_[0].node, "b");
  EXPECT_EQ(released_, std::vector<std::string>{first->id}) << "its one claim goes once, at its end";
}

TEST_F(ExecStateMoveTest, StartFailedWhilePlacingMovesTheSameRecordToTheGivenNode) {
  StartFailsHypervisor *hv_a = nullptr, *hv_b = nullptr;
  auto a = MakePreparedNode("a", &hv_a), b = MakePreparedNode("b", &hv_b);
  hv_a->fail_image_upload = hv_b->fail_image_upload = true;
  std::vector<ExecutionRecord> asked;  // what the hook saw (one thread: the execution's)
  Launch launch = InstanceLaunch();
  launch.move_failed_start = [&](const ExecutionRecord& failed) -> Node* {
    asked.push_back(failed);
    return failed.node == "a" ? b.get() : nullptr;  // a -> b once, then give up
  };
  auto first = executor_->Start(*a, launch);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(first->node, "a");
  ASSERT_TRUE(executor_->Wait(first->id, 30'000).ok());
  executor_->WaitForCleanups();

  ASSERT_EQ(asked.size(), 2u);
  EXPECT_EQ(asked[0].node, "a");
  EXPECT_EQ(asked[0].state, ExecState::kPlacing) << "the command never ran";
  EXPECT_EQ(asked[0].error_code, "image_unavailable");
  EXPECT_EQ(asked[1].node, "b") << "the same record, moved";
  EXPECT_EQ(asked[1].id, first->id);
  EXPECT_EQ(asked[1].pid, first->pid);
  EXPECT_EQ(asked[1].domain, first->domain) << "the domain name follows id and pid";

  auto rec = store_->GetExecution(first->id);
  ASSERT_TRUE(rec.ok());
  EXPECT_EQ(rec->state, ExecState::kError);
  EXPECT_EQ(rec->error_code, "image_unavailable");
  EXPECT_EQ(rec->node, "b");
  EXPECT_EQ(rec->pid, first->pid);
  EXPECT_TRUE(hv_a->calls().empty()) << "nothing was created on a";
  std::lock_guard lock(mu_);
  ASSERT_EQ(ended_.size(), 1u) << "one end for the moved process";
  EXPECT_EQ(ended_[0].node, "b");
  EXPECT_EQ(released_, std::vector<std::string>{first->id}) << "its one claim goes once, at its end";
}

TEST_F(ExecStateMoveTest, WithoutAnotherNodeTheStartEndsWhereItFailed) {
  StartFailsHypervisor* hv_a = nullptr;
  auto a = MakePreparedNode("a", &hv_a);
  int asked = 0;
  Launch launch = InstanceLaunch();
  launch.move_failed_start = [&](const ExecutionRecord&) -> Node* {
    ++asked;
    return nullptr;
  };
  auto first = executor_->Start(*a, launch);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  ASSERT_TRUE(executor_->Wait(first->id, 30'000).ok());
  executor_->WaitForCleanups();
  EXPECT_EQ(asked, 1);
  auto rec = store_->GetExecution(first->id);
  ASSERT_TRUE(rec.ok());
  EXPECT_EQ(rec->state, ExecState::kError);
  EXPECT_EQ(rec->error_code, "start_failed");
  EXPECT_EQ(rec->node, "a");
  EXPECT_NE(rec->console.find("no kernel"), std::string::npos) << "its console is kept as before";
}

TEST_F(ExecStateMoveTest, AKilledStartIsNotMoved) {
  StartFailsHypervisor *hv_a = nullptr, *hv_b = nullptr;
  auto a = MakePreparedNode("a", &hv_a), b = MakePreparedNode("b", &hv_b);
  std::atomic<int> asked = 0;
  Launch launch = InstanceLaunch();
  launch.move_failed_start = [&](const ExecutionRecord&) -> Node* {
    ++asked;
    return b.get();
  };
  // Every start fails and the hook always has a node: only the kill ends it.
  auto first = executor_->Start(*a, launch);
  ASSERT_TRUE(first.ok());
  (void)executor_->Kill(first->id, SIGKILL, 0);
  ASSERT_TRUE(executor_->Wait(first->id, 30'000).ok());
  executor_->WaitForCleanups();
  auto rec = store_->GetExecution(first->id);
  ASSERT_TRUE(rec.ok());
  // (Its start may have failed and moved before the kill came; a move never
  // outlives a kill: it ends killed wherever it is.)
  EXPECT_EQ(rec->state, ExecState::kKilled) << ExecStateName(rec->state) << " on " << rec->node << " after "
                                            << asked.load() << " move(s)";
}

}  // namespace
}  // namespace berth::manager
