#include "api/render.h"

#include "api/gateway.h"

namespace berth::api {

using json = nlohmann::json;

HttpResponse Json(int status, const json& body) {
  HttpResponse r;
  r.status = status;
  r.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
  return r;
}

json ImageJson(const manager::ImageMeta& m) {
  return {{"id", m.id},
          {"name", m.name},
          {"format", m.format},
          {"filesystem", m.filesystem},
          {"size_bytes", m.size_bytes},
          {"virtual_size_bytes", m.virtual_size_bytes},
          {"created_ms", m.created_ms}};
}

json FunctionJson(const manager::FunctionRecord& f) {
  return {{"name", f.spec.name},       {"version", f.version},         {"image", f.spec.image},
          {"entrypoint", f.spec.entrypoint}, {"vcpus", f.spec.vcpus},  {"memory_mib", f.spec.memory_mib},
          {"timeout_ms", f.spec.timeout_ms}, {"env", f.spec.env},      {"cwd", f.spec.cwd},
          {"network", f.spec.network}, {"tenant", f.tenant},           {"created_ms", f.created_ms},
          {"updated_ms", f.updated_ms}, {"snapshot", f.spec.snapshot}, {"min_warm", f.spec.min_warm},
          {"max_warm", f.spec.max_warm}, {"idle_timeout_ms", f.spec.idle_timeout_ms},
          {"keep_alive", f.spec.keep_alive}, {"gateway", GatewayPolicyJson(f.spec.gateway)}};
}

namespace {
json TimingsJson(const manager::PhaseTimings& t) {
  return {{"queue_ms", t.queue_ms},         {"prepare_ms", t.prepare_ms},       {"boot_ms", t.boot_ms},
          {"run_ms", t.run_ms},             {"cleanup_ms", t.cleanup_ms},       {"total_ms", t.total_ms},
          {"placed_at", t.placed_at},       {"disk_ready_at", t.disk_ready_at}, {"booted_at", t.booted_at},
          {"agent_ready_at", t.agent_ready_at}, {"start", t.start}};
}
}  // namespace

json ExecutionJson(const manager::ExecutionRecord& e) {
  json j = {{"execution_id", e.id},
            {"pid", e.pid},
            {"ppid", e.ppid},
            {"name", e.name},
            {"kind", manager::ProcKindName(e.kind)},
            {"function", e.function},
            {"function_version", e.function_version},
            {"tenant", e.tenant},
            {"image", e.image},
            {"status", manager::ExecStateName(e.state)},
            {"exit_code", e.exit_code ? json(*e.exit_code) : json(nullptr)},
            {"signal", e.signal},
            {"stdout", e.stdout_data},
            {"stderr", e.stderr_data},
            {"output_truncated", e.output_truncated},
            {"duration_ms", e.duration_ms},
            {"node", e.node},
            {"domain", e.domain},
            {"timings", TimingsJson(e.timings)},
            {"created_ms", e.created_ms},
            {"finished_ms", e.finished_ms}};
  if (!e.error_code.empty()) j["error_code"] = e.error_code;
  if (!e.error.empty()) j["error"] = e.error;
  return j;
}

json ProcJson(const manager::ExecutionRecord& e) {
  json j = {{"pid", e.pid},
            {"ppid", e.ppid},
            {"name", e.name},
            {"kind", manager::ProcKindName(e.kind)},
            {"status", manager::ExecStateName(e.state)},
            {"execution_id", e.id},
            {"function", e.function},
            {"image", e.image},
            {"userdata", e.userdata},
            {"boot", e.spec.boot == manager::BootMode::kDisk ? "disk" : "runtime"},
            {"command", e.spec.command},
            {"vcpus", e.spec.vcpus},
            {"memory_mib", e.spec.memory_mib},
            {"exit_code", e.exit_code ? json(*e.exit_code) : json(nullptr)},
            {"signal", e.signal},
            {"node", e.node},
            {"domain", e.domain},
            {"created_ms", e.created_ms},
            {"finished_ms", e.finished_ms}};
  if (!e.error_code.empty()) j["error_code"] = e.error_code;
  if (!e.error.empty()) j["error"] = e.error;
  return j;
}

json RootProcJson(int64_t pid) {
  return {{"pid", pid},          {"ppid", 0},         {"name", pid == 0 ? "kernel" : "init"},
          {"kind", "root"},      {"status", "running"}};
}

}  // namespace berth::api
