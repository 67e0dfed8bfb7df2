#include "net/subnet_allocator.h"

#include <algorithm>

namespace berth::net {

Result<SubnetAllocator> SubnetAllocator::Create(const SubnetPoolConfig& config) {
  BERTH_ASSIGN_OR_RETURN(Cidr pool, ParseCidr("subnet_pool", config.pool));
  if (config.prefix_length < 16 || config.prefix_length > 29) {
    return Status::InvalidArgument("subnet_prefix", "subnet_prefix must be between 16 and 29, got " +
                                                        std::to_string(config.prefix_length));
  }
  if (config.prefix_length < pool.prefix) {
    return Status::InvalidArgument("subnet_prefix", "a /" + std::to_string(config.prefix_length) +
                                                        " subnet does not fit in the pool " +
                                                        pool.ToString());
  }
  return SubnetAllocator(pool, config.prefix_length);
}

Result<Cidr> SubnetAllocator::Allocate(const std::vector<Cidr>& used) const {
  std::vector<Cidr> taken;
  for (const Cidr& c : used) {
    if (c.Overlaps(pool_)) taken.push_back(c);
  }
  std::sort(taken.begin(), taken.end(),
            [](const Cidr& a, const Cidr& b) { return a.first() < b.first(); });
  const uint64_t block = uint64_t{1} << (32 - prefix_length_);
  const uint64_t pool_end = uint64_t{pool_.last()} + 1;
  uint64_t candidate = pool_.first();
  // Walk the blocks in order, jumping past each taken range that overlaps the
  // candidate (at most one jump per taken range).
  for (const Cidr& t : taken) {
    if (candidate >= pool_end) break;
    if (uint64_t{t.last()} < candidate) continue;
    if (uint64_t{t.first()} >= candidate + block) break;  // candidate is free
    const uint64_t past = uint64_t{t.last()} + 1;
    candidate = (past + block - 1) / block * block;
  }
  if (candidate + block > pool_end) {
    return Status::ResourceExhausted("no free /" + std::to_string(prefix_length_) +
                                     " subnet left in the pool " + pool_.ToString() + " (" +
                                     std::to_string(taken.size()) +
                                     " blocks in use); configure a larger subnet pool");
  }
  return Cidr{static_cast<uint32_t>(candidate), prefix_length_};
}

}  // namespace berth::net
