#include "bench/support/bench_support.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace berth::bench {

std::atomic<bool> g_stop{false};

void StopOnSignals(const std::string& program) {
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  signal(SIGPIPE, SIG_IGN);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  std::thread([stop, program] {
    int sig = 0;
    sigwait(&stop, &sig);
    std::fprintf(stderr, "%s: signal %d, stopping after the current step and cleaning up\n", program.c_str(), sig);
    g_stop.store(true);
  }).detach();
}

int ExitAfterError(const std::string& program, const std::exception& error, const std::function<void()>& cleanup) {
  std::fflush(stdout);
  std::fprintf(stderr, "%s: %s\n", program.c_str(), error.what());
  cleanup();
  return g_stop.load() ? 130 : 1;
}
std::string g_token;

namespace {

size_t Collect(char* data, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(data, size * n);
  return size * n;
}

int AbortOnStop(void*, curl_off_t, curl_off_t, curl_off_t, curl_off_t) { return g_stop.load() ? 1 : 0; }

}  // namespace

double MsBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

[[noreturn]] void Fail(const std::string& what) { throw std::runtime_error(what); }

void CheckStop() {
  if (g_stop.load()) Fail("interrupted");
}

void Check(const Status& s, const std::string& what) {
  if (!s.ok()) Fail(what + ": " + s.ToString());
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Tail(const std::string& s, size_t n) { return s.size() > n ? s.substr(s.size() - n) : s; }

CommandResult MustRun(const std::vector<std::string>& argv, int64_t timeout_ms) {
  auto r = Env::Default()->Run(argv, {}, timeout_ms);
  if (!r.ok()) Fail(argv[0] + ": " + r.status().ToString());
  if (r->exit_code != 0) {
    std::string cmd;
    for (const auto& a : argv) cmd += (cmd.empty() ? "" : " ") + a;
    Fail(cmd + " exited " + std::to_string(r->exit_code) + ": " + FirstLine(r->err));
  }
  return *r;
}

void TryRun(const std::vector<std::string>& argv) { (void)Env::Default()->Run(argv, {}, 60'000); }

// ---------------------------------------------------------------------------
// HTTP (libcurl). A transfer in progress is aborted once g_stop is set.





HttpResult Http(const std::string& method, const std::string& url, const std::string& body,
                const std::string& content_type) {
  HttpResult result;
  CURL* curl = curl_easy_init();
  if (!curl) Fail("curl_easy_init failed");
  curl_slist* headers = curl_slist_append(nullptr, ("Content-Type: " + content_type).c_str());
  if (!g_token.empty()) headers = curl_slist_append(headers, ("Authorization: Bearer " + g_token).c_str());
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method.c_str());
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  if (method == "POST" || method == "PUT") {
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.data());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
  }
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &Collect);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &result.body);
  curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, &AbortOnStop);
  curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT, 600L);
  curl_easy_setopt(curl, CURLOPT_NOPROXY, "*");
  CURLcode rc = curl_easy_perform(curl);
  if (rc == CURLE_OK) {
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &result.status);
  } else {
    result.error = curl_easy_strerror(rc);
  }
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
  return result;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}


// Removes what run `id` left on the node: its domains (baseline names carry
// the id; berthd's domains have their disks in the run's folder), its two
// pools, its folder under work_root and its temp folder. Call it only once
// that run's berthd is gone.
void RemoveRun(hv::Hypervisor* hv, const std::string& uri, const std::string& work_root, const std::string& id,
               const std::string& tmp_dir) {
  const std::string dir = work_root + "/" + id;
  if (hv) {
    auto doms = hv->ListDomains(hv::kDomainNamePrefix);
    if (doms.ok()) {
      for (const auto& d : *doms) {
        bool ours = d.rfind("berth-bench-" + id + "-", 0) == 0;
        if (!ours) {
          auto xml = hv->GetDomainXml(d);
          ours = xml.ok() && xml->find(dir + "/") != std::string::npos;
        }
        if (ours) {
          std::fprintf(stderr, "cleanup: destroying leftover domain %s\n", d.c_str());
          (void)hv->DestroyDomain(d);
        }
      }
    }
  }
  for (const auto& p : {"berth-bench-" + id, "berth-bench-" + id + "-logs"}) {
    auto exists = Env::Default()->Run({"virsh", "-q", "-c", uri, "pool-info", p}, {}, 60'000);
    if (!exists.ok() || exists->exit_code != 0) continue;
    TryRun({"virsh", "-q", "-c", uri, "pool-destroy", p});
    TryRun({"virsh", "-q", "-c", uri, "pool-undefine", p});
  }
  (void)Env::Default()->RemoveTree(dir);
  if (tmp_dir.rfind("/tmp/berth-bench-", 0) == 0) (void)Env::Default()->RemoveTree(tmp_dir);
}

// A run killed outright (SIGKILL, crash) cannot clean up after itself. Each
// run writes "<pid> <tmp dir>" to <work_root>/<id>/owner; runs whose process
// is gone are removed here. (Their berthd got SIGTERM when they died.)
void ReclaimStale(hv::Hypervisor* hv, const std::string& uri, const std::string& work_root) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(work_root, ec)) {
    std::ifstream in(entry.path() / "owner");
    pid_t pid = 0;
    std::string tmp_dir;
    if (!(in >> pid >> tmp_dir) || pid <= 0) continue;
    if (::kill(pid, 0) == 0 || errno != ESRCH) continue;  // still running
    std::string id = entry.path().filename().string();
    std::fprintf(stderr, "removing what an earlier run (pid %d, id %s) left behind\n", pid, id.c_str());
    RemoveRun(hv, uri, work_root, id, tmp_dir);
  }
}

std::string BerthdLogTail(const std::string& tmp_dir) { return Tail(ReadAll(tmp_dir + "/berthd.log"), 4000); }

void StartBerthd(const BerthdLaunch& launch, pid_t* berthd_pid, std::string* base_url) {
  std::string port_file = launch.tmp_dir + "/port";
  std::string log_path = launch.tmp_dir + "/berthd.log";
  std::vector<std::string> args = {launch.berthd,  "--data-dir",   launch.tmp_dir + "/data",
                                   "--runtime-dir", launch.runtime_dir, "--port",       "0",
                                   "--port-file", port_file,        "--node-uri",   launch.uri,
                                   "--pool",      launch.pool,      "--pool-dir",   launch.pool_dir,
                                   "--log-pool",  launch.log_pool,  "--log-dir",    launch.log_dir,
                                   "--accel",     "tcg"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  if (::access(launch.berthd.c_str(), X_OK) != 0) Fail("berthd not found at " + launch.berthd + " (use --berthd)");

  pid_t pid = ::fork();
  if (pid < 0) Fail(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    // Only async-signal-safe calls between fork and exec.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    setpgid(0, 0);  // a Ctrl-C on the terminal reaches us only; we stop berthd
    prctl(PR_SET_PDEATHSIG, SIGTERM);  // and if we die without cleaning up, berthd stops too
    int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    execv(argv[0], argv.data());
    _exit(127);
  }
  *berthd_pid = pid;  // set before any wait, so the caller's cleanup stops it

  for (int i = 0; i < 1200; ++i) {
    CheckStop();
    int status;
    if (waitpid(*berthd_pid, &status, WNOHANG) == *berthd_pid) {
      *berthd_pid = -1;
      Fail("berthd exited during startup:\n" + BerthdLogTail(launch.tmp_dir));
    }
    std::string port = ReadAll(port_file);
    if (!port.empty() && port.back() == '\n') {
      *base_url = "http://127.0.0.1:" + port.substr(0, port.size() - 1);
      if (Http("GET", *base_url + "/v1/health").status == 200) {
        g_token = ReadAll(launch.tmp_dir + "/data/admin.token");
        while (!g_token.empty() && (g_token.back() == '\n' || g_token.back() == ' ')) g_token.pop_back();
        std::printf("berthd %s (pid %d, pools %s, %s)\n", base_url->c_str(), *berthd_pid, launch.pool.c_str(),
                    launch.log_pool.c_str());
        return;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  Fail("berthd did not answer /v1/health within 120 s:\n" + BerthdLogTail(launch.tmp_dir));
}

void StopBerthd(pid_t* pid) {
  if (*pid <= 0) return;
  ::kill(*pid, SIGTERM);
  int status;
  for (int i = 0; i < 300; ++i) {
    if (waitpid(*pid, &status, WNOHANG) == *pid) {
      *pid = -1;
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::fprintf(stderr, "berthd did not stop within 30 s; killing it\n");
  ::kill(*pid, SIGKILL);
  waitpid(*pid, &status, 0);
  *pid = -1;
}

std::string Fmt(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

void PrintResult(const std::string& name, double value, const std::string& unit, double baseline, double goal) {
  std::printf("RESULT %s value=%s unit=%s baseline=%s ratio=%s goal=%s\n", name.c_str(), Fmt(value).c_str(),
              unit.c_str(), Fmt(baseline).c_str(), Fmt(baseline > 0 ? value / baseline : 0, 3).c_str(),
              Fmt(goal, 2).c_str());
}

}  // namespace berth::bench
