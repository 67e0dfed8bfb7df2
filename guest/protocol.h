// The host <-> guest agent wire protocol (version 1).
//
// Transport: one virtio-serial port named kPortName (a unix-socket channel on
// the host, reached through virDomainOpenChannel). Byte stream, framed:
//
//   u32 payload_length (LE) | u16 type (LE) | u16 reserved (0) | payload
//
// payload_length <= kMaxPayload. Control messages carry a JSON object;
// kStdin/kStdout/kStderr carry raw bytes. Unknown types are ignored by both
// sides (forward compatibility); a bad header is a protocol error that ends
// the session.
//
// Session:
//   host  -> Hello {protocol, entropy_hex, host_time_ms}
//   agent -> Hello {protocol, agent_version, boot_ms, kernel}
//   host  -> Exec {argv, env, cwd, timeout_ms, has_stdin}
//   host  -> Stdin bytes ... Stdin (empty = EOF)       [only if has_stdin]
//   agent -> Stdout/Stderr bytes ...                    [streamed]
//   agent -> Exit {exit_code, signal, duration_ms, timed_out, error_code, error}
//   (another Exec may follow: one agent serves executions one at a time)
// Between Hello and the first Exec, for executions with a NIC:
//   host  -> NetUp {mac, timeout_ms};  agent -> NetReady {interface, ip, ...}
// At any time: host -> Ping, agent -> Pong {}; host -> Kill {signal};
// host -> PowerOff (agent syncs and powers the VM off).
//
// This header depends only on the C++ standard library and nlohmann/json so
// that the static guest agent can use it.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace berth::agent {

inline constexpr uint32_t kProtocolVersion = 1;
inline constexpr const char* kPortName = "org.berth.agent.0";
inline constexpr uint32_t kMaxPayload = 1u << 20;  // 1 MiB
inline constexpr size_t kHeaderSize = 8;

enum class MsgType : uint16_t {
  kHello = 1,
  kExec = 2,
  kStdin = 3,
  kStdout = 4,
  kStderr = 5,
  kExit = 6,
  kKill = 7,
  kPing = 8,
  kPong = 9,
  kPowerOff = 10,
  kError = 11,  // agent -> host: {code, message}, a request it could not honour
  // Guest networking (executions with a NIC only): host -> NetUp, agent ->
  // NetReady once the NIC has a DHCP lease (or failed). Kept apart from the
  // low numbers so that other additions do not collide.
  kNetUp = 20,
  kNetReady = 21,
};

const char* MsgTypeName(MsgType t);

struct Frame {
  MsgType type;
  std::string payload;
};

std::string EncodeFrame(MsgType type, std::string_view payload);
std::string EncodeJsonFrame(MsgType type, const nlohmann::json& body);

// Incremental decoder: Feed() bytes as they arrive, then drain Next().
class FrameDecoder {
 public:
  void Feed(std::string_view bytes) { buf_.append(bytes); }
  // Returns the next complete frame, std::nullopt if more bytes are needed.
  // After a protocol error, returns nullopt forever and error() is set.
  std::optional<Frame> Next();
  const std::string& error() const { return error_; }
  size_t buffered() const { return buf_.size(); }

 private:
  std::string buf_;
  size_t off_ = 0;
  std::string error_;
};

// ---- typed control messages ----

struct HelloMsg {
  uint32_t protocol = kProtocolVersion;
  // Host only, optional: fresh randomness and wall-clock time. A guest
  // restored from a snapshot shares its RNG state and clock with every other
  // clone of it; the agent mixes this entropy into the kernel's pool, reseeds
  // the CRNG and sets the clock, so no two clones share random streams.
  std::string entropy_hex;    // 32..512 hex chars
  int64_t host_time_ms = 0;   // Unix ms; 0 = leave the clock alone
  // Host only, optional: this guest is a live-forked child of process
  // `forked_from_pid` (manager/templates.h LiveFork), now execution
  // `execution_id`. The agent tells the processes inside: it writes the
  // parent's pid to /run/berth/forked (in the function's root filesystem
  // when it is mounted, and in the agent's own root) and adds
  // BERTH_FORKED_FROM to the environment of later Execs.
  int64_t forked_from_pid = 0;
  std::string execution_id;
  std::string agent_version;  // agent only
  int64_t boot_ms = 0;        // agent only: guest uptime when hello was sent
  std::string kernel;         // agent only: uname -r
  bool entropy_mixed = false; // agent only: the host's entropy went into the kernel pool
  // Agent only: an Exec is running, or its output/Exit is still queued for
  // the host (a host that re-attaches after a restart waits for that Exit).
  // Absent (an older agent): taken as true.
  bool exec_pending = false;
};

struct ExecMsg {
  std::vector<std::string> argv;  // argv[0] is resolved in PATH inside the rootfs
  std::map<std::string, std::string> env;
  std::string cwd = "/";
  int64_t timeout_ms = 0;         // 0 = no limit in the agent
  bool has_stdin = false;
  // Only mount the function's root filesystem (as the first Exec would) and
  // run nothing: Exit {exit_code 0}, or Exit {rootfs_unavailable}. Warm
  // pools prepare their VMs so that a call does not pay for the mount.
  // With argv given, the agent then reads the files starting argv would
  // read (entrypoint, interpreter, libraries) into the page cache, after
  // release_memory's drop of the caches, and still runs nothing; one Stdout
  // line says what it read. Older agents ignore argv here.
  bool prepare_only = false;
  // With prepare_only, before the Exit (templates, before their save): the
  // agent syncs, drops the guest's clean caches and zero-fills its free
  // memory (a child process touches it once, then frees it), so a save of
  // the guest skips those pages (QEMU sends a zero page as a few bytes).
  // One Stdout line says what it did. Older agents ignore it.
  bool release_memory = false;
};

// Error codes reported in ExitMsg.error_code when the command never ran.
inline constexpr const char* kErrEntrypointNotFound = "entrypoint_not_found";
inline constexpr const char* kErrEntrypointNotExecutable = "entrypoint_not_executable";
inline constexpr const char* kErrRootfs = "rootfs_unavailable";
inline constexpr const char* kErrSpawn = "spawn_failed";
inline constexpr const char* kErrBusy = "busy";

struct ExitMsg {
  int exit_code = -1;      // valid when signal == 0 and error_code empty
  int signal = 0;          // terminating signal, 0 if exited normally
  int64_t duration_ms = 0;
  bool timed_out = false;  // the agent killed it at timeout_ms
  std::string error_code;  // non-empty: the command could not be started
  std::string error;       // human-readable detail
};

// Host -> agent: bring up the NIC whose MAC is `mac` (empty: the first
// non-loopback interface) with busybox udhcpc; wait at most timeout_ms.
// When no interface has `mac` (a template clone or live-forked child: the
// restored virtio-net state holds the original VM's MAC), the agent gives
// the guest's interface that MAC first, so the lease and the host's nwfilter
// (which only lets `mac` through) match; any address of the old MAC is dropped.
struct NetUpMsg {
  std::string mac;
  int64_t timeout_ms = 10'000;
};

// Agent -> host: the lease (error_code empty) or why there is none.
struct NetReadyMsg {
  std::string interface;  // "eth0"
  std::string mac;
  std::string ip;         // "10.240.0.17"
  int prefix_length = 0;
  std::string gateway;    // DHCP router option
  std::string dns;        // first DNS server offered, if any
  int64_t took_ms = 0;
  std::string previous_mac;  // the interface's MAC before the agent set `mac` ("" if it had it)
  std::string error_code;  // "no_interface" | "mac_failed" | "dhcp_failed" | ""
  std::string error;
};

struct KillMsg {
  int signal = 9;
};

struct ErrorMsg {
  std::string code;
  std::string message;
};

void to_json(nlohmann::json& j, const HelloMsg& m);
void from_json(const nlohmann::json& j, HelloMsg& m);
void to_json(nlohmann::json& j, const ExecMsg& m);
void from_json(const nlohmann::json& j, ExecMsg& m);
void to_json(nlohmann::json& j, const ExitMsg& m);
void from_json(const nlohmann::json& j, ExitMsg& m);
void to_json(nlohmann::json& j, const KillMsg& m);
void from_json(const nlohmann::json& j, KillMsg& m);
void to_json(nlohmann::json& j, const ErrorMsg& m);
void to_json(nlohmann::json& j, const NetUpMsg& m);
void from_json(const nlohmann::json& j, NetUpMsg& m);
void to_json(nlohmann::json& j, const NetReadyMsg& m);
void from_json(const nlohmann::json& j, NetReadyMsg& m);
void from_json(const nlohmann::json& j, ErrorMsg& m);

// Parses a frame payload as T; returns nullopt on malformed JSON/fields.
template <typename T>
std::optional<T> ParseBody(const std::string& payload) {
  try {
    return nlohmann::json::parse(payload).get<T>();
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

}  // namespace berth::agent
