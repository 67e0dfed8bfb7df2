#include "hypervisor/agent_client.h"

#include <algorithm>
#include <chrono>

#include "common/ids.h"

namespace berth::hv {
namespace {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

Result<agent::HelloMsg> AgentClient::Hello(int64_t timeout_ms) { return Hello(timeout_ms, 0, ""); }

Result<agent::HelloMsg> AgentClient::Hello(int64_t timeout_ms, int64_t forked_from_pid,
                                           const std::string& execution_id) {
  agent::HelloMsg mine;
  mine.forked_from_pid = forked_from_pid;
  mine.execution_id = execution_id;
  mine.entropy_hex = RandomHex(64);  // 256 bits from the host's CSPRNG
  mine.host_time_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  BERTH_RETURN_IF_ERROR(channel_->Send(agent::MsgType::kHello, nlohmann::json(mine).dump()));
  int64_t deadline = NowMs() + timeout_ms;
  for (;;) {
    int64_t left = deadline - NowMs();
    if (left <= 0) return Status::DeadlineExceeded("the guest agent did not say hello within " + std::to_string(timeout_ms) + " ms");
    auto frame = channel_->Receive(left);
    if (!frame.ok()) {
      if (frame.status().code() == Code::kDeadlineExceeded) {
        return Status::DeadlineExceeded("the guest agent did not say hello within " + std::to_string(timeout_ms) + " ms");
      }
      return frame.status();
    }
    if (frame->type != agent::MsgType::kHello) continue;  // stale output of an earlier session
    auto hello = agent::ParseBody<agent::HelloMsg>(frame->payload);
    if (!hello) return Status::Internal("malformed hello from the guest agent");
    if (hello->protocol != agent::kProtocolVersion) {
      return Status::FailedPrecondition("guest agent speaks protocol " + std::to_string(hello->protocol) +
                                        ", host speaks " + std::to_string(agent::kProtocolVersion));
    }
    return *hello;
  }
}

Result<ExecOutcome> AgentClient::Exec(const agent::ExecMsg& msg, std::string_view stdin_data, size_t max_output,
                                      int64_t host_timeout_ms) {
  return Exec(msg, stdin_data, max_output, host_timeout_ms, nullptr);
}

Result<agent::NetReadyMsg> AgentClient::NetUp(const std::string& mac, int64_t timeout_ms) {
  agent::NetUpMsg up;
  up.mac = mac;
  up.timeout_ms = timeout_ms;
  BERTH_RETURN_IF_ERROR(channel_->Send(agent::MsgType::kNetUp, nlohmann::json(up).dump()));
  const int64_t deadline = NowMs() + timeout_ms + 2000;
  for (;;) {
    const int64_t left = deadline - NowMs();
    if (left <= 0) return Status::DeadlineExceeded("the guest agent did not bring the network up in time");
    BERTH_ASSIGN_OR_RETURN(agent::Frame frame, channel_->Receive(left));
    if (frame.type != agent::MsgType::kNetReady) continue;
    auto ready = agent::ParseBody<agent::NetReadyMsg>(frame.payload);
    if (!ready) return Status::Internal("malformed NetReady from the guest agent");
    if (!ready->error_code.empty()) return Status::Unavailable(ready->error_code + ": " + ready->error);
    return *ready;
  }
}

Status AgentClient::Kill(int signal) {
  agent::KillMsg k;
  k.signal = signal;
  return channel_->Send(agent::MsgType::kKill, nlohmann::json(k).dump());
}

Result<ExecOutcome> AgentClient::Exec(const agent::ExecMsg& msg, std::string_view stdin_data, size_t max_output,
                                      int64_t host_timeout_ms, const OutputFn& on_output) {
  agent::ExecMsg exec = msg;
  exec.has_stdin = !stdin_data.empty();
  BERTH_RETURN_IF_ERROR(channel_->Send(agent::MsgType::kExec, nlohmann::json(exec).dump()));
  if (exec.has_stdin) {
    constexpr size_t kChunk = 256 * 1024;
    for (size_t off = 0; off < stdin_data.size(); off += kChunk) {
      BERTH_RETURN_IF_ERROR(channel_->Send(agent::MsgType::kStdin, stdin_data.substr(off, kChunk)));
    }
    BERTH_RETURN_IF_ERROR(channel_->Send(agent::MsgType::kStdin, ""));
  }
  return Collect(max_output, host_timeout_ms, on_output, "guest agent refused exec: ");
}

Result<ExecOutcome> AgentClient::Attach(size_t max_output, int64_t host_timeout_ms, const OutputFn& on_output) {
  return Collect(max_output, host_timeout_ms, on_output, "guest agent error: ");
}

Result<ExecOutcome> AgentClient::Collect(size_t max_output, int64_t host_timeout_ms, const OutputFn& on_output,
                                         const std::string& error_prefix) {
  ExecOutcome out;
  const int64_t deadline = NowMs() + host_timeout_ms;
  auto append = [&](std::string& sink, const std::string& bytes) {
    size_t room = sink.size() < max_output ? max_output - sink.size() : 0;
    if (bytes.size() > room) out.truncated = true;
    sink.append(bytes, 0, std::min(room, bytes.size()));
  };
  for (;;) {
    int64_t left = deadline - NowMs();
    if (left <= 0) {
      return Status::DeadlineExceeded("no exit status from the guest agent within " + std::to_string(host_timeout_ms) +
                                      " ms");
    }
    auto frame = channel_->Receive(left);
    if (!frame.ok()) return frame.status();
    switch (frame->type) {
      case agent::MsgType::kStdout:
      case agent::MsgType::kStderr:
        if (on_output) on_output(frame->type, frame->payload);
        append(frame->type == agent::MsgType::kStdout ? out.stdout_data : out.stderr_data, frame->payload);
        break;
      case agent::MsgType::kExit: {
        auto exit = agent::ParseBody<agent::ExitMsg>(frame->payload);
        if (!exit) return Status::Internal("malformed exit message from the guest agent");
        out.exit = std::move(*exit);
        return out;
      }
      case agent::MsgType::kError: {
        auto err = agent::ParseBody<agent::ErrorMsg>(frame->payload);
        return Status::FailedPrecondition(error_prefix + (err ? err->code + ": " + err->message : "?"));
      }
      default: break;  // hello replies, pongs: not ours
    }
  }
}

Status AgentClient::Ping(int64_t timeout_ms) {
  BERTH_RETURN_IF_ERROR(channel_->Send(agent::MsgType::kPing, "{}"));
  int64_t deadline = NowMs() + timeout_ms;
  for (;;) {
    int64_t left = deadline - NowMs();
    if (left <= 0) return Status::DeadlineExceeded("no pong from the guest agent");
    auto frame = channel_->Receive(left);
    if (!frame.ok()) return frame.status();
    if (frame->type == agent::MsgType::kPong) return Status::Ok();
  }
}

Status AgentClient::PowerOff() { return channel_->Send(agent::MsgType::kPowerOff, "{}"); }

Result<RestoredAgent> ConnectRestoredAgent(Hypervisor& hv, const std::string& domain, const std::string& channel,
                                           int64_t timeout_ms, int64_t reconnect_ms) {
  const int64_t deadline = NowMs() + timeout_ms;
  RestoredAgent out;
  for (;;) {
    const int64_t left = deadline - NowMs();
    const int64_t opening = NowMs();
    BERTH_ASSIGN_OR_RETURN(auto ch, hv.OpenAgentChannel(domain, channel));
    out.open_ms = NowMs() - opening;
    out.client = std::make_unique<AgentClient>(std::move(ch));
    const bool last = left <= reconnect_ms * 3 / 2;
    auto hello = out.client->Hello(last ? std::max<int64_t>(left, 1) : reconnect_ms);
    if (hello.ok()) {
      out.hello = std::move(*hello);
      return out;
    }
    out.client->Close();
    if (hello.status().code() != Code::kDeadlineExceeded || last) {
      if (out.reconnects == 0) return hello.status();
      return hello.status().WithContext("after " + std::to_string(out.reconnects) + " reconnect(s)");
    }
    ++out.reconnects;
  }
}

}  // namespace berth::hv
