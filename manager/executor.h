// Executor: runs one execution on a node from start to cleanup.
//
// overlay volume -> domain start -> agent hello -> exec -> exit -> destroy
// -> overlay and console log deleted. Every step is recorded in the Store
// through the execution state machine (types.h). Whatever fails, the domain
// and its volumes are removed before Run returns.
#pragma once

#include <map>
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
};

class Executor {
 public:
  Executor(Env* env, Store* store, ExecutorOptions options) : env_(env), store_(store), options_(std::move(options)) {}

  // Runs `fn` on `node`. Returns the final record (its state tells success,
  // failure, timeout or error); fails only if no record could be written.
  Result<ExecutionRecord> Run(Node& node, const FunctionRecord& fn, const images::ImageRecord& image,
                              const InvokeRequest& request);

 private:
  Status Advance(ExecutionRecord& ex, ExecState to);

  Env* env_;
  Store* store_;
  ExecutorOptions options_;
};

}  // namespace berth::manager
