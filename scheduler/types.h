// Types shared by the schedulers: what a node offers, what a placement asks
// for, the placement policy, and what the scheduler answers and reports.
//
// Units: vCPUs as counts, memory in MiB, disk in bytes. Everything here is a
// plain value; the schedulers own all mutable state.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/status.h"

namespace berth::sched {

// Only kUp nodes receive placements. kCordoned (an operator said "no new
// work"), kDraining (work is being moved away) and kDown (unreachable) keep
// their existing claims, which can still be released.
enum class NodeState { kUp, kDown, kCordoned, kDraining };

// "up" | "down" | "cordoned" | "draining".
const char* NodeStateName(NodeState state);

// An amount of each schedulable resource.
struct Resources {
  uint64_t vcpus = 0;
  uint64_t memory_mib = 0;
  uint64_t disk_bytes = 0;

  bool operator==(const Resources&) const = default;
};

struct NodeResources {
  std::string name;  // unique key
  NodeState state = NodeState::kUp;
  std::string accel = "kvm";  // "kvm" | "tcg": what this node actually runs guests with
  std::string cpu_model;      // e.g. "host-passthrough" or a libvirt model name; may be empty
  std::map<std::string, std::string> labels;

  uint64_t total_vcpus = 0;
  uint64_t total_memory_mib = 0;
  uint64_t total_disk_bytes = 0;  // 0 = unknown: disk is not a limit on this node
  // Kept for the host itself; never offered to claims.
  uint64_t reserved_vcpus = 0;
  uint64_t reserved_memory_mib = 0;
  uint64_t reserved_disk_bytes = 0;
  // Capacity multipliers (> 0). 1.0 means no overcommit. Disk is never overcommitted.
  double cpu_overcommit = 1.0;
  double memory_overcommit = 1.0;

  std::set<std::string> cached_images;  // sha256 digests already in the node's pool
  std::set<std::string> template_keys;  // saved templates present on the node
};

// What claims may use: (total - reserved) x ratio, rounded down, per
// resource (disk ratio 1). A reservation larger than the total gives 0.
Resources CapacityOf(const NodeResources& node);

// InvalidArgument (with the field) for an empty name, an accel other than
// kvm/tcg, or an overcommit ratio that is not a finite number > 0.
Status ValidateNode(const NodeResources& node);

struct PlacementRequest {
  std::string claim_id;  // unique among live claims
  uint64_t vcpus = 1;
  uint64_t memory_mib = 0;
  uint64_t disk_bytes = 0;
  // Every key=value here must be among the node's labels.
  std::map<std::string, std::string> label_selector;
  std::optional<std::string> accel;      // required accel, when set
  std::optional<std::string> cpu_model;  // required cpu model, when set
  // Locality hints: nodes that already have these score higher (not required).
  std::optional<std::string> image_digest;
  std::optional<std::string> template_key;
  // Disk the image (image_digest) takes on a node that does not cache it yet:
  // such a node needs disk_bytes + image_bytes free, one that caches it only
  // disk_bytes. Not part of the claim: the caller counts the image in the
  // chosen node's cache (NodeResources::reserved_disk_bytes) from then on.
  uint64_t image_bytes = 0;
  uint32_t alternates = 2;  // how many fallback nodes to return besides the chosen one

  Resources resources() const { return {vcpus, memory_mib, disk_bytes}; }
};

// InvalidArgument for an empty claim id or a request for 0 vCPUs or 0 MiB.
Status ValidateRequest(const PlacementRequest& request);

enum class Strategy {
  kBinpack,  // fill the fullest feasible node first (keeps whole nodes free)
  kSpread,   // put work on the emptiest feasible node (keeps load even)
};

struct Policy {
  Strategy strategy = Strategy::kBinpack;
  // Power-of-K-choices: evaluate K random up nodes instead of all of them.
  // 0 = always scan every node. A candidate set of at most 2K up nodes (the
  // cluster, or the nodes with a selector's rarest label) is scanned whole.
  uint32_t sample_k = 0;
  // Sampling rounds before falling back to a full scan (so a feasible node is
  // never missed).
  uint32_t sample_rounds = 8;
  // score = load_weight * load + image_locality_weight * [image cached]
  //       + template_locality_weight * [template present]
  // where load in [0, 1] is the node's mean vCPU/memory(/disk) utilisation
  // after placing the claim (binpack) or 1 minus it (spread).
  double load_weight = 1.0;
  double image_locality_weight = 0.5;
  double template_locality_weight = 1.0;
};

struct Placement {
  std::string node;                     // where the claim is now recorded
  std::vector<std::string> alternates;  // next-best feasible nodes, best first; NOT claimed
};

// A live claim as the scheduler holds it.
struct ClaimInfo {
  std::string claim_id;
  std::string node;
  Resources resources;
};

struct NodeReport {
  std::string name;
  NodeState state = NodeState::kUp;
  Resources capacity;   // CapacityOf(node)
  Resources allocated;  // sum of live claims (may exceed capacity after ClaimOn)
  Resources free;       // capacity - allocated, 0 where allocated exceeds capacity
  uint64_t claims = 0;
};

}  // namespace berth::sched
