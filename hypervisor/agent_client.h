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
  // Hello to a live-forked child (manager/templates.h LiveFork): also tells
  // the agent its parent's pid and its new execution id.
  Result<agent::HelloMsg> Hello(int64_t timeout_ms, int64_t forked_from_pid, const std::string& execution_id);

  // Runs one command to completion. Waits at most host_timeout_ms for Exit
  // (kDeadlineExceeded after that: the caller destroys the domain).
  Result<ExecOutcome> Exec(const agent::ExecMsg& msg, std::string_view stdin_data, size_t max_output,
                           int64_t host_timeout_ms);
  // Exec that also hands every stdout/stderr chunk to `on_output` as it
  // arrives (for live logs), before the cap is applied.
  using OutputFn = std::function<void(agent::MsgType stream, const std::string& bytes)>;
  Result<ExecOutcome> Exec(const agent::ExecMsg& msg, std::string_view stdin_data, size_t max_output,
                           int64_t host_timeout_ms, const OutputFn& on_output);

  // Re-attaches to a command that is already running (after a host-side
  // restart; call Hello first): collects the Stdout/Stderr the agent kept
  // while no host was connected, and what follows, until Exit; waits at
  // most host_timeout_ms (kDeadlineExceeded). Output delivered to an
  // earlier connection is not repeated. kFailedPrecondition on an Error.
  Result<ExecOutcome> Attach(size_t max_output, int64_t host_timeout_ms, const OutputFn& on_output);

  // Sends `signal` to the running command's process group. Safe to call from
  // another thread while Exec waits (the channel's Send is thread-safe).
  Status Kill(int signal);

  Status Ping(int64_t timeout_ms);
  Status PowerOff();
  // Guest networking: asks the agent to bring up the NIC with `mac` by DHCP
  // and waits for its NetReady (at most timeout_ms + 2 s). The lease, or
  // kUnavailable with the agent's reason.
  Result<agent::NetReadyMsg> NetUp(const std::string& mac, int64_t timeout_ms);

  void Close() { channel_->Close(); }

 private:
  // Stdout/Stderr frames (capped at max_output per stream, handed to
  // on_output first) until Exit; an Error frame fails with error_prefix.
  Result<ExecOutcome> Collect(size_t max_output, int64_t host_timeout_ms, const OutputFn& on_output,
                              const std::string& error_prefix);

  std::unique_ptr<AgentChannel> channel_;
};

// The agent of a domain just restored from a save image (a template clone),
// connected and past Hello. The guest learns of a host connection from the
// port-open event its virtio-serial driver gets; should that be lost (the
// guest's view of the host stale after the restore), Hello would wait in
// vain, so a Hello not answered within `reconnect_ms` is retried on a fresh
// connection (a new port-open event; the agent takes any reconnect), until
// `timeout_ms` in all. Errors other than a timeout end it at once.
struct RestoredAgent {
  std::unique_ptr<AgentClient> client;
  agent::HelloMsg hello;
  int reconnects = 0;  // connections after the first
  int64_t open_ms = 0;  // opening the channel (the last connection)
};
Result<RestoredAgent> ConnectRestoredAgent(Hypervisor& hv, const std::string& domain, const std::string& channel,
                                           int64_t timeout_ms, int64_t reconnect_ms = 4000);

}  // namespace berth::hv
