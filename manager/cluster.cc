#include "manager/cluster.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <nlohmann/json.hpp>

#include "manager/templates.h"

namespace berth::manager {
namespace {

using json = nlohmann::json;

bool IsLabelText(const std::string& s) {
  if (s.empty() || s.size() > 63) return false;
  for (char c : s) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == '/')) return false;
  }
  return true;
}

json SpecJson(const NodeSpec& s) {
  return {{"accel", s.accel},
          {"labels", s.labels},
          {"cpu_overcommit", s.cpu_overcommit},
          {"memory_overcommit", s.memory_overcommit},
          {"reserved_memory_mib", s.reserved_memory_mib}};
}

NodeSpec SpecFromRow(const NodeRow& row) {
  NodeSpec s;
  s.name = row.name;
  s.uri = row.uri;
  json j = json::parse(row.spec_json, nullptr, false);
  if (j.is_object()) {
    s.accel = j.value("accel", std::string("auto"));
    s.labels = j.value("labels", std::map<std::string, std::string>{});
    s.cpu_overcommit = j.value("cpu_overcommit", 4.0);
    s.memory_overcommit = j.value("memory_overcommit", 1.0);
    s.reserved_memory_mib = j.value("reserved_memory_mib", uint64_t{512});
  }
  return s;
}

// img-<64 hex>.<fmt>
bool IsCachedImageVolume(const std::string& name) {
  return name.rfind("img-", 0) == 0 && name.size() >= 4 + 64 + 2 && name[4 + 64] == '.';
}

}  // namespace

std::set<std::string> CachedImageDigests(const std::vector<hv::VolumeInfo>& pool_volumes) {
  std::set<std::string> out;
  for (const auto& v : pool_volumes) {
    if (IsCachedImageVolume(v.name)) out.insert(v.name.substr(4, 64));
  }
  return out;
}

uint64_t CachedImageBytes(const std::vector<hv::VolumeInfo>& pool_volumes) {
  uint64_t bytes = 0;
  for (const auto& v : pool_volumes) {
    if (IsCachedImageVolume(v.name)) bytes += v.allocation_bytes;
  }
  return bytes;
}

Status ValidateNodeSpec(const NodeSpec& spec) {
  if (spec.name.empty() || spec.name.size() > 63) return Status::InvalidArgument("name", "must be 1 to 63 characters");
  for (char c : spec.name) {
    if (!(std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)) || c == '-')) {
      return Status::InvalidArgument("name", "may contain only lowercase letters, digits and '-'");
    }
  }
  static const char* kTransports[] = {"qemu:///system", "qemu+tcp://", "qemu+ssh://", "qemu+tls://", "qemu+unix:///"};
  bool ok = false;
  for (const char* t : kTransports) ok = ok || spec.uri.rfind(t, 0) == 0;
  if (!ok) {
    return Status::InvalidArgument(
        "uri", "unsupported libvirt URI '" + spec.uri +
                   "': use qemu:///system or a remote qemu+tcp://, qemu+ssh://, qemu+tls:// URI ending in /system");
  }
  if (spec.uri.find_first_of(" \t\n\r'\"`$;|&<>") != std::string::npos) {
    return Status::InvalidArgument("uri", "must not contain spaces, quotes or shell characters");
  }
  BERTH_RETURN_IF_ERROR(ValidateAccel(spec.accel));
  for (const auto& [k, v] : spec.labels) {
    if (!IsLabelText(k) || !IsLabelText(v)) {
      return Status::InvalidArgument("labels", "label '" + k + "=" + v +
                                                   "': keys and values are 1-63 letters, digits, '-', '_', '.', '/'");
    }
  }
  if (!(spec.cpu_overcommit > 0 && spec.cpu_overcommit <= 64)) {
    return Status::InvalidArgument("cpu_overcommit", "must be > 0 and <= 64");
  }
  if (!(spec.memory_overcommit > 0 && spec.memory_overcommit <= 4)) {
    return Status::InvalidArgument("memory_overcommit", "must be > 0 and <= 4");
  }
  return Status::Ok();
}

Cluster::Cluster(Env* env, Store* store, RuntimeArtifacts runtime, ClusterOptions options)
    : env_(env),
      store_(store),
      runtime_(std::move(runtime)),
      options_(std::move(options)),
      scheduler_(options_.policy) {}

Cluster::~Cluster() { StopMonitor(); }

NodeConfig Cluster::ConfigFor(const NodeSpec& spec) const {
  NodeConfig c = local_config_;
  c.name = spec.name;
  c.uri = spec.uri;
  c.accel = spec.accel;
  c.reserved_memory_mib = spec.reserved_memory_mib;
  // Each added node's pools live in its own folders: several libvirtds on
  // one machine (tests) must not share a pool directory.
  c.pool_dir = options_.state_dir + "/" + spec.name + "/pool";
  c.log_dir = options_.state_dir + "/" + spec.name + "/logs";
  return c;
}

Result<std::unique_ptr<Node>> Cluster::Connect(const NodeSpec& spec, const NodeConfig& config) {
  auto hv = options_.connect(spec.uri);
  if (!hv.ok()) {
    return Status::FailedPrecondition("cannot reach libvirt at " + spec.uri + ": " + hv.status().message(), "uri");
  }
  auto node = std::make_unique<Node>(env_, config, std::move(*hv));
  if (Status s = node->Prepare(runtime_); !s.ok()) {
    return Status::FailedPrecondition("preparing node " + spec.name + " failed: " + s.message(), "uri");
  }
  return node;
}

void Cluster::PushToScheduler(const Entry& e) {
  sched::NodeResources r;
  r.name = e.spec.name;
  r.state = e.down || e.suspect ? sched::NodeState::kDown
            : e.admin_state == "cordoned" ? sched::NodeState::kCordoned
            : e.admin_state == "draining" ? sched::NodeState::kDraining
                                          : sched::NodeState::kUp;
  if (!e.node) r.state = sched::NodeState::kDown;
  r.accel = e.node && e.node->accel() == hv::Accel::kKvm ? "kvm" : "tcg";
  r.labels = e.spec.labels;
  if (e.node) {
    r.cpu_model = e.node->info().cpu_model;
    r.total_vcpus = e.node->info().cpus;
    r.total_memory_mib = e.node->info().memory_mib;
  }
  r.reserved_memory_mib = std::min<uint64_t>(e.spec.reserved_memory_mib, r.total_memory_mib);
  // Cached images, and those placements are bringing, count against the
  // pool's disk (0 = unknown: no disk limit).
  uint64_t image_bytes = e.image_cache_bytes;
  r.cached_images = e.cached_images;
  for (const auto& [digest, pending] : e.pending_images) {
    image_bytes += pending.bytes;
    r.cached_images.insert(digest);
  }
  r.total_disk_bytes = e.pool.capacity_bytes;
  r.reserved_disk_bytes = std::min<uint64_t>(image_bytes, r.total_disk_bytes);
  r.cpu_overcommit = e.spec.cpu_overcommit;
  r.memory_overcommit = e.spec.memory_overcommit;
  r.template_keys = e.template_keys;
  if (Status s = scheduler_.UpsertNode(r); !s.ok()) spdlog::warn("scheduler: node {}: {}", r.name, s.ToString());
}

Status Cluster::Persist(const Entry& e) {
  NodeRow row{e.spec.name, e.spec.uri, SpecJson(e.spec).dump(), e.admin_state, env_->NowUnixMs()};
  return store_->PutNode(row);
}

Result<Node*> Cluster::AddLocal(const NodeConfig& config) {
  local_config_ = config;
  NodeSpec spec;
  spec.name = config.name;
  spec.uri = config.uri;
  spec.accel = config.accel;
  spec.reserved_memory_mib = config.reserved_memory_mib;
  std::string admin_state = "up";
  // Keep what an operator said about it (labels, cordon) across restarts.
  if (auto rows = store_->ListNodes(); rows.ok()) {
    for (const auto& row : *rows) {
      if (row.name == spec.name) {
        NodeSpec saved = SpecFromRow(row);
        spec.labels = saved.labels;
        spec.cpu_overcommit = saved.cpu_overcommit;
        spec.memory_overcommit = saved.memory_overcommit;
        admin_state = row.state;
      }
    }
  }
  auto hv = options_.connect(config.uri);
  if (!hv.ok()) return hv.status();
  auto node = std::make_unique<Node>(env_, config, std::move(*hv));
  BERTH_RETURN_IF_ERROR(node->Prepare(runtime_).WithContext("preparing node " + config.name));
  {
    std::lock_guard lock(mu_);
    Entry& e = nodes_[spec.name];
    e.spec = spec;
    e.node = std::move(node);
    e.admin_state = admin_state;
    e.last_ok_ms = env_->MonotonicMs();
    local_ = e.node.get();
    local_name_ = spec.name;
    BERTH_RETURN_IF_ERROR(Persist(e));
    PushToScheduler(e);
  }
  RefreshLocality(spec.name);
  return local_;
}

Status Cluster::LoadRegistered() {
  BERTH_ASSIGN_OR_RETURN(auto rows, store_->ListNodes());
  for (const auto& row : rows) {
    if (row.name == local_name_) continue;
    NodeSpec spec = SpecFromRow(row);
    auto node = Connect(spec, ConfigFor(spec));
    std::lock_guard lock(mu_);
    Entry& e = nodes_[spec.name];
    e.spec = spec;
    e.admin_state = row.state;
    if (node.ok()) {
      e.node = std::move(*node);
      e.last_ok_ms = env_->MonotonicMs();
    } else {
      e.down = true;
      e.last_error = node.status().message();
      spdlog::warn("node {} is down: {}", spec.name, e.last_error);
    }
    PushToScheduler(e);
  }
  for (const auto& row : rows) {
    if (row.name != local_name_) RefreshLocality(row.name);
  }
  return Status::Ok();
}

Result<NodeView> Cluster::Add(const NodeSpec& spec) {
  BERTH_RETURN_IF_ERROR(ValidateNodeSpec(spec));
  {
    std::lock_guard lock(mu_);
    for (const auto& [name, e] : nodes_) {
      if (name == spec.name) return Status::AlreadyExists("node '" + spec.name + "' is already registered");
      if (e.spec.uri == spec.uri) {
        return Status::AlreadyExists("node '" + name + "' already has uri " + spec.uri);
      }
    }
  }
  BERTH_ASSIGN_OR_RETURN(auto node, Connect(spec, ConfigFor(spec)));
  std::lock_guard lock(mu_);
  if (nodes_.count(spec.name)) return Status::AlreadyExists("node '" + spec.name + "' is already registered");
  Entry& e = nodes_[spec.name];
  e.spec = spec;
  e.node = std::move(node);
  e.last_ok_ms = env_->MonotonicMs();
  if (Status s = Persist(e); !s.ok()) {
    nodes_.erase(spec.name);
    return s;
  }
  PushToScheduler(e);
  spdlog::info("node {} added ({})", spec.name, spec.uri);
  return ViewOf(e);
}

Status Cluster::Remove(const std::string& name) {
  std::lock_guard lock(mu_);
  auto it = nodes_.find(name);
  if (it == nodes_.end()) return Status::NotFound("node '" + name + "' does not exist");
  if (it->second.node.get() == local_) {
    return Status::FailedPrecondition("the local node cannot be removed; cordon it instead", "name");
  }
  auto report = scheduler_.Report(name);
  if (report.ok() && report->claims > 0) {
    return Status(Code::kAborted,
                  "node '" + name + "' still runs " + std::to_string(report->claims) +
                      " execution(s); drain it and wait, or kill them first",
                  "name");
  }
  BERTH_RETURN_IF_ERROR(store_->DeleteNode(name));
  (void)scheduler_.RemoveNode(name);
  nodes_.erase(it);
  spdlog::info("node {} removed", name);
  return Status::Ok();
}

Result<NodeView> Cluster::SetAdminState(const std::string& name, const std::string& action) {
  std::lock_guard lock(mu_);
  auto it = nodes_.find(name);
  if (it == nodes_.end()) return Status::NotFound("node '" + name + "' does not exist");
  Entry& e = it->second;
  if (action == "cordon") {
    e.admin_state = "cordoned";
  } else if (action == "uncordon") {
    e.admin_state = "up";
  } else if (action == "drain") {
    auto report = scheduler_.Report(name);
    e.admin_state = report.ok() && report->claims > 0 ? "draining" : "cordoned";
  } else {
    return Status::InvalidArgument("action", "must be cordon, uncordon or drain");
  }
  BERTH_RETURN_IF_ERROR(Persist(e));
  PushToScheduler(e);
  return ViewOf(e);
}

Result<Node*> Cluster::Place(const std::string& claim_id, uint32_t vcpus, uint64_t memory_mib,
                             const std::map<std::string, std::string>& selector) {
  return Place(claim_id, vcpus, memory_mib, selector, PlacementHints{});
}

Result<Node*> Cluster::Place(const std::string& claim_id, uint32_t vcpus, uint64_t memory_mib,
                             const std::map<std::string, std::string>& selector, const PlacementHints& hints) {
  BERTH_ASSIGN_OR_RETURN(auto placed, PlaceWithAlternates(claim_id, vcpus, memory_mib, selector, hints, 0));
  return placed.node;
}

uint64_t Cluster::ImageBytesLocked(const std::string& digest, uint64_t from_options) const {
  if (digest.empty()) return 0;
  if (from_options > 0) return from_options;
  uint64_t bytes = 0;
  for (const auto& [name, e] : nodes_) {
    if (auto it = e.cached_image_bytes.find(digest); it != e.cached_image_bytes.end()) {
      bytes = std::max(bytes, it->second);
    }
  }
  return bytes;
}

void Cluster::NotePendingImage(Entry& e, const std::string& digest, uint64_t bytes, const std::string& claim_id) {
  if (digest.empty() || e.cached_images.count(digest) || e.pending_images.count(digest)) return;
  e.pending_images[digest] = Entry::PendingImage{bytes, claim_id, false};
  PushToScheduler(e);  // the execution puts the image there
}

Result<Node*> Cluster::ClaimOnAlternate(const std::string& claim_id, uint32_t vcpus, uint64_t memory_mib,
                                        std::vector<std::string>* alternates, const PlacementHints& hints) {
  const uint64_t image_from_options =
      options_.image_bytes && !hints.image_digest.empty() ? options_.image_bytes(hints.image_digest) : 0;
  std::lock_guard lock(mu_);
  const uint64_t image_bytes = ImageBytesLocked(hints.image_digest, image_from_options);
  while (!alternates->empty()) {
    const std::string name = alternates->front();
    alternates->erase(alternates->begin());
    auto it = nodes_.find(name);
    if (it == nodes_.end() || !it->second.node || it->second.down || it->second.suspect ||
        it->second.admin_state != "up") {
      continue;
    }
    auto report = scheduler_.Report(name);
    if (!report.ok() || report->free.vcpus < vcpus || report->free.memory_mib < memory_mib) continue;
    Entry& e = it->second;
    const bool image_here = hints.image_digest.empty() || e.cached_images.count(hints.image_digest) ||
                            e.pending_images.count(hints.image_digest);
    const uint64_t disk = options_.overlay_disk_bytes + (image_here ? 0 : image_bytes);
    // Pool space unknown (capacity 0): disk limits nothing there, as in the scheduler.
    if (report->capacity.disk_bytes > 0 && report->free.disk_bytes < disk) continue;
    BERTH_RETURN_IF_ERROR(
        scheduler_.ClaimOn(name, claim_id, sched::Resources{vcpus, memory_mib, options_.overlay_disk_bytes}));
    ClaimRow row{claim_id, name, vcpus, static_cast<int64_t>(memory_mib), env_->NowUnixMs(),
                 static_cast<int64_t>(options_.overlay_disk_bytes)};
    if (Status s = store_->InsertClaim(row); !s.ok()) {
      (void)scheduler_.Release(claim_id);
      return s;
    }
    NotePendingImage(e, hints.image_digest, image_bytes, claim_id);
    return e.node.get();
  }
  return Status::ResourceExhausted("no alternate node is left with room for claim " + claim_id);
}

Result<Cluster::Placed> Cluster::PlaceWithAlternates(const std::string& claim_id, uint32_t vcpus,
                                                     uint64_t memory_mib,
                                                     const std::map<std::string, std::string>& selector,
                                                     const PlacementHints& hints, uint32_t alternates) {
  sched::PlacementRequest req;
  req.claim_id = claim_id;
  req.vcpus = vcpus;
  req.memory_mib = memory_mib;
  req.label_selector = selector;
  req.alternates = alternates;
  req.disk_bytes = options_.overlay_disk_bytes;
  if (!hints.image_digest.empty()) req.image_digest = hints.image_digest;
  if (!hints.template_key.empty()) req.template_key = hints.template_key;
  // Asked outside mu_: it may read the image store.
  const uint64_t image_from_options =
      options_.image_bytes && !hints.image_digest.empty() ? options_.image_bytes(hints.image_digest) : 0;
  std::lock_guard lock(mu_);
  req.image_bytes = ImageBytesLocked(hints.image_digest, image_from_options);
  BERTH_ASSIGN_OR_RETURN(auto placement, scheduler_.Place(req));
  auto it = nodes_.find(placement.node);
  if (it == nodes_.end() || !it->second.node) {
    (void)scheduler_.Release(claim_id);
    return Status::Internal("scheduler chose unknown node " + placement.node);
  }
  ClaimRow row{claim_id, placement.node, vcpus, static_cast<int64_t>(memory_mib), env_->NowUnixMs(),
               static_cast<int64_t>(req.disk_bytes)};
  if (Status s = store_->InsertClaim(row); !s.ok()) {
    (void)scheduler_.Release(claim_id);
    return s;
  }
  NotePendingImage(it->second, hints.image_digest, req.image_bytes, claim_id);
  return Placed{it->second.node.get(), placement.alternates};
}

void Cluster::Release(const std::string& claim_id) {
  std::lock_guard lock(mu_);
  auto info = scheduler_.FindClaim(claim_id);
  (void)scheduler_.Release(claim_id);
  if (Status s = store_->DeleteClaim(claim_id); !s.ok()) spdlog::warn("releasing claim {}: {}", claim_id, s.ToString());
  // A draining node whose last claim went is drained: cordoned.
  if (info.ok()) {
    auto it = nodes_.find(info->node);
    if (it != nodes_.end()) {
      // The image it brought is in the pool by now or never will be: the next refresh tells.
      for (auto& [digest, pending] : it->second.pending_images) {
        if (pending.claim_id == claim_id) pending.claim_released = true;
      }
    }
    if (it != nodes_.end() && it->second.admin_state == "draining") {
      auto report = scheduler_.Report(info->node);
      if (report.ok() && report->claims == 0) {
        it->second.admin_state = "cordoned";
        (void)Persist(it->second);
        PushToScheduler(it->second);
        spdlog::info("node {} drained", info->node);
      }
    }
  }
}

void Cluster::ReleaseAllClaims() {
  auto claims = store_->ListClaims();
  if (!claims.ok()) return;
  for (const auto& c : *claims) {
    spdlog::warn("releasing stale claim {} on node {}", c.id, c.node);
    Release(c.id);
  }
}

void Cluster::RefreshLocality(const std::string& name) {
  std::shared_ptr<Node> node;  // kept alive through the libvirt calls below
  {
    std::lock_guard lock(mu_);
    auto it = nodes_.find(name);
    if (it == nodes_.end() || !it->second.node || it->second.down) return;
    node = it->second.node;
  }
  // Read outside the lock (libvirt calls), as the monitor's health check does.
  auto volumes = node->hypervisor().ListVolumes(node->config().pool);
  auto pool_info = node->hypervisor().GetPoolInfo(node->config().pool);
  std::set<std::string> templates;
  if (TemplateCache* cache = node->templates()) {
    if (auto keys = cache->ListKeys(); keys.ok()) templates.insert(keys->begin(), keys->end());
  }
  if (!volumes.ok()) return;
  // Space unknown (e.g. a driver without it): the scheduler sets no disk limit.
  hv::PoolInfo pool = pool_info.ok() ? *pool_info : hv::PoolInfo{};
  if (!pool_info.ok()) spdlog::debug("node {}: pool space unknown: {}", name, pool_info.status().ToString());
  std::lock_guard lock(mu_);
  auto it = nodes_.find(name);
  if (it == nodes_.end() || it->second.node != node) return;  // removed or replaced meanwhile
  Entry& e = it->second;
  std::set<std::string> images = CachedImageDigests(*volumes);
  uint64_t image_bytes = CachedImageBytes(*volumes);
  e.cached_image_bytes.clear();
  for (const auto& v : *volumes) {
    if (IsCachedImageVolume(v.name)) e.cached_image_bytes[v.name.substr(4, 64)] = v.allocation_bytes;
  }
  const size_t pending_before = e.pending_images.size();
  std::erase_if(e.pending_images,
                [&](const auto& p) { return p.second.claim_released || images.count(p.first) > 0; });
  bool same_disk = pool.capacity_bytes == e.pool.capacity_bytes && image_bytes == e.image_cache_bytes &&
                   pending_before == e.pending_images.size();
  // available changes with every write on the filesystem; it is only shown, never scheduled on.
  e.pool = pool;
  if (images == e.cached_images && templates == e.template_keys && same_disk) return;
  e.cached_images = std::move(images);
  e.template_keys = std::move(templates);
  e.image_cache_bytes = image_bytes;
  PushToScheduler(e);
}

Status Cluster::ClaimOn(const std::string& claim_id, const std::string& node, uint32_t vcpus, uint64_t memory_mib) {
  std::lock_guard lock(mu_);
  if (!nodes_.count(node)) return Status::NotFound("node '" + node + "' does not exist");
  if (auto held = scheduler_.FindClaim(claim_id); held.ok()) {
    if (held->node == node) return Status::Ok();
    (void)scheduler_.Release(claim_id);
  }
  // A claim re-installed after a restart keeps the disk it held (the
  // allowance may have changed since); one written before disks were
  // recorded, or a new one, gets today's allowance.
  uint64_t disk_bytes = options_.overlay_disk_bytes;
  if (auto stored = store_->GetClaim(claim_id); stored.ok() && stored->disk_bytes && *stored->disk_bytes >= 0) {
    disk_bytes = static_cast<uint64_t>(*stored->disk_bytes);
  }
  BERTH_RETURN_IF_ERROR(scheduler_.ClaimOn(node, claim_id, sched::Resources{vcpus, memory_mib, disk_bytes}));
  (void)store_->DeleteClaim(claim_id);  // the row may name another node or other amounts
  ClaimRow row{claim_id, node, vcpus, static_cast<int64_t>(memory_mib), env_->NowUnixMs(),
               static_cast<int64_t>(disk_bytes)};
  if (Status s = store_->InsertClaim(row); !s.ok()) {
    (void)scheduler_.Release(claim_id);
    return s;
  }
  return Status::Ok();
}

int Cluster::ReleaseStaleClaims(const std::function<bool(const ClaimRow&)>& stale) {
  auto claims = store_->ListClaims();
  if (!claims.ok()) {
    spdlog::warn("listing claims: {}", claims.status().ToString());
    return 0;
  }
  int released = 0;
  for (const auto& c : *claims) {
    if (!stale(c)) continue;
    spdlog::warn("releasing stale claim {} on node {}", c.id, c.node);
    Release(c.id);
    ++released;
  }
  return released;
}

int Cluster::ReleaseClaimsOn(const std::string& node, const std::function<bool(const std::string&)>& keep) {
  return ReleaseStaleClaims([&](const ClaimRow& c) { return c.node == node && !keep(c.id); });
}

int Cluster::ReleaseClaimsExcept(const std::set<std::string>& keep) {
  return ReleaseStaleClaims([&](const ClaimRow& c) { return keep.count(c.id) == 0; });
}

void Cluster::ReportUnreachable(const std::string& name) {
  std::lock_guard lock(mu_);
  auto it = nodes_.find(name);
  if (it == nodes_.end() || it->second.suspect || it->second.down) return;
  it->second.suspect = true;
  PushToScheduler(it->second);
  spdlog::warn("node {} did not answer; no new work goes there until it does", name);
}

Node* Cluster::Get(const std::string& name) {
  std::lock_guard lock(mu_);
  auto it = nodes_.find(name);
  return it == nodes_.end() ? nullptr : it->second.node.get();
}

std::shared_ptr<Node> Cluster::Share(const std::string& name) {
  std::lock_guard lock(mu_);
  auto it = nodes_.find(name);
  return it == nodes_.end() ? nullptr : it->second.node;
}

std::vector<Node*> Cluster::All() {
  std::lock_guard lock(mu_);
  std::vector<Node*> out;
  for (auto& [name, e] : nodes_) {
    if (e.node) out.push_back(e.node.get());
  }
  return out;
}

bool Cluster::IsDown(const std::string& name) {
  std::lock_guard lock(mu_);
  auto it = nodes_.find(name);
  return it == nodes_.end() || it->second.down;
}

NodeView Cluster::ViewOf(const Entry& e) {
  NodeView v;
  v.spec = e.spec;
  v.state = e.down ? "down" : e.admin_state;
  v.last_error = e.last_error;
  if (e.node) {
    v.accel = e.node->accel() == hv::Accel::kKvm ? "kvm" : "tcg";
    v.info = e.node->info();
  }
  v.pool_capacity_bytes = e.pool.capacity_bytes;
  v.pool_available_bytes = e.pool.available_bytes;
  v.image_cache_bytes = e.image_cache_bytes;
  if (auto r = scheduler_.Report(e.spec.name); r.ok()) {
    v.vcpus_capacity = r->capacity.vcpus;
    v.vcpus_allocated = r->allocated.vcpus;
    v.memory_capacity_mib = r->capacity.memory_mib;
    v.memory_allocated_mib = r->allocated.memory_mib;
    v.disk_capacity_bytes = r->capacity.disk_bytes;
    v.disk_allocated_bytes = r->allocated.disk_bytes;
    v.claims = static_cast<int64_t>(r->claims);
  }
  return v;
}

Result<NodeView> Cluster::View(const std::string& name) {
  std::lock_guard lock(mu_);
  auto it = nodes_.find(name);
  if (it == nodes_.end()) return Status::NotFound("node '" + name + "' does not exist");
  return ViewOf(it->second);
}

std::vector<NodeView> Cluster::Views() {
  std::lock_guard lock(mu_);
  std::vector<NodeView> out;
  for (const auto& [name, e] : nodes_) out.push_back(ViewOf(e));
  return out;
}

void Cluster::SetNodeListener(std::function<void(const std::string&, bool)> listener) {
  std::lock_guard lock(mu_);
  listener_ = std::move(listener);
}

void Cluster::SetReconcileHook(std::function<Status(Node&)> hook) {
  std::lock_guard lock(mu_);
  reconcile_hook_ = std::move(hook);
}

void Cluster::StartMonitor() {
  if (monitor_.joinable()) return;
  monitor_ = std::thread([this] { MonitorLoop(); });
}

void Cluster::StopMonitor() {
  {
    std::lock_guard lock(monitor_mu_);
    stop_ = true;
  }
  monitor_cv_.notify_all();
  if (monitor_.joinable()) monitor_.join();
}

void Cluster::MonitorLoop() {
  for (;;) {
    {
      std::unique_lock lock(monitor_mu_);
      if (monitor_cv_.wait_for(lock, std::chrono::milliseconds(options_.monitor_interval_ms), [&] { return stop_; })) {
        return;
      }
    }
    std::vector<std::pair<std::string, NodeSpec>> names;
    {
      std::lock_guard lock(mu_);
      for (const auto& [name, e] : nodes_) names.push_back({name, e.spec});
    }
    for (const auto& [name, spec] : names) CheckNode(name, spec);
  }
}

void Cluster::CheckNode(const std::string& name, const NodeSpec& spec) {
  // libvirt is called outside mu_: `node` keeps the Node alive should it be
  // removed meanwhile, and results only apply to the entry they were read for.
  std::shared_ptr<Node> node;
  bool was_down = false;
  std::function<Status(Node&)> reconcile;
  {
    std::lock_guard lock(mu_);
    auto it = nodes_.find(name);
    if (it == nodes_.end()) return;
    node = it->second.node;
    // A suspect node's executions may have ended lost without it being down.
    was_down = it->second.down || it->second.suspect;
    reconcile = reconcile_hook_;
  }
  Status health = Status::Unavailable("never connected");
  std::shared_ptr<Node> fresh;
  if (node) {
    health = node->hypervisor().GetNodeInfo().status();
  } else {
    auto connected = Connect(spec, ConfigFor(spec));
    if (connected.ok()) {
      fresh = std::move(*connected);
      health = Status::Ok();
    } else {
      health = connected.status();
    }
  }
  std::shared_ptr<Node> checked = node ? node : fresh;
  // A node that answers again is reconciled while still down: it takes no
  // new work before what it holds of ended executions is gone.
  if (health.ok() && was_down && reconcile && checked) {
    if (Status s = reconcile(*checked); !s.ok()) {
      health = Status::Unavailable("answers again, but reconciling it failed: " + s.message());
    } else {
      spdlog::info("node {} reconciled", name);
    }
  }
  std::function<void(const std::string&, bool)> notify;
  bool changed_to = false, changed = false;
  {
    std::lock_guard lock(mu_);
    auto it = nodes_.find(name);
    if (it == nodes_.end()) return;
    Entry& e = it->second;
    if (fresh) {
      if (e.node || e.spec.uri != spec.uri) return;  // connected or re-registered meanwhile
      e.node = fresh;
    } else if (e.node != node) {
      return;  // removed and registered again meanwhile: this answer is not about it
    }
    const int64_t now = env_->MonotonicMs();
    if (health.ok()) {
      e.last_ok_ms = now;
      e.last_error.clear();
      if (e.suspect) {
        e.suspect = false;
        if (!e.down) PushToScheduler(e);
      }
      if (e.down) {
        e.down = false;
        changed = true;
        changed_to = true;
      }
    } else {
      e.last_error = health.message();
      if (!e.down && now - e.last_ok_ms >= options_.down_after_ms) {
        e.down = true;
        changed = true;
        changed_to = false;
      }
    }
    if (changed) {
      PushToScheduler(e);
      notify = listener_;
    }
  }
  if (changed) {
    spdlog::warn("node {} is {}{}", name, changed_to ? "up again" : "down: ", changed_to ? "" : health.message());
    if (notify) notify(name, changed_to);
  }
  if (health.ok()) RefreshLocality(name);
}

}  // namespace berth::manager
