#include "manager/service.h"

#include <spdlog/spdlog.h>

#include <cctype>

#include "common/sha256.h"
#include "hypervisor/domain_xml.h"

namespace berth::manager {
namespace {

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
  if (spec.network != "none") {
    return Status::InvalidArgument("network", "only 'none' is supported for now (guests have no network device)");
  }
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
  BERTH_ASSIGN_OR_RETURN(svc->runtime_, LoadRuntime(env, config.runtime_dir));
  BERTH_ASSIGN_OR_RETURN(auto hypervisor, hv::ConnectLibvirt(config.node.uri));
  svc->node_ = std::make_unique<Node>(env, config.node, std::move(hypervisor));
  BERTH_RETURN_IF_ERROR(svc->node_->Prepare(svc->runtime_).WithContext("preparing node " + config.node.name));
  svc->executor_ = std::make_unique<Executor>(env, svc->store_.get(), config.executor);
  BERTH_RETURN_IF_ERROR(svc->Reconcile());
  return svc;
}

// Synchronous executions die with the berthd that ran them: end their
// records and remove their domains and volumes so nothing is orphaned. Then
// sweep the node for leftovers of this store's finished executions (a
// teardown cut short by a crash). Domains and volumes of executions this
// store does not know belong to someone else and are left alone.
Status Service::Reconcile() {
  auto& hv = node_->hypervisor();
  auto remove = [&](const std::string& id, const std::string& domain) {
    if (Status s = hv.DestroyDomain(domain); !s.ok()) spdlog::warn("reconcile: {}", s.ToString());
    (void)hv.DeleteVolume(node_->config().pool, OverlayVolumeName(id));
    (void)hv.DeleteVolume(node_->config().log_pool, ConsoleLogVolumeName(domain));
  };
  BERTH_ASSIGN_OR_RETURN(auto unfinished, store_->ListUnfinishedExecutions());
  for (auto& ex : unfinished) {
    spdlog::warn("execution {} (pid {}) was {} when berthd stopped; cleaning up", ex.id, ex.pid,
                 ExecStateName(ex.state));
    remove(ex.id, ex.domain);
    ex.state = ExecState::kError;
    ex.error_code = "manager_restarted";
    ex.error = "berthd stopped while this execution was running";
    ex.finished_ms = env_->NowUnixMs();
    BERTH_RETURN_IF_ERROR(store_->UpdateExecution(ex));
  }
  BERTH_ASSIGN_OR_RETURN(auto domains, hv.ListDomains(hv::kDomainNamePrefix));
  for (const auto& domain : domains) {
    auto xml = hv.GetDomainXml(domain);
    if (!xml.ok()) continue;
    auto md = hv::ParseDomainMetadata(*xml);
    if (!md.ok() || !store_->GetExecution(md->execution_id).ok()) continue;
    spdlog::warn("reconcile: removing leftover domain {} of finished execution {}", domain, md->execution_id);
    remove(md->execution_id, domain);
  }
  BERTH_ASSIGN_OR_RETURN(auto volumes, hv.ListVolumes(node_->config().pool));
  for (const auto& vol : volumes) {
    const std::string& n = vol.name;
    if (n.rfind("ovl-", 0) != 0 || n.size() < 11 || n.substr(n.size() - 6) != ".qcow2") continue;
    std::string id = n.substr(4, n.size() - 10);
    auto ex = store_->GetExecution(id);
    if (!ex.ok() || !IsTerminal(ex->state)) continue;
    spdlog::warn("reconcile: removing leftover overlay {}", n);
    remove(id, ex->domain);
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

Status Service::DeleteImage(const Principal& caller, const std::string& id) {
  std::lock_guard lock(image_mu_);
  BERTH_ASSIGN_OR_RETURN(auto meta, GetImage(caller, id));
  BERTH_ASSIGN_OR_RETURN(auto users, store_->FunctionsUsingImage(caller.tenant, id));
  if (!users.empty()) {
    return Status::FailedPrecondition("image is used by function '" + users.front() + "'", "id");
  }
  BERTH_RETURN_IF_ERROR(store_->DeleteImage(caller.tenant, id));
  // Another tenant's record still needs the file (and the node's copy).
  BERTH_ASSIGN_OR_RETURN(int64_t others, store_->ImageRecordCount(id));
  if (others > 0) return Status::Ok();
  (void)node_->hypervisor().DeleteVolume(node_->config().pool, Node::ImageVolumeName(id, meta.format));
  return images_->Remove(id);
}

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
  return store_->GetFunction(caller.tenant, spec.name);
}

Result<FunctionRecord> Service::UpdateFunction(const Principal& caller, const FunctionSpec& spec) {
  BERTH_RETURN_IF_ERROR(ValidateFunctionSpec(spec));
  // Another tenant's function is not there: NotFound before any image check.
  BERTH_RETURN_IF_ERROR(store_->GetFunction(caller.tenant, spec.name).status());
  BERTH_RETURN_IF_ERROR(CheckImageExists(caller.tenant, spec.image));
  return store_->UpdateFunction(caller.tenant, spec, env_->NowUnixMs());
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
  return store_->DeleteFunction(caller.tenant, name);
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
  return executor_->Run(*node_, fn, *image, request);
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
