#include "manager/executor.h"

#include <spdlog/spdlog.h>

#include <csignal>
#include <filesystem>
#include <thread>

#include "common/ids.h"
#include "hypervisor/agent_client.h"
#include "hypervisor/domain_xml.h"
#include "manager/metrics.h"
#include "manager/templates.h"
#include "net/names.h"

namespace berth::manager {
namespace {

std::string Tail(const std::string& s, size_t n) { return s.size() > n ? s.substr(s.size() - n) : s; }

constexpr int64_t kForever = int64_t{10} * 365 * 24 * 3600 * 1000;  // "no limit" for host-side waits
constexpr int64_t kDomainPollMs = 250;

// A disk-boot guest has no agent to report its lease: libvirt's view of
// what dnsmasq leased to the domain's NICs goes on the record (and, through
// `publish`, into the domain's metadata) once there is any.
void RecordLeasedAddresses(Node& node, Store* store, ExecutionRecord& ex, const std::function<void()>& publish) {
  auto leased = node.hypervisor().GetDomainInterfaceAddresses(ex.domain);
  if (!leased.ok() || leased->empty()) return;
  for (const hv::InterfaceAddress& a : *leased) {
    if (!a.ip.empty()) ex.addresses.push_back(a.ip);
  }
  if (ex.addresses.empty()) return;
  spdlog::info("execution {}: leased {}", ex.id, ex.addresses.front());
  if (Status s = store->UpdateExecution(ex); !s.ok()) spdlog::warn("recording the address of {}: {}", ex.id, s.ToString());
  publish();
}

// A command whose agent channel broke: it went with its node when libvirt
// there no longer answers (the monitor marks the node down a little later).
bool ChannelBrokeWithNode(ExecState to, const std::string& error_code, Node& node) {
  return to == ExecState::kError && error_code == "agent_failed" && !node.hypervisor().GetNodeInfo().ok();
}

// Says what it is in `virsh list`: tenant and pid, plus a short id so that
// two berthds (own stores, own pid counters) never pick the same name.
std::string ExecutionDomainName(const ExecutionRecord& ex) {
  return std::string(hv::kDomainNamePrefix) + ex.tenant + "-" + std::to_string(ex.pid) + "-" + ex.id.substr(0, 6);
}

}  // namespace

// A process that has not ended: what Kill, Wait and Output need while the
// executing thread owns the record.
struct Executor::Live {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  int kill_signal = 0;       // first signal requested (0: none)
  bool domain_started = false;
  bool disk_boot = false;
  bool lost = false;         // its node went down
  bool detached = false;     // berthd is stopping: the VM goes on, the next start adopts it
  std::string domain;
  std::string overlay;       // the domain's vda volume in the node's pool (live fork copies it)
  int64_t pid = 0;
  Node* node = nullptr;
  hv::AgentClient* agent = nullptr;  // set while the command runs
  LiveOutput output;
  size_t max_output = 0;
};

std::string OverlayVolumeName(const std::string& execution_id) { return "ovl-" + execution_id + ".qcow2"; }
std::string SeedVolumeName(const std::string& execution_id) { return "seed-" + execution_id + ".iso"; }
std::string ConsoleLogVolumeName(const std::string& domain) { return domain + ".console.log"; }

Executor::Executor(Env* env, Store* store, ExecutorOptions options)
    : env_(env), store_(store), options_(std::move(options)) {
  WarmPoolOptions pool_options;
  pool_options.kernel_cmdline = options_.kernel_cmdline;
  pool_options.boot_timeout_ms = options_.boot_timeout_ms;
  networks_ = std::make_unique<Networks>(options_.networks);
  pool_options.networks = networks_.get();
  pool_options.dhcp_timeout_ms = options_.dhcp_timeout_ms;
  pools_ = std::make_unique<WarmPools>(env_, pool_options);
}

Executor::~Executor() {
  DetachAll();
  WaitForCleanups();
  pools_->Shutdown();
}

void Executor::DetachAll() {
  std::vector<std::shared_ptr<Live>> all;
  {
    std::lock_guard lock(live_mu_);
    detaching_ = true;
    for (auto& [id, live] : live_) all.push_back(live);
  }
  for (auto& live : all) {
    {
      std::lock_guard lock(live->mu);
      live->detached = true;
      // A command waiting on its agent channel returns at once; the guest's
      // agent keeps the output and Exit for the berthd that adopts it.
      if (live->agent) live->agent->Close();
    }
    live->cv.notify_all();
  }
  if (!all.empty()) spdlog::info("berthd stopping: {} live execution(s) go on without it", all.size());
  // Give their threads a moment to let go, so that a caller waiting on one
  // hears why (Invoke's 503) before the HTTP server stops. Bounded: one that
  // is still booting ends when its boot does.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  for (auto& live : all) {
    std::unique_lock lock(live->mu);
    live->cv.wait_until(lock, deadline, [&] { return live->done; });
  }
}

void Executor::FunctionChanged(Node& node, const FunctionRecord& fn, const images::ImageRecord& image,
                               const FunctionRecord* previous) {
  if (TemplateCache* cache = node.templates();
      cache && previous && (previous->version != fn.version || previous->spec.network != fn.spec.network)) {
    images::ImageRecord old_image;
    old_image.id = previous->spec.image;
    const std::string old_key = cache->KeyFor(*previous, old_image);
    if (Status s = cache->Invalidate(old_key); !s.ok()) {
      spdlog::warn("deleting the template of {} v{}: {}", previous->spec.name, previous->version, s.ToString());
    }
  }
  // Networked functions too: every pooled VM and template clone gets a MAC
  // and lease of its own (see WarmPools::MakeVm, TemplateCache::StartClone).
  pools_->Configure(node, fn, image);
}

void Executor::FunctionDeleted(Node& node, const FunctionRecord& fn) {
  pools_->Remove(fn.tenant, fn.spec.name);
  if (TemplateCache* cache = node.templates()) {
    images::ImageRecord image;
    image.id = fn.spec.image;
    if (Status s = cache->Invalidate(cache->KeyFor(fn, image)); !s.ok()) {
      spdlog::warn("deleting the template of {} v{}: {}", fn.spec.name, fn.version, s.ToString());
    }
  }
}

void Executor::WaitForCleanups() {
  std::unique_lock lock(cleanup_mu_);
  cleanup_cv_.wait(lock, [this] { return pending_cleanups_ == 0; });
}

void Executor::Background(std::function<void()> fn) {
  {
    std::lock_guard lock(cleanup_mu_);
    ++pending_cleanups_;
  }
  std::thread([this, fn = std::move(fn)]() {
    fn();
    std::lock_guard lock(cleanup_mu_);
    --pending_cleanups_;
    cleanup_cv_.notify_all();
  }).detach();
}

void Executor::Teardown(std::shared_ptr<ExecutionTeardown> teardown, ExecutionRecord ex) {
  auto run = [this, teardown, ex]() mutable {
    int64_t c0 = env_->MonotonicMs();
    teardown->Run();
    if (release_hook_) release_hook_(ex.id);
    ex.timings.cleanup_ms = env_->MonotonicMs() - c0;
    Metrics::Global().ObservePhase("cleanup", static_cast<double>(ex.timings.cleanup_ms) / 1000.0);
    if (Status s = store_->UpdateExecution(ex); !s.ok()) spdlog::warn("recording cleanup of {}: {}", ex.id, s.ToString());
  };
  // Nothing to remove (the VM went back to its pool): the claim goes now, so
  // the caller's next request finds the capacity it just gave back.
  if (!options_.async_cleanup || teardown->done()) {
    run();
    return;
  }
  Background(std::move(run));
}

ExecutionTeardown::~ExecutionTeardown() { Run(); }

void ExecutionTeardown::Run() {
  if (done_) return;
  done_ = true;
  auto log = [](const Status& s, const std::string& what) {
    if (!s.ok()) spdlog::warn("cleanup: {}: {}", what, s.ToString());
  };
  auto& hv = node_.hypervisor();
  if (started_) log(hv.DestroyDomain(domain_), "destroying domain " + domain_);
  if (overlay_created_) log(hv.DeleteVolume(node_.config().pool, overlay_), "deleting overlay " + overlay_);
  if (seed_created_) log(hv.DeleteVolume(node_.config().pool, seed_), "deleting seed " + seed_);
  if (started_) log(hv.DeleteVolume(node_.config().log_pool, console_), "deleting console log " + console_);
  for (auto& fn : on_destroyed_) fn();
  on_destroyed_.clear();
  if (reserved_memory_mib_) node_.Release(reserved_vcpus_, reserved_memory_mib_);
  reserved_memory_mib_ = 0;
}

Status Executor::Advance(ExecutionRecord& ex, ExecState to) {
  if (!CanTransition(ex.state, to)) {
    return Status::Internal(std::string("illegal execution transition ") + ExecStateName(ex.state) + " -> " +
                            ExecStateName(to));
  }
  ex.state = to;
  if (IsTerminal(to)) ex.finished_ms = env_->NowUnixMs();
  return store_->UpdateExecution(ex);
}

Result<std::shared_ptr<Executor::Live>> Executor::Create(Node& node, const Launch& launch, ExecutionRecord* out) {
  ExecutionRecord& ex = *out;
  ex.id = launch.id.empty() ? RandomHex(16) : launch.id;
  ex.function = launch.function;
  ex.function_version = launch.function_version;
  ex.tenant = launch.tenant;
  ex.image = launch.image.id;
  ex.node = node.name();
  ex.ppid = launch.ppid;
  ex.name = launch.name;
  ex.kind = launch.kind;
  ex.userdata = launch.userdata;
  ex.spec = launch.spec;
  ex.created_ms = env_->NowUnixMs();
  BERTH_ASSIGN_OR_RETURN(ex.pid, store_->NewPid());
  ex.domain = ExecutionDomainName(ex);
  auto live = std::make_shared<Live>();
  live->node = &node;
  live->domain = ex.domain;
  live->overlay = OverlayVolumeName(ex.id);
  live->pid = ex.pid;
  live->disk_boot = launch.spec.boot == BootMode::kDisk;
  live->max_output = options_.max_output_bytes;
  {
    std::lock_guard lock(live_mu_);
    if (detaching_) return Status::Unavailable("berthd is stopping; it starts nothing new");
    live_[ex.id] = live;
  }
  if (Status s = store_->InsertExecution(ex); !s.ok()) {
    std::lock_guard lock(live_mu_);
    live_.erase(ex.id);
    return s;
  }
  return live;
}

Result<ExecutionRecord> Executor::Run(Node& node, const FunctionRecord& fn, const images::ImageRecord& image,
                                      const InvokeRequest& request) {
  Launch launch;
  launch.tenant = fn.tenant;
  launch.function = fn.spec.name;
  launch.function_version = fn.version;
  launch.name = request.name.empty() ? fn.spec.name : request.name;
  launch.kind = ProcKind::kRun;
  launch.image = image;
  launch.spec.command = fn.spec.entrypoint;
  launch.spec.command.insert(launch.spec.command.end(), request.args.begin(), request.args.end());
  launch.spec.args = request.args;
  launch.spec.env = fn.spec.env;
  for (const auto& [k, v] : request.env) launch.spec.env[k] = v;
  launch.spec.stdin_data = request.stdin_data;
  launch.spec.vcpus = fn.spec.vcpus;
  launch.spec.memory_mib = fn.spec.memory_mib;
  launch.spec.timeout_ms = fn.spec.timeout_ms;
  launch.spec.cwd = fn.spec.cwd;
  BERTH_ASSIGN_OR_RETURN(launch.spec.network, FunctionNetworkPolicy(fn.spec));
  launch.ppid = request.ppid;
  launch.id = request.id;
  launch.queued_ms = request.queued_ms;
  ExecutionRecord ex;
  BERTH_ASSIGN_OR_RETURN(auto live, Create(node, launch, &ex));
  ex = Execute(node, launch, std::move(ex), live);
  if (ex.state == ExecState::kPending) return Status::Internal("execution " + ex.id + " could not be recorded");
  return ex;
}

Result<ExecutionRecord> Executor::Start(Node& node, Launch launch) {
  ExecutionRecord ex;
  BERTH_ASSIGN_OR_RETURN(auto live, Create(node, launch, &ex));
  ExecutionRecord first = ex;
  Background([this, &node, launch = std::move(launch), ex = std::move(ex), live]() mutable {
    Node* on = &node;
    ExecutionRecord ended;
    for (;;) {  // a failed start may move to another node (launch.move_failed_start)
      Node* moved_to = nullptr;
      ended = Execute(*on, launch, std::move(ex), live, &moved_to);
      if (!moved_to) break;
      on = moved_to;
      ex = std::move(ended);
    }
    // (Still running: detached at shutdown, ended by the berthd that adopts it.)
    if (started_end_hook_ && IsTerminal(ended.state)) started_end_hook_(ended);
  });
  return first;
}

Node* Executor::MoveFailedStart(Node& failed_node, const Launch& launch, ExecutionRecord& ex,
                                const std::string& error_code, const std::string& error, Live& live,
                                ExecutionTeardown& teardown) {
  if (!launch.move_failed_start || !launch.live_fork_of.empty()) return nullptr;
  // Running (or beyond): the command ran, so it is not moved.
  if (ex.state != ExecState::kPlacing && ex.state != ExecState::kStarting) return nullptr;
  {
    std::lock_guard lock(live.mu);
    if (live.lost || live.detached || live.kill_signal != 0) return nullptr;
  }
  {
    std::lock_guard lock(live_mu_);
    if (detaching_) return nullptr;
  }
  ExecutionRecord failed = ex;
  failed.error_code = error_code;
  failed.error = error;
  Node* next = launch.move_failed_start(failed);
  if (!next) return nullptr;
  spdlog::warn("execution {} (pid {}) could not start on node {} ({}: {}); moving it to node {}", ex.id, ex.pid,
               failed_node.name(), error_code, error.substr(0, error.find('\n')), next->name());
  // What the failed node holds of it goes now (its claim moved already).
  teardown.Run();
  ex.node = next->name();
  ex.domain = ExecutionDomainName(ex);  // (a warm-pool VM had its own name)
  ex.mac.clear();
  ex.addresses.clear();
  ex.console.clear();
  ex.console_truncated = false;
  ex.error_code.clear();
  ex.error.clear();
  ex.timings = PhaseTimings{};
  {
    std::lock_guard lock(live.mu);
    live.node = next;
    live.domain = ex.domain;
    live.overlay = OverlayVolumeName(ex.id);
    live.domain_started = false;
  }
  // starting -> placing (types.h); a record still placing only names its new node.
  Status recorded = ex.state == ExecState::kStarting ? Advance(ex, ExecState::kPlacing) : store_->UpdateExecution(ex);
  if (!recorded.ok()) spdlog::error("recording the move of {} to node {}: {}", ex.id, ex.node, recorded.ToString());
  return next;
}

Result<hv::VolumeInfo> Executor::MakeSeed(Node& node, const ExecutionRecord& ex, const Launch& launch) {
  // A cloud-init NoCloud seed: an ISO 9660 volume labelled "cidata" with
  // user-data and meta-data, built here and uploaded to the node.
  std::string dir = (std::filesystem::temp_directory_path() / ("berth-seed-" + ex.id)).string();
  BERTH_RETURN_IF_ERROR(env_->CreateDirs(dir + "/files", 0700));
  auto cleanup = [&] { (void)env_->RemoveTree(dir); };
  std::string meta = "instance-id: " + ex.id + "\nlocal-hostname: " + (ex.name.empty() ? ex.domain : ex.name) + "\n";
  Status s = env_->WriteFileAtomic(dir + "/files/user-data", launch.userdata, 0600);
  if (s.ok()) s = env_->WriteFileAtomic(dir + "/files/meta-data", meta, 0600);
  if (!s.ok()) {
    cleanup();
    return s;
  }
  auto run = env_->Run({options_.iso_tool, "-quiet", "-output", dir + "/seed.iso", "-volid", "cidata", "-joliet",
                        "-rock", dir + "/files/user-data", dir + "/files/meta-data"},
                       "", 60'000);
  if (!run.ok() || run->exit_code != 0) {
    cleanup();
    return Status::Unavailable("building the cloud-init seed failed: " +
                               (run.ok() ? Tail(run->err, 500) : run.status().message()));
  }
  auto vol = node.hypervisor().UploadVolume(node.config().pool, SeedVolumeName(ex.id), dir + "/seed.iso", "raw");
  cleanup();
  return vol;
}

ExecutionRecord Executor::Execute(Node& node, const Launch& launch, ExecutionRecord ex, std::shared_ptr<Live> live,
                                  Node** moved_to) {
  const int64_t t0 = env_->MonotonicMs();
  const int64_t created_unix = ex.created_ms;
  const bool disk_boot = launch.spec.boot == BootMode::kDisk;
  // A NIC on the tenant network (issue 8). Every VM gets its own MAC: warm
  // pool VMs and template clones theirs when made, live-forked children a
  // fresh one; the agent applies it and gets a lease (NetUp) after restores.
  const bool networked = launch.spec.network.mode != net::NetworkMode::kNone;
  const std::string overlay = OverlayVolumeName(ex.id);
  std::string console = ConsoleLogVolumeName(ex.domain);
  auto cleanup = std::make_shared<ExecutionTeardown>(node, ex.domain, overlay, console, SeedVolumeName(ex.id));
  std::optional<NetAttachment> attachment;  // the NIC this execution holds
  auto attach = [&]() -> Status {
    BERTH_ASSIGN_OR_RETURN(NetAttachment a, networks_->Acquire(node.hypervisor(), node.name(), ex.tenant,
                                                               launch.spec.network));
    a.domain = ex.domain;  // Release checks this domain is gone before its MAC is reused
    cleanup->OnDestroyed([this, &node, a] { networks_->Release(node.hypervisor(), a); });
    attachment = a;
    ex.mac = a.nic.mac;
    return Status::Ok();
  };
  // The guest's addresses into the domain's metadata (virsh dumpxml shows them).
  auto publish_addresses = [&] {
    hv::DomainMetadata md{ex.id, ex.function, ex.tenant, ex.pid, ex.ppid, launch.image.id, ex.created_ms};
    md.network = net::NetworkModeName(launch.spec.network.mode);
    md.addresses = ex.addresses;
    if (Status s = node.hypervisor().SetDomainMetadata(ex.domain, md); !s.ok()) {
      spdlog::warn("execution {}: recording its address in the domain metadata: {}", ex.id, s.ToString());
    }
  };
  auto kill_signal = [&] {
    std::lock_guard lock(live->mu);
    return live->kill_signal;
  };
  auto release_live = [&] { EndLive(ex.id, *live); };
  auto detached = [&] { return IsDetached(*live); };
  // berthd is stopping while the command runs: the record stays running and
  // the VM goes on; the next berthd adopts it (Reconcile). Nothing is torn down.
  auto detach = [&]() -> ExecutionRecord {
    spdlog::info("execution {} (pid {}) goes on in domain {}; the next berthd adopts it", ex.id, ex.pid, ex.domain);
    cleanup->Disarm();
    release_live();
    return ex;
  };

  // Ends the execution in `to` (terminal; a requested kill wins); the VM and
  // its volumes are torn down after the answer (Teardown), unless options
  // say otherwise.
  auto finish = [&](ExecState to, std::string error_code, std::string error) -> ExecutionRecord {
    bool lost = false;
    {
      std::lock_guard lock(live->mu);
      lost = live->lost;
    }
    if (!lost && kill_signal() == 0 && ChannelBrokeWithNode(to, error_code, node)) lost = true;
    if (lost) {
      to = ExecState::kLost;
      error_code = "node_lost";
      error = "node " + node.name() + " stopped answering while this execution ran";
    } else if (int sig = kill_signal(); sig != 0) {
      // A requested kill decides the outcome, however the command ended.
      to = ExecState::kKilled;
      if (ex.signal == 0) ex.signal = sig;
      error_code = "killed";
      error = std::string("killed by ") + (sig == SIGKILL ? "SIGKILL" : "SIGTERM");
    }
    if (cleanup->started() && (ex.kind == ProcKind::kInstance || to == ExecState::kError)) {
      // The console tells why a guest failed to boot or died; instances keep
      // theirs (before the domain starts there is no console to read).
      auto log = node.hypervisor().DownloadVolumeTail(node.config().log_pool, console, options_.max_console_bytes + 1);
      if (log.ok()) {
        ex.console_truncated = log->size() > options_.max_console_bytes;
        ex.console = Tail(*log, options_.max_console_bytes);
        if (to == ExecState::kError && !ex.console.empty()) error += "\n--- console (tail) ---\n" + Tail(*log, 2048);
      }
    }
    // A start that failed before the command ran may move to another node.
    if (Node* next = to == ExecState::kError && moved_to
                         ? MoveFailedStart(node, launch, ex, error_code, error, *live, *cleanup)
                         : nullptr) {
      *moved_to = next;
      return ex;  // placing on `next`; Start runs it there
    }
    ex.timings.total_ms = env_->MonotonicMs() - t0;
    {
      Metrics& m = Metrics::Global();
      m.CountExecution(ExecStateName(to));
      const PhaseTimings& t = ex.timings;
      m.ObservePhase("queue", t.queue_ms / 1000.0);
      m.ObservePhase("total", t.total_ms / 1000.0);
      if (t.disk_ready_at) m.ObservePhase("prepare", t.prepare_ms / 1000.0);
      if (t.agent_ready_at || (disk_boot && t.booted_at)) m.ObservePhase("boot", t.boot_ms / 1000.0);
      if (ex.state == ExecState::kRunning) m.ObservePhase("run", t.run_ms / 1000.0);
    }
    ex.error_code = std::move(error_code);
    ex.error = std::move(error);
    if (Status s = Advance(ex, to); !s.ok()) spdlog::error("recording end of {}: {}", ex.id, s.ToString());
    release_live();
    Teardown(std::move(cleanup), ex);
    return ex;
  };
  auto advance = [&](ExecState to) -> bool {
    if (Status s = Advance(ex, to); !s.ok()) {
      spdlog::error("recording {} of {}: {}", ExecStateName(to), ex.id, s.ToString());
      return false;
    }
    return true;
  };

  // Fast start applies to function runs on the berth runtime: a VM from the
  // function's warm pool, else a clone of its snapshot template, else a boot.
  std::optional<FunctionRecord> fn;
  if (launch.kind == ProcKind::kRun && !disk_boot && !launch.function.empty()) {
    auto found = store_->GetFunction(launch.tenant, launch.function);
    if (found.ok() && found->version == launch.function_version) fn = std::move(*found);
  }
  std::unique_ptr<hv::AgentClient> agent;
  std::optional<PooledVm> warm;
  if (fn && launch.live_fork_of.empty()) warm = pools_->Take(node, *fn, launch.image);
  if (warm) {
    // The pooled VM already holds its overlay, console log and capacity.
    ex.domain = warm->domain;
    console = warm->console_volume;
    cleanup = std::make_shared<ExecutionTeardown>(node, warm->domain, warm->overlay_volume, warm->console_volume);
    cleanup->mark_overlay_created();
    cleanup->mark_started();
    cleanup->reserved(warm->vcpus, warm->memory_mib);
    agent = std::move(warm->agent);
    if (warm->network) {  // its own MAC and lease, got when the pool made it
      cleanup->OnDestroyed([this, &node, a = *warm->network] { networks_->Release(node.hypervisor(), a); });
      attachment = warm->network;
      ex.mac = warm->network->nic.mac;
      ex.addresses = warm->addresses;
    }
    std::lock_guard lock(live->mu);
    live->domain = warm->domain;
    live->overlay = warm->overlay_volume;
    live->domain_started = true;
  }

  // Place: capacity on the node.
  // Waiting for admission (max_instances) counts as queueing too.
  ex.timings.queue_ms = std::max<int64_t>(launch.queued_ms, 0) + (env_->NowUnixMs() - created_unix);
  // (A start moved from another node is placing already.)
  if (ex.state != ExecState::kPlacing && !advance(ExecState::kPlacing)) {
    return finish(ExecState::kError, "store_failed", "could not record placing");
  }
  if (!warm) {
    Status reserved = node.Reserve(launch.spec.vcpus, launch.spec.memory_mib);
    // Idle pooled VMs and teardowns still in flight (answered calls whose VM
    // is going away) hold capacity that a call may have: free the former,
    // wait a little for the latter.
    for (int i = 0; !reserved.ok() && i < 50; ++i) {
      if (pools_->EvictIdleFor(node, launch.spec.vcpus, launch.spec.memory_mib) == 0) {
        std::unique_lock lock(cleanup_mu_);
        if (pending_cleanups_ == 0) break;
        cleanup_cv_.wait_for(lock, std::chrono::milliseconds(100));
      }
      reserved = node.Reserve(launch.spec.vcpus, launch.spec.memory_mib);
    }
    if (!reserved.ok()) return finish(ExecState::kError, "no_capacity", reserved.message());
    cleanup->reserved(launch.spec.vcpus, launch.spec.memory_mib);  // held until the VM is gone
  }
  ex.timings.placed_at = env_->NowUnixMs();
  if (kill_signal()) return finish(ExecState::kKilled, "", "");

  if (warm) {
    ex.timings.disk_ready_at = ex.timings.booted_at = ex.timings.agent_ready_at = env_->NowUnixMs();
    ex.timings.prepare_ms = env_->MonotonicMs() - t0;
    ex.timings.boot_ms = 0;
    ex.timings.start = "warm";
    if (!advance(ExecState::kStarting)) return finish(ExecState::kError, "store_failed", "could not record starting");
  } else if (!launch.live_fork_of.empty()) {
    // Live fork: the parent's memory and disk of now, not a boot.
    std::shared_ptr<Live> parent;
    {
      std::lock_guard lock(live_mu_);
      if (auto it = live_.find(launch.live_fork_of); it != live_.end()) parent = it->second;
    }
    LiveForkRequest req;
    bool parent_running = false;
    if (parent) {
      std::lock_guard lock(parent->mu);
      parent_running = !parent->done && parent->agent != nullptr && !parent->disk_boot && parent->node == &node;
      req.parent_domain = parent->domain;
      // (An adopted process's entry has no overlay recorded: it is the default name.)
      req.parent_overlay_volume = parent->overlay.empty() ? OverlayVolumeName(launch.live_fork_of) : parent->overlay;
      req.parent_pid = parent->pid;
    }
    if (!parent_running) {
      return finish(ExecState::kError, "fork_failed",
                    "the parent is not running a command on node " + node.name() + " any more");
    }
    if (!advance(ExecState::kStarting)) return finish(ExecState::kError, "store_failed", "could not record starting");
    req.child_execution_id = ex.id;
    req.child.domain = ex.domain;
    req.child.title = std::string("berth ") + ProcKindName(ex.kind) + " " + (ex.name.empty() ? ex.function : ex.name) +
                      " pid " + std::to_string(ex.pid) + " (tenant " + ex.tenant + ", live fork of pid " +
                      std::to_string(req.parent_pid) + ")";
    req.child.metadata = {ex.id, ex.function, ex.tenant, ex.pid, ex.ppid, launch.image.id, ex.created_ms};
    req.child.console_log_path = node.config().log_dir + "/" + console;
    if (networked) {
      // Not the parent's MAC: a NIC of its own, applied with a lease below.
      if (Status s = attach(); !s.ok()) return finish(ExecState::kError, "network_unavailable", s.message());
      req.child.nics = {attachment->nic};
      req.child.metadata.network = net::NetworkModeName(launch.spec.network.mode);
      req.net_up_mac = attachment->nic.mac;
      req.net_up_timeout_ms = options_.dhcp_timeout_ms;
    }
    req.child_overlay_volume = overlay;
    cleanup->mark_overlay_created();
    cleanup->mark_started();
    const int64_t b0 = env_->MonotonicMs();
    auto forked = LiveFork(env_, node, req);
    ex.timings.disk_ready_at = env_->NowUnixMs();
    ex.timings.prepare_ms = env_->MonotonicMs() - t0;
    if (!forked.ok()) return finish(ExecState::kError, "fork_failed", forked.status().message());
    agent = std::move(forked->agent);
    if (forked->lease) {
      ex.addresses = {forked->lease->ip};
      publish_addresses();
    }
    ex.timings.boot_ms = env_->MonotonicMs() - b0;
    ex.timings.start = "fork";
    ex.timings.booted_at = ex.timings.agent_ready_at = env_->NowUnixMs();
    spdlog::info("live fork of pid {} into pid {}: parent paused {} ms (save {} ms, disk {} ms), restore {} ms, hello {} ms",
                 req.parent_pid, ex.pid, forked->paused_ms, forked->save_ms, forked->disk_ms, forked->restore_ms,
                 forked->hello_ms);
    std::lock_guard lock(live->mu);
    live->domain_started = true;
    if (live->kill_signal == SIGKILL) (void)node.hypervisor().DestroyDomain(ex.domain);
  } else {

  // Disk: the image on the node, a copy-on-write overlay, a seed for disk boots.
  auto base = node.EnsureImage(launch.image);
  if (!base.ok()) return finish(ExecState::kError, "image_unavailable", base.status().message());
  Result<hv::VolumeInfo> ovl = node.hypervisor().CreateOverlay(node.config().pool, overlay, *base, 0);
  if (!ovl.ok()) return finish(ExecState::kError, "overlay_failed", ovl.status().message());
  cleanup->mark_overlay_created();
  std::string seed_path;
  if (disk_boot) {
    auto seed = MakeSeed(node, ex, launch);
    if (!seed.ok()) return finish(ExecState::kError, "seed_failed", seed.status().message());
    cleanup->mark_seed_created();
    seed_path = seed->path;
  }
  ex.timings.disk_ready_at = env_->NowUnixMs();
  ex.timings.prepare_ms = env_->MonotonicMs() - t0;
  if (kill_signal()) return finish(ExecState::kKilled, "", "");

  // Start.
  if (!advance(ExecState::kStarting)) return finish(ExecState::kError, "store_failed", "could not record starting");
  hv::DomainSpec spec;
  spec.name = ex.domain;
  spec.title = std::string("berth ") + ProcKindName(ex.kind) + " " + (ex.name.empty() ? ex.function : ex.name) +
               " pid " + std::to_string(ex.pid) + " (tenant " + ex.tenant + ")";
  spec.accel = node.accel();
  spec.vcpus = launch.spec.vcpus;
  spec.memory_mib = launch.spec.memory_mib;
  if (!disk_boot) {
    spec.kernel_path = node.kernel_path();
    spec.initrd_path = node.initrd_path();
    spec.cmdline = options_.kernel_cmdline;
  }
  spec.disks.push_back({ovl->path, "qcow2", "vda", false});
  if (disk_boot) spec.disks.push_back({seed_path, "raw", "vdb", true});
  spec.console_log_path = node.config().log_dir + "/" + console;
  spec.metadata = {ex.id, ex.function, ex.tenant, ex.pid, ex.ppid, launch.image.id, ex.created_ms};
  if (networked) {
    if (Status s = attach(); !s.ok()) return finish(ExecState::kError, "network_unavailable", s.message());
    spec.nics.push_back(attachment->nic);
    spec.metadata.network = net::NetworkModeName(launch.spec.network.mode);
  }
  if (TemplateCache* cache = fn && fn->spec.snapshot ? node.templates() : nullptr) {
    const std::string key = cache->KeyFor(*fn, launch.image);
    if (!cache->Lookup(key).ok()) {
      pools_->EnsureTemplate(node, *fn, launch.image);  // this call boots; later ones restore
    } else {
      CloneRequest req{spec.name, "", spec.title, spec.metadata, ovl->path, spec.console_log_path};
      req.nics = spec.nics;  // the clone's own MAC (the agent applies it at NetUp below)
      cleanup->mark_started();
      auto clone = cache->StartClone(key, req);
      if (clone.ok()) {
        agent = std::move(clone->agent);
        ex.timings.boot_ms = clone->copy_ms + clone->restore_ms + clone->hello_ms;
        ex.timings.start = "template";
        ex.timings.booted_at = ex.timings.agent_ready_at = env_->NowUnixMs();
        std::lock_guard lock(live->mu);
        live->domain_started = true;
        if (live->kill_signal == SIGKILL) (void)node.hypervisor().DestroyDomain(ex.domain);
      } else {
        spdlog::warn("execution {}: template start failed ({}); booting cold", ex.id, clone.status().ToString());
        // A damaged template was invalidated by StartClone: rebuild it now, not at the next call.
        pools_->EnsureTemplate(node, *fn, launch.image);
        // The failed clone may have written to the overlay: boot from a fresh one.
        (void)node.hypervisor().DeleteVolume(node.config().pool, overlay);
        ovl = node.hypervisor().CreateOverlay(node.config().pool, overlay, *base, 0);
        if (!ovl.ok()) return finish(ExecState::kError, "overlay_failed", ovl.status().message());
        spec.disks[0].path = ovl->path;
      }
    }
  }
  if (!agent) {
  const int64_t b0 = env_->MonotonicMs();
  cleanup->mark_started();  // a failed start may still leave a console log
  if (Status s = node.hypervisor().StartDomain(spec); !s.ok()) {
    return finish(ExecState::kError, "start_failed", s.message());
  }
  ex.timings.booted_at = env_->NowUnixMs();
  {
    std::lock_guard lock(live->mu);
    live->domain_started = true;
    // A KILL that came while the domain was being created acts now.
    if (live->kill_signal == SIGKILL) (void)node.hypervisor().DestroyDomain(ex.domain);
  }

  if (disk_boot) {
    // No agent: the instance runs until its guest powers off, a kill, or its timeout.
    ex.timings.boot_ms = env_->MonotonicMs() - b0;
    if (!advance(ExecState::kRunning)) return finish(ExecState::kError, "store_failed", "could not record running");
    const int64_t r0 = env_->MonotonicMs();
    for (;;) {
      if (attachment && ex.addresses.empty()) RecordLeasedAddresses(node, store_, ex, publish_addresses);
      auto state = node.hypervisor().GetDomainState(ex.domain);
      if (!state.ok() && state.status().code() == Code::kNotFound) break;  // transient domain gone: powered off
      if (state.ok() && (state->state == hv::DomainRunState::kShutoff || state->state == hv::DomainRunState::kCrashed)) {
        break;
      }
      if (launch.spec.timeout_ms > 0 && env_->MonotonicMs() - r0 > launch.spec.timeout_ms) {
        ex.timings.run_ms = env_->MonotonicMs() - r0;
        return finish(ExecState::kTimedOut, "timeout",
                      "stopped after exceeding the timeout of " + std::to_string(launch.spec.timeout_ms) + " ms");
      }
      {
        std::unique_lock lock(live->mu);
        if (live->lost) break;
        live->cv.wait_for(lock, std::chrono::milliseconds(kDomainPollMs));
      }
      if (detached()) return detach();
    }
    ex.timings.run_ms = env_->MonotonicMs() - r0;
    ex.duration_ms = ex.timings.run_ms;
    ex.exit_code = 0;  // the guest powered itself off
    return finish(ExecState::kSucceeded, "", "");
  }

  auto channel = node.hypervisor().OpenAgentChannel(spec.name, spec.agent_channel.name);
  if (!channel.ok()) return finish(ExecState::kError, "agent_unreachable", channel.status().message());
  agent = std::make_unique<hv::AgentClient>(std::move(*channel));
  auto hello = agent->Hello(options_.boot_timeout_ms);
  if (!hello.ok()) {
    const char* code = hello.status().code() == Code::kDeadlineExceeded ? "boot_timeout" : "agent_unreachable";
    return finish(ExecState::kError, code, hello.status().message());
  }
  ex.timings.boot_ms = env_->MonotonicMs() - b0;
  ex.timings.agent_ready_at = env_->NowUnixMs();
  }  // cold boot
  }  // not warm
  if (attachment && ex.addresses.empty()) {
    // Cold boot, template clone or live fork: the guest asks libvirt's
    // dnsmasq for a lease (a restored guest first takes its own MAC); its
    // address goes into the record and the domain's metadata. Counted as
    // boot time.
    const int64_t n0 = env_->MonotonicMs();
    auto lease = agent->NetUp(ex.mac, options_.dhcp_timeout_ms);
    if (!lease.ok()) return finish(ExecState::kError, "network_unavailable", "guest network: " + lease.status().message());
    spdlog::info("execution {}: {} {}/{} via {} after {} ms (in the guest {} ms){}", ex.id, lease->interface, lease->ip,
                 lease->prefix_length, lease->gateway, env_->MonotonicMs() - n0, lease->took_ms,
                 lease->previous_mac.empty() ? "" : "; MAC was " + lease->previous_mac);
    ex.addresses = {lease->ip};
    publish_addresses();
    ex.timings.boot_ms += env_->MonotonicMs() - n0;
    ex.timings.agent_ready_at = env_->NowUnixMs();
  } else if (attachment && warm) {
    publish_addresses();  // the pooled VM's metadata names the pool, not this execution
  }
  Metrics::Global().CountStart(ex.timings.start);

  // Run.
  if (!advance(ExecState::kRunning)) return finish(ExecState::kError, "store_failed", "could not record running");
  agent::ExecMsg msg;
  msg.argv = launch.spec.command;
  msg.env = launch.spec.env;
  msg.env["BERTH_EXECUTION_ID"] = ex.id;
  msg.env["BERTH_PID"] = std::to_string(ex.pid);
  msg.env["BERTH_PPID"] = std::to_string(ex.ppid);
  if (!launch.userdata.empty()) msg.env["BERTH_USERDATA"] = launch.userdata;
  msg.cwd = launch.spec.cwd;
  msg.timeout_ms = launch.spec.timeout_ms;
  bool killed_before_exec = false, stopping = false;
  {
    std::lock_guard lock(live->mu);
    killed_before_exec = live->kill_signal != 0;
    stopping = live->detached;
    // From here on Kill signals (and DetachAll closes) through the agent.
    if (!killed_before_exec && !stopping) live->agent = agent.get();
  }
  if (killed_before_exec) {
    agent->Close();
    return finish(ExecState::kKilled, "", "");
  }
  if (stopping) {
    // The command never started: nothing to hand over.
    agent->Close();
    return finish(ExecState::kLost, "manager_stopped", "berthd stopped before the command started");
  }
  const int64_t host_timeout = launch.spec.timeout_ms > 0 ? launch.spec.timeout_ms + options_.host_grace_ms : kForever;
  const int64_t r0 = env_->MonotonicMs();
  auto on_output = [&live](agent::MsgType type, const std::string& bytes) {
    std::lock_guard lock(live->mu);
    std::string& sink = type == agent::MsgType::kStdout ? live->output.stdout_data : live->output.stderr_data;
    size_t room = sink.size() < live->max_output ? live->max_output - sink.size() : 0;
    if (bytes.size() > room) live->output.truncated = true;
    sink.append(bytes, 0, std::min(room, bytes.size()));
  };
  // A live-forked child follows its copy of the parent's command.
  auto outcome = launch.live_fork_of.empty()
                     ? agent->Exec(msg, launch.spec.stdin_data, options_.max_output_bytes, host_timeout, on_output)
                     : agent->Attach(options_.max_output_bytes, host_timeout, on_output);
  ex.timings.run_ms = env_->MonotonicMs() - r0;
  {
    std::lock_guard lock(live->mu);
    live->agent = nullptr;
  }
  // keep_alive: the VM of a successful run goes back to the function's pool
  // (its agent stays connected) instead of being torn down.
  const bool reusable = fn && fn->spec.keep_alive && launch.live_fork_of.empty() && outcome.ok() &&
                        outcome->exit.error_code.empty() && !outcome->exit.timed_out && outcome->exit.signal == 0 &&
                        outcome->exit.exit_code == 0 && kill_signal() == 0;
  if (!reusable) agent->Close();
  if (!outcome.ok() && detached()) return detach();
  if (!outcome.ok()) {
    if (outcome.status().code() == Code::kDeadlineExceeded) {
      // The agent did not enforce the timeout (hung guest): the host does.
      ex.duration_ms = ex.timings.run_ms;
      return finish(ExecState::kTimedOut, "timeout",
                    "killed by the host after " + std::to_string(ex.timings.run_ms) + " ms (timeout " +
                        std::to_string(launch.spec.timeout_ms) + " ms)");
    }
    return finish(ExecState::kError, "agent_failed", outcome.status().message());
  }
  ex.stdout_data = std::move(outcome->stdout_data);
  ex.stderr_data = std::move(outcome->stderr_data);
  ex.output_truncated = outcome->truncated;
  ex.duration_ms = outcome->exit.duration_ms;
  ex.signal = outcome->exit.signal;
  if (!outcome->exit.error_code.empty()) {
    return finish(ExecState::kError, outcome->exit.error_code, outcome->exit.error);
  }
  ex.exit_code = outcome->exit.exit_code;
  if (outcome->exit.timed_out) {
    return finish(ExecState::kTimedOut, "timeout",
                  "killed after exceeding the timeout of " + std::to_string(launch.spec.timeout_ms) + " ms");
  }
  if (reusable) {
    PooledVm vm;
    vm.domain = ex.domain;
    {
      std::lock_guard lock(live->mu);
      vm.overlay_volume = live->overlay;
    }
    vm.console_volume = console;
    vm.agent = std::move(agent);
    vm.made_by = "reuse";
    vm.function_version = fn->version;
    vm.vcpus = launch.spec.vcpus;
    vm.memory_mib = launch.spec.memory_mib;
    vm.network = attachment;  // keeps its MAC and lease (the pool releases the network with the VM)
    vm.addresses = ex.addresses;
    if (pools_->GiveBack(node, *fn, launch.image, vm)) {
      cleanup->Disarm();  // the pool owns the VM, its volumes and its capacity now
    } else {
      vm.agent->Close();
    }
  }
  return finish(ex.exit_code == 0 ? ExecState::kSucceeded : ExecState::kFailed, "", "");
}

Status Executor::Kill(const std::string& execution_id, int signal, int64_t grace_ms) {
  std::shared_ptr<Live> live;
  {
    std::lock_guard lock(live_mu_);
    auto it = live_.find(execution_id);
    if (it == live_.end()) return Status::FailedPrecondition("process has already exited", "pid");
    live = it->second;
  }
  bool destroy_now = false, term_agent = false, term_acpi = false;
  Node* on = nullptr;  // read under the lock: a failed start may move the process to another node
  {
    std::lock_guard lock(live->mu);
    if (live->done) return Status::FailedPrecondition("process has already exited", "pid");
    on = live->node;
    if (live->kill_signal == 0 || signal == SIGKILL) live->kill_signal = signal;
    if (signal == SIGKILL) {
      destroy_now = live->domain_started;
    } else if (live->agent) {
      term_agent = true;
      // Safe under live->mu: the executing thread clears `agent` under it
      // before the client goes away.
      if (Status s = live->agent->Kill(SIGTERM); !s.ok()) destroy_now = live->domain_started;
    } else if (live->domain_started) {
      term_acpi = true;
    }
  }
  live->cv.notify_all();
  Node& node = *on;
  if (destroy_now) return node.hypervisor().DestroyDomain(live->domain);
  if (term_acpi) (void)node.hypervisor().ShutdownDomain(live->domain);
  if (signal != SIGKILL) {
    // Grace period: whatever is still there afterwards is destroyed.
    Background([live, grace_ms, &node]() {
      std::unique_lock lock(live->mu);
      if (live->cv.wait_for(lock, std::chrono::milliseconds(grace_ms), [&] { return live->done; })) return;
      live->kill_signal = SIGKILL;
      bool started = live->domain_started;
      std::string domain = live->domain;
      lock.unlock();
      if (started) (void)node.hypervisor().DestroyDomain(domain);
    });
  }
  (void)term_agent;
  return Status::Ok();
}

Status Executor::Wait(const std::string& execution_id, int64_t timeout_ms) {
  std::shared_ptr<Live> live;
  {
    std::lock_guard lock(live_mu_);
    auto it = live_.find(execution_id);
    if (it == live_.end()) return Status::Ok();
    live = it->second;
  }
  std::unique_lock lock(live->mu);
  if (!live->cv.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return live->done; })) {
    return Status::DeadlineExceeded("process still running after " + std::to_string(timeout_ms) + " ms");
  }
  return Status::Ok();
}

Result<LiveOutput> Executor::Output(const std::string& execution_id) {
  std::shared_ptr<Live> live;
  {
    std::lock_guard lock(live_mu_);
    auto it = live_.find(execution_id);
    if (it == live_.end()) return Status::NotFound("process is not live");
    live = it->second;
  }
  std::lock_guard lock(live->mu);
  return live->output;
}

void Executor::EndLive(const std::string& execution_id, Live& live) {
  {
    std::lock_guard lock(live.mu);
    live.done = true;
    live.agent = nullptr;
  }
  live.cv.notify_all();
  std::lock_guard lock(live_mu_);
  live_.erase(execution_id);
}

bool Executor::IsDetached(Live& live) {
  std::lock_guard lock(live.mu);
  return live.detached;
}

void Executor::MarkNodeLost(const std::string& node_name) {
  std::vector<std::shared_ptr<Live>> on_node;
  {
    std::lock_guard lock(live_mu_);
    for (auto& [id, live] : live_) {
      std::lock_guard node_lock(live->mu);  // (a moved start changes its node)
      if (live->node && live->node->name() == node_name) on_node.push_back(live);
    }
  }
  for (auto& live : on_node) {
    {
      std::lock_guard lock(live->mu);
      live->lost = true;
      // A command waiting on the agent channel notices when the channel
      // dies with the node; make sure it does not wait forever.
      if (live->agent) live->agent->Close();  // the channel is thread-safe; Receive returns at once
    }
    live->cv.notify_all();
  }
}

bool Executor::IsLive(const std::string& execution_id) {
  std::lock_guard lock(live_mu_);
  return live_.count(execution_id) > 0;
}


// ---- Adoption after a berthd restart ----

Status Executor::Adopt(Node& node, const ExecutionRecord& record) {
  if (record.state != ExecState::kRunning) {
    return Status::FailedPrecondition(std::string("only running executions are adopted (this one is ") +
                                      ExecStateName(record.state) + ")");
  }
  auto live = std::make_shared<Live>();
  live->node = &node;
  live->domain = record.domain;
  live->disk_boot = record.spec.boot == BootMode::kDisk;
  live->domain_started = true;
  live->max_output = options_.max_output_bytes;
  {
    std::lock_guard lock(live_mu_);
    if (detaching_) return Status::Unavailable("berthd is stopping");
    if (live_.count(record.id)) return Status::AlreadyExists("execution " + record.id + " is already live");
    live_[record.id] = live;
  }
  spdlog::info("adopting execution {} (pid {}, domain {} on node {})", record.id, record.pid, record.domain,
               node.name());
  Background([this, &node, record, live] { FollowAdopted(node, record, live); });
  return Status::Ok();
}

void Executor::FollowAdopted(Node& node, ExecutionRecord ex, std::shared_ptr<Live> live) {
  constexpr int64_t kReattachHelloMs = 30'000;
  const bool disk_boot = live->disk_boot;
  const std::string console = ConsoleLogVolumeName(ex.domain);
  auto cleanup =
      std::make_shared<ExecutionTeardown>(node, ex.domain, OverlayVolumeName(ex.id), console, SeedVolumeName(ex.id));
  cleanup->mark_started();
  cleanup->mark_overlay_created();
  if (disk_boot) cleanup->mark_seed_created();
  // Its NIC: the network references the old berthd held died with it. Taken
  // again, so the end of this execution releases the network (not only the
  // next sweep).
  bool networked = false;
  if (auto xml = node.hypervisor().GetDomainXml(ex.domain); xml.ok()) {
    if (auto nics = hv::ParseDomainNics(*xml); nics.ok()) {
      for (const hv::NicSpec& nic : *nics) {
        if (nic.network.rfind(net::kNetworkNamePrefix, 0) != 0) continue;
        NetAttachment a = networks_->Adopt(node.name(), nic);
        a.domain = ex.domain;
        cleanup->OnDestroyed([this, &node, a] { networks_->Release(node.hypervisor(), a); });
        networked = true;
      }
    }
  }
  auto publish_addresses = [&] {
    hv::DomainMetadata md{ex.id, ex.function, ex.tenant, ex.pid, ex.ppid, ex.image, ex.created_ms};
    md.network = net::NetworkModeName(ex.spec.network.mode);
    md.addresses = ex.addresses;
    if (Status s = node.hypervisor().SetDomainMetadata(ex.domain, md); !s.ok()) {
      spdlog::warn("execution {}: recording its address in the domain metadata: {}", ex.id, s.ToString());
    }
  };
  // The VM holds its memory and vCPUs: account for them like a placed one.
  if (node.Reserve(ex.spec.vcpus, ex.spec.memory_mib).ok()) cleanup->reserved(ex.spec.vcpus, ex.spec.memory_mib);
  // How long it has run already (the guest's clock goes on without us).
  const int64_t started_unix = ex.timings.agent_ready_at ? ex.timings.agent_ready_at
                               : ex.timings.booted_at    ? ex.timings.booted_at
                                                         : ex.created_ms;
  const int64_t ran_ms = std::max<int64_t>(0, env_->NowUnixMs() - started_unix);
  const int64_t r0 = env_->MonotonicMs();

  auto detached = [&] { return IsDetached(*live); };
  // berthd is stopping: the record stays running for the next berthd.
  auto detach = [&] {
    spdlog::info("adopted execution {} (pid {}) goes on in domain {}", ex.id, ex.pid, ex.domain);
    cleanup->Disarm();
    EndLive(ex.id, *live);
  };
  auto finish = [&](ExecState to, std::string error_code, std::string error) {
    bool lost = false;
    int sig = 0;
    {
      std::lock_guard lock(live->mu);
      lost = live->lost;
      sig = live->kill_signal;
    }
    if (!lost && sig == 0 && ChannelBrokeWithNode(to, error_code, node)) lost = true;
    if (lost) {
      to = ExecState::kLost;
      error_code = "node_lost";
      error = "node " + node.name() + " stopped answering while this execution ran";
    } else if (sig != 0) {
      to = ExecState::kKilled;
      if (ex.signal == 0) ex.signal = sig;
      error_code = "killed";
      error = std::string("killed by ") + (sig == SIGKILL ? "SIGKILL" : "SIGTERM");
    }
    if (ex.kind == ProcKind::kInstance || to == ExecState::kError) {
      auto log = node.hypervisor().DownloadVolumeTail(node.config().log_pool, console, options_.max_console_bytes + 1);
      if (log.ok()) {
        ex.console_truncated = log->size() > options_.max_console_bytes;
        ex.console = Tail(*log, options_.max_console_bytes);
      }
    }
    ex.timings.run_ms += env_->MonotonicMs() - r0;
    ex.timings.total_ms = env_->NowUnixMs() - ex.created_ms;
    ex.error_code = std::move(error_code);
    ex.error = std::move(error);
    Metrics::Global().CountExecution(ExecStateName(to));
    if (Status s = Advance(ex, to); !s.ok()) spdlog::error("recording end of adopted {}: {}", ex.id, s.ToString());
    // Its end is news like any other (lifecycle events): the berthd that
    // started it is gone.
    if (started_end_hook_) started_end_hook_(ex);
    EndLive(ex.id, *live);
    Teardown(std::move(cleanup), ex);
  };

  if (disk_boot) {
    for (;;) {
      if (networked && ex.addresses.empty()) RecordLeasedAddresses(node, store_, ex, publish_addresses);
      auto state = node.hypervisor().GetDomainState(ex.domain);
      if (!state.ok() && state.status().code() == Code::kNotFound) break;
      if (state.ok() && (state->state == hv::DomainRunState::kShutoff || state->state == hv::DomainRunState::kCrashed)) {
        break;
      }
      if (ex.spec.timeout_ms > 0 && ran_ms + env_->MonotonicMs() - r0 > ex.spec.timeout_ms) {
        return finish(ExecState::kTimedOut, "timeout",
                      "stopped after exceeding the timeout of " + std::to_string(ex.spec.timeout_ms) + " ms");
      }
      {
        std::unique_lock lock(live->mu);
        if (live->lost) break;
        live->cv.wait_for(lock, std::chrono::milliseconds(kDomainPollMs));
      }
      if (detached()) return detach();
    }
    ex.duration_ms = ran_ms + env_->MonotonicMs() - r0;
    ex.exit_code = 0;  // the guest powered itself off
    return finish(ExecState::kSucceeded, "", "");
  }

  auto channel = node.hypervisor().OpenAgentChannel(ex.domain, agent::kPortName);
  if (!channel.ok()) {
    return finish(ExecState::kError, "agent_unreachable",
                  "re-attaching after a berthd restart: " + channel.status().message());
  }
  hv::AgentClient agent(std::move(*channel));
  auto hello = agent.Hello(kReattachHelloMs);
  if (!hello.ok()) {
    return finish(ExecState::kError, "agent_unreachable", "re-attaching after a berthd restart: " + hello.status().message());
  }
  if (!hello->exec_pending) {
    // The command ended and its Exit went to the berthd that crashed.
    agent.Close();
    return finish(ExecState::kLost, "exit_status_lost",
                  "the command ended while berthd was restarting and its exit status was not kept");
  }
  {
    std::lock_guard lock(live->mu);
    if (live->kill_signal == 0 && !live->detached) live->agent = &agent;
  }
  if (detached()) {
    agent.Close();
    return detach();
  }
  if (int sig = [&] { std::lock_guard lock(live->mu); return live->kill_signal; }(); sig != 0) {
    if (sig == SIGKILL) (void)node.hypervisor().DestroyDomain(ex.domain);
    else (void)agent.Kill(sig);
  }
  const int64_t host_timeout = ex.spec.timeout_ms > 0
                                   ? std::max<int64_t>(ex.spec.timeout_ms - ran_ms, 0) + options_.host_grace_ms
                                   : kForever;
  auto on_output = [&live](agent::MsgType type, const std::string& bytes) {
    std::lock_guard lock(live->mu);
    std::string& sink = type == agent::MsgType::kStdout ? live->output.stdout_data : live->output.stderr_data;
    size_t room = sink.size() < live->max_output ? live->max_output - sink.size() : 0;
    if (bytes.size() > room) live->output.truncated = true;
    sink.append(bytes, 0, std::min(room, bytes.size()));
  };
  auto outcome = agent.Attach(options_.max_output_bytes, host_timeout, on_output);
  {
    std::lock_guard lock(live->mu);
    live->agent = nullptr;
  }
  agent.Close();
  if (!outcome.ok() && detached()) return detach();
  if (!outcome.ok()) {
    if (outcome.status().code() == Code::kDeadlineExceeded) {
      ex.duration_ms = ran_ms + env_->MonotonicMs() - r0;
      return finish(ExecState::kTimedOut, "timeout",
                    "killed by the host after the timeout of " + std::to_string(ex.spec.timeout_ms) + " ms");
    }
    return finish(ExecState::kError, "agent_failed", outcome.status().message());
  }
  // Only output produced (or still queued) after the restart reaches us.
  ex.stdout_data = std::move(outcome->stdout_data);
  ex.stderr_data = std::move(outcome->stderr_data);
  ex.output_truncated = outcome->truncated;
  ex.duration_ms = outcome->exit.duration_ms;
  ex.signal = outcome->exit.signal;
  if (!outcome->exit.error_code.empty()) return finish(ExecState::kError, outcome->exit.error_code, outcome->exit.error);
  ex.exit_code = outcome->exit.exit_code;
  if (outcome->exit.timed_out) {
    return finish(ExecState::kTimedOut, "timeout",
                  "killed after exceeding the timeout of " + std::to_string(ex.spec.timeout_ms) + " ms");
  }
  return finish(ex.exit_code == 0 ? ExecState::kSucceeded : ExecState::kFailed, "", "");
}

}  // namespace berth::manager
