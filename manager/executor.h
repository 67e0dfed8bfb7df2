// Executor: runs one execution on a node from start to cleanup.
//
// overlay volume -> domain start -> agent hello -> exec -> exit -> destroy
// -> overlay and console log deleted. Every step is recorded in the Store
// through the execution state machine (types.h). Whatever fails, the domain
// and its volumes are removed before Run returns.
#pragma once

#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/env.h"
#include "images/image_store.h"
#include "manager/node.h"
#include "manager/store.h"
#include "manager/types.h"

namespace berth::manager {

struct InvokeRequest {
  std::vector<std::string> args;           // appended to the function's entrypoint
  std::map<std::string, std::string> env;  // merged over the function's env
  std::string stdin_data;
  int64_t ppid = 0;                        // parent execution's pid (0: none)
};

struct ExecutorOptions {
  int64_t boot_timeout_ms = 120'000;   // domain start -> agent hello (TCG boots take seconds)
  int64_t host_grace_ms = 10'000;      // after the function's timeout, before the host destroys the VM
  size_t max_output_bytes = 1 << 20;   // per stream; beyond that output is dropped and flagged
  std::string kernel_cmdline = "console=ttyS0 quiet panic=-1";
  // Tear the VM down after answering (the record is final before that; the
  // node's capacity stays reserved until the VM is gone). False: answer only
  // after teardown.
  bool async_cleanup = true;
};

// Volume names of one execution on its node.
std::string OverlayVolumeName(const std::string& execution_id);
std::string ConsoleLogVolumeName(const std::string& domain);

// Removes what one execution left on its node (domain, overlay, console log)
// and releases its reserved capacity. Idempotent; runs at destruction at the latest.
class ExecutionTeardown {
 public:
  ExecutionTeardown(Node& node, std::string domain, std::string overlay, std::string console)
      : node_(node), domain_(std::move(domain)), overlay_(std::move(overlay)), console_(std::move(console)) {}
  ~ExecutionTeardown();
  ExecutionTeardown(const ExecutionTeardown&) = delete;
  ExecutionTeardown& operator=(const ExecutionTeardown&) = delete;

  void Run();
  void mark_overlay_created() { overlay_created_ = true; }
  void mark_started() { started_ = true; }
  bool started() const { return started_; }
  void reserved(uint32_t vcpus, uint64_t memory_mib) {
    reserved_vcpus_ = vcpus;
    reserved_memory_mib_ = memory_mib;
  }

 private:
  Node& node_;
  std::string domain_, overlay_, console_;
  bool overlay_created_ = false, started_ = false, done_ = false;
  uint32_t reserved_vcpus_ = 0;
  uint64_t reserved_memory_mib_ = 0;
};

class Executor {
 public:
  Executor(Env* env, Store* store, ExecutorOptions options) : env_(env), store_(store), options_(std::move(options)) {}
  // Waits for teardowns still running in the background.
  ~Executor();
  void WaitForCleanups();

  // Runs `fn` on `node`. Returns the final record (its state tells success,
  // failure, timeout or error); fails only if no record could be written.
  Result<ExecutionRecord> Run(Node& node, const FunctionRecord& fn, const images::ImageRecord& image,
                              const InvokeRequest& request);

 private:
  Status Advance(ExecutionRecord& ex, ExecState to);
  // Runs the teardown (in the background with async_cleanup) and then
  // records its duration in the execution's timings.
  void Teardown(std::shared_ptr<ExecutionTeardown> teardown, ExecutionRecord ex);

  Env* env_;
  Store* store_;
  ExecutorOptions options_;
  std::mutex cleanup_mu_;
  std::condition_variable cleanup_cv_;
  int pending_cleanups_ = 0;
};

}  // namespace berth::manager
