#include "manager/templates.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <future>
#include <chrono>
#include <functional>
#include <optional>
#include <string_view>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/sha256.h"

namespace berth::manager {
namespace {

using nlohmann::json;

json InputsToJson(const TemplateKeyInputs& in) {
  json j{{"tenant", in.tenant},
              {"function", in.function},
              {"function_version", in.function_version},
              {"image", in.image},
              {"kernel_sha256", in.kernel_sha256},
              {"initrd_sha256", in.initrd_sha256},
              {"accel", in.accel},
              {"cpu_model", in.cpu_model},
              {"hypervisor_version", in.hypervisor_version},
              {"machine", in.machine},
              {"vcpus", in.vcpus},
              {"memory_mib", in.memory_mib},
              {"cmdline", in.cmdline},
              {"format_version", in.format_version}};
  if (!in.network.empty()) j["network"] = in.network;  // absent for none: older keys stay valid
  return j;
}

TemplateKeyInputs InputsFromJson(const json& j) {
  TemplateKeyInputs in;
  in.tenant = j.at("tenant").get<std::string>();
  in.function = j.at("function").get<std::string>();
  in.function_version = j.at("function_version").get<int64_t>();
  in.image = j.at("image").get<std::string>();
  in.kernel_sha256 = j.at("kernel_sha256").get<std::string>();
  in.initrd_sha256 = j.at("initrd_sha256").get<std::string>();
  in.accel = j.at("accel").get<std::string>();
  in.cpu_model = j.at("cpu_model").get<std::string>();
  in.hypervisor_version = j.at("hypervisor_version").get<uint64_t>();
  in.machine = j.at("machine").get<std::string>();
  in.vcpus = j.at("vcpus").get<uint32_t>();
  in.memory_mib = j.at("memory_mib").get<uint64_t>();
  in.cmdline = j.at("cmdline").get<std::string>();
  in.format_version = j.at("format_version").get<uint32_t>();
  in.network = j.value("network", std::string());
  return in;
}

std::string InfoToJson(const TemplateInfo& info) {
  return json{{"key", info.key},
              {"inputs", InputsToJson(info.inputs)},
              {"save_volume", info.save_volume},
              {"save_path", info.save_path},
              {"save_bytes", info.save_bytes},
              {"disk_volume", info.disk_volume},
              {"disk_bytes", info.disk_bytes},
              {"built_unix_ms", info.built_unix_ms},
              {"build_ms", info.build_ms}}
      .dump(2);
}

Result<TemplateInfo> InfoFromJson(const std::string& text) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return Status::FailedPrecondition("template record is not JSON");
  try {
    TemplateInfo info;
    info.key = j.at("key").get<std::string>();
    info.inputs = InputsFromJson(j.at("inputs"));
    info.save_volume = j.at("save_volume").get<std::string>();
    info.save_path = j.at("save_path").get<std::string>();
    info.save_bytes = j.at("save_bytes").get<uint64_t>();
    info.disk_volume = j.at("disk_volume").get<std::string>();
    info.disk_bytes = j.at("disk_bytes").get<uint64_t>();
    info.built_unix_ms = j.at("built_unix_ms").get<int64_t>();
    info.build_ms = j.at("build_ms").get<int64_t>();
    return info;
  } catch (const json::exception& e) {
    return Status::FailedPrecondition(std::string("template record is incomplete: ") + e.what());
  }
}

uint32_t LeU32(std::string_view b, size_t off) {
  return static_cast<uint32_t>(static_cast<unsigned char>(b[off])) |
         static_cast<uint32_t>(static_cast<unsigned char>(b[off + 1])) << 8 |
         static_cast<uint32_t>(static_cast<unsigned char>(b[off + 2])) << 16 |
         static_cast<uint32_t>(static_cast<unsigned char>(b[off + 3])) << 24;
}

// The type attribute of the saved <domain> ("kvm", "qemu"), without an XML
// parser (those live in hypervisor/): libvirt writes it first.
std::string SavedDomainType(const std::string& xml) {
  size_t open = xml.find("<domain");
  if (open == std::string::npos) return "";
  size_t close = xml.find('>', open);
  size_t at = xml.find("type=", open);
  if (at == std::string::npos || at > close || at + 6 >= xml.size()) return "";
  char quote = xml[at + 5];
  size_t end = xml.find(quote, at + 6);
  if (end == std::string::npos || end > close) return "";
  return xml.substr(at + 6, end - at - 6);
}

bool IsHex(std::string_view s) { return s.find_first_not_of("0123456789abcdef") == std::string_view::npos; }

// Runs `call` on its own thread and waits at most timeout_ms. On timeout it
// runs `abort` (destroying the domain ends libvirt's job) and gives the call
// a little longer to return; DeadlineExceeded either way.
Status RunBounded(std::function<Status()> call, int64_t timeout_ms, const std::function<void()>& abort,
                  const std::string& what) {
  auto promise = std::make_shared<std::promise<Status>>();
  std::future<Status> done = promise->get_future();
  std::thread([call = std::move(call), promise] { promise->set_value(call()); }).detach();
  if (done.wait_for(std::chrono::milliseconds(timeout_ms)) == std::future_status::ready) return done.get();
  abort();
  if (done.wait_for(std::chrono::seconds(15)) != std::future_status::ready) {
    spdlog::warn("{} still running after it was aborted", what);
  }
  return Status::DeadlineExceeded(what + " did not finish within " + std::to_string(timeout_ms) + " ms");
}

}  // namespace

std::string ComputeTemplateKey(const TemplateKeyInputs& inputs) {
  // nlohmann::json orders object keys, so the encoding is canonical.
  return Sha256::HexOf("berth-template\n" + InputsToJson(inputs).dump());
}

std::string TemplateSaveVolumeName(const std::string& key) { return "tpl-" + key + ".save"; }
std::string TemplateRecordVolumeName(const std::string& key) { return "tpl-" + key + ".json"; }
std::string TemplateDomainName(const std::string& key) {
  return std::string(hv::kDomainNamePrefix) + "tpl-" + key.substr(0, 16);
}
std::string CloneSaveVolumeName(const std::string& domain) { return "tplclone-" + domain + ".save"; }
std::string TemplateDiskVolumeName(const std::string& key) { return "tpl-" + key + ".disk"; }
std::string TemplateSpareVolumeName(const std::string& key, int n) {
  return "tpl-" + key + ".spare" + std::to_string(n);
}

namespace {
std::string BuildOverlayVolumeName(const std::string& key) { return "tpl-" + key.substr(0, 16) + ".qcow2"; }
// In the node's pool, not the log pool: the log pool holds executions' logs only.
std::string BuildConsoleVolumeName(const std::string& key) { return "tpl-" + key.substr(0, 16) + ".console.log"; }
}  // namespace

void RemoveStaleTemplateBuilds(Node& node) {
  // A build domain is berth-tpl-<key16>; only this berthd builds into its
  // pool, so one whose build overlay is there was cut short by a crash.
  const std::string prefix = TemplateDomainName("");
  auto volumes = node.hypervisor().ListVolumes(node.config().pool);
  if (!volumes.ok()) {
    spdlog::warn("template reconcile: listing volumes of {}: {}", node.config().pool, volumes.status().ToString());
    return;
  }
  std::set<std::string> names;
  for (const auto& v : *volumes) names.insert(v.name);
  RemoveStaleDomains(node, prefix, names, [&](const std::string& domain) {
    const std::string key16 = domain.substr(prefix.size());
    return std::vector<std::pair<std::string, std::string>>{{node.config().pool, BuildOverlayVolumeName(key16)},
                                                            {node.config().pool, BuildConsoleVolumeName(key16)}};
  });
}

TemplateCache::TemplateCache(Env* env, Node& node, RuntimeArtifacts runtime, TemplateOptions options)
    : env_(env), node_(node), runtime_(std::move(runtime)), options_(std::move(options)) {}

TemplateCache::~TemplateCache() {
  std::unique_lock lock(mu_);
  background_cv_.wait(lock, [&] { return background_ == 0; });  // bounded: WriteSaveHeader's retries
}

Status TemplateCache::WriteSaveHeader(const std::string& save_volume, const std::string& bytes) {
  Status s;
  for (int attempt = 0; attempt < 600; ++attempt) {  // 30 s
    s = node_.hypervisor().UploadVolumeRange(node_.config().pool, save_volume, 0, bytes);
    if (s.ok() || s.code() == Code::kNotFound) break;
    env_->SleepMs(50);
  }
  return s;
}

bool TemplateCache::PutHeaderBack(const std::string& key, const std::string& save_volume, const std::string& bytes) {
  Status s = WriteSaveHeader(save_volume, bytes);
  {
    std::lock_guard lock(mu_);
    in_place_.erase(key);
  }
  if (!s.ok()) spdlog::warn("restoring the header of template {}: {}", key.substr(0, 16), s.ToString());
  return s.ok();
}

void TemplateCache::PutHeaderBackLater(const std::string& key, const std::string& save_volume,
                                       std::shared_ptr<const std::string> bytes) {
  {
    std::lock_guard lock(mu_);
    ++background_;
  }
  std::thread([this, key, save_volume, bytes] {
    if (!PutHeaderBack(key, save_volume, *bytes)) (void)Invalidate(key);  // its file still names a clone
    std::lock_guard lock(mu_);
    --background_;
    background_cv_.notify_all();
  }).detach();
}

std::string TemplateCache::AccelName() const { return node_.accel() == hv::Accel::kKvm ? "kvm" : "tcg"; }

TemplateKeyInputs TemplateCache::KeyInputsFor(const FunctionRecord& fn, const images::ImageRecord& image) const {
  TemplateKeyInputs in;
  in.tenant = fn.tenant;
  in.function = fn.spec.name;
  in.function_version = fn.version;
  in.image = image.id;
  in.kernel_sha256 = runtime_.kernel_sha256;
  in.initrd_sha256 = runtime_.initrd_sha256;
  in.accel = AccelName();
  in.cpu_model = node_.info().cpu_model;
  in.hypervisor_version = node_.info().hypervisor_version;
  in.machine = options_.machine;
  in.vcpus = fn.spec.vcpus;
  in.memory_mib = fn.spec.memory_mib;
  in.cmdline = options_.kernel_cmdline;
  if (fn.spec.network != "none") in.network = fn.spec.network;
  return in;
}

std::string TemplateCache::KeyFor(const FunctionRecord& fn, const images::ImageRecord& image) const {
  return ComputeTemplateKey(KeyInputsFor(fn, image));
}

Status TemplateCache::RefreshPool() {
  // A refresh is refused while the pool has asynchronous jobs (a volume copy
  // of a concurrent clone): retry for a while.
  Status s;
  for (int attempt = 0; attempt < 40; ++attempt) {
    s = node_.hypervisor().RefreshPool(node_.config().pool);
    if (s.ok()) return s;
    env_->SleepMs(250);
  }
  return s;
}

Result<TemplateCache::Entry> TemplateCache::LoadFromPool(const std::string& key) {
  auto& hv = node_.hypervisor();
  const std::string& pool = node_.config().pool;
  auto record = hv.DownloadVolumeRange(pool, TemplateRecordVolumeName(key), 0, 1 << 20);
  if (!record.ok()) {
    if (record.status().code() == Code::kNotFound) return Status::NotFound("no template " + key + " on this node");
    return record.status();
  }
  Entry entry;
  BERTH_ASSIGN_OR_RETURN(entry.info, InfoFromJson(*record));
  if (entry.info.key != key || entry.info.save_volume != TemplateSaveVolumeName(key)) {
    return Status::FailedPrecondition("template record " + TemplateRecordVolumeName(key) + " names another template");
  }
  auto vol = hv.LookupVolume(pool, entry.info.save_volume);
  if (!vol.ok()) {
    if (vol.status().code() == Code::kNotFound) return Status::NotFound("template " + key + " has no save image");
    return vol.status();
  }
  if (vol->capacity_bytes != entry.info.save_bytes) {
    return Status::FailedPrecondition("template save image " + entry.info.save_volume + " is damaged: " +
                                      std::to_string(vol->capacity_bytes) + " bytes, recorded " +
                                      std::to_string(entry.info.save_bytes));
  }
  BERTH_ASSIGN_OR_RETURN(std::string head, hv.DownloadVolumeRange(pool, entry.info.save_volume, 0, hv::kSaveHeaderSize));
  if (head.size() < hv::kSaveHeaderSize) return Status::FailedPrecondition("template save image is truncated");
  uint32_t data_len = LeU32(head, 20);
  if (data_len == 0 || data_len > (64u << 20) || hv::kSaveHeaderSize + data_len > vol->capacity_bytes) {
    return Status::FailedPrecondition("template save image has a corrupt header");
  }
  BERTH_ASSIGN_OR_RETURN(head, hv.DownloadVolumeRange(pool, entry.info.save_volume, 0, hv::kSaveHeaderSize + data_len));
  auto header = hv::ParseSaveImageHeader(head);
  if (!header.ok()) return Status::FailedPrecondition("template save image: " + header.status().message());
  if (header->format != 0) return Status::FailedPrecondition("template save image is compressed");
  entry.header = std::move(*header);
  entry.header_bytes = std::make_shared<const std::string>(std::move(head));
  entry.info.save_path = vol->path;
  if (entry.info.disk_volume != TemplateDiskVolumeName(key)) {
    return Status::FailedPrecondition("template record " + TemplateRecordVolumeName(key) + " names another disk");
  }
  auto disk = hv.DownloadVolumeRange(pool, entry.info.disk_volume, 0, kMaxLiveForkOverlayBytes + 1);
  if (!disk.ok()) {
    if (disk.status().code() == Code::kNotFound) return Status::FailedPrecondition("template " + key + " has no disk");
    return disk.status();
  }
  if (disk->size() != entry.info.disk_bytes || disk->compare(0, 4, "QFI\xfb") != 0) {
    return Status::FailedPrecondition("template disk " + entry.info.disk_volume + " is damaged: " +
                                      std::to_string(disk->size()) + " bytes, recorded " +
                                      std::to_string(entry.info.disk_bytes));
  }
  entry.disk = std::make_shared<const std::string>(std::move(*disk));
  return entry;
}

Result<TemplateInfo> TemplateCache::Lookup(const std::string& key) {
  {
    std::lock_guard lock(mu_);
    if (auto it = entries_.find(key); it != entries_.end()) return it->second.info;
  }
  BERTH_ASSIGN_OR_RETURN(Entry entry, LoadFromPool(key));
  std::lock_guard lock(mu_);
  return entries_.emplace(key, std::move(entry)).first->second.info;
}

Result<TemplateInfo> TemplateCache::Ensure(const FunctionRecord& fn, const images::ImageRecord& image,
                                           BuildNicSource nic) {
  const TemplateKeyInputs inputs = KeyInputsFor(fn, image);
  const std::string key = ComputeTemplateKey(inputs);
  std::promise<Result<TemplateInfo>> promise;
  {
    std::unique_lock lock(mu_);
    if (auto it = entries_.find(key); it != entries_.end()) return it->second.info;
    if (auto it = building_.find(key); it != building_.end()) {
      auto shared = it->second;
      lock.unlock();
      return shared.get();  // bounded: every step of the build is
    }
    building_.emplace(key, promise.get_future().share());
  }
  auto loaded = LoadFromPool(key);
  if (!loaded.ok() && loaded.status().code() != Code::kNotFound) {
    spdlog::warn("template {} on node {} is unusable ({}); rebuilding", key.substr(0, 16), node_.name(),
                 loaded.status().ToString());
  }
  Result<Entry> entry = loaded.ok() ? std::move(loaded) : Build(inputs, key, fn, image, nic);
  Result<TemplateInfo> result = entry.ok() ? Result<TemplateInfo>(entry->info) : Result<TemplateInfo>(entry.status());
  bool stale = false;
  {
    std::lock_guard lock(mu_);
    // Invalidated while it was built (the function changed or went): the
    // result is kept by nobody, and its volumes go.
    stale = invalidated_while_building_.erase(key) > 0;
    if (entry.ok() && !stale) entries_[key] = std::move(*entry);
    building_.erase(key);
  }
  if (stale) {
    spdlog::info("template {} was invalidated while it was built; removing it", key.substr(0, 16));
    if (Status s = RemoveVolumes(key); !s.ok()) spdlog::warn("removing template {}: {}", key.substr(0, 16), s.ToString());
    result = Status::FailedPrecondition("template " + key.substr(0, 16) + " was invalidated while it was built");
  }
  promise.set_value(result);
  return result;
}

Result<TemplateCache::Entry> TemplateCache::Build(const TemplateKeyInputs& inputs, const std::string& key,
                                                  const FunctionRecord& fn, const images::ImageRecord& image,
                                                  const BuildNicSource& nic_source) {
  const int64_t t0 = env_->MonotonicMs();
  auto& hv = node_.hypervisor();
  const std::string domain = TemplateDomainName(key);
  BERTH_RETURN_IF_ERROR(node_.Reserve(fn.spec.vcpus, fn.spec.memory_mib));
  auto log = [](const Status& s, const std::string& what) {
    if (!s.ok()) spdlog::warn("template cleanup: {}: {}", what, s.ToString());
  };
  auto cleanup = [&] {
    log(hv.DestroyDomain(domain), "destroying " + domain);
    log(hv.DeleteVolume(node_.config().pool, BuildOverlayVolumeName(key)), "deleting the template overlay");
    log(hv.DeleteVolume(node_.config().pool, BuildConsoleVolumeName(key)), "deleting the template console log");
  };
  cleanup();  // leftovers of a build a crash interrupted
  log(RemoveVolumes(key), "removing an incomplete template");
  // A networked function's guest is built with its NIC (the guest never
  // brings it up; clones get their own MAC), held until the domain is gone.
  std::optional<BuildNic> nic;
  if (!inputs.network.empty()) {
    Result<BuildNic> got = nic_source ? nic_source()
                                      : Result<BuildNic>(Status::FailedPrecondition(
                                            "a networked function's template needs a NIC and none was given"));
    if (!got.ok()) {
      node_.Release(fn.spec.vcpus, fn.spec.memory_mib);
      return got.status().WithContext("the template's NIC");
    }
    nic = std::move(*got);
  }
  Result<Entry> entry = BuildAndSave(inputs, key, fn, image, t0, nic ? &nic->nic : nullptr);
  cleanup();
  if (nic && nic->release) nic->release();
  node_.Release(fn.spec.vcpus, fn.spec.memory_mib);
  if (!entry.ok()) {
    log(RemoveVolumes(key), "removing a failed template");
    spdlog::warn("building template {} of {} v{} on node {} failed: {}", key.substr(0, 16), fn.spec.name, fn.version,
                 node_.name(), entry.status().ToString());
    return entry;
  }
  spdlog::info("built template {} of {} v{} on node {} in {} ms ({} MiB)", key.substr(0, 16), fn.spec.name,
               fn.version, node_.name(), entry->info.build_ms, entry->info.save_bytes >> 20);
  return entry;
}

Result<TemplateCache::Entry> TemplateCache::BuildAndSave(const TemplateKeyInputs& inputs, const std::string& key,
                                                         const FunctionRecord& fn, const images::ImageRecord& image,
                                                         int64_t t0, const hv::NicSpec* nic) {
  auto& hv = node_.hypervisor();
  const NodeConfig& cfg = node_.config();
  const std::string domain = TemplateDomainName(key);
  const std::string console = BuildConsoleVolumeName(key);

  BERTH_ASSIGN_OR_RETURN(hv::VolumeInfo base, node_.EnsureImage(image));
  BERTH_ASSIGN_OR_RETURN(hv::VolumeInfo disk, hv.CreateOverlay(cfg.pool, BuildOverlayVolumeName(key), base, 0));
  BERTH_ASSIGN_OR_RETURN(std::string pool_path, hv.GetPoolPath(cfg.pool));

  hv::DomainSpec spec;
  spec.name = domain;
  spec.title = "berth template " + fn.spec.name + " v" + std::to_string(fn.version);
  spec.accel = node_.accel();
  spec.machine = inputs.machine;
  spec.vcpus = inputs.vcpus;
  spec.memory_mib = inputs.memory_mib;
  spec.kernel_path = node_.kernel_path();
  spec.initrd_path = node_.initrd_path();
  spec.cmdline = inputs.cmdline;
  // Attached, not mounted: the agent mounts /dev/vda at the first exec, so a
  // clone's own overlay (same image, same size) is read from the start.
  spec.disks.push_back({disk.path, "qcow2", "vda", false});
  spec.console_log_path = pool_path + "/" + console;
  spec.metadata.execution_id = "tpl-" + key.substr(0, 16);
  spec.metadata.function = fn.spec.name;
  spec.metadata.tenant = fn.tenant;
  spec.metadata.image = image.id;
  spec.metadata.created_unix_ms = env_->NowUnixMs();
  if (nic) {
    spec.nics.push_back(*nic);
    spec.metadata.network = inputs.network;
  }
  BERTH_RETURN_IF_ERROR(hv.StartDomain(spec));
  {
    BERTH_ASSIGN_OR_RETURN(auto channel, hv.OpenAgentChannel(domain, spec.agent_channel.name));
    hv::AgentClient agent(std::move(channel));
    auto hello = agent.Hello(options_.boot_timeout_ms);
    Status prepared = hello.status();
    if (hello.ok()) {
      // The mount a first call would do, done once here (see the header).
      // Dropped caches and zero-filled free memory make the save image (and
      // every clone's copy and restore of it) small: format 3. Then the
      // entrypoint's files go back into the page cache (format 4): a clone's
      // first call reads them from memory, not the virtual disk.
      agent::ExecMsg prepare = PrepareRootfsMsg(fn.spec);
      prepare.release_memory = true;
      auto done = agent.Exec(prepare, "", 4096, options_.boot_timeout_ms);
      prepared = done.status();
      if (done.ok()) {
        std::string_view out = done->stdout_data;
        for (size_t at = 0; at < out.size();) {
          size_t end = std::min(out.find('\n', at), out.size());
          if (end > at) spdlog::info("template {}: {}", key.substr(0, 16), out.substr(at, end - at));
          at = end + 1;
        }
      }
      if (done.ok() && !done->exit.error_code.empty()) {
        prepared = Status::FailedPrecondition("mounting the root filesystem: " + done->exit.error_code + ": " +
                                              done->exit.error);
      }
    }
    agent.Close();
    if (!prepared.ok()) {
      std::string why = prepared.message();
      auto tail = hv.DownloadVolumeTail(cfg.pool, console, 2048);
      if (tail.ok() && !tail->empty()) why += "\n--- console (tail) ---\n" + *tail;
      return Status(prepared.code(), "template guest: " + why);
    }
  }

  const std::string save_volume = TemplateSaveVolumeName(key);
  const std::string save_path = pool_path + "/" + save_volume;
  hv::Hypervisor* hvp = &hv;
  BERTH_RETURN_IF_ERROR(RunBounded([hvp, domain, save_path] { return hvp->SaveDomain(domain, save_path); },
                                   options_.save_timeout_ms, [hvp, domain] { (void)hvp->DestroyDomain(domain); },
                                   "saving template domain " + domain));
  BERTH_RETURN_IF_ERROR(RefreshPool());
  BERTH_ASSIGN_OR_RETURN(hv::VolumeInfo saved, hv.LookupVolume(cfg.pool, save_volume));
  // The disk as the saved memory knows it (the domain is gone, nothing writes it any more).
  BERTH_ASSIGN_OR_RETURN(std::string disk_bytes,
                         hv.DownloadVolumeRange(cfg.pool, BuildOverlayVolumeName(key), 0, kMaxLiveForkOverlayBytes + 1));
  if (disk_bytes.size() > kMaxLiveForkOverlayBytes) return Status::ResourceExhausted("the template's overlay is too large");
  BERTH_RETURN_IF_ERROR(hv.WriteVolume(cfg.pool, TemplateDiskVolumeName(key), disk_bytes).status());

  Entry entry;
  entry.info.key = key;
  entry.info.inputs = inputs;
  entry.info.save_volume = save_volume;
  entry.info.save_path = saved.path;
  entry.info.save_bytes = saved.capacity_bytes;
  entry.info.disk_volume = TemplateDiskVolumeName(key);
  entry.info.disk_bytes = disk_bytes.size();
  entry.info.built_unix_ms = env_->NowUnixMs();
  entry.info.build_ms = env_->MonotonicMs() - t0;
  // The record goes in last: from then on the template counts.
  BERTH_RETURN_IF_ERROR(hv.WriteVolume(cfg.pool, TemplateRecordVolumeName(key), InfoToJson(entry.info)).status());
  BERTH_ASSIGN_OR_RETURN(Entry loaded, LoadFromPool(key));  // reads the header back: the save is complete
  loaded.info.build_ms = entry.info.build_ms;
  if (Status s = CheckNodeMatches(loaded); !s.ok()) return Status::Internal("built template: " + s.message());
  return loaded;
}

Status TemplateCache::RemoveVolumes(const std::string& key) {
  auto& hv = node_.hypervisor();
  // The record first: without it the save image no longer counts.
  Status a = hv.DeleteVolume(node_.config().pool, TemplateRecordVolumeName(key));
  Status b = hv.DeleteVolume(node_.config().pool, TemplateSaveVolumeName(key));
  Status c = hv.DeleteVolume(node_.config().pool, TemplateDiskVolumeName(key));
  for (int n = 1; n <= options_.spare_images; ++n) {
    Status d = hv.DeleteVolume(node_.config().pool, TemplateSpareVolumeName(key, n));
    if (!d.ok() && d.code() != Code::kNotFound && c.ok()) c = d;
  }
  return !a.ok() ? a : !b.ok() ? b : c;
}

Status TemplateCache::Invalidate(const std::string& key) {
  {
    std::lock_guard lock(mu_);
    entries_.erase(key);
    spares_.erase(key);
    if (building_.count(key)) {
      invalidated_while_building_.insert(key);  // Ensure removes it when the build ends
      return Status::Ok();
    }
  }
  spdlog::info("invalidating template {} on node {}", key.substr(0, 16), node_.name());
  return RemoveVolumes(key);
}

Result<std::vector<std::string>> TemplateCache::ListKeys() {
  (void)RefreshPool();
  BERTH_ASSIGN_OR_RETURN(auto volumes, node_.hypervisor().ListVolumes(node_.config().pool));
  std::set<std::string> saves, records;
  for (const auto& v : volumes) {
    if (v.name.size() == 4 + 64 + 5 && v.name.rfind("tpl-", 0) == 0) {
      std::string key = v.name.substr(4, 64);
      if (!IsHex(key)) continue;
      if (v.name.ends_with(".save")) saves.insert(key);
      if (v.name.ends_with(".json")) records.insert(key);
    }
  }
  std::vector<std::string> out;
  for (const auto& k : saves) {
    if (records.count(k)) out.push_back(k);
  }
  return out;
}

Result<std::vector<std::string>> TemplateCache::Prune(const std::set<std::string>& live_keys) {
  auto& hv = node_.hypervisor();
  const std::string& pool = node_.config().pool;
  (void)RefreshPool();
  BERTH_ASSIGN_OR_RETURN(auto volumes, hv.ListVolumes(pool));
  std::set<std::string> keys, clone_volumes, build_overlays;
  for (const auto& v : volumes) {
    if (v.name.size() == 4 + 64 + 5 && v.name.rfind("tpl-", 0) == 0 && IsHex(v.name.substr(4, 64)) &&
        (v.name.ends_with(".save") || v.name.ends_with(".json") || v.name.ends_with(".disk"))) {
      keys.insert(v.name.substr(4, 64));
    } else if (v.name.size() > 4 + 64 + 6 && v.name.rfind("tpl-", 0) == 0 && IsHex(v.name.substr(4, 64)) &&
               v.name.compare(4 + 64, 6, ".spare") == 0) {
      keys.insert(v.name.substr(4, 64));
    } else if (v.name.rfind("tplclone-", 0) == 0 && v.name.ends_with(".save")) {
      clone_volumes.insert(v.name);
    } else if (v.name.size() == 4 + 16 + 6 && v.name.rfind("tpl-", 0) == 0 && v.name.ends_with(".qcow2")) {
      build_overlays.insert(v.name);
    }
  }
  std::vector<std::string> removed;
  Status first_error;
  for (const auto& key : keys) {
    if (live_keys.count(key)) continue;
    {
      std::lock_guard lock(mu_);
      if (building_.count(key)) continue;
      entries_.erase(key);
      spares_.erase(key);
    }
    Status s = RemoveVolumes(key);
    if (s.ok()) {
      removed.push_back(key);
    } else if (first_error.ok()) {
      first_error = s;
    }
  }
  std::lock_guard lock(mu_);
  for (const auto& name : clone_volumes) {
    if (!clones_in_flight_.count(name)) (void)hv.DeleteVolume(pool, name);
  }
  for (const auto& name : build_overlays) {
    bool in_use = false;
    for (const auto& [key, unused] : building_) in_use |= BuildOverlayVolumeName(key) == name;
    if (!in_use) (void)hv.DeleteVolume(pool, name);
  }
  if (!first_error.ok()) return first_error;
  return removed;
}

Status TemplateCache::CheckNodeMatches(const Entry& entry) const {
  const std::string accel = AccelName();
  const std::string key16 = entry.info.key.substr(0, 16);
  if (entry.info.inputs.accel != accel) {
    return Status::FailedPrecondition("template " + key16 + " was built for accel " + entry.info.inputs.accel +
                                      "; node " + node_.name() + " uses " + accel);
  }
  if (entry.info.inputs.cpu_model != node_.info().cpu_model) {
    return Status::FailedPrecondition("template " + key16 + " was built on CPU '" + entry.info.inputs.cpu_model +
                                      "'; node " + node_.name() + " has '" + node_.info().cpu_model + "'");
  }
  std::string type = SavedDomainType(entry.header.xml);
  if (type != (accel == "kvm" ? "kvm" : "qemu")) {
    return Status::FailedPrecondition("template " + key16 + " holds a domain of type '" + type + "'; node " +
                                      node_.name() + " uses " + accel);
  }
  return Status::Ok();
}

Result<CloneStart> TemplateCache::StartClone(const std::string& key, const CloneRequest& request) {
  if (request.domain.empty()) return Status::InvalidArgument("domain", "a clone needs a domain name");
  if (request.overlay_path.empty()) return Status::InvalidArgument("overlay_path", "a clone needs its own overlay");
  if (request.console_log_path.empty()) {
    return Status::InvalidArgument("console_log_path", "a clone needs its own console log");
  }
  if (auto found = Lookup(key); !found.ok()) {
    // Damaged in the pool (e.g. found after a restart with a truncated save image).
    if (found.status().code() == Code::kFailedPrecondition) (void)Invalidate(key);
    return found.status();
  }
  Entry entry;
  {
    std::lock_guard lock(mu_);
    auto it = entries_.find(key);
    if (it == entries_.end()) return Status::NotFound("template " + key + " was invalidated");
    entry = it->second;
  }
  BERTH_RETURN_IF_ERROR(CheckNodeMatches(entry));
  if (!entry.info.inputs.network.empty() && request.nics.empty()) {
    return Status::InvalidArgument("nics", "a clone of a networked template needs its own NIC (MAC)");
  }

  hv::CloneIdentity identity;
  identity.name = request.domain;
  identity.uuid = request.uuid;
  identity.title = request.title;
  identity.metadata = request.metadata;
  identity.disks["vda"] = request.overlay_path;
  identity.console_log_path = request.console_log_path;
  identity.nics = request.nics;
  BERTH_RETURN_IF_ERROR(hv::ValidateDomainMetadata(request.metadata));
  BERTH_ASSIGN_OR_RETURN(std::string xml, hv::RewriteDomainIdentity(entry.header.xml, identity));
  BERTH_ASSIGN_OR_RETURN(std::string head, hv::EncodeSaveImageHeader(entry.header, xml));

  auto& hv = node_.hypervisor();
  const std::string& pool = node_.config().pool;
  const std::string clone_volume = CloneSaveVolumeName(request.domain);
  {
    std::lock_guard lock(mu_);
    if (!clones_in_flight_.insert(clone_volume).second) {
      return Status::AlreadyExists("a clone named " + request.domain + " is being started");
    }
  }
  bool restore_attempted = false;
  // Cleans up a failed start; `template_bad` invalidates the template too.
  auto fail = [&](Status s, bool template_bad) -> Status {
    if (restore_attempted) (void)hv.DestroyDomain(request.domain);
    if (Status d = hv.DeleteVolume(pool, clone_volume); !d.ok() && d.code() != Code::kNotFound) {
      spdlog::warn("deleting clone save volume {}: {}", clone_volume, d.ToString());
    }
    {
      std::lock_guard lock(mu_);
      clones_in_flight_.erase(clone_volume);
    }
    if (template_bad) {
      spdlog::warn("clone {} of template {} failed ({}); invalidating the template", request.domain, key.substr(0, 16),
                   s.ToString());
      (void)Invalidate(key);
    }
    return s.WithContext("starting clone " + request.domain + " of template " + key.substr(0, 16));
  };

  CloneStart out;
  const int64_t t0 = env_->MonotonicMs();
  // The clone's disk: the template's, as its saved memory knows it.
  {
    const std::string overlay_volume = request.overlay_path.substr(request.overlay_path.rfind('/') + 1);
    if (!entry.disk) return fail(Status::FailedPrecondition("template has no disk state"), true);
    auto written = hv.WriteVolume(pool, overlay_volume, *entry.disk);
    if (!written.ok()) return fail(written.status().WithContext("writing the clone's overlay"), false);
    if (written->path != request.overlay_path) {
      return fail(Status::InvalidArgument("overlay_path", request.overlay_path + " is not a volume of pool " + pool),
                  false);
    }
  }
  // The save image: while no other clone of this template restores, the
  // template's own file with the clone's header (nothing is copied; the
  // template's header goes back right after the restore, which has read it
  // by then). Clones that start meanwhile take a free spare copy the same way
  // (no header to put back: every user writes its own), or copy the image,
  // keeping the copy as a spare while fewer than spare_images exist. A header
  // that does not fit needs a copy of its own. libvirt refuses writes to a
  // volume while it is the source of a copy ("still in use"), so a clone goes
  // to the template's own file only while no copy runs.
  const bool header_fits = head.size() == entry.header.stream_offset();
  bool in_place = false;
  int spare = 0;             // 1-based index of the spare this clone uses; 0: none
  bool spare_made = false;   // ... which it fills with a copy first
  bool spare_ready = false;  // ... and which holds a complete copy
  uint64_t spare_generation = 0;
  if (header_fits && entry.header_bytes) {
    std::lock_guard lock(mu_);
    in_place = copying_[key] == 0 && in_place_.insert(key).second;
    if (in_place) in_place_writing_.insert(key);
    if (!in_place && options_.spare_images > 0) {
      Spares& spares = spares_[key];
      if (spares.generation == 0) spares.generation = next_spare_generation_++;
      spare_generation = spares.generation;
      auto& states = spares.states;
      auto it = std::find(states.begin(), states.end(), SpareState::kFree);
      if (it == states.end()) {
        it = std::find(states.begin(), states.end(), SpareState::kAbsent);
        if (it == states.end() && states.size() < static_cast<size_t>(options_.spare_images)) {
          it = states.insert(states.end(), SpareState::kAbsent);
        }
        spare_made = it != states.end();
      }
      if (it != states.end()) {
        *it = SpareState::kBusy;
        spare = static_cast<int>(it - states.begin()) + 1;
      }
    }
  }
  const std::string spare_volume = spare > 0 ? TemplateSpareVolumeName(key, spare) : std::string();
  // Gives the spare back: free if it holds a complete copy, else its volume
  // goes. A spare forgotten meanwhile (Invalidate) is left to whoever replaces it.
  bool spare_released = spare == 0;
  auto release_spare = [&]() {
    if (spare_released) return;
    spare_released = true;
    bool drop = false;
    {
      std::lock_guard lock(mu_);
      auto it = spares_.find(key);
      if (it != spares_.end() && it->second.generation == spare_generation &&
          static_cast<size_t>(spare) <= it->second.states.size()) {
        drop = !spare_ready;
        it->second.states[spare - 1] = drop ? SpareState::kAbsent : SpareState::kFree;
      }
    }
    if (drop) (void)hv.DeleteVolume(pool, spare_volume);
  };
  bool header_restored = !in_place;
  // Puts the template's header back and frees the slot; false if that failed.
  auto restore_template_header = [&]() -> bool {
    if (header_restored) return true;
    header_restored = true;
    return PutHeaderBack(key, entry.info.save_volume, *entry.header_bytes);
  };
  // Undoes the image choice of a start that fails before its restore.
  // The in-place clone's header is in the template's file: copies may start
  // (see copy_volume).
  bool header_written = !in_place;
  auto done_writing = [&]() {
    if (header_written) return;
    header_written = true;
    {
      std::lock_guard lock(mu_);
      in_place_writing_.erase(key);
    }
    in_place_cv_.notify_all();
  };
  auto release_image = [&]() -> bool {
    done_writing();
    release_spare();
    return restore_template_header();
  };
  const std::string image_volume = in_place ? entry.info.save_volume : spare > 0 ? spare_volume : clone_volume;
  std::string image_path;
  {
    auto copy_volume = [&]() -> Result<hv::VolumeInfo> {
      // A spare of an earlier berthd may hold anything: replaced.
      if (spare_made) (void)hv.DeleteVolume(pool, spare_volume);
      {
        // libvirt refuses writes to a volume while it is the source of a
        // copy: a clone that goes in place writes its header first (a few
        // ms), instead of retrying until this copy ends.
        std::unique_lock lock(mu_);
        in_place_cv_.wait_for(lock, std::chrono::seconds(5), [&] { return in_place_writing_.count(key) == 0; });
        ++copying_[key];
      }
      auto copied = hv.CloneVolume(pool, entry.info.save_volume, image_volume);
      std::lock_guard lock(mu_);
      if (--copying_[key] == 0) copying_.erase(key);
      return copied;
    };
    const bool copies = !in_place && (spare == 0 || spare_made);
    Result<hv::VolumeInfo> image = copies ? copy_volume() : hv.LookupVolume(pool, image_volume);
    // A spare that went wrong is dropped; it says nothing about the template.
    const bool from_template = in_place || copies;
    if (!image.ok()) {
      const bool missing = image.status().code() == Code::kNotFound;
      (void)release_image();
      return fail(image.status(), missing && from_template);
    }
    image_path = image->path;
    if (image->capacity_bytes != entry.info.save_bytes) {
      (void)release_image();
      return fail(Status::FailedPrecondition("template save image is damaged: " +
                                             std::to_string(image->capacity_bytes) + " bytes, recorded " +
                                             std::to_string(entry.info.save_bytes)),
                  from_template);
    }
    auto magic = hv.DownloadVolumeRange(pool, image_volume, 0, hv::kSaveHeaderSize);
    if (!magic.ok()) {
      (void)release_image();
      return fail(magic.status(), false);
    }
    if (magic->size() < hv::kSaveHeaderSize || magic->compare(0, 16, "LibvirtQemudSave") != 0 ||
        LeU32(*magic, 20) != entry.header.data_len) {
      (void)release_image();
      return fail(Status::FailedPrecondition("template save image has a damaged header"), from_template);
    }
    spare_ready = spare > 0;
    Status rewritten;
    if (header_fits) {
      // libvirt pads the XML area, so the new header usually fits in place.
      rewritten = in_place ? WriteSaveHeader(image_volume, head) : hv.UploadVolumeRange(pool, image_volume, 0, head);
      done_writing();
    } else {
      // A larger header moves the stream: rewrite the whole clone (a copy).
      uint64_t stream_offset = entry.header.stream_offset();
      auto stream = hv.DownloadVolumeRange(pool, clone_volume, stream_offset, image->capacity_bytes - stream_offset);
      if (!stream.ok()) return fail(stream.status(), false);
      head += *stream;
      stream->clear();
      rewritten = hv.WriteVolume(pool, clone_volume, head).status();
    }
    if (!rewritten.ok()) {
      const bool template_ok = release_image();
      return fail(rewritten, !template_ok);
    }
  }
  out.copy_ms = env_->MonotonicMs() - t0;
  out.in_place = in_place || (spare > 0 && !spare_made);
  out.spare = spare;

  const int64_t t1 = env_->MonotonicMs();
  restore_attempted = true;
  hv::Hypervisor* hvp = &hv;
  const std::string path = image_path;
  const std::string domain = request.domain;
  Status restored = RunBounded([hvp, path] { return hvp->RestoreDomain(path); }, options_.restore_timeout_ms,
                               [hvp, domain] { (void)hvp->DestroyDomain(domain); }, "restoring " + domain);
  out.restore_ms = env_->MonotonicMs() - t1;
  release_spare();
  if (!restored.ok()) {
    (void)restore_template_header();
    return fail(restored, true);
  }
  // The template's header goes back in the background: the write waits
  // while another clone copies the template's file (libvirt refuses it
  // meanwhile), which is no reason to keep this clone waiting. Other clones
  // use spares until it is back.
  if (!header_restored) {
    header_restored = true;
    PutHeaderBackLater(key, entry.info.save_volume, entry.header_bytes);
  }
  // The running domain no longer needs its save image.
  if (!in_place && spare == 0) {
    if (Status d = hv.DeleteVolume(pool, clone_volume); !d.ok()) {
      spdlog::warn("deleting clone save volume {}: {}", clone_volume, d.ToString());
    }
  }

  const int64_t t2 = env_->MonotonicMs();
  auto connected = hv::ConnectRestoredAgent(hv, request.domain, hv::ChannelSpec{}.name, options_.hello_timeout_ms);
  if (!connected.ok()) return fail(connected.status(), true);
  out.agent = std::move(connected->client);
  out.hello = std::move(connected->hello);
  out.hello_ms = env_->MonotonicMs() - t2;
  if (connected->reconnects > 0) {
    spdlog::warn("clone {} of template {}: the agent answered hello only after {} reconnect(s), {} ms", request.domain,
                 key.substr(0, 16), connected->reconnects, out.hello_ms);
  }
  {
    std::lock_guard lock(mu_);
    clones_in_flight_.erase(clone_volume);
  }
  const std::string source = in_place         ? "in place"
                             : spare == 0       ? "copied"
                             : spare_made       ? "copied to spare " + std::to_string(spare)
                                                : "spare " + std::to_string(spare);
  spdlog::info("clone {} of template {}: copy {} ms, restore {} ms, hello {} ms (save image {} KiB, {}; channel open {} ms)",
               request.domain, key.substr(0, 16), out.copy_ms, out.restore_ms, out.hello_ms,
               entry.info.save_bytes >> 10, source, connected->open_ms);
  return out;
}

agent::ExecMsg PrepareRootfsMsg(const FunctionSpec& spec) {
  agent::ExecMsg prepare;
  prepare.prepare_only = true;
  prepare.argv = spec.entrypoint;
  prepare.env = spec.env;
  prepare.cwd = spec.cwd;
  return prepare;
}

std::string LiveForkSaveVolumeName(const std::string& child_domain) { return "lfork-" + child_domain + ".save"; }

Result<LiveForkStart> LiveFork(Env* env, Node& node, const LiveForkRequest& request, const TemplateOptions& options) {
  if (request.parent_domain.empty() || request.parent_overlay_volume.empty()) {
    return Status::InvalidArgument("pid", "the parent has no domain or overlay to fork");
  }
  if (request.child.domain.empty() || request.child_overlay_volume.empty() || request.child.console_log_path.empty()) {
    return Status::InvalidArgument("domain", "a live-forked child needs a domain name, overlay and console log");
  }
  BERTH_RETURN_IF_ERROR(hv::ValidateDomainMetadata(request.child.metadata));
  auto& hv = node.hypervisor();
  hv::Hypervisor* hvp = &hv;
  const std::string& pool = node.config().pool;
  BERTH_ASSIGN_OR_RETURN(std::string pool_path, hv.GetPoolPath(pool));
  const std::string save_volume = LiveForkSaveVolumeName(request.child.domain);
  const std::string save_path = pool_path + "/" + save_volume;
  const std::string parent = request.parent_domain;
  const std::string child = request.child.domain;

  LiveForkStart out;
  bool restore_attempted = false;
  auto fail = [&](Status s) -> Status {
    if (restore_attempted) (void)hv.DestroyDomain(child);
    (void)hv.RefreshPool(pool);  // the save image was written outside the storage API
    if (Status d = hv.DeleteVolume(pool, save_volume); !d.ok()) {
      spdlog::warn("deleting live-fork save image {}: {}", save_volume, d.ToString());
    }
    return s.WithContext("live fork of " + parent + " into " + child);
  };

  // 1. Freeze the parent: memory + device state and disk of one instant.
  const int64_t t0 = env->MonotonicMs();
  BERTH_RETURN_IF_ERROR(hv.SuspendDomain(parent));
  bool resumed = false;
  auto resume = [&]() -> Status {
    if (resumed) return Status::Ok();
    resumed = true;
    Status s = hv.ResumeDomain(parent);
    out.paused_ms = env->MonotonicMs() - t0;
    if (!s.ok()) spdlog::error("resuming {} after a live fork: {}", parent, s.ToString());
    return s;
  };
  Status saved = RunBounded([hvp, parent, save_path] { return hvp->SaveDomainMemory(parent, save_path); },
                            options.save_timeout_ms, [] {}, "saving the memory of " + parent);
  out.save_ms = env->MonotonicMs() - t0;
  if (!saved.ok()) {
    (void)resume();
    return fail(saved);
  }
  const int64_t d0 = env->MonotonicMs();
  auto overlay = hv.DownloadVolumeRange(pool, request.parent_overlay_volume, 0, kMaxLiveForkOverlayBytes + 1);
  if (overlay.ok() && overlay->size() > kMaxLiveForkOverlayBytes) {
    overlay = Status::ResourceExhausted("the parent's overlay holds more than " +
                                        std::to_string(kMaxLiveForkOverlayBytes >> 20) + " MiB of writes");
  }
  Result<hv::VolumeInfo> child_overlay =
      overlay.ok() ? hv.WriteVolume(pool, request.child_overlay_volume, *overlay) : Result<hv::VolumeInfo>(overlay.status());
  if (overlay.ok()) overlay->clear();
  out.disk_ms = env->MonotonicMs() - d0;
  Status resumed_status = resume();
  if (!child_overlay.ok()) return fail(child_overlay.status().WithContext("copying the parent's overlay"));
  if (!resumed_status.ok()) return fail(resumed_status);

  // 2. The child: the save image is private to it already (written just
  // now), so its header is rewritten in place instead of in a copy.
  const int64_t r0 = env->MonotonicMs();
  if (Status s = hv.RefreshPool(pool); !s.ok()) return fail(s);
  auto head = hv.DownloadVolumeRange(pool, save_volume, 0, hv::kSaveHeaderSize);
  if (!head.ok()) return fail(head.status());
  if (head->size() < hv::kSaveHeaderSize) return fail(Status::Internal("the live-fork save image is truncated"));
  const uint32_t data_len = LeU32(*head, 20);
  auto bytes = hv.DownloadVolumeRange(pool, save_volume, 0, hv::kSaveHeaderSize + uint64_t{data_len});
  if (!bytes.ok()) return fail(bytes.status());
  auto header = hv::ParseSaveImageHeader(*bytes);
  if (!header.ok()) return fail(header.status());
  hv::CloneIdentity identity;
  identity.name = child;
  identity.uuid = request.child.uuid;
  identity.title = request.child.title;
  identity.metadata = request.child.metadata;
  identity.disks["vda"] = child_overlay->path;
  identity.console_log_path = request.child.console_log_path;
  identity.nics = request.child.nics;  // a networked parent's child: its own MAC (NetUp then applies it)
  auto xml = hv::RewriteDomainIdentity(header->xml, identity);
  if (!xml.ok()) return fail(xml.status());
  auto encoded = hv::EncodeSaveImageHeader(*header, *xml);
  if (!encoded.ok()) return fail(encoded.status());
  if (encoded->size() == header->stream_offset()) {
    if (Status s = hv.UploadVolumeRange(pool, save_volume, 0, *encoded); !s.ok()) return fail(s);
  } else {
    auto info = hv.LookupVolume(pool, save_volume);
    if (!info.ok()) return fail(info.status());
    auto stream = hv.DownloadVolumeRange(pool, save_volume, header->stream_offset(),
                                         info->capacity_bytes - header->stream_offset());
    if (!stream.ok()) return fail(stream.status());
    *encoded += *stream;
    stream->clear();
    if (auto w = hv.WriteVolume(pool, save_volume, *encoded); !w.ok()) return fail(w.status());
  }
  restore_attempted = true;
  Status restored = RunBounded([hvp, save_path] { return hvp->RestoreDomain(save_path); }, options.restore_timeout_ms,
                               [hvp, child] { (void)hvp->DestroyDomain(child); }, "restoring " + child);
  if (!restored.ok()) return fail(restored);
  out.restore_ms = env->MonotonicMs() - r0;
  if (Status d = hv.DeleteVolume(pool, save_volume); !d.ok()) {
    spdlog::warn("deleting live-fork save image {}: {}", save_volume, d.ToString());
  }

  const int64_t h0 = env->MonotonicMs();
  auto channel = hv.OpenAgentChannel(child, hv::ChannelSpec{}.name);
  if (!channel.ok()) return fail(channel.status());
  out.agent = std::make_unique<hv::AgentClient>(std::move(*channel));
  if (!request.net_up_mac.empty()) {
    // Hello first: the restored agent may have seen the parent's host go
    // (then it replies to nothing before a Hello), and the guest gets the
    // host's entropy and clock before it asks for a lease. The Hello that
    // marks the fork comes after NetUp, so the command sees the network.
    if (auto first = out.agent->Hello(options.hello_timeout_ms); !first.ok()) {
      out.agent->Close();
      return fail(first.status().WithContext("the child's agent"));
    }
    auto lease = out.agent->NetUp(request.net_up_mac, request.net_up_timeout_ms);
    if (!lease.ok()) {
      out.agent->Close();
      return fail(lease.status().WithContext("the child's network"));
    }
    out.lease = std::move(*lease);
  }
  auto hello = out.agent->Hello(options.hello_timeout_ms, request.parent_pid, request.child_execution_id);
  if (!hello.ok()) {
    out.agent->Close();
    return fail(hello.status());
  }
  out.hello = std::move(*hello);
  out.hello_ms = env->MonotonicMs() - h0;
  return out;
}

}  // namespace berth::manager
