#include "tests/integration/support/harness.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "cli/http_client.h"
#include "common/env.h"
#include "common/ids.h"
#include "images/rootfs_builder.h"

namespace berth::testing {
namespace {

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

HttpResult HttpCall(const std::string& method, const std::string& url, const std::string& body,
                    const std::string& content_type, const std::string& token) {
  cli::HttpReply r = cli::HttpRequest(method, url, token, body, content_type);
  return {r.status, std::move(r.body)};
}

std::string Shell(const std::string& cmd, int* code) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) throw std::runtime_error("popen failed");
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int status = pclose(p);
  if (code) *code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

std::string RuntimeDir() {
  if (const char* d = std::getenv("BERTH_RUNTIME_DIR")) return d;
  return std::string(BERTH_BINARY_DIR) + "/runtime";
}

std::string BusyboxImagePath() {
  static std::once_flag once;
  static std::string path;
  std::call_once(once, [] {
    char tmpl[] = "/tmp/berth-img-XXXXXX";
    std::string dir = mkdtemp(tmpl);
    path = dir + "/busybox.qcow2";
    images::RootfsBuildOptions opts;
    opts.source_dir = RuntimeDir() + "/rootfs-busybox";
    opts.output_path = path;
    Status s = images::BuildRootfsImage(Env::Default(), opts);
    if (!s.ok()) throw std::runtime_error("building busybox image: " + s.ToString());
  });
  return path;
}

BerthdProcess::BerthdProcess(std::vector<std::string> extra_args) {
  std::string id = RandomHex(8);
  char tmpl[] = "/tmp/berthd-it-XXXXXX";
  dir_ = mkdtemp(tmpl);
  data_dir_ = dir_ + "/data";
  pool_ = "berth-it-" + id;
  log_pool_ = "berth-it-" + id + "-logs";
  pool_dir_ = "/var/lib/berth/it/" + id + "/pool";
  log_dir_ = "/var/lib/berth/it/" + id + "/logs";
  std::string port_file = dir_ + "/port";
  std::vector<std::string> args = {std::string(BERTH_BINARY_DIR) + "/daemon/berthd",
                                   "--data-dir", data_dir_,
                                   "--runtime-dir", RuntimeDir(),
                                   "--port", "0",
                                   "--port-file", port_file,
                                   "--pool", pool_,
                                   "--pool-dir", pool_dir_,
                                   "--log-pool", log_pool_,
                                   "--log-dir", log_dir_};
  // TCG unless the test picks: probing KVM costs seconds on every start.
  if (std::find(extra_args.begin(), extra_args.end(), "--accel") == extra_args.end()) {
    args.insert(args.end(), {"--accel", "tcg"});
  }
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  args_ = std::move(args);
  Start();
}

bool BerthdProcess::Start() {
  std::string port_file = dir_ + "/port";
  std::remove(port_file.c_str());
  std::string log_path = dir_ + "/berthd.log";
  pid_ = fork();
  if (pid_ == 0) {
    FILE* f = freopen(log_path.c_str(), "a", stderr);
    (void)f;
    dup2(2, 1);
    std::vector<char*> argv;
    for (auto& a : args_) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  for (int i = 0; i < 1200; ++i) {
    int status;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return false;
    }
    std::string port = ReadAll(port_file);
    if (!port.empty() && port.back() == '\n') {
      base_url_ = "http://127.0.0.1:" + port.substr(0, port.size() - 1);
      if (HttpCall("GET", base_url_ + "/v1/health").status == 200) {
        admin_token_ = ReadAll(data_dir_ + "/admin.token");
        while (!admin_token_.empty() && (admin_token_.back() == '\n' || admin_token_.back() == ' ')) {
          admin_token_.pop_back();
        }
        return true;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

std::string BerthdProcess::log() const { return ReadAll(dir_ + "/berthd.log"); }

void BerthdProcess::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

bool BerthdProcess::Stop(int timeout_ms) {
  if (pid_ <= 0) return true;
  kill(pid_, SIGTERM);
  int status;
  for (int waited = 0; waited < timeout_ms; waited += 50) {
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  // A stop that hangs must fail its test, not the whole suite's time limit.
  std::cerr << "harness: berthd (pid " << pid_ << ") did not stop within " << timeout_ms
            << " ms of SIGTERM; killing it\n";
  Kill();
  return false;
}

BerthdProcess::~BerthdProcess() {
  Stop();
  // A domain still using this berthd's pools after it stopped is a leak:
  // say so (tests that check cleanliness fail on it) and end it, so one
  // test's leak does not outlive its pools and burden the rest.
  std::string stray = Shell("for d in $(virsh -q -c qemu:///system list --name); do virsh -q -c qemu:///system dumpxml "
                            "\"$d\" 2>/dev/null | grep -q '" + pool_dir_ + "/' && echo \"$d\"; done");
  if (!stray.empty()) {
    std::cerr << "harness: domains left running on " << pool_ << " after berthd stopped:\n" << stray;
    Shell("for d in " + stray + "; do virsh -q -c qemu:///system destroy \"$d\" >/dev/null 2>&1; done");
  }
  for (const auto& p : {pool_, log_pool_}) {
    Shell("virsh -q -c qemu:///system pool-destroy " + p + " >/dev/null 2>&1; virsh -q -c qemu:///system pool-undefine " +
          p + " >/dev/null 2>&1");
  }
  // pool_dir_ and log_dir_ share one parent folder of this process.
  Shell("rm -rf " + pool_dir_.substr(0, pool_dir_.rfind('/')) + " " + dir_);
}

std::string BerthdProcess::CreateToken(const std::string& tenant, const std::string& name) const {
  auto r = Post("/v1/tokens", nlohmann::json{{"tenant", tenant}, {"name", name}}.dump());
  if (r.status != 201) throw std::runtime_error("token creation failed: " + std::to_string(r.status) + " " + r.body);
  return r.json()["token"].get<std::string>();
}

std::string BerthdProcess::UploadBusybox(const std::string& token) const {
  std::string bytes = ReadAll(BusyboxImagePath());
  auto r = CallAs(token, "POST", "/v1/images?name=busybox", bytes, "application/octet-stream");
  if (r.status != 201) throw std::runtime_error("upload failed: " + std::to_string(r.status) + " " + r.body);
  return r.json()["id"].get<std::string>();
}

HttpResult BerthdProcess::CreateFunctionAs(const std::string& token, const std::string& name, const std::string& image,
                                           const nlohmann::json& fields) const {
  nlohmann::json spec = {{"name", name}, {"image", image}, {"entrypoint", {"/bin/true"}},
                         {"memory_mib", 192}, {"timeout_ms", 30000}};
  for (auto it = fields.begin(); it != fields.end(); ++it) spec[it.key()] = it.value();
  return CallAs(token, "POST", "/v1/functions", spec.dump());
}

std::string WaitForTeardown(const BerthdProcess& daemon, const std::string& execution_id, int timeout_ms) {
  // Domain names say tenant, pid and a short id: ask berthd for this one's.
  std::string domain = "berth-" + execution_id;
  auto rec = daemon.Get("/v1/executions/" + execution_id).json();
  if (rec.is_object() && rec.contains("domain")) domain = rec["domain"].get<std::string>();
  std::string left;
  for (int waited = 0;; waited += 250) {
    left.clear();
    if (DomainRunning(domain)) left += " domain " + domain;
    for (const auto& v : PoolVolumes(daemon.pool())) {
      if (v.find(execution_id) != std::string::npos) left += " volume " + v;
    }
    for (const auto& v : PoolVolumes(daemon.log_pool())) {
      if (v.find(execution_id) != std::string::npos || v.rfind(domain, 0) == 0) left += " console log " + v;
    }
    if (left.empty() || waited >= timeout_ms) return left;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
}

bool DomainRunning(const std::string& name) {
  std::string names = Shell("virsh -q -c qemu:///system list --name");
  std::istringstream in(names);
  std::string line;
  while (std::getline(in, line)) {
    if (line == name) return true;
  }
  return false;
}

std::vector<std::string> PoolVolumes(const std::string& pool) {
  Shell("virsh -q -c qemu:///system pool-refresh " + pool + " >/dev/null 2>&1");
  std::string out = Shell("virsh -q -c qemu:///system vol-list " + pool + " 2>/dev/null | awk '{print $1}'");
  std::vector<std::string> vols;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) vols.push_back(line);
  }
  return vols;
}

}  // namespace berth::testing
