#include "manager/warm_pool.h"

#include <spdlog/spdlog.h>

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

WarmPools::WarmPools(Env* env, WarmPoolOptions options) : env_(env), options_(std::move(options)) {
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
  if (fn.spec.max_warm == 0) return std::nullopt;
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

bool WarmPools::GiveBack(const FunctionRecord& fn, PooledVm vm) {
  std::lock_guard lock(mu_);
  if (stopping_) return false;
  auto it = pools_.find(PoolKey(fn.tenant, fn.spec.name));
  if (it == pools_.end() || it->second.fn.version != vm.function_version ||
      it->second.idle.size() >= it->second.fn.spec.max_warm) {
    return false;
  }
  it->second.idle.push_back(std::move(vm));
  PublishLocked(it->second);
  return true;
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
    Spawn([this, cache, key, fn, image] {
      auto built = cache->Ensure(fn, image);
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
      const size_t target = pool.active ? Target(spec) : 0;
      while (pool.idle.size() > target) {
        doomed.emplace_back(pool.node, std::move(pool.idle.back()));
        pool.idle.pop_back();
      }
      // One refill at a time per pool: TCG guests share few cores.
      if (pool.idle.size() + pool.filling < target && pool.filling == 0 && now >= pool.backoff_until_ms) {
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
  const int64_t b0 = env_->MonotonicMs();
  if (TemplateCache* cache = fn.spec.snapshot ? node.templates() : nullptr) {
    auto tpl = cache->Ensure(fn, image);
    Status why = tpl.status();
    if (tpl.ok()) {
      CloneRequest req{vm.domain, "", title, md, ovl.path, console_path};
      teardown.mark_started();
      auto clone = cache->StartClone(tpl->key, req);
      if (clone.ok()) {
        vm.agent = std::move(clone->agent);
        vm.made_by = "template";
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
  teardown.mark_started();
  BERTH_RETURN_IF_ERROR(hv.StartDomain(spec));
  BERTH_ASSIGN_OR_RETURN(auto channel, hv.OpenAgentChannel(spec.name, spec.agent_channel.name));
  vm.agent = std::make_unique<hv::AgentClient>(std::move(channel));
  BERTH_RETURN_IF_ERROR(vm.agent->Hello(options_.boot_timeout_ms).status());
  vm.made_by = "cold";
  vm.boot_ms = env_->MonotonicMs() - b0;
  teardown.reserved(0, 0);
  teardown.Disarm();
  return vm;
}

void WarmPools::Destroy(Node& node, PooledVm& vm) {
  if (vm.domain.empty()) return;
  if (vm.agent) vm.agent->Close();
  ExecutionTeardown teardown(node, vm.domain, vm.overlay_volume, vm.console_volume);
  teardown.mark_overlay_created();
  teardown.mark_started();
  teardown.reserved(vm.vcpus, vm.memory_mib);
  teardown.Run();
  vm.domain.clear();
}

}  // namespace berth::manager
