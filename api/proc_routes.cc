// Processes (exec, fork, kill, wait, children, logs), execution queries,
// nodes. Handlers only parse, call the Service, render.
#include <csignal>

#include "api/json_fields.h"
#include "api/render.h"
#include "api/routes.h"
#include "api/svc_routes.h"

namespace berth::api {
namespace {

using json = nlohmann::json;
using manager::ExecState;

// An integer query parameter: absent -> `fallback`; malformed or out of
// range -> InvalidArgument naming it.
Result<int64_t> QueryInt(const HttpRequest& req, const char* name, int64_t fallback, int64_t min, int64_t max) {
  auto it = req.query.find(name);
  if (it == req.query.end() || it->second.empty()) return fallback;
  int64_t v = 0;
  size_t used = 0;
  try {
    v = std::stoll(it->second, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != it->second.size() || used == 0) return Status::InvalidArgument(name, "must be an integer");
  if (v < min || v > max) {
    return Status::InvalidArgument(name, "must be between " + std::to_string(min) + " and " + std::to_string(max));
  }
  return v;
}

Result<bool> QueryBool(const HttpRequest& req, const char* name) {
  auto it = req.query.find(name);
  if (it == req.query.end()) return false;
  if (it->second.empty() || it->second == "1" || it->second == "true") return true;
  if (it->second == "0" || it->second == "false") return false;
  return Status::InvalidArgument(name, "must be 1/true or 0/false");
}

Result<int64_t> PathPid(const HttpRequest& req) {
  const std::string& s = req.params.at("pid");
  if (s.empty() || s.size() > 15 || s.find_first_not_of("0123456789") != std::string::npos) {
    return Status::InvalidArgument("pid", "must be a non-negative integer");
  }
  return std::stoll(s);
}

Result<manager::ExecRequest> ParseExec(const std::string& body) {
  BERTH_ASSIGN_OR_RETURN(json j, ParseJsonObject(body));
  manager::ExecRequest req;
  if (auto n = j.find("network"); n != j.end()) {
    BERTH_ASSIGN_OR_RETURN(req.network, ParseNetworkPolicy(*n, "network"));
    j.erase(n);
  }
  FieldReader r(j);
  int64_t vcpus = req.vcpus, memory = static_cast<int64_t>(req.memory_mib);
  BERTH_RETURN_IF_ERROR(r.Int("ppid", &req.ppid, 0, kBig));
  BERTH_RETURN_IF_ERROR(r.String("name", &req.name));
  BERTH_RETURN_IF_ERROR(r.String("function", &req.function));
  BERTH_RETURN_IF_ERROR(r.String("image", &req.image));
  BERTH_RETURN_IF_ERROR(r.StringArray("command", &req.command));
  BERTH_RETURN_IF_ERROR(r.StringArray("args", &req.args));
  BERTH_RETURN_IF_ERROR(r.StringMap("env", &req.env));
  BERTH_RETURN_IF_ERROR(r.String("stdin", &req.stdin_data));
  BERTH_RETURN_IF_ERROR(r.String("userdata", &req.userdata));
  BERTH_RETURN_IF_ERROR(r.String("boot", &req.boot));
  BERTH_RETURN_IF_ERROR(r.Int("vcpus", &vcpus, 1, 64));
  BERTH_RETURN_IF_ERROR(r.Int("memory_mib", &memory, 64, 65536));
  BERTH_RETURN_IF_ERROR(r.Int("timeout_ms", &req.timeout_ms, 0, 30LL * 24 * 3600 * 1000));
  BERTH_RETURN_IF_ERROR(r.StringMap("node_selector", &req.node_selector));
  BERTH_RETURN_IF_ERROR(r.NoUnknownFields());
  req.vcpus = static_cast<uint32_t>(vcpus);
  req.memory_mib = static_cast<uint64_t>(memory);
  return req;
}

Result<int> ParseSignal(const std::string& s) {
  if (s.empty() || s == "TERM" || s == "SIGTERM" || s == "15") return SIGTERM;
  if (s == "KILL" || s == "SIGKILL" || s == "9") return SIGKILL;
  return Status::InvalidArgument("signal", "must be TERM or KILL");
}

json NodeViewJson(const manager::NodeView& n) {
  return {{"name", n.spec.name},
          {"uri", n.spec.uri},
          {"state", n.state},
          {"accel", n.accel},
          {"labels", n.spec.labels},
          {"hostname", n.info.hostname},
          {"cpu_model", n.info.cpu_model},
          {"cpus", n.info.cpus},
          {"memory_mib", n.info.memory_mib},
          {"overcommit", {{"cpu", n.spec.cpu_overcommit}, {"memory", n.spec.memory_overcommit}}},
          {"reserved", {{"memory_mib", n.spec.reserved_memory_mib}}},
          {"capacity",
           {{"vcpus", n.vcpus_capacity}, {"memory_mib", n.memory_capacity_mib}, {"disk_bytes", n.disk_capacity_bytes}}},
          {"allocated",
           {{"vcpus", n.vcpus_allocated}, {"memory_mib", n.memory_allocated_mib}, {"disk_bytes", n.disk_allocated_bytes}}},
          {"disk",
           {{"pool_capacity_bytes", n.pool_capacity_bytes},
            {"pool_available_bytes", n.pool_available_bytes},
            {"image_cache_bytes", n.image_cache_bytes}}},
          {"executions", n.claims},
          {"last_error", n.last_error}};
}

json LogsJson(const manager::ProcLogs& l) {
  return {{"stdout", l.stdout_data},
          {"stderr", l.stderr_data},
          {"console", l.console},
          {"output_truncated", l.output_truncated},
          {"console_truncated", l.console_truncated},
          {"live", l.live}};
}

Result<manager::ExecutionFilter> ParseExecutionFilter(const HttpRequest& req) {
  manager::ExecutionFilter f;
  BERTH_ASSIGN_OR_RETURN(int64_t limit, QueryInt(req, "limit", 100, 1, 10000));
  f.limit = static_cast<size_t>(limit);
  if (auto it = req.query.find("function"); it != req.query.end()) f.function = it->second;
  if (auto it = req.query.find("state"); it != req.query.end() && !it->second.empty()) {
    size_t start = 0;
    while (start <= it->second.size()) {
      size_t comma = it->second.find(',', start);
      std::string one = it->second.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      BERTH_ASSIGN_OR_RETURN(ExecState st, manager::ParseExecState(one));
      f.states.push_back(st);
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  BERTH_ASSIGN_OR_RETURN(int64_t since, QueryInt(req, "since_ms", -1, 0, kBig));
  BERTH_ASSIGN_OR_RETURN(int64_t until, QueryInt(req, "until_ms", -1, 0, kBig));
  if (since >= 0) f.since_ms = since;
  if (until >= 0) f.until_ms = until;
  return f;
}


}  // namespace

void AddProcRoutes(Router& router, manager::Service& svc) {

  router.Add({"GET", "/v1/procs", "List processes: the roots 0 and 1, then live ones by pid (?all=1: ended too)",
              [&svc](const HttpRequest& req) {
                auto all = QueryBool(req, "all");
                if (!all.ok()) return ErrorResponse(all.status());
                auto limit = QueryInt(req, "limit", 10000, 1, 100000);
                if (!limit.ok()) return ErrorResponse(limit.status());
                auto procs = svc.ListProcs(Who(req), *all, static_cast<size_t>(*limit));
                if (!procs.ok()) return ErrorResponse(procs.status());
                json arr = json::array({RootProcJson(0), RootProcJson(1)});
                for (const auto& p : *procs) arr.push_back(ProcJson(p));
                return Json(200, {{"procs", arr}});
              }});
  Route exec{"POST", "/v1/procs",
             "exec: start a process {ppid (default 1), name, image | function, command, args, env, stdin, userdata, "
             "boot (runtime|disk), vcpus, memory_mib, timeout_ms}; answers at once with its pid",
             [&svc](const HttpRequest& req) {
               auto parsed = ParseExec(req.body);
               if (!parsed.ok()) return ErrorResponse(parsed.status());
               return Respond(svc.Exec(Who(req), *parsed), 201, ProcJson);
             }};
  exec.success_status = 201;
  router.Add(std::move(exec));
  router.Add({"GET", "/v1/procs/{pid}", "One process", [&svc](const HttpRequest& req) {
                auto pid = PathPid(req);
                if (!pid.ok()) return ErrorResponse(pid.status());
                if (*pid == 0 || *pid == 1) return Json(200, RootProcJson(*pid));
                return Respond(svc.GetProc(Who(req), *pid), 200, ProcJson);
              }});
  Route fork{"POST", "/v1/procs/{pid}/fork",
             "fork: start a child of a live process with its image, user-data and spec {name, live: bool "
             "(clone its current memory and disk state; the parent keeps running)}",
             [&svc](const HttpRequest& req) {
               auto pid = PathPid(req);
               if (!pid.ok()) return ErrorResponse(pid.status());
               std::string name;
               bool live = false;
               if (!req.body.empty()) {
                 auto j = ParseJsonObject(req.body);
                 if (!j.ok()) return ErrorResponse(j.status());
                 FieldReader r(*j);
                 Status s = r.String("name", &name);
                 if (s.ok()) s = r.Bool("live", &live);
                 if (s.ok()) s = r.NoUnknownFields();
                 if (!s.ok()) return ErrorResponse(s);
               }
               return Respond(svc.Fork(Who(req), *pid, name, live), 201, ProcJson);
             }};
  fork.success_status = 201;
  router.Add(std::move(fork));
  Route kill{"POST", "/v1/procs/{pid}/kill",
             "Signal a process {signal: TERM (default; destroy after a grace period) | KILL, tree: bool}",
             [&svc](const HttpRequest& req) {
               auto pid = PathPid(req);
               if (!pid.ok()) return ErrorResponse(pid.status());
               std::string signal;
               bool tree = false;
               if (!req.body.empty()) {
                 auto j = ParseJsonObject(req.body);
                 if (!j.ok()) return ErrorResponse(j.status());
                 FieldReader r(*j);
                 Status s = r.String("signal", &signal);
                 if (s.ok()) s = r.Bool("tree", &tree);
                 if (s.ok()) s = r.NoUnknownFields();
                 if (!s.ok()) return ErrorResponse(s);
               }
               auto sig = ParseSignal(signal);
               if (!sig.ok()) return ErrorResponse(sig.status());
               auto done = svc.Kill(Who(req), *pid, *sig, tree);
               if (!done.ok()) return ErrorResponse(done.status());
               json pids = json::array();
               for (const auto& p : *done) pids.push_back(p.pid);
               return Json(202, {{"signalled", pids}, {"signal", *sig == SIGKILL ? "KILL" : "TERM"}});
             }};
  kill.success_status = 202;
  router.Add(std::move(kill));
  router.Add({"GET", "/v1/procs/{pid}/wait", "Block until the process ends (?timeout_ms=, default 60000); its record",
              [&svc](const HttpRequest& req) {
                auto pid = PathPid(req);
                if (!pid.ok()) return ErrorResponse(pid.status());
                auto timeout = QueryInt(req, "timeout_ms", 60000, 0, 3600000);
                if (!timeout.ok()) return ErrorResponse(timeout.status());
                return Respond(svc.Wait(Who(req), *pid, *timeout), 200, ExecutionJson);
              }});
  router.Add({"GET", "/v1/procs/{pid}/children", "Children of a process (?all=1: ended ones too)",
              [&svc](const HttpRequest& req) {
                auto pid = PathPid(req);
                if (!pid.ok()) return ErrorResponse(pid.status());
                auto all = QueryBool(req, "all");
                if (!all.ok()) return ErrorResponse(all.status());
                auto kids = svc.Children(Who(req), *pid, *all);
                if (!kids.ok()) return ErrorResponse(kids.status());
                json arr = json::array();
                if (*pid == 0) arr.push_back(RootProcJson(1));
                for (const auto& k : *kids) arr.push_back(ProcJson(k));
                return Json(200, {{"procs", arr}});
              }});
  router.Add({"GET", "/v1/procs/{pid}/logs", "stdout, stderr and console of a process (live ones so far)",
              [&svc](const HttpRequest& req) {
                auto pid = PathPid(req);
                if (!pid.ok()) return ErrorResponse(pid.status());
                auto p = svc.GetProc(Who(req), *pid);
                if (!p.ok()) return ErrorResponse(p.status());
                return Respond(svc.Logs(Who(req), *p), 200, LogsJson);
              }});

  router.Add({"GET", "/v1/executions",
              "List executions, newest first (?function=, ?state=a,b, ?since_ms=, ?until_ms=, ?limit=)",
              [&svc](const HttpRequest& req) {
                auto f = ParseExecutionFilter(req);
                if (!f.ok()) return ErrorResponse(f.status());
                return Respond(svc.ListExecutions(Who(req), *f), 200, ListOf("executions", ExecutionJson));
              }});
  router.Add({"GET", "/v1/executions/{id}/logs", "stdout, stderr and console of an execution",
              [&svc](const HttpRequest& req) {
                auto ex = svc.GetExecution(Who(req), req.params.at("id"));
                if (!ex.ok()) return ErrorResponse(ex.status());
                return Respond(svc.Logs(Who(req), *ex), 200, LogsJson);
              }});
  router.Add({"POST", "/v1/executions/{id}/cancel", "Stop a live execution (its VM is destroyed); the record",
              [&svc](const HttpRequest& req) {
                return Respond(svc.CancelExecution(Who(req), req.params.at("id")), 200, ExecutionJson);
              }});

  router.Add({"GET", "/v1/nodes", "Nodes: state, acceleration, capacity and what is allocated",
              [&svc](const HttpRequest&) {
                json arr = json::array();
                for (const auto& n : svc.NodeViews()) arr.push_back(NodeViewJson(n));
                return Json(200, {{"nodes", arr}});
              }});
  router.Add({"GET", "/v1/nodes/{name}", "One node", [&svc](const HttpRequest& req) {
                return Respond(svc.NodeViewOf(req.params.at("name")), 200, NodeViewJson);
              }});
  Route add_node{"POST", "/v1/nodes",
                 "Register a libvirt host (admin) {name, uri, accel, labels{}, cpu_overcommit, memory_overcommit, "
                 "reserved_memory_mib}",
                 [&svc](const HttpRequest& req) {
                   auto j = ParseJsonObject(req.body);
                   if (!j.ok()) return ErrorResponse(j.status());
                   FieldReader r(*j);
                   manager::NodeSpec spec;
                   int64_t reserved = static_cast<int64_t>(spec.reserved_memory_mib);
                   Status s = r.String("name", &spec.name, true);
                   if (s.ok()) s = r.String("uri", &spec.uri, true);
                   if (s.ok()) s = r.String("accel", &spec.accel);
                   if (s.ok()) s = r.StringMap("labels", &spec.labels);
                   if (s.ok()) s = r.Double("cpu_overcommit", &spec.cpu_overcommit);
                   if (s.ok()) s = r.Double("memory_overcommit", &spec.memory_overcommit);
                   if (s.ok()) s = r.Int("reserved_memory_mib", &reserved, 0, 1 << 24);
                   if (s.ok()) s = r.NoUnknownFields();
                   if (!s.ok()) return ErrorResponse(s);
                   spec.reserved_memory_mib = static_cast<uint64_t>(reserved);
                   return Respond(svc.AddNode(Who(req), spec), 201, NodeViewJson);
                 }};
  add_node.success_status = 201;
  router.Add(std::move(add_node));
  router.Add({"DELETE", "/v1/nodes/{name}", "Remove a node (admin; 409 while it runs work)",
              [&svc](const HttpRequest& req) {
                Status s = svc.RemoveNode(Who(req), req.params.at("name"));
                return s.ok() ? Json(200, {{"deleted", req.params.at("name")}}) : ErrorResponse(s);
              }});
  for (const char* action : {"cordon", "uncordon", "drain"}) {
    std::string a = action;
    router.Add({"POST", "/v1/nodes/{name}/" + a,
                a == "cordon"     ? "No new work on the node (admin)"
                : a == "uncordon" ? "Take new work again (admin)"
                                  : "No new work; cordoned once its executions ended (admin)",
                [&svc, a](const HttpRequest& req) {
                  return Respond(svc.SetNodeState(Who(req), req.params.at("name"), a), 200, NodeViewJson);
                }});
  }
}

}  // namespace berth::api
