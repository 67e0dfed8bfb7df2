// Which claims a node that comes back gives up (ReleaseEndedClaimsOn, the
// cluster's reconcile hook): only those of executions that ended. A claim
// placed just before the node was flagged, whose execution the executor has
// not registered live yet, must stay, however the release and the start
// interleave; the `is_live` seam plays the executor, so each interleaving is
// replayed exactly. Also: a claim keeps its disk across a restart, and a
// record whose claim is still held is not pruned.
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "manager/cluster.h"
#include "manager/reconcile.h"
#include "manager/store.h"
#include "tests/support/fake_cluster.h"
#include "tests/support/temp_dir.h"
#include "tests/support/unimplemented_hypervisor.h"

namespace berth::manager {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;

// A host with 8 cpus, 16 GiB and a 100 GiB pool, so placements claim disk.
class FakeHypervisor : public berth::testing::FakeNodeHypervisor {
 public:
  explicit FakeHypervisor(std::string uri) : FakeNodeHypervisor(std::move(uri), 8, 16384) {}
  Result<hv::PoolInfo> GetPoolInfo(const std::string&) override { return hv::PoolInfo{100 * kGiB, 0, 100 * kGiB}; }
};

class ClusterClaimReleaseTest : public ::testing::Test {
 protected:
  void SetUp() override { OpenStore(); }
  void OpenStore() {
    store_.reset();
    auto store = Store::Open(tmp_.path() + "/berth.db");
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(*store);
  }
  // The local node and n1, both up, each with a 100 GiB pool.
  std::unique_ptr<Cluster> MakeCluster(const std::function<void(ClusterOptions&)>& configure = {}) {
    auto cluster = berth::testing::MakeClusterWithLocalNode(
        store_.get(), tmp_.path(),
        [](const std::string& uri) -> Result<std::unique_ptr<hv::Hypervisor>> {
          return std::unique_ptr<hv::Hypervisor>(new FakeHypervisor(uri));
        },
        60'000, configure);
    if (!added_) {
      NodeSpec spec;
      spec.name = "n1";
      spec.uri = "qemu+tcp://10.0.0.1/system";
      spec.accel = "tcg";
      auto added = cluster->Add(spec);
      EXPECT_TRUE(added.ok()) << added.status().ToString();
      added_ = true;
    } else {
      EXPECT_TRUE(cluster->LoadRegistered().ok());
    }
    return cluster;
  }
  // Claims `id` on n1 (the local node is cordoned so that n1 is the only choice).
  void PlaceOnN1(Cluster& cluster, const std::string& id) {
    ASSERT_TRUE(cluster.SetAdminState("local", "cordon").ok());
    auto placed = cluster.Place(id, 1, 256, {});
    ASSERT_TRUE(placed.ok()) << placed.status().ToString();
    ASSERT_EQ((*placed)->name(), "n1");
  }
  void Record(const std::string& id, ExecState state) {
    ExecutionRecord ex;
    ex.id = id;
    ex.tenant = "default";
    ex.function = "f";
    ex.image = std::string(64, 'a');
    ex.node = "n1";
    ex.domain = "berth-default-" + id;
    ex.pid = *store_->NewPid();
    ex.ppid = 1;
    ex.state = state;
    ex.created_ms = 1000;
    if (IsTerminal(state)) ex.finished_ms = 2000;
    ASSERT_TRUE(store_->InsertExecution(ex).ok());
  }
  std::set<std::string> ClaimIds() {
    std::set<std::string> ids;
    auto claims = store_->ListClaims();
    EXPECT_TRUE(claims.ok()) << claims.status().ToString();
    if (claims.ok()) {
      for (const auto& c : *claims) ids.insert(c.id);
    }
    return ids;
  }
  int64_t ClaimsOnN1(Cluster& cluster) { return cluster.View("n1")->claims; }

  berth::testing::TempDir tmp_;
  std::unique_ptr<Store> store_;
  bool added_ = false;
};

// The window this closes: placed, not yet live, no record yet. Releasing
// every claim that is not live (what the hook did before) took it.
TEST_F(ClusterClaimReleaseTest, ClaimPlacedBeforeItsExecutionIsRegisteredStays) {
  auto cluster = MakeCluster();
  PlaceOnN1(*cluster, "inflight");
  cluster->ReportUnreachable("n1");  // flagged right after the placement
  auto never_live = [](const std::string&) { return false; };
  EXPECT_EQ(ReleaseEndedClaimsOn(*store_, *cluster, "n1", never_live), 0);
  EXPECT_EQ(ClaimIds(), std::set<std::string>{"inflight"});
  EXPECT_EQ(ClaimsOnN1(*cluster), 1);
}

// The executor registers the run live (and writes its record) right after
// the hook asked whether it is live: the record says it is in flight.
TEST_F(ClusterClaimReleaseTest, RegistrationBetweenTheLiveCheckAndTheRecordReadKeepsTheClaim) {
  auto cluster = MakeCluster();
  PlaceOnN1(*cluster, "racing");
  std::set<std::string> live;
  auto is_live = [&](const std::string& id) {
    const bool was = live.count(id) > 0;
    if (id == "racing" && !was) {  // Executor::Register: live table, then the record
      live.insert(id);
      Record(id, ExecState::kStarting);
    }
    return was;
  };
  EXPECT_EQ(ReleaseEndedClaimsOn(*store_, *cluster, "n1", is_live), 0);
  EXPECT_EQ(ClaimIds(), std::set<std::string>{"racing"});
  EXPECT_EQ(ClaimsOnN1(*cluster), 1);
}

TEST_F(ClusterClaimReleaseTest, OnlyClaimsOfEndedExecutionsOnThatNodeGo) {
  auto cluster = MakeCluster();
  PlaceOnN1(*cluster, "ended");        // ended while n1 was away: its teardown never finished
  PlaceOnN1(*cluster, "tearing-down"); // ended, still live: its own teardown releases it
  PlaceOnN1(*cluster, "running");      // live, record unfinished
  PlaceOnN1(*cluster, "starting");     // record unfinished, not live yet
  Record("ended", ExecState::kLost);
  Record("tearing-down", ExecState::kSucceeded);
  Record("running", ExecState::kRunning);
  Record("starting", ExecState::kStarting);
  // An ended execution's claim on another node is not this node's business.
  ASSERT_TRUE(cluster->SetAdminState("local", "uncordon").ok());
  ASSERT_TRUE(cluster->ClaimOn("elsewhere", "local", 1, 256).ok());
  Record("elsewhere", ExecState::kFailed);

  const std::set<std::string> live = {"tearing-down", "running"};
  EXPECT_EQ(ReleaseEndedClaimsOn(*store_, *cluster, "n1", [&](const std::string& id) { return live.count(id) > 0; }),
            1);
  EXPECT_EQ(ClaimIds(), (std::set<std::string>{"tearing-down", "running", "starting", "elsewhere"}));
  EXPECT_EQ(ClaimsOnN1(*cluster), 3);
  EXPECT_EQ(cluster->View("local")->claims, 1);
}

// A claim re-installed after a restart (reconciliation's ClaimOn) holds the
// disk it held before, not today's overlay allowance.
TEST_F(ClusterClaimReleaseTest, ReinstalledClaimKeepsTheDiskItHeld) {
  {
    auto before = MakeCluster([](ClusterOptions& o) { o.overlay_disk_bytes = 3 * kGiB; });
    PlaceOnN1(*before, "adopted");
    auto row = store_->GetClaim("adopted");
    ASSERT_TRUE(row.ok()) << row.status().ToString();
    ASSERT_TRUE(row->disk_bytes.has_value());
    EXPECT_EQ(*row->disk_bytes, static_cast<int64_t>(3 * kGiB));
    EXPECT_EQ(before->View("n1")->disk_allocated_bytes, 3 * kGiB);
  }
  // berthd restarts with a smaller allowance (the default, 256 MiB).
  OpenStore();
  auto after = MakeCluster();
  EXPECT_EQ(after->View("n1")->disk_allocated_bytes, 0u) << "claims come back only through reconciliation";
  ASSERT_TRUE(after->ClaimOn("adopted", "n1", 1, 256).ok());
  EXPECT_EQ(after->View("n1")->disk_allocated_bytes, 3 * kGiB);
  EXPECT_EQ(*store_->GetClaim("adopted")->disk_bytes, static_cast<int64_t>(3 * kGiB)) << "and keeps it stored";

  // A row an older berthd wrote (no disk recorded) counts today's allowance.
  ClaimRow old{"old", "n1", 1, 256, 5};
  ASSERT_TRUE(store_->InsertClaim(old).ok());
  ASSERT_TRUE(after->ClaimOn("old", "n1", 1, 256).ok());
  EXPECT_EQ(after->View("n1")->disk_allocated_bytes, 3 * kGiB + 256 * kMiB);
  // So does a claim with no row at all (a live fork's).
  ASSERT_TRUE(after->ClaimOn("fork", "n1", 1, 256).ok());
  EXPECT_EQ(after->View("n1")->disk_allocated_bytes, 3 * kGiB + 2 * 256 * kMiB);
  EXPECT_EQ(*store_->GetClaim("fork")->disk_bytes, static_cast<int64_t>(256 * kMiB));
}

}  // namespace
}  // namespace berth::manager
