// Warm pools (fast start, issue 6): per function, VMs that are running and
// past the agent's hello with the function's overlay attached, not yet
// running anything. An invoke takes one (timings.start == "warm"); a taken
// VM is never given back unless the function opts into keep_alive.
//
// Sizing (FunctionSpec): max_warm == 0 means no pool. A pool is active from
// the function's create/update and after every call; while active it refills
// in the background to max(min_warm, 1), at most max_warm, within the node's
// capacity (pooled VMs hold their capacity reservation). After
// idle_timeout_ms without a call (counted from the last call or the last
// completed refill, and never while a refill runs) it shrinks to zero,
// min_warm included; the next call then starts
// from the template (or cold) and wakes the pool again.
//
// Pooled VMs restore from the function's snapshot template (cold boot when
// the function has snapshot == false or the template fails). They are named
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

#include "common/env.h"
#include "hypervisor/agent_client.h"
#include "images/image_store.h"
#include "manager/node.h"
#include "manager/types.h"

namespace berth::manager {

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
};

struct WarmPoolOptions {
  std::string kernel_cmdline = "console=ttyS0 quiet panic=-1";  // equal to the executor's
  int64_t boot_timeout_ms = 120'000;
  int64_t tick_ms = 100;             // how often pools are checked
  int64_t failure_backoff_ms = 5'000;  // after a failed refill
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
  // keep_alive: puts a VM that ran successfully back; false when the pool
  // does not want it (full, other version, no pool): the caller tears it down.
  bool GiveBack(const FunctionRecord& fn, PooledVm vm);
  // Idle VMs of a function now.
  size_t IdleCount(const std::string& tenant, const std::string& function);

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
  };

  void Loop();
  void Fill(std::string pool_key, Node* node, FunctionRecord fn, images::ImageRecord image);
  Result<PooledVm> MakeVm(Node& node, const FunctionRecord& fn, const images::ImageRecord& image);
  void Destroy(Node& node, PooledVm& vm);
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
  std::thread loop_;
};

}  // namespace berth::manager
