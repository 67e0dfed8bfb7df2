// Shared by the benchmarks that drive a real berthd (cold_start, start_tiers):
// the stop flag, failure helpers, HTTP through libcurl with berthd's admin
// token, medians, a berthd child process, cleanup of a run's leftovers, and
// the RESULT line.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <functional>
#include <chrono>
#include <string>
#include <vector>

#include "common/env.h"
#include "common/status.h"
#include "hypervisor/hypervisor.h"

namespace berth::bench {

using Clock = std::chrono::steady_clock;

// Set by the signal handler; long steps stop and HTTP transfers abort.
extern std::atomic<bool> g_stop;
// berthd's admin token (read from <data dir>/admin.token once berthd is up);
// Http sends it.
extern std::string g_token;

// Call first in main, before libvirt or curl start threads: SIGINT, SIGTERM
// and SIGHUP are taken by one thread that sets g_stop (so an interrupt always
// ends in the bench's cleanup path), SIGPIPE is ignored and stdout is line
// buffered (progress shows up in logs as it happens).
void StopOnSignals(const std::string& program);
// For main's catch: reports `error` on stderr after what stdout already
// printed, runs `cleanup`, and returns the exit status: 130 when a signal
// stopped the bench, else 1.
int ExitAfterError(const std::string& program, const std::exception& error, const std::function<void()>& cleanup);

double MsBetween(Clock::time_point a, Clock::time_point b);
[[noreturn]] void Fail(const std::string& what);  // throws std::runtime_error
void CheckStop();                                  // Fail("interrupted") once g_stop is set
void Check(const Status& s, const std::string& what);
std::string ReadAll(const std::string& path);
std::string Tail(const std::string& s, size_t n);
// Runs a command; fails unless it exits 0.
CommandResult MustRun(const std::vector<std::string>& argv, int64_t timeout_ms = 120'000);
// Runs a command and ignores how it ends (cleanup).
void TryRun(const std::vector<std::string>& argv);

struct HttpResult {
  long status = 0;
  std::string body;
  std::string error;  // transport error, if any
};
HttpResult Http(const std::string& method, const std::string& url, const std::string& body = {},
                const std::string& content_type = "application/json");

double Median(std::vector<double> v);
template <typename S>
double MedianOf(const std::vector<S>& samples, double S::*field) {
  std::vector<double> v;
  for (const auto& s : samples) v.push_back(s.*field);
  return Median(v);
}

// Removes what run `id` left on the node: its domains (baseline names carry
// the id; berthd's domains have their disks in the run's folder), its two
// pools, its folder under work_root and its temp folder. Call it only once
// that run's berthd is gone.
void RemoveRun(hv::Hypervisor* hv, const std::string& uri, const std::string& work_root, const std::string& id,
               const std::string& tmp_dir);
// A run killed outright (SIGKILL, crash) cannot clean up after itself. Each
// run writes "<pid> <tmp dir>" to <work_root>/<id>/owner; runs whose process
// is gone are removed here. (Their berthd got SIGTERM when they died.)
void ReclaimStale(hv::Hypervisor* hv, const std::string& uri, const std::string& work_root);

// A berthd child process on its own data dir (<tmp_dir>/data) and pools,
// logging to <tmp_dir>/berthd.log.
struct BerthdLaunch {
  std::string berthd, tmp_dir, runtime_dir, uri, pool, pool_dir, log_pool, log_dir;
};
// Starts berthd (*pid is set at once, so a failure's cleanup can stop it)
// and waits for /v1/health, then sets *base_url and g_token. Fails with the
// log's tail if it exits (*pid = -1) or does not answer within 120 s.
void StartBerthd(const BerthdLaunch& launch, pid_t* pid, std::string* base_url);
// SIGTERM, then SIGKILL after 30 s; sets *pid to -1.
void StopBerthd(pid_t* pid);
std::string BerthdLogTail(const std::string& tmp_dir);

std::string Fmt(double v, int decimals = 1);
// RESULT <name> value=<v> unit=<u> baseline=<b> ratio=<v/b> goal=<g>
void PrintResult(const std::string& name, double value, const std::string& unit, double baseline, double goal);

}  // namespace berth::bench
