#include "manager/warm_pool.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "common/ids.h"
#include "manager/executor.h"
#include "manager/metrics.h"
#include "manager/templates.h"

namespace berth::manager {
namespace {

std::string PoolKey(const std::string& tenant, const std::string& function) { return tenant + "/" + function; }

// Size a pool refills to while it is active (see warm_pool.h).
size_t Target(const FunctionSpec& spec) {
  if (spec.max_warm == 0) return 0;
  return std::min<size_t>(spec.max_warm, std::max<uint32_t>(spec.min_warm, 1));
}

// Most idle VMs an active pool keeps: max_warm, and at least the one VM a
// keep_alive function gives back after a run.
size_t KeepLimit(const FunctionSpec& spec) {
  return std::max<size_t>(spec.max_warm, spec.keep_alive ? 1 : 0);
}

}  // namespace

std::string PoolDomainName(const std::string& function, const std::string& short_id) {
  return std::string(kPoolDomainPrefix) + function + "-" + short_id;
}
std::string PoolOverlayVolumeName(const std::string& short_id) { return "povl-" + short_id + ".qcow2"; }

void RemoveStalePoolVms(Node& node) {
  auto& hv = node.hypervisor();
  const std::string& pool = node.config().pool;
  auto volumes = hv.ListVolumes(pool);
  if (!volumes.ok()) {
    spdlog::warn("pool reconcile: listing volumes of {}: {}", pool, volumes.status().ToString());
    return;
  }
  std::set<std::string> overlays;
  for (const auto& v : *volumes) {
    if (v.name.rfind("povl-", 0) == 0 && v.name.ends_with(".qcow2")) overlays.insert(v.name);
  }
  RemoveStaleDomains(node, kPoolDomainPrefix, overlays, [&](const std::string& domain) {
    std::vector<std::pair<std::string, std::string>> vols;
    size_t dash = domain.rfind('-');
    if (dash == std::string::npos) return vols;
    vols.push_back({pool, PoolOverlayVolumeName(domain.substr(dash + 1))});
    vols.push_back({node.config().log_pool, ConsoleLogVolumeName(domain)});
    return vols;
  });
  for (const auto& name : overlays) (void)hv.DeleteVolume(pool, name);
}

ScalingPolicy ScalingPolicyOf(const FunctionSpec& spec) {
  ScalingPolicy p;
  p.target_concurrency = std::max<uint32_t>(spec.target_concurrency, 1);
  p.max_instances = spec.max_instances;
  p.max_queued = spec.max_queued;
  p.queue_timeout_ms = spec.queue_timeout_ms;
  p.min_warm = spec.min_warm;
  p.max_warm = spec.max_warm;
  p.idle_timeout_ms = spec.idle_timeout_ms;
  return p;
}

size_t DesiredWarm(const ScalingPolicy& policy, const ScalingObservation& seen) {
  if (policy.max_warm == 0 || seen.idle_ms > policy.idle_timeout_ms) return 0;
  const double demand = std::max(seen.avg_concurrency, static_cast<double>(seen.in_flight + seen.queued));
  const uint32_t per_instance = std::max<uint32_t>(policy.target_concurrency, 1);
  // A tiny epsilon keeps float noise (e.g. 2.0000001) from asking for one more.
  size_t instances = static_cast<size_t>(std::ceil(demand / per_instance - 1e-9));
  size_t warm = std::clamp<size_t>(instances, policy.min_warm, policy.max_warm);
  if (policy.max_instances > 0) {
    const size_t room = policy.max_instances > seen.in_flight ? policy.max_instances - seen.in_flight : 0;
    warm = std::min(warm, room);
  }
  return warm;
}

Autoscaler::Autoscaler(Env* env, int64_t window_ms) : env_(env), window_ms_(window_ms) {}

Autoscaler::Ticket& Autoscaler::Ticket::operator=(Ticket&& other) noexcept {
  if (this != &other) {
    Release();
    owner_ = std::exchange(other.owner_, nullptr);
    key_ = std::move(other.key_);
    queued_ms_ = other.queued_ms_;
  }
  return *this;
}

void Autoscaler::Ticket::Release() {
  if (owner_) std::exchange(owner_, nullptr)->End(key_);
}

void Autoscaler::RecordLocked(Fn& fn, int64_t now) {
  fn.history.emplace_back(now, fn.in_flight);
  fn.last_activity_ms = now;
  // Keep one entry at or before the window's start: it says what held then.
  while (fn.history.size() >= 2 && fn.history[1].first <= now - window_ms_) fn.history.pop_front();
}

ScalingObservation Autoscaler::ObserveLocked(Fn& fn, int64_t now) {
  ScalingObservation seen;
  seen.in_flight = fn.in_flight;
  seen.queued = fn.queue.size();
  seen.idle_ms = fn.in_flight > 0 || !fn.queue.empty() ? 0 : now - fn.last_activity_ms;
  const int64_t start = now - window_ms_;
  double area = 0;
  for (size_t i = 0; i < fn.history.size(); ++i) {
    const int64_t from = std::max(fn.history[i].first, start);
    const int64_t to = i + 1 < fn.history.size() ? fn.history[i + 1].first : now;
    if (to > from) area += static_cast<double>(to - from) * fn.history[i].second;
  }
  seen.avg_concurrency = window_ms_ > 0 ? area / static_cast<double>(window_ms_) : fn.in_flight;
  return seen;
}

ScalingObservation Autoscaler::Observe(const std::string& key) {
  std::lock_guard lock(mu_);
  auto it = fns_.find(key);
  if (it == fns_.end()) return {};
  return ObserveLocked(it->second, env_->MonotonicMs());
}

Result<Autoscaler::Ticket> Autoscaler::Admit(const std::string& key, const ScalingPolicy& policy) {
  std::unique_lock lock(mu_);
  Fn& fn = fns_[key];
  const int64_t t0 = env_->MonotonicMs();
  auto has_room = [&] { return policy.max_instances == 0 || fn.in_flight < policy.max_instances; };
  if (!has_room() || !fn.queue.empty()) {
    if (fn.queue.size() >= policy.max_queued) {
      return Status(Code::kResourceExhausted,
                    "function " + key + " runs " + std::to_string(fn.in_flight) + " calls, its max_instances, and " +
                        std::to_string(fn.queue.size()) + " more are queued (max_queued " +
                        std::to_string(policy.max_queued) + ")",
                    "max_instances");
    }
    const uint64_t me = next_waiter_++;
    fn.queue.push_back(me);
    fn.last_activity_ms = t0;
    const bool admitted = cv_.wait_for(lock, std::chrono::milliseconds(policy.queue_timeout_ms),
                                       [&] { return fn.queue.front() == me && has_room(); });
    fn.queue.erase(std::find(fn.queue.begin(), fn.queue.end(), me));
    if (!admitted) {
      cv_.notify_all();  // the next in line may go now
      return Status(Code::kResourceExhausted,
                    "function " + key + " stayed at its max_instances (" + std::to_string(policy.max_instances) +
                        ") for the whole queue timeout of " + std::to_string(policy.queue_timeout_ms) + " ms",
                    "max_instances");
    }
  }
  ++fn.in_flight;
  RecordLocked(fn, env_->MonotonicMs());
  cv_.notify_all();  // the next in line re-checks for room
  Ticket t;
  t.owner_ = this;
  t.key_ = key;
  t.queued_ms_ = env_->MonotonicMs() - t0;
  return t;
}

void Autoscaler::End(const std::string& key) {
  {
    std::lock_guard lock(mu_);
    auto it = fns_.find(key);
    if (it == fns_.end() || it->second.in_flight == 0) return;
    --it->second.in_flight;
    RecordLocked(it->second, env_->MonotonicMs());
  }
  cv_.notify_all();
}

WarmPools::WarmPools(Env* env, WarmPoolOptions options) : env_(env), options_(std::move(options)), autoscaler_(env) {
  loop_ = std::thread([this] { Loop(); });
}

WarmPools::~WarmPools() { Shutdown(); }

void WarmPools::Spawn(std::function<void()> fn) {
  ++threads_;  // under mu_
  std::thread([this, fn = std::move(fn)] {
    fn();
    std::lock_guard lock(mu_);
    --threads_;
    threads_cv_.notify_all();
  }).detach();
}

void WarmPools::Shutdown() {
  {
    std::unique_lock lock(mu_);
    if (stopping_ && !loop_.joinable()) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (loop_.joinable()) loop_.join();
  std::vector<std::pair<Node*, PooledVm>> doomed;
  {
    std::unique_lock lock(mu_);
    threads_cv_.wait(lock, [this] { return threads_ == 0; });
    for (auto& [key, pool] : pools_) {
      for (auto& vm : pool.idle) doomed.emplace_back(pool.node, std::move(vm));
      pool.idle.clear();
      Metrics::Global().RemovePool(pool.fn.tenant, pool.fn.spec.name);
    }
    pools_.clear();
  }
  for (auto& [node, vm] : doomed) Destroy(*node, vm);
}

void WarmPools::PublishLocked(const Pool& pool) {
  Metrics::Global().SetPooledVms(pool.fn.tenant, pool.fn.spec.name, static_cast<int64_t>(pool.idle.size()));
}

void WarmPools::Configure(Node& node, const FunctionRecord& fn, const images::ImageRecord& image) {
  std::vector<PooledVm> doomed;
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    Pool& pool = pools_[PoolKey(fn.tenant, fn.spec.name)];
    pool.node = &node;
    std::deque<PooledVm> keep;
    for (auto& vm : pool.idle) {
      if (vm.function_version != fn.version || fn.spec.max_warm == 0) {
        doomed.push_back(std::move(vm));
      } else {
        keep.push_back(std::move(vm));
      }
    }
    pool.idle = std::move(keep);
    pool.fn = fn;
    pool.image = image;
    pool.active = true;  // pre-warm on deploy
    pool.last_call_ms = env_->MonotonicMs();
    pool.backoff_until_ms = 0;
    PublishLocked(pool);
  }
  cv_.notify_all();
  for (auto& vm : doomed) Destroy(node, vm);
  if (fn.spec.snapshot) EnsureTemplate(node, fn, image);
}

void WarmPools::Remove(const std::string& tenant, const std::string& function) {
  std::vector<PooledVm> doomed;
  Node* node = nullptr;
  {
    std::lock_guard lock(mu_);
    auto it = pools_.find(PoolKey(tenant, function));
    if (it == pools_.end()) return;
    node = it->second.node;
    for (auto& vm : it->second.idle) doomed.push_back(std::move(vm));
    pools_.erase(it);  // a refill in flight finds no pool and destroys its VM
    Metrics::Global().RemovePool(tenant, function);
  }
  for (auto& vm : doomed) Destroy(*node, vm);
}

std::optional<PooledVm> WarmPools::Take(Node& node, const FunctionRecord& fn, const images::ImageRecord& image) {
  if (KeepLimit(fn.spec) == 0) return std::nullopt;
  std::optional<PooledVm> out;
  std::vector<PooledVm> doomed;
  bool configure = false;
  {
    std::lock_guard lock(mu_);
    if (stopping_) return std::nullopt;
    auto it = pools_.find(PoolKey(fn.tenant, fn.spec.name));
    if (it == pools_.end() || it->second.fn.version != fn.version) {
      configure = true;
    } else {
      Pool& pool = it->second;
      pool.active = true;
      pool.last_call_ms = env_->MonotonicMs();
      while (!pool.idle.empty()) {
        PooledVm vm = std::move(pool.idle.front());
        pool.idle.pop_front();
        if (vm.function_version == fn.version) {
          out = std::move(vm);
          if (pool.taken_at_ms == 0) pool.taken_at_ms = pool.last_call_ms;  // its refill may wait (refill_hold_ms)
          break;
        }
        doomed.push_back(std::move(vm));
      }
      PublishLocked(pool);
    }
  }
  cv_.notify_all();
  for (auto& vm : doomed) Destroy(node, vm);
  if (configure) Configure(node, fn, image);
  return out;
}

bool WarmPools::GiveBack(Node& node, const FunctionRecord& fn, const images::ImageRecord& image, PooledVm& vm) {
  std::lock_guard lock(mu_);
  if (stopping_ || !fn.spec.keep_alive || vm.function_version != fn.version) return false;
  auto it = pools_.find(PoolKey(fn.tenant, fn.spec.name));
  if (it == pools_.end()) {
    // keep_alive without a warm pool (max_warm 0): a pool that only holds given-back VMs.
    Pool pool;
    pool.node = &node;
    pool.fn = fn;
    pool.image = image;
    it = pools_.emplace(PoolKey(fn.tenant, fn.spec.name), std::move(pool)).first;
  }
  Pool& pool = it->second;
  if (pool.fn.version != vm.function_version || pool.node != &node || pool.idle.size() >= KeepLimit(pool.fn.spec)) {
    return false;
  }
  pool.active = true;
  pool.last_call_ms = env_->MonotonicMs();  // the idle timeout counts from this call's end
  it->second.idle.push_back(std::move(vm));
  PublishLocked(it->second);
  return true;
}

size_t WarmPools::EvictIdleFor(Node& node, uint32_t vcpus, uint64_t memory_mib) {
  std::vector<PooledVm> doomed;
  {
    std::lock_guard lock(mu_);
    uint32_t freed_vcpus = 0;
    uint64_t freed_memory = 0;
    for (auto& [key, pool] : pools_) {
      if (pool.node != &node) continue;
      while (!pool.idle.empty() && (freed_vcpus < vcpus || freed_memory < memory_mib)) {
        freed_vcpus += pool.idle.front().vcpus;
        freed_memory += pool.idle.front().memory_mib;
        doomed.push_back(std::move(pool.idle.front()));
        pool.idle.pop_front();
      }
      PublishLocked(pool);
      if (freed_vcpus >= vcpus && freed_memory >= memory_mib) break;
    }
  }
  for (auto& vm : doomed) {
    spdlog::info("node {} is full: destroying idle pooled VM {} for a call", node.name(), vm.domain);
    Destroy(node, vm);
  }
  return doomed.size();
}

size_t WarmPools::IdleCount(const std::string& tenant, const std::string& function) {
  std::lock_guard lock(mu_);
  auto it = pools_.find(PoolKey(tenant, function));
  return it == pools_.end() ? 0 : it->second.idle.size();
}

void WarmPools::EnsureTemplate(Node& node, const FunctionRecord& fn, const images::ImageRecord& image) {
  TemplateCache* cache = node.templates();
  if (!cache) return;
  const std::string key = cache->KeyFor(fn, image);
  {
    std::lock_guard lock(mu_);
    if (stopping_ || !building_.insert(key).second) return;
    Spawn([this, cache, key, fn, image, nic = BuildNicFor(node, fn, TemplateDomainName(key))] {
      auto built = cache->Ensure(fn, image, nic);
      if (!built.ok()) {
        spdlog::warn("template of function {} v{} ({}): {}", fn.spec.name, fn.version, key.substr(0, 16),
                     built.status().ToString());
      }
      std::lock_guard lock(mu_);
      building_.erase(key);
    });
  }
}

void WarmPools::Loop() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    cv_.wait_for(lock, std::chrono::milliseconds(options_.tick_ms));
    if (stopping_) break;
    const int64_t now = env_->MonotonicMs();
    std::vector<std::pair<Node*, PooledVm>> doomed;
    for (auto& [key, pool] : pools_) {
      const FunctionSpec& spec = pool.fn.spec;
      // A pool still filling is not idle (a first fill waits for the template build).
      if (pool.active && pool.filling == 0 && now - pool.last_call_ms > spec.idle_timeout_ms) {
        spdlog::info("warm pool of {} idle for {} ms: shrinking to zero", key, now - pool.last_call_ms);
        pool.active = false;
      }
      // The configured size, grown with the observed concurrency (DesiredWarm).
      const ScalingObservation seen = autoscaler_.Observe(key);
      const size_t target = pool.active ? std::max(Target(spec), manager::DesiredWarm(ScalingPolicyOf(spec), seen)) : 0;
      while (pool.idle.size() > (pool.active ? KeepLimit(spec) : 0)) {
        doomed.emplace_back(pool.node, std::move(pool.idle.back()));
        pool.idle.pop_back();
      }
      // One refill at a time per pool: TCG guests share few cores.
      // A call that just took a VM runs first: its refill waits until the
      // function has no call in flight, or refill_hold_ms at most.
      if (pool.idle.size() + pool.filling >= target) pool.taken_at_ms = 0;
      const bool held =
          pool.taken_at_ms != 0 && seen.in_flight > 0 && now - pool.taken_at_ms < options_.refill_hold_ms;
      if (pool.idle.size() + pool.filling < target && pool.filling == 0 && now >= pool.backoff_until_ms && !held) {
        pool.taken_at_ms = 0;
        ++pool.filling;
        Spawn([this, key, node = pool.node, fn = pool.fn, image = pool.image] { Fill(key, node, fn, image); });
      }
      PublishLocked(pool);
    }
    if (!doomed.empty()) {
      lock.unlock();
      for (auto& [node, vm] : doomed) Destroy(*node, vm);
      lock.lock();
    }
  }
}

void WarmPools::Fill(std::string pool_key, Node* node, FunctionRecord fn, images::ImageRecord image) {
  auto vm = MakeVm(*node, fn, image);
  std::unique_lock lock(mu_);
  auto it = pools_.find(pool_key);
  bool wanted = it != pools_.end() && !stopping_ && it->second.fn.version == fn.version;
  if (it != pools_.end()) {
    --it->second.filling;
    if (!vm.ok()) it->second.backoff_until_ms = env_->MonotonicMs() + options_.failure_backoff_ms;
  }
  if (!vm.ok()) {
    spdlog::warn("warm pool of {}: refill failed: {}", pool_key, vm.status().ToString());
    return;
  }
  if (wanted) {
    // The idle timeout counts from the last call or refill, whichever is later.
    it->second.last_call_ms = std::max(it->second.last_call_ms, env_->MonotonicMs());
    it->second.idle.push_back(std::move(*vm));
    PublishLocked(it->second);
    return;
  }
  lock.unlock();
  Destroy(*node, *vm);
}

Result<PooledVm> WarmPools::MakeVm(Node& node, const FunctionRecord& fn, const images::ImageRecord& image) {
  auto& hv = node.hypervisor();
  const std::string short_id = RandomHex(8);
  PooledVm vm;
  vm.domain = PoolDomainName(fn.spec.name, short_id);
  vm.overlay_volume = PoolOverlayVolumeName(short_id);
  vm.console_volume = ConsoleLogVolumeName(vm.domain);
  vm.function_version = fn.version;
  vm.vcpus = fn.spec.vcpus;
  vm.memory_mib = fn.spec.memory_mib;
  BERTH_RETURN_IF_ERROR(node.Reserve(vm.vcpus, vm.memory_mib));
  // Removes everything of a VM that did not make it into the pool.
  ExecutionTeardown teardown(node, vm.domain, vm.overlay_volume, vm.console_volume);
  teardown.reserved(vm.vcpus, vm.memory_mib);
  BERTH_ASSIGN_OR_RETURN(auto base, node.EnsureImage(image));
  BERTH_ASSIGN_OR_RETURN(auto ovl, hv.CreateOverlay(node.config().pool, vm.overlay_volume, base, 0));
  teardown.mark_overlay_created();
  const std::string console_path = node.config().log_dir + "/" + vm.console_volume;
  hv::DomainMetadata md;
  md.execution_id = "pool-" + short_id;
  md.function = fn.spec.name;
  md.tenant = fn.tenant;
  md.image = image.id;
  md.created_unix_ms = env_->NowUnixMs();
  const std::string title = "berth pool " + fn.spec.name + " v" + std::to_string(fn.version) + " (tenant " +
                            fn.tenant + ")";
  // A networked function's VM: its own NIC (fresh MAC) on the tenant
  // network, held until the VM is destroyed, and a lease after hello.
  BERTH_ASSIGN_OR_RETURN(net::NetworkPolicy policy, FunctionNetworkPolicy(fn.spec));
  if (policy.mode != net::NetworkMode::kNone) {
    if (!options_.networks) return Status::FailedPrecondition("no guest networks for a networked function's pool");
    BERTH_ASSIGN_OR_RETURN(NetAttachment attached, options_.networks->Acquire(hv, node.name(), fn.tenant, policy));
    attached.domain = vm.domain;  // Release checks this domain is gone before its MAC is reused
    teardown.OnDestroyed([this, &node, attached] { options_.networks->Release(node.hypervisor(), attached); });
    vm.network = attached;
    md.network = net::NetworkModeName(policy.mode);
  }
  auto lease = [&]() -> Status {
    if (!vm.network) return Status::Ok();
    auto up = vm.agent->NetUp(vm.network->nic.mac, options_.dhcp_timeout_ms);
    if (!up.ok()) return up.status().WithContext("guest network of pooled VM " + vm.domain);
    vm.addresses = {up->ip};
    return Status::Ok();
  };
  const int64_t b0 = env_->MonotonicMs();
  if (TemplateCache* cache = fn.spec.snapshot ? node.templates() : nullptr) {
    const std::string build_domain = TemplateDomainName(cache->KeyFor(fn, image));
    auto tpl = cache->Ensure(fn, image, BuildNicFor(node, fn, build_domain));
    Status why = tpl.status();
    if (tpl.ok()) {
      CloneRequest req{vm.domain, "", title, md, ovl.path, console_path};
      if (vm.network) req.nics = {vm.network->nic};
      teardown.mark_started();
      auto clone = cache->StartClone(tpl->key, req);
      if (clone.ok()) {
        vm.agent = std::move(clone->agent);
        vm.made_by = "template";
        BERTH_RETURN_IF_ERROR(lease());
        PrepareRootfs(vm, fn);
        WarmUp(vm);
        vm.boot_ms = env_->MonotonicMs() - b0;
        teardown.reserved(0, 0);  // the pool owns the reservation now
        teardown.Disarm();
        return vm;
      }
      why = clone.status();
      // A failed clone may have written to the overlay: start cold from a fresh one.
      (void)hv.DeleteVolume(node.config().pool, vm.overlay_volume);
      BERTH_ASSIGN_OR_RETURN(ovl, hv.CreateOverlay(node.config().pool, vm.overlay_volume, base, 0));
    }
    spdlog::warn("warm pool VM {}: no template start ({}); booting cold", vm.domain, why.ToString());
  }
  hv::DomainSpec spec;
  spec.name = vm.domain;
  spec.title = title;
  spec.accel = node.accel();
  spec.vcpus = vm.vcpus;
  spec.memory_mib = vm.memory_mib;
  spec.kernel_path = node.kernel_path();
  spec.initrd_path = node.initrd_path();
  spec.cmdline = options_.kernel_cmdline;
  spec.disks.push_back({ovl.path, "qcow2", "vda", false});
  spec.console_log_path = console_path;
  spec.metadata = md;
  if (vm.network) spec.nics.push_back(vm.network->nic);
  teardown.mark_started();
  BERTH_RETURN_IF_ERROR(hv.StartDomain(spec));
  BERTH_ASSIGN_OR_RETURN(auto channel, hv.OpenAgentChannel(spec.name, spec.agent_channel.name));
  vm.agent = std::make_unique<hv::AgentClient>(std::move(channel));
  BERTH_RETURN_IF_ERROR(vm.agent->Hello(options_.boot_timeout_ms).status());
  BERTH_RETURN_IF_ERROR(lease());
  vm.made_by = "cold";
  PrepareRootfs(vm, fn);
  WarmUp(vm);
  vm.boot_ms = env_->MonotonicMs() - b0;
  teardown.reserved(0, 0);
  teardown.Disarm();
  return vm;
}

void WarmPools::PrepareRootfs(PooledVm& vm, const FunctionRecord& fn) {
  // The agent mounts the root filesystem at the first Exec; under TCG that
  // mount is most of a warm call's run phase, so a pooled VM does it now,
  // and reads the entrypoint's files (a clone of a template has them cached
  // already; a cold-booted VM reads them from its disk here, not in a call).
  auto done = vm.agent->Exec(PrepareRootfsMsg(fn.spec), "", 4096, options_.boot_timeout_ms);
  if (!done.ok() || !done->exit.error_code.empty()) {
    spdlog::warn("warm pool VM {}: preparing its root filesystem: {}", vm.domain,
                 done.ok() ? done->exit.error_code + ": " + done->exit.error : done.status().ToString());
  }
}

void WarmPools::WarmUp(PooledVm& vm) {
  // /proc/self/exe in the chrooted child is the agent binary of the runtime
  // (the agent mounts proc in the root filesystem): it prints its version and
  // exits. Nothing of the function's image runs and nothing is written to its
  // disk. Without /proc in the image this fails at once, which is harmless.
  agent::ExecMsg warm;
  warm.argv = {"/proc/self/exe", "--version"};
  warm.timeout_ms = 10'000;
  const int64_t w0 = env_->MonotonicMs();
  auto done = vm.agent->Exec(warm, "", 4096, options_.boot_timeout_ms);
  spdlog::debug("warm pool VM {}: warm-up exec {} in {} ms", vm.domain,
                done.ok() ? (done->exit.error_code.empty() ? "ran" : done->exit.error_code) : done.status().ToString(),
                env_->MonotonicMs() - w0);
}

void WarmPools::Destroy(Node& node, PooledVm& vm) {
  if (vm.domain.empty()) return;
  if (vm.agent) vm.agent->Close();
  ExecutionTeardown teardown(node, vm.domain, vm.overlay_volume, vm.console_volume);
  teardown.mark_overlay_created();
  teardown.mark_started();
  teardown.reserved(vm.vcpus, vm.memory_mib);
  if (vm.network && options_.networks) {
    teardown.OnDestroyed([this, &node, a = *vm.network] { options_.networks->Release(node.hypervisor(), a); });
  }
  teardown.Run();
  vm.network.reset();
  vm.domain.clear();
}

BuildNicSource WarmPools::BuildNicFor(Node& node, const FunctionRecord& fn, const std::string& build_domain) {
  auto policy = FunctionNetworkPolicy(fn.spec);
  if (!options_.networks || !policy.ok() || policy->mode == net::NetworkMode::kNone) return {};
  Networks* networks = options_.networks;
  return [networks, &node, tenant = fn.tenant, policy = *policy, build_domain]() -> Result<BuildNic> {
    BERTH_ASSIGN_OR_RETURN(NetAttachment a, networks->Acquire(node.hypervisor(), node.name(), tenant, policy));
    a.domain = build_domain;  // Release then looks that one domain up, not every berth domain
    BuildNic nic;
    nic.nic = a.nic;
    nic.release = [networks, &node, a] { networks->Release(node.hypervisor(), a); };
    return nic;
  };
}

}  // namespace berth::manager
