// berth-bench-cold-start: the cold start of one function through berth, next
// to the same work done by hand with plain libvirt tools, measured in one run.
//
//   A (berth):    POST /v1/functions/NAME/invoke on a real berthd, wall-clock
//                 at the client. Includes overlay creation, domain start, agent
//                 hello, exec of /bin/true, exit, plus HTTP and the execution
//                 record in SQLite. berthd answers before it destroys the VM
//                 (teardown runs after the answer and is not timed here).
//   B (baseline): qemu-img create (qcow2 overlay of the same base volume file)
//                 -> domain XML from hv::WriteDomainXml with the DomainSpec
//                 manager/executor.cc builds -> `virsh create` -> agent channel,
//                 Hello, Exec ["/bin/true"], Exit -> `virsh destroy` -> overlay
//                 and console log removed. cold_start_invoke compares against
//                 the time up to Exit: the earliest a caller has the answer.
//
// Rounds are interleaved (A B A B ...) so slow drifts of the machine hit both
// sides alike; figures are medians. The last lines follow the project's
// convention, one per figure:
//   RESULT <name> value=<v> unit=<u> baseline=<b> ratio=<v/b> goal=<g>
//
// Everything the program creates (berthd, its pools, domains, volumes, temp
// folders) is removed on exit, also after a failure or SIGINT/SIGTERM. It
// only ever touches domains whose names carry its own random id or whose
// disks live in its own folder.
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
  int warmup = 1;
  std::string runtime_dir = std::string(BERTH_BINARY_DIR) + "/runtime";
  std::string berthd = std::string(BERTH_BINARY_DIR) + "/daemon/berthd";
  std::string uri = "qemu:///system";
  std::string work_root = "/var/lib/berth/bench";
  uint64_t memory_mib = 256;
  double goal = 1.05;
};

struct BerthSample {
  double invoke_ms = 0;  // client wall-clock of the POST
  double prepare_ms = 0, boot_ms = 0, run_ms = 0, cleanup_ms = 0, total_ms = 0;  // from the response
  double berthd_cpu_ms = 0;  // CPU time berthd spent (user + system) during the invoke
};

struct BaselineSample {
  double total_ms = 0;    // qemu-img create .. overlay removed
  double answer_ms = 0;   // qemu-img create .. Exit received: when a caller could have its answer
  double overlay_ms = 0;  // qemu-img create
  double xml_ms = 0;      // WriteDomainXml + file written
  double create_ms = 0;   // `virsh create` returned
  double hello_ms = 0;    // virsh create returned -> agent hello
  double boot_ms = 0;     // virsh create started -> agent hello (create_ms + hello_ms)
  double guest_ms = 0;    // the guest's own uptime when its agent said hello
  double exec_ms = 0;     // Exec sent -> Exit
  double destroy_ms = 0;  // `virsh destroy`
  double cleanup_ms = 0;  // overlay + console log removed
  double self_cpu_ms = 0;  // CPU time of this process (not its children) during the round
};

// User + system CPU time of a process, in ms (-1 if unknown).
double ProcessCpuMs(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  std::getline(in, stat);
  size_t close = stat.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream fields(stat.substr(close + 2));
  std::string f;
  double utime = 0, stime = 0;
  for (int i = 3; fields >> f; ++i) {  // field 3 is the state; 14 utime, 15 stime
    if (i == 14) utime = std::stod(f);
    if (i == 15) {
      stime = std::stod(f);
      return (utime + stime) * 1000.0 / static_cast<double>(::sysconf(_SC_CLK_TCK));
    }
  }
  return -1;
}

// One benchmark run: owns berthd, the pools, the folders and the domains it
// creates, and removes them all in its destructor.
class ColdStartBench {
 public:
  explicit ColdStartBench(Options opts) : opts_(std::move(opts)), id_(berth::RandomHex(8)) {}
  ~ColdStartBench() { Cleanup(); }

  void Setup();
  BerthSample RunBerth();
  BaselineSample RunBaseline(int round);
  void Cleanup();

 private:
  void StartBerthd();
  void StopBerthd();
  void FindVolumes();
  std::string BerthdLogTail() const { return berth::bench::BerthdLogTail(tmp_dir_); }

  Options opts_;
  std::string id_;
  std::string tmp_dir_;    // /tmp/berth-bench-<id>: berthd data dir, log, image, XML files
  std::string work_dir_;   // <work_root>/<id>: world-traversable, QEMU opens files here
  std::string pool_, log_pool_, pool_dir_, log_dir_, baseline_dir_;
  pid_t berthd_pid_ = -1;
  std::string base_url_;
  std::string image_id_;
  std::string function_ = "bench-true";
  std::unique_ptr<berth::hv::Hypervisor> hv_;
  std::string kernel_path_, initrd_path_, base_path_;
  std::string live_baseline_domain_;  // set while a baseline domain may exist
  bool cleaned_ = false;
};

void ColdStartBench::Setup() {
  char tmpl[] = "/tmp/berth-bench-XXXXXX";
  if (!mkdtemp(tmpl)) Fail(std::string("mkdtemp: ") + std::strerror(errno));
  tmp_dir_ = tmpl;

  auto hv = berth::hv::ConnectLibvirt(opts_.uri);
  Check(hv.status(), "connecting to " + opts_.uri);
  hv_ = std::move(*hv);
  ReclaimStale(hv_.get(), opts_.uri, opts_.work_root);

  // QEMU runs as libvirt-qemu: every folder above its files must be traversable.
  Check(Env::Default()->CreateDirs(opts_.work_root, 0755), "creating " + opts_.work_root);
  work_dir_ = opts_.work_root + "/" + id_;
  pool_dir_ = work_dir_ + "/pool";
  log_dir_ = work_dir_ + "/logs";
  baseline_dir_ = work_dir_ + "/baseline";
  Check(Env::Default()->CreateDirs(baseline_dir_, 0755), "creating " + baseline_dir_);
  for (const auto& d : {opts_.work_root, work_dir_, baseline_dir_}) ::chmod(d.c_str(), 0755);
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

  // "snapshot": false: this bench measures a cold boot; template restores are bench/start_tiers.
  json fn = {{"name", function_},          {"image", image_id_},  {"entrypoint", {"/bin/true"}},
             {"memory_mib", opts_.memory_mib}, {"vcpus", 1},       {"timeout_ms", 30000}, {"snapshot", false}};
  auto created = Http("POST", base_url_ + "/v1/functions", fn.dump());
  if (created.status != 201) Fail("creating the function: HTTP " + std::to_string(created.status) + " " + created.body);

  // The first invocation also copies the image onto the node (once per node):
  // not a cold start. After it, the base volume exists for the baseline too.
  std::printf("first invocation (puts the image on the node; not measured)\n");
  RunBerth();
  FindVolumes();
}

void ColdStartBench::StartBerthd() {
  berth::bench::StartBerthd({opts_.berthd, tmp_dir_, opts_.runtime_dir, opts_.uri, pool_, pool_dir_, log_pool_, log_dir_},
                            &berthd_pid_, &base_url_);
}

void ColdStartBench::StopBerthd() { berth::bench::StopBerthd(&berthd_pid_); }

// The runtime and the image as berthd put them into its pool: the files the
// baseline's domain uses, exactly as berth's own domains do.
void ColdStartBench::FindVolumes() {
  auto vols = hv_->ListVolumes(pool_);
  Check(vols.status(), "listing pool " + pool_);
  auto ends_with = [](const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  for (const auto& v : *vols) {
    if (v.name.rfind("rt-", 0) == 0 && ends_with(v.name, "-vmlinuz")) kernel_path_ = v.path;
    if (v.name.rfind("rt-", 0) == 0 && ends_with(v.name, "-initramfs.cpio.gz")) initrd_path_ = v.path;
    if (v.name.rfind("img-" + image_id_, 0) == 0) base_path_ = v.path;
  }
  if (kernel_path_.empty() || initrd_path_.empty() || base_path_.empty()) {
    Fail("could not find the kernel, initramfs and image volumes in pool " + pool_);
  }
}

BerthSample ColdStartBench::RunBerth() {
  CheckStop();
  double cpu0 = ProcessCpuMs(berthd_pid_);
  auto t0 = Clock::now();
  auto r = Http("POST", base_url_ + "/v1/functions/" + function_ + "/invoke", "{}");
  auto t1 = Clock::now();
  double cpu1 = ProcessCpuMs(berthd_pid_);
  CheckStop();
  if (r.status != 200) {
    Fail("invoke: HTTP " + std::to_string(r.status) + " " + r.error + " " + r.body + "\n--- berthd log (tail) ---\n" +
         BerthdLogTail());
  }
  json j = json::parse(r.body);
  if (j.value("status", "") != "succeeded") Fail("invoke did not succeed: " + r.body);
  const json& t = j.at("timings");
  BerthSample s;
  s.invoke_ms = MsBetween(t0, t1);
  s.prepare_ms = t.at("prepare_ms").get<double>();
  s.boot_ms = t.at("boot_ms").get<double>();
  s.run_ms = t.at("run_ms").get<double>();
  s.cleanup_ms = t.at("cleanup_ms").get<double>();
  s.total_ms = t.at("total_ms").get<double>();
  s.berthd_cpu_ms = cpu1 - cpu0;
  // berthd answers before it tears the VM down; let that finish (untimed) so
  // the next baseline round does not share the machine with it.
  const std::string domain = j.value("domain", "");
  for (int i = 0; i < 200; ++i) {
    auto state = Env::Default()->Run({"virsh", "-q", "-c", opts_.uri, "domstate", domain}, {}, 10'000);
    if (!state.ok() || state->exit_code != 0) break;  // the transient domain is gone
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return s;
}

BaselineSample ColdStartBench::RunBaseline(int round) {
  namespace hv = berth::hv;
  CheckStop();
  const std::string name = "berth-bench-" + id_ + "-" + std::to_string(round);
  const std::string overlay = baseline_dir_ + "/ovl-" + name + ".qcow2";
  const std::string console = baseline_dir_ + "/" + name + ".console.log";
  const std::string xml_path = tmp_dir_ + "/" + name + ".xml";
  BaselineSample s;

  double cpu0 = ProcessCpuMs(::getpid());
  auto t0 = Clock::now();
  MustRun({"qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base_path_, overlay});
  auto t1 = Clock::now();

  // The DomainSpec manager/executor.cc builds for this function.
  hv::DomainSpec spec;
  spec.name = name;
  spec.title = "berth bench baseline round " + std::to_string(round);
  spec.accel = hv::Accel::kTcg;
  spec.vcpus = 1;
  spec.memory_mib = opts_.memory_mib;
  spec.kernel_path = kernel_path_;
  spec.initrd_path = initrd_path_;
  spec.cmdline = hv::kDefaultKernelCmdline;  // ExecutorOptions::kernel_cmdline
  spec.disks.push_back({overlay, "qcow2", "vda", false});
  spec.console_log_path = console;
  spec.metadata = {name, function_, "default", 1, 0, image_id_, 0};
  auto xml = hv::WriteDomainXml(spec);
  Check(xml.status(), "domain XML");
  Check(Env::Default()->WriteFileAtomic(xml_path, *xml), "writing " + xml_path);
  auto t2 = Clock::now();

  live_baseline_domain_ = name;
  MustRun({"virsh", "-q", "-c", opts_.uri, "create", xml_path});
  auto t3 = Clock::now();
  CheckStop();
  auto channel = hv_->OpenAgentChannel(name, spec.agent_channel.name);
  Check(channel.status(), "opening the agent channel of " + name);
  hv::AgentClient agent(std::move(*channel));
  auto hello = agent.Hello(120'000);
  Check(hello.status(), "agent hello from " + name);
  auto t4 = Clock::now();
  s.guest_ms = static_cast<double>(hello->boot_ms);
  CheckStop();

  berth::agent::ExecMsg msg;
  msg.argv = {"/bin/true"};
  msg.cwd = "/";
  msg.timeout_ms = 30'000;
  auto outcome = agent.Exec(msg, {}, 1 << 20, 40'000);
  Check(outcome.status(), "exec in " + name);
  if (!outcome->exit.error_code.empty() || outcome->exit.exit_code != 0) {
    Fail("/bin/true in " + name + " failed: " + outcome->exit.error_code + " " + outcome->exit.error);
  }
  auto t5 = Clock::now();
  agent.Close();

  MustRun({"virsh", "-q", "-c", opts_.uri, "destroy", name});
  live_baseline_domain_.clear();
  auto t6 = Clock::now();
  Check(Env::Default()->RemoveFile(overlay), "removing " + overlay);
  Check(Env::Default()->RemoveFile(console), "removing " + console);
  auto t7 = Clock::now();
  (void)Env::Default()->RemoveFile(xml_path);

  s.overlay_ms = MsBetween(t0, t1);
  s.xml_ms = MsBetween(t1, t2);
  s.create_ms = MsBetween(t2, t3);
  s.hello_ms = MsBetween(t3, t4);
  s.boot_ms = MsBetween(t2, t4);
  s.exec_ms = MsBetween(t4, t5);
  s.destroy_ms = MsBetween(t5, t6);
  s.cleanup_ms = MsBetween(t6, t7);
  s.total_ms = MsBetween(t0, t7);
  s.answer_ms = MsBetween(t0, t5);
  s.self_cpu_ms = ProcessCpuMs(::getpid()) - cpu0;
  return s;
}

void ColdStartBench::Cleanup() {
  if (cleaned_) return;
  cleaned_ = true;
  if (!live_baseline_domain_.empty()) TryRun({"virsh", "-q", "-c", opts_.uri, "destroy", live_baseline_domain_});
  StopBerthd();
  if (!work_dir_.empty()) RemoveRun(hv_.get(), opts_.uri, opts_.work_root, id_, tmp_dir_);
  hv_.reset();
  ::rmdir(opts_.work_root.c_str());  // only if empty: other runs may be using it
  if (!tmp_dir_.empty()) (void)Env::Default()->RemoveTree(tmp_dir_);
}


int Run(const Options& opts) {
  ColdStartBench bench(opts);
  try {
    bench.Setup();
    for (int i = 0; i < opts.warmup; ++i) {
      std::printf("warm-up round %d/%d (not measured)\n", i + 1, opts.warmup);
      if (i > 0) bench.RunBerth();  // Setup's first invocation is round 0's berth half
      bench.RunBaseline(-1 - i);
    }
    std::vector<BerthSample> a;
    std::vector<BaselineSample> b;
    for (int r = 0; r < opts.rounds; ++r) {
      a.push_back(bench.RunBerth());
      b.push_back(bench.RunBaseline(r));
      const auto& x = a.back();
      const auto& y = b.back();
      std::printf(
          "round %d/%d  berth %7.1f ms (prepare %.0f, boot %.0f, run %.0f, cleanup %.0f, total %.0f, outside executor "
          "%.0f, berthd cpu %.0f)  |  baseline %7.1f ms (overlay %.0f, xml %.0f, virsh create %.0f, hello %.0f [guest uptime %.0f], exec %.0f, "
          "virsh destroy %.0f, cleanup %.0f, own cpu %.0f)\n",
          r + 1, opts.rounds, x.invoke_ms, x.prepare_ms, x.boot_ms, x.run_ms, x.cleanup_ms, x.total_ms,
          x.invoke_ms - x.total_ms, x.berthd_cpu_ms, y.total_ms, y.overlay_ms, y.xml_ms, y.create_ms, y.hello_ms, y.guest_ms, y.exec_ms,
          y.destroy_ms, y.cleanup_ms, y.self_cpu_ms);
      std::fflush(stdout);
    }
    CheckStop();
    bench.Cleanup();

    auto ma = [&](double BerthSample::*f) { return MedianOf(a, f); };
    auto mb = [&](double BaselineSample::*f) { return MedianOf(b, f); };
    std::printf("\nmedians over %d rounds (ms)      berth  baseline\n", opts.rounds);
    std::printf("  before boot (overlay ...)     %7.1f  %7.1f   berth prepare_ms | qemu-img create + xml\n",
                ma(&BerthSample::prepare_ms), Median([&] {
                  std::vector<double> v;
                  for (const auto& s : b) v.push_back(s.overlay_ms + s.xml_ms);
                  return v;
                }()));
    std::printf("  boot (create -> hello)        %7.1f  %7.1f   berth boot_ms | virsh create %.1f + hello %.1f\n",
                ma(&BerthSample::boot_ms), mb(&BaselineSample::boot_ms), mb(&BaselineSample::create_ms),
                mb(&BaselineSample::hello_ms));
    std::printf("  run (exec -> exit)            %7.1f  %7.1f\n", ma(&BerthSample::run_ms), mb(&BaselineSample::exec_ms));
    std::printf("  teardown                      %7.1f  %7.1f   berth cleanup_ms | virsh destroy + rm\n",
                ma(&BerthSample::cleanup_ms), Median([&] {
                  std::vector<double> v;
                  for (const auto& s : b) v.push_back(s.destroy_ms + s.cleanup_ms);
                  return v;
                }()));
    std::printf("  outside the executor          %7.1f      -     HTTP, function lookup, records (invoke - total_ms)\n",
                Median([&] {
                  std::vector<double> v;
                  for (const auto& s : a) v.push_back(s.invoke_ms - s.total_ms);
                  return v;
                }()));
    std::printf("  berth bookkeeping             %7.1f      -     invoke - (prepare + boot + run + cleanup)\n",
                Median([&] {
                  std::vector<double> v;
                  for (const auto& s : a) v.push_back(s.invoke_ms - s.prepare_ms - s.boot_ms - s.run_ms - s.cleanup_ms);
                  return v;
                }()));
    std::printf("  whole cold start              %7.1f  %7.1f   berth answers before teardown; baseline to Exit\n",
                ma(&BerthSample::invoke_ms), mb(&BaselineSample::answer_ms));
    // Each round's pair ran back to back, so a per-round ratio is less
    // exposed to slow drifts of the machine than the ratio of medians.
    auto paired = [&](auto berth_of, auto base_of) {
      std::vector<double> v;
      for (size_t i = 0; i < a.size(); ++i) v.push_back(berth_of(a[i]) / base_of(b[i]));
      return Median(v);
    };
    std::printf("  median of per-round ratios: invoke %.3f, boot %.3f\n\n",
                paired([](const BerthSample& x) { return x.invoke_ms; },
                       [](const BaselineSample& y) { return y.answer_ms; }),
                paired([](const BerthSample& x) { return x.boot_ms; },
                       [](const BaselineSample& y) { return y.boot_ms; }));
    PrintResult("cold_start_invoke", ma(&BerthSample::invoke_ms), "ms", mb(&BaselineSample::answer_ms), opts.goal);
    PrintResult("cold_start_boot", ma(&BerthSample::boot_ms), "ms", mb(&BaselineSample::boot_ms), opts.goal);
    return 0;
  } catch (const std::exception& e) {
    return ExitAfterError("berth-bench-cold-start", e, [&] { bench.Cleanup(); });
  }
}

}  // namespace

int main(int argc, char** argv) {
  StopOnSignals("berth-bench-cold-start");

  Options opts;
  CLI::App app{"berth-bench-cold-start: cold start through berth vs. the same domain with plain virsh"};
  app.add_option("--rounds", opts.rounds, "Measured rounds (each: one berth invoke, one baseline)")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app.add_option("--warmup", opts.warmup, "Unmeasured rounds first")->check(CLI::Range(0, 100))->capture_default_str();
  app.add_option("--runtime-dir", opts.runtime_dir, "Guest runtime folder (vmlinuz, initramfs, rootfs-busybox/)")
      ->capture_default_str();
  app.add_option("--berthd", opts.berthd, "berthd binary")->capture_default_str();
  app.add_option("--uri", opts.uri, "libvirt URI")->capture_default_str();
  app.add_option("--work-root", opts.work_root, "World-traversable folder for pools and overlays")
      ->capture_default_str();
  app.add_option("--memory-mib", opts.memory_mib, "Guest memory")->check(CLI::Range(64, 65536))->capture_default_str();
  app.add_option("--goal", opts.goal, "Allowed berth/baseline ratio printed as goal=")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  curl_global_init(CURL_GLOBAL_DEFAULT);
  int rc = Run(opts);
  curl_global_cleanup();
  std::fflush(stdout);
  return rc;
}
