#include "scheduler/fit.h"

#include <algorithm>

namespace berth::sched {

namespace {

uint64_t FreeOf(uint64_t capacity, uint64_t allocated) {
  return allocated >= capacity ? 0 : capacity - allocated;
}

// Utilisation of one resource after adding `add`, capped at 1.
double UsedAfter(uint64_t capacity, uint64_t allocated, uint64_t add) {
  if (capacity == 0) return 1.0;
  double u = static_cast<double>(allocated + add) / static_cast<double>(capacity);
  return u > 1.0 ? 1.0 : u;
}

bool LabelsMatch(const NodeResources& node, const std::map<std::string, std::string>& selector) {
  for (const auto& [key, value] : selector) {
    auto it = node.labels.find(key);
    if (it == node.labels.end() || it->second != value) return false;
  }
  return true;
}

const char* RejectionWords(Rejection r) {
  switch (r) {
    case Rejection::kFits: return "fit";
    case Rejection::kDown: return "down";
    case Rejection::kCordoned: return "cordoned";
    case Rejection::kDraining: return "draining";
    case Rejection::kLabels: return "fail label selector";
    case Rejection::kAccel: return "have another accel";
    case Rejection::kCpuModel: return "have another cpu model";
    case Rejection::kVcpus: return "lack vCPUs";
    case Rejection::kMemory: return "lack memory";
    case Rejection::kDisk: return "lack disk";
    case Rejection::kCount: break;
  }
  return "?";
}

}  // namespace

void AddTo(Resources& a, const Resources& b) {
  a.vcpus += b.vcpus;
  a.memory_mib += b.memory_mib;
  a.disk_bytes += b.disk_bytes;
}

void SubtractFrom(Resources& a, const Resources& b) {
  a.vcpus -= std::min(a.vcpus, b.vcpus);
  a.memory_mib -= std::min(a.memory_mib, b.memory_mib);
  a.disk_bytes -= std::min(a.disk_bytes, b.disk_bytes);
}

Resources FreeOf(const NodeLoad& node) {
  return {FreeOf(node.capacity.vcpus, node.allocated.vcpus),
          FreeOf(node.capacity.memory_mib, node.allocated.memory_mib),
          FreeOf(node.capacity.disk_bytes, node.allocated.disk_bytes)};
}

uint64_t DiskNeeded(const NodeLoad& node, const PlacementRequest& request) {
  if (request.image_bytes == 0 || !request.image_digest || node.spec.cached_images.count(*request.image_digest)) {
    return request.disk_bytes;
  }
  return request.disk_bytes + request.image_bytes;
}

Rejection CheckFit(const NodeLoad& node, const PlacementRequest& request) {
  const NodeResources& spec = node.spec;
  switch (spec.state) {
    case NodeState::kUp: break;
    case NodeState::kDown: return Rejection::kDown;
    case NodeState::kCordoned: return Rejection::kCordoned;
    case NodeState::kDraining: return Rejection::kDraining;
  }
  if (!request.label_selector.empty() && !LabelsMatch(spec, request.label_selector)) return Rejection::kLabels;
  if (request.accel && *request.accel != spec.accel) return Rejection::kAccel;
  if (request.cpu_model && *request.cpu_model != spec.cpu_model) return Rejection::kCpuModel;
  if (request.vcpus > FreeOf(node.capacity.vcpus, node.allocated.vcpus)) return Rejection::kVcpus;
  if (request.memory_mib > FreeOf(node.capacity.memory_mib, node.allocated.memory_mib)) return Rejection::kMemory;
  // total_disk_bytes 0 = the node's disk space is unknown: no disk limit.
  if (spec.total_disk_bytes > 0 &&
      DiskNeeded(node, request) > FreeOf(node.capacity.disk_bytes, node.allocated.disk_bytes)) {
    return Rejection::kDisk;
  }
  return Rejection::kFits;
}

double Score(const NodeLoad& node, const PlacementRequest& request, const Policy& policy) {
  double used = UsedAfter(node.capacity.vcpus, node.allocated.vcpus, request.vcpus) +
                UsedAfter(node.capacity.memory_mib, node.allocated.memory_mib, request.memory_mib);
  int parts = 2;
  // Disk weighs in only for claims that ask for disk: others would average in
  // a 0 and rank nodes whose pool space is known differently from the rest.
  if (const uint64_t disk = DiskNeeded(node, request); disk > 0 && node.capacity.disk_bytes > 0) {
    used += UsedAfter(node.capacity.disk_bytes, node.allocated.disk_bytes, disk);
    ++parts;
  }
  used /= parts;
  double load = policy.strategy == Strategy::kBinpack ? used : 1.0 - used;
  double score = policy.load_weight * load;
  if (request.image_digest && node.spec.cached_images.count(*request.image_digest)) {
    score += policy.image_locality_weight;
  }
  if (request.template_key && node.spec.template_keys.count(*request.template_key)) {
    score += policy.template_locality_weight;
  }
  return score;
}

NodeReport MakeReport(const NodeLoad& node) {
  NodeReport r;
  r.name = node.spec.name;
  r.state = node.spec.state;
  r.capacity = node.capacity;
  r.allocated = node.allocated;
  r.free = FreeOf(node);
  r.claims = node.claims;
  return r;
}

Status RejectionTally::Error(const PlacementRequest& request, size_t nodes) const {
  std::string msg = "no node fits claim '" + request.claim_id + "' (" + std::to_string(request.vcpus) +
                    " vCPU, " + std::to_string(request.memory_mib) + " MiB";
  if (request.disk_bytes > 0) msg += ", " + std::to_string(request.disk_bytes) + " bytes disk";
  if (request.image_bytes > 0) msg += ", " + std::to_string(request.image_bytes) + " bytes image where not cached";
  msg += ")";
  if (nodes == 0) return Status::ResourceExhausted(msg + ": no nodes registered");
  msg += " among " + std::to_string(nodes) + (nodes == 1 ? " node" : " nodes");
  const char* sep = ": ";
  for (size_t i = 1; i < counts_.size(); ++i) {
    if (counts_[i] == 0) continue;
    msg += sep + std::to_string(counts_[i]) + " " + RejectionWords(static_cast<Rejection>(i));
    sep = ", ";
  }
  return Status::ResourceExhausted(msg);
}

}  // namespace berth::sched
