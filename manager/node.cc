#include "manager/node.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <condition_variable>
#include <optional>

#include "common/sha256.h"

#include "common/ids.h"
#include "hypervisor/agent_client.h"
#include "manager/templates.h"
#include "manager/warm_pool.h"

namespace berth::manager {

Status ValidateAccel(const std::string& accel) {
  if (accel == "kvm" || accel == "tcg" || accel == "auto") return Status::Ok();
  return Status::InvalidArgument("accel", "must be one of kvm, tcg, auto (got '" + accel + "')");
}

void RemoveStaleDomains(Node& node, const std::string& prefix, const std::set<std::string>& pool_volumes,
                        const std::function<std::vector<std::pair<std::string, std::string>>(const std::string&)>&
                            volumes_of) {
  auto& hv = node.hypervisor();
  auto domains = hv.ListDomains(prefix);
  if (!domains.ok()) {
    spdlog::warn("reconcile: listing {}* domains: {}", prefix, domains.status().ToString());
    return;
  }
  for (const auto& domain : *domains) {
    auto volumes = volumes_of(domain);
    if (volumes.empty() || !pool_volumes.count(volumes.front().second)) continue;  // another berthd's
    spdlog::warn("reconcile: removing {} left by an earlier berthd", domain);
    if (Status s = hv.DestroyDomain(domain); !s.ok()) spdlog::warn("reconcile: {}", s.ToString());
    for (const auto& [pool, volume] : volumes) (void)hv.DeleteVolume(pool, volume);
  }
}

Node::Node(Env* env, NodeConfig config, std::unique_ptr<hv::Hypervisor> hypervisor)
    : env_(env), config_(std::move(config)), hv_(std::move(hypervisor)) {}

Node::~Node() = default;

std::string Node::ImageVolumeName(const std::string& sha256, const std::string& format) {
  return "img-" + sha256 + "." + format;
}

Status Node::Prepare(const RuntimeArtifacts& runtime) {
  BERTH_RETURN_IF_ERROR(ValidateAccel(config_.accel));
  BERTH_ASSIGN_OR_RETURN(info_, hv_->GetNodeInfo());
  BERTH_RETURN_IF_ERROR(hv_->EnsureDirPool(config_.pool, config_.pool_dir));
  BERTH_RETURN_IF_ERROR(hv_->EnsureDirPool(config_.log_pool, config_.log_dir));
  // Runtime files are named by content, so a rebuilt runtime never reuses a stale volume.
  BERTH_ASSIGN_OR_RETURN(auto kernel, EnsureFileVolume("rt-" + runtime.kernel_sha256.substr(0, 16) + "-vmlinuz",
                                                       runtime.kernel_path, "raw"));
  BERTH_ASSIGN_OR_RETURN(auto initrd,
                         EnsureFileVolume("rt-" + runtime.initrd_sha256.substr(0, 16) + "-initramfs.cpio.gz",
                                          runtime.initrd_path, "raw"));
  kernel_path_ = kernel.path;
  initrd_path_ = initrd.path;
  if (config_.accel == "kvm") {
    accel_ = hv::Accel::kKvm;
  } else if (config_.accel == "tcg") {
    accel_ = hv::Accel::kTcg;
  } else {
    BERTH_ASSIGN_OR_RETURN(accel_, ProbeAccel());
  }
  spdlog::info("node {} ({}): {} cpus, {} MiB, accel {}", config_.name, config_.uri, info_.cpus, info_.memory_mib,
               accel_ == hv::Accel::kKvm ? "kvm" : "tcg");
  templates_ = std::make_unique<TemplateCache>(env_, *this, runtime);
  RemoveStalePoolVms(*this);
  RemoveStaleTemplateBuilds(*this);
  return Status::Ok();
}

Result<hv::VolumeInfo> Node::EnsureFileVolume(const std::string& name, const std::string& path,
                                              const std::string& format) {
  auto vol = hv_->LookupVolume(config_.pool, name);
  if (vol.ok()) {
    vol->format = format;
    return vol;
  }
  if (vol.status().code() != Code::kNotFound) return vol.status();
  spdlog::info("uploading {} to node {} as volume {}", path, config_.name, name);
  return hv_->UploadVolume(config_.pool, name, path, format);
}

struct Node::ImageTransfer {
  std::mutex mu;
  std::condition_variable cv;
  std::optional<Result<hv::VolumeInfo>> result;
};

Result<hv::VolumeInfo> Node::EnsureImage(const images::ImageRecord& image) {
  const std::string name = ImageVolumeName(image.id, image.format);
  std::shared_ptr<ImageTransfer> transfer;
  bool leader = false;
  {
    std::lock_guard lock(upload_mu_);
    image_last_used_[image.id] = env_->MonotonicMs();
    auto& slot = transfers_[name];
    if (!slot) {
      slot = std::make_shared<ImageTransfer>();
      leader = true;
    }
    transfer = slot;
  }
  if (!leader) {
    // Someone is already putting this image on the node: share its transfer.
    std::unique_lock lock(transfer->mu);
    transfer->cv.wait(lock, [&] { return transfer->result.has_value(); });
    return *transfer->result;
  }
  auto result = TransferImage(image);
  {
    std::lock_guard lock(upload_mu_);
    transfers_.erase(name);
    if (result.ok()) verified_volumes_.insert(name);
  }
  {
    std::lock_guard lock(transfer->mu);
    transfer->result = result;
  }
  transfer->cv.notify_all();
  return result;
}

namespace {
// libvirt reports a file's size as a raw volume's capacity, and a qcow2's
// virtual size once its refresh has probed the header.
bool VolumeSizeMatches(const hv::VolumeInfo& vol, const images::ImageRecord& image) {
  return vol.capacity_bytes == image.size_bytes ||
         (image.format == "qcow2" && vol.capacity_bytes == image.virtual_size_bytes);
}
}  // namespace

Result<hv::VolumeInfo> Node::TransferImage(const images::ImageRecord& image) {
  const std::string name = ImageVolumeName(image.id, image.format);
  bool verified;
  {
    std::lock_guard lock(upload_mu_);
    verified = verified_volumes_.count(name) > 0;
  }
  auto vol = hv_->LookupVolume(config_.pool, name);
  if (vol.ok() && !verified) {
    // Not uploaded by this process: its content must be the image's.
    bool good = VolumeSizeMatches(*vol, image);
    if (good) {
      Sha256 hash;
      constexpr uint64_t kChunk = 8u << 20;
      for (uint64_t off = 0; good && off < image.size_bytes; off += kChunk) {
        auto bytes = hv_->DownloadVolumeRange(config_.pool, name, off, std::min(kChunk, image.size_bytes - off));
        if (!bytes.ok()) return bytes.status().WithContext("verifying volume " + name);
        if (bytes->empty()) good = false;
        hash.Update(*bytes);
      }
      good = good && hash.FinishHex() == image.id;
    }
    if (!good) {
      spdlog::warn("node {}: volume {} does not hold image {} (an interrupted upload?); uploading it again",
                   config_.name, name, image.id);
      BERTH_RETURN_IF_ERROR(hv_->DeleteVolume(config_.pool, name));
      vol = Status::NotFound("volume " + name + " was replaced");
    }
  }
  if (!vol.ok()) {
    if (vol.status().code() != Code::kNotFound) return vol.status();
    spdlog::info("uploading {} to node {} as volume {}", image.path, config_.name, name);
    vol = hv_->UploadVolume(config_.pool, name, image.path, image.format);
    if (!vol.ok()) return vol.status();
    if (!VolumeSizeMatches(*vol, image)) {
      (void)hv_->DeleteVolume(config_.pool, name);
      return Status::Internal("node " + config_.name + ": volume " + name + " has " +
                              std::to_string(vol->capacity_bytes) + " bytes after upload, the image " +
                              std::to_string(image.size_bytes));
    }
  }
  vol->format = image.format;
  if (image.format == "qcow2") vol->capacity_bytes = image.virtual_size_bytes;
  return vol;
}

std::map<std::string, uint64_t> Node::CachedImages() {
  std::map<std::string, uint64_t> out;
  auto vols = hv_->ListVolumes(config_.pool);
  if (!vols.ok()) return out;
  for (const auto& v : *vols) {
    if (v.name.rfind("img-", 0) != 0) continue;
    std::string id = v.name.substr(4, v.name.find('.') == std::string::npos ? std::string::npos : v.name.find('.') - 4);
    if (IsSha256Hex(id)) out[id] += v.allocation_bytes;
  }
  return out;
}

Status Node::EvictImage(const std::string& sha256) {
  std::lock_guard lock(upload_mu_);
  for (const char* format : {"raw", "qcow2"}) {
    const std::string name = ImageVolumeName(sha256, format);
    if (transfers_.count(name)) continue;  // being put here right now
    BERTH_RETURN_IF_ERROR(hv_->DeleteVolume(config_.pool, name));
    verified_volumes_.erase(name);
  }
  image_last_used_.erase(sha256);
  return Status::Ok();
}

size_t Node::TrimImageCache(uint64_t budget_bytes, const std::function<bool(const std::string& id)>& in_use) {
  auto cached = CachedImages();
  uint64_t total = 0;
  for (const auto& [id, bytes] : cached) total += bytes;
  if (total <= budget_bytes) return 0;
  std::vector<std::pair<int64_t, std::string>> by_use;  // never used by this process: oldest
  {
    std::lock_guard lock(upload_mu_);
    for (const auto& [id, bytes] : cached) {
      auto it = image_last_used_.find(id);
      by_use.emplace_back(it == image_last_used_.end() ? 0 : it->second, id);
    }
  }
  std::sort(by_use.begin(), by_use.end());
  size_t evicted = 0;
  for (const auto& [used, id] : by_use) {
    if (total <= budget_bytes) break;
    if (in_use(id)) continue;
    if (Status s = EvictImage(id); !s.ok()) {
      spdlog::warn("node {}: evicting image {}: {}", config_.name, id, s.ToString());
      continue;
    }
    spdlog::info("node {}: evicted image {} from its cache ({} bytes; budget {})", config_.name, id, cached[id],
                 budget_bytes);
    total -= cached[id];
    ++evicted;
  }
  return evicted;
}

// Boots the runtime with type='kvm': a host whose KVM cannot run stock guests
// (or has none) fails to reach the agent's hello, and TCG is used instead.
Result<hv::Accel> Node::ProbeAccel() {
  if (!info_.kvm_available) {
    spdlog::info("node {}: libvirt reports no kvm; using tcg", config_.name);
    return hv::Accel::kTcg;
  }
  hv::DomainSpec spec;
  spec.name = std::string(hv::kDomainNamePrefix) + "probe-" + RandomHex(8);
  spec.title = "berth acceleration probe";
  spec.accel = hv::Accel::kKvm;
  spec.memory_mib = 128;
  spec.kernel_path = kernel_path_;
  spec.initrd_path = initrd_path_;
  spec.metadata.execution_id = spec.name;
  Status started = hv_->StartDomain(spec);
  hv::Accel result = hv::Accel::kTcg;
  if (started.ok()) {
    auto channel = hv_->OpenAgentChannel(spec.name, spec.agent_channel.name);
    if (channel.ok()) {
      // A broken KVM pauses or kills the guest at once ("emulation failure"):
      // poll its state between short hello attempts so the probe fails fast.
      hv::AgentClient client(std::move(*channel));
      // Real KVM reaches the agent in about a second; 8 s leaves room for a loaded host.
      std::string why = "no hello within 8 s";
      for (int attempt = 0; attempt < 16; ++attempt) {
        auto hello = client.Hello(500);
        if (hello.ok()) {
          result = hv::Accel::kKvm;
          break;
        }
        auto state = hv_->GetDomainState(spec.name);
        if (!state.ok() || state->state != hv::DomainRunState::kRunning) {
          why = state.ok() ? "guest " + state->reason : "guest is gone";
          break;
        }
        if (hello.status().code() != Code::kDeadlineExceeded) {
          why = hello.status().message();
          break;
        }
      }
      if (result != hv::Accel::kKvm) spdlog::info("node {}: kvm probe failed ({}); using tcg", config_.name, why);
      client.Close();
    }
  } else {
    spdlog::info("node {}: kvm probe guest did not start ({}); using tcg", config_.name, started.message());
  }
  Status destroyed = hv_->DestroyDomain(spec.name);
  if (!destroyed.ok()) spdlog::warn("destroying probe domain {}: {}", spec.name, destroyed.ToString());
  return result;
}

Status Node::Reserve(uint32_t vcpus, uint64_t memory_mib) {
  std::lock_guard lock(capacity_mu_);
  uint64_t usable = info_.memory_mib > config_.reserved_memory_mib ? info_.memory_mib - config_.reserved_memory_mib : 0;
  if (used_memory_mib_ + memory_mib > usable) {
    return Status::ResourceExhausted("node " + config_.name + " has " + std::to_string(usable - used_memory_mib_) +
                                     " MiB free, the execution needs " + std::to_string(memory_mib) + " MiB");
  }
  if (used_vcpus_ + vcpus > info_.cpus * 4) {
    return Status::ResourceExhausted("node " + config_.name + " has no vCPUs left");
  }
  used_memory_mib_ += memory_mib;
  used_vcpus_ += vcpus;
  return Status::Ok();
}

void Node::Release(uint32_t vcpus, uint64_t memory_mib) {
  std::lock_guard lock(capacity_mu_);
  used_memory_mib_ -= std::min(used_memory_mib_, memory_mib);
  used_vcpus_ -= std::min(used_vcpus_, vcpus);
}

}  // namespace berth::manager
