// berth-bench-upload: image uploads and distribution through a real berthd.
//
//   throughput:   POST /v1/images of a raw ext4 image full of random bytes
//                 (streamed from the file by libcurl), vs `cp` of the same
//                 file on the same disk followed by an fsync of the copy
//                 (berthd fsyncs before it answers). Rounds interleave berth
//                 and cp; each berth round deletes the image again.
//   rss:          peak growth of berthd's VmRSS (sampled every 10 ms, and
//                 VmHWM) while a 4 GiB sparse image is uploaded, vs the image
//                 size (goal: at most 64 MiB of 4096).
//   distribution: (needs tests/multinode/hosts.sh, i.e. root and network
//                 namespaces; --no-distribution skips it) the time berthd
//                 takes to put the image on a second libvirt node (the
//                 execution's prepare_ms: virStorageVolUpload of the image
//                 plus the overlay) vs `virsh vol-create-as` + `virsh
//                 vol-upload` of the same file to the same node's pool.
// One line per figure at the end:
//   RESULT <name> value=<v> unit=<u> baseline=<b> ratio=<v/b> goal=<g>
// For throughput the figures are MiB/s and the goal is a floor (ratio >= 0.7);
// for times and RSS it is a ceiling (ratio <= goal). Everything created is
// removed on exit.
#include <curl/curl.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "bench/support/bench_support.h"
#include "common/env.h"
#include "common/ids.h"
#include "hypervisor/hypervisor.h"

namespace {

using berth::Env;
using nlohmann::json;
using namespace berth::bench;

struct Options {
  int rounds = 3;
  uint64_t size_mib = 512;
  uint64_t sparse_gib = 4;
  bool distribution = true;
  std::string runtime_dir = std::string(BERTH_BINARY_DIR) + "/runtime";
  std::string berthd = std::string(BERTH_BINARY_DIR) + "/daemon/berthd";
  std::string hosts_sh = std::string(BERTH_SOURCE_DIR) + "/tests/multinode/hosts.sh";
  std::string uri = "qemu:///system";
  std::string work_root = "/var/lib/berth/bench";
};

size_t Collect(char* data, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(data, size * n);
  return size * n;
}

int Abort(void*, curl_off_t, curl_off_t, curl_off_t, curl_off_t) { return g_stop.load() ? 1 : 0; }

// POST of a file as the streamed body (never in memory).
HttpResult UploadFile(const std::string& url, const std::string& path) {
  HttpResult r;
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) Fail("cannot open " + path);
  struct stat st;
  ::fstat(fileno(f), &st);
  CURL* curl = curl_easy_init();
  curl_slist* headers = nullptr;
  headers = curl_slist_append(headers, ("Authorization: Bearer " + g_token).c_str());
  headers = curl_slist_append(headers, "Content-Type: application/octet-stream");
  headers = curl_slist_append(headers, "Expect:");
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_NOPROXY, "*");
  curl_easy_setopt(curl, CURLOPT_POST, 1L);
  curl_easy_setopt(curl, CURLOPT_READDATA, f);
  curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(st.st_size));
  // Fewer, larger sends than the 64 KiB default (the CLI does the same).
  curl_easy_setopt(curl, CURLOPT_UPLOAD_BUFFERSIZE, 1L << 20);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &Collect);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &r.body);
  curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, &Abort);
  CURLcode rc = curl_easy_perform(curl);
  if (rc == CURLE_OK) {
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &r.status);
  } else {
    r.error = curl_easy_strerror(rc);
  }
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
  std::fclose(f);
  return r;
}

uint64_t StatusKiB(pid_t pid, const char* key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) return std::stoull(line.substr(std::strlen(key) + 1));
  }
  return 0;
}

void FsyncFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) Fail("cannot open " + path);
  ::fsync(fd);
  ::close(fd);
}

class UploadBench {
 public:
  explicit UploadBench(Options opts) : opts_(std::move(opts)), id_(berth::RandomHex(8)) {}
  ~UploadBench() { Cleanup(); }

  void Setup() {
    char tmpl[] = "/var/tmp/berth-bench-upload-XXXXXX";  // a disk, not a tmpfs: cp and berthd write to it
    if (!mkdtemp(tmpl)) Fail(std::string("mkdtemp: ") + std::strerror(errno));
    tmp_dir_ = tmpl;
    auto hv = berth::hv::ConnectLibvirt(opts_.uri);
    Check(hv.status(), "connecting to " + opts_.uri);
    hv_ = std::move(*hv);
    ReclaimStale(hv_.get(), opts_.uri, opts_.work_root);
    Check(Env::Default()->CreateDirs(opts_.work_root, 0755), "creating " + opts_.work_root);
    work_dir_ = opts_.work_root + "/" + id_;
    Check(Env::Default()->CreateDirs(work_dir_, 0755), "creating " + work_dir_);
    Check(Env::Default()->WriteFileAtomic(work_dir_ + "/owner", std::to_string(::getpid()) + " " + tmp_dir_ + "\n"),
          "writing owner");
    pool_ = "berth-bench-" + id_;
    log_pool_ = pool_ + "-logs";
    // Random bytes everywhere an ext4 superblock and its metadata do not overwrite them.
    image_ = tmp_dir_ + "/random.ext4";
    std::printf("making a %llu MiB ext4 image of random bytes\n", static_cast<unsigned long long>(opts_.size_mib));
    MustRun({"dd", "if=/dev/urandom", "of=" + image_, "bs=1M", "count=" + std::to_string(opts_.size_mib), "status=none"},
            600'000);
    MustRun({"mke2fs", "-q", "-t", "ext4", "-F", "-E", "nodiscard", image_});
    sparse_ = tmp_dir_ + "/sparse.ext4";
    MustRun({"truncate", "-s", std::to_string(opts_.sparse_gib) + "G", sparse_});
    MustRun({"mke2fs", "-q", "-t", "ext4", "-F", "-E", "nodiscard,lazy_itable_init=1", sparse_});
    StartBerthd({opts_.berthd, tmp_dir_, opts_.runtime_dir, opts_.uri, pool_, work_dir_ + "/pool", log_pool_,
                 work_dir_ + "/logs"},
                &berthd_pid_, &base_url_);
  }

  // One berth round: seconds to upload, then the image is deleted.
  double BerthUpload(const std::string& path) {
    auto t0 = Clock::now();
    HttpResult r = UploadFile(base_url_ + "/v1/images", path);
    double s = MsBetween(t0, Clock::now()) / 1000.0;
    if (r.status != 201) Fail("upload: HTTP " + std::to_string(r.status) + " " + r.error + " " + r.body);
    last_id_ = json::parse(r.body).value("id", "");
    return s;
  }
  // The same upload by the curl program (`curl -T`), to tell the client's
  // share from the server's: seconds.
  double CurlCliUpload(const std::string& path) {
    auto t0 = Clock::now();
    auto r = MustRun({"curl", "-sS", "--fail", "--noproxy", "*", "-H", "Authorization: Bearer " + g_token, "-H",
                      "Content-Type: application/octet-stream", "-H", "Expect:", "-X", "POST", "-T", path,
                      base_url_ + "/v1/images"},
                     600'000);
    double s = MsBetween(t0, Clock::now()) / 1000.0;
    last_id_ = json::parse(r.out).value("id", "");
    return s;
  }
  void DeleteLast() {
    auto d = Http("DELETE", base_url_ + "/v1/images/" + last_id_);
    if (d.status != 200) Fail("delete: HTTP " + std::to_string(d.status) + " " + d.body);
  }
  double CpRound() {
    const std::string dst = tmp_dir_ + "/cp-copy";
    auto t0 = Clock::now();
    MustRun({"cp", image_, dst}, 600'000);
    FsyncFile(dst);
    double s = MsBetween(t0, Clock::now()) / 1000.0;
    std::filesystem::remove(dst);
    return s;
  }

  // Peak VmRSS growth (MiB) of berthd while the sparse image is uploaded.
  double RssGrowthMiB() {
    const uint64_t before = StatusKiB(berthd_pid_, "VmRSS:");
    const uint64_t hwm_before = StatusKiB(berthd_pid_, "VmHWM:");
    std::atomic<bool> done{false};
    std::atomic<uint64_t> peak{before};
    std::thread sampler([&] {
      while (!done.load()) {
        uint64_t now = StatusKiB(berthd_pid_, "VmRSS:");
        if (now > peak.load()) peak.store(now);
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    });
    double s = BerthUpload(sparse_);
    done.store(true);
    sampler.join();
    const uint64_t hwm_after = StatusKiB(berthd_pid_, "VmHWM:");
    uint64_t growth = peak.load() - before;
    if (hwm_after > hwm_before) growth = std::max(growth, hwm_after - before);
    std::printf("sparse %llu GiB upload: %.1f s, VmRSS %llu KiB before, peak %llu KiB, VmHWM %llu -> %llu KiB\n",
                static_cast<unsigned long long>(opts_.sparse_gib), s, static_cast<unsigned long long>(before),
                static_cast<unsigned long long>(peak.load()), static_cast<unsigned long long>(hwm_before),
                static_cast<unsigned long long>(hwm_after));
    DeleteLast();
    return static_cast<double>(growth) / 1024.0;
  }

  // Distribution rounds: {berth prepare_ms, virsh ms} medians. Empty when hosts.sh fails.
  std::pair<double, double> Distribution(int rounds) {
    hosts_state_ = "/var/lib/berth/bench-hosts-" + id_;
    auto up = Env::Default()->Run({opts_.hosts_sh, "up", "1", hosts_state_}, {}, 300'000);
    if (!up.ok() || up->exit_code != 0) {
      std::printf("distribution: hosts.sh up failed (%s); skipped\n",
                  up.ok() ? Tail(up->err, 400).c_str() : up.status().ToString().c_str());
      hosts_state_.clear();
      return {0, 0};
    }
    std::istringstream in(up->out);
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("qemu+tcp://", 0) == 0) second_uri_ = line;
    }
    if (second_uri_.empty()) Fail("hosts.sh printed no URI");
    auto add = Http("POST", base_url_ + "/v1/nodes",
                    json{{"name", "second"}, {"uri", second_uri_}, {"accel", "tcg"}, {"labels", {{"bench", "second"}}}}
                        .dump());
    if (add.status != 201) Fail("adding the second node: HTTP " + std::to_string(add.status) + " " + add.body);
    auto img = UploadFile(base_url_ + "/v1/images?name=bench-dist", image_);
    if (img.status != 201) Fail("upload: " + img.body);
    const std::string id = json::parse(img.body).value("id", "");
    const std::string vol = "img-" + id + ".raw";
    const uint64_t size = std::filesystem::file_size(image_);
    std::vector<double> berth_ms, virsh_ms;
    for (int i = 0; i < rounds; ++i) {
      CheckStop();
      // berth: an execution on the second node, whose image volume is absent.
      auto p = Http("POST", base_url_ + "/v1/procs",
                    json{{"image", id}, {"memory_mib", 128}, {"node_selector", {{"bench", "second"}}},
                         {"command", {"true"}}}
                        .dump());
      if (p.status != 201) Fail("exec on the second node: HTTP " + std::to_string(p.status) + " " + p.body);
      const int64_t pid = json::parse(p.body).value("pid", int64_t{0});
      Http("GET", base_url_ + "/v1/procs/" + std::to_string(pid) + "/wait?timeout_ms=120000");
      // The execution record has the phase timings (the image has no /bin/true: the run ends in
      // entrypoint_not_found after its disk was prepared, which is all this measures).
      const std::string exec_id = json::parse(p.body).value("execution_id", "");
      auto rec = json::parse(Http("GET", base_url_ + "/v1/executions/" + exec_id).body, nullptr, false);
      double prep = 0;
      if (rec.is_object() && rec.contains("timings") && rec["timings"].is_object()) {
        prep = rec["timings"].value("prepare_ms", 0.0);
      }
      if (prep <= 0) Fail("no prepare_ms in the execution record: " + rec.dump());
      berth_ms.push_back(prep);
      std::this_thread::sleep_for(std::chrono::seconds(2));  // teardown of the overlay
      TryRun({"virsh", "-q", "-c", second_uri_, "vol-delete", vol, "--pool", pool_});
      // baseline: the same bytes to the same pool with virsh.
      const std::string bvol = "bench-" + id_ + ".raw";
      auto t0 = Clock::now();
      MustRun({"virsh", "-q", "-c", second_uri_, "vol-create-as", pool_, bvol, std::to_string(size), "--format", "raw"});
      MustRun({"virsh", "-q", "-c", second_uri_, "vol-upload", bvol, image_, "--pool", pool_}, 600'000);
      virsh_ms.push_back(MsBetween(t0, Clock::now()));
      TryRun({"virsh", "-q", "-c", second_uri_, "vol-delete", bvol, "--pool", pool_});
      std::printf("distribution round %d: berth prepare %.0f ms, virsh vol-create-as + vol-upload %.0f ms\n", i + 1,
                  berth_ms.back(), virsh_ms.back());
    }
    return {Median(berth_ms), Median(virsh_ms)};
  }

  void Cleanup() {
    if (cleaned_) return;
    cleaned_ = true;
    StopBerthd(&berthd_pid_);
    if (!hosts_state_.empty()) TryRun({opts_.hosts_sh, "down", hosts_state_});
    if (!work_dir_.empty()) RemoveRun(hv_.get(), opts_.uri, opts_.work_root, id_, tmp_dir_);
    // RemoveRun takes /tmp/berth-bench-* only; this run's images live on a disk folder.
    if (tmp_dir_.rfind("/var/tmp/berth-bench-upload-", 0) == 0) (void)Env::Default()->RemoveTree(tmp_dir_);
    hv_.reset();
    ::rmdir(opts_.work_root.c_str());
  }

  const std::string& image() const { return image_; }

 private:
  Options opts_;
  std::string id_, tmp_dir_, work_dir_, pool_, log_pool_, image_, sparse_, base_url_, last_id_;
  std::string hosts_state_, second_uri_;
  pid_t berthd_pid_ = -1;
  std::unique_ptr<berth::hv::Hypervisor> hv_;
  bool cleaned_ = false;
};

int Run(const Options& opts) {
  UploadBench bench(opts);
  try {
    bench.Setup();
    const double mib = static_cast<double>(std::filesystem::file_size(bench.image())) / (1 << 20);
    std::vector<double> berth_rate, cp_rate, curl_rate;
    bench.BerthUpload(bench.image());  // warm-up (page cache, first qemu-img run)
    bench.DeleteLast();
    for (int i = 0; i < opts.rounds; ++i) {
      CheckStop();
      double b = bench.BerthUpload(bench.image());
      bench.DeleteLast();
      double c = bench.CpRound();
      double k = bench.CurlCliUpload(bench.image());
      bench.DeleteLast();
      berth_rate.push_back(mib / b);
      cp_rate.push_back(mib / c);
      curl_rate.push_back(mib / k);
      std::printf("round %d: berth upload %.1f MiB/s, cp+fsync %.1f MiB/s, berth upload by curl -T %.1f MiB/s\n",
                  i + 1, berth_rate.back(), cp_rate.back(), curl_rate.back());
    }
    std::printf("medians: berth upload (libcurl) %.1f MiB/s, by curl -T %.1f MiB/s, cp+fsync %.1f MiB/s\n",
                Median(berth_rate), Median(curl_rate), Median(cp_rate));
    CheckStop();
    const double rss = bench.RssGrowthMiB();
    double dist_berth = 0, dist_virsh = 0;
    if (opts.distribution) std::tie(dist_berth, dist_virsh) = bench.Distribution(opts.rounds);
    bench.Cleanup();
    std::printf("\n");
    PrintResult("upload_throughput", Median(berth_rate), "MiB/s", Median(cp_rate), 0.7);
    PrintResult("upload_rss_growth_sparse" + std::to_string(opts.sparse_gib) + "g", rss, "MiB",
                static_cast<double>(opts.sparse_gib) * 1024, 64.0 / (static_cast<double>(opts.sparse_gib) * 1024));
    if (dist_berth > 0 && dist_virsh > 0) {
      // As throughput (virsh time / berth time): at least 0.9.
      PrintResult("distribution_throughput", mib / (dist_berth / 1000), "MiB/s", mib / (dist_virsh / 1000), 0.9);
    }
    return 0;
  } catch (const std::exception& e) {
    return ExitAfterError("berth-bench-upload", e, [&] { bench.Cleanup(); });
  }
}

}  // namespace

int main(int argc, char** argv) {
  StopOnSignals("berth-bench-upload");

  Options opts;
  CLI::App app{"berth-bench-upload: upload throughput vs cp, RSS while uploading, distribution vs virsh vol-upload"};
  app.add_option("--rounds", opts.rounds, "Measured rounds")->check(CLI::Range(1, 100))->capture_default_str();
  app.add_option("--size-mib", opts.size_mib, "Size of the random image")->check(CLI::Range(16, 65536))->capture_default_str();
  app.add_option("--sparse-gib", opts.sparse_gib, "Size of the sparse image (RSS figure)")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_flag("!--no-distribution", opts.distribution, "Skip the second-node figure (needs root, network namespaces)");
  app.add_option("--runtime-dir", opts.runtime_dir, "Guest runtime folder")->capture_default_str();
  app.add_option("--berthd", opts.berthd, "berthd binary")->capture_default_str();
  app.add_option("--hosts-sh", opts.hosts_sh, "tests/multinode/hosts.sh")->capture_default_str();
  app.add_option("--uri", opts.uri, "libvirt URI")->capture_default_str();
  app.add_option("--work-root", opts.work_root, "World-traversable folder for pools")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  curl_global_init(CURL_GLOBAL_DEFAULT);
  int rc = Run(opts);
  curl_global_cleanup();
  std::fflush(stdout);
  return rc;
}
