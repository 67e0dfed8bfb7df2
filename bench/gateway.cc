// berth-bench-gateway: requests/s and p50/p99 latency of the synchronous
// gateway (ANY /gw/<tenant>/<function>/...) under `wrk` at 64 and 256
// connections, next to the very same CGI script (bench/gateway-cgi/app.sh)
// served on the host by a plain CGI server (busybox httpd) in the same run.
//
//   A (berth):    GET /gw/default/app/items?x=1 -> the script runs in a
//                 WARM VM (the function has min_warm = max_warm = --warm VMs
//                 and keep_alive, max_instances = max(warm, concurrency),
//                 so a VM goes back to the pool after each
//                 answer; wrk starts only once the pool is full), the script
//                 as its CGI program, its stdout parsed as the answer.
//                 --warm 0: a fresh VM per request (cold boot or restore).
//   B (baseline): GET /cgi-bin/app.sh/items?x=1 on busybox httpd: fork + exec
//                 of the same script on the host.
//
// First --serial requests one at a time (A B A B), with the execution
// records' own timings (host Exec to Exit, the guest's spawn to exit).
// Each connection count runs B, then A. berthd is restarted between A runs:
// wrk stops with requests still queued in the gateway, and those would keep
// booting VMs into the next run. Every response must be 2xx (zero errors);
// requests still running when wrk stops are not counted either way. busybox
// httpd closes the connection after each CGI answer; wrk reports that as a
// "read" socket error on a complete response, so those are not errors there.
//   RESULT <name> value=<v> unit=<u> baseline=<b> ratio=<v/b> goal=<g>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <utility>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <curl/curl.h>

#include "common/env.h"
#include "common/ids.h"
#include "images/rootfs_builder.h"

namespace {

using json = nlohmann::json;

std::function<void()> g_cleanup;  // stops berthd and httpd, removes pools and folders

[[noreturn]] void Fail(const std::string& why) {
  std::fprintf(stderr, "berth-bench-gateway: %s\n", why.c_str());
  if (auto c = std::exchange(g_cleanup, nullptr)) c();
  std::exit(1);
}

std::string Sh(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  pclose(p);
  return out;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

struct HttpResult {
  long status = 0;
  std::string body;
  std::string headers;
};

size_t Collect(char* p, size_t s, size_t n, void* out) {
  static_cast<std::string*>(out)->append(p, s * n);
  return s * n;
}

HttpResult Http(const std::string& method, const std::string& url, const std::string& body, const std::string& token,
                const std::string& type = "application/json") {
  HttpResult r;
  CURL* c = curl_easy_init();
  curl_slist* h = nullptr;
  if (!token.empty()) h = curl_slist_append(h, ("Authorization: Bearer " + token).c_str());
  h = curl_slist_append(h, ("Content-Type: " + type).c_str());
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method.c_str());
  if (method != "GET") {
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.data());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
  }
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, Collect);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &r.body);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, Collect);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &r.headers);
  curl_easy_setopt(c, CURLOPT_TIMEOUT, 600L);
  if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
  curl_slist_free_all(h);
  curl_easy_cleanup(c);
  return r;
}

pid_t Spawn(std::vector<std::string> args, const std::string& log) {
  pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    FILE* f = std::fopen(log.c_str(), "a");
    if (f) {
      dup2(fileno(f), 1);
      dup2(fileno(f), 2);
    }
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

void StopProcess(pid_t& pid, int wait_s) {
  if (pid <= 0) return;
  ::kill(pid, SIGTERM);
  for (int i = 0; i < wait_s * 10; ++i) {
    int st = 0;
    if (waitpid(pid, &st, WNOHANG) == pid) {
      pid = -1;
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ::kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  pid = -1;
}

struct WrkResult {
  double rps = 0, p50_ms = 0, p99_ms = 0;
  long requests = 0, errors = 0;
  long read_eof = 0;  // "read" socket errors: wrk's count of connections the server closed
};

double ToMs(const std::string& v) {
  std::smatch m;
  std::regex re(R"(([0-9.]+)(us|ms|s|m))");
  if (!std::regex_search(v, m, re)) return 0;
  double x = std::stod(m[1]);
  if (m[2] == "us") return x / 1000;
  if (m[2] == "s") return x * 1000;
  if (m[2] == "m") return x * 60'000;
  return x;
}

// A wrk script that prints the status and body of the first few non-2xx
// answers of each thread ("NON2XX <status> <body>"), so errors say what they are.
constexpr const char* kWrkErrorScript = R"lua(
local shown = 0
response = function(status, headers, body)
  if status >= 300 and shown < 5 then
    shown = shown + 1
    io.write("NON2XX " .. status .. " " .. string.sub(body or "", 1, 300) .. "\n")
  end
end
)lua";

WrkResult RunWrk(const std::string& url, int connections, int threads, int duration_s, const std::string& label,
                 const std::string& script_path = "") {
  std::string cmd = "wrk --latency -t" + std::to_string(threads) + " -c" + std::to_string(connections) + " -d" +
                    std::to_string(duration_s) + "s --timeout " + std::to_string(duration_s + 60) + "s " +
                    (script_path.empty() ? "" : "-s " + script_path + " ") + "'" + url + "' 2>&1";
  std::string out = Sh(cmd);
  std::printf("--- %s (%d connections, %d s) ---\n%s", label.c_str(), connections, duration_s, out.c_str());
  WrkResult r;
  std::smatch m;
  if (std::regex_search(out, m, std::regex(R"(Requests/sec:\s+([0-9.]+))"))) r.rps = std::stod(m[1]);
  if (std::regex_search(out, m, std::regex(R"(\n\s+50%\s+(\S+))"))) r.p50_ms = ToMs(m[1]);
  if (std::regex_search(out, m, std::regex(R"(\n\s+99%\s+(\S+))"))) r.p99_ms = ToMs(m[1]);
  if (std::regex_search(out, m, std::regex(R"((\d+) requests in)"))) r.requests = std::stol(m[1]);
  if (std::regex_search(out, m, std::regex(R"(Non-2xx or 3xx responses:\s+(\d+))"))) r.errors += std::stol(m[1]);
  if (std::regex_search(out, m, std::regex(R"(Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+))"))) {
    r.errors += std::stol(m[1]) + std::stol(m[3]) + std::stol(m[4]);
    r.read_eof = std::stol(m[2]);
  }
  return r;
}

void Result(const std::string& name, double v, const char* unit, double b, double goal) {
  std::printf("RESULT %s value=%.3f unit=%s baseline=%.3f ratio=%.6f goal=%g\n", name.c_str(), v, unit, b,
              b > 0 ? v / b : 0.0, goal);
}

}  // namespace

int main(int argc, char** argv) {
  std::string runtime_dir = std::string(BERTH_BINARY_DIR) + "/runtime";
  std::string berthd_bin = std::string(BERTH_BINARY_DIR) + "/daemon/berthd";
  std::string work_root = "/var/lib/berth/bench";
  std::vector<int> connections = {64, 256};
  int duration_s = 60, baseline_duration_s = 10, max_concurrency = 4, threads = 2, warm = 4, serial = 30;
  uint64_t memory_mib = 128;
  CLI::App app{"berth-bench-gateway: the CGI gateway under wrk vs the same script under busybox httpd"};
  app.add_option("--runtime-dir", runtime_dir, "vmlinuz, initramfs, rootfs-busybox/")->capture_default_str();
  app.add_option("--berthd", berthd_bin, "berthd binary")->capture_default_str();
  app.add_option("--work-root", work_root, "World-traversable folder for the pools")->capture_default_str();
  app.add_option("--connections", connections, "wrk connection counts")->capture_default_str();
  app.add_option("--duration-s", duration_s, "wrk duration against the gateway")->capture_default_str();
  app.add_option("--baseline-duration-s", baseline_duration_s, "wrk duration against busybox httpd")->capture_default_str();
  app.add_option("--max-concurrency", max_concurrency, "the function's gateway.max_concurrency (VMs at once)")
      ->capture_default_str();
  app.add_option("--memory-mib", memory_mib, "guest memory")->capture_default_str();
  app.add_option("--warm", warm, "warm VMs of the function (min_warm = max_warm, keep_alive); 0: cold")
      ->capture_default_str();
  app.add_option("--wrk-threads", threads, "wrk threads")->capture_default_str();
  app.add_option("--serial", serial,
                 "one-at-a-time requests (gateway and httpd interleaved) before the wrk runs; 0: none")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  signal(SIGPIPE, SIG_IGN);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // progress shows up in logs as it happens
  curl_global_init(CURL_GLOBAL_ALL);
  if (Sh("command -v wrk").empty()) Fail("wrk is not installed (apt-get install wrk)");
  if (Sh("command -v busybox").empty()) Fail("busybox is not installed (apt-get install busybox-static)");

  std::string id = berth::RandomHex(6);
  std::string tmp = "/tmp/berth-bench-gw-" + id, work = work_root + "/gw-" + id;
  std::string script = std::string(BERTH_SOURCE_DIR) + "/bench/gateway-cgi/app.sh";
  std::system(("mkdir -p " + tmp + "/root/srv " + tmp + "/www/cgi-bin " + work + " && chmod 755 " + work_root + " " +
               work).c_str());
  // The image: busybox root filesystem + the script at /srv/app.sh.
  if (std::system(("cp -a " + runtime_dir + "/rootfs-busybox/. " + tmp + "/root/ && cp " + script + " " + tmp +
                   "/root/srv/app.sh && cp " + script + " " + tmp + "/www/cgi-bin/app.sh")
                      .c_str()) != 0) {
    Fail("copying the root filesystem from " + runtime_dir);
  }
  berth::images::RootfsBuildOptions rootfs;
  rootfs.source_dir = tmp + "/root";
  rootfs.output_path = tmp + "/cgi.qcow2";
  if (auto s = berth::images::BuildRootfsImage(berth::Env::Default(), rootfs); !s.ok()) Fail(s.ToString());

  std::string pool = "berth-bench-gw-" + id, log_pool = pool + "-logs";
  pid_t berthd = -1, httpd = -1;
  std::string base, token;
  auto start_berthd = [&] {
    std::remove((tmp + "/port").c_str());
    berthd = Spawn({berthd_bin, "--data-dir", tmp + "/data", "--runtime-dir", runtime_dir, "--port", "0",
                    "--port-file", tmp + "/port", "--pool", pool, "--pool-dir", work + "/pool", "--log-pool",
                    log_pool, "--log-dir", work + "/logs", "--accel", "tcg", "--log-level", "warn"},
                   tmp + "/berthd.log");
    for (int i = 0; i < 1200; ++i) {
      std::string port = ReadAll(tmp + "/port");
      if (!port.empty() && port.back() == '\n') {
        base = "http://127.0.0.1:" + port.substr(0, port.size() - 1);
        if (Http("GET", base + "/v1/health", "", "").status == 200) {
          token = ReadAll(tmp + "/data/admin.token");
          while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) token.pop_back();
          return;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    Fail("berthd did not come up; log: " + tmp + "/berthd.log");
  };
  auto cleanup = [&] {
    StopProcess(httpd, 5);
    StopProcess(berthd, 120);
    // A stopped berthd leaves what still ran to the next one (there is none
    // here): end the VMs whose disks live in this run's pool.
    Sh("for d in $(virsh -q -c qemu:///system list --name); do virsh -q -c qemu:///system dumpxml \"$d\" 2>/dev/null | "
       "grep -q '" + work + "/' && virsh -q -c qemu:///system destroy \"$d\" >/dev/null 2>&1; done");
    for (const auto& p : {pool, log_pool}) {
      Sh("virsh -q -c qemu:///system pool-destroy " + p + " >/dev/null 2>&1; virsh -q -c qemu:///system pool-undefine " +
         p + " >/dev/null 2>&1");
    }
    std::system(("rm -rf " + work + " " + tmp).c_str());
  };

  g_cleanup = cleanup;
  start_berthd();
  auto up = Http("POST", base + "/v1/images?name=cgi", ReadAll(rootfs.output_path), token, "application/octet-stream");
  if (up.status != 201) Fail("upload: " + up.body);
  json fn = {{"name", "app"},
             {"image", json::parse(up.body)["id"]},
             {"entrypoint", {"/srv/app.sh"}},
             {"memory_mib", memory_mib},
             {"timeout_ms", 120000},
             {"gateway", {{"auth", "public"}, {"max_concurrency", max_concurrency}, {"max_queue", 100000}}}};
  if (warm > 0) {
    fn["min_warm"] = warm;
    fn["max_warm"] = warm;
    fn["keep_alive"] = true;
    fn["idle_timeout_ms"] = 3600000;
    // The pool aims at `warm` IDLE VMs on top of the calls in flight unless
    // max_instances caps the sum: without it every call that takes a VM
    // makes the pool restore another one, and the VM given back after the
    // call finds the pool full and is destroyed. That churn (a restore and
    // a teardown per request) ate the CPU, and the claims of the VMs being
    // torn down ran the node out of vCPUs: the 503 "no node fits claim"
    // answers seen at 64 and 256 connections.
    fn["max_instances"] = std::max(warm, max_concurrency);
  }
  auto created = Http("POST", base + "/v1/functions", fn.dump(), token);
  if (created.status != 201) Fail("function: " + created.body);
  // First call puts the image on the node (not measured).
  auto first = Http("GET", base + "/gw/default/app/items?x=1", "", "");
  if (first.status != 200) Fail("first gateway call: HTTP " + std::to_string(first.status) + " " + first.body);
  // Waits until the function's pool holds `warm` idle VMs (berth_pool_vms in /metrics).
  auto wait_warm = [&] {
    if (warm <= 0) return;
    std::regex gauge(R"re(berth_pool_vms\{tenant="default",function="app"\} (\d+))re");
    int have = 0;
    for (int i = 0; i < 3000; ++i) {
      std::smatch m;
      std::string metrics = Http("GET", base + "/metrics", "", token).body;
      have = std::regex_search(metrics, m, gauge) ? std::stoi(m[1]) : 0;
      if (have >= warm) {
        std::printf("warm pool: %d idle VMs\n", have);
        return;
      }
      // A call wakes a pool that idled (and is answered by a warm VM once there).
      if (i % 50 == 0) Http("GET", base + "/gw/default/app/warmup", "", "");
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    Fail("the warm pool did not fill (" + std::to_string(have) + " of " + std::to_string(warm) + " VMs)");
  };
  wait_warm();

  int httpd_port = 20000 + static_cast<int>(std::stoul(id.substr(0, 4), nullptr, 16) % 20000);
  std::string busybox = Sh("command -v busybox");
  busybox.erase(busybox.find_last_not_of("\n") + 1);
  httpd = Spawn({busybox, "httpd", "-f", "-p", "127.0.0.1:" + std::to_string(httpd_port), "-h", tmp + "/www"},
                tmp + "/httpd.log");
  std::string host_url = "http://127.0.0.1:" + std::to_string(httpd_port) + "/cgi-bin/app.sh/items?x=1";
  for (int i = 0; i < 50 && Http("GET", host_url, "", "").status != 200; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  auto check = Http("GET", host_url, "", "");
  // Same script, same answer (but SCRIPT_NAME, which names the server's path).
  auto same = [](const std::string& body) { return body.substr(0, body.find("script=")); };
  if (check.status != 200 || same(check.body) != same(first.body)) {
    Fail("busybox httpd answers differently: " + check.body + " vs " + first.body);
  }

  long total_errors = 0;
  if (serial > 0) {
    // One request at a time, A B A B: the latency of a single call, and where
    // the gateway's share of it goes (the execution records' own timings).
    std::vector<double> gw_ms, host_ms;
    std::vector<std::string> ids;  // X-Berth-Execution-Id of each gateway answer
    auto timed = [](const std::string& url) {
      auto t0 = std::chrono::steady_clock::now();
      HttpResult r = Http("GET", url, "", "");
      double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      return std::make_pair(r, ms);
    };
    for (int i = 0; i < serial; ++i) {
      auto [a, a_ms] = timed(base + "/gw/default/app/items?x=1");
      auto [b, b_ms] = timed(host_url);
      if (a.status != 200) ++total_errors;
      if (b.status != 200) ++total_errors;
      gw_ms.push_back(a_ms);
      host_ms.push_back(b_ms);
      std::smatch m;
      if (std::regex_search(a.headers, m, std::regex(R"((?:^|\n)[Xx]-[Bb]erth-[Ee]xecution-[Ii]d:\s*(\S+))"))) {
        ids.push_back(m[1]);
      }
    }
    // The execution records' own timings of those requests.
    std::vector<double> guest_ms, run_ms;
    for (const auto& id : ids) {
      auto rec = Http("GET", base + "/v1/executions/" + id, "", token);
      if (rec.status != 200) continue;
      json ex = json::parse(rec.body);
      guest_ms.push_back(ex.value("duration_ms", 0.0));
      if (ex.contains("timings")) run_ms.push_back(ex["timings"].value("run_ms", 0.0));
    }
    // They are ordinary records of the route's tenant and function: the
    // admin token (tenant "default", as /gw/default/app) lists them.
    {
      auto listed = Http("GET", base + "/v1/executions?function=app&limit=" + std::to_string(ids.size() + 100), "",
                         token);
      std::string body = listed.body;
      size_t found = 0;
      for (const auto& id : ids) found += body.find("\"" + id + "\"") != std::string::npos ? 1 : 0;
      std::printf("listing: %zu of %zu gateway runs in GET /v1/executions?function=app\n", found, ids.size());
      if (listed.status != 200 || found != ids.size()) {
        Fail("GET /v1/executions?function=app does not list the gateway's runs: HTTP " +
             std::to_string(listed.status) + " " + body.substr(0, 300));
      }
    }
    auto median = [](std::vector<double> v) {
      if (v.empty()) return 0.0;
      std::sort(v.begin(), v.end());
      return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
    };
    std::printf("serial (%d requests each, interleaved), medians: gateway %.1f ms (run %.1f ms: Exec to Exit at "
                "the host; guest %.1f ms: the agent's spawn to the child's exit) | httpd %.2f ms\n",
                serial, median(gw_ms), median(run_ms), median(guest_ms), median(host_ms));
    Result("gateway_serial_ms", median(gw_ms), "ms", median(host_ms), 10);
    Result("gateway_serial_guest_ms", median(guest_ms), "ms", median(host_ms), 10);
  }

  std::vector<std::string> results;
  for (size_t i = 0; i < connections.size(); ++i) {
    int c = connections[i];
    if (i > 0) {  // a fresh berthd: nothing queued from the run before
      StopProcess(berthd, 300);
      start_berthd();
      wait_warm();
    }
    WrkResult b = RunWrk(host_url, c, threads, baseline_duration_s, "baseline: busybox httpd CGI");
    std::ofstream(tmp + "/errors.lua") << kWrkErrorScript;
    WrkResult a = RunWrk(base + "/gw/default/app/items?x=1", c, threads, duration_s, "berth gateway", tmp + "/errors.lua");
    // busybox httpd ends every CGI response by closing the connection (no
    // Content-Length), which wrk counts as a read error on a complete 200:
    // not an error there. berthd sends Content-Length and keeps connections.
    a.errors += a.read_eof;
    total_errors += a.errors + b.errors;
    std::printf("c=%d: gateway %.2f req/s p50 %.0f ms p99 %.0f ms (%ld requests, %ld errors) | httpd %.1f req/s "
                "p50 %.2f ms p99 %.2f ms (%ld requests, %ld errors)\n",
                c, a.rps, a.p50_ms, a.p99_ms, a.requests, a.errors, b.rps, b.p50_ms, b.p99_ms, b.requests, b.errors);
    std::string sfx = "_c" + std::to_string(c);
    Result("gateway_rps" + sfx, a.rps, "req/s", b.rps, 0.5);
    Result("gateway_p50" + sfx, a.p50_ms, "ms", b.p50_ms, 10);
    Result("gateway_p99" + sfx, a.p99_ms, "ms", b.p99_ms, 10);
  }
  g_cleanup = nullptr;
  cleanup();
  Result("gateway_errors", static_cast<double>(total_errors), "responses", 0, 0);
  return total_errors == 0 ? 0 : 2;
}
