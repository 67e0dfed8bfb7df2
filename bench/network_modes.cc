// berth-bench-network-modes: the time each guest network mode adds to a
// start, next to `none`, in one run against a real berthd.
//
//   none      function with no NIC (the baseline of every figure)
//   egress    NIC on the tenant's NAT network + nwfilter + DHCP in the guest
//   isolated  NIC on the tenant's network without forwarding + DHCP
//
// Each measured round invokes the three functions (entrypoint /bin/true,
// cold boot: "snapshot": false) back to back, in rotating order, so slow drifts
// of the machine hit every mode alike; figures are medians of the client's
// wall-clock time of POST /v1/functions/NAME/invoke.
//
// Three phases:
//   1. "first user": no other networked execution of the tenant runs, so each
//      networked start also creates the tenant network and filter (and its
//      end removes them again) - the cost a tenant pays for its first guest.
//   2. "network up": one long-lived instance per networked mode holds the
//      tenant networks, so a start pays only for NIC, filter binding and DHCP.
//   3. "warm": functions warm-<mode> (same entrypoint, min_warm = max_warm = 1)
//      start from their warm pool, whose VM already has its NIC and lease;
//      every pool is full again (untimed) before each measured call.
//
// Lines per figure, as the project's benchmarks do:
//   RESULT <name> value=<v> unit=<u> baseline=<b> ratio=<v/b> goal=<g>
//
// Everything the program creates (berthd, its pools, domains, volumes,
// networks and filters of its own tenant, temp folders) is removed on exit,
// also after a failure or SIGINT/SIGTERM.
#include <curl/curl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "bench/support/bench_support.h"
#include "common/env.h"
#include "common/ids.h"
#include "hypervisor/hypervisor.h"
#include "images/rootfs_builder.h"

namespace {

using berth::Env;
using nlohmann::json;
using namespace berth::bench;

struct Options {
  int rounds = 5;
  std::string runtime_dir = std::string(BERTH_BINARY_DIR) + "/runtime";
  std::string berthd = std::string(BERTH_BINARY_DIR) + "/daemon/berthd";
  std::string uri = "qemu:///system";
  std::string work_root = "/var/lib/berth/bench";
  double goal_first = 1.5;  // allowed ratio (mode / none) when the start also creates the network
  double goal_up = 1.3;     // allowed ratio when the tenant network is already up
  double goal_warm = 1.3;   // allowed ratio of warm-pool starts
};

const char* kModes[] = {"none", "egress", "isolated"};

struct Sample {
  double invoke_ms = 0;
  double boot_ms = 0;
  std::string start;  // the record's timings.start: cold | template | warm
};

class NetworkModesBench {
 public:
  explicit NetworkModesBench(Options opts) : opts_(std::move(opts)), id_(berth::RandomHex(8)) {}
  ~NetworkModesBench() { Cleanup(); }

  void Setup();
  // Invokes <prefix><mode> ("net-" cold boots, "warm-" warm-pool starts).
  Sample Invoke(const std::string& mode, const std::string& prefix = "net-");
  // Creates warm-<mode> for every mode (min_warm 1) and waits for the pools.
  void CreateWarmFunctions();
  // Waits (untimed) until every warm-<mode> pool holds a VM.
  void WaitWarmPoolsFull();
  // A long-lived instance on `mode`'s network; returns its pid.
  int64_t HoldNetwork(const std::string& mode);
  void Cleanup();

 private:
  Options opts_;
  std::string id_, tmp_dir_, work_dir_, pool_, log_pool_, pool_dir_, log_dir_, base_url_, image_id_, token_;
  pid_t berthd_pid_ = -1;
  std::unique_ptr<berth::hv::Hypervisor> hv_;
  std::vector<int64_t> holders_;
  bool cleaned_ = false;
};

HttpResult Call(const std::string& method, const std::string& url, const std::string& body = {},
                const std::string& content_type = "application/json") {
  return Http(method, url, body, content_type);
}

void NetworkModesBench::Setup() {
  char tmpl[] = "/tmp/berth-bench-XXXXXX";
  if (!mkdtemp(tmpl)) Fail(std::string("mkdtemp: ") + std::strerror(errno));
  tmp_dir_ = tmpl;
  auto hv = berth::hv::ConnectLibvirt(opts_.uri);
  Check(hv.status(), "connecting to " + opts_.uri);
  hv_ = std::move(*hv);
  ReclaimStale(hv_.get(), opts_.uri, opts_.work_root);
  Check(Env::Default()->CreateDirs(opts_.work_root, 0755), "creating " + opts_.work_root);
  work_dir_ = opts_.work_root + "/" + id_;
  pool_dir_ = work_dir_ + "/pool";
  log_dir_ = work_dir_ + "/logs";
  Check(Env::Default()->CreateDirs(work_dir_, 0755), "creating " + work_dir_);
  for (const auto& d : {opts_.work_root, work_dir_}) ::chmod(d.c_str(), 0755);
  Check(Env::Default()->WriteFileAtomic(work_dir_ + "/owner", std::to_string(::getpid()) + " " + tmp_dir_ + "\n"),
        "writing " + work_dir_ + "/owner");
  pool_ = "berth-bench-" + id_;
  log_pool_ = "berth-bench-" + id_ + "-logs";

  std::printf("building the busybox root filesystem image\n");
  berth::images::RootfsBuildOptions rootfs;
  rootfs.source_dir = opts_.runtime_dir + "/rootfs-busybox";
  rootfs.output_path = tmp_dir_ + "/busybox.qcow2";
  Check(berth::images::BuildRootfsImage(Env::Default(), rootfs), "building the busybox image");
  MustRun({"qemu-img", "convert", "-O", "raw", rootfs.output_path, tmp_dir_ + "/busybox.raw"});

  berth::bench::StartBerthd({opts_.berthd, tmp_dir_, opts_.runtime_dir, opts_.uri, pool_, pool_dir_, log_pool_, log_dir_},
                            &berthd_pid_, &base_url_);
  // The run's own tenant, so its networks are its own ("bench<id>").
  auto tok = Call("POST", base_url_ + "/v1/tokens", json{{"tenant", "bench" + id_}, {"name", "bench"}}.dump());
  if (tok.status != 201) Fail("creating a token: HTTP " + std::to_string(tok.status) + " " + tok.body);
  const std::string admin = g_token;
  g_token = json::parse(tok.body).at("token").get<std::string>();
  (void)admin;

  auto up = Call("POST", base_url_ + "/v1/images?name=busybox", ReadAll(tmp_dir_ + "/busybox.raw"),
                 "application/octet-stream");
  if (up.status != 201) Fail("image upload: HTTP " + std::to_string(up.status) + " " + up.body);
  image_id_ = json::parse(up.body).at("id").get<std::string>();
  for (const char* mode : kModes) {
    json fn = {{"name", std::string("net-") + mode}, {"image", image_id_}, {"entrypoint", {"/bin/true"}},
               {"memory_mib", 192},  {"timeout_ms", 60000}, {"snapshot", false}, {"network", mode}};
    auto created = Call("POST", base_url_ + "/v1/functions", fn.dump());
    if (created.status != 201) Fail("creating net-" + std::string(mode) + ": HTTP " + created.body);
  }
  std::printf("first invocation of each mode (image onto the node; not measured)\n");
  for (const char* mode : kModes) Invoke(mode);
}

Sample NetworkModesBench::Invoke(const std::string& mode, const std::string& prefix) {
  CheckStop();
  const std::string fn = prefix + mode;
  auto t0 = Clock::now();
  auto r = Call("POST", base_url_ + "/v1/functions/" + fn + "/invoke", "{}");
  auto t1 = Clock::now();
  if (r.status != 200) {
    Fail("invoke " + fn + ": HTTP " + std::to_string(r.status) + " " + r.error + " " + r.body +
         "\n--- berthd log (tail) ---\n" + BerthdLogTail(tmp_dir_));
  }
  json j = json::parse(r.body);
  if (j.value("status", "") != "succeeded") Fail(fn + " did not succeed: " + r.body);
  if ((mode != "none") != !j["addresses"].empty()) Fail(fn + ": unexpected addresses: " + r.body);
  Sample s;
  s.invoke_ms = MsBetween(t0, t1);
  s.boot_ms = j.at("timings").at("boot_ms").get<double>();
  s.start = j.at("timings").value("start", "");
  // Let the teardown (and network removal) finish, untimed, before the next start.
  const std::string domain = j.value("domain", "");
  for (int i = 0; i < 200; ++i) {
    auto state = Env::Default()->Run({"virsh", "-q", "-c", opts_.uri, "domstate", domain}, {}, 10'000);
    if (!state.ok() || state->exit_code != 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  return s;
}

void NetworkModesBench::CreateWarmFunctions() {
  for (const char* mode : kModes) {
    json fn = {{"name", std::string("warm-") + mode}, {"image", image_id_}, {"entrypoint", {"/bin/true"}},
               {"memory_mib", 192},  {"timeout_ms", 60000}, {"snapshot", false}, {"network", mode},
               {"min_warm", 1},      {"max_warm", 1},       {"idle_timeout_ms", 3'600'000}};
    auto created = Call("POST", base_url_ + "/v1/functions", fn.dump());
    if (created.status != 201) Fail("creating warm-" + std::string(mode) + ": HTTP " + created.body);
  }
  WaitWarmPoolsFull();
  std::printf("first warm invocation of each mode (not measured)\n");
  for (const char* mode : kModes) {
    Invoke(mode, "warm-");
    WaitWarmPoolsFull();
  }
}

void NetworkModesBench::WaitWarmPoolsFull() {
  const std::string tenant = "bench" + id_;
  for (int i = 0; i < 1500; ++i) {
    CheckStop();
    const std::string body = Call("GET", base_url_ + "/metrics").body;
    int full = 0;
    for (const char* mode : kModes) {
      const std::string key = "berth_pool_vms{tenant=\"" + tenant + "\",function=\"warm-" + mode + "\"} ";
      const size_t at = body.find(key);
      if (at != std::string::npos && std::atoi(body.c_str() + at + key.size()) >= 1) ++full;
    }
    if (full == 3) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  Fail("the warm pools did not fill within 5 minutes\n--- berthd log (tail) ---\n" + BerthdLogTail(tmp_dir_));
}

int64_t NetworkModesBench::HoldNetwork(const std::string& mode) {
  json body = {{"image", image_id_}, {"name", "hold-" + mode}, {"memory_mib", 128}, {"network", mode},
               {"command", {"/bin/sh", "-c", "while true; do sleep 10; done"}}};
  auto r = Call("POST", base_url_ + "/v1/procs", body.dump());
  if (r.status != 201) Fail("starting the " + mode + " holder: HTTP " + r.body);
  const int64_t pid = json::parse(r.body).at("pid").get<int64_t>();
  for (int i = 0; i < 600; ++i) {
    CheckStop();
    auto p = Call("GET", base_url_ + "/v1/procs/" + std::to_string(pid));
    const std::string st = json::parse(p.body).value("status", "");
    if (st == "running") {
      holders_.push_back(pid);
      return pid;
    }
    if (st != "pending" && st != "placing" && st != "starting") Fail("the " + mode + " holder ended: " + p.body);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  Fail("the " + mode + " holder did not start");
}

void NetworkModesBench::Cleanup() {
  if (cleaned_) return;
  cleaned_ = true;
  // berthd removes a tenant network with its last execution: end the
  // holders first and wait for them (instances do not end on a berthd stop).
  if (berthd_pid_ > 0) {
    // Deleting a function empties its warm pool (a stop would leave the VMs).
    for (const char* mode : kModes) (void)Call("DELETE", base_url_ + "/v1/functions/warm-" + std::string(mode));
    for (int64_t pid : holders_) {
      (void)Call("POST", base_url_ + "/v1/procs/" + std::to_string(pid) + "/kill", json{{"signal", "KILL"}}.dump());
    }
    for (int64_t pid : holders_) {
      for (int i = 0; i < 150; ++i) {
        auto p = Call("GET", base_url_ + "/v1/procs/" + std::to_string(pid));
        if (p.status != 200 || json::parse(p.body, nullptr, false).value("status", "") == "killed") break;
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
      }
    }
    std::this_thread::sleep_for(std::chrono::seconds(2));  // teardown runs after the record ends
  }
  StopBerthd(&berthd_pid_);
  if (!work_dir_.empty()) RemoveRun(hv_.get(), opts_.uri, opts_.work_root, id_, tmp_dir_);
  hv_.reset();
  ::rmdir(opts_.work_root.c_str());
  if (!tmp_dir_.empty()) (void)Env::Default()->RemoveTree(tmp_dir_);
}

using Phase = std::map<std::string, std::vector<Sample>>;

Phase Measure(NetworkModesBench& bench, int rounds, const char* label, bool warm = false) {
  Phase samples;
  for (int r = 0; r < rounds; ++r) {
    std::printf("%s round %d/%d:", label, r + 1, rounds);
    for (int k = 0; k < 3; ++k) {
      const std::string mode = kModes[(r + k) % 3];  // rotating order
      if (warm) bench.WaitWarmPoolsFull();  // no refill boots next to the measured start
      Sample s = bench.Invoke(mode, warm ? "warm-" : "net-");
      samples[mode].push_back(s);
      std::printf("  %s %.0f ms (boot %.0f)", mode.c_str(), s.invoke_ms, s.boot_ms);
      if (warm && s.start != "warm") std::printf(" [start %s, not warm]", s.start.c_str());
    }
    std::printf("\n");
    std::fflush(stdout);
  }
  return samples;
}

void Report(Phase& p, const std::string& suffix, double goal) {
  const double none = MedianOf(p["none"], &Sample::invoke_ms);
  const double none_boot = MedianOf(p["none"], &Sample::boot_ms);
  for (const char* mode : {"egress", "isolated"}) {
    const double v = MedianOf(p[mode], &Sample::invoke_ms);
    const double b = MedianOf(p[mode], &Sample::boot_ms);
    std::printf("  %-9s start %7.1f ms (+%6.1f vs none %7.1f)   boot+dhcp %7.1f ms (+%6.1f vs none %7.1f)\n", mode, v,
                v - none, none, b, b - none_boot, none_boot);
  }
  for (const char* mode : {"egress", "isolated"}) {
    PrintResult(std::string("network_start_") + mode + suffix, MedianOf(p[mode], &Sample::invoke_ms), "ms", none, goal);
  }
}

int Run(const Options& opts) {
  NetworkModesBench bench(opts);
  try {
    bench.Setup();
    Phase first = Measure(bench, opts.rounds, "first-user");
    std::printf("starting one long-lived instance per networked mode (holds the tenant networks)\n");
    bench.HoldNetwork("egress");
    bench.HoldNetwork("isolated");
    Phase up = Measure(bench, opts.rounds, "network-up");
    std::printf("creating warm-<mode> functions (min_warm 1) and filling their pools\n");
    bench.CreateWarmFunctions();
    Phase warm = Measure(bench, opts.rounds, "warm", true);
    CheckStop();
    bench.Cleanup();
    std::printf("\nmedians over %d rounds, first user of the tenant network (it is created and removed each time):\n",
                opts.rounds);
    Report(first, "_first_user", opts.goal_first);
    std::printf("medians over %d rounds, tenant network already up:\n", opts.rounds);
    Report(up, "_network_up", opts.goal_up);
    std::printf("medians over %d rounds, warm-pool starts (the pooled VM has its NIC and lease already):\n",
                opts.rounds);
    for (const auto& [mode, samples] : warm) {
      int not_warm = 0;
      for (const Sample& s : samples) not_warm += s.start != "warm";
      if (not_warm > 0) std::printf("  note: %d of %zu %s starts were not warm\n", not_warm, samples.size(), mode.c_str());
    }
    Report(warm, "_warm", opts.goal_warm);
    return 0;
  } catch (const std::exception& e) {
    return ExitAfterError("berth-bench-network-modes", e, [&] { bench.Cleanup(); });
  }
}

}  // namespace

int main(int argc, char** argv) {
  StopOnSignals("berth-bench-network-modes");

  Options opts;
  CLI::App app{"berth-bench-network-modes: time each guest network mode adds to a start, next to none"};
  app.add_option("--rounds", opts.rounds, "Measured rounds per phase (each: one start per mode)")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  app.add_option("--runtime-dir", opts.runtime_dir, "Guest runtime folder")->capture_default_str();
  app.add_option("--berthd", opts.berthd, "berthd binary")->capture_default_str();
  app.add_option("--uri", opts.uri, "libvirt URI")->capture_default_str();
  app.add_option("--work-root", opts.work_root, "World-traversable folder for pools")->capture_default_str();
  app.add_option("--goal-first-user", opts.goal_first, "Allowed ratio when the start creates the network")
      ->capture_default_str();
  app.add_option("--goal-network-up", opts.goal_up, "Allowed ratio when the network is up")->capture_default_str();
  app.add_option("--goal-warm", opts.goal_warm, "Allowed ratio of warm-pool starts")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  curl_global_init(CURL_GLOBAL_DEFAULT);
  int rc = Run(opts);
  curl_global_cleanup();
  std::fflush(stdout);
  return rc;
}
