// Service: the control plane's front door. The API layer (and tests) call
// only this; it validates requests, owns the store, the image store, the
// nodes and the executor. Every method is thread-safe.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/env.h"
#include "images/image_store.h"
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

  // Images.
  Result<std::unique_ptr<images::ImageUpload>> BeginImageUpload();
  Result<ImageMeta> CommitImageUpload(std::unique_ptr<images::ImageUpload> upload, const std::string& name);
  Result<ImageMeta> ImportImageFile(const std::string& path, const std::string& name);
  Result<std::vector<ImageMeta>> ListImages();
  Result<ImageMeta> GetImage(const std::string& id);
  Status DeleteImage(const std::string& id);

  // Functions.
  Result<FunctionRecord> CreateFunction(const FunctionSpec& spec);
  Result<FunctionRecord> UpdateFunction(const FunctionSpec& spec);
  Result<FunctionRecord> GetFunction(const std::string& name);
  Result<std::vector<FunctionRecord>> ListFunctions();
  Status DeleteFunction(const std::string& name);

  // Executions. Invoke blocks until the execution ends.
  Result<ExecutionRecord> Invoke(const std::string& function, const InvokeRequest& request);
  Result<ExecutionRecord> GetExecution(const std::string& id);
  Result<std::vector<ExecutionRecord>> ListExecutions(const std::string& function, size_t limit);

  HealthReport Health();
  const ServiceConfig& config() const { return config_; }

 private:
  Service(Env* env, ServiceConfig config) : env_(env), config_(std::move(config)) {}
  Status Reconcile();
  Status CheckImageExists(const std::string& image);

  Env* env_;
  ServiceConfig config_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<images::ImageStore> images_;
  std::unique_ptr<Node> node_;
  std::unique_ptr<Executor> executor_;
  RuntimeArtifacts runtime_;
};

}  // namespace berth::manager
