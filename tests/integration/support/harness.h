// Integration harness: a real berthd process against the real local libvirtd,
// spoken to over real HTTP (libcurl), inspected with real virsh.
//
// Each BerthdProcess gets its own data dir and its own pair of storage pools,
// so tests never see (or remove) anything of another berthd.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace berth::testing {

struct HttpResult {
  long status = 0;
  std::string body;
  nlohmann::json json() const { return nlohmann::json::parse(body, nullptr, false); }
};

// One HTTP request; a non-empty `token` is sent as "Authorization: Bearer <token>".
HttpResult HttpCall(const std::string& method, const std::string& url, const std::string& body = {},
                    const std::string& content_type = "application/json", const std::string& token = {});

// Runs a command through the shell; returns stdout (exit status in *code).
std::string Shell(const std::string& cmd, int* code = nullptr);

// Guest runtime folder: $BERTH_RUNTIME_DIR or <build>/runtime.
std::string RuntimeDir();
// A qcow2 image of the runtime's busybox root filesystem, built once per process.
std::string BusyboxImagePath();

class BerthdProcess {
 public:
  // Starts berthd with --accel tcg (plus extra args) and waits for /v1/health.
  explicit BerthdProcess(std::vector<std::string> extra_args = {});
  ~BerthdProcess();  // stops berthd, removes its pools and folders

  bool running() const { return pid_ > 0; }
  const std::string& base_url() const { return base_url_; }
  const std::string& pool() const { return pool_; }
  const std::string& log_pool() const { return log_pool_; }
  std::string log() const;

  const std::string& data_dir() const { return data_dir_; }
  // The admin token berthd wrote to <data dir>/admin.token (read after each start).
  const std::string& admin_token() const { return admin_token_; }

  // Requests with the admin token.
  HttpResult Call(const std::string& method, const std::string& path, const std::string& body = {},
                  const std::string& content_type = "application/json") const {
    return HttpCall(method, base_url_ + path, body, content_type, admin_token_);
  }
  HttpResult Get(const std::string& path) const { return Call("GET", path); }
  HttpResult Post(const std::string& path, const std::string& body) const { return Call("POST", path, body); }
  // Requests with another token ("" sends no Authorization header).
  HttpResult CallAs(const std::string& token, const std::string& method, const std::string& path,
                    const std::string& body = {}, const std::string& content_type = "application/json") const {
    return HttpCall(method, base_url_ + path, body, content_type, token);
  }
  // Creates a token for `tenant` with the admin token; returns its secret.
  std::string CreateToken(const std::string& tenant, const std::string& name = "test") const;

  // Uploads the busybox image (with `token`, default the admin's); returns its id.
  std::string UploadBusybox() const { return UploadBusybox(admin_token_); }
  std::string UploadBusybox(const std::string& token) const;
  // Registers a function (JSON fields merged over sane defaults).
  HttpResult CreateFunction(const std::string& name, const std::string& image, const nlohmann::json& fields) const {
    return CreateFunctionAs(admin_token_, name, image, fields);
  }
  HttpResult CreateFunctionAs(const std::string& token, const std::string& name, const std::string& image,
                              const nlohmann::json& fields) const;

  // Stops berthd with SIGTERM and waits for it to exit; after timeout_ms it
  // is killed (SIGKILL) instead and Stop returns false.
  bool Stop(int timeout_ms = 60000);
  // Kills berthd with SIGKILL (a crash: no cleanup runs) and waits.
  void Kill();
  // Starts berthd again on the same data dir and pools; false if it fails.
  bool Start();

 private:
  int pid_ = -1;
  std::vector<std::string> args_;
  std::string dir_, data_dir_, base_url_, pool_, log_pool_, pool_dir_, log_dir_;
  std::string admin_token_;
};

// Waits (at most timeout_ms) until the execution's domain, overlay and
// console log are gone from the node: teardown runs after the answer.
// Returns what is still there ("" when all is gone).
std::string WaitForTeardown(const BerthdProcess& daemon, const std::string& execution_id, int timeout_ms = 20000);

// True if `virsh list` shows a running domain with this name.
bool DomainRunning(const std::string& name);
// Names of volumes in a pool (after a refresh).
std::vector<std::string> PoolVolumes(const std::string& pool);

}  // namespace berth::testing
