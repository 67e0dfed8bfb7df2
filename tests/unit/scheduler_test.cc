// Unit tests of the in-memory scheduler (scheduler/): capacity math, every
// filter, binpack vs spread, locality, alternates, claim bookkeeping, error
// messages, concurrency, and that sampling (power-of-K-choices) never misses
// a feasible node. The contract tests run against both Scheduler (sampling and
// full scan) and NaiveScheduler.
#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "scheduler/fit.h"
#include "scheduler/naive_scheduler.h"
#include "scheduler/scheduler.h"

namespace berth::sched {
namespace {

constexpr uint64_t kGiB = 1024;  // in MiB

NodeResources MakeNode(const std::string& name, uint64_t vcpus = 16, uint64_t memory_mib = 64 * kGiB,
                       uint64_t disk_bytes = 0) {
  NodeResources n;
  n.name = name;
  n.total_vcpus = vcpus;
  n.total_memory_mib = memory_mib;
  n.total_disk_bytes = disk_bytes;
  return n;
}

PlacementRequest Req(const std::string& id, uint64_t vcpus = 1, uint64_t memory_mib = kGiB) {
  PlacementRequest r;
  r.claim_id = id;
  r.vcpus = vcpus;
  r.memory_mib = memory_mib;
  return r;
}

TEST(SchedulerCapacity, TotalMinusReservedTimesRatio) {
  NodeResources n = MakeNode("a", 16, 64 * kGiB, 1000);
  n.reserved_vcpus = 2;
  n.reserved_memory_mib = 1024;
  n.reserved_disk_bytes = 100;
  n.cpu_overcommit = 4.0;
  n.memory_overcommit = 1.5;
  Resources c = CapacityOf(n);
  EXPECT_EQ(c.vcpus, 56u);                      // (16 - 2) * 4
  EXPECT_EQ(c.memory_mib, (65536u - 1024) * 3 / 2);  // 96768
  EXPECT_EQ(c.disk_bytes, 900u);                // disk is never overcommitted
}

TEST(SchedulerCapacity, RoundsDownAndSaturates) {
  NodeResources n = MakeNode("a", 3, 1000);
  n.cpu_overcommit = 1.5;  // 4.5 -> 4
  n.reserved_memory_mib = 2000;
  Resources c = CapacityOf(n);
  EXPECT_EQ(c.vcpus, 4u);
  EXPECT_EQ(c.memory_mib, 0u);
}

TEST(SchedulerCapacity, ValidateNode) {
  EXPECT_TRUE(ValidateNode(MakeNode("a")).ok());
  EXPECT_EQ(ValidateNode(MakeNode("")).field(), "name");
  NodeResources n = MakeNode("a");
  n.accel = "auto";
  EXPECT_EQ(ValidateNode(n).field(), "accel");
  n = MakeNode("a");
  n.cpu_overcommit = 0;
  EXPECT_EQ(ValidateNode(n).field(), "cpu_overcommit");
  n = MakeNode("a");
  n.memory_overcommit = -1;
  EXPECT_EQ(ValidateNode(n).field(), "memory_overcommit");
}

// --- The contract, for every implementation ---------------------------------

struct SamplingScheduler : Scheduler {
  // Sampling on, on clusters big enough to sample (> 2K nodes).
  explicit SamplingScheduler(Policy p, uint64_t seed = 7) : Scheduler(WithK(p), seed) {}
  static Policy WithK(Policy p) {
    p.sample_k = 2;
    return p;
  }
};

template <typename T>
class SchedulerContract : public ::testing::Test {};
using Implementations = ::testing::Types<Scheduler, SamplingScheduler, NaiveScheduler>;
TYPED_TEST_SUITE(SchedulerContract, Implementations);

TYPED_TEST(SchedulerContract, OvercommitAppliesToPlacement) {
  TypeParam s{Policy{}};
  NodeResources n = MakeNode("a", 4, 8 * kGiB);
  n.cpu_overcommit = 2.0;
  ASSERT_TRUE(s.UpsertNode(n).ok());
  EXPECT_TRUE(s.Place(Req("c1", 6, kGiB)).ok());  // 8 vCPU capacity
  auto r = s.Place(Req("c2", 3, kGiB));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kResourceExhausted);
  EXPECT_TRUE(s.Place(Req("c3", 2, kGiB)).ok());
}

TYPED_TEST(SchedulerContract, EachFilterEliminatesAndIsNamed) {
  TypeParam s{Policy{}};
  auto add = [&](NodeResources n) { ASSERT_TRUE(s.UpsertNode(n).ok()); };
  NodeResources base = MakeNode("x", 16, 64 * kGiB, 100 * kGiB);
  base.labels = {{"zone", "a"}, {"disk", "ssd"}};
  base.cpu_model = "EPYC";
  auto variant = [&](const std::string& name) {
    NodeResources n = base;
    n.name = name;
    return n;
  };
  NodeResources n = variant("n-down");
  n.state = NodeState::kDown;
  add(n);
  n = variant("n-cordoned");
  n.state = NodeState::kCordoned;
  add(n);
  n = variant("n-draining");
  n.state = NodeState::kDraining;
  add(n);
  n = variant("n-label");
  n.labels["zone"] = "b";
  add(n);
  n = variant("n-label-missing");
  n.labels.erase("disk");
  add(n);
  n = variant("n-accel");
  n.accel = "tcg";
  add(n);
  n = variant("n-cpu");
  n.cpu_model = "Skylake";
  add(n);
  n = variant("n-vcpus");
  n.total_vcpus = 2;
  add(n);
  n = variant("n-memory");
  n.total_memory_mib = 2 * kGiB;
  add(n);
  n = variant("n-disk");
  n.total_disk_bytes = 1;
  add(n);

  PlacementRequest req = Req("c", 4, 4 * kGiB);
  req.disk_bytes = 10 * kGiB;
  req.label_selector = {{"zone", "a"}, {"disk", "ssd"}};
  req.accel = "kvm";
  req.cpu_model = "EPYC";
  auto r = s.Place(req);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kResourceExhausted);
  const std::string& m = r.status().message();
  EXPECT_NE(m.find("no node fits claim 'c' (4 vCPU, 4096 MiB, 10240 bytes disk) among 10 nodes: "), std::string::npos)
      << m;
  EXPECT_NE(m.find("1 down, 1 cordoned, 1 draining, 2 fail label selector, 1 have another accel, "
                   "1 have another cpu model, 1 lack vCPUs, 1 lack memory, 1 lack disk"),
            std::string::npos)
      << m;

  // One node passing every filter takes it.
  add(variant("n-good"));
  auto ok = s.Place(req);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->node, "n-good");
  EXPECT_TRUE(ok->alternates.empty());
}

TYPED_TEST(SchedulerContract, ErrorMessageOnlyNamesFiltersThatFired) {
  TypeParam s{Policy{}};
  for (int i = 0; i < 3; ++i) {
    NodeResources n = MakeNode("d" + std::to_string(i));
    n.state = NodeState::kDown;
    ASSERT_TRUE(s.UpsertNode(n).ok());
  }
  for (int i = 0; i < 7; ++i) ASSERT_TRUE(s.UpsertNode(MakeNode("m" + std::to_string(i), 16, 2 * kGiB)).ok());
  auto r = s.Place(Req("big", 1, 8 * kGiB));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("among 10 nodes: 3 down, 7 lack memory"), std::string::npos)
      << r.status().message();
  EXPECT_EQ(r.status().message().find("label"), std::string::npos);
}

TYPED_TEST(SchedulerContract, EmptyClusterSaysSo) {
  TypeParam s{Policy{}};
  auto r = s.Place(Req("c"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kResourceExhausted);
  EXPECT_NE(r.status().message().find("no nodes registered"), std::string::npos);
}

TYPED_TEST(SchedulerContract, BinpackPicksFullestSpreadPicksEmptiest) {
  for (Strategy strategy : {Strategy::kBinpack, Strategy::kSpread}) {
    Policy p;
    p.strategy = strategy;
    TypeParam s{p};
    for (const char* name : {"a", "b", "c"}) ASSERT_TRUE(s.UpsertNode(MakeNode(name)).ok());
    ASSERT_TRUE(s.ClaimOn("a", "pre-a", {4, 16 * kGiB, 0}).ok());
    ASSERT_TRUE(s.ClaimOn("b", "pre-b", {8, 32 * kGiB, 0}).ok());
    auto r = s.Place(Req("c1", 1, kGiB));
    ASSERT_TRUE(r.ok());
    if (strategy == Strategy::kBinpack) {
      EXPECT_EQ(r->node, "b");
      EXPECT_EQ(r->alternates, (std::vector<std::string>{"a", "c"}));
    } else {
      EXPECT_EQ(r->node, "c");
      EXPECT_EQ(r->alternates, (std::vector<std::string>{"a", "b"}));
    }
  }
}

TYPED_TEST(SchedulerContract, BinpackSkipsFullestWhenItDoesNotFit) {
  TypeParam s{Policy{}};
  ASSERT_TRUE(s.UpsertNode(MakeNode("a", 16, 8 * kGiB)).ok());
  ASSERT_TRUE(s.UpsertNode(MakeNode("b", 16, 8 * kGiB)).ok());
  ASSERT_TRUE(s.ClaimOn("a", "pre", {1, 7 * kGiB, 0}).ok());
  auto r = s.Place(Req("c", 1, 2 * kGiB));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->node, "b");
}

TYPED_TEST(SchedulerContract, ImageAndTemplateLocalityOutweighLoad) {
  Policy p;
  p.strategy = Strategy::kSpread;
  TypeParam s{p};
  NodeResources a = MakeNode("a");
  a.cached_images = {"sha-img"};
  NodeResources b = MakeNode("b");
  b.template_keys = {"tmpl-1"};
  ASSERT_TRUE(s.UpsertNode(a).ok());
  ASSERT_TRUE(s.UpsertNode(b).ok());
  ASSERT_TRUE(s.UpsertNode(MakeNode("c")).ok());
  ASSERT_TRUE(s.ClaimOn("a", "pre-a", {8, 32 * kGiB, 0}).ok());  // a and b are half full, c empty
  ASSERT_TRUE(s.ClaimOn("b", "pre-b", {8, 32 * kGiB, 0}).ok());

  PlacementRequest r1 = Req("c1");
  EXPECT_EQ(s.Place(r1)->node, "c");  // no hint: spread
  PlacementRequest r2 = Req("c2");
  r2.image_digest = "sha-img";
  EXPECT_EQ(s.Place(r2)->node, "a");
  PlacementRequest r3 = Req("c3");
  r3.template_key = "tmpl-1";
  EXPECT_EQ(s.Place(r3)->node, "b");
  PlacementRequest r4 = Req("c4");
  r4.image_digest = "sha-img";
  r4.template_key = "tmpl-1";  // template weight (1.0) > image weight (0.5)
  EXPECT_EQ(s.Place(r4)->node, "b");
  PlacementRequest r5 = Req("c5");
  r5.image_digest = "sha-unknown";
  EXPECT_EQ(s.Place(r5)->node, "c");
}

TYPED_TEST(SchedulerContract, LocalityWeightZeroIsIgnored) {
  Policy p;
  p.strategy = Strategy::kSpread;
  p.image_locality_weight = 0;
  TypeParam s{p};
  NodeResources a = MakeNode("a");
  a.cached_images = {"sha-img"};
  ASSERT_TRUE(s.UpsertNode(a).ok());
  ASSERT_TRUE(s.UpsertNode(MakeNode("b")).ok());
  ASSERT_TRUE(s.ClaimOn("a", "pre", {1, kGiB, 0}).ok());
  PlacementRequest r = Req("c");
  r.image_digest = "sha-img";
  EXPECT_EQ(s.Place(r)->node, "b");
}

TYPED_TEST(SchedulerContract, AlternatesAreRankedAndNotClaimed) {
  Policy p;
  p.strategy = Strategy::kSpread;
  TypeParam s{p};
  // 4 nodes: few enough that SamplingScheduler scans them all too.
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(s.UpsertNode(MakeNode("n" + std::to_string(i))).ok());
    // n0 emptiest ... n3 fullest
    ASSERT_TRUE(s.ClaimOn("n" + std::to_string(i), "pre" + std::to_string(i), {1, (1 + i) * kGiB, 0}).ok());
  }
  PlacementRequest r = Req("c");
  r.alternates = 2;
  auto placed = s.Place(r);
  ASSERT_TRUE(placed.ok());
  EXPECT_EQ(placed->node, "n0");
  EXPECT_EQ(placed->alternates, (std::vector<std::string>{"n1", "n2"}));
  EXPECT_EQ(s.Report("n0")->claims, 2u);
  for (int i = 1; i < 4; ++i) EXPECT_EQ(s.Report("n" + std::to_string(i))->claims, 1u);

  PlacementRequest none = Req("c-none");
  none.alternates = 0;
  auto r0 = s.Place(none);
  ASSERT_TRUE(r0.ok());
  EXPECT_TRUE(r0->alternates.empty());
}

TYPED_TEST(SchedulerContract, DuplicateClaimIsAlreadyExists) {
  TypeParam s{Policy{}};
  ASSERT_TRUE(s.UpsertNode(MakeNode("a")).ok());
  ASSERT_TRUE(s.Place(Req("c")).ok());
  auto dup = s.Place(Req("c"));
  EXPECT_EQ(dup.status().code(), Code::kAlreadyExists);
  EXPECT_EQ(s.ClaimOn("a", "c", {1, 1, 0}).code(), Code::kAlreadyExists);
  EXPECT_EQ(s.Report("a")->allocated, (Resources{1, kGiB, 0}));
  ASSERT_TRUE(s.Release("c").ok());
  EXPECT_TRUE(s.Place(Req("c")).ok());  // the id is free again
}

TYPED_TEST(SchedulerContract, ReleaseOfUnknownClaimIsNotFound) {
  TypeParam s{Policy{}};
  ASSERT_TRUE(s.UpsertNode(MakeNode("a")).ok());
  EXPECT_EQ(s.Release("nope").code(), Code::kNotFound);
  ASSERT_TRUE(s.Place(Req("c")).ok());
  EXPECT_TRUE(s.Release("c").ok());
  EXPECT_EQ(s.Release("c").code(), Code::kNotFound);
  EXPECT_EQ(s.FindClaim("c").status().code(), Code::kNotFound);
}

TYPED_TEST(SchedulerContract, InFlightClaimsCount) {
  TypeParam s{Policy{}};
  ASSERT_TRUE(s.UpsertNode(MakeNode("a", 16, 4 * kGiB)).ok());
  ASSERT_TRUE(s.Place(Req("c1", 1, 2 * kGiB)).ok());
  ASSERT_TRUE(s.Place(Req("c2", 1, 2 * kGiB)).ok());
  auto third = s.Place(Req("c3", 1, 2 * kGiB));
  ASSERT_FALSE(third.ok());
  EXPECT_NE(third.status().message().find("1 lack memory"), std::string::npos);
  NodeReport rep = *s.Report("a");
  EXPECT_EQ(rep.allocated, (Resources{2, 4 * kGiB, 0}));
  EXPECT_EQ(rep.free, (Resources{14, 0, 0}));
  EXPECT_EQ(rep.claims, 2u);
  ASSERT_TRUE(s.Release("c1").ok());
  EXPECT_TRUE(s.Place(Req("c3", 1, 2 * kGiB)).ok());
  EXPECT_EQ(s.claim_count(), 2u);
}

TYPED_TEST(SchedulerContract, OnlyUpNodesGetWork) {
  TypeParam s{Policy{}};
  for (const char* name : {"a", "b", "c", "d"}) ASSERT_TRUE(s.UpsertNode(MakeNode(name)).ok());
  ASSERT_TRUE(s.SetNodeState("a", NodeState::kDown).ok());
  ASSERT_TRUE(s.SetNodeState("b", NodeState::kCordoned).ok());
  ASSERT_TRUE(s.SetNodeState("c", NodeState::kDraining).ok());
  for (int i = 0; i < 10; ++i) {
    auto r = s.Place(Req("c" + std::to_string(i)));
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->node, "d");
    EXPECT_TRUE(r->alternates.empty());
  }
  ASSERT_TRUE(s.SetNodeState("d", NodeState::kCordoned).ok());
  auto r = s.Place(Req("x"));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("1 down, 2 cordoned, 1 draining"), std::string::npos)
      << r.status().message();
  // Claims on non-up nodes can still be released.
  EXPECT_TRUE(s.Release("c0").ok());
  EXPECT_EQ(s.Report("d")->claims, 9u);
  ASSERT_TRUE(s.SetNodeState("a", NodeState::kUp).ok());
  EXPECT_EQ(s.Place(Req("y"))->node, "a");
  EXPECT_EQ(s.SetNodeState("nope", NodeState::kUp).code(), Code::kNotFound);
}

TYPED_TEST(SchedulerContract, UpsertKeepsClaimsAndCanChangeState) {
  TypeParam s{Policy{}};
  ASSERT_TRUE(s.UpsertNode(MakeNode("a")).ok());
  ASSERT_TRUE(s.Place(Req("c", 2, 2 * kGiB)).ok());
  NodeResources bigger = MakeNode("a", 32, 128 * kGiB);
  ASSERT_TRUE(s.UpsertNode(bigger).ok());
  NodeReport rep = *s.Report("a");
  EXPECT_EQ(rep.capacity, (Resources{32, 128 * kGiB, 0}));
  EXPECT_EQ(rep.allocated, (Resources{2, 2 * kGiB, 0}));
  bigger.state = NodeState::kDraining;
  ASSERT_TRUE(s.UpsertNode(bigger).ok());
  EXPECT_FALSE(s.Place(Req("d")).ok());
  bigger.state = NodeState::kUp;
  ASSERT_TRUE(s.UpsertNode(bigger).ok());
  EXPECT_TRUE(s.Place(Req("d")).ok());
  NodeResources bad = MakeNode("b");
  bad.accel = "auto";
  EXPECT_EQ(s.UpsertNode(bad).code(), Code::kInvalidArgument);
  EXPECT_EQ(s.node_count(), 1u);
}

TYPED_TEST(SchedulerContract, ClaimOnReinstallsEvenOverCapacity) {
  TypeParam s{Policy{}};
  NodeResources n = MakeNode("a", 4, 4 * kGiB);
  n.state = NodeState::kDown;
  ASSERT_TRUE(s.UpsertNode(n).ok());
  ASSERT_TRUE(s.ClaimOn("a", "vm-1", {8, 6 * kGiB, 0}).ok());
  NodeReport rep = *s.Report("a");
  EXPECT_EQ(rep.allocated, (Resources{8, 6 * kGiB, 0}));
  EXPECT_EQ(rep.free, (Resources{0, 0, 0}));
  auto info = s.FindClaim("vm-1");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->node, "a");
  EXPECT_EQ(info->resources, (Resources{8, 6 * kGiB, 0}));
  ASSERT_TRUE(s.SetNodeState("a", NodeState::kUp).ok());
  EXPECT_FALSE(s.Place(Req("c")).ok());  // over capacity: nothing more fits
  EXPECT_TRUE(s.Release("vm-1").ok());
  EXPECT_TRUE(s.Place(Req("c")).ok());
  EXPECT_EQ(s.ClaimOn("nope", "vm-2", {1, 1, 0}).code(), Code::kNotFound);
  EXPECT_EQ(s.ClaimOn("a", "", {1, 1, 0}).code(), Code::kInvalidArgument);
}

TYPED_TEST(SchedulerContract, RemoveNodeDropsItsClaims) {
  TypeParam s{Policy{}};
  ASSERT_TRUE(s.UpsertNode(MakeNode("a")).ok());
  ASSERT_TRUE(s.UpsertNode(MakeNode("b")).ok());
  ASSERT_TRUE(s.ClaimOn("a", "a2", {1, 1, 0}).ok());
  ASSERT_TRUE(s.ClaimOn("a", "a1", {1, 1, 0}).ok());
  ASSERT_TRUE(s.ClaimOn("b", "b1", {1, 1, 0}).ok());
  auto dropped = s.RemoveNode("a");
  ASSERT_TRUE(dropped.ok());
  EXPECT_EQ(*dropped, (std::vector<std::string>{"a1", "a2"}));
  EXPECT_EQ(s.Release("a1").code(), Code::kNotFound);
  EXPECT_TRUE(s.FindClaim("b1").ok());
  EXPECT_EQ(s.RemoveNode("a").status().code(), Code::kNotFound);
  EXPECT_EQ(s.Report("a").status().code(), Code::kNotFound);
  EXPECT_EQ(s.Place(Req("c"))->node, "b");
  EXPECT_EQ(s.Reports().size(), 1u);
}

// Image cache bytes are reserved from a node's disk: a node whose disk the
// cache fills takes no claim that asks for disk, and a node whose disk space
// is unknown (total 0) is not filtered on disk at all.
TYPED_TEST(SchedulerContract, DiskTakenByCacheFiltersUnknownDiskDoesNot) {
  TypeParam s{Policy{}};
  NodeResources full = MakeNode("full", 16, 64 * kGiB, 1000);
  full.reserved_disk_bytes = 1000;  // all of it is image cache
  ASSERT_TRUE(s.UpsertNode(full).ok());
  PlacementRequest r = Req("c1", 1, kGiB);
  r.disk_bytes = 10;
  auto none = s.Place(r);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), Code::kResourceExhausted);
  EXPECT_NE(none.status().message().find("1 lack disk"), std::string::npos) << none.status().message();
  // A claim that asks for no disk still fits there.
  EXPECT_EQ(s.Place(Req("c0", 1, kGiB))->node, "full");

  ASSERT_TRUE(s.UpsertNode(MakeNode("unknown", 16, 64 * kGiB, 0)).ok());
  auto placed = s.Place(r);
  ASSERT_TRUE(placed.ok()) << placed.status().ToString();
  EXPECT_EQ(placed->node, "unknown");

  // Once the cache shrinks, the node has room again.
  full.reserved_disk_bytes = 900;
  ASSERT_TRUE(s.UpsertNode(full).ok());
  ASSERT_TRUE(s.SetNodeState("unknown", NodeState::kDown).ok());
  r.claim_id = "c2";
  auto again = s.Place(r);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->node, "full");
}

// A request's image bytes count only on nodes that do not cache the image
// yet, and never become part of the claim.
TYPED_TEST(SchedulerContract, ImageBytesCountOnlyWhereTheImageIsNotCached) {
  TypeParam s{Policy{}};
  const std::string digest(64, 'a');
  NodeResources cached = MakeNode("cached", 16, 64 * kGiB, 1000);
  cached.cached_images = {digest};
  ASSERT_TRUE(s.UpsertNode(cached).ok());
  ASSERT_TRUE(s.UpsertNode(MakeNode("empty", 16, 64 * kGiB, 1000)).ok());
  PlacementRequest r = Req("c1", 1, kGiB);
  r.disk_bytes = 100;
  r.image_digest = digest;
  r.image_bytes = 950;  // fits beside the overlay nowhere; needed only where not cached
  auto placed = s.Place(r);
  ASSERT_TRUE(placed.ok()) << placed.status().ToString();
  EXPECT_EQ(placed->node, "cached");
  EXPECT_TRUE(placed->alternates.empty()) << "'empty' has no room for the image";
  EXPECT_EQ(s.FindClaim("c1")->resources.disk_bytes, 100u) << "the image is not part of the claim";

  // Another image, cached nowhere: no node has room for it.
  r.claim_id = "c2";
  r.image_digest = std::string(64, 'b');
  auto none = s.Place(r);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), Code::kResourceExhausted);
  EXPECT_NE(none.status().message().find("950 bytes image where not cached"), std::string::npos)
      << none.status().message();
  EXPECT_NE(none.status().message().find("2 lack disk"), std::string::npos) << none.status().message();
  // A smaller one fits on either; spread/binpack ties break by name.
  r.image_bytes = 500;
  auto small = s.Place(r);
  ASSERT_TRUE(small.ok()) << small.status().ToString();
  EXPECT_EQ(small->alternates.size(), 1u);
}

TYPED_TEST(SchedulerContract, InvalidRequests) {
  TypeParam s{Policy{}};
  ASSERT_TRUE(s.UpsertNode(MakeNode("a")).ok());
  EXPECT_EQ(s.Place(Req("")).status().field(), "claim_id");
  EXPECT_EQ(s.Place(Req("c", 0)).status().field(), "vcpus");
  EXPECT_EQ(s.Place(Req("c", 1, 0)).status().field(), "memory_mib");
}

TYPED_TEST(SchedulerContract, ReportsAreSortedWithAllocatedAndFree) {
  TypeParam s{Policy{}};
  ASSERT_TRUE(s.UpsertNode(MakeNode("b", 8, 16 * kGiB, 1000)).ok());
  ASSERT_TRUE(s.UpsertNode(MakeNode("a", 4, 8 * kGiB, 500)).ok());
  PlacementRequest r = Req("c", 2, 4 * kGiB);
  r.disk_bytes = 600;
  ASSERT_EQ(s.Place(r)->node, "b");  // a lacks disk
  auto reports = s.Reports();
  ASSERT_EQ(reports.size(), 2u);
  EXPECT_EQ(reports[0].name, "a");
  EXPECT_EQ(reports[0].free, (Resources{4, 8 * kGiB, 500}));
  EXPECT_EQ(reports[1].name, "b");
  EXPECT_EQ(reports[1].allocated, (Resources{2, 4 * kGiB, 600}));
  EXPECT_EQ(reports[1].free, (Resources{6, 12 * kGiB, 400}));
  EXPECT_EQ(reports[1].claims, 1u);
}

// Several threads place and release at once; no node is ever over capacity
// and the books balance at the end.
TYPED_TEST(SchedulerContract, ConcurrentPlaceAndRelease) {
  Policy p;
  p.sample_k = 4;
  TypeParam s{p};
  for (int i = 0; i < 40; ++i) ASSERT_TRUE(s.UpsertNode(MakeNode("n" + std::to_string(i), 8, 16 * kGiB)).ok());
  constexpr int kThreads = 4;
  constexpr int kOpsPerThread = 4000;
  std::atomic<bool> over_capacity{false};
  std::atomic<int> placed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(static_cast<unsigned>(t));
      std::vector<std::string> mine;
      for (int i = 0; i < kOpsPerThread; ++i) {
        if (mine.empty() || rng() % 3 != 0) {
          std::string id = "t" + std::to_string(t) + "-" + std::to_string(i);
          auto r = s.Place(Req(id, 1 + rng() % 4, (1 + rng() % 8) * kGiB));
          if (r.ok()) {
            mine.push_back(id);
            ++placed;
          } else if (r.status().code() != Code::kResourceExhausted) {
            ADD_FAILURE() << r.status().ToString();
          }
        } else {
          size_t k = rng() % mine.size();
          EXPECT_TRUE(s.Release(mine[k]).ok());
          mine[k] = mine.back();
          mine.pop_back();
        }
        if (i % 500 == 0) {
          for (const NodeReport& rep : s.Reports()) {
            if (rep.allocated.vcpus > rep.capacity.vcpus || rep.allocated.memory_mib > rep.capacity.memory_mib) {
              over_capacity = true;
            }
          }
        }
      }
      for (const std::string& id : mine) EXPECT_TRUE(s.Release(id).ok());
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_FALSE(over_capacity.load());
  EXPECT_GT(placed.load(), 1000);  // the cluster filled and drained many times
  EXPECT_EQ(s.claim_count(), 0u);
  for (const NodeReport& rep : s.Reports()) {
    EXPECT_EQ(rep.allocated, (Resources{0, 0, 0})) << rep.name;
    EXPECT_EQ(rep.claims, 0u);
  }
}

// --- Scheduler against the reference ----------------------------------------

struct Workload {
  std::vector<NodeResources> nodes;
  std::mt19937_64 rng;

  explicit Workload(int n, uint64_t seed) : rng(seed) {
    for (int i = 0; i < n; ++i) {
      NodeResources node = MakeNode("node-" + std::to_string(i), 8u << (rng() % 3), (16 * kGiB) << (rng() % 3));
      node.cpu_overcommit = 2.0;
      if (rng() % 4 == 0) node.labels["zone"] = "z" + std::to_string(rng() % 3);
      if (rng() % 5 == 0) node.accel = "tcg";
      if (rng() % 20 == 0) node.state = NodeState::kCordoned;
      if (rng() % 3 == 0) node.cached_images.insert("img-" + std::to_string(rng() % 5));
      nodes.push_back(node);
    }
  }

  PlacementRequest Next(const std::string& id) {
    PlacementRequest r = Req(id, 1 + rng() % 8, (1 + rng() % 16) * kGiB);
    if (rng() % 8 == 0) r.label_selector["zone"] = "z" + std::to_string(rng() % 3);
    if (rng() % 10 == 0) r.accel = "kvm";
    if (rng() % 2 == 0) r.image_digest = "img-" + std::to_string(rng() % 5);
    r.alternates = static_cast<uint32_t>(rng() % 4);
    return r;
  }
};

TEST(SchedulerVsNaive, FullScanGivesIdenticalAnswers) {
  for (Strategy strategy : {Strategy::kBinpack, Strategy::kSpread}) {
    Policy p;
    p.strategy = strategy;
    Scheduler fast(p);
    NaiveScheduler naive(p);
    Workload w(60, 42);
    for (const auto& n : w.nodes) {
      ASSERT_TRUE(fast.UpsertNode(n).ok());
      ASSERT_TRUE(naive.UpsertNode(n).ok());
    }
    std::vector<std::string> live;
    for (int i = 0; i < 3000; ++i) {
      if (!live.empty() && w.rng() % 3 == 0) {
        size_t k = w.rng() % live.size();
        ASSERT_TRUE(fast.Release(live[k]).ok());
        ASSERT_TRUE(naive.Release(live[k]).ok());
        live[k] = live.back();
        live.pop_back();
        continue;
      }
      PlacementRequest r = w.Next("c" + std::to_string(i));
      auto a = fast.Place(r);
      auto b = naive.Place(r);
      ASSERT_EQ(a.ok(), b.ok()) << i;
      if (!a.ok()) {
        EXPECT_EQ(a.status().message(), b.status().message());
        continue;
      }
      EXPECT_EQ(a->node, b->node) << i;
      EXPECT_EQ(a->alternates, b->alternates) << i;
      live.push_back(r.claim_id);
    }
  }
}

// Whenever the sampling scheduler says "no node fits", really no node fits
// (checked against the naive scheduler's view of the same state, which the
// test mirrors with ClaimOn).
TEST(SchedulerSampling, NeverMissesAFeasibleNode) {
  Policy p;
  p.sample_k = 4;
  p.strategy = Strategy::kSpread;
  Scheduler fast(p, 99);
  NaiveScheduler mirror(p);
  Workload w(400, 7);
  for (const auto& n : w.nodes) {
    ASSERT_TRUE(fast.UpsertNode(n).ok());
    ASSERT_TRUE(mirror.UpsertNode(n).ok());
  }
  std::vector<std::string> live;
  int failures = 0;
  for (int i = 0; i < 20000; ++i) {
    if (!live.empty() && w.rng() % 4 == 0) {
      size_t k = w.rng() % live.size();
      ASSERT_TRUE(fast.Release(live[k]).ok());
      ASSERT_TRUE(mirror.Release(live[k]).ok());
      live[k] = live.back();
      live.pop_back();
      continue;
    }
    PlacementRequest r = w.Next("c" + std::to_string(i));
    auto placed = fast.Place(r);
    if (placed.ok()) {
      ASSERT_TRUE(mirror.ClaimOn(placed->node, r.claim_id, r.resources()).ok());
      live.push_back(r.claim_id);
      // Alternates are feasible, distinct, and not the chosen node.
      for (const std::string& alt : placed->alternates) {
        EXPECT_NE(alt, placed->node);
        NodeLoad load;
        load.spec = w.nodes[static_cast<size_t>(std::stoi(alt.substr(5)))];
        NodeReport rep = *mirror.Report(alt);
        load.capacity = rep.capacity;
        load.allocated = rep.allocated;
        EXPECT_EQ(CheckFit(load, r), Rejection::kFits) << alt;
      }
      continue;
    }
    ++failures;
    ASSERT_EQ(placed.status().code(), Code::kResourceExhausted);
    PlacementRequest probe = r;
    probe.claim_id = "probe";
    auto truth = mirror.Place(probe);
    ASSERT_FALSE(truth.ok()) << "sampling missed node " << truth->node << " for request " << i;
    const std::string& got = placed.status().message();
    const std::string& want = truth.status().message();
    EXPECT_EQ(got.substr(got.find(" among ")), want.substr(want.find(" among ")));
  }
  EXPECT_GT(failures, 0);  // the cluster did fill up, so the check had teeth
  Scheduler::Stats st = fast.stats();
  EXPECT_GT(st.sampled, 0u);
  EXPECT_GT(st.full_scans, 0u);
  EXPECT_EQ(st.failures, static_cast<uint64_t>(failures));
}

// A single feasible node among many (a rare label) is always found.
TEST(SchedulerSampling, FindsTheOnlyMatchingNode) {
  Policy p;
  p.sample_k = 8;
  Scheduler s(p);
  for (int i = 0; i < 2000; ++i) ASSERT_TRUE(s.UpsertNode(MakeNode("n" + std::to_string(i))).ok());
  NodeResources gpu = MakeNode("gpu-node", 64);
  gpu.labels["gpu"] = "a100";
  ASSERT_TRUE(s.UpsertNode(gpu).ok());
  for (int i = 0; i < 50; ++i) {
    PlacementRequest r = Req("g" + std::to_string(i));
    r.label_selector["gpu"] = "a100";
    auto placed = s.Place(r);
    ASSERT_TRUE(placed.ok()) << placed.status().ToString();
    EXPECT_EQ(placed->node, "gpu-node");
  }
  // Plain requests are decided from samples.
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(s.Place(Req("p" + std::to_string(i))).ok());
  EXPECT_GE(s.stats().sampled, 50u);
}

TEST(SchedulerSampling, RemovalKeepsTheIndexConsistent) {
  Policy p;
  p.sample_k = 2;
  Scheduler s(p);
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(s.UpsertNode(MakeNode("n" + std::to_string(i), 4, 4 * kGiB)).ok());
  for (int i = 0; i < 50; i += 2) ASSERT_TRUE(s.RemoveNode("n" + std::to_string(i)).ok());
  for (int i = 1; i < 50; i += 4) ASSERT_TRUE(s.SetNodeState("n" + std::to_string(i), NodeState::kDown).ok());
  // 12 up nodes of 4 GiB each remain: exactly 48 one-GiB claims fit.
  int placed = 0;
  for (int i = 0; i < 60; ++i) {
    auto r = s.Place(Req("c" + std::to_string(i)));
    if (r.ok()) {
      ++placed;
      EXPECT_NE(std::stoi(r->node.substr(1)) % 4, 1) << r->node;
    }
  }
  EXPECT_EQ(placed, 48);
}

// The per-label candidate indexes follow label changes and state changes.
TEST(SchedulerSampling, LabelIndexFollowsUpserts) {
  Policy p;
  p.sample_k = 2;
  Scheduler s(p);
  for (int i = 0; i < 40; ++i) {
    NodeResources n = MakeNode("n" + std::to_string(i));
    n.labels["zone"] = i < 20 ? "a" : "b";
    ASSERT_TRUE(s.UpsertNode(n).ok());
  }
  // Move n0..n9 from zone a to zone c; cordon n10..n14.
  for (int i = 0; i < 10; ++i) {
    NodeResources n = MakeNode("n" + std::to_string(i));
    n.labels["zone"] = "c";
    ASSERT_TRUE(s.UpsertNode(n).ok());
  }
  for (int i = 10; i < 15; ++i) ASSERT_TRUE(s.SetNodeState("n" + std::to_string(i), NodeState::kCordoned).ok());
  auto zone_of = [](const std::string& node) {
    int i = std::stoi(node.substr(1));
    return i < 10 ? "c" : i < 20 ? "a" : "b";
  };
  for (int i = 0; i < 60; ++i) {  // zone a keeps 5 up nodes: room for 80 one-vCPU claims
    for (const char* zone : {"a", "b", "c"}) {
      PlacementRequest r = Req(std::string(zone) + std::to_string(i), 1, 64);
      r.label_selector["zone"] = zone;
      auto placed = s.Place(r);
      ASSERT_TRUE(placed.ok()) << placed.status().ToString();
      EXPECT_STREQ(zone_of(placed->node), zone) << placed->node;
      if (std::string(zone) == "a") {
        EXPECT_GE(std::stoi(placed->node.substr(1)), 15) << placed->node;
      }
      for (const std::string& alt : placed->alternates) EXPECT_STREQ(zone_of(alt), zone) << alt;
    }
  }
  PlacementRequest nowhere = Req("x");
  nowhere.label_selector["zone"] = "d";
  auto r = s.Place(nowhere);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("5 cordoned, 35 fail label selector"), std::string::npos)
      << r.status().message();
  // Removing every zone-c node leaves zone-c requests nowhere to go.
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(s.RemoveNode("n" + std::to_string(i)).ok());
  PlacementRequest c = Req("c-last");
  c.label_selector["zone"] = "c";
  EXPECT_EQ(s.Place(c).status().code(), Code::kResourceExhausted);
}

}  // namespace
}  // namespace berth::sched
