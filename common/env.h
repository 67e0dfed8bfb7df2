// Env: the operating system behind one interface (files, clocks, commands),
// passed into modules so tests can substitute a deterministic fake.
// All methods are thread-safe. Paths are plain host paths.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace berth {

struct CommandResult {
  int exit_code = 0;   // exit status, or 128+signal when killed by a signal
  std::string out;     // captured stdout
  std::string err;     // captured stderr
};

// Resource limits applied to a command's process (setrlimit in the child,
// between fork and exec; inherited by whatever it starts). 0 = leave the
// limit as inherited. A limit above the current hard limit is clamped to it.
struct RunLimits {
  uint64_t address_space_bytes = 0;  // RLIMIT_AS: allocations beyond it fail
  uint64_t cpu_seconds = 0;          // RLIMIT_CPU: SIGXCPU at the limit, SIGKILL one second later
};

class Env {
 public:
  virtual ~Env() = default;

  // Wall-clock milliseconds since the Unix epoch (for records).
  virtual int64_t NowUnixMs() = 0;
  // Monotonic milliseconds (for durations and deadlines).
  virtual int64_t MonotonicMs() = 0;
  virtual void SleepMs(int64_t ms) = 0;

  // Runs argv[0] (searched in PATH) with argv, feeding `input` on stdin.
  // Returns the exit status and captured output; a non-zero exit is not an
  // error at this level. Fails with kUnavailable if the program is missing
  // and kDeadlineExceeded (after killing it) if it outlives timeout_ms.
  virtual Result<CommandResult> Run(const std::vector<std::string>& argv,
                                    std::string_view input = {},
                                    int64_t timeout_ms = 600'000) = 0;

  // Run, with `limits` applied to the command's process. Exceeding the CPU
  // limit kills it (exit_code 128+SIGXCPU or 128+SIGKILL); exceeding the
  // address space makes its allocations fail. This default ignores the
  // limits and calls Run, so Env fakes that only override Run keep working;
  // the real Env applies them.
  virtual Result<CommandResult> RunLimited(const std::vector<std::string>& argv, std::string_view input,
                                           int64_t timeout_ms, const RunLimits& limits);

  virtual Result<std::string> ReadFile(const std::string& path) = 0;
  // Writes via a temporary file + rename, so readers never see a partial file.
  virtual Status WriteFileAtomic(const std::string& path, std::string_view data, int mode = 0644) = 0;
  virtual bool Exists(const std::string& path) = 0;
  virtual Status RemoveFile(const std::string& path) = 0;  // missing file is OK
  virtual Status RemoveTree(const std::string& path) = 0;  // missing tree is OK
  virtual Status CreateDirs(const std::string& path, int mode = 0755) = 0;
  virtual Status Rename(const std::string& from, const std::string& to) = 0;
  virtual Result<uint64_t> FileSize(const std::string& path) = 0;

  // The process-wide real implementation.
  static Env* Default();
};

// Returns the first line of `s` without the trailing newline.
std::string FirstLine(std::string_view s);

}  // namespace berth
