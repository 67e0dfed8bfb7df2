#include "scheduler/types.h"

#include <cmath>

namespace berth::sched {

const char* NodeStateName(NodeState state) {
  switch (state) {
    case NodeState::kUp: return "up";
    case NodeState::kDown: return "down";
    case NodeState::kCordoned: return "cordoned";
    case NodeState::kDraining: return "draining";
  }
  return "unknown";
}

namespace {

uint64_t Scaled(uint64_t total, uint64_t reserved, double ratio) {
  if (reserved >= total) return 0;
  return static_cast<uint64_t>(std::floor(static_cast<double>(total - reserved) * ratio));
}

bool ValidRatio(double r) { return std::isfinite(r) && r > 0; }

}  // namespace

Resources CapacityOf(const NodeResources& node) {
  return {Scaled(node.total_vcpus, node.reserved_vcpus, node.cpu_overcommit),
          Scaled(node.total_memory_mib, node.reserved_memory_mib, node.memory_overcommit),
          Scaled(node.total_disk_bytes, node.reserved_disk_bytes, 1.0)};
}

Status ValidateNode(const NodeResources& node) {
  if (node.name.empty()) return Status::InvalidArgument("name", "node name is empty");
  if (node.accel != "kvm" && node.accel != "tcg") {
    return Status::InvalidArgument("accel", "node '" + node.name + "': accel must be kvm or tcg, not '" +
                                                node.accel + "'");
  }
  if (!ValidRatio(node.cpu_overcommit)) {
    return Status::InvalidArgument("cpu_overcommit", "node '" + node.name + "': cpu overcommit must be > 0");
  }
  if (!ValidRatio(node.memory_overcommit)) {
    return Status::InvalidArgument("memory_overcommit",
                                   "node '" + node.name + "': memory overcommit must be > 0");
  }
  return Status::Ok();
}

Status ValidateRequest(const PlacementRequest& request) {
  if (request.claim_id.empty()) return Status::InvalidArgument("claim_id", "claim id is empty");
  if (request.vcpus == 0) return Status::InvalidArgument("vcpus", "a claim needs at least 1 vCPU");
  if (request.memory_mib == 0) return Status::InvalidArgument("memory_mib", "a claim needs memory");
  return Status::Ok();
}

}  // namespace berth::sched
