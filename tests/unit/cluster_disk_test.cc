// Disk as the cluster feeds it to the scheduler: a node's disk capacity is
// its berth pool's capacity (GetPoolInfo), the bytes its cached images
// (img-* volumes) take are reserved from it, and a pool whose space cannot
// be read sets no disk limit. The node has a fake hypervisor
// (ClusterOptions::connect) whose pool the test changes between refreshes.
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/env.h"
#include "manager/cluster.h"
#include "manager/store.h"
#include "tests/support/fake_cluster.h"
#include "tests/support/temp_dir.h"
#include "tests/support/unimplemented_hypervisor.h"

namespace berth::manager {
namespace {

constexpr uint64_t kGiB = uint64_t{1} << 30;

hv::VolumeInfo Volume(const std::string& name, uint64_t allocation) {
  hv::VolumeInfo v;
  v.name = name;
  v.allocation_bytes = allocation;
  v.capacity_bytes = allocation;
  return v;
}

std::string ImageVolume(char digit, const std::string& format = "qcow2") {
  return "img-" + std::string(64, digit) + "." + format;
}

// The pool the fake reports; shared by the fake and the test.
struct FakePool {
  std::mutex mu;
  std::vector<hv::VolumeInfo> volumes;
  Result<hv::PoolInfo> info = hv::PoolInfo{};
};

// A host (4 cpus, 8 GiB) whose pool is the test's FakePool.
class FakeHypervisor : public berth::testing::FakeNodeHypervisor {
 public:
  FakeHypervisor(std::string uri, std::shared_ptr<FakePool> pool)
      : FakeNodeHypervisor(std::move(uri), 4, 8192), pool_(std::move(pool)) {}
  Result<std::vector<hv::VolumeInfo>> ListVolumes(const std::string&) override {
    std::lock_guard lock(pool_->mu);
    return pool_->volumes;
  }
  Result<hv::PoolInfo> GetPoolInfo(const std::string&) override {
    std::lock_guard lock(pool_->mu);
    return pool_->info;
  }

 private:
  std::shared_ptr<FakePool> pool_;
};

class ClusterDiskTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = Store::Open(tmp_.path() + "/berth.db");
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(*store);
  }

  // The local node (qemu:///system) reports pool_; other URIs the pool
  // other_pools_ holds for them (created on first use).
  std::unique_ptr<Cluster> MakeCluster(const std::function<void(ClusterOptions&)>& configure = {}) {
    return berth::testing::MakeClusterWithLocalNode(
        store_.get(), tmp_.path(),
        [this](const std::string& uri) -> Result<std::unique_ptr<hv::Hypervisor>> {
          std::shared_ptr<FakePool> pool = pool_;
          if (uri != "qemu:///system") {
            std::lock_guard lock(pools_mu_);
            auto& p = other_pools_[uri];
            if (!p) p = std::make_shared<FakePool>();
            pool = p;
          }
          return std::unique_ptr<hv::Hypervisor>(new FakeHypervisor(uri, pool));
        },
        60'000, configure);
  }

  std::shared_ptr<FakePool> PoolOf(const std::string& uri) {
    std::lock_guard lock(pools_mu_);
    auto& p = other_pools_[uri];
    if (!p) p = std::make_shared<FakePool>();
    return p;
  }

  void SetPool(std::vector<hv::VolumeInfo> volumes, Result<hv::PoolInfo> info) {
    std::lock_guard lock(pool_->mu);
    pool_->volumes = std::move(volumes);
    pool_->info = std::move(info);
  }

  static hv::PoolInfo Space(uint64_t capacity, uint64_t available) {
    return hv::PoolInfo{capacity, capacity - available, available};
  }

  berth::testing::TempDir tmp_;
  std::unique_ptr<Store> store_;
  std::shared_ptr<FakePool> pool_ = std::make_shared<FakePool>();
  std::mutex pools_mu_;
  std::map<std::string, std::shared_ptr<FakePool>> other_pools_;
};

constexpr uint64_t kOverlay = uint64_t{256} << 20;  // ClusterOptions::overlay_disk_bytes default

TEST(CachedImageBytes, SumsTheAllocationOfImageVolumesOnly) {
  std::vector<hv::VolumeInfo> vols = {Volume(ImageVolume('a'), 3 * kGiB), Volume(ImageVolume('b', "raw"), kGiB),
                                      Volume("ovl-" + std::string(64, 'a') + ".qcow2", 5 * kGiB),
                                      Volume("img-short.raw", 7 * kGiB), Volume("rt-0123456789abcdef-vmlinuz", 11)};
  EXPECT_EQ(CachedImageBytes(vols), 4 * kGiB);
  EXPECT_EQ(CachedImageBytes({}), 0u);
}

TEST_F(ClusterDiskTest, CachedImageBytesAreReservedFromThePoolCapacity) {
  SetPool({Volume(ImageVolume('a'), 30 * kGiB), Volume(ImageVolume('b'), 10 * kGiB),
           Volume("ovl-x.qcow2", 5 * kGiB)},
          Space(100 * kGiB, 55 * kGiB));
  auto cluster = MakeCluster();
  auto v = cluster->View("local");
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(v->pool_capacity_bytes, 100 * kGiB);
  EXPECT_EQ(v->pool_available_bytes, 55 * kGiB);
  EXPECT_EQ(v->image_cache_bytes, 40 * kGiB);
  EXPECT_EQ(v->disk_capacity_bytes, 60 * kGiB) << "the scheduler offers the pool minus the image cache";
  EXPECT_EQ(v->disk_allocated_bytes, 0u);

  // An image evicted: its bytes are offered again after the next refresh.
  SetPool({Volume(ImageVolume('a'), 30 * kGiB), Volume("ovl-x.qcow2", 5 * kGiB)}, Space(100 * kGiB, 65 * kGiB));
  cluster->RefreshLocality("local");
  v = cluster->View("local");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->image_cache_bytes, 30 * kGiB);
  EXPECT_EQ(v->disk_capacity_bytes, 70 * kGiB);
  EXPECT_EQ(v->pool_available_bytes, 65 * kGiB);
}

TEST_F(ClusterDiskTest, CacheFillingTheDiskBlocksPlacements) {
  SetPool({Volume(ImageVolume('a'), 60 * kGiB), Volume(ImageVolume('c'), 50 * kGiB)}, Space(100 * kGiB, 0));
  auto cluster = MakeCluster();
  auto v = cluster->View("local");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->image_cache_bytes, 110 * kGiB);
  EXPECT_EQ(v->disk_capacity_bytes, 0u);
  auto placed = cluster->Place("claim-1", 1, 256, {});
  ASSERT_FALSE(placed.ok()) << "every placement asks for its overlay's disk";
  EXPECT_EQ(placed.status().code(), Code::kResourceExhausted);
  EXPECT_NE(placed.status().message().find("1 lack disk"), std::string::npos) << placed.status().message();

  // With no overlay allowance a placement asks for no disk and still fits.
  auto no_allowance = MakeCluster([](ClusterOptions& o) { o.overlay_disk_bytes = 0; });
  auto fits = no_allowance->Place("claim-2", 1, 256, {});
  ASSERT_TRUE(fits.ok()) << fits.status().ToString();
}

TEST_F(ClusterDiskTest, PlacementsClaimTheOverlayAllowance) {
  SetPool({}, Space(100 * kGiB, 100 * kGiB));
  auto cluster = MakeCluster();
  ASSERT_TRUE(cluster->Place("claim-1", 1, 256, {}).ok());
  ASSERT_TRUE(cluster->Place("claim-2", 1, 256, {}, PlacementHints{}).ok());
  auto v = cluster->View("local");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->disk_allocated_bytes, 2 * kOverlay);
  cluster->Release("claim-1");
  cluster->Release("claim-2");
  EXPECT_EQ(cluster->View("local")->disk_allocated_bytes, 0u);
  // Re-installed claims (reconciliation) count the allowance too.
  ASSERT_TRUE(cluster->ClaimOn("claim-3", "local", 1, 256).ok());
  EXPECT_EQ(cluster->View("local")->disk_allocated_bytes, kOverlay);
}

TEST_F(ClusterDiskTest, UncachedImageIsReservedUntilThePoolShowsIt) {
  const std::string a(64, 'a'), b(64, 'b');
  SetPool({}, Space(100 * kGiB, 100 * kGiB));
  auto cluster = MakeCluster([&](ClusterOptions& o) {
    o.image_bytes = [&](const std::string& digest) -> uint64_t { return digest == a ? 30 * kGiB : 80 * kGiB; };
  });
  ASSERT_TRUE(cluster->Place("c1", 1, 256, {}, PlacementHints{a, ""}).ok());
  auto v = cluster->View("local");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->disk_capacity_bytes, 70 * kGiB) << "image a is on its way: its bytes are reserved";
  EXPECT_EQ(v->disk_allocated_bytes, kOverlay) << "the claim holds the overlay only";

  // Image b (80 GiB) no longer fits beside it; image a again needs no copy.
  auto b_placed = cluster->Place("c2", 1, 256, {}, PlacementHints{b, ""});
  ASSERT_FALSE(b_placed.ok());
  EXPECT_EQ(b_placed.status().code(), Code::kResourceExhausted);
  EXPECT_NE(b_placed.status().message().find("lack disk"), std::string::npos) << b_placed.status().message();
  ASSERT_TRUE(cluster->Place("c3", 1, 256, {}, PlacementHints{a, ""}).ok());
  EXPECT_EQ(cluster->View("local")->disk_capacity_bytes, 70 * kGiB) << "counted once";

  // The copy lands: the pool's own figure replaces the reservation (no double count).
  SetPool({Volume(ImageVolume('a'), 30 * kGiB)}, Space(100 * kGiB, 70 * kGiB));
  cluster->RefreshLocality("local");
  v = cluster->View("local");
  EXPECT_EQ(v->image_cache_bytes, 30 * kGiB);
  EXPECT_EQ(v->disk_capacity_bytes, 70 * kGiB);
  EXPECT_EQ(v->disk_allocated_bytes, 2 * kOverlay);
}

TEST_F(ClusterDiskTest, ReservationOfAnImageThatNeverCameEndsWithItsClaim) {
  const std::string a(64, 'a');
  SetPool({}, Space(100 * kGiB, 100 * kGiB));
  auto cluster = MakeCluster([&](ClusterOptions& o) { o.image_bytes = [](const std::string&) { return 30 * kGiB; }; });
  ASSERT_TRUE(cluster->Place("c1", 1, 256, {}, PlacementHints{a, ""}).ok());
  cluster->RefreshLocality("local");
  EXPECT_EQ(cluster->View("local")->disk_capacity_bytes, 70 * kGiB) << "still on its way while the claim lives";
  cluster->Release("c1");  // e.g. the start failed before the copy
  cluster->RefreshLocality("local");
  EXPECT_EQ(cluster->View("local")->disk_capacity_bytes, 100 * kGiB);
}

TEST_F(ClusterDiskTest, NodeWithoutRoomForTheImageIsSkipped) {
  const std::string a(64, 'a');
  // The local node's cache leaves 20 GiB; node "roomy" has 100 GiB free.
  SetPool({Volume(ImageVolume('c'), 80 * kGiB)}, Space(100 * kGiB, 20 * kGiB));
  PoolOf("qemu+tcp://roomy/system")->info = Space(100 * kGiB, 100 * kGiB);
  auto cluster = MakeCluster([&](ClusterOptions& o) { o.image_bytes = [](const std::string&) { return 30 * kGiB; }; });
  NodeSpec spec;
  spec.name = "roomy";
  spec.uri = "qemu+tcp://roomy/system";
  ASSERT_TRUE(cluster->Add(spec).ok());
  cluster->RefreshLocality("roomy");
  for (int i = 0; i < 3; ++i) {
    auto placed = cluster->PlaceWithAlternates("c" + std::to_string(i), 1, 256, {}, PlacementHints{a, ""});
    ASSERT_TRUE(placed.ok()) << placed.status().ToString();
    EXPECT_EQ(placed->node->name(), "roomy");
    if (i == 0) {
      EXPECT_TRUE(placed->alternates.empty()) << "local has no room for the image";
    }
  }
  // An image local caches goes there happily (spread: the emptier disk).
  auto cached = cluster->Place("c9", 1, 256, {}, PlacementHints{std::string(64, 'c'), ""});
  ASSERT_TRUE(cached.ok()) << cached.status().ToString();

  // An alternate without room for the image is passed over as well.
  std::vector<std::string> alternates = {"local", "roomy"};
  auto alt = cluster->ClaimOnAlternate("c10", 1, 256, &alternates, PlacementHints{std::string(64, 'd'), ""});
  ASSERT_TRUE(alt.ok()) << alt.status().ToString();
  EXPECT_EQ((*alt)->name(), "roomy");
}

TEST_F(ClusterDiskTest, ImageSizeFallsBackToAnotherNodesCache) {
  const std::string e(64, 'e');
  SetPool({Volume(ImageVolume('c'), 70 * kGiB)}, Space(100 * kGiB, 30 * kGiB));
  PoolOf("qemu+tcp://other/system")->volumes = {Volume(ImageVolume('e'), 40 * kGiB)};
  PoolOf("qemu+tcp://other/system")->info = Space(100 * kGiB, 60 * kGiB);
  auto cluster = MakeCluster();  // no image_bytes: sizes come from the caches
  NodeSpec spec;
  spec.name = "other";
  spec.uri = "qemu+tcp://other/system";
  ASSERT_TRUE(cluster->Add(spec).ok());
  cluster->RefreshLocality("other");
  ASSERT_TRUE(cluster->SetAdminState("other", "cordon").ok());
  auto placed = cluster->Place("c1", 1, 256, {}, PlacementHints{e, ""});
  ASSERT_FALSE(placed.ok()) << "40 GiB of image e do not fit in local's 30 GiB";
  EXPECT_NE(placed.status().message().find(std::to_string(40 * kGiB) + " bytes image"), std::string::npos)
      << placed.status().message();
  // An image no node caches and no callback knows: only the overlay is asked.
  ASSERT_TRUE(cluster->Place("c2", 1, 256, {}, PlacementHints{std::string(64, 'f'), ""}).ok());
}

TEST_F(ClusterDiskTest, UnknownPoolSpaceSetsNoDiskLimit) {
  SetPool({Volume(ImageVolume('a'), 30 * kGiB)}, Status::Unimplemented("no pool info here"));
  auto cluster = MakeCluster();
  auto v = cluster->View("local");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->pool_capacity_bytes, 0u);
  EXPECT_EQ(v->pool_available_bytes, 0u);
  EXPECT_EQ(v->image_cache_bytes, 30 * kGiB) << "the cache is still measured";
  EXPECT_EQ(v->disk_capacity_bytes, 0u);
  auto placed = cluster->Place("claim-1", 1, 256, {});
  ASSERT_TRUE(placed.ok()) << placed.status().ToString();

  // The pool's space becomes readable: the limit appears.
  SetPool({Volume(ImageVolume('a'), 30 * kGiB)}, Space(100 * kGiB, 70 * kGiB));
  cluster->RefreshLocality("local");
  v = cluster->View("local");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->disk_capacity_bytes, 70 * kGiB);
}

}  // namespace
}  // namespace berth::manager
