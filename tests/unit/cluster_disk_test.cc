// Disk as the cluster feeds it to the scheduler: a node's disk capacity is
// its berth pool's capacity (GetPoolInfo), the bytes its cached images
// (img-* volumes) take are reserved from it, and a pool whose space cannot
// be read sets no disk limit. The node has a fake hypervisor
// (ClusterOptions::connect) whose pool the test changes between refreshes.
#include <gtest/gtest.h>

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

// Enough of a libvirt host for Node::Prepare (accel tcg, runtime volumes
// already there) and the cluster's reads; everything else is Unimplemented.
class FakeHypervisor : public hv::UnimplementedHypervisor {
 public:
  FakeHypervisor(std::string uri, std::shared_ptr<FakePool> pool)
      : hv::UnimplementedHypervisor(std::move(uri)), pool_(std::move(pool)) {}

  Result<hv::NodeInfo> GetNodeInfo() override {
    hv::NodeInfo info;
    info.hostname = "fake";
    info.uri = uri_;
    info.cpus = 4;
    info.memory_mib = 8192;
    return info;
  }
  Status EnsureDirPool(const std::string&, const std::string&) override { return Status::Ok(); }
  Result<hv::VolumeInfo> LookupVolume(const std::string& pool, const std::string& name) override {
    hv::VolumeInfo v;
    v.pool = pool;
    v.name = name;
    v.path = "/fake/" + name;
    return v;
  }
  Result<std::vector<hv::VolumeInfo>> ListVolumes(const std::string&) override {
    std::lock_guard lock(pool_->mu);
    return pool_->volumes;
  }
  Result<hv::PoolInfo> GetPoolInfo(const std::string&) override {
    std::lock_guard lock(pool_->mu);
    return pool_->info;
  }
  Status RefreshPool(const std::string&) override { return Status::Ok(); }
  Result<std::vector<std::string>> ListDomains(const std::string&) override { return std::vector<std::string>{}; }

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

  std::unique_ptr<Cluster> MakeCluster() {
    return berth::testing::MakeClusterWithLocalNode(
        store_.get(), tmp_.path(), [this](const std::string& uri) -> Result<std::unique_ptr<hv::Hypervisor>> {
          return std::unique_ptr<hv::Hypervisor>(new FakeHypervisor(uri, pool_));
        });
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
};

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

TEST_F(ClusterDiskTest, CacheFillingTheDiskLeavesNoDiskButClaimsWithoutDiskStillFit) {
  SetPool({Volume(ImageVolume('a'), 60 * kGiB), Volume(ImageVolume('c'), 50 * kGiB)}, Space(100 * kGiB, 0));
  auto cluster = MakeCluster();
  auto v = cluster->View("local");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->image_cache_bytes, 110 * kGiB);
  EXPECT_EQ(v->disk_capacity_bytes, 0u);
  auto placed = cluster->Place("claim-1", 1, 256, {});
  ASSERT_TRUE(placed.ok()) << placed.status().ToString();
  EXPECT_EQ(*placed, cluster->local());
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
