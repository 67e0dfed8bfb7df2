// `berth ps|exec|fork|kill|wait|logs`: berthd's VMs as processes (seed 001).
// pid 0 ("kernel") and pid 1 ("init") are the roots; every VM descends from
// init.
#include <algorithm>
#include <chrono>
#include <csignal>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "cli/commands.h"

namespace berth::cli {
namespace {

using json = nlohmann::json;

bool IsTerminalState(const std::string& s) {
  return s == "succeeded" || s == "failed" || s == "timed_out" || s == "killed" || s == "lost" || s == "error";
}

std::string SignalName(int sig) {
  if (sig == SIGKILL) return "SIGKILL";
  if (sig == SIGTERM) return "SIGTERM";
  return "signal " + std::to_string(sig);
}

// One line of the tree view: "5 web1  running  instance  1a2b3c4d5e6f".
std::string TreeLabel(const json& p) {
  std::string label = Text(p, "pid") + " " + Text(p, "name");
  if (p.value("kind", "") == "root") return label;
  label += "  " + Text(p, "status") + "  " + Text(p, "kind");
  std::string img = p.value("image", "");
  if (!img.empty()) label += "  " + ShortId(img);
  return label;
}

void PrintTree(const json& procs) {
  std::map<int64_t, json> by_pid;
  std::map<int64_t, std::vector<int64_t>> kids;
  for (const auto& p : procs) by_pid[p.value("pid", int64_t{-1})] = p;
  for (const auto& [pid, p] : by_pid) {
    if (pid <= 1) continue;
    int64_t ppid = p.value("ppid", int64_t{1});
    // A process whose parent is not listed (ended, without --all) hangs
    // under init, as an orphan does.
    kids[by_pid.count(ppid) && ppid != pid ? ppid : 1].push_back(pid);
  }
  std::cout << TreeLabel(by_pid.count(1) ? by_pid[1] : json{{"pid", 1}, {"name", "init"}, {"kind", "root"}}) << "\n";
  // Depth-first, children by pid; `prefix` carries the vertical bars.
  std::function<void(int64_t, const std::string&)> walk = [&](int64_t pid, const std::string& prefix) {
    const auto& list = kids[pid];
    for (size_t i = 0; i < list.size(); ++i) {
      bool last = i + 1 == list.size();
      const json& p = by_pid[list[i]];
      std::string label = TreeLabel(p);
      int64_t ppid = p.value("ppid", int64_t{1});
      if (pid == 1 && ppid != 1) label += "  (parent " + std::to_string(ppid) + " not listed)";
      std::cout << prefix << (last ? "└─ " : "├─ ") << label << "\n";
      walk(list[i], prefix + (last ? "   " : "│  "));
    }
  };
  walk(1, "");
}

// Reads --userdata-file / --stdin-file ("-" = our stdin).
bool ReadInput(const std::string& path, std::string* out) {
  std::stringstream ss;
  if (path == "-") {
    ss << std::cin.rdbuf();
  } else {
    std::ifstream in(path, std::ios::binary);
    if (!in) return false;
    ss << in.rdbuf();
  }
  *out = ss.str();
  return true;
}

std::string Describe(const json& rec) {
  std::string state = rec.value("status", "");
  std::string out = "pid " + Text(rec, "pid") + " " + state;
  int sig = rec.value("signal", 0);
  if (state == "killed" || state == "timed_out") {
    out += " (" + SignalName(sig > 0 ? sig : SIGKILL) + ")";
  } else if (rec.contains("exit_code") && rec["exit_code"].is_number()) {
    out += " (exit " + std::to_string(rec["exit_code"].get<int>()) + ")";
  }
  if (state != "killed" && rec.contains("error") && rec["error"].is_string()) {
    out += ": " + rec["error"].get<std::string>();
  }
  return out;
}

// Bytes of `now` not yet printed, given everything printed so far. Streams
// that only grow (stdout, stderr) continue where they were; a console that
// keeps only its tail is matched on the end of what was printed.
std::string NewBytes(const std::string& printed, const std::string& now) {
  if (now.size() >= printed.size() && now.compare(0, printed.size(), printed) == 0) return now.substr(printed.size());
  std::string tail = printed.substr(printed.size() > 1024 ? printed.size() - 1024 : 0);
  if (tail.empty()) return now;
  size_t at = now.rfind(tail);
  return at == std::string::npos ? now : now.substr(at + tail.size());
}

// A process berthd just started: its pid (with --json, berthd's record).
int PrintStartedPid(const Remote& remote, const HttpReply& r) {
  if (!Ok(r) || remote.json) return PrintJson(r);
  std::cout << Text(Body(r), "pid") << "\n";
  return kExitOk;
}

}  // namespace

void AddProcCommands(CLI::App& app, std::shared_ptr<Remote> remote, int& exit_code) {
  // ps
  struct PsArgs {
    bool all = false, tree = false;
  };
  auto pa = std::make_shared<PsArgs>();
  auto* ps = app.add_subcommand("ps", "List processes (VMs): the roots kernel (0) and init (1), then live ones");
  ps->add_flag("-a,--all", pa->all, "Include processes that have ended");
  ps->add_flag("-t,--tree", pa->tree, "Draw the pid/ppid tree from init");
  ps->callback([=, &exit_code] {
    auto r = remote->Call("GET", std::string("/v1/procs") + (pa->all ? "?all=1" : ""));
    if (!Ok(r)) {
      exit_code = Fail(r);
      return;
    }
    json procs = Body(r).value("procs", json::array());
    if (remote->json) {
      std::cout << Pretty(procs) << "\n";
      return;
    }
    if (pa->tree) {
      PrintTree(procs);
      return;
    }
    const int64_t now = NowUnixMs();
    std::vector<std::vector<std::string>> rows = {{"PID", "PPID", "STATE", "KIND", "NAME", "IMAGE", "AGE", "ADDR"}};
    for (const auto& p : procs) {
      std::string addr;  // guest IPv4 addresses (network mode egress/isolated)
      for (const auto& a : p.value("addresses", json::array())) addr += (addr.empty() ? "" : ",") + a.get<std::string>();
      rows.push_back({Text(p, "pid"), Text(p, "ppid"), Text(p, "status"), Text(p, "kind"), Text(p, "name"),
                      ShortId(p.value("image", "")), Age(p.value("created_ms", int64_t{0}), now),
                      addr.empty() ? "-" : addr});
    }
    PrintTable(rows);
  });

  // exec
  struct ExecArgs {
    int64_t ppid = 1;
    std::string name, image, function, userdata, userdata_file, boot, stdin_file;
    std::vector<std::string> rest, env;
    int64_t vcpus = 0, memory = 0, timeout_ms = -1;
  };
  auto ea = std::make_shared<ExecArgs>();
  auto* exec = app.add_subcommand("exec", "Start a process: an instance of an image, or a run of a function; prints its pid");
  exec->add_option("--ppid", ea->ppid, "Parent pid (1: init, or a live process)")->capture_default_str();
  exec->add_option("--name", ea->name, "Process name");
  auto* image_opt = exec->add_option("--image", ea->image, "Image id or name: start an instance of it");
  auto* fn_opt = exec->add_option("--function", ea->function, "Function: start a run of it");
  image_opt->excludes(fn_opt);
  auto* ud = exec->add_option("--userdata", ea->userdata, "User-data for the instance (cloud-init for disk boot)");
  exec->add_option("--userdata-file", ea->userdata_file, "Read the user-data from this file ('-': stdin)")
      ->excludes(ud);
  exec->add_option("--boot", ea->boot, "runtime: berth's kernel and agent run the command; disk: the image's own")
      ->check(CLI::IsMember({"runtime", "disk"}));
  exec->add_option("--vcpus", ea->vcpus, "vCPUs (instances)");
  exec->add_option("--memory", ea->memory, "Memory in MiB (instances)");
  exec->add_option("--timeout-ms", ea->timeout_ms, "Kill the process after this long (0: no limit)");
  exec->add_option("-e,--env", ea->env, "KEY=VALUE (repeatable)")
      ->expected(1)
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  exec->add_option("--stdin-file", ea->stdin_file, "Feed this file to the command's stdin ('-': ours)");
  exec->add_option("command", ea->rest, "After --: the instance's command, or the function's extra args");
  exec->footer("Examples:\n  berth exec --image busybox --name web -- /bin/sh -c 'echo hi; sleep 600'\n"
               "  berth exec --function echo -- hello world\n  berth exec --ppid 5 --image disk-os --boot disk "
               "--userdata-file cloud.yaml");
  exec->callback([=, &exit_code] {
    if (ea->image.empty() == ea->function.empty()) {
      exit_code = UsageError("exec: give exactly one of --image or --function");
      return;
    }
    json body = {{"ppid", ea->ppid}};
    if (!ea->name.empty()) body["name"] = ea->name;
    if (!ea->image.empty()) {
      body["image"] = ea->image;
      if (!ea->rest.empty()) body["command"] = ea->rest;
    } else {
      body["function"] = ea->function;
      if (!ea->rest.empty()) body["args"] = ea->rest;
    }
    std::string userdata = ea->userdata;
    if (!ea->userdata_file.empty() && !ReadInput(ea->userdata_file, &userdata)) {
      exit_code = UsageError("exec: cannot read " + ea->userdata_file);
      return;
    }
    if (!userdata.empty()) body["userdata"] = userdata;
    if (!ea->stdin_file.empty()) {
      std::string data;
      if (!ReadInput(ea->stdin_file, &data)) {
        exit_code = UsageError("exec: cannot read " + ea->stdin_file);
        return;
      }
      body["stdin"] = data;
    }
    if (!ea->boot.empty()) body["boot"] = ea->boot;
    // Sent as given (even nonsense): berthd's range checks name the field.
    if (ea->vcpus) body["vcpus"] = ea->vcpus;
    if (ea->memory) body["memory_mib"] = ea->memory;
    if (ea->timeout_ms >= 0) body["timeout_ms"] = ea->timeout_ms;
    json env = json::object();
    for (const auto& kv : ea->env) {
      auto eq = kv.find('=');
      if (eq == std::string::npos) {
        exit_code = UsageError("--env wants KEY=VALUE, got '" + kv + "'");
        return;
      }
      env[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    if (!env.empty()) body["env"] = env;
    auto r = remote->Call("POST", "/v1/procs", body.dump());
    exit_code = PrintStartedPid(*remote, r);
  });

  // fork
  struct ForkArgs {
    int64_t pid = -1;
    std::string name;
    bool live = false;
  };
  auto fa = std::make_shared<ForkArgs>();
  auto* fork = app.add_subcommand("fork", "Start a child of a live process with its image, user-data and spec; prints its pid");
  fork->add_option("pid", fa->pid, "The process to fork")->required();
  fork->add_option("--name", fa->name, "Name of the child (default: the parent's)");
  fork->add_flag("--live", fa->live,
                 "Clone the running process's current memory and disk state (the child continues its command; "
                 "the parent keeps running)");
  fork->callback([=, &exit_code] {
    json body = json::object();
    if (!fa->name.empty()) body["name"] = fa->name;
    if (fa->live) body["live"] = true;
    auto r = remote->Call("POST", "/v1/procs/" + std::to_string(fa->pid) + "/fork", body.dump());
    exit_code = PrintStartedPid(*remote, r);
  });

  // kill
  struct KillArgs {
    int64_t pid = -1;
    std::string signal = "TERM";
    bool tree = false;
  };
  auto ka = std::make_shared<KillArgs>();
  auto* kill = app.add_subcommand("kill", "Signal a process: TERM asks it to stop (destroyed after a grace period), KILL destroys it");
  kill->add_option("pid", ka->pid, "The process")->required();
  kill->add_option("-s,--signal", ka->signal, "TERM or KILL")
      ->check(CLI::IsMember({"TERM", "KILL", "SIGTERM", "SIGKILL", "15", "9"}))
      ->capture_default_str();
  kill->add_flag("--tree", ka->tree, "Signal every live descendant too");
  kill->callback([=, &exit_code] {
    std::string sig = ka->signal;
    if (sig.rfind("SIG", 0) == 0) sig = sig.substr(3);
    if (sig == "15") sig = "TERM";
    if (sig == "9") sig = "KILL";
    json body = {{"signal", sig}, {"tree", ka->tree}};
    auto r = remote->Call("POST", "/v1/procs/" + std::to_string(ka->pid) + "/kill", body.dump());
    if (!Ok(r)) {
      exit_code = Fail(r);
      return;
    }
    if (remote->json) {
      exit_code = PrintJson(r);
      return;
    }
    json j = Body(r);
    std::string pids;
    for (const auto& p : j.value("signalled", json::array())) pids += (pids.empty() ? "" : " ") + p.dump();
    std::cout << "SIG" << j.value("signal", sig) << " sent to " << (pids.empty() ? "-" : pids) << "\n";
  });

  // wait
  struct WaitArgs {
    int64_t pid = -1;
    double timeout_s = -1;
  };
  auto wa = std::make_shared<WaitArgs>();
  auto* wait = app.add_subcommand("wait", "Wait until a process ends; exit with its status");
  wait->add_option("pid", wa->pid, "The process")->required();
  wait->add_option("--timeout", wa->timeout_s, "Give up after this many seconds (exit 124); default: wait forever");
  wait->footer("Exit status: the process's exit code; 128+N if signal N ended it (kill, or its own timeout);\n"
               "124 if it was still running at --timeout; 125 if it never ran (error, lost);\n"
               "3 if there is no such process; see `berth --help` for the others.");
  wait->callback([=, &exit_code] {
    // berthd caps one wait at an hour: long waits are several calls.
    constexpr int64_t kSliceMs = 600'000;
    const bool forever = wa->timeout_s < 0;
    const int64_t deadline = NowUnixMs() + static_cast<int64_t>(wa->timeout_s * 1000);
    for (;;) {
      int64_t slice = kSliceMs;
      if (!forever) slice = std::clamp<int64_t>(deadline - NowUnixMs(), 0, kSliceMs);
      auto r = remote->Call("GET", "/v1/procs/" + std::to_string(wa->pid) + "/wait?timeout_ms=" + std::to_string(slice));
      if (r.status == 504) {
        if (forever || NowUnixMs() < deadline) continue;
        std::cerr << "berth: pid " << wa->pid << " is still running after " << wa->timeout_s << " s\n";
        exit_code = kExitWaitTimeout;
        return;
      }
      if (!Ok(r)) {
        exit_code = Fail(r);
        return;
      }
      json rec = Body(r);
      std::cout << (remote->json ? Pretty(rec) : Describe(rec)) << "\n";
      exit_code = ProcessExitStatus(rec);
      return;
    }
  });

  // logs
  struct LogsArgs {
    int64_t pid = -1;
    bool follow = false, console = false;
    double interval_s = 1.0;
  };
  auto la = std::make_shared<LogsArgs>();
  auto* logs = app.add_subcommand("logs", "Print a process's stdout (here) and stderr (on stderr), or its console");
  logs->add_option("pid", la->pid, "The process")->required();
  logs->add_flag("-f,--follow", la->follow, "Keep printing new output until the process ends");
  logs->add_flag("--console", la->console, "The VM's serial console instead of the command's output");
  logs->add_option("--interval", la->interval_s, "Seconds between polls with --follow")->capture_default_str();
  logs->callback([=, &exit_code] {
    std::string out, err, console;  // printed so far
    const std::string path = "/v1/procs/" + std::to_string(la->pid) + "/logs";
    bool last = false;
    for (;;) {
      auto r = remote->Call("GET", path);
      if (!Ok(r)) {
        exit_code = Fail(r);
        return;
      }
      json j = Body(r);
      if (remote->json && !la->follow) {
        std::cout << Pretty(j) << "\n";
        return;
      }
      if (la->console) {
        std::string now = j.value("console", "");
        std::cout << NewBytes(console, now) << std::flush;
        console = now;
      } else {
        std::string now_out = j.value("stdout", ""), now_err = j.value("stderr", "");
        std::cout << NewBytes(out, now_out) << std::flush;
        std::cerr << NewBytes(err, now_err) << std::flush;
        out = now_out;
        err = now_err;
      }
      if (!la->follow || last) return;
      if (!j.value("live", false)) {
        // Not running (yet, or any more): once it has ended, one more round
        // prints what the record holds.
        auto p = remote->Call("GET", "/v1/procs/" + std::to_string(la->pid));
        if (!Ok(p) || IsTerminalState(Body(p).value("status", ""))) {
          last = true;
          continue;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int64_t>(std::max(0.05, la->interval_s) * 1000)));
    }
  });
}

}  // namespace berth::cli
