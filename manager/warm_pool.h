// Warm pools (fast start, issue 6): per function, VMs that are running and
// past the agent's hello with the function's overlay attached, not yet
// running anything. An invoke takes one (timings.start == "warm"); a taken
// VM is never given back unless the function opts into keep_alive (then the
// executor gives the VM of every successful run back, see GiveBack, and an
// active pool keeps up to max(max_warm, 1) idle VMs).
//
// Sizing (FunctionSpec): max_warm == 0 means no pool. A pool is active from
// the function's create/update and after every call; while active it refills
// in the background to max(min_warm, 1), at most max_warm, within the node's
// capacity (pooled VMs hold their capacity reservation). After
// idle_timeout_ms without a call (counted from the last call or the last
// completed refill, and never while a refill runs) it shrinks to zero,
// min_warm included; the next call then starts
// from the template (or cold) and wakes the pool again. A refill after a
// take waits while the function still has calls in flight (at most
// WarmPoolOptions::refill_hold_ms), so the call runs without a restore next
// to it.
//
// Pooled VMs restore from the function's snapshot template (cold boot when
// the function has snapshot == false or the template fails), mount the root
// filesystem and run the runtime's agent binary once (WarmUp) before they
// are pooled. They are named
// berth-pool-<function>-<short> with overlay povl-<short>.qcow2 in the node's
// pool and console log <domain>.console.log; they are destroyed when their
// function changes or is deleted, at shutdown, and by RemoveStalePoolVms when
// a berthd starts on the same pools.
//
// The object also runs background template builds (EnsureTemplate).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/env.h"
#include "hypervisor/agent_client.h"
#include "hypervisor/domain_spec.h"
#include "images/image_store.h"
#include "manager/networks.h"
#include "manager/node.h"
#include "manager/templates.h"
#include "manager/types.h"

namespace berth::manager {

// ---- Autoscaling (issue 6, item 4) ----
//
// Per function, the Autoscaler counts calls in flight, observes the
// time-weighted average concurrency over a sliding window, admits calls up
// to max_instances (queueing the rest, refusing beyond max_queued), and
// says how many idle VMs the warm pool should hold. All time comes from Env,
// so tests drive it with a manual clock.
struct ScalingPolicy {
  uint32_t target_concurrency = 1;  // calls in flight per instance the pool aims for
  uint32_t max_instances = 0;       // calls (= VMs) running at once; 0: no cap
  uint32_t max_queued = 16;         // calls waiting at the cap; beyond: refused
  int64_t queue_timeout_ms = 30'000;
  uint32_t min_warm = 0;
  uint32_t max_warm = 0;
  int64_t idle_timeout_ms = 300'000;
};
ScalingPolicy ScalingPolicyOf(const FunctionSpec& spec);

// What the Autoscaler saw of one function.
struct ScalingObservation {
  double avg_concurrency = 0;  // time-weighted calls in flight over the window
  uint32_t in_flight = 0;      // calls running now
  size_t queued = 0;           // calls waiting for a slot now
  int64_t idle_ms = 0;         // since the last call started or ended
};

// The scaling decision, a pure function: idle VMs the pool should hold.
//   demand    = max(avg_concurrency, in_flight + queued)
//   instances = ceil(demand / target_concurrency)  (instances busy at that rate)
//   warm      = clamp(instances, min_warm, max_warm), and never so many that
//               in_flight + warm exceeds max_instances
// Zero once idle_ms passed idle_timeout_ms (scale to zero), and without a
// pool (max_warm 0).
size_t DesiredWarm(const ScalingPolicy& policy, const ScalingObservation& seen);

class Autoscaler {
 public:
  explicit Autoscaler(Env* env, int64_t window_ms = 10'000);

  // One admitted call; releasing it (destruction) ends the call.
  class Ticket {
   public:
    Ticket() = default;
    Ticket(Ticket&& other) noexcept { *this = std::move(other); }
    Ticket& operator=(Ticket&& other) noexcept;
    ~Ticket() { Release(); }
    void Release();
    int64_t queued_ms() const { return queued_ms_; }

   private:
    friend class Autoscaler;
    Autoscaler* owner_ = nullptr;
    std::string key_;
    int64_t queued_ms_ = 0;
  };

  // Admits one call of function `key` (tenant/name): at once while fewer
  // than max_instances run; else it waits its turn (FIFO) in the queue, at
  // most queue_timeout_ms. ResourceExhausted (field "max_instances", the
  // message says why) when the queue already holds max_queued calls or the
  // wait timed out.
  Result<Ticket> Admit(const std::string& key, const ScalingPolicy& policy);

  ScalingObservation Observe(const std::string& key);
  size_t DesiredWarm(const std::string& key, const ScalingPolicy& policy) {
    return manager::DesiredWarm(policy, Observe(key));
  }

 private:
  struct Fn {
    uint32_t in_flight = 0;
    std::deque<uint64_t> queue;  // waiting tickets, oldest first
    // (time, in_flight from then on), oldest first; the first one starts at
    // or before the window.
    std::deque<std::pair<int64_t, uint32_t>> history;
    int64_t last_activity_ms = 0;
  };
  void End(const std::string& key);
  void RecordLocked(Fn& fn, int64_t now);
  ScalingObservation ObserveLocked(Fn& fn, int64_t now);

  Env* env_;
  int64_t window_ms_;
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t next_waiter_ = 1;
  std::map<std::string, Fn> fns_;
};

inline constexpr const char* kPoolDomainPrefix = "berth-pool-";
std::string PoolDomainName(const std::string& function, const std::string& short_id);  // berth-pool-<fn>-<short>
std::string PoolOverlayVolumeName(const std::string& short_id);                         // povl-<short>.qcow2

// Destroys the pooled VMs an earlier berthd left on this node's pools (their
// domains, overlays and console logs). Only domains whose overlay lives in
// this node's pool are touched, so other berthds' pools are left alone.
void RemoveStalePoolVms(Node& node);

// One idle VM of a pool.
struct PooledVm {
  std::string domain;
  std::string overlay_volume;  // in the node's pool
  std::string console_volume;  // in the node's log pool
  std::unique_ptr<hv::AgentClient> agent;  // hello done
  std::string made_by;  // "template" | "cold"
  int64_t function_version = 0;
  uint32_t vcpus = 0;
  uint64_t memory_mib = 0;  // reserved on the node until the VM is torn down
  int64_t boot_ms = 0;      // how long making it took (domain create/restore -> hello)
  // Networked functions (issue 8): the VM's NIC on the tenant network, with
  // a MAC of its own (a template clone gets a fresh one), whose references
  // are held until the VM is destroyed; and the DHCP lease it got.
  std::optional<NetAttachment> network;
  std::vector<std::string> addresses;
};

struct WarmPoolOptions {
  std::string kernel_cmdline = hv::kDefaultKernelCmdline;  // equal to the executor's
  int64_t boot_timeout_ms = 120'000;
  int64_t tick_ms = 100;             // how often pools are checked
  int64_t failure_backoff_ms = 5'000;  // after a failed refill
  // After a call takes a VM, the refill waits while calls of that function
  // are still running (on few cores, a restore next to a warm call slows the
  // call down), at most this long.
  int64_t refill_hold_ms = 2'000;
  // Guest networks (the executor's): NICs of networked functions' pooled
  // VMs and template builds. Null: such functions get no pool or template.
  Networks* networks = nullptr;
  int64_t dhcp_timeout_ms = 15'000;  // pooled VM hello -> lease
};

class WarmPools {
 public:
  WarmPools(Env* env, WarmPoolOptions options);
  // Shutdown().
  ~WarmPools();
  WarmPools(const WarmPools&) = delete;
  WarmPools& operator=(const WarmPools&) = delete;

  // A function was created or updated: VMs of other versions go, the pool
  // becomes active (pre-warms to its size), and its template is built in the
  // background.
  void Configure(Node& node, const FunctionRecord& fn, const images::ImageRecord& image);
  // The function is gone: its pool's VMs are destroyed.
  void Remove(const std::string& tenant, const std::string& function);
  // An idle VM of `fn` (at its version), or nullopt. Counts as a call: the
  // pool becomes active and refills. Configures the pool if it has none yet
  // (e.g. after a berthd restart).
  std::optional<PooledVm> Take(Node& node, const FunctionRecord& fn, const images::ImageRecord& image);
  // keep_alive reuse: puts a VM of `fn` that ran successfully back (its
  // agent still connected; its capacity reservation moves to the pool).
  // Makes a pool for fn if it has none (keep_alive with max_warm 0 keeps at
  // most one VM). False when the pool does not want it (fn not keep_alive,
  // full, other version or node, shutting down): `vm` is left untouched
  // and the caller tears it down.
  bool GiveBack(Node& node, const FunctionRecord& fn, const images::ImageRecord& image, PooledVm& vm);
  // Idle VMs of a function now.
  size_t IdleCount(const std::string& tenant, const std::string& function);
  // Idle pooled VMs hold node capacity only opportunistically: a call that
  // finds `node` full destroys idle VMs there (any function's, the most
  // recently pooled last) until vcpus/memory_mib are free again. Returns how
  // many it destroyed; their pools refill later within what is left.
  size_t EvictIdleFor(Node& node, uint32_t vcpus, uint64_t memory_mib);
  // Admission and the observed rate of every function's calls: a pool
  // refills to max(min_warm-based size, autoscaler.DesiredWarm) (see
  // DesiredWarm) while active.
  Autoscaler& autoscaler() { return autoscaler_; }

  // Builds fn's template on `node` in the background unless it exists or is
  // being built by this object already.
  void EnsureTemplate(Node& node, const FunctionRecord& fn, const images::ImageRecord& image);

  // Stops refilling, waits for refills and template builds in flight, and
  // destroys every pooled VM. Idempotent.
  void Shutdown();

 private:
  struct Pool {
    Node* node = nullptr;
    FunctionRecord fn;
    images::ImageRecord image;
    std::deque<PooledVm> idle;
    int filling = 0;
    bool active = false;
    int64_t last_call_ms = 0;
    int64_t backoff_until_ms = 0;
    int64_t taken_at_ms = 0;  // first take not yet followed by a refill (0: none)
  };

  void Loop();
  void Fill(std::string pool_key, Node* node, FunctionRecord fn, images::ImageRecord image);
  Result<PooledVm> MakeVm(Node& node, const FunctionRecord& fn, const images::ImageRecord& image);
  // Runs the runtime's own agent binary once in the VM (fork, chroot, exec,
  // exit): a restored guest's TCG translations start empty, and this makes
  // the paths every call takes warm without running anything of the image.
  void WarmUp(PooledVm& vm);
  void Destroy(Node& node, PooledVm& vm);
  // Mounts the root filesystem and reads fn's entrypoint files into the page cache.
  void PrepareRootfs(PooledVm& vm, const FunctionRecord& fn);
  // The NIC of fn's template build guest (empty for functions without a
  // network); `build_domain` (TemplateDomainName of the template's key) is
  // the domain that holds it, so its release checks that one domain only.
  BuildNicSource BuildNicFor(Node& node, const FunctionRecord& fn, const std::string& build_domain);
  void Spawn(std::function<void()> fn);
  void PublishLocked(const Pool& pool);

  Env* env_;
  WarmPoolOptions options_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable threads_cv_;
  bool stopping_ = false;
  int threads_ = 0;
  std::map<std::string, Pool> pools_;       // tenant/function
  std::set<std::string> building_;          // template keys ensured in the background
  Autoscaler autoscaler_;
  std::thread loop_;
};

}  // namespace berth::manager
