// Cluster: the registry of nodes (libvirt hosts), where each execution is
// placed, and what is known about each node's health.
//
// Nodes are persisted in the store and reconnected when berthd starts; the
// local node (berthd's own --node-uri) is registered by default, so a single
// machine needs no set-up. Placement asks the scheduler (scheduler/) for a
// node that is up, matches the label selector and has the capacity, and
// records the claim in the store; the claim is released when the execution's
// VM is gone. A monitor thread marks a node down when its libvirtd stops
// answering (within --node-down-after-ms) and reconciles it when it returns.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/env.h"
#include "manager/node.h"
#include "manager/runtime.h"
#include "manager/store.h"
#include "scheduler/scheduler.h"

namespace berth::manager {

// What an operator says about a node.
struct NodeSpec {
  std::string name;
  std::string uri;
  std::string accel = "auto";  // kvm | tcg | auto
  std::map<std::string, std::string> labels;
  double cpu_overcommit = 4.0;
  double memory_overcommit = 1.0;
  uint64_t reserved_memory_mib = 512;
};

// Checks a node spec: name (like function names), a libvirt URI with a
// supported transport (qemu:///system, qemu+tcp://, qemu+ssh://,
// qemu+tls://, qemu+unix://), accel, labels, ratios. Fields as the API names them.
Status ValidateNodeSpec(const NodeSpec& spec);

struct NodeView {
  NodeSpec spec;
  std::string state;  // up | down | cordoned | draining
  std::string accel;  // resolved: kvm | tcg ("" while never connected)
  hv::NodeInfo info;
  uint64_t vcpus_capacity = 0, vcpus_allocated = 0;
  uint64_t memory_capacity_mib = 0, memory_allocated_mib = 0;
  // Disk claims may use: the pool's capacity minus the image cache (0 while
  // the pool's space is unknown, which the scheduler treats as no limit).
  uint64_t disk_capacity_bytes = 0, disk_allocated_bytes = 0;
  // The node's berth pool as libvirt reports it (GetPoolInfo; 0 while
  // unknown) and the bytes its cached images (img-* volumes) take of it.
  uint64_t pool_capacity_bytes = 0, pool_available_bytes = 0, image_cache_bytes = 0;
  int64_t claims = 0;
  std::string last_error;
};

// Locality hints for a placement: nodes that already hold these score higher.
struct PlacementHints {
  std::string image_digest;  // sha256 of the root filesystem image ("" : none)
  std::string template_key;  // snapshot template key of the function ("" : none)
};

// The image digests a node's pool holds, from its volume names (img-<sha256>.<fmt>).
std::set<std::string> CachedImageDigests(const std::vector<hv::VolumeInfo>& pool_volumes);
// The bytes allocated on disk to the cached images (the same volumes).
uint64_t CachedImageBytes(const std::vector<hv::VolumeInfo>& pool_volumes);

struct ClusterOptions {
  std::string state_dir = "/var/lib/berth/nodes";  // pool folders of added nodes: <state_dir>/<name>/{pool,logs}
  int64_t monitor_interval_ms = 2000;
  int64_t down_after_ms = 6000;  // no answer for this long: down
  sched::Policy policy;
  // Disk every placement asks for on its node besides the image: the
  // overlay's expected growth (0: none). Counted only on nodes whose pool
  // space is known.
  uint64_t overlay_disk_bytes = 256ull << 20;
  // The bytes image `digest` takes in a node's pool (0: unknown). A node
  // that does not cache the image must have room for it as well; unset or
  // 0, the size any node's cache shows for it is used (else none is asked).
  std::function<uint64_t(const std::string& digest)> image_bytes;
  // How a node's libvirt is reached (unit tests put a fake hypervisor here).
  std::function<Result<std::unique_ptr<hv::Hypervisor>>(const std::string& uri)> connect = hv::ConnectLibvirt;
};

class Cluster {
 public:
  Cluster(Env* env, Store* store, RuntimeArtifacts runtime, ClusterOptions options);
  ~Cluster();

  // Registers and prepares berthd's own node (config from flags); kept in the store.
  Result<Node*> AddLocal(const NodeConfig& config);
  // Reconnects the nodes the store knows (other than the local one). Nodes
  // that cannot be reached start "down" and are retried by the monitor.
  Status LoadRegistered();
  // Connects, prepares (pools, runtime, accel) and registers a node.
  // AlreadyExists for a duplicate name or URI; FailedPrecondition (field
  // "uri") when libvirt there cannot be reached.
  Result<NodeView> Add(const NodeSpec& spec);
  // FailedPrecondition while executions hold claims on it (409 at the API).
  Status Remove(const std::string& name);
  // "cordon" (no new work), "uncordon", "drain" (no new work; becomes
  // cordoned once its claims are gone).
  Result<NodeView> SetAdminState(const std::string& name, const std::string& action);

  // Places an execution: claims vcpus/memory (and the overlay's disk) on a
  // node that is up, matches every selector label and has room, counting
  // the image's bytes on a node that does not cache it yet (see
  // ClusterOptions). ResourceExhausted says why none fits.
  Result<Node*> Place(const std::string& claim_id, uint32_t vcpus, uint64_t memory_mib,
                      const std::map<std::string, std::string>& selector);
  // Place, preferring nodes that already cache the image / hold the template.
  // The chosen node counts as caching the image (and its bytes against its
  // disk) from then on: until the image shows in its pool, or until the
  // claim is released and the next refresh does not find it.
  Result<Node*> Place(const std::string& claim_id, uint32_t vcpus, uint64_t memory_mib,
                      const std::map<std::string, std::string>& selector, const PlacementHints& hints);
  // Place that also returns the scheduler's next-best feasible nodes (not
  // claimed), so that a failed start can move on without a new scheduling round.
  struct Placed {
    Node* node = nullptr;
    std::vector<std::string> alternates;  // best first
  };
  Result<Placed> PlaceWithAlternates(const std::string& claim_id, uint32_t vcpus, uint64_t memory_mib,
                                     const std::map<std::string, std::string>& selector, const PlacementHints& hints,
                                     uint32_t alternates = 2);
  // Claims `claim_id` on the first of `*alternates` that is still up and has
  // room, consuming the list from the front (nodes tried are removed).
  // `hints.image_digest` (optional) counts the image's bytes on a node that
  // does not cache it, as Place does. ResourceExhausted when none is left.
  Result<Node*> ClaimOnAlternate(const std::string& claim_id, uint32_t vcpus, uint64_t memory_mib,
                                 std::vector<std::string>* alternates, const PlacementHints& hints = {});
  // Re-reads which images and templates a node holds, its pool's space and
  // the bytes its cached images take (the monitor does this
  // every round for nodes that answer). Calls libvirt outside the cluster
  // lock; a node removed (or replaced) meanwhile is left alone.
  void RefreshLocality(const std::string& name);
  // Releases a claim (idempotent).
  void Release(const std::string& claim_id);
  // Drops claims of executions that are not live (after a restart).
  void ReleaseAllClaims();
  // Releases the claims held on `node` whose id `keep` rejects; returns how
  // many went. (A node that comes back: see ReleaseEndedClaimsOn in
  // manager/reconcile.h for which claims may go.)
  int ReleaseClaimsOn(const std::string& node, const std::function<bool(const std::string& claim_id)>& keep);
  // Reconciliation: re-installs the claim of an adopted execution on `node`
  // (no filter: its VM exists, so it counts even over capacity or on a node
  // that is not up) and keeps its row in the store. It holds the disk its
  // stored row says (the overlay allowance when there is no row, or the row
  // predates recorded disks). NotFound for an unknown node.
  Status ClaimOn(const std::string& claim_id, const std::string& node, uint32_t vcpus, uint64_t memory_mib);
  // Reconciliation: releases every claim (store and scheduler) whose id is
  // not in `keep`; returns how many went.
  int ReleaseClaimsExcept(const std::set<std::string>& keep);

  // Someone saw libvirt on `name` stop answering (an execution's channel
  // broke and the node did not answer): it takes no new work until the
  // monitor's next health check there succeeds. Whether it is down (and its
  // executions lost) is still the monitor's call, after --node-down-after-ms.
  void ReportUnreachable(const std::string& name);

  Node* Get(const std::string& name);
  // The node kept alive for as long as the caller holds it (null: no such
  // node), for work that may outlive a concurrent Remove.
  std::shared_ptr<Node> Share(const std::string& name);
  Node* local() { return local_; }
  std::vector<Node*> All();
  Result<NodeView> View(const std::string& name);
  std::vector<NodeView> Views();
  bool IsDown(const std::string& name);

  // Called (from the monitor thread) when a node goes down or comes back.
  void SetNodeListener(std::function<void(const std::string& node, bool up)> listener);
  // Called (from the monitor thread) for a down (or ReportUnreachable) node
  // that answers again, while it still takes no work: it does only after this returns Ok
  // (otherwise it stays down, last_error says why, and the next round tries
  // again). The listener's "up" call follows.
  void SetReconcileHook(std::function<Status(Node& node)> hook);
  void StartMonitor();
  void StopMonitor();

 private:
  struct Entry {
    NodeSpec spec;
    // Null while never connected. Shared so that a libvirt call made outside
    // mu_ (health check, locality) keeps the Node alive if it is removed meanwhile.
    std::shared_ptr<Node> node;
    std::string admin_state = "up";  // up | cordoned | draining
    bool down = false;
    bool suspect = false;  // ReportUnreachable: no new work until it answers again
    int64_t last_ok_ms = 0;
    std::string last_error;
    std::set<std::string> cached_images, template_keys;  // locality, for the scheduler
    // The pool's space (0 = unknown: no disk limit) and what cached images take of it.
    hv::PoolInfo pool;
    uint64_t image_cache_bytes = 0;
    // Images placements put here that its pool did not show yet: digest ->
    // bytes and the claim that brings it. Reserved like cached images; a
    // refresh drops those now in the pool and those whose claim is gone.
    struct PendingImage {
      uint64_t bytes = 0;
      std::string claim_id;
      bool claim_released = false;
    };
    std::map<std::string, PendingImage> pending_images;
    // Allocation of each cached image as the pool last showed it (digest -> bytes).
    std::map<std::string, uint64_t> cached_image_bytes;
  };
  // The bytes image `digest` takes on a node: options_.image_bytes, else the
  // largest allocation a node's cache shows for it (mu_ held), else 0.
  uint64_t ImageBytesLocked(const std::string& digest, uint64_t from_options) const;
  // Counts the image of a placement on `e` until its pool shows it (mu_ held).
  void NotePendingImage(Entry& e, const std::string& digest, uint64_t bytes, const std::string& claim_id);
  Result<std::unique_ptr<Node>> Connect(const NodeSpec& spec, const NodeConfig& base);
  NodeConfig ConfigFor(const NodeSpec& spec) const;
  void PushToScheduler(const Entry& e);
  // Releases every stored claim for which stale() is true; returns how many.
  int ReleaseStaleClaims(const std::function<bool(const ClaimRow&)>& stale);
  Status Persist(const Entry& e);
  NodeView ViewOf(const Entry& e);
  void MonitorLoop();
  // One monitor round for one node: health check (or first connection),
  // down/up transitions, reconcile before up, locality.
  void CheckNode(const std::string& name, const NodeSpec& spec);

  Env* env_;
  Store* store_;
  RuntimeArtifacts runtime_;
  ClusterOptions options_;
  std::mutex mu_;
  std::map<std::string, Entry> nodes_;
  Node* local_ = nullptr;
  std::string local_name_;
  NodeConfig local_config_;
  sched::Scheduler scheduler_;
  std::function<void(const std::string&, bool)> listener_;
  std::function<Status(Node&)> reconcile_hook_;
  std::thread monitor_;
  std::mutex monitor_mu_;
  std::condition_variable monitor_cv_;
  bool stop_ = false;
};

}  // namespace berth::manager
