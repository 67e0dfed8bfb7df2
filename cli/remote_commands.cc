// `berth` commands that talk to berthd over HTTP: images, functions,
// invocations, execution records, nodes and tokens. The process commands
// (ps, exec, ...) are in cli/proc_commands.cc.
#include <stdlib.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/image_commands.h"

namespace berth::cli {
namespace {

using json = nlohmann::json;

// "[##########..........]  50%  128.0 MiB / 256.0 MiB  42.1 MiB/s" on
// stderr, redrawn at most ten times a second.
class ProgressBar {
 public:
  explicit ProgressBar(uint64_t total) : total_(total), start_(std::chrono::steady_clock::now()) {}
  void Update(uint64_t sent, bool force = false) {
    auto now = std::chrono::steady_clock::now();
    if (!force && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    const double secs = std::chrono::duration<double>(now - start_).count();
    const double frac = total_ ? static_cast<double>(sent) / static_cast<double>(total_) : 1.0;
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(frac * kWidth);
    std::string bar(static_cast<size_t>(filled), '#');
    bar.append(static_cast<size_t>(kWidth - filled), '.');
    const uint64_t rate = secs > 0.05 ? static_cast<uint64_t>(static_cast<double>(sent) / secs) : 0;
    std::fprintf(stderr, "\r[%s] %3d%%  %s / %s  %s/s   ", bar.c_str(), static_cast<int>(frac * 100),
                 Bytes(sent).c_str(), Bytes(total_).c_str(), Bytes(rate).c_str());
    std::fflush(stderr);
  }
  void Done(uint64_t sent) {
    Update(sent, true);
    std::fputc('\n', stderr);
  }

 private:
  uint64_t total_;
  std::chrono::steady_clock::time_point start_, last_{};
};

struct PushArgs {
  std::string source, name, format;
  uint64_t size_mib = 0;
  bool no_progress = false;
};

int RunPush(const Remote& remote, const PushArgs& args) {
  std::string file = args.source;
  std::string tmp_dir;
  std::error_code ec;
  if (std::filesystem::is_directory(args.source, ec)) {
    // A directory becomes an ext4 filesystem image first (as `image build`).
    char tmpl[] = "/tmp/berth-push-XXXXXX";
    if (!mkdtemp(tmpl)) return UsageError("image push: cannot make a temporary folder");
    tmp_dir = tmpl;
    images::RootfsBuildOptions opts;
    opts.source_dir = args.source;
    opts.output_path = tmp_dir + "/image." + (args.format.empty() ? "qcow2" : args.format);
    if (!args.format.empty()) opts.format = args.format;
    opts.size_mib = args.size_mib;
    std::ostringstream built;
    if (int rc = RunImageBuild(Env::Default(), opts, built, std::cerr); rc != 0) {
      std::filesystem::remove_all(tmp_dir, ec);
      return rc;
    }
    if (!remote.json) std::cerr << "berth: built a " << opts.format << " filesystem image of " << args.source << "\n";
    file = opts.output_path;
  } else if (!std::filesystem::is_regular_file(args.source, ec)) {
    return UsageError("image push: " + args.source + " is neither a file nor a directory");
  }

  const uint64_t total = std::filesystem::file_size(file, ec);
  const bool show = !args.no_progress && isatty(STDERR_FILENO);
  ProgressBar bar(total);
  uint64_t last_sent = 0;
  UploadProgress progress;
  if (show) {
    progress = [&](uint64_t sent, uint64_t) {
      last_sent = sent;
      bar.Update(sent);
    };
  }
  // Through an upload session: an interrupted push resumes (cli/image_commands.h).
  ResumablePush rp{remote.api, remote.Token(), file, args.name, args.format};
  rp.progress = progress;
  rp.notes = &std::cerr;
  HttpReply r = PushResumable(rp);
  if (show) bar.Done(r.status ? total : std::max(last_sent, r.body_bytes_sent));
  if (!tmp_dir.empty()) std::filesystem::remove_all(tmp_dir, ec);

  if (!Ok(r)) return Fail(r);
  json img = Body(r);
  if (remote.json) {
    std::cout << Pretty(img) << "\n";
  } else {
    std::cout << img.value("id", "") << "\n";
  }
  return kExitOk;
}

void PrintImages(const json& images) {
  const int64_t now = NowUnixMs();
  std::vector<std::vector<std::string>> rows = {{"ID", "NAME", "FORMAT", "FILESYSTEM", "SIZE", "VIRTUAL", "AGE"}};
  for (const auto& m : images) {
    rows.push_back({ShortId(m.value("id", "")), Text(m, "name"), Text(m, "format"), Text(m, "filesystem"),
                    Bytes(m.value("size_bytes", uint64_t{0})), Bytes(m.value("virtual_size_bytes", uint64_t{0})),
                    Age(m.value("created_ms", int64_t{0}), now)});
  }
  PrintTable(rows);
}

std::string Join(const json& arr) {
  std::string out;
  for (const auto& a : arr) out += (out.empty() ? "" : " ") + (a.is_string() ? a.get<std::string>() : a.dump());
  return out.empty() ? "-" : out;
}

// A function spec's fields as berthd takes them (PUT /v1/functions/{name}):
// what GET answers, minus the read-only bookkeeping.
json SpecOf(const json& record) {
  json spec = record;
  for (const char* k : {"version", "tenant", "created_ms", "updated_ms"}) spec.erase(k);
  return spec;
}

struct FnArgs {
  std::string name, image, cwd, file;
  std::vector<std::string> entrypoint, env;
  int64_t vcpus = 0, memory_mib = 0, timeout_ms = 0;
};

// Overlays the flags on `spec`; false (with *exit_code) on bad input.
bool ApplyFnFlags(const Remote& remote, const FnArgs& fa, json& spec, int* exit_code) {
  if (!fa.image.empty()) {
    std::string id = ResolveImageId(remote, fa.image, exit_code);
    if (id.empty()) return false;
    spec["image"] = id;
  }
  if (!fa.entrypoint.empty()) spec["entrypoint"] = fa.entrypoint;
  if (fa.vcpus) spec["vcpus"] = fa.vcpus;
  if (fa.memory_mib) spec["memory_mib"] = fa.memory_mib;
  if (fa.timeout_ms) spec["timeout_ms"] = fa.timeout_ms;
  if (!fa.cwd.empty()) spec["cwd"] = fa.cwd;
  for (const auto& kv : fa.env) {
    auto eq = kv.find('=');
    if (eq == std::string::npos) {
      *exit_code = UsageError("--env wants KEY=VALUE, got '" + kv + "'");
      return false;
    }
    spec["env"][kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  return true;
}

void AddFnFlags(CLI::App* c, FnArgs& fa) {
  c->add_option("--image", fa.image, "Image id, id prefix or name");
  c->add_option("--vcpus", fa.vcpus, "vCPUs");
  c->add_option("--memory-mib", fa.memory_mib, "Memory in MiB");
  c->add_option("--timeout-ms", fa.timeout_ms, "Kill a run after this long");
  c->add_option("--cwd", fa.cwd, "Working directory of the entrypoint");
  c->add_option("-e,--env", fa.env, "KEY=VALUE (repeatable)")
      ->expected(1)
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  c->add_option("entrypoint", fa.entrypoint, "After --: the command and its arguments");
}

void PrintFunctions(const json& fns) {
  std::vector<std::vector<std::string>> rows = {
      {"NAME", "VERSION", "IMAGE", "VCPUS", "MEMORY", "TIMEOUT", "ENTRYPOINT"}};
  for (const auto& f : fns) {
    rows.push_back({Text(f, "name"), Text(f, "version"), ShortId(f.value("image", "")), Text(f, "vcpus"),
                    Text(f, "memory_mib") + " MiB", Text(f, "timeout_ms") + " ms", Join(f.value("entrypoint", json::array()))});
  }
  PrintTable(rows);
}

struct InvokeArgs {
  std::string name, stdin_file;
  std::vector<std::string> args, env;
};

// invoke NAME [ARGS...]: stdout/stderr of the command on ours, its exit
// status as ours.
int RunInvoke(const Remote& remote, const InvokeArgs& ia) {
  json body = {{"args", ia.args}};
  if (!ia.stdin_file.empty()) {
    std::stringstream ss;
    if (ia.stdin_file == "-") {
      ss << std::cin.rdbuf();
    } else {
      std::ifstream in(ia.stdin_file, std::ios::binary);
      if (!in) return UsageError("invoke: cannot read " + ia.stdin_file);
      ss << in.rdbuf();
    }
    body["stdin"] = ss.str();
  }
  for (const auto& kv : ia.env) {
    auto eq = kv.find('=');
    if (eq == std::string::npos) return UsageError("--env wants KEY=VALUE, got '" + kv + "'");
    body["env"][kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  auto r = remote.Call("POST", "/v1/functions/" + UrlEncode(ia.name) + "/invoke", body.dump());
  if (!Ok(r)) {
    if (remote.json && r.status != 0) std::cout << r.body << "\n";  // the error, with the execution record when there is one
    return Fail(r);
  }
  json j = Body(r);
  if (remote.json) {
    std::cout << Pretty(j) << "\n";
    return ProcessExitStatus(j);
  }
  std::cout << j.value("stdout", "");
  std::cerr << j.value("stderr", "");
  std::string status = j.value("status", "");
  if (status == "timed_out") std::cerr << "berth: execution " << j.value("execution_id", "") << " timed out\n";
  return ProcessExitStatus(j);
}

void AddInvokeFlags(CLI::App* c, InvokeArgs& ia) {
  c->add_option("name", ia.name, "Function")->required();
  c->add_option("args", ia.args, "After --: arguments appended to the entrypoint");
  c->add_option("--stdin-file", ia.stdin_file, "Feed this file as stdin ('-' for ours)");
  c->add_option("-e,--env", ia.env, "KEY=VALUE added to the function's environment (repeatable)")
      ->expected(1)
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
}

}  // namespace

void AddRemoteCommands(CLI::App& app, std::shared_ptr<Remote> remote, int& exit_code) {
  // image push / ls / inspect / rm (the group and `build` come from AddImageCommands).
  CLI::App* image = app.get_subcommand("image");
  auto pa = std::make_shared<PushArgs>();
  auto* push = image->add_subcommand("push", "Upload a disk image file, or build one from a directory and upload it");
  push->add_option("source", pa->source, "qcow2 or raw ext4 image, or a directory to build an image from")
      ->required()
      ->check(CLI::ExistingPath);
  push->add_option("--name", pa->name, "Human-readable name (exec --image and fn --image take it)");
  push->add_option("--format", pa->format, "Claim the format (berthd checks it); for a directory: what to build")
      ->check(CLI::IsMember({"qcow2", "raw"}));
  push->add_option("--size-mib", pa->size_mib, "For a directory: filesystem size (0: automatic)");
  push->add_flag("--no-progress", pa->no_progress, "No progress bar (it is shown only when stderr is a terminal)");
  push->footer("Prints the image id (sha256). Uploads go through a resumable session: after an interruption,\n"
               "run the same push again and it continues where berthd's copy ends.");
  push->callback([=, &exit_code] { exit_code = RunPush(*remote, *pa); });

  image->add_subcommand("ls", "List images")->callback([=, &exit_code] {
    auto r = remote->Call("GET", "/v1/images");
    if (!Ok(r) || remote->json) {
      exit_code = PrintJson(r);
      return;
    }
    PrintImages(Body(r).value("images", json::array()));
  });

  AddImageTagCommand(*image, remote, exit_code);

  auto ref = std::make_shared<std::string>();
  auto* inspect = image->add_subcommand(
      "inspect", "Show an image berthd has (id, id prefix or name), or check a local image file (JSON)");
  inspect->add_option("image", *ref, "Image id, id prefix or name; or a path to a local file")->required();
  inspect->callback([=, &exit_code] {
    std::error_code ec;
    if (std::filesystem::is_regular_file(*ref, ec)) {
      exit_code = RunImageInspect(Env::Default(), *ref, std::cout, std::cerr);
      return;
    }
    std::string id = ResolveImageId(*remote, *ref, &exit_code);
    if (id.empty()) return;
    exit_code = PrintJson(remote->Call("GET", "/v1/images/" + id));
  });

  auto refs = std::make_shared<std::vector<std::string>>();
  auto* irm = image->add_subcommand("rm", "Delete images (refused while a function uses one)");
  irm->add_option("image", *refs, "Image ids, id prefixes or names")->required();
  irm->callback([=, &exit_code] {
    for (const auto& one : *refs) {
      int rc = kExitOk;
      std::string id = ResolveImageId(*remote, one, &rc);
      if (!id.empty()) {
        auto r = remote->Call("DELETE", "/v1/images/" + id);
        if (Ok(r)) {
          std::cout << (remote->json ? Pretty(Body(r)) : id) << "\n";
        } else {
          rc = Fail(r);
        }
      }
      if (rc != kExitOk) exit_code = rc;
    }
  });

  // fn deploy / create / update / ls / get / invoke / rm
  auto* fn = app.add_subcommand("fn", "Manage functions");
  fn->require_subcommand(1);
  auto fa = std::make_shared<FnArgs>();
  auto* deploy = fn->add_subcommand("deploy", "Create a function, or update it (new version) if it exists");
  deploy->add_option("name", fa->name, "Function name (default: \"name\" in --file)");
  deploy->add_option("-f,--file", fa->file, "JSON spec {name, image, entrypoint, vcpus, memory_mib, ...}; flags override it")
      ->check(CLI::ExistingFile);
  AddFnFlags(deploy, *fa);
  deploy->footer("An update keeps every field not given. Examples:\n"
                 "  berth fn deploy echo --image busybox -- /bin/echo\n  berth fn deploy -f echo.json --memory-mib 512");
  deploy->callback([=, &exit_code] {
    json spec = json::object();
    if (!fa->file.empty()) {
      std::ifstream in(fa->file);
      spec = json::parse(in, nullptr, false);
      if (!spec.is_object()) {
        exit_code = UsageError("fn deploy: " + fa->file + " is not a JSON object");
        return;
      }
    }
    std::string name = fa->name.empty() ? spec.value("name", "") : fa->name;
    if (name.empty()) {
      exit_code = UsageError("fn deploy: give the function's name (argument or \"name\" in --file)");
      return;
    }
    auto existing = remote->Call("GET", "/v1/functions/" + UrlEncode(name));
    if (!Ok(existing) && existing.status != 404) {
      exit_code = Fail(existing);
      return;
    }
    const bool update = Ok(existing);
    json merged = update ? SpecOf(Body(existing)) : json::object();
    for (const auto& [k, v] : spec.items()) merged[k] = v;
    merged["name"] = name;
    if (merged.contains("image") && merged["image"].is_string()) {
      // The file may name the image too; berthd wants its id.
      std::string id = ResolveImageId(*remote, merged["image"].get<std::string>(), &exit_code);
      if (id.empty()) return;
      merged["image"] = id;
    }
    if (!ApplyFnFlags(*remote, *fa, merged, &exit_code)) return;
    auto r = update ? remote->Call("PUT", "/v1/functions/" + UrlEncode(name), merged.dump())
                    : remote->Call("POST", "/v1/functions", merged.dump());
    if (!Ok(r) || remote->json) {
      exit_code = PrintJson(r);
      return;
    }
    json f = Body(r);
    std::cout << (update ? "updated " : "created ") << Text(f, "name") << " version " << Text(f, "version") << "\n";
  });
  for (const char* verb : {"create", "update"}) {
    const bool create = std::string(verb) == "create";
    auto* c = fn->add_subcommand(verb, create ? "Register a function (fails if it exists; see deploy)"
                                              : "Replace a function's definition (new version; see deploy)");
    c->add_option("name", fa->name, "Function name")->required();
    AddFnFlags(c, *fa);
    c->get_option("--image")->required();
    c->get_option("entrypoint")->required();
    c->callback([=, &exit_code] {
      json spec = json::object();
      if (create) spec["name"] = fa->name;
      if (!ApplyFnFlags(*remote, *fa, spec, &exit_code)) return;
      exit_code = PrintJson(create ? remote->Call("POST", "/v1/functions", spec.dump())
                                   : remote->Call("PUT", "/v1/functions/" + UrlEncode(fa->name), spec.dump()));
    });
  }
  fn->add_subcommand("ls", "List functions")->callback([=, &exit_code] {
    auto r = remote->Call("GET", "/v1/functions");
    if (!Ok(r) || remote->json) {
      exit_code = PrintJson(r);
      return;
    }
    PrintFunctions(Body(r).value("functions", json::array()));
  });
  auto fn_name = std::make_shared<std::string>();
  auto* get = fn->add_subcommand("get", "Show a function (JSON)");
  get->add_option("name", *fn_name, "Function name")->required();
  get->callback([=, &exit_code] { exit_code = PrintJson(remote->Call("GET", "/v1/functions/" + UrlEncode(*fn_name))); });
  auto* rm = fn->add_subcommand("rm", "Delete a function");
  rm->add_option("name", *fn_name, "Function name")->required();
  rm->callback([=, &exit_code] {
    auto r = remote->Call("DELETE", "/v1/functions/" + UrlEncode(*fn_name));
    if (!Ok(r) || remote->json) {
      exit_code = PrintJson(r);
      return;
    }
    std::cout << "deleted " << *fn_name << "\n";
  });

  auto ia = std::make_shared<InvokeArgs>();
  const char* invoke_help = "Run a function synchronously in a fresh VM; its stdout, stderr and exit status become ours";
  auto* fn_invoke = fn->add_subcommand("invoke", invoke_help);
  AddInvokeFlags(fn_invoke, *ia);
  fn_invoke->callback([=, &exit_code] { exit_code = RunInvoke(*remote, *ia); });
  auto* invoke = app.add_subcommand("invoke", std::string(invoke_help) + " (same as `fn invoke`)");
  AddInvokeFlags(invoke, *ia);
  invoke->callback([=, &exit_code] { exit_code = RunInvoke(*remote, *ia); });

  // executions: durable records, newest first.
  struct ExecutionsArgs {
    std::string id, function, state;
    int64_t since_ms = -1, until_ms = -1, limit = 20;
  };
  auto xa = std::make_shared<ExecutionsArgs>();
  auto* executions = app.add_subcommand("executions", "Execution records, newest first; with an id, that one (JSON)");
  executions->alias("ex");
  executions->add_option("id", xa->id, "Execution id");
  executions->add_option("--function", xa->function, "Only runs of this function");
  executions->add_option("--state", xa->state, "Only these states (comma-separated, e.g. failed,timed_out)");
  executions->add_option("--since-ms", xa->since_ms, "Created at or after (unix ms)");
  executions->add_option("--until-ms", xa->until_ms, "Created before (unix ms)");
  executions->add_option("-n,--limit", xa->limit, "At most this many")->capture_default_str();
  executions->callback([=, &exit_code] {
    if (!xa->id.empty()) {
      exit_code = PrintJson(remote->Call("GET", "/v1/executions/" + UrlEncode(xa->id)));
      return;
    }
    std::string q = "/v1/executions?limit=" + std::to_string(xa->limit);
    if (!xa->function.empty()) q += "&function=" + UrlEncode(xa->function);
    if (!xa->state.empty()) q += "&state=" + UrlEncode(xa->state);
    if (xa->since_ms >= 0) q += "&since_ms=" + std::to_string(xa->since_ms);
    if (xa->until_ms >= 0) q += "&until_ms=" + std::to_string(xa->until_ms);
    auto r = remote->Call("GET", q);
    if (!Ok(r) || remote->json) {
      exit_code = PrintJson(r);
      return;
    }
    const int64_t now = NowUnixMs();
    std::vector<std::vector<std::string>> rows = {
        {"EXECUTION", "PID", "PPID", "STATE", "EXIT", "FUNCTION", "DURATION", "AGE"}};
    for (const auto& e : Body(r).value("executions", json::array())) {
      rows.push_back({Text(e, "execution_id"), Text(e, "pid"), Text(e, "ppid"), Text(e, "status"), Text(e, "exit_code"),
                      Text(e, "function"), Text(e, "duration_ms") + " ms", Age(e.value("created_ms", int64_t{0}), now)});
    }
    PrintTable(rows);
  });

  // nodes [ls] / add / show / rm / cordon / uncordon / drain
  auto* nodes = app.add_subcommand("nodes", "Nodes (libvirt hosts): list, add, show, remove, cordon, uncordon, drain");
  auto print_nodes = [=, &exit_code] {
    auto r = remote->Call("GET", "/v1/nodes");
    if (!Ok(r) || remote->json) {
      exit_code = PrintJson(r);
      return;
    }
    std::vector<std::vector<std::string>> rows = {
        {"NAME", "STATE", "ACCEL", "VCPUS", "MEMORY", "IMAGES/DISK", "EXECUTIONS", "LABELS", "URI"}};
    for (const auto& n : Body(r).value("nodes", json::array())) {
      json cap = n.value("capacity", json::object()), used = n.value("allocated", json::object());
      // Image cache bytes of the pool's capacity ("-" while the pool's space is unknown).
      json disk = n.value("disk", json::object());
      uint64_t pool_bytes = disk.value("pool_capacity_bytes", uint64_t{0});
      std::string disk_text =
          pool_bytes == 0 ? "-" : Bytes(disk.value("image_cache_bytes", uint64_t{0})) + "/" + Bytes(pool_bytes);
      std::string labels;
      if (n.contains("labels") && n["labels"].is_object()) {
        for (auto it = n["labels"].begin(); it != n["labels"].end(); ++it) {
          labels += (labels.empty() ? "" : ",") + it.key() + "=" +
                    (it.value().is_string() ? it.value().get<std::string>() : it.value().dump());
        }
      }
      rows.push_back({Text(n, "name"), Text(n, "state"), Text(n, "accel"), Text(used, "vcpus") + "/" + Text(cap, "vcpus"),
                      Text(used, "memory_mib") + "/" + Text(cap, "memory_mib") + " MiB", disk_text, Text(n, "executions"),
                      labels.empty() ? "-" : labels, Text(n, "uri")});
    }
    PrintTable(rows);
  };
  nodes->callback([=] {
    if (nodes->get_subcommands().empty()) print_nodes();
  });
  nodes->add_subcommand("ls", "List nodes with their state, capacity and what is allocated")->callback(print_nodes);
  struct NodeArgs {
    std::string uri, name, accel;
    std::vector<std::string> labels;
    double cpu_overcommit = 0, memory_overcommit = 0;
    int64_t reserved_memory_mib = -1;
  };
  auto na = std::make_shared<NodeArgs>();
  auto* nadd = nodes->add_subcommand("add", "Register a libvirt host (admin): berth nodes add qemu+tcp://HOST/system");
  nadd->add_option("uri", na->uri, "libvirt URI (qemu:///system, qemu+tcp://, qemu+ssh://, qemu+tls://)")->required();
  nadd->add_option("--name", na->name, "Node name (default: from the URI's host)");
  nadd->add_option("-l,--label", na->labels, "Label k=v (repeatable; partitions for node selectors)");
  nadd->add_option("--accel", na->accel, "kvm | tcg | auto (probe)");
  nadd->add_option("--cpu-overcommit", na->cpu_overcommit, "vCPU overcommit ratio");
  nadd->add_option("--memory-overcommit", na->memory_overcommit, "Memory overcommit ratio");
  nadd->add_option("--reserved-memory-mib", na->reserved_memory_mib, "Memory kept for the host (MiB)");
  nadd->callback([=, &exit_code] {
    json body = {{"uri", na->uri}};
    std::string name = na->name;
    if (name.empty()) {
      // qemu+tcp://user@10.0.0.5:16509/system -> 10-0-0-5
      std::string host = na->uri;
      if (size_t p = host.find("://"); p != std::string::npos) host = host.substr(p + 3);
      host = host.substr(0, host.find('/'));
      if (size_t at = host.rfind('@'); at != std::string::npos) host = host.substr(at + 1);
      host = host.substr(0, host.find(':'));
      for (char c : host) {
        char l = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        name += std::isalnum(static_cast<unsigned char>(l)) ? l : '-';
      }
    }
    if (name.empty()) {
      exit_code = UsageError("cannot derive a node name from '" + na->uri + "'; pass --name");
      return;
    }
    body["name"] = name;
    json labels = json::object();
    for (const auto& kv : na->labels) {
      size_t eq = kv.find('=');
      if (eq == std::string::npos || eq == 0) {
        exit_code = UsageError("label '" + kv + "' is not k=v");
        return;
      }
      labels[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    if (!labels.empty()) body["labels"] = labels;
    if (!na->accel.empty()) body["accel"] = na->accel;
    if (na->cpu_overcommit > 0) body["cpu_overcommit"] = na->cpu_overcommit;
    if (na->memory_overcommit > 0) body["memory_overcommit"] = na->memory_overcommit;
    if (na->reserved_memory_mib >= 0) body["reserved_memory_mib"] = na->reserved_memory_mib;
    auto r = remote->Call("POST", "/v1/nodes", body.dump());
    if (!Ok(r) || remote->json) {
      exit_code = PrintJson(r);
      return;
    }
    json n = Body(r);
    std::cout << "added node " << Text(n, "name") << " (" << Text(n, "uri") << "): " << Text(n, "state") << ", "
              << Text(n, "accel") << ", " << Text(n, "cpus") << " cpus, " << Text(n, "memory_mib") << " MiB\n";
  });
  auto* nshow = nodes->add_subcommand("show", "One node in full (JSON)");
  nshow->add_option("name", na->name, "Node name")->required();
  nshow->callback([=, &exit_code] { exit_code = PrintJson(remote->Call("GET", "/v1/nodes/" + UrlEncode(na->name))); });
  auto* nrm = nodes->add_subcommand("rm", "Remove a node (admin; refused while it runs work: drain it first)");
  nrm->add_option("name", na->name, "Node name")->required();
  nrm->callback([=, &exit_code] {
    auto r = remote->Call("DELETE", "/v1/nodes/" + UrlEncode(na->name));
    if (!Ok(r) || remote->json) {
      exit_code = PrintJson(r);
      return;
    }
    std::cout << "removed node " << na->name << "\n";
  });
  for (const char* action : {"cordon", "uncordon", "drain"}) {
    const std::string a = action;
    auto* sub = nodes->add_subcommand(a, a == "cordon"     ? "No new work on the node (admin)"
                                         : a == "uncordon" ? "Let the node take new work again (admin)"
                                                           : "No new work; cordoned once its executions ended (admin)");
    sub->add_option("name", na->name, "Node name")->required();
    sub->callback([=, &exit_code] {
      auto r = remote->Call("POST", "/v1/nodes/" + UrlEncode(na->name) + "/" + a, "{}");
      if (!Ok(r) || remote->json) {
        exit_code = PrintJson(r);
        return;
      }
      std::cout << "node " << na->name << ": " << Text(Body(r), "state") << "\n";
    });
  }

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
    if (!Ok(r) || remote->json) {
      exit_code = PrintJson(r);
      return;
    }
    std::vector<std::vector<std::string>> rows = {{"ID", "TENANT", "NAME", "ADMIN", "STATE"}};
    for (const auto& t : Body(r).value("tokens", json::array())) {
      rows.push_back({Text(t, "id"), Text(t, "tenant"), Text(t, "name"), t.value("admin", false) ? "yes" : "no",
                      t.value("revoked", false) ? "revoked" : "active"});
    }
    PrintTable(rows);
  });
  auto* trm = token->add_subcommand("rm", "Revoke a token");
  trm->add_option("id", ta->id, "Token id")->required();
  trm->callback([=, &exit_code] {
    auto r = remote->Call("DELETE", "/v1/tokens/" + UrlEncode(ta->id));
    if (!Ok(r) || remote->json) {
      exit_code = PrintJson(r);
      return;
    }
    std::cout << "revoked " << ta->id << "\n";
  });
}

}  // namespace berth::cli
