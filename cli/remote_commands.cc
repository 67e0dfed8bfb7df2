// `berth` commands that talk to berthd over HTTP: images, functions,
// invocations and the execution list (`ps`).
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/http_client.h"

namespace berth::cli {
namespace {

using json = nlohmann::json;

constexpr const char* kDefaultTokenFile = "/var/lib/berth/admin.token";

struct Remote {
  std::string api = "http://127.0.0.1:8470";
  std::string token;  // --token or BERTH_TOKEN

  // The token to send: --token, else $BERTH_TOKEN, else the local admin
  // token file when it is readable, else none (berthd answers 401).
  std::string Token() const {
    if (!token.empty()) return token;
    std::ifstream in(kDefaultTokenFile);
    std::string t;
    if (in) std::getline(in, t);
    while (!t.empty() && (t.back() == '\r' || t.back() == ' ')) t.pop_back();
    return t;
  }
  HttpReply Call(const std::string& method, const std::string& path, const std::string& body = {}) const {
    return HttpRequest(method, api + path, Token(), body);
  }
  HttpReply Upload(const std::string& path, const std::string& file) const {
    return HttpUploadFile(api + path, Token(), file);
  }
};

// Prints an API error (or a transport failure) on stderr; returns an exit code.
int Fail(const HttpReply& r) {
  if (r.status == 0) {
    std::cerr << "berth: cannot reach berthd: " << r.error << " (is berthd running? see --api / BERTH_API)\n";
    return 1;
  }
  if (r.status == 401) {
    std::cerr << "berth: not authenticated (pass --token, set BERTH_TOKEN, or make " << kDefaultTokenFile
              << " readable)\n";
  }
  auto j = json::parse(r.body, nullptr, false);
  if (j.is_object() && j.contains("error")) {
    std::cerr << "berth: " << j["error"].value("message", "error");
    if (j["error"].contains("field")) std::cerr << " (field " << j["error"]["field"].get<std::string>() << ")";
    std::cerr << "\n";
  } else {
    std::cerr << "berth: HTTP " << r.status << ": " << r.body << "\n";
  }
  return 1;
}

int PrintJson(const HttpReply& r) {
  if (r.status < 200 || r.status >= 300) return Fail(r);
  auto j = json::parse(r.body, nullptr, false);
  std::cout << (j.is_discarded() ? r.body : j.dump(2)) << "\n";
  return 0;
}

}  // namespace

void AddRemoteCommands(CLI::App& app, int& exit_code) {
  auto remote = std::make_shared<Remote>();
  if (const char* env = std::getenv("BERTH_URL")) remote->api = env;
  if (const char* env = std::getenv("BERTH_API")) remote->api = env;
  if (const char* env = std::getenv("BERTH_TOKEN")) remote->token = env;
  app.add_option("--api", remote->api, "berthd address (env BERTH_API or BERTH_URL)")->capture_default_str();
  app.add_option("--token", remote->token,
                 std::string("API token (env BERTH_TOKEN; default: ") + kDefaultTokenFile + " if readable)");

  // image push / ls (the image group itself is made by AddImageCommands).
  CLI::App* image = app.get_subcommand("image");
  auto push_file = std::make_shared<std::string>();
  auto push_name = std::make_shared<std::string>();
  auto* push = image->add_subcommand("push", "Upload a disk image to berthd");
  push->add_option("file", *push_file, "qcow2 or raw ext4 image")->required()->check(CLI::ExistingFile);
  push->add_option("--name", *push_name, "Human-readable name");
  push->callback([=, &exit_code] {
    exit_code = PrintJson(remote->Upload("/v1/images?name=" + *push_name, *push_file));
  });
  image->add_subcommand("ls", "List images")->callback([=, &exit_code] {
    exit_code = PrintJson(remote->Call("GET", "/v1/images"));
  });

  // fn create / update / ls / get / rm
  auto* fn = app.add_subcommand("fn", "Manage functions");
  fn->require_subcommand(1);
  struct FnArgs {
    std::string name, image, cwd;
    std::vector<std::string> entrypoint, env;
    int64_t vcpus = 0, memory_mib = 0, timeout_ms = 0;
  };
  auto fa = std::make_shared<FnArgs>();
  for (const char* verb : {"create", "update"}) {
    bool create = std::string(verb) == "create";
    auto* c = fn->add_subcommand(verb, create ? "Register a function" : "Replace a function's definition (new version)");
    c->add_option("name", fa->name)->required();
    c->add_option("--image", fa->image, "Image id (sha256)")->required();
    c->add_option("--vcpus", fa->vcpus);
    c->add_option("--memory-mib", fa->memory_mib);
    c->add_option("--timeout-ms", fa->timeout_ms);
    c->add_option("--cwd", fa->cwd);
    c->add_option("--env", fa->env, "KEY=VALUE (repeatable)");
    c->add_option("entrypoint", fa->entrypoint, "Command and arguments (after --)")->required();
    c->callback([=, &exit_code] {
      json spec = {{"image", fa->image}, {"entrypoint", fa->entrypoint}};
      if (create) spec["name"] = fa->name;
      if (fa->vcpus) spec["vcpus"] = fa->vcpus;
      if (fa->memory_mib) spec["memory_mib"] = fa->memory_mib;
      if (fa->timeout_ms) spec["timeout_ms"] = fa->timeout_ms;
      if (!fa->cwd.empty()) spec["cwd"] = fa->cwd;
      json env = json::object();
      for (const auto& kv : fa->env) {
        auto eq = kv.find('=');
        if (eq == std::string::npos) {
          std::cerr << "berth: --env wants KEY=VALUE, got '" << kv << "'\n";
          exit_code = 2;
          return;
        }
        env[kv.substr(0, eq)] = kv.substr(eq + 1);
      }
      if (!env.empty()) spec["env"] = env;
      exit_code = create ? PrintJson(remote->Call("POST", "/v1/functions", spec.dump()))
                         : PrintJson(remote->Call("PUT", "/v1/functions/" + fa->name, spec.dump()));
    });
  }
  fn->add_subcommand("ls", "List functions")->callback([=, &exit_code] {
    exit_code = PrintJson(remote->Call("GET", "/v1/functions"));
  });
  auto fn_name = std::make_shared<std::string>();
  auto* get = fn->add_subcommand("get", "Show a function");
  get->add_option("name", *fn_name)->required();
  get->callback([=, &exit_code] { exit_code = PrintJson(remote->Call("GET", "/v1/functions/" + *fn_name)); });
  auto* rm = fn->add_subcommand("rm", "Delete a function");
  rm->add_option("name", *fn_name)->required();
  rm->callback([=, &exit_code] { exit_code = PrintJson(remote->Call("DELETE", "/v1/functions/" + *fn_name)); });

  // invoke NAME [ARGS...]: stdout/stderr of the command on ours, its exit code as ours.
  struct InvokeArgs {
    std::string name, stdin_file;
    std::vector<std::string> args;
    bool json_out = false;
  };
  auto ia = std::make_shared<InvokeArgs>();
  auto* invoke = app.add_subcommand("invoke", "Run a function synchronously in a fresh VM");
  invoke->add_option("name", ia->name)->required();
  invoke->add_option("args", ia->args, "Arguments appended to the entrypoint (after --)");
  invoke->add_option("--stdin-file", ia->stdin_file, "Feed this file as stdin ('-' for ours)");
  invoke->add_flag("--json", ia->json_out, "Print the execution record as JSON");
  invoke->callback([=, &exit_code] {
    json body = {{"args", ia->args}};
    if (!ia->stdin_file.empty()) {
      std::stringstream ss;
      if (ia->stdin_file == "-") {
        ss << std::cin.rdbuf();
      } else {
        std::ifstream in(ia->stdin_file, std::ios::binary);
        ss << in.rdbuf();
      }
      body["stdin"] = ss.str();
    }
    auto r = remote->Call("POST", "/v1/functions/" + ia->name + "/invoke", body.dump());
    if (ia->json_out) {
      exit_code = PrintJson(r);
      return;
    }
    if (r.status != 200) {
      exit_code = Fail(r);
      return;
    }
    auto j = json::parse(r.body);
    std::cout << j.value("stdout", "");
    std::cerr << j.value("stderr", "");
    std::string status = j.value("status", "");
    if (status == "timed_out") std::cerr << "berth: execution " << j.value("execution_id", "") << " timed out\n";
    exit_code = j["exit_code"].is_number() ? j["exit_code"].get<int>() : 1;
  });

  // token create / ls / rm
  auto* token = app.add_subcommand("token", "Manage API tokens");
  token->require_subcommand(1);
  struct TokenArgs {
    std::string tenant, name, id;
  };
  auto ta = std::make_shared<TokenArgs>();
  auto* tcreate = token->add_subcommand("create", "Create a token for a tenant (admin only; prints the secret once)");
  tcreate->add_option("tenant", ta->tenant, "Tenant (created if new)")->required();
  tcreate->add_option("--name", ta->name, "Label of the token");
  tcreate->callback([=, &exit_code] {
    json body = {{"tenant", ta->tenant}};
    if (!ta->name.empty()) body["name"] = ta->name;
    exit_code = PrintJson(remote->Call("POST", "/v1/tokens", body.dump()));
  });
  token->add_subcommand("ls", "List tokens (never their secrets)")->callback([=, &exit_code] {
    auto r = remote->Call("GET", "/v1/tokens");
    if (r.status != 200) {
      exit_code = Fail(r);
      return;
    }
    std::printf("%-14s %-20s %-20s %-6s %s\n", "ID", "TENANT", "NAME", "ADMIN", "STATE");
    const json list = json::parse(r.body, nullptr, false);
    for (const auto& t : list.value("tokens", json::array())) {
      std::printf("%-14s %-20s %-20s %-6s %s\n", t.value("id", "").c_str(), t.value("tenant", "").c_str(),
                  t.value("name", "").c_str(), t.value("admin", false) ? "yes" : "no",
                  t.value("revoked", false) ? "revoked" : "active");
    }
  });
  auto* trm = token->add_subcommand("rm", "Revoke a token");
  trm->add_option("id", ta->id)->required();
  trm->callback([=, &exit_code] { exit_code = PrintJson(remote->Call("DELETE", "/v1/tokens/" + ta->id)); });

  // ps: executions, newest first.
  auto limit = std::make_shared<int>(20);
  auto* ps = app.add_subcommand("ps", "List executions (newest first)");
  ps->add_option("-n,--limit", *limit)->capture_default_str();
  ps->callback([=, &exit_code] {
    auto r = remote->Call("GET", "/v1/executions?limit=" + std::to_string(*limit));
    if (r.status != 200) {
      exit_code = Fail(r);
      return;
    }
    std::printf("%-8s %-8s %-10s %-5s %-20s %s\n", "PID", "PPID", "STATUS", "EXIT", "FUNCTION", "EXECUTION");
    const json list = json::parse(r.body, nullptr, false);
    for (const auto& e : list.value("executions", json::array())) {
      std::string exit = e["exit_code"].is_number() ? std::to_string(e["exit_code"].get<int>()) : "-";
      std::printf("%-8lld %-8lld %-10s %-5s %-20s %s\n", static_cast<long long>(e["pid"].get<int64_t>()),
                  static_cast<long long>(e["ppid"].get<int64_t>()), e["status"].get<std::string>().c_str(),
                  exit.c_str(), e["function"].get<std::string>().c_str(), e["execution_id"].get<std::string>().c_str());
    }
  });
}

}  // namespace berth::cli
