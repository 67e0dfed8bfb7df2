#include "manager/service.h"

#include <spdlog/spdlog.h>

#include <cctype>
#include <csignal>

#include "common/sha256.h"
#include "common/ids.h"
#include "hypervisor/domain_xml.h"
#include "manager/reconcile.h"
#include "manager/templates.h"

namespace berth::manager {
namespace {

// Error codes of executions whose command never ran because the node could
// not start them: another node may do better.
bool IsStartFailure(const std::string& code) {
  return code == "start_failed" || code == "image_unavailable" || code == "overlay_failed" ||
         code == "seed_failed" || code == "agent_unreachable" || code == "boot_timeout" || code == "no_capacity";
}

bool IsEnvName(const std::string& k) {
  if (k.empty() || std::isdigit(static_cast<unsigned char>(k[0]))) return false;
  for (char c : k) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_')) return false;
  }
  return true;
}

ImageMeta MetaFrom(const images::ImageRecord& r, const std::string& name, int64_t now) {
  ImageMeta m;
  m.id = r.id;
  m.name = name;
  m.format = r.format;
  m.filesystem = r.filesystem;
  m.size_bytes = r.size_bytes;
  m.virtual_size_bytes = r.virtual_size_bytes;
  m.created_ms = now;
  return m;
}

}  // namespace

namespace {
Status ValidateName(const char* field, const std::string& name) {
  if (name.empty() || name.size() > 63) {
    return Status::InvalidArgument(field, "must be 1 to 63 characters");
  }
  if (!std::islower(static_cast<unsigned char>(name[0])) && !std::isdigit(static_cast<unsigned char>(name[0]))) {
    return Status::InvalidArgument(field, "must start with a lowercase letter or digit");
  }
  for (char c : name) {
    if (!(std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)) || c == '-' ||
          c == '_')) {
      return Status::InvalidArgument(field, "may contain only lowercase letters, digits, '-' and '_'");
    }
  }
  return Status::Ok();
}
}  // namespace

Status ValidateFunctionName(const std::string& name) { return ValidateName("name", name); }
Status ValidateTenantName(const std::string& name) { return ValidateName("tenant", name); }


// Field names as the JSON API spells them: "gateway.<name>".
static Status ValidateGatewayPolicy(const GatewayPolicy& g) {
  if (g.auth != "public" && g.auth != "token" && g.auth != "tenant") {
    return Status::InvalidArgument("gateway.auth", "must be public, token or tenant");
  }
  auto rate_ok = [](double r) { return r >= 0 && r <= 1e6; };  // also false for NaN
  if (!rate_ok(g.rate_limit_per_s)) return Status::InvalidArgument("gateway.rate_limit_per_s", "must be between 0 and 1000000");
  if (!rate_ok(g.token_rate_limit_per_s)) {
    return Status::InvalidArgument("gateway.token_rate_limit_per_s", "must be between 0 and 1000000");
  }
  if (g.burst < 0 || g.burst > 1'000'000) return Status::InvalidArgument("gateway.burst", "must be between 0 and 1000000");
  if (g.token_burst < 0 || g.token_burst > 1'000'000) {
    return Status::InvalidArgument("gateway.token_burst", "must be between 0 and 1000000");
  }
  if (g.max_concurrency < 0 || g.max_concurrency > 10'000) {
    return Status::InvalidArgument("gateway.max_concurrency", "must be between 0 (the gateway's bound) and 10000");
  }
  if (g.max_queue < 0 || g.max_queue > 100'000) return Status::InvalidArgument("gateway.max_queue", "must be between 0 and 100000");
  return Status::Ok();
}

Status ValidateFunctionSpec(const FunctionSpec& spec) {
  BERTH_RETURN_IF_ERROR(ValidateFunctionName(spec.name));
  if (!IsSha256Hex(spec.image)) {
    return Status::InvalidArgument("image", "must be the sha256 id of an uploaded image (64 lowercase hex characters)");
  }
  if (spec.entrypoint.empty() || spec.entrypoint[0].empty()) {
    return Status::InvalidArgument("entrypoint", "must be a non-empty array of strings, e.g. [\"/bin/echo\", \"hi\"]");
  }
  for (const auto& a : spec.entrypoint) {
    if (a.find('\0') != std::string::npos) return Status::InvalidArgument("entrypoint", "must not contain NUL bytes");
  }
  if (spec.vcpus < 1 || spec.vcpus > 64) return Status::InvalidArgument("vcpus", "must be between 1 and 64");
  if (spec.memory_mib < 64 || spec.memory_mib > 65536) {
    return Status::InvalidArgument("memory_mib", "must be between 64 and 65536 (MiB)");
  }
  if (spec.timeout_ms < 1 || spec.timeout_ms > 3'600'000) {
    return Status::InvalidArgument("timeout_ms", "must be between 1 and 3600000 (one hour)");
  }
  for (const auto& [k, v] : spec.env) {
    if (!IsEnvName(k)) return Status::InvalidArgument("env", "variable name '" + k + "' is not a valid identifier");
    if (v.find('\0') != std::string::npos) return Status::InvalidArgument("env", "value of '" + k + "' contains NUL");
  }
  if (spec.cwd.empty() || spec.cwd[0] != '/') return Status::InvalidArgument("cwd", "must be an absolute path");
  BERTH_RETURN_IF_ERROR(FunctionNetworkPolicy(spec).status());
  if (spec.max_warm > kMaxWarm) {
    return Status::InvalidArgument("max_warm", "must be between 0 (no pool) and " + std::to_string(kMaxWarm));
  }
  if (spec.min_warm > spec.max_warm) return Status::InvalidArgument("min_warm", "must be between 0 and max_warm");
  if (spec.idle_timeout_ms < 100 || spec.idle_timeout_ms > 86'400'000) {
    return Status::InvalidArgument("idle_timeout_ms", "must be between 100 and 86400000 (one day)");
  }
  if (spec.target_concurrency < 1 || spec.target_concurrency > 1000) {
    return Status::InvalidArgument("target_concurrency", "must be between 1 and 1000");
  }
  if (spec.max_instances > 10'000) {
    return Status::InvalidArgument("max_instances", "must be between 0 (no cap) and 10000");
  }
  if (spec.max_queued > 10'000) return Status::InvalidArgument("max_queued", "must be between 0 and 10000");
  if (spec.queue_timeout_ms < 0 || spec.queue_timeout_ms > 3'600'000) {
    return Status::InvalidArgument("queue_timeout_ms", "must be between 0 and 3600000 (one hour)");
  }
  BERTH_RETURN_IF_ERROR(ValidateGatewayPolicy(spec.gateway));
  return Status::Ok();
}

Result<std::unique_ptr<Service>> Service::Start(Env* env, ServiceConfig config) {
  if (config.runtime_dir.empty()) config.runtime_dir = config.data_dir + "/runtime";
  std::unique_ptr<Service> svc(new Service(env, config));
  BERTH_RETURN_IF_ERROR(env->CreateDirs(config.data_dir, 0755));
  BERTH_ASSIGN_OR_RETURN(svc->store_, Store::Open(config.data_dir + "/berth.db"));
  svc->auth_ = std::make_unique<Auth>(env, svc->store_.get());
  svc->images_ = std::make_unique<images::ImageStore>(env, config.data_dir + "/images");
  BERTH_RETURN_IF_ERROR(svc->images_->init_status());
  svc->uploads_ = std::make_unique<images::UploadSessions>(env, svc->images_.get(), config.max_image_bytes);
  BERTH_ASSIGN_OR_RETURN(svc->runtime_, LoadRuntime(env, config.runtime_dir));
  ClusterOptions copts;
  // A node that does not cache the image needs room for it too.
  copts.image_bytes = [images = svc->images_.get()](const std::string& digest) -> uint64_t {
    auto image = images->Get(digest);
    return image.ok() ? image->size_bytes : 0;
  };
  // Pool folders of added nodes sit beside the local pool's (the data dir may
  // be private to root; QEMU on a node must reach its pool folder).
  {
    std::string pool_dir = config.node.pool_dir;
    while (pool_dir.size() > 1 && pool_dir.back() == '/') pool_dir.pop_back();
    size_t slash = pool_dir.rfind('/');
    copts.state_dir = (slash == std::string::npos || slash == 0 ? std::string("/var/lib/berth") : pool_dir.substr(0, slash)) + "/nodes";
  }
  copts.down_after_ms = config.node_down_after_ms;
  copts.monitor_interval_ms = config.node_monitor_interval_ms;
  copts.policy.strategy = sched::Strategy::kSpread;  // keep load even; binpack is a flag away
  svc->cluster_ = std::make_unique<Cluster>(env, svc->store_.get(), svc->runtime_, copts);
  BERTH_ASSIGN_OR_RETURN(svc->node_, svc->cluster_->AddLocal(config.node));
  ExecutorOptions executor_options = config.executor;
  // Guest networks are this berthd's by its data dir (see manager/networks.h).
  if (executor_options.networks.owner.empty()) executor_options.networks.owner = config.data_dir;
  svc->executor_ = std::make_unique<Executor>(env, svc->store_.get(), executor_options);
  Cluster* cluster = svc->cluster_.get();
  svc->executor_->SetReleaseHook([cluster](const std::string& id) { cluster->Release(id); });
  // exec/fork runs end in the background: their ends reach the listener too.
  // One lost with its node while berthd runs (Executor::MarkNodeLost) runs
  // again elsewhere when its function is retryable, as after a restart.
  svc->executor_->SetStartedEndHook([listener = svc->execution_listener_, raw = svc.get()](const ExecutionRecord& ex) {
    listener->Notify(ex);
    if (ex.state == ExecState::kLost && ex.error_code == "node_lost") {
      raw->cluster_->ReportUnreachable(ex.node);  // (the monitor may not have marked it down yet)
      raw->RunLostAgain(ex, "");
    }
  });
  BERTH_RETURN_IF_ERROR(svc->cluster_->LoadRegistered());
  // Adopts what still runs, ends the rest lost, destroys orphans, releases
  // stale claims and unused volumes (manager/reconcile.h).
  BERTH_RETURN_IF_ERROR(svc->Reconcile());
  Service* raw = svc.get();
  svc->cluster_->SetNodeListener([raw](const std::string& name, bool up) {
    if (!up) raw->executor_->MarkNodeLost(name);
  });
  // Back: what it holds of ended executions (domains, volumes, claims) goes
  // before it takes new work (the cluster keeps it down until this is Ok).
  svc->cluster_->SetReconcileHook([raw](Node& n) -> Status {
    BERTH_RETURN_IF_ERROR(raw->ReconcileNode(n));
    Executor* executor = raw->executor_.get();
    // Only claims of ended executions: one placed there just before is in flight.
    ReleaseEndedClaimsOn(*raw->store_, *raw->cluster_, n.name(),
                         [executor](const std::string& id) { return executor->IsLive(id); });
    return Status::Ok();
  });
  svc->executor_->networks().SetNodeAccess(
      [raw](const std::string& name, const std::function<void(hv::Hypervisor&)>& fn) -> Status {
        std::shared_ptr<Node> node = raw->cluster_->Share(name);
        if (!node) return Status::NotFound("node '" + name + "' does not exist");
        fn(node->hypervisor());
        return Status::Ok();
      });
  svc->cluster_->StartMonitor();
  svc->StartImageGc();
  return svc;
}

Service::~Service() {
  // Lingering network removals reach nodes through the cluster: stopped first.
  if (executor_) executor_->networks().StopLinger();
  StopImageGc();
  if (cluster_) cluster_->StopMonitor();
}

void Service::Detach() {
  if (executor_) executor_->DetachAll();
}

Result<Node*> Service::Place(const std::string& id, uint32_t vcpus, uint64_t memory_mib,
                             const std::map<std::string, std::string>& selector) {
  return cluster_->Place(id, vcpus, memory_mib, selector);
}

Result<NodeView> Service::AddNode(const Principal& caller, const NodeSpec& spec) {
  if (!caller.admin) return Status::PermissionDenied("only an admin token can register nodes");
  return cluster_->Add(spec);
}

Status Service::RemoveNode(const Principal& caller, const std::string& name) {
  if (!caller.admin) return Status::PermissionDenied("only an admin token can remove nodes");
  return cluster_->Remove(name);
}

Result<NodeView> Service::SetNodeState(const Principal& caller, const std::string& name, const std::string& action) {
  if (!caller.admin) return Status::PermissionDenied("only an admin token can change a node's state");
  return cluster_->SetAdminState(name, action);
}

std::vector<NodeView> Service::NodeViews() { return cluster_->Views(); }
Result<NodeView> Service::NodeViewOf(const std::string& name) { return cluster_->View(name); }

// After a restart: the ordered reconciliation of manager/reconcile.h.
Status Service::Reconcile() {
  // Runs lost with the old berthd (domain vanished, node unreachable, died
  // while starting) run again where allowed (RunLostAgain).
  auto on_lost = [this](const ExecutionRecord& ex) { RunLostAgain(ex, "reconcile: "); };
  BERTH_RETURN_IF_ERROR(ReconcileAfterRestart(env_, *store_, *cluster_, *executor_, on_lost).status());
  // Guest networks and filters no execution uses any more (an earlier
  // berthd's leftovers); those of adopted, still running domains stay.
  for (Node* n : cluster_->All()) {
    if (Status s = executor_->networks().Sweep(n->hypervisor(), n->name()); !s.ok()) {
      spdlog::warn("reconcile: sweeping networks on {}: {}", n->name(), s.ToString());
    }
  }
  return Status::Ok();
}

// A run of a retryable function that ended lost runs again on a node that
// can take it, as a new process, in the background: nobody waits for it (a
// synchronous Invoke retries its own runs). Event deliveries and async
// invocations are left to the event dispatcher, which retries every delivery
// a crash or a lost node interrupted.
void Service::RunLostAgain(const ExecutionRecord& ex, const char* context) {
  if (ex.state != ExecState::kLost || ex.kind != ProcKind::kRun || ex.function.empty() ||
      ex.spec.env.count("BERTH_DELIVERY_ID")) {
    return;
  }
  auto fn = store_->GetFunction(ex.tenant, ex.function);
  if (!fn.ok() || !fn->spec.retryable) return;
  auto image = images_->Get(ex.image);
  if (!image.ok()) {
    spdlog::warn("{}lost execution {} is not run again: its image {} is gone", context, ex.id, ex.image);
    return;
  }
  Launch launch;
  launch.tenant = ex.tenant;
  launch.function = ex.function;
  launch.function_version = ex.function_version;
  launch.name = ex.name;
  launch.kind = ex.kind;
  launch.userdata = ex.userdata;
  launch.image = *image;
  launch.spec = ex.spec;
  launch.ppid = CheckParent(ex.tenant, ex.ppid).ok() ? ex.ppid : kInitPid;
  auto again = StartPlaced(std::move(launch), {});
  if (again.ok()) {
    spdlog::warn("{}execution {} of retryable function {} was lost; running it again as {} (pid {}) on node {}", context,
                 ex.id, ex.function, again->id, again->pid, again->node);
  } else {
    spdlog::warn("{}lost execution {} of retryable function {} could not run again: {}", context, ex.id, ex.function,
                 again.status().ToString());
  }
}

// Sweeps one node for leftovers of this store's ended executions (a teardown
// cut short by a crash or by the node going away). Domains and volumes of
// executions this store does not know belong to someone else: left alone.
Status Service::ReconcileNode(Node& node) {
  auto& hv = node.hypervisor();
  auto remove = [&](const std::string& id, const std::string& domain) {
    if (Status s = hv.DestroyDomain(domain); !s.ok()) spdlog::warn("reconcile: {}", s.ToString());
    (void)hv.DeleteVolume(node.config().pool, OverlayVolumeName(id));
    (void)hv.DeleteVolume(node.config().pool, SeedVolumeName(id));
    (void)hv.DeleteVolume(node.config().log_pool, ConsoleLogVolumeName(domain));
  };
  BERTH_ASSIGN_OR_RETURN(auto domains, hv.ListDomains(hv::kDomainNamePrefix));
  for (const auto& domain : domains) {
    auto xml = hv.GetDomainXml(domain);
    if (!xml.ok()) continue;
    auto md = hv::ParseDomainMetadata(*xml);
    if (!md.ok()) continue;
    auto ex = store_->GetExecution(md->execution_id);
    if (!ex.ok() || !IsTerminal(ex->state) || executor_->IsLive(ex->id)) continue;
    spdlog::warn("reconcile: removing leftover domain {} of ended execution {}", domain, md->execution_id);
    remove(md->execution_id, domain);
  }
  BERTH_ASSIGN_OR_RETURN(auto volumes, hv.ListVolumes(node.config().pool));
  for (const auto& vol : volumes) {
    const std::string& n = vol.name;
    if (n.rfind("ovl-", 0) != 0 || n.size() < 11 || n.substr(n.size() - 6) != ".qcow2") continue;
    std::string id = n.substr(4, n.size() - 10);
    auto ex = store_->GetExecution(id);
    if (!ex.ok() || !IsTerminal(ex->state) || executor_->IsLive(id)) continue;
    spdlog::warn("reconcile: removing leftover overlay {}", n);
    remove(id, ex->domain);
  }
  // Tenant networks and filters no execution uses any more (a crash or an
  // earlier berthd left them); those of running domains stay.
  if (Status st = executor_->networks().Sweep(hv, node.name()); !st.ok()) {
    spdlog::warn("reconcile: sweeping networks on {}: {}", node.name(), st.ToString());
  }
  return Status::Ok();
}

Result<Principal> Service::Authenticate(const std::string& bearer) { return auth_->Authenticate(bearer); }

Result<CreatedToken> Service::CreateToken(const Principal& caller, const std::string& tenant, const std::string& name) {
  return auth_->CreateToken(caller, tenant, name);
}

Result<std::vector<TokenRecord>> Service::ListTokens(const Principal& caller) { return auth_->ListTokens(caller); }

Result<TokenRecord> Service::RevokeToken(const Principal& caller, const std::string& id) {
  return auth_->RevokeToken(caller, id);
}

Result<bool> Service::EnsureAdminToken() { return auth_->EnsureAdminToken(admin_token_path()); }

Result<std::unique_ptr<images::ImageUpload>> Service::BeginImageUpload() {
  return images_->BeginUpload(config_.max_image_bytes);
}

Result<ImageMeta> Service::RecordImage(const Principal& caller, const images::ImageRecord& record,
                                       const std::string& name) {
  ImageMeta meta = MetaFrom(record, name, env_->NowUnixMs());
  meta.tenant = caller.tenant;
  BERTH_RETURN_IF_ERROR(store_->PutTenant(caller.tenant, meta.created_ms));
  BERTH_RETURN_IF_ERROR(store_->PutImage(meta));
  BERTH_RETURN_IF_ERROR(TagUploadName(caller.tenant, meta.id, name));
  return store_->GetImage(caller.tenant, meta.id);
}

Result<ImageMeta> Service::CommitImageUpload(const Principal& caller, std::unique_ptr<images::ImageUpload> upload,
                                             const std::string& name) {
  std::lock_guard lock(image_mu_);
  BERTH_ASSIGN_OR_RETURN(auto record, upload->Commit());
  return RecordImage(caller, record, name);
}

Result<ImageMeta> Service::ImportImageFile(const Principal& caller, const std::string& path, const std::string& name) {
  std::lock_guard lock(image_mu_);
  BERTH_ASSIGN_OR_RETURN(auto record, images_->ImportFile(path));
  return RecordImage(caller, record, name);
}

Result<std::vector<ImageMeta>> Service::ListImages(const Principal& caller) { return store_->ListImages(caller.tenant); }

Result<ImageMeta> Service::GetImage(const Principal& caller, const std::string& id) {
  if (!IsSha256Hex(id)) return Status::InvalidArgument("id", "image ids are 64 lowercase hex characters");
  return store_->GetImage(caller.tenant, id);
}

// DeleteImage: manager/service_images.cc (with tags, upload sessions and GC).

Status Service::CheckImageExists(const std::string& tenant, const std::string& image) {
  auto meta = store_->GetImage(tenant, image);
  if (!meta.ok() && meta.status().code() == Code::kNotFound) {
    return Status::InvalidArgument("image", "image '" + image + "' does not exist; upload it first");
  }
  return meta.status();
}

Result<FunctionRecord> Service::CreateFunction(const Principal& caller, const FunctionSpec& spec) {
  BERTH_RETURN_IF_ERROR(ValidateFunctionSpec(spec));
  BERTH_RETURN_IF_ERROR(CheckImageExists(caller.tenant, spec.image));
  FunctionRecord fn;
  fn.spec = spec;
  fn.tenant = caller.tenant;
  fn.created_ms = fn.updated_ms = env_->NowUnixMs();
  BERTH_RETURN_IF_ERROR(store_->CreateFunction(fn));
  BERTH_ASSIGN_OR_RETURN(auto created, store_->GetFunction(caller.tenant, spec.name));
  // Fast start: its template is built (and its pool warmed) ahead of demand.
  if (auto image = images_->Get(created.spec.image); image.ok()) executor_->FunctionChanged(*node_, created, *image, nullptr);
  return created;
}

Result<FunctionRecord> Service::UpdateFunction(const Principal& caller, const FunctionSpec& spec) {
  BERTH_RETURN_IF_ERROR(ValidateFunctionSpec(spec));
  // Another tenant's function is not there: NotFound before any image check.
  BERTH_ASSIGN_OR_RETURN(auto previous, store_->GetFunction(caller.tenant, spec.name));
  BERTH_RETURN_IF_ERROR(CheckImageExists(caller.tenant, spec.image));
  BERTH_ASSIGN_OR_RETURN(auto updated, store_->UpdateFunction(caller.tenant, spec, env_->NowUnixMs()));
  // Fast start: the old version's template and pooled VMs go, the new ones are built.
  if (auto image = images_->Get(updated.spec.image); image.ok()) executor_->FunctionChanged(*node_, updated, *image, &previous);
  return updated;
}

Result<FunctionRecord> Service::GetFunction(const Principal& caller, const std::string& name) {
  BERTH_RETURN_IF_ERROR(ValidateFunctionName(name));
  return store_->GetFunction(caller.tenant, name);
}

Result<std::vector<FunctionRecord>> Service::ListFunctions(const Principal& caller) {
  return store_->ListFunctions(caller.tenant);
}

Status Service::DeleteFunction(const Principal& caller, const std::string& name) {
  BERTH_RETURN_IF_ERROR(ValidateFunctionName(name));
  auto fn = store_->GetFunction(caller.tenant, name);
  BERTH_RETURN_IF_ERROR(store_->DeleteFunction(caller.tenant, name));
  if (fn.ok()) executor_->FunctionDeleted(*node_, *fn);  // its pooled VMs and template
  return Status::Ok();
}

Result<ExecutionRecord> Service::Invoke(const Principal& caller, const std::string& function,
                                        const InvokeRequest& request) {
  BERTH_ASSIGN_OR_RETURN(auto fn, GetFunction(caller, function));
  for (const auto& [k, v] : request.env) {
    if (!IsEnvName(k)) return Status::InvalidArgument("env", "variable name '" + k + "' is not a valid identifier");
  }
  auto image = images_->Get(fn.spec.image);
  if (!image.ok()) {
    return Status::FailedPrecondition("image " + fn.spec.image + " of function '" + function + "' is missing", "image");
  }
  BERTH_RETURN_IF_ERROR(CheckParent(caller.tenant, request.ppid));
  // Autoscaling: at most max_instances calls run at once; others queue, and
  // past the queue's limit they are refused (ResourceExhausted, field
  // "max_instances": 429). The ticket ends the call when Invoke returns.
  BERTH_ASSIGN_OR_RETURN(Autoscaler::Ticket ticket,
                         executor_->pools().autoscaler().Admit(fn.tenant + "/" + fn.spec.name, ScalingPolicyOf(fn.spec)));
  MaybePrune();
  // Prefer a node that already has the image (and the function's template).
  PlacementHints hints{image->id, ""};
  if (fn.spec.snapshot && node_->templates()) hints.template_key = node_->templates()->KeyFor(fn, *image);
  // A synchronous caller waits for one run: the function's timeout plus a boot.
  const int64_t deadline = env_->MonotonicMs() + fn.spec.timeout_ms + config_.executor.boot_timeout_ms;
  constexpr int kMaxAttempts = 3;
  InvokeRequest placed_request = request;
  placed_request.id = RandomHex(16);
  placed_request.queued_ms = ticket.queued_ms();  // in timings.queue_ms and the "queue" histogram
  BERTH_ASSIGN_OR_RETURN(auto placed, cluster_->PlaceWithAlternates(placed_request.id, fn.spec.vcpus,
                                                                    fn.spec.memory_mib, {}, hints));
  Node* node = placed.node;
  for (int attempt = 1;; ++attempt) {
    auto ex = executor_->Run(*node, fn, *image, placed_request);
    if (!ex.ok()) {
      cluster_->Release(placed_request.id);
      return ex;
    }
    if (!IsTerminal(ex->state)) {
      // Detached at shutdown (Executor::DetachAll): it goes on, and the next
      // berthd adopts it; its claim stays until then.
      return Status::Unavailable("berthd is stopping; execution " + ex->id + " goes on and the next berthd ends it (GET /v1/executions/" + ex->id + ")");
    }
    execution_listener_->Notify(*ex);
    const bool start_failed = ex->state == ExecState::kError && IsStartFailure(ex->error_code);
    const bool lost = ex->state == ExecState::kLost;
    if (!start_failed && !lost) return ex;
    if (start_failed) {
      // The command never ran: the next alternate node, no new scheduling round.
      if (attempt == kMaxAttempts) return ex;
      InvokeRequest next = request;
      next.id = RandomHex(16);
      auto alt = cluster_->ClaimOnAlternate(next.id, fn.spec.vcpus, fn.spec.memory_mib, &placed.alternates, hints);
      if (!alt.ok()) return ex;  // the failed record says why
      spdlog::warn("execution {} could not start on node {} ({}); retrying on alternate node {}", ex->id,
                   node->name(), ex->error_code, (*alt)->name());
      node = *alt;
      placed_request = std::move(next);
      continue;
    }
    // Lost with its node: run it again elsewhere when allowed and in time.
    cluster_->ReportUnreachable(ex->node);
    const int64_t left = deadline - env_->MonotonicMs();
    if (fn.spec.retryable && attempt < kMaxAttempts && left >= fn.spec.timeout_ms) {
      InvokeRequest next = request;
      next.id = RandomHex(16);
      // The lost node may still count as up for a few seconds: an alternate
      // elsewhere first, then a new placement.
      std::erase(placed.alternates, ex->node);
      auto alt = cluster_->ClaimOnAlternate(next.id, fn.spec.vcpus, fn.spec.memory_mib, &placed.alternates, hints);
      Result<Cluster::Placed> again =
          alt.ok() ? Result<Cluster::Placed>(Cluster::Placed{*alt, placed.alternates})
                   : cluster_->PlaceWithAlternates(next.id, fn.spec.vcpus, fn.spec.memory_mib, {}, hints);
      if (again.ok()) {
        spdlog::warn("execution {} of retryable function {} was lost on node {}; running it again on node {}",
                     ex->id, fn.spec.name, ex->node, again->node->name());
        placed = std::move(*again);
        node = placed.node;
        placed_request = std::move(next);
        continue;
      }
      return Status::Unavailable("execution " + ex->id + " was lost with node " + ex->node +
                                 " and no other node can run it now: " + again.status().message());
    }
    return Status::Unavailable(
        "execution " + ex->id + " was lost with node " + ex->node + " (" + ex->error_code + ")" +
        (!fn.spec.retryable ? "; function '" + fn.spec.name + "' is not retryable, so it was not run again"
         : attempt == kMaxAttempts ? "; it was lost " + std::to_string(attempt) + " times"
                                   : "; a retry could not finish within the caller's deadline"));
  }
}

void Service::SetExecutionListener(std::function<void(const ExecutionRecord&)> listener) {
  std::unique_lock lk(execution_listener_->mu);
  execution_listener_->fn = std::move(listener);
}

void Service::MaybePrune() {
  if (started_count_.fetch_add(1) % 64 != 0) return;
  int64_t cutoff = env_->NowUnixMs() - config_.retention_max_age_ms;
  auto n = store_->PruneFinishedExecutions(config_.retention_max_records, cutoff);
  if (!n.ok()) spdlog::warn("retention: {}", n.status().ToString());
  else if (*n > 0) spdlog::info("retention: removed {} finished execution records", *n);
}

Status Service::CheckParent(const std::string& tenant, int64_t ppid) {
  if (ppid == kInitPid) return Status::Ok();
  if (ppid == kKernelPid) {
    return Status::InvalidArgument("ppid", "pid 0 (kernel) takes no new children; use 1 (init)");
  }
  if (ppid < 0) return Status::InvalidArgument("ppid", "must be 1 (init) or the pid of a live process");
  auto parent = store_->GetExecutionByPid(tenant, ppid);
  if (!parent.ok()) {
    if (parent.status().code() == Code::kNotFound) {
      return Status::NotFound("parent process " + std::to_string(ppid) + " does not exist", "ppid");
    }
    return parent.status();
  }
  if (IsTerminal(parent->state)) {
    return Status::FailedPrecondition("parent process " + std::to_string(ppid) + " has exited (" +
                                          ExecStateName(parent->state) + ")",
                                      "ppid");
  }
  return Status::Ok();
}

Result<images::ImageRecord> Service::ResolveImage(const std::string& tenant, const std::string& image,
                                                  const char* field) {
  if (image.empty()) return Status::InvalidArgument(field, "is required (an image id or name)");
  BERTH_ASSIGN_OR_RETURN(std::string id, ResolveImageRef(tenant, image, field));  // id, name:tag or name
  auto meta = store_->GetImage(tenant, id);
  if (!meta.ok()) {
    if (meta.status().code() == Code::kNotFound) return Status::NotFound("image '" + image + "' does not exist", field);
    return meta.status();
  }
  auto rec = images_->Get(id);
  if (!rec.ok()) return Status::FailedPrecondition("the file of image " + id + " is missing", field);
  return rec;
}

Result<ExecutionRecord> Service::Exec(const Principal& caller, const ExecRequest& req) {
  if (!req.name.empty()) BERTH_RETURN_IF_ERROR(ValidateName("name", req.name));
  for (const auto& [k, v] : req.env) {
    if (!IsEnvName(k)) return Status::InvalidArgument("env", "variable name '" + k + "' is not a valid identifier");
  }
  if (req.userdata.size() > 64 * 1024) return Status::InvalidArgument("userdata", "must be at most 64 KiB");
  if (req.userdata.find('\0') != std::string::npos) {
    return Status::InvalidArgument("userdata", "must not contain NUL bytes");
  }
  if (!req.function.empty() && !req.image.empty()) {
    return Status::InvalidArgument("image", "give either a function or an image, not both");
  }
  if (req.function.empty() && req.image.empty()) {
    return Status::InvalidArgument("image", "is required (an image id or name), or give a function");
  }
  BERTH_RETURN_IF_ERROR(CheckParent(caller.tenant, req.ppid));
  Launch launch;
  launch.tenant = caller.tenant;
  launch.ppid = req.ppid;
  launch.userdata = req.userdata;
  if (!req.function.empty()) {
    if (!req.command.empty()) return Status::InvalidArgument("command", "a function run uses the function's entrypoint");
    BERTH_ASSIGN_OR_RETURN(auto fn, GetFunction(caller, req.function));
    auto image = images_->Get(fn.spec.image);
    if (!image.ok()) return Status::FailedPrecondition("image of function '" + req.function + "' is missing", "image");
    launch.function = fn.spec.name;
    launch.function_version = fn.version;
    launch.name = req.name.empty() ? fn.spec.name : req.name;
    launch.kind = ProcKind::kRun;
    launch.image = *image;
    launch.spec.command = fn.spec.entrypoint;
    launch.spec.command.insert(launch.spec.command.end(), req.args.begin(), req.args.end());
    launch.spec.args = req.args;
    launch.spec.env = fn.spec.env;
    for (const auto& [k, v] : req.env) launch.spec.env[k] = v;
    launch.spec.stdin_data = req.stdin_data;
    launch.spec.cwd = fn.spec.cwd;
    launch.spec.vcpus = fn.spec.vcpus;
    launch.spec.memory_mib = fn.spec.memory_mib;
    launch.spec.timeout_ms = fn.spec.timeout_ms;
    BERTH_ASSIGN_OR_RETURN(launch.spec.network, FunctionNetworkPolicy(fn.spec));
    if (req.network) launch.spec.network = *req.network;  // the request's own network wins
  } else {
    if (req.boot != "runtime" && req.boot != "disk") {
      return Status::InvalidArgument("boot", "must be 'runtime' (berth's kernel and agent) or 'disk' (the image's own)");
    }
    if (!req.args.empty()) return Status::InvalidArgument("args", "instances take a command, not args");
    if (req.boot == "disk" && !req.command.empty()) {
      return Status::InvalidArgument("command", "a disk-boot instance runs its own init; use userdata");
    }
    for (const auto& a : req.command) {
      if (a.find('\0') != std::string::npos) return Status::InvalidArgument("command", "must not contain NUL bytes");
    }
    if (!req.command.empty() && req.command[0].empty()) {
      return Status::InvalidArgument("command", "argv[0] must not be empty");
    }
    if (req.vcpus < 1 || req.vcpus > 64) return Status::InvalidArgument("vcpus", "must be between 1 and 64");
    if (req.memory_mib < 64 || req.memory_mib > 65536) {
      return Status::InvalidArgument("memory_mib", "must be between 64 and 65536 (MiB)");
    }
    if (req.timeout_ms < 0) return Status::InvalidArgument("timeout_ms", "must be >= 0 (0: no limit)");
    BERTH_ASSIGN_OR_RETURN(launch.image, ResolveImage(caller.tenant, req.image, "image"));
    launch.name = req.name.empty() ? "instance" : req.name;
    launch.kind = ProcKind::kInstance;
    launch.spec.boot = req.boot == "disk" ? BootMode::kDisk : BootMode::kRuntime;
    launch.spec.command = req.command;
    if (launch.spec.command.empty() && launch.spec.boot == BootMode::kRuntime) {
      // An instance stays up until killed: the image's own start script if it
      // has one, otherwise an idle process (exec/fork/kill still apply).
      launch.spec.command = {"/bin/sh", "-c",
                             "if [ -x /etc/berth/start ]; then exec /etc/berth/start; fi; exec sleep 2147483647"};
    }
    launch.spec.env = req.env;
    launch.spec.stdin_data = req.stdin_data;
    launch.spec.vcpus = req.vcpus;
    launch.spec.memory_mib = req.memory_mib;
    launch.spec.timeout_ms = req.timeout_ms;
    if (req.network) launch.spec.network = *req.network;
  }
  if (req.network) BERTH_RETURN_IF_ERROR(net::ValidateNetworkPolicy(*req.network, "network"));
  MaybePrune();
  return StartPlaced(std::move(launch), req.node_selector);
}

Result<ExecutionRecord> Service::StartPlaced(Launch launch, const std::map<std::string, std::string>& selector) {
  launch.id = RandomHex(16);
  BERTH_ASSIGN_OR_RETURN(auto placed, cluster_->PlaceWithAlternates(launch.id, launch.spec.vcpus, launch.spec.memory_mib,
                                                                    selector, PlacementHints{launch.image.id, ""}));
  Node* node = placed.node;
  // The pid is the caller's already: a start that fails before the command
  // ran moves, as the same record, to the next alternate node (no new
  // scheduling round), as Invoke's attempts do.
  struct Moves {
    std::vector<std::string> alternates;
    int attempts = 1;
  };
  auto moves = std::make_shared<Moves>(Moves{std::move(placed.alternates)});
  launch.move_failed_start = [this, moves, vcpus = launch.spec.vcpus, memory_mib = launch.spec.memory_mib,
                              hints = PlacementHints{launch.image.id, ""}](const ExecutionRecord& failed) -> Node* {
    constexpr int kMaxAttempts = 3;
    if (!IsStartFailure(failed.error_code) || moves->attempts >= kMaxAttempts) return nullptr;
    std::erase(moves->alternates, failed.node);
    if (moves->alternates.empty()) return nullptr;
    // One claim per execution (its id): from the failed node to the alternate
    // (the failed node's own reservation holds until its leftovers are gone).
    cluster_->Release(failed.id);
    auto alt = cluster_->ClaimOnAlternate(failed.id, vcpus, memory_mib, &moves->alternates, hints);
    if (!alt.ok()) {
      spdlog::warn("process {} (pid {}) could not start on node {} ({}) and no alternate node can take it: {}", failed.id,
                   failed.pid, failed.node, failed.error_code, alt.status().message());
      return nullptr;
    }
    ++moves->attempts;
    spdlog::warn("process {} (pid {}) could not start on node {} ({}); moving it to alternate node {}", failed.id,
                 failed.pid, failed.node, failed.error_code, (*alt)->name());
    return *alt;
  };
  const std::string id = launch.id;
  auto started = executor_->Start(*node, std::move(launch));
  if (!started.ok()) cluster_->Release(id);
  return started;
}

Result<ExecutionRecord> Service::Fork(const Principal& caller, int64_t pid, const std::string& name, bool live) {
  if (pid == kKernelPid || pid == kInitPid) {
    return Status::InvalidArgument("pid", "pid " + std::to_string(pid) + " cannot be forked; exec a child of it instead");
  }
  if (!name.empty()) BERTH_RETURN_IF_ERROR(ValidateName("name", name));
  BERTH_ASSIGN_OR_RETURN(auto parent, GetProc(caller, pid));
  if (IsTerminal(parent.state)) {
    return Status::FailedPrecondition(
        "process " + std::to_string(pid) + " has exited (" + ExecStateName(parent.state) + "); only a live process can fork",
        "pid");
  }
  auto image = images_->Get(parent.image);
  if (!image.ok()) return Status::FailedPrecondition("the image of process " + std::to_string(pid) + " is gone", "pid");
  Launch launch;
  launch.tenant = parent.tenant;
  launch.function = parent.function;
  launch.function_version = parent.function_version;
  launch.name = name.empty() ? parent.name : name;
  launch.kind = parent.kind;
  launch.userdata = parent.userdata;
  launch.image = *image;
  launch.spec = parent.spec;
  launch.ppid = pid;
  if (live) {
    if (parent.state != ExecState::kRunning || parent.spec.boot == BootMode::kDisk || !executor_->IsLive(parent.id)) {
      return Status::FailedPrecondition("process " + std::to_string(pid) +
                                            " is not running a command on the berth runtime here; a live fork needs one",
                                        "live");
    }
    launch.live_fork_of = parent.id;
    launch.id = RandomHex(16);
    // The child's memory and disk are copied on the parent's node.
    BERTH_RETURN_IF_ERROR(cluster_->ClaimOn(launch.id, parent.node, launch.spec.vcpus, launch.spec.memory_mib));
    Node* node = cluster_->Get(parent.node);
    if (!node) {
      cluster_->Release(launch.id);
      return Status::FailedPrecondition("the node of process " + std::to_string(pid) + " is gone", "live");
    }
    const std::string id = launch.id;
    auto started = executor_->Start(*node, std::move(launch));
    if (!started.ok()) cluster_->Release(id);
    return started;
  }
  MaybePrune();
  // A fork lands where its parent runs when that node can take it.
  std::map<std::string, std::string> none;
  return StartPlaced(std::move(launch), none);
}

Result<ExecutionRecord> Service::GetProc(const Principal& caller, int64_t pid) {
  if (pid == kKernelPid || pid == kInitPid) {
    return Status::InvalidArgument("pid", "pid " + std::to_string(pid) + " is a root of the tree, not an execution");
  }
  if (pid < 0) return Status::InvalidArgument("pid", "must be a non-negative integer");
  return store_->GetExecutionByPid(caller.tenant, pid);
}

Result<std::vector<ExecutionRecord>> Service::ListProcs(const Principal& caller, bool all, size_t limit) {
  ExecutionFilter f;
  f.oldest_first = true;
  f.limit = limit;
  if (!all) f.states = {ExecState::kPending, ExecState::kPlacing, ExecState::kStarting, ExecState::kRunning};
  return store_->ListExecutions(caller.tenant, f);
}

Result<std::vector<ExecutionRecord>> Service::Children(const Principal& caller, int64_t pid, bool all) {
  if (pid < 0) return Status::InvalidArgument("pid", "must be a non-negative integer");
  if (pid != kKernelPid && pid != kInitPid) BERTH_RETURN_IF_ERROR(GetProc(caller, pid).status());
  ExecutionFilter f;
  f.oldest_first = true;
  f.limit = 100'000;
  f.ppid = pid;
  if (!all) f.states = {ExecState::kPending, ExecState::kPlacing, ExecState::kStarting, ExecState::kRunning};
  if (pid == kKernelPid) return std::vector<ExecutionRecord>{};  // init is its only child, and it has no record
  return store_->ListExecutions(caller.tenant, f);
}

Result<std::vector<ExecutionRecord>> Service::Kill(const Principal& caller, int64_t pid, int signal, bool tree) {
  if (pid == kKernelPid || pid == kInitPid) {
    return Status::InvalidArgument("pid", std::string("pid ") + std::to_string(pid) + " (" +
                                              (pid == 0 ? "kernel" : "init") + ") cannot be killed");
  }
  if (signal != SIGTERM && signal != SIGKILL) return Status::InvalidArgument("signal", "must be TERM or KILL");
  BERTH_ASSIGN_OR_RETURN(auto target, GetProc(caller, pid));
  if (IsTerminal(target.state)) {
    return Status::FailedPrecondition(
        "process " + std::to_string(pid) + " has already exited (" + ExecStateName(target.state) + ")", "pid");
  }
  std::vector<ExecutionRecord> order;
  if (tree) {
    // Descendants breadth-first; signalled deepest first, the target last.
    std::vector<ExecutionRecord> level = {target}, found;
    while (!level.empty()) {
      std::vector<ExecutionRecord> next;
      for (const auto& p : level) {
        BERTH_ASSIGN_OR_RETURN(auto kids, Children(caller, p.pid, false));
        for (auto& k : kids) next.push_back(std::move(k));
      }
      found.insert(found.end(), next.begin(), next.end());
      level = std::move(next);
    }
    order.assign(found.rbegin(), found.rend());
  }
  order.push_back(target);
  std::vector<ExecutionRecord> signalled;
  for (const auto& p : order) {
    Status s = executor_->Kill(p.id, signal, config_.kill_grace_ms);
    if (s.ok()) {
      signalled.push_back(p);
    } else if (p.id == target.id) {
      return s;  // the target exited meanwhile: say so; descendants that did are fine
    }
  }
  return signalled;
}

Result<ExecutionRecord> Service::Wait(const Principal& caller, int64_t pid, int64_t timeout_ms) {
  if (timeout_ms < 0 || timeout_ms > 3'600'000) {
    return Status::InvalidArgument("timeout_ms", "must be between 0 and 3600000");
  }
  BERTH_ASSIGN_OR_RETURN(auto rec, GetProc(caller, pid));
  BERTH_RETURN_IF_ERROR(executor_->Wait(rec.id, timeout_ms));
  return store_->GetExecution(rec.id);
}

Result<std::vector<ExecutionRecord>> Service::ListExecutions(const Principal& caller, const ExecutionFilter& filter) {
  return store_->ListExecutions(caller.tenant, filter);
}

Result<std::vector<ExecutionRecord>> Service::ListEndedExecutionsAfter(int64_t after_finished_ms,
                                                                       const std::string& after_id, size_t limit) {
  return store_->ListEndedExecutionsAfter(after_finished_ms, after_id, limit);
}

Result<ExecutionRecord> Service::CancelExecution(const Principal& caller, const std::string& id) {
  BERTH_ASSIGN_OR_RETURN(auto ex, GetExecution(caller, id));
  if (IsTerminal(ex.state)) {
    return Status::FailedPrecondition("execution has already ended (" + std::string(ExecStateName(ex.state)) + ")",
                                      "id");
  }
  BERTH_RETURN_IF_ERROR(executor_->Kill(ex.id, SIGKILL, 0));
  (void)executor_->Wait(ex.id, 30'000);
  return store_->GetExecution(ex.id);
}

Result<ProcLogs> Service::Logs(const Principal& caller, const ExecutionRecord& ex) {
  if (ex.tenant != caller.tenant) return Status::NotFound("execution '" + ex.id + "' does not exist");
  ProcLogs logs;
  if (auto live = executor_->Output(ex.id); live.ok()) {
    logs.live = true;
    logs.stdout_data = std::move(live->stdout_data);
    logs.stderr_data = std::move(live->stderr_data);
    logs.output_truncated = live->truncated;
    if (ex.state == ExecState::kRunning || ex.state == ExecState::kStarting) {
      constexpr size_t kCap = 256 << 10;
      Node* on = cluster_->Get(ex.node);
      if (!on) on = node_;
      auto console = on->hypervisor().DownloadVolumeTail(on->config().log_pool, ConsoleLogVolumeName(ex.domain),
                                                            kCap + 1);
      if (console.ok()) {
        logs.console_truncated = console->size() > kCap;
        logs.console = console->size() > kCap ? console->substr(console->size() - kCap) : *console;
      }
    }
    return logs;
  }
  // Ended (or ending): the record has it all.
  BERTH_ASSIGN_OR_RETURN(auto rec, store_->GetExecution(ex.id));
  logs.stdout_data = rec.stdout_data;
  logs.stderr_data = rec.stderr_data;
  logs.output_truncated = rec.output_truncated;
  logs.console = rec.console;
  logs.console_truncated = rec.console_truncated;
  return logs;
}

Result<ExecutionRecord> Service::GetExecution(const Principal& caller, const std::string& id) {
  auto ex = store_->GetExecution(id);
  if (ex.ok() && ex->tenant != caller.tenant) return Status::NotFound("execution '" + id + "' does not exist");
  return ex;
}

Result<std::vector<ExecutionRecord>> Service::ListExecutions(const Principal& caller, const std::string& function,
                                                             size_t limit) {
  return store_->ListExecutions(caller.tenant, function, limit);
}

HealthReport Service::Health() {
  HealthReport h;
  h.node = node_->name();
  h.uri = node_->config().uri;
  h.accel = node_->accel() == hv::Accel::kKvm ? "kvm" : "tcg";
  h.kernel_version = runtime_.kernel_version;
  auto info = node_->hypervisor().GetNodeInfo();
  h.libvirt_ok = info.ok();
  if (!info.ok()) h.libvirt_error = info.status().message();
  return h;
}

}  // namespace berth::manager
