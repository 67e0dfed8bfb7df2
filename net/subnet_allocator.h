// Hands out one subnet per (node, tenant, mode) from a configured pool.
//
// Stateless and deterministic: the caller passes every subnet already in use
// on the node (berth's own networks, and any other block it must avoid), and
// gets the lowest block of the pool that overlaps none of them. The caller
// keeps the assignment (e.g. in its store, or by reading its networks back
// with Hypervisor::GetNetwork) and must serialize allocations per node.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "net/ipv4.h"

namespace berth::net {

struct SubnetPoolConfig {
  std::string pool = "10.240.0.0/16";
  int prefix_length = 24;  // size of each tenant subnet; 16..29 and not larger than the pool
};

class SubnetAllocator {
 public:
  // InvalidArgument (field "subnet_pool" or "subnet_prefix") on a bad config.
  static Result<SubnetAllocator> Create(const SubnetPoolConfig& config);

  // The lowest prefix_length-sized block of the pool that overlaps no block of
  // `used` (entries may be of any size and may lie outside the pool).
  // ResourceExhausted naming the pool when every block is taken.
  Result<Cidr> Allocate(const std::vector<Cidr>& used) const;

  const Cidr& pool() const { return pool_; }
  int prefix_length() const { return prefix_length_; }

 private:
  SubnetAllocator(Cidr pool, int prefix_length) : pool_(pool), prefix_length_(prefix_length) {}
  Cidr pool_;
  int prefix_length_;
};

}  // namespace berth::net
