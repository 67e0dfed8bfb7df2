#include "manager/executor.h"

#include <spdlog/spdlog.h>

#include <thread>

#include "common/ids.h"
#include "hypervisor/agent_client.h"

namespace berth::manager {
namespace {

std::string Tail(const std::string& s, size_t n) { return s.size() > n ? s.substr(s.size() - n) : s; }

}  // namespace

std::string OverlayVolumeName(const std::string& execution_id) { return "ovl-" + execution_id + ".qcow2"; }
std::string ConsoleLogVolumeName(const std::string& domain) { return domain + ".console.log"; }

Executor::~Executor() { WaitForCleanups(); }

void Executor::WaitForCleanups() {
  std::unique_lock lock(cleanup_mu_);
  cleanup_cv_.wait(lock, [this] { return pending_cleanups_ == 0; });
}

void Executor::Teardown(std::shared_ptr<ExecutionTeardown> teardown, ExecutionRecord ex) {
  auto run = [this, teardown, ex]() mutable {
    int64_t c0 = env_->MonotonicMs();
    teardown->Run();
    ex.timings.cleanup_ms = env_->MonotonicMs() - c0;
    if (Status s = store_->UpdateExecution(ex); !s.ok()) spdlog::warn("recording cleanup of {}: {}", ex.id, s.ToString());
  };
  if (!options_.async_cleanup) {
    run();
    return;
  }
  {
    std::lock_guard lock(cleanup_mu_);
    ++pending_cleanups_;
  }
  std::thread([this, run]() mutable {
    run();
    std::lock_guard lock(cleanup_mu_);
    --pending_cleanups_;
    cleanup_cv_.notify_all();
  }).detach();
}

ExecutionTeardown::~ExecutionTeardown() { Run(); }

void ExecutionTeardown::Run() {
  if (done_) return;
  done_ = true;
  auto log = [](const Status& s, const std::string& what) {
    if (!s.ok()) spdlog::warn("cleanup: {}: {}", what, s.ToString());
  };
  auto& hv = node_.hypervisor();
  if (started_) log(hv.DestroyDomain(domain_), "destroying domain " + domain_);
  if (overlay_created_) log(hv.DeleteVolume(node_.config().pool, overlay_), "deleting overlay " + overlay_);
  if (started_) log(hv.DeleteVolume(node_.config().log_pool, console_), "deleting console log " + console_);
  if (reserved_memory_mib_) node_.Release(reserved_vcpus_, reserved_memory_mib_);
  reserved_memory_mib_ = 0;
}

Status Executor::Advance(ExecutionRecord& ex, ExecState to) {
  if (!CanTransition(ex.state, to)) {
    return Status::Internal(std::string("illegal execution transition ") + ExecStateName(ex.state) + " -> " +
                            ExecStateName(to));
  }
  ex.state = to;
  if (IsTerminal(to)) ex.finished_ms = env_->NowUnixMs();
  return store_->UpdateExecution(ex);
}

Result<ExecutionRecord> Executor::Run(Node& node, const FunctionRecord& fn, const images::ImageRecord& image,
                                      const InvokeRequest& request) {
  const int64_t t0 = env_->MonotonicMs();
  ExecutionRecord ex;
  ex.id = RandomHex(16);
  ex.function = fn.spec.name;
  ex.function_version = fn.version;
  ex.tenant = fn.tenant;
  ex.image = image.id;
  ex.node = node.name();
  ex.domain = std::string(hv::kDomainNamePrefix) + ex.id;
  ex.ppid = request.ppid;
  ex.created_ms = env_->NowUnixMs();
  BERTH_ASSIGN_OR_RETURN(ex.pid, store_->NewPid());
  BERTH_RETURN_IF_ERROR(store_->InsertExecution(ex));

  // Ends the execution in `to` (terminal); the VM and its volumes are torn
  // down after the answer (Teardown), unless options say otherwise.
  const std::string overlay = OverlayVolumeName(ex.id);
  const std::string console = ConsoleLogVolumeName(ex.domain);
  auto cleanup = std::make_shared<ExecutionTeardown>(node, ex.domain, overlay, console);
  auto finish = [&](ExecState to, std::string error_code, std::string error) -> Result<ExecutionRecord> {
    if (to == ExecState::kError && cleanup->started()) {
      // The console tells why a guest failed to boot or died (before the
      // domain starts there is no console to read).
      auto log = node.hypervisor().DownloadVolumeTail(node.config().log_pool, console, 2048);
      if (log.ok() && !log->empty()) error += "\n--- console (tail) ---\n" + Tail(*log, 2048);
    }
    ex.timings.total_ms = env_->MonotonicMs() - t0;
    ex.error_code = std::move(error_code);
    ex.error = std::move(error);
    BERTH_RETURN_IF_ERROR(Advance(ex, to));
    Teardown(std::move(cleanup), ex);
    return ex;
  };

  // Prepare: capacity, image on the node, copy-on-write overlay.
  if (Status s = node.Reserve(fn.spec.vcpus, fn.spec.memory_mib); !s.ok()) {
    return finish(ExecState::kError, "no_capacity", s.message());
  }
  cleanup->reserved(fn.spec.vcpus, fn.spec.memory_mib);  // held until the VM is gone

  auto base = node.EnsureImage(image);
  if (!base.ok()) return finish(ExecState::kError, "image_unavailable", base.status().message());
  auto ovl = node.hypervisor().CreateOverlay(node.config().pool, overlay, *base, 0);
  if (!ovl.ok()) return finish(ExecState::kError, "overlay_failed", ovl.status().message());
  cleanup->mark_overlay_created();
  ex.timings.prepare_ms = env_->MonotonicMs() - t0;

  // Boot.
  BERTH_RETURN_IF_ERROR(Advance(ex, ExecState::kBooting));
  hv::DomainSpec spec;
  spec.name = ex.domain;
  spec.title = "berth " + fn.spec.name + " pid " + std::to_string(ex.pid);
  spec.accel = node.accel();
  spec.vcpus = fn.spec.vcpus;
  spec.memory_mib = fn.spec.memory_mib;
  spec.kernel_path = node.kernel_path();
  spec.initrd_path = node.initrd_path();
  spec.cmdline = options_.kernel_cmdline;
  spec.disks.push_back({ovl->path, "qcow2", "vda", false});
  spec.console_log_path = node.config().log_dir + "/" + console;
  spec.metadata = {ex.id, fn.spec.name, fn.tenant, ex.pid, ex.ppid, image.id, ex.created_ms};
  const int64_t b0 = env_->MonotonicMs();
  cleanup->mark_started();  // a failed start may still leave a console log
  if (Status s = node.hypervisor().StartDomain(spec); !s.ok()) {
    return finish(ExecState::kError, "start_failed", s.message());
  }
  auto channel = node.hypervisor().OpenAgentChannel(spec.name, spec.agent_channel.name);
  if (!channel.ok()) return finish(ExecState::kError, "agent_unreachable", channel.status().message());
  hv::AgentClient agent(std::move(*channel));
  auto hello = agent.Hello(options_.boot_timeout_ms);
  if (!hello.ok()) {
    const char* code = hello.status().code() == Code::kDeadlineExceeded ? "boot_timeout" : "agent_unreachable";
    return finish(ExecState::kError, code, hello.status().message());
  }
  ex.timings.boot_ms = env_->MonotonicMs() - b0;

  // Run.
  BERTH_RETURN_IF_ERROR(Advance(ex, ExecState::kRunning));
  agent::ExecMsg msg;
  msg.argv = fn.spec.entrypoint;
  msg.argv.insert(msg.argv.end(), request.args.begin(), request.args.end());
  msg.env = fn.spec.env;
  for (const auto& [k, v] : request.env) msg.env[k] = v;
  msg.cwd = fn.spec.cwd;
  msg.timeout_ms = fn.spec.timeout_ms;
  const int64_t r0 = env_->MonotonicMs();
  auto outcome = agent.Exec(msg, request.stdin_data, options_.max_output_bytes,
                            fn.spec.timeout_ms + options_.host_grace_ms);
  ex.timings.run_ms = env_->MonotonicMs() - r0;
  agent.Close();
  if (!outcome.ok()) {
    if (outcome.status().code() == Code::kDeadlineExceeded) {
      // The agent did not enforce the timeout (hung guest): the host does.
      ex.duration_ms = ex.timings.run_ms;
      return finish(ExecState::kTimedOut, "timeout",
                    "killed by the host after " + std::to_string(ex.timings.run_ms) + " ms (timeout " +
                        std::to_string(fn.spec.timeout_ms) + " ms)");
    }
    return finish(ExecState::kError, "agent_failed", outcome.status().message());
  }
  ex.stdout_data = std::move(outcome->stdout_data);
  ex.stderr_data = std::move(outcome->stderr_data);
  ex.output_truncated = outcome->truncated;
  ex.duration_ms = outcome->exit.duration_ms;
  ex.signal = outcome->exit.signal;
  if (!outcome->exit.error_code.empty()) {
    return finish(ExecState::kError, outcome->exit.error_code, outcome->exit.error);
  }
  ex.exit_code = outcome->exit.exit_code;
  if (outcome->exit.timed_out) {
    return finish(ExecState::kTimedOut, "timeout",
                  "killed after exceeding the timeout of " + std::to_string(fn.spec.timeout_ms) + " ms");
  }
  return finish(ex.exit_code == 0 ? ExecState::kSucceeded : ExecState::kFailed, "", "");
}

}  // namespace berth::manager
