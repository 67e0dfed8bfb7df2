// The control plane's records: functions, executions, images. Plain values,
// shared by the store, the execution engine and the API layer.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace berth::manager {

inline constexpr const char* kDefaultTenant = "default";

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

struct FunctionSpec {
  std::string name;
  std::string image;                    // sha256 of a registered image
  std::vector<std::string> entrypoint;  // argv; argv[0] resolved in PATH inside the image
  uint32_t vcpus = 1;
  uint64_t memory_mib = 256;
  int64_t timeout_ms = 30'000;
  std::map<std::string, std::string> env;
  std::string cwd = "/";
  std::string network = "none";
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
//   pending -> booting -> running -> succeeded | failed | timed_out
//   pending | booting | running -> error   (infrastructure or start failure)
enum class ExecState { kPending, kBooting, kRunning, kSucceeded, kFailed, kTimedOut, kError };

const char* ExecStateName(ExecState s);
Result<ExecState> ParseExecState(const std::string& s);
bool IsTerminal(ExecState s);
bool CanTransition(ExecState from, ExecState to);

// Wall-clock phases of one execution, for the API and benchmarks.
struct PhaseTimings {
  int64_t prepare_ms = 0;   // image on node + overlay volume
  int64_t boot_ms = 0;      // domain create -> agent hello
  int64_t run_ms = 0;       // exec sent -> exit received
  int64_t cleanup_ms = 0;   // destroy + volume deletion
  int64_t total_ms = 0;
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
  std::optional<int> exit_code;
  int signal = 0;
  std::string error_code;  // e.g. entrypoint_not_found, boot_timeout
  std::string error;
  std::string stdout_data;
  std::string stderr_data;
  bool output_truncated = false;
  int64_t duration_ms = 0;  // the command's own run time, measured in the guest
  PhaseTimings timings;
  int64_t created_ms = 0;
  int64_t finished_ms = 0;
};

}  // namespace berth::manager
