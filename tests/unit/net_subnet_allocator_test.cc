// net::SubnetAllocator: lowest free block, never overlapping, clear errors.
#include <gtest/gtest.h>

#include <vector>

#include "net/subnet_allocator.h"

namespace berth::net {
namespace {

Cidr C(const char* text) { return *ParseCidr("c", text); }

TEST(SubnetAllocator, DefaultsTo24sFrom10_240_0_0_16) {
  SubnetAllocator a = *SubnetAllocator::Create({});
  EXPECT_EQ(a.pool().ToString(), "10.240.0.0/16");
  EXPECT_EQ(a.prefix_length(), 24);
  EXPECT_EQ(a.Allocate({})->ToString(), "10.240.0.0/24");
}

TEST(SubnetAllocator, TakesTheLowestFreeBlockDeterministically) {
  SubnetAllocator a = *SubnetAllocator::Create({});
  std::vector<Cidr> used;
  for (int i = 0; i < 5; ++i) {
    Cidr next = *a.Allocate(used);
    EXPECT_EQ(next.ToString(), "10.240." + std::to_string(i) + ".0/24");
    used.push_back(next);
  }
  // A hole is reused first, whatever the order of `used`.
  std::vector<Cidr> holed = {C("10.240.4.0/24"), C("10.240.0.0/24"), C("10.240.2.0/24")};
  EXPECT_EQ(a.Allocate(holed)->ToString(), "10.240.1.0/24");
  EXPECT_EQ(a.Allocate(holed)->ToString(), "10.240.1.0/24");
}

TEST(SubnetAllocator, SkipsAnythingOverlappingWhateverItsSize) {
  SubnetAllocator a = *SubnetAllocator::Create({});
  // A host route inside block 0, a /22 covering blocks 1-4, a /8 outside the pool.
  std::vector<Cidr> used = {C("10.240.0.77/32"), C("10.240.4.0/22"), C("192.168.0.0/16"), C("10.240.1.0/24"),
                            C("10.240.2.0/23")};
  Cidr got = *a.Allocate(used);
  EXPECT_EQ(got.ToString(), "10.240.8.0/24");
  for (const Cidr& u : used) EXPECT_FALSE(got.Overlaps(u)) << u.ToString();
  // A supernet of the whole pool leaves nothing.
  Result<Cidr> none = a.Allocate({C("10.0.0.0/8")});
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), Code::kResourceExhausted);
}

TEST(SubnetAllocator, ExhaustsWithAClearError) {
  SubnetAllocator a = *SubnetAllocator::Create({"10.250.0.0/22", 24});
  std::vector<Cidr> used;
  for (int i = 0; i < 4; ++i) used.push_back(*a.Allocate(used));
  EXPECT_EQ(used.back().ToString(), "10.250.3.0/24");
  Result<Cidr> r = a.Allocate(used);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kResourceExhausted);
  EXPECT_NE(r.status().message().find("10.250.0.0/22"), std::string::npos) << r.status().message();
}

TEST(SubnetAllocator, ConfigurablePrefix) {
  SubnetAllocator a = *SubnetAllocator::Create({"172.30.0.0/24", 26});
  std::vector<Cidr> used = {*a.Allocate({})};
  used.push_back(*a.Allocate(used));
  EXPECT_EQ(used[0].ToString(), "172.30.0.0/26");
  EXPECT_EQ(used[1].ToString(), "172.30.0.64/26");
}

TEST(SubnetAllocator, RejectsBadConfig) {
  EXPECT_EQ(SubnetAllocator::Create({"10.240.0.1/16", 24}).status().field(), "subnet_pool");
  EXPECT_EQ(SubnetAllocator::Create({"nope", 24}).status().field(), "subnet_pool");
  EXPECT_EQ(SubnetAllocator::Create({"10.240.0.0/16", 30}).status().field(), "subnet_prefix");
  EXPECT_EQ(SubnetAllocator::Create({"10.240.0.0/16", 8}).status().field(), "subnet_prefix");
  EXPECT_EQ(SubnetAllocator::Create({"10.240.0.0/25", 24}).status().field(), "subnet_prefix");
}

}  // namespace
}  // namespace berth::net
