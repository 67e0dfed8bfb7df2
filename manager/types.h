// The control plane's records: functions, executions, images. Plain values,
// shared by the store, the execution engine and the API layer.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "net/network_policy.h"

namespace berth::manager {

inline constexpr const char* kDefaultTenant = "default";
// The two roots of the process tree (seed 001): pid 0 "kernel", pid 1 "init".
// Every execution descends from init; neither root can be killed.
inline constexpr int64_t kKernelPid = 0;
inline constexpr int64_t kInitPid = 1;
// Largest warm pool of one function (FunctionSpec::max_warm).
inline constexpr uint32_t kMaxWarm = 16;

// Who is calling: the tenant a token belongs to, the token's id, and whether
// it is an admin token. Every Service method touching tenant data takes one;
// objects of other tenants are invisible to it (NotFound, never "forbidden").
// Admin tokens act within their own tenant and may also manage tokens.
struct Principal {
  std::string tenant = kDefaultTenant;
  std::string token_id;
  bool admin = false;
};

// An API token. Only the sha256 of its secret is stored; the secret itself is
// shown once, when the token is created.
struct TokenRecord {
  std::string id;      // short random id, used to list and revoke
  std::string tenant;
  std::string name;    // human label
  std::string sha256;  // hex digest of the secret
  bool admin = false;
  int64_t created_ms = 0;
  std::optional<int64_t> revoked_ms;
};

// Access to a function through the HTTP gateway (issue 7). auth: "public"
// (no token), "token" (any valid token) or "tenant" (a token of the
// function's tenant). Token buckets: rate_limit_per_s/burst for the function
// as a whole, token_rate_limit_per_s/token_burst per caller (its token, or its
// address on public routes); 0 = unlimited, burst 0 = max(1, rate).
// max_concurrency: executions at once through the gateway (0 = the gateway's
// own bound); max_queue: requests waiting beyond that (further ones: 429).
struct GatewayPolicy {
  std::string auth = "tenant";
  double rate_limit_per_s = 0;
  int64_t burst = 0;
  double token_rate_limit_per_s = 0;
  int64_t token_burst = 0;
  int64_t max_concurrency = 0;
  int64_t max_queue = 0;
};

struct FunctionSpec {
  std::string name;
  std::string image;                    // sha256 of a registered image
  std::vector<std::string> entrypoint;  // argv; argv[0] resolved in PATH inside the image
  uint32_t vcpus = 1;
  uint64_t memory_mib = 256;
  int64_t timeout_ms = 30'000;
  std::map<std::string, std::string> env;
  std::string cwd = "/";
  std::string network = "none";  // none | egress | isolated (net/network_policy.h)
  // With network != "none": egress allow-list entries and a TCP port the
  // guest serves on (reachable at /svc/<instance>/...; 0: none).
  std::vector<net::EgressRule> network_allow;
  uint16_t expose_port = 0;
  // Fast start (issue 6). snapshot: restore starts from a saved template
  // instead of booting. A warm pool (max_warm > 0) keeps up to max_warm VMs
  // past hello; while the function is called it refills to
  // max(min_warm, 1) (capped by max_warm); after idle_timeout_ms without a
  // call it shrinks to zero and wakes from the template on the next call.
  // keep_alive: a VM goes back to the pool after a successful run (reuse,
  // opt-in; by default every execution gets a fresh VM).
  bool snapshot = true;
  // A run lost with its node (or with berthd) may be run again on another
  // node: synchronous invocations retry within their deadline, the event
  // engine retries every lost delivery anyway. Only for idempotent code.
  bool retryable = false;
  uint32_t min_warm = 0;
  uint32_t max_warm = 0;
  int64_t idle_timeout_ms = 300'000;
  bool keep_alive = false;
  // Autoscaling (issue 6): target_concurrency is the number of calls in
  // flight per instance the pool aims for; the warm pool grows with the
  // observed concurrency (up to max_warm) and shrinks when idle.
  // max_instances caps the function's executions at once on this berthd (0:
  // no cap); past it, calls wait in a queue of at most max_queued (each at
  // most queue_timeout_ms) and further ones are refused (429).
  uint32_t target_concurrency = 1;
  uint32_t max_instances = 0;
  uint32_t max_queued = 16;
  int64_t queue_timeout_ms = 30'000;
  GatewayPolicy gateway;  // who may call it through /gw/<tenant>/<name>/..., and how often
  // Its gateway routes as declared for documentation (issue 7): a JSON array
  // as api/gateway.h's ParseGatewayRoutes normalises it; "" when none.
  std::string gateway_routes;
};

struct FunctionRecord {
  FunctionSpec spec;
  std::string tenant = kDefaultTenant;
  int64_t version = 1;
  int64_t created_ms = 0;
  int64_t updated_ms = 0;
};

struct ImageMeta {
  std::string id;      // sha256
  std::string name;    // optional human name
  std::string format;  // raw | qcow2
  std::string filesystem;
  uint64_t size_bytes = 0;
  uint64_t virtual_size_bytes = 0;
  std::string tenant = kDefaultTenant;
  int64_t created_ms = 0;
};

// Execution lifecycle. Legal transitions are decided by CanTransition only.
//   pending -> placing -> starting -> running -> succeeded | failed | timed_out
//   starting -> placing  a start that failed before the command ran moves, as
//                        the same record (id, pid), to another node (its node
//                        and domain fields change with it); a failure while
//                        still placing just names the new node
//   any non-terminal -> killed (kill/cancel), lost (its node or domain vanished),
//                       error (infrastructure or start failure; error_code says which)
// Terminal states are final.
enum class ExecState {
  kPending, kPlacing, kStarting, kRunning, kSucceeded, kFailed, kTimedOut, kKilled, kLost, kError
};

const std::vector<ExecState>& AllExecStates();
const char* ExecStateName(ExecState s);
Result<ExecState> ParseExecState(const std::string& s);
bool IsTerminal(ExecState s);
bool CanTransition(ExecState from, ExecState to);

// What kind of process an execution is: a function run ends when its
// entrypoint exits; an instance stays up until its command exits, its guest
// powers off, or it is killed.
enum class ProcKind { kRun, kInstance };
const char* ProcKindName(ProcKind k);
Result<ProcKind> ParseProcKind(const std::string& s);

// How an instance boots: the berth runtime (kernel + agent) with the image as
// its disk, or the image's own bootloader and kernel (user-data reaches it as
// a cloud-init NoCloud seed; there is no agent).
enum class BootMode { kRuntime, kDisk };

// Wall-clock phases of one execution. Durations are in ms; *_at are unix ms
// timestamps of the moment a phase ended (0: not reached).
struct PhaseTimings {
  int64_t queue_ms = 0;     // accepted -> placement started
  int64_t prepare_ms = 0;   // placement + image on node + overlay volume
  int64_t boot_ms = 0;      // domain create (or restore) -> agent hello
  int64_t run_ms = 0;       // exec sent -> exit received
  int64_t cleanup_ms = 0;   // destroy + volume deletion
  int64_t total_ms = 0;
  int64_t placed_at = 0;
  int64_t disk_ready_at = 0;
  int64_t booted_at = 0;       // domain running
  int64_t agent_ready_at = 0;  // agent said hello
  std::string start = "cold";  // cold | template | warm
};

// What started the process, kept so that `fork` can start another like it.
struct ProcSpec {
  std::vector<std::string> command;  // instances: argv run by the agent (runtime boot)
  std::map<std::string, std::string> env;
  std::vector<std::string> args;     // function runs: invoke arguments
  std::string stdin_data;            // function runs: invoke stdin
  std::string cwd = "/";
  uint32_t vcpus = 1;
  uint64_t memory_mib = 256;
  int64_t timeout_ms = 0;            // 0: no limit (instances)
  BootMode boot = BootMode::kRuntime;
  net::NetworkPolicy network;        // kNone: the guest has no NIC
};

struct ExecutionRecord {
  std::string id;
  std::string function;
  int64_t function_version = 0;
  std::string tenant = kDefaultTenant;
  std::string image;
  ExecState state = ExecState::kPending;
  std::string node;
  std::string domain;
  int64_t pid = 0;
  int64_t ppid = 0;
  std::string name;                 // process name (defaults to the function name)
  ProcKind kind = ProcKind::kRun;
  std::string userdata;
  ProcSpec spec;
  std::optional<int> exit_code;
  int signal = 0;
  std::string error_code;  // e.g. entrypoint_not_found, boot_timeout
  std::string error;
  std::string stdout_data;
  std::string stderr_data;
  bool output_truncated = false;
  std::string console;              // serial console output (tail, capped)
  bool console_truncated = false;
  // Guest networking (spec.network.mode != kNone): the NIC's MAC and the
  // IPv4 addresses it got (DHCP lease, as the agent reported it).
  std::string mac;
  std::vector<std::string> addresses;
  int64_t duration_ms = 0;  // the command's own run time, measured in the guest
  PhaseTimings timings;
  int64_t created_ms = 0;
  int64_t finished_ms = 0;
};

}  // namespace berth::manager
