// AgentClient: the host side of the guest agent protocol (guest/protocol.h)
// on top of an AgentChannel. One client per domain; not thread-safe.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "common/status.h"
#include "guest/protocol.h"
#include "hypervisor/hypervisor.h"

namespace berth::hv {

struct ExecOutcome {
  agent::ExitMsg exit;
  std::string stdout_data;
  std::string stderr_data;
  bool truncated = false;  // output beyond max_output bytes per stream was dropped
};

class AgentClient {
 public:
  explicit AgentClient(std::unique_ptr<AgentChannel> channel) : channel_(std::move(channel)) {}

  // Sends Hello and waits for the agent's Hello. kUnavailable if the guest
  // died, kDeadlineExceeded if it did not answer in time, kFailedPrecondition
  // on a protocol version mismatch.
  Result<agent::HelloMsg> Hello(int64_t timeout_ms);

  // Runs one command to completion. Waits at most host_timeout_ms for Exit
  // (kDeadlineExceeded after that: the caller destroys the domain).
  Result<ExecOutcome> Exec(const agent::ExecMsg& msg, std::string_view stdin_data, size_t max_output,
                           int64_t host_timeout_ms);
  // Exec that also hands every stdout/stderr chunk to `on_output` as it
  // arrives (for live logs), before the cap is applied.
  using OutputFn = std::function<void(agent::MsgType stream, const std::string& bytes)>;
  Result<ExecOutcome> Exec(const agent::ExecMsg& msg, std::string_view stdin_data, size_t max_output,
                           int64_t host_timeout_ms, const OutputFn& on_output);

  // Sends `signal` to the running command's process group. Safe to call from
  // another thread while Exec waits (the channel's Send is thread-safe).
  Status Kill(int signal);

  Status Ping(int64_t timeout_ms);
  Status PowerOff();
  void Close() { channel_->Close(); }

 private:
  std::unique_ptr<AgentChannel> channel_;
};

}  // namespace berth::hv
