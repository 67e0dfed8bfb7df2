// Executor: runs one execution (a process) on a node from start to cleanup.
//
// capacity -> overlay volume -> domain start -> agent hello -> exec -> exit
// -> destroy -> overlay and console log deleted. Disk-boot instances have no
// agent: they run until their guest powers off or they are killed. Every step is recorded in the Store
// through the execution state machine (types.h). Whatever fails, the domain
// and its volumes are removed before Run returns.
#pragma once

#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/env.h"
#include "hypervisor/domain_spec.h"
#include "images/image_store.h"
#include "manager/node.h"
#include "manager/networks.h"
#include "manager/store.h"
#include "manager/types.h"
#include "manager/warm_pool.h"

namespace berth::manager {

struct InvokeRequest {
  std::vector<std::string> args;           // appended to the function's entrypoint
  std::map<std::string, std::string> env;  // merged over the function's env
  std::string stdin_data;
  int64_t ppid = kInitPid;                 // parent process (1: init)
  std::string name;                        // process name ("" : the function's name)
  std::string id;                          // execution id to use ("" : a new random one)
  // How long the call already waited for admission before it got here (the
  // Autoscaler's queue at max_instances); counted in timings.queue_ms.
  int64_t queued_ms = 0;
};

// Everything needed to start one process; a function run and an instance
// alike. Service builds it from a function (run) or an exec/fork request.
struct Launch {
  std::string tenant = kDefaultTenant;
  std::string function;                  // "" for instances started from an image
  int64_t function_version = 0;
  std::string name;
  ProcKind kind = ProcKind::kRun;
  std::string userdata;
  images::ImageRecord image;
  ProcSpec spec;                         // spec.command is the full argv (entrypoint + args)
  int64_t ppid = kInitPid;
  std::string id;                        // execution id to use ("" : a new random one)
  int64_t queued_ms = 0;                 // waited for admission already (InvokeRequest::queued_ms)
  // Live fork: the execution id of a running process on the same node whose
  // current memory and disk state this one starts from (manager/templates.h
  // LiveFork) instead of a boot; it then follows the copy of the parent's
  // running command to its end instead of starting spec.command.
  std::string live_fork_of;
  // Start only (Run leaves it empty). Called from the execution's background
  // thread when its start failed before the command ran: `failed` is the
  // record still placing or starting, on the node that failed, with
  // error_code/error saying why. Returns another node to which the claim of
  // the execution (its id) has been moved, or null to end it in error as
  // usual. On a node, the failed node's leftovers (domain, volumes, network,
  // reservation) are torn down and the same record (id, pid) goes back to
  // placing there, its `node` naming the new node. Not for live forks.
  std::function<Node*(const ExecutionRecord& failed)> move_failed_start;
};

struct ExecutorOptions {
  // Seed ISO builder for disk-boot instances (cloud-init NoCloud, label "cidata").
  std::string iso_tool = "genisoimage";
  size_t max_console_bytes = 256 << 10;  // console tail kept per execution
  int64_t boot_timeout_ms = 120'000;   // domain start -> agent hello (TCG boots take seconds)
  int64_t host_grace_ms = 10'000;      // after the function's timeout, before the host destroys the VM
  size_t max_output_bytes = 1 << 20;   // per stream; beyond that output is dropped and flagged
  std::string kernel_cmdline = hv::kDefaultKernelCmdline;
  // Tear the VM down after answering (the record is final before that; the
  // node's capacity stays reserved until the VM is gone). False: answer only
  // after teardown.
  bool async_cleanup = true;
  // Guest networking: the tenant subnet pool, and how long a networked
  // guest may take to get its DHCP lease after hello.
  NetworksConfig networks;
  int64_t dhcp_timeout_ms = 15'000;
};

// Volume names of one execution on its node.
std::string OverlayVolumeName(const std::string& execution_id);
std::string SeedVolumeName(const std::string& execution_id);
std::string ConsoleLogVolumeName(const std::string& domain);

// Removes what one execution left on its node (domain, overlay, console log)
// and releases its reserved capacity. Idempotent; runs at destruction at the latest.
class ExecutionTeardown {
 public:
  ExecutionTeardown(Node& node, std::string domain, std::string overlay, std::string console, std::string seed = "")
      : node_(node),
        domain_(std::move(domain)),
        overlay_(std::move(overlay)),
        console_(std::move(console)),
        seed_(std::move(seed)) {}
  ~ExecutionTeardown();
  ExecutionTeardown(const ExecutionTeardown&) = delete;
  ExecutionTeardown& operator=(const ExecutionTeardown&) = delete;

  void Run();
  void mark_overlay_created() { overlay_created_ = true; }
  void mark_started() { started_ = true; }
  void mark_seed_created() { seed_created_ = true; }
  // Runs after the domain and volumes are gone (e.g. releasing its network).
  void OnDestroyed(std::function<void()> fn) { on_destroyed_.push_back(std::move(fn)); }
  // Hands everything over to someone else (e.g. a warm pool): Run does nothing.
  void Disarm() { done_ = true; }
  bool done() const { return done_; }  // ran, or disarmed: nothing left to remove
  bool started() const { return started_; }
  void reserved(uint32_t vcpus, uint64_t memory_mib) {
    reserved_vcpus_ = vcpus;
    reserved_memory_mib_ = memory_mib;
  }

 private:
  Node& node_;
  std::string domain_, overlay_, console_, seed_;
  bool overlay_created_ = false, started_ = false, seed_created_ = false, done_ = false;
  uint32_t reserved_vcpus_ = 0;
  uint64_t reserved_memory_mib_ = 0;
  std::vector<std::function<void()>> on_destroyed_;
};

// Live view of a process that has not ended yet (output so far).
struct LiveOutput {
  std::string stdout_data, stderr_data;
  bool truncated = false;
};

class Executor {
 public:
  Executor(Env* env, Store* store, ExecutorOptions options);
  // Detaches what still runs (DetachAll), then waits for teardowns and
  // executions still ending in the background.
  ~Executor();
  // berthd is stopping: every live execution goes on in its VM without this
  // process. Commands waiting on their agent channel return at once; their
  // records stay `running` and nothing is torn down, so the next berthd
  // adopts them (Adopt). One still booting ends `lost/manager_stopped` once
  // its boot finished (bounded by the boot timeout). Nothing new is created
  // or adopted afterwards (Unavailable). Run returns such a record still
  // `running`; Start's end hook is not called for it.
  void DetachAll();
  void WaitForCleanups();

  // Runs `fn` on `node` and returns once it ended. Returns the final record
  // (its state tells success, failure, timeout, kill or error); fails only if
  // no record could be written.
  Result<ExecutionRecord> Run(Node& node, const FunctionRecord& fn, const images::ImageRecord& image,
                              const InvokeRequest& request);
  // Records a new process (pending, with its pid) and runs it in the
  // background; returns the record as first written. A start that fails
  // before the command ran may move to another node (Launch::move_failed_start).
  Result<ExecutionRecord> Start(Node& node, Launch launch);

  // Sends a signal to a live process: SIGKILL destroys its domain at once;
  // SIGTERM asks the guest (the agent signals the command's process group; a
  // disk-booted guest gets an ACPI power-button press) and destroys the
  // domain if it is still there after grace_ms. The record ends "killed".
  // FailedPrecondition if the process is not live in this berthd.
  Status Kill(const std::string& execution_id, int signal, int64_t grace_ms);
  // Blocks until the process ended or timeout_ms passed (then
  // DeadlineExceeded); returns immediately for ended processes.
  Status Wait(const std::string& execution_id, int64_t timeout_ms);
  // Output of a live process so far; NotFound once it ended (read the record).
  Result<LiveOutput> Output(const std::string& execution_id);
  bool IsLive(const std::string& execution_id);
  // Called with an execution's id once its VM and volumes are gone (the
  // cluster releases the execution's capacity claim there).
  void SetReleaseHook(std::function<void(const std::string& execution_id)> hook) { release_hook_ = std::move(hook); }
  // Called with the final record of each execution that Start began or
  // Adopt took over, from its background thread once it ended (its VM may
  // still be torn down). Set before the first Start or Adopt.
  void SetStartedEndHook(std::function<void(const ExecutionRecord&)> hook) { started_end_hook_ = std::move(hook); }
  // The node stopped answering: its live executions end "lost" (their
  // threads are unblocked; nothing is retried here).
  void MarkNodeLost(const std::string& node_name);

  // Reconciliation after a berthd restart (manager/reconcile.h): takes over
  // an execution whose record says running and whose domain still runs on
  // `node`. It gets a live-table entry again (Kill, Wait, Output work), and
  // is followed to its end in the background: a runtime-backed run's agent
  // channel is reopened and its Exit awaited (the agent keeps output and
  // Exit it could not deliver while no host was connected; what the earlier
  // berthd had already received is not repeated, and is lost); a disk-boot
  // instance's domain is watched until it powers off. The record then ends
  // with the real outcome and the VM is torn down as usual (release hook
  // included). Nothing is started or resumed. AlreadyExists if it is live.
  Status Adopt(Node& node, const ExecutionRecord& record);

  // Fast start. A function was created or updated (`previous`: its record
  // before an update, else null): its template is built in the background,
  // the previous version's template is deleted, its warm pool reconfigured.
  void FunctionChanged(Node& node, const FunctionRecord& fn, const images::ImageRecord& image,
                       const FunctionRecord* previous);
  // A function was deleted: its pool's VMs and its template go.
  void FunctionDeleted(Node& node, const FunctionRecord& fn);
  WarmPools& pools() { return *pools_; }
  // Tenant networks and filters on the nodes (Service sweeps them at start).
  Networks& networks() { return *networks_; }

 private:
  struct Live;
  Result<std::shared_ptr<Live>> Create(Node& node, const Launch& launch, ExecutionRecord* ex);
  // Runs a created execution to its end in the calling thread. When its
  // start failed and launch.move_failed_start gave another node, returns the
  // record (placing, not ended) with *moved_to set to that node: the caller
  // runs Execute again there.
  ExecutionRecord Execute(Node& node, const Launch& launch, ExecutionRecord ex, std::shared_ptr<Live> live,
                          Node** moved_to = nullptr);
  // A start that failed before its command ran (record placing or starting;
  // not lost, killed or detached): asks launch.move_failed_start for another
  // node. Given one, tears down what the failed node holds of it and puts
  // the same record back to placing there. Returns that node, or null.
  Node* MoveFailedStart(Node& failed_node, const Launch& launch, ExecutionRecord& ex, const std::string& error_code,
                        const std::string& error, Live& live, ExecutionTeardown& teardown);
  Result<hv::VolumeInfo> MakeSeed(Node& node, const ExecutionRecord& ex, const Launch& launch);
  Status Advance(ExecutionRecord& ex, ExecState to);
  // Runs the teardown (in the background with async_cleanup) and then
  // records its duration in the execution's timings.
  void Teardown(std::shared_ptr<ExecutionTeardown> teardown, ExecutionRecord ex);
  // Runs fn on a detached thread that the destructor waits for.
  void Background(std::function<void()> fn);
  // The execution ended or was detached: waiters wake, its live-table entry goes.
  void EndLive(const std::string& execution_id, Live& live);
  static bool IsDetached(Live& live);
  // The body of an adopted execution (see Adopt), in the calling thread.
  void FollowAdopted(Node& node, ExecutionRecord ex, std::shared_ptr<Live> live);

  Env* env_;
  Store* store_;
  ExecutorOptions options_;
  std::mutex cleanup_mu_;
  std::condition_variable cleanup_cv_;
  int pending_cleanups_ = 0;
  std::function<void(const std::string&)> release_hook_;
  std::function<void(const ExecutionRecord&)> started_end_hook_;
  std::mutex live_mu_;
  std::map<std::string, std::shared_ptr<Live>> live_;
  bool detaching_ = false;  // under live_mu_ (DetachAll)
  std::unique_ptr<WarmPools> pools_;
  std::unique_ptr<Networks> networks_;
};

}  // namespace berth::manager
