#include "guest/protocol.h"

namespace berth::agent {

const char* MsgTypeName(MsgType t) {
  switch (t) {
    case MsgType::kHello: return "hello";
    case MsgType::kExec: return "exec";
    case MsgType::kStdin: return "stdin";
    case MsgType::kStdout: return "stdout";
    case MsgType::kStderr: return "stderr";
    case MsgType::kExit: return "exit";
    case MsgType::kKill: return "kill";
    case MsgType::kPing: return "ping";
    case MsgType::kPong: return "pong";
    case MsgType::kPowerOff: return "poweroff";
    case MsgType::kError: return "error";
    case MsgType::kNetUp: return "netup";
    case MsgType::kNetReady: return "netready";
  }
  return "unknown";
}

std::string EncodeFrame(MsgType type, std::string_view payload) {
  std::string out;
  out.reserve(kHeaderSize + payload.size());
  uint32_t len = static_cast<uint32_t>(payload.size());
  uint16_t t = static_cast<uint16_t>(type);
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
  out.push_back(static_cast<char>(t & 0xff));
  out.push_back(static_cast<char>(t >> 8));
  out.push_back(0);
  out.push_back(0);
  out.append(payload);
  return out;
}

std::string EncodeJsonFrame(MsgType type, const nlohmann::json& body) {
  return EncodeFrame(type, body.dump());
}

std::optional<Frame> FrameDecoder::Next() {
  if (!error_.empty()) return std::nullopt;
  if (buf_.size() - off_ < kHeaderSize) {
    return std::nullopt;
  }
  const auto* p = reinterpret_cast<const unsigned char*>(buf_.data() + off_);
  uint32_t len = static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
                 (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
  uint16_t type = static_cast<uint16_t>(p[4] | (p[5] << 8));
  uint16_t reserved = static_cast<uint16_t>(p[6] | (p[7] << 8));
  if (len > kMaxPayload) {
    error_ = "frame payload of " + std::to_string(len) + " bytes exceeds the limit";
    return std::nullopt;
  }
  if (reserved != 0 || type == 0) {
    error_ = "malformed frame header";
    return std::nullopt;
  }
  if (buf_.size() - off_ < kHeaderSize + len) return std::nullopt;
  Frame f{static_cast<MsgType>(type), buf_.substr(off_ + kHeaderSize, len)};
  off_ += kHeaderSize + len;
  if (off_ > 65536 && off_ * 2 > buf_.size()) {  // compact occasionally
    buf_.erase(0, off_);
    off_ = 0;
  }
  return f;
}

void to_json(nlohmann::json& j, const HelloMsg& m) {
  j = {{"protocol", m.protocol}, {"agent_version", m.agent_version}, {"boot_ms", m.boot_ms}, {"kernel", m.kernel}};
  if (!m.entropy_hex.empty()) j["entropy_hex"] = m.entropy_hex;
  if (m.host_time_ms) j["host_time_ms"] = m.host_time_ms;
  if (m.entropy_mixed) j["entropy_mixed"] = true;
  if (m.forked_from_pid) j["forked_from_pid"] = m.forked_from_pid;
  if (!m.execution_id.empty()) j["execution_id"] = m.execution_id;
  j["exec_pending"] = m.exec_pending;
}
void from_json(const nlohmann::json& j, HelloMsg& m) {
  m.protocol = j.at("protocol").get<uint32_t>();
  m.agent_version = j.value("agent_version", "");
  m.boot_ms = j.value("boot_ms", int64_t{0});
  m.kernel = j.value("kernel", "");
  m.entropy_hex = j.value("entropy_hex", "");
  m.host_time_ms = j.value("host_time_ms", int64_t{0});
  m.entropy_mixed = j.value("entropy_mixed", false);
  m.forked_from_pid = j.value("forked_from_pid", int64_t{0});
  m.execution_id = j.value("execution_id", "");
  m.exec_pending = j.value("exec_pending", true);
}
void to_json(nlohmann::json& j, const ExecMsg& m) {
  j = {{"argv", m.argv}, {"env", m.env}, {"cwd", m.cwd}, {"timeout_ms", m.timeout_ms}, {"has_stdin", m.has_stdin}};
  if (m.prepare_only) j["prepare_only"] = true;
  if (m.release_memory) j["release_memory"] = true;
}
void from_json(const nlohmann::json& j, ExecMsg& m) {
  m.argv = j.at("argv").get<std::vector<std::string>>();
  m.env = j.value("env", std::map<std::string, std::string>{});
  m.cwd = j.value("cwd", "/");
  m.timeout_ms = j.value("timeout_ms", int64_t{0});
  m.has_stdin = j.value("has_stdin", false);
  m.prepare_only = j.value("prepare_only", false);
  m.release_memory = j.value("release_memory", false);
}
void to_json(nlohmann::json& j, const ExitMsg& m) {
  j = {{"exit_code", m.exit_code}, {"signal", m.signal},     {"duration_ms", m.duration_ms},
       {"timed_out", m.timed_out}, {"error_code", m.error_code}, {"error", m.error}};
}
void from_json(const nlohmann::json& j, ExitMsg& m) {
  m.exit_code = j.at("exit_code").get<int>();
  m.signal = j.value("signal", 0);
  m.duration_ms = j.value("duration_ms", int64_t{0});
  m.timed_out = j.value("timed_out", false);
  m.error_code = j.value("error_code", "");
  m.error = j.value("error", "");
}
void to_json(nlohmann::json& j, const KillMsg& m) { j = {{"signal", m.signal}}; }
void from_json(const nlohmann::json& j, KillMsg& m) { m.signal = j.value("signal", 9); }
void to_json(nlohmann::json& j, const ErrorMsg& m) { j = {{"code", m.code}, {"message", m.message}}; }
void from_json(const nlohmann::json& j, ErrorMsg& m) {
  m.code = j.value("code", "");
  m.message = j.value("message", "");
}
void to_json(nlohmann::json& j, const NetUpMsg& m) { j = {{"mac", m.mac}, {"timeout_ms", m.timeout_ms}}; }
void from_json(const nlohmann::json& j, NetUpMsg& m) {
  m.mac = j.value("mac", "");
  m.timeout_ms = j.value("timeout_ms", int64_t{10'000});
}
void to_json(nlohmann::json& j, const NetReadyMsg& m) {
  j = {{"interface", m.interface}, {"mac", m.mac},           {"ip", m.ip},
       {"prefix_length", m.prefix_length}, {"gateway", m.gateway}, {"dns", m.dns},
       {"took_ms", m.took_ms},     {"error_code", m.error_code}, {"error", m.error}};
  if (!m.previous_mac.empty()) j["previous_mac"] = m.previous_mac;  // newer agents only
}
void from_json(const nlohmann::json& j, NetReadyMsg& m) {
  m.interface = j.value("interface", "");
  m.mac = j.value("mac", "");
  m.ip = j.value("ip", "");
  m.prefix_length = j.value("prefix_length", 0);
  m.gateway = j.value("gateway", "");
  m.dns = j.value("dns", "");
  m.took_ms = j.value("took_ms", int64_t{0});
  m.previous_mac = j.value("previous_mac", "");
  m.error_code = j.value("error_code", "");
  m.error = j.value("error", "");
}

}  // namespace berth::agent
