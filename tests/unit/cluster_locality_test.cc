// Image locality as the cluster feeds it to the scheduler: which images a
// node's pool caches (from its volume names), and that placements prefer
// those nodes also when the scheduler samples K nodes of a large cluster.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "manager/cluster.h"
#include "scheduler/scheduler.h"

namespace berth {
namespace {

TEST(ClusterLocality, CachedImageDigestsComeFromImageVolumesOnly) {
  const std::string a(64, 'a'), b(64, 'b');
  std::vector<hv::VolumeInfo> vols;
  for (const std::string& name : std::vector<std::string>{"img-" + a + ".qcow2", "img-" + b + ".raw", "ovl-" + a + ".qcow2",
                                  "rt-0123456789abcdef-vmlinuz", "img-short.raw", "img-" + a + "x.raw",
                                  "seed-" + b + ".iso", "povl-12.qcow2"}) {
    hv::VolumeInfo v;
    v.name = name;
    vols.push_back(v);
  }
  EXPECT_EQ(manager::CachedImageDigests(vols), (std::set<std::string>{a, b}));
  EXPECT_TRUE(manager::CachedImageDigests({}).empty());
}

// 1000 equal nodes, 30% of them cache the image: with K = 8 samples a
// placement almost always sees a caching node and takes it (locality
// outweighs the small load difference); without the hint it spreads.
TEST(ClusterLocality, SampledPlacementPrefersNodesCachingTheImage) {
  sched::Policy policy;
  policy.strategy = sched::Strategy::kSpread;
  policy.sample_k = 8;
  sched::Scheduler s(policy, 42);
  std::set<std::string> caching;
  for (int i = 0; i < 1000; ++i) {
    sched::NodeResources n;
    n.name = "n" + std::to_string(i);
    n.total_vcpus = 64;
    n.total_memory_mib = 256 * 1024;
    if (i % 10 < 3) {
      n.cached_images = {"sha-img"};
      caching.insert(n.name);
    }
    ASSERT_TRUE(s.UpsertNode(n).ok());
  }
  int local = 0, hinted_total = 0, unhinted_local = 0;
  for (int i = 0; i < 2000; ++i) {
    sched::PlacementRequest r;
    r.claim_id = "c" + std::to_string(i);
    r.vcpus = 1;
    r.memory_mib = 512;
    r.alternates = 0;
    const bool hinted = i % 2 == 0;
    if (hinted) r.image_digest = "sha-img";
    auto p = s.Place(r);
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    if (hinted) {
      ++hinted_total;
      local += caching.count(p->node) ? 1 : 0;
    } else {
      unhinted_local += caching.count(p->node) ? 1 : 0;
    }
  }
  EXPECT_GE(local, hinted_total * 85 / 100) << "hinted placements that found a caching node";
  // Without a hint the choice ignores caches: about the 30% share.
  EXPECT_LE(unhinted_local, 1000 * 45 / 100);
}

}  // namespace
}  // namespace berth
