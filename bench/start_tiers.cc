// berth-bench-start-tiers: the three ways berth starts a function's VM,
// measured through the real HTTP API of a real berthd in one process.
//
//   cold:     a function with "snapshot": false: overlay, domain start, boot
//             to the agent's hello (the baseline).
//   template: a function whose snapshot template exists: the save image is
//             copied, its header rewritten and restored as a new domain.
//   warm:     a function with a warm pool ("min_warm": 1, "max_warm": 1): the
//             invoke takes a VM that is already past hello.
//
// All three run /bin/true. Rounds are interleaved (cold, template, warm, ...)
// and figures are medians: the client's HTTP round trip and the execution's
// own timings (total_ms, boot_ms). After the rounds: two bursts of N concurrent
// invokes of the template function (wall time to the last answer, failures;
// the first burst copies the save image for all but one clone and keeps the
// copies as spares, the second restores from those), and the
// resident memory (VmRSS of the QEMU process, from /run/libvirt/qemu/<name>.pid)
// of an idle pooled VM. Lines at the end, one per figure:
//   RESULT <name> value=<v> unit=<u> baseline=<b> ratio=<v/b> goal=<g>
// The baseline of the start figures is the cold start in the same run.
// Everything created is removed on exit (as bench/cold_start.cc does).
#include <curl/curl.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "bench/support/bench_support.h"
#include "common/env.h"
#include "common/ids.h"
#include "hypervisor/agent_client.h"
#include "hypervisor/domain_spec.h"
#include "hypervisor/domain_xml.h"
#include "hypervisor/hypervisor.h"
#include "images/rootfs_builder.h"

namespace {

using berth::Env;
using berth::Status;
using nlohmann::json;
using namespace berth::bench;  // Fail, Check, Http, Median, RemoveRun, PrintResult, ...

struct Options {
  int rounds = 5;
  int concurrency = 8;
  std::string runtime_dir = std::string(BERTH_BINARY_DIR) + "/runtime";
  std::string berthd = std::string(BERTH_BINARY_DIR) + "/daemon/berthd";
  std::string uri = "qemu:///system";
  std::string work_root = "/var/lib/berth/bench";
  uint64_t memory_mib = 192;
};

struct Sample {
  std::string start;     // timings.start
  double invoke_ms = 0;  // client wall-clock of the POST
  double total_ms = 0, boot_ms = 0, prepare_ms = 0, run_ms = 0;
  double guest_ms = 0;   // the command's duration as the guest agent measured it (part of run_ms)
  // Wall-clock (same host): request sent -> record created, record final -> answer received.
  double before_ms = 0, after_ms = 0;
  std::string domain;
};

// One benchmark run: owns berthd, the pools, the folders and the domains it
// creates, and removes them all in its destructor.
class StartTiersBench {
 public:
  explicit StartTiersBench(Options opts) : opts_(std::move(opts)), id_(berth::RandomHex(8)) {}
  ~StartTiersBench() { Cleanup(); }

  void Setup();
  Sample Invoke(const std::string& function, bool wait_teardown = true);
  HttpResult InvokeRaw(const std::string& function);
  // Waits until the warm function's pool holds a VM again; its domain name.
  std::string WaitForPooledVm();
  // Idle RSS (MiB) of a pooled VM's QEMU process; -1 if unknown.
  double PooledVmRssMib(const std::string& domain);
  // berthd's log line for a template clone (TemplateCache::StartClone): where
  // its boot_ms went. Zeros when the line is missing.
  struct CloneSplit {
    double copy_ms = 0, restore_ms = 0, hello_ms = 0, save_mib = 0;
    std::string source;     // as berthd logs it: "in place", "spare N", "copied to spare N", "copied"
  };
  CloneSplit CloneSplitOf(const std::string& domain) const;
  // berthd's log lines about template builds (save image size, released memory).
  std::vector<std::string> TemplateBuildLines() const;
  void Cleanup();

  const std::string kCold = "tier-cold", kTemplate = "tier-template", kWarm = "tier-warm";

 private:
  void StartBerthd();
  void StopBerthd();
  std::string BerthdLogTail() const { return berth::bench::BerthdLogTail(tmp_dir_); }

  Options opts_;
  std::string id_;
  std::string tmp_dir_;
  std::string work_dir_;
  std::string pool_, log_pool_, pool_dir_, log_dir_;
  pid_t berthd_pid_ = -1;
  std::string base_url_;
  std::string image_id_;
  std::unique_ptr<berth::hv::Hypervisor> hv_;
  bool cleaned_ = false;
};

void StartTiersBench::Setup() {
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

  std::printf("building the busybox root filesystem image from %s/rootfs-busybox\n", opts_.runtime_dir.c_str());
  berth::images::RootfsBuildOptions rootfs;
  rootfs.source_dir = opts_.runtime_dir + "/rootfs-busybox";
  rootfs.output_path = tmp_dir_ + "/busybox.qcow2";
  Check(berth::images::BuildRootfsImage(Env::Default(), rootfs), "building the busybox image");
  StartBerthd();
  auto up = Http("POST", base_url_ + "/v1/images?name=busybox", ReadAll(rootfs.output_path), "application/octet-stream");
  if (up.status != 201) Fail("image upload: HTTP " + std::to_string(up.status) + " " + up.error + " " + up.body);
  image_id_ = json::parse(up.body).at("id").get<std::string>();

  auto create = [&](const std::string& name, json extra) {
    json fn = {{"name", name},       {"image", image_id_}, {"entrypoint", {"/bin/true"}},
               {"memory_mib", opts_.memory_mib}, {"vcpus", 1}, {"timeout_ms", 30000}};
    for (auto it = extra.begin(); it != extra.end(); ++it) fn[it.key()] = it.value();
    auto created = Http("POST", base_url_ + "/v1/functions", fn.dump());
    if (created.status != 201) Fail("creating " + name + ": HTTP " + std::to_string(created.status) + " " + created.body);
  };
  create(kCold, {{"snapshot", false}});
  // The first invocation also copies the image onto the node: not measured.
  std::printf("first invocation (puts the image on the node; not measured)\n");
  Invoke(kCold);
  create(kTemplate, json::object());
  create(kWarm, {{"min_warm", 1}, {"max_warm", 1}, {"idle_timeout_ms", 3'600'000}});
  std::printf("waiting for the template (built ahead of demand) and the warm pool\n");
  auto deadline = Clock::now() + std::chrono::minutes(5);
  for (;;) {
    Sample s = Invoke(kTemplate);
    if (s.start == "template") break;
    if (Clock::now() > deadline) Fail("no template start within 5 minutes:\n" + BerthdLogTail());
    std::this_thread::sleep_for(std::chrono::seconds(2));
  }
  WaitForPooledVm();
}

HttpResult StartTiersBench::InvokeRaw(const std::string& function) {
  return Http("POST", base_url_ + "/v1/functions/" + function + "/invoke", "{}");
}

Sample StartTiersBench::Invoke(const std::string& function, bool wait_teardown) {
  CheckStop();
  const auto unix_ms = [] {
    return static_cast<double>(
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count());
  };
  const double sent_unix = unix_ms();
  auto t0 = Clock::now();
  auto r = InvokeRaw(function);
  auto t1 = Clock::now();
  const double received_unix = unix_ms();
  if (r.status != 200) {
    Fail("invoke " + function + ": HTTP " + std::to_string(r.status) + " " + r.error + " " + r.body +
         "\n--- berthd log (tail) ---\n" + BerthdLogTail());
  }
  json j = json::parse(r.body);
  if (j.value("status", "") != "succeeded") Fail("invoke did not succeed: " + r.body);
  const json& t = j.at("timings");
  Sample s;
  s.start = t.value("start", "");
  s.invoke_ms = MsBetween(t0, t1);
  s.total_ms = t.at("total_ms").get<double>();
  s.boot_ms = t.at("boot_ms").get<double>();
  s.prepare_ms = t.at("prepare_ms").get<double>();
  s.run_ms = t.at("run_ms").get<double>();
  s.guest_ms = j.value("duration_ms", 0.0);
  s.before_ms = j.value("created_ms", 0.0) - sent_unix;
  s.after_ms = received_unix - j.value("finished_ms", 0.0);
  s.domain = j.value("domain", "");
  // Let the teardown finish (untimed) so the next start has the machine alone.
  for (int i = 0; wait_teardown && i < 200; ++i) {
    auto state = Env::Default()->Run({"virsh", "-q", "-c", opts_.uri, "domstate", s.domain}, {}, 10'000);
    if (!state.ok() || state->exit_code != 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return s;
}

std::string StartTiersBench::WaitForPooledVm() {
  const std::string prefix = "berth-pool-" + kWarm + "-";
  auto deadline = Clock::now() + std::chrono::minutes(3);
  while (Clock::now() < deadline) {
    CheckStop();
    auto metrics = Http("GET", base_url_ + "/metrics");
    if (metrics.body.find("berth_pool_vms{tenant=\"default\",function=\"" + kWarm + "\"} 1") != std::string::npos) {
      auto doms = hv_->ListDomains(prefix);
      if (doms.ok() && !doms->empty()) return doms->front();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  Fail("the warm pool did not refill within 3 minutes:\n" + BerthdLogTail());
}

double StartTiersBench::PooledVmRssMib(const std::string& domain) {
  std::string pid = ReadAll("/run/libvirt/qemu/" + domain + ".pid");
  while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
  if (pid.empty()) return -1;
  std::ifstream in("/proc/" + pid + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;  // kB
  }
  return -1;
}

StartTiersBench::CloneSplit StartTiersBench::CloneSplitOf(const std::string& domain) const {
  CloneSplit split;
  std::istringstream log(ReadAll(tmp_dir_ + "/berthd.log"));
  std::string line;
  const std::string needle = "clone " + domain + " of template ";
  while (std::getline(log, line)) {
    size_t at = line.find(needle);
    if (at == std::string::npos) continue;
    long long copy = 0, restore = 0, hello = 0, kib = 0;
    const char* rest = line.c_str() + line.find(':', at + needle.size());
    if (std::sscanf(rest, ": copy %lld ms, restore %lld ms, hello %lld ms (save image %lld KiB)", &copy, &restore,
                    &hello, &kib) == 4) {
      const size_t open = line.find(", ", line.find("(save image", at));
      const size_t close = line.find_first_of(";)", open == std::string::npos ? line.size() : open);
      std::string source = open != std::string::npos && close != std::string::npos && close > open
                               ? line.substr(open + 2, close - open - 2)
                               : "";
      split = {static_cast<double>(copy), static_cast<double>(restore), static_cast<double>(hello), kib / 1024.0,
               source};
    }
  }
  return split;
}

std::vector<std::string> StartTiersBench::TemplateBuildLines() const {
  std::vector<std::string> out;
  std::istringstream log(ReadAll(tmp_dir_ + "/berthd.log"));
  std::string line;
  while (std::getline(log, line)) {
    if (line.find("release_memory:") != std::string::npos || line.find("built template") != std::string::npos ||
        line.find("warm:") != std::string::npos) {
      out.push_back(line);
    }
  }
  return out;
}

void StartTiersBench::StartBerthd() {
  berth::bench::StartBerthd({opts_.berthd, tmp_dir_, opts_.runtime_dir, opts_.uri, pool_, pool_dir_, log_pool_, log_dir_},
                            &berthd_pid_, &base_url_);
}

void StartTiersBench::StopBerthd() { berth::bench::StopBerthd(&berthd_pid_); }

void StartTiersBench::Cleanup() {
  if (cleaned_) return;
  cleaned_ = true;
  StopBerthd();
  if (!work_dir_.empty()) RemoveRun(hv_.get(), opts_.uri, opts_.work_root, id_, tmp_dir_);
  hv_.reset();
  ::rmdir(opts_.work_root.c_str());  // only if empty: other runs may be using it
  if (!tmp_dir_.empty()) (void)Env::Default()->RemoveTree(tmp_dir_);
}


int Run(const Options& opts) {
  StartTiersBench bench(opts);
  try {
    bench.Setup();
    for (const auto& line : bench.TemplateBuildLines()) std::printf("berthd: %s\n", line.c_str());
    std::vector<Sample> cold, tpl, warm;
    std::vector<StartTiersBench::CloneSplit> splits;
    for (int r = 0; r < opts.rounds; ++r) {
      cold.push_back(bench.Invoke(bench.kCold));
      tpl.push_back(bench.Invoke(bench.kTemplate));
      splits.push_back(bench.CloneSplitOf(tpl.back().domain));
      bench.WaitForPooledVm();
      warm.push_back(bench.Invoke(bench.kWarm));
      for (const auto* s : {&cold.back(), &tpl.back(), &warm.back()}) {
        std::printf(
            "round %d/%d  %-8s http %7.1f ms  total %7.1f  prepare %6.1f  boot %7.1f  run %6.1f (guest %5.1f)"
            "  sent->record %4.0f  final->answer %4.0f\n",
            r + 1, opts.rounds, s->start.c_str(), s->invoke_ms, s->total_ms, s->prepare_ms, s->boot_ms, s->run_ms,
            s->guest_ms, s->before_ms, s->after_ms);
      }
      std::printf("round %d/%d  template boot = copy %.0f + restore %.0f + hello %.0f ms (save image %.1f MiB, %s)\n",
                  r + 1, opts.rounds, splits.back().copy_ms, splits.back().restore_ms, splits.back().hello_ms,
                  splits.back().save_mib, splits.back().source.c_str());
      if (cold.back().start != "cold" || tpl.back().start != "template" || warm.back().start != "warm") {
        std::printf("  note: a start was not of the tier it measures (%s, %s, %s)\n", cold.back().start.c_str(),
                    tpl.back().start.c_str(), warm.back().start.c_str());
      }
    }
    auto med = [](const std::vector<Sample>& v, double Sample::*f) { return MedianOf(v, f); };
    std::printf("\nmedians over %d rounds (ms)   http    total   boot     run   guest  sent->record  final->answer\n",
                opts.rounds);
    for (const auto& [name, v] : {std::pair{"cold", &cold}, {"template", &tpl}, {"warm", &warm}}) {
      std::printf("  %-10s %10.1f %8.1f %7.1f %7.1f %7.1f %13.0f %14.0f\n", name, med(*v, &Sample::invoke_ms),
                  med(*v, &Sample::total_ms), med(*v, &Sample::boot_ms), med(*v, &Sample::run_ms),
                  med(*v, &Sample::guest_ms), med(*v, &Sample::before_ms), med(*v, &Sample::after_ms));
    }

    std::printf("  template boot split (medians): copy %.1f  restore %.1f  hello %.1f ms; save image %.1f MiB\n",
                MedianOf(splits, &StartTiersBench::CloneSplit::copy_ms),
                MedianOf(splits, &StartTiersBench::CloneSplit::restore_ms),
                MedianOf(splits, &StartTiersBench::CloneSplit::hello_ms),
                MedianOf(splits, &StartTiersBench::CloneSplit::save_mib));

    // N concurrent starts of the template function, twice: the first burst
    // finds one save image (the template's own) and copies it for the others,
    // keeping the copies as spares; the second finds the spares.
    int failures = 0;
    auto burst = [&](const char* what) {
      bench.WaitForPooledVm();
      std::printf("\n%d concurrent invokes of the template function (%s)\n", opts.concurrency, what);
      std::vector<std::thread> threads;
      std::vector<HttpResult> results(opts.concurrency);
      auto c0 = Clock::now();
      for (int i = 0; i < opts.concurrency; ++i) {
        threads.emplace_back([&, i] { results[i] = bench.InvokeRaw(bench.kTemplate); });
      }
      for (auto& t : threads) t.join();
      const double wall_ms = MsBetween(c0, Clock::now());
      int from_template = 0;
      std::string sources;
      for (const auto& r : results) {
        json j = json::parse(r.body, nullptr, false);
        bool ok = r.status == 200 && j.is_object() && j.value("status", "") == "succeeded";
        if (!ok) {
          ++failures;
          std::printf("  failed: HTTP %ld %s %s\n", r.status, r.error.c_str(), Tail(r.body, 300).c_str());
        } else if (j["timings"].value("start", "") == "template") {
          ++from_template;
          auto split = bench.CloneSplitOf(j.value("domain", ""));
          char one[96];
          std::snprintf(one, sizeof one, "%s%s copy %.0f ms", sources.empty() ? "" : "; ", split.source.c_str(),
                        split.copy_ms);
          sources += one;
        }
      }
      std::printf("  wall %.1f ms, %d from the template: %s\n", wall_ms, from_template, sources.c_str());
      return wall_ms;
    };
    const double concurrent_ms = burst("first burst");
    const double again_ms = burst("second burst");

    // Idle RSS of a pooled VM (local node only).
    std::string pooled = bench.WaitForPooledVm();
    std::this_thread::sleep_for(std::chrono::seconds(2));
    double rss = bench.PooledVmRssMib(pooled);
    std::printf("\nidle pooled VM %s: VmRSS %.1f MiB (guest memory %llu MiB)\n", pooled.c_str(), rss,
                static_cast<unsigned long long>(opts.memory_mib));
    CheckStop();
    bench.Cleanup();

    const double cold_http = med(cold, &Sample::invoke_ms), cold_total = med(cold, &Sample::total_ms),
                 cold_boot = med(cold, &Sample::boot_ms);
    std::printf("\n");
    PrintResult("start_template_invoke", med(tpl, &Sample::invoke_ms), "ms", cold_http, 0.15);
    PrintResult("start_template_total", med(tpl, &Sample::total_ms), "ms", cold_total, 0.15);
    PrintResult("start_template_boot", med(tpl, &Sample::boot_ms), "ms", cold_boot, 0.15);
    PrintResult("start_warm_invoke", med(warm, &Sample::invoke_ms), "ms", cold_http, 0.02);
    PrintResult("start_warm_total", med(warm, &Sample::total_ms), "ms", cold_total, 0.02);
    // Baseline: the same starts one after another at the median template time.
    PrintResult("start_template_concurrent" + std::to_string(opts.concurrency), concurrent_ms, "ms",
                opts.concurrency * med(tpl, &Sample::invoke_ms), 1.0);
    PrintResult("start_template_concurrent" + std::to_string(opts.concurrency) + "_again", again_ms, "ms",
                opts.concurrency * med(tpl, &Sample::invoke_ms), 1.0);
    PrintResult("start_template_concurrent" + std::to_string(opts.concurrency) + "_failures", failures, "count",
                2.0 * opts.concurrency, 0.0);
    PrintResult("pool_vm_idle_rss", rss, "MiB", static_cast<double>(opts.memory_mib), 1.0);
    return 0;
  } catch (const std::exception& e) {
    return ExitAfterError("berth-bench-start-tiers", e, [&] { bench.Cleanup(); });
  }
}

}  // namespace

int main(int argc, char** argv) {
  StopOnSignals("berth-bench-start-tiers");

  Options opts;
  CLI::App app{"berth-bench-start-tiers: cold boot vs template restore vs warm pool through berth's HTTP API"};
  app.add_option("--rounds", opts.rounds, "Measured rounds (each: one cold, one template, one warm invoke)")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app.add_option("--runtime-dir", opts.runtime_dir, "Guest runtime folder (vmlinuz, initramfs, rootfs-busybox/)")
      ->capture_default_str();
  app.add_option("--berthd", opts.berthd, "berthd binary")->capture_default_str();
  app.add_option("--uri", opts.uri, "libvirt URI")->capture_default_str();
  app.add_option("--work-root", opts.work_root, "World-traversable folder for pools and overlays")
      ->capture_default_str();
  app.add_option("--memory-mib", opts.memory_mib, "Guest memory")->check(CLI::Range(64, 65536))->capture_default_str();
  app.add_option("--concurrency", opts.concurrency, "Concurrent template starts")->check(CLI::Range(1, 64))->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  curl_global_init(CURL_GLOBAL_DEFAULT);
  int rc = Run(opts);
  curl_global_cleanup();
  std::fflush(stdout);
  return rc;
}
