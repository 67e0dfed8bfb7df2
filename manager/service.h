// Service: the control plane's front door. The API layer (and tests) call
// only this; it validates requests, owns the store, the image store, the
// nodes and the executor. Every method is thread-safe.
#pragma once

#include <atomic>
#include <condition_variable>
#include <thread>
#include <functional>
#include <map>
#include <optional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "common/env.h"
#include "images/image_store.h"
#include "images/upload_session.h"
#include "manager/auth.h"
#include "manager/cluster.h"
#include "manager/executor.h"
#include "manager/node.h"
#include "manager/runtime.h"
#include "manager/store.h"
#include "manager/types.h"

namespace berth::manager {

// Starts a process: a child of `ppid` (1: init, or a live process of the
// caller's tenant). Either `function` (a function run with args/stdin) or
// `image` (an instance, by image id or name) is set.
struct ExecRequest {
  int64_t ppid = kInitPid;
  std::string name;
  std::string function;
  std::string image;
  std::vector<std::string> command;  // instance argv; default: /etc/berth/start if present, else sleep
  std::vector<std::string> args;
  std::map<std::string, std::string> env;
  std::string stdin_data;
  std::string userdata;
  std::string boot = "runtime";      // runtime | disk
  std::map<std::string, std::string> node_selector;  // node labels that must all match
  uint32_t vcpus = 1;
  uint64_t memory_mib = 256;
  int64_t timeout_ms = 0;            // 0: no limit
  // Guest network; unset: the function's (function runs) or none (instances).
  std::optional<net::NetworkPolicy> network;
};

struct ProcLogs {
  std::string stdout_data, stderr_data, console;
  bool output_truncated = false, console_truncated = false;
  bool live = false;
};

struct ServiceConfig {
  int64_t node_down_after_ms = 6000;     // a node that does not answer this long is down
  int64_t node_monitor_interval_ms = 2000;
  std::string data_dir = "/var/lib/berth";  // berth.db and images/ live here
  std::string runtime_dir;                  // default: <data_dir>/runtime
  NodeConfig node;
  ExecutorOptions executor;
  uint64_t max_image_bytes = 8ull << 30;
  // Retention of finished execution records: the newest max_records are
  // always kept; older ones go once they are older than max_age_ms.
  size_t retention_max_records = 100'000;
  int64_t retention_max_age_ms = int64_t{7} * 24 * 3600 * 1000;
  int64_t kill_grace_ms = 10'000;  // TERM -> destroy
  // Image GC (manager/service_images.cc): every interval, upload sessions
  // idle longer than the session grace and images no tag, function or live
  // execution references, older than the image grace, are removed; each
  // node's image cache is trimmed to image_cache_bytes (0: no budget).
  int64_t image_gc_interval_ms = 60'000;
  int64_t image_gc_grace_ms = int64_t{24} * 3600 * 1000;
  int64_t upload_session_grace_ms = int64_t{24} * 3600 * 1000;
  uint64_t image_cache_bytes = 0;
};

// An image with what refers to it (GET /v1/images/{ref}).
struct ImageDetails {
  ImageMeta meta;
  std::vector<std::string> tags;        // "name:tag"
  std::vector<std::string> functions;   // functions using it
  std::vector<std::string> executions;  // live executions using it
  std::vector<std::string> nodes;       // nodes whose cache holds it
};

struct ImageGcReport {
  size_t sessions_removed = 0;
  size_t images_removed = 0;   // records
  size_t files_removed = 0;    // blobs
  size_t volumes_evicted = 0;  // node cache entries
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
  ~Service();
  // berthd is stopping: live executions go on in their VMs and stay
  // `running` for the next berthd to adopt; calls waiting on one return
  // Unavailable at once, and nothing new starts (Executor::DetachAll).
  void Detach();

  // Nodes (admin only for changes): register a libvirt host, cordon /
  // uncordon / drain it, remove it (409 while it runs work).
  Result<NodeView> AddNode(const Principal& caller, const NodeSpec& spec);
  Status RemoveNode(const Principal& caller, const std::string& name);
  Result<NodeView> SetNodeState(const Principal& caller, const std::string& name, const std::string& action);
  std::vector<NodeView> NodeViews();
  Result<NodeView> NodeViewOf(const std::string& name);

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

  // Image references (manager/service_images.cc). A ref is an id (64 hex or
  // "sha256:<hex>"), "name:tag", or "name" (tag "latest", else the newest
  // image uploaded under that name).
  Result<ImageDetails> InspectImage(const Principal& caller, const std::string& ref);
  // Points name:tag ("latest" when no tag is given) at the image `ref` names.
  Result<ImageDetails> TagImage(const Principal& caller, const std::string& ref, const std::string& name_tag);
  Result<std::vector<ImageTag>> ListImageTags(const Principal& caller);
  // "name:tag": removes the tag only (the image goes with GC once nothing
  // references it). Otherwise deletes the image: Aborted (409, field "id")
  // while a function or a live execution uses it.
  Status DeleteImageRef(const Principal& caller, const std::string& ref);

  // Resumable uploads (images/upload_session.h); `name` as the upload's ?name=.
  Result<images::UploadSessionInfo> StartImageUploadSession(const Principal& caller, const std::string& name,
                                                            const std::string& format);
  Result<images::UploadSessionInfo> GetImageUploadSession(const Principal& caller, const std::string& id);
  Result<std::unique_ptr<images::SessionWriter>> AppendImageUploadSession(const Principal& caller,
                                                                          const std::string& id, uint64_t offset,
                                                                          uint64_t* current_offset);
  Result<ImageMeta> FinishImageUploadSession(const Principal& caller, const std::string& id,
                                             const std::string& digest);
  Status AbortImageUploadSession(const Principal& caller, const std::string& id);
  // One GC pass now (also run every image_gc_interval_ms by a thread).
  ImageGcReport CollectImageGarbage();

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

  Result<std::vector<ExecutionRecord>> ListExecutions(const Principal& caller, const ExecutionFilter& filter);
  // Every tenant's ended executions after a (finished_ms, id) cursor, in end
  // order (Store::ListEndedExecutionsAfter); for the event engine's restart.
  Result<std::vector<ExecutionRecord>> ListEndedExecutionsAfter(int64_t after_finished_ms,
                                                                const std::string& after_id, size_t limit);
  // Stops a live execution (SIGKILL).
  Result<ExecutionRecord> CancelExecution(const Principal& caller, const std::string& id);
  // stdout, stderr and console of an execution: live ones as they are now.
  Result<ProcLogs> Logs(const Principal& caller, const ExecutionRecord& ex);

  // Processes (seed 001). pid 0 (kernel) and 1 (init) are implicit roots
  // that have no record; every execution descends from init.
  Result<ExecutionRecord> Exec(const Principal& caller, const ExecRequest& request);
  // A child of `pid` with its image, user-data and spec; `pid` must be live.
  // `live`: the child starts from the parent's current memory and disk state
  // (a live fork, manager/templates.h LiveFork) on the parent's node and
  // continues the parent's running command; the parent must be running a
  // command on the berth runtime (not a disk boot), else FailedPrecondition.
  Result<ExecutionRecord> Fork(const Principal& caller, int64_t pid, const std::string& name, bool live = false);
  // Sends SIGTERM or SIGKILL; with `tree`, to every live descendant first.
  // Returns the records signalled. pid 0/1 are InvalidArgument; an exited
  // process is FailedPrecondition.
  Result<std::vector<ExecutionRecord>> Kill(const Principal& caller, int64_t pid, int signal, bool tree);
  // Blocks until `pid` ended (DeadlineExceeded after timeout_ms); its record.
  Result<ExecutionRecord> Wait(const Principal& caller, int64_t pid, int64_t timeout_ms);
  Result<ExecutionRecord> GetProc(const Principal& caller, int64_t pid);
  // Live processes (all = finished ones too), by pid.
  Result<std::vector<ExecutionRecord>> ListProcs(const Principal& caller, bool all, size_t limit);
  Result<std::vector<ExecutionRecord>> Children(const Principal& caller, int64_t pid, bool all);

  HealthReport Health();
  const ServiceConfig& config() const { return config_; }

  // Called with the final record each time an Invoke'd execution ends (from
  // the invoking thread) and each time a process that Exec or Fork started
  // ends (from its background thread); it must not block for long. One
  // listener; {} clears, after waiting for calls in progress.
  void SetExecutionListener(std::function<void(const ExecutionRecord&)> listener);

 private:
  Service(Env* env, ServiceConfig config) : env_(env), config_(std::move(config)) {}
  // Places an execution (id) on a node that fits; its claim is released when its VM is gone.
  Result<Node*> Place(const std::string& id, uint32_t vcpus, uint64_t memory_mib,
                      const std::map<std::string, std::string>& selector);
  Status ReconcileNode(Node& node);
  Result<ExecutionRecord> StartPlaced(Launch launch, const std::map<std::string, std::string>& selector);
  Status Reconcile();
  // A lost run of a retryable function (not an event delivery) runs again
  // elsewhere as a new process; `context` prefixes the log lines.
  void RunLostAgain(const ExecutionRecord& ex, const char* context);
  Result<images::ImageRecord> ResolveImage(const std::string& tenant, const std::string& image, const char* field);
  Status CheckParent(const std::string& tenant, int64_t ppid);
  void MaybePrune();
  Status CheckImageExists(const std::string& tenant, const std::string& image);
  Result<ImageMeta> RecordImage(const Principal& caller, const images::ImageRecord& record, const std::string& name);
  // Resolves an image ref of the tenant to its id (NotFound, field `field`).
  Result<std::string> ResolveImageRef(const std::string& tenant, const std::string& ref, const char* field);
  // Tags the image with an upload's ?name= when it is a valid name[:tag].
  Status TagUploadName(const std::string& tenant, const std::string& id, const std::string& name);
  // Removes the file and the nodes' copies once no tenant's record names the image.
  Status RemoveImageBlobIfUnreferenced(const std::string& id);
  void StartImageGc();
  void StopImageGc();

  Env* env_;
  ServiceConfig config_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Auth> auth_;
  std::unique_ptr<images::ImageStore> images_;
  std::unique_ptr<images::UploadSessions> uploads_;
  std::thread image_gc_thread_;
  std::mutex image_gc_mu_;
  std::condition_variable image_gc_cv_;
  bool image_gc_stop_ = false;
  std::unique_ptr<Cluster> cluster_;  // owns the nodes; outlives the executor
  Node* node_ = nullptr;              // the local node (berthd's --node-uri)
  std::unique_ptr<Executor> executor_;
  RuntimeArtifacts runtime_;
  // Serializes image record changes against file removal, so a file is never
  // removed while another tenant's record for it is being written.
  std::mutex image_mu_;
  std::atomic<uint64_t> started_count_{0};
  // The execution listener, shared with the executor's hook for exec/fork
  // runs (which may end while the Service goes away). Calls hold `mu`
  // shared, so clearing the listener waits for the calls in progress.
  struct ExecutionListener {
    std::shared_mutex mu;
    std::function<void(const ExecutionRecord&)> fn;
    void Notify(const ExecutionRecord& ex) {
      std::shared_lock lk(mu);
      if (fn) fn(ex);
    }
  };
  std::shared_ptr<ExecutionListener> execution_listener_ = std::make_shared<ExecutionListener>();
};

}  // namespace berth::manager
