// Service: the control plane's front door. The API layer (and tests) call
// only this; it validates requests, owns the store, the image store, the
// nodes and the executor. Every method is thread-safe.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/env.h"
#include "images/image_store.h"
#include "manager/auth.h"
#include "manager/executor.h"
#include "manager/node.h"
#include "manager/runtime.h"
#include "manager/store.h"
#include "manager/types.h"

namespace berth::manager {

struct ServiceConfig {
  std::string data_dir = "/var/lib/berth";  // berth.db and images/ live here
  std::string runtime_dir;                  // default: <data_dir>/runtime
  NodeConfig node;
  ExecutorOptions executor;
  uint64_t max_image_bytes = 8ull << 30;
};

// Field-by-field checks of a function definition; the Status names the field
// exactly as the JSON API spells it.
Status ValidateFunctionSpec(const FunctionSpec& spec);
Status ValidateFunctionName(const std::string& name);

struct HealthReport {
  std::string node;
  std::string uri;
  std::string accel;
  bool libvirt_ok = false;
  std::string libvirt_error;
  std::string kernel_version;
};

class Service {
 public:
  // Opens the store, the image store, connects and prepares the node, and
  // reconciles executions left unfinished by an earlier berthd.
  static Result<std::unique_ptr<Service>> Start(Env* env, ServiceConfig config);

  // Authentication: `bearer` is the token secret from "Authorization: Bearer
  // <secret>". kUnauthenticated when it is empty, unknown or revoked.
  Result<Principal> Authenticate(const std::string& bearer);

  // Tokens. Create: admin only; makes the tenant if it is new; the secret is
  // returned here and never again (only its sha256 is stored). List: an admin
  // sees all tokens, others their own tenant's. Revoke: an admin any token,
  // others only their own tenant's (another tenant's token is NotFound).
  Result<CreatedToken> CreateToken(const Principal& caller, const std::string& tenant, const std::string& name);
  Result<std::vector<TokenRecord>> ListTokens(const Principal& caller);
  Result<TokenRecord> RevokeToken(const Principal& caller, const std::string& id);
  // If the store holds no token at all: creates an admin token of tenant
  // "default" and writes its secret to admin_token_path() (mode 0600,
  // atomically) before recording it. Returns true if it created one.
  Result<bool> EnsureAdminToken();
  std::string admin_token_path() const { return config_.data_dir + "/admin.token"; }

  // Everything below acts within caller.tenant only: another tenant's
  // images, functions and executions are NotFound.

  // Images. The same bytes uploaded by two tenants are stored once (the
  // image store is content-addressed) and recorded once per tenant; the
  // file goes when the last tenant's record is deleted.
  Result<std::unique_ptr<images::ImageUpload>> BeginImageUpload();
  Result<ImageMeta> CommitImageUpload(const Principal& caller, std::unique_ptr<images::ImageUpload> upload,
                                      const std::string& name);
  Result<ImageMeta> ImportImageFile(const Principal& caller, const std::string& path, const std::string& name);
  Result<std::vector<ImageMeta>> ListImages(const Principal& caller);
  Result<ImageMeta> GetImage(const Principal& caller, const std::string& id);
  Status DeleteImage(const Principal& caller, const std::string& id);

  // Functions (names are unique per tenant).
  Result<FunctionRecord> CreateFunction(const Principal& caller, const FunctionSpec& spec);
  Result<FunctionRecord> UpdateFunction(const Principal& caller, const FunctionSpec& spec);
  Result<FunctionRecord> GetFunction(const Principal& caller, const std::string& name);
  Result<std::vector<FunctionRecord>> ListFunctions(const Principal& caller);
  Status DeleteFunction(const Principal& caller, const std::string& name);

  // Executions. Invoke blocks until the execution ends.
  Result<ExecutionRecord> Invoke(const Principal& caller, const std::string& function, const InvokeRequest& request);
  Result<ExecutionRecord> GetExecution(const Principal& caller, const std::string& id);
  Result<std::vector<ExecutionRecord>> ListExecutions(const Principal& caller, const std::string& function,
                                                      size_t limit);

  HealthReport Health();
  const ServiceConfig& config() const { return config_; }

 private:
  Service(Env* env, ServiceConfig config) : env_(env), config_(std::move(config)) {}
  Status Reconcile();
  Status CheckImageExists(const std::string& tenant, const std::string& image);
  Result<ImageMeta> RecordImage(const Principal& caller, const images::ImageRecord& record, const std::string& name);

  Env* env_;
  ServiceConfig config_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Auth> auth_;
  std::unique_ptr<images::ImageStore> images_;
  std::unique_ptr<Node> node_;
  std::unique_ptr<Executor> executor_;
  RuntimeArtifacts runtime_;
  // Serializes image record changes against file removal, so a file is never
  // removed while another tenant's record for it is being written.
  std::mutex image_mu_;
};

}  // namespace berth::manager
