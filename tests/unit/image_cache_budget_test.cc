// The per-node image cache budget (--image-cache-bytes): Node::TrimImageCache
// evicts the least recently used images that nothing needs, never one in use.
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "common/env.h"
#include "common/manual_clock_env.h"
#include "common/sha256.h"
#include "manager/node.h"
#include "tests/support/temp_dir.h"
#include "tests/support/unimplemented_hypervisor.h"

namespace berth::manager {
namespace {


// A pool of volumes in memory: uploads take the local file's size; deletes are recorded.
class PoolHypervisor : public hv::UnimplementedHypervisor {
 public:
  PoolHypervisor() : hv::UnimplementedHypervisor("fake:///pool") {}
  Result<hv::NodeInfo> GetNodeInfo() override { return hv::NodeInfo{}; }
  Status EnsureDirPool(const std::string&, const std::string&) override { return Status::Ok(); }
  Result<hv::VolumeInfo> LookupVolume(const std::string&, const std::string& name) override {
    auto it = volumes_.find(name);
    if (it == volumes_.end()) return Status::NotFound("no volume " + name);
    return it->second;
  }
  Result<hv::VolumeInfo> UploadVolume(const std::string& pool, const std::string& name, const std::string& local_path,
                                      const std::string& format) override {
    hv::VolumeInfo v;
    v.pool = pool;
    v.name = name;
    v.path = "/pool/" + name;
    v.format = format;
    v.capacity_bytes = v.allocation_bytes = std::filesystem::file_size(local_path);
    volumes_[name] = v;
    return v;
  }
  Status DeleteVolume(const std::string&, const std::string& name) override {
    if (volumes_.erase(name)) deleted.push_back(name);
    return Status::Ok();
  }
  Result<std::vector<hv::VolumeInfo>> ListVolumes(const std::string&) override {
    std::vector<hv::VolumeInfo> out;
    for (const auto& [name, v] : volumes_) out.push_back(v);
    return out;
  }
  Status RefreshPool(const std::string&) override { return Status::Ok(); }
  // A volume an earlier berthd left (never used by this process).
  void Seed(const std::string& name, uint64_t bytes) {
    hv::VolumeInfo v;
    v.name = name;
    v.capacity_bytes = v.allocation_bytes = bytes;
    volumes_[name] = v;
  }
  bool Has(const std::string& name) const { return volumes_.count(name) > 0; }
  std::vector<std::string> deleted;

  Result<std::vector<std::string>> ListDomains(const std::string&) override { return std::vector<std::string>{}; }

 private:
  std::map<std::string, hv::VolumeInfo> volumes_;
};

class ImageCacheBudgetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto hv = std::make_unique<PoolHypervisor>();
    hv_ = hv.get();
    node_ = std::make_unique<Node>(&env_, NodeConfig{}, std::move(hv));
  }
  // A local image file of `bytes` bytes whose content is unique to `seed`.
  images::ImageRecord Image(const std::string& seed, uint64_t bytes) {
    std::string path = tmp_.path() + "/" + seed + ".raw";
    std::string data(bytes, seed[0]);
    std::ofstream(path, std::ios::binary) << data;
    images::ImageRecord rec;
    rec.id = Sha256::HexOf(data);
    rec.format = "raw";
    rec.size_bytes = rec.virtual_size_bytes = bytes;
    rec.path = path;
    return rec;
  }
  std::string Vol(const images::ImageRecord& r) { return Node::ImageVolumeName(r.id, r.format); }
  void Use(const images::ImageRecord& r) {
    env_.Advance(1000);
    ASSERT_TRUE(node_->EnsureImage(r).ok());
  }

  berth::testing::TempDir tmp_;
  ManualClockEnv env_;
  PoolHypervisor* hv_ = nullptr;
  std::unique_ptr<Node> node_;
};

TEST_F(ImageCacheBudgetTest, EvictsLeastRecentlyUsedImagesNothingNeeds) {
  auto a = Image("a", 1000), b = Image("b", 1000), c = Image("c", 1000);
  const std::string stale = Node::ImageVolumeName(std::string(64, 'd'), "raw");
  hv_->Seed(stale, 1000);  // left by an earlier berthd: never used by this one, so the oldest
  Use(a);
  Use(b);
  Use(c);
  Use(a);  // a is now the most recent: b, then c are the least recently used
  ASSERT_EQ(node_->CachedImages().size(), 4u);

  // Within the budget: nothing goes.
  EXPECT_EQ(node_->TrimImageCache(4000, [](const std::string&) { return false; }), 0u);
  EXPECT_TRUE(hv_->deleted.empty());

  // 2000 bytes with b in use: the stale volume, then c (b is skipped, a is newest).
  auto b_in_use = [&](const std::string& id) { return id == b.id; };
  EXPECT_EQ(node_->TrimImageCache(2000, b_in_use), 2u);
  EXPECT_EQ(hv_->deleted, (std::vector<std::string>{stale, Vol(c)}));
  EXPECT_TRUE(hv_->Has(Vol(a)));
  EXPECT_TRUE(hv_->Has(Vol(b)));
  EXPECT_EQ(node_->CachedImages().size(), 2u);
}

TEST_F(ImageCacheBudgetTest, NeverEvictsAnImageInUseEvenOverBudget) {
  auto a = Image("a", 1000), b = Image("b", 1000);
  Use(a);
  Use(b);
  EXPECT_EQ(node_->TrimImageCache(0, [](const std::string&) { return true; }), 0u);
  EXPECT_TRUE(hv_->deleted.empty());
  // Once a is no longer needed it goes; b (in use) stays although the cache is still over budget.
  EXPECT_EQ(node_->TrimImageCache(0, [&](const std::string& id) { return id == b.id; }), 1u);
  EXPECT_EQ(hv_->deleted, (std::vector<std::string>{Vol(a)}));
  EXPECT_TRUE(hv_->Has(Vol(b)));
}

TEST_F(ImageCacheBudgetTest, AnEvictedImageIsUploadedAgainWhenUsed) {
  auto a = Image("a", 1000), b = Image("b", 1000);
  Use(a);
  Use(b);
  EXPECT_EQ(node_->TrimImageCache(1000, [](const std::string&) { return false; }), 1u);
  EXPECT_FALSE(hv_->Has(Vol(a)));
  Use(a);  // back, and now the most recent: b goes next
  EXPECT_TRUE(hv_->Has(Vol(a)));
  EXPECT_EQ(node_->TrimImageCache(1000, [](const std::string&) { return false; }), 1u);
  EXPECT_FALSE(hv_->Has(Vol(b)));
  EXPECT_TRUE(hv_->Has(Vol(a)));
}

}  // namespace
}  // namespace berth::manager
