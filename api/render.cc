#include "api/render.h"

#include "manager/networks.h"

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
          {"network_allow", manager::EgressRulesToJson(f.spec.network_allow)}, {"expose_port", f.spec.expose_port},
          {"updated_ms", f.updated_ms}, {"snapshot", f.spec.snapshot}, {"retryable", f.spec.retryable}, {"min_warm", f.spec.min_warm},
          {"max_warm", f.spec.max_warm}, {"idle_timeout_ms", f.spec.idle_timeout_ms},
          {"keep_alive", f.spec.keep_alive},
          {"target_concurrency", f.spec.target_concurrency}, {"max_instances", f.spec.max_instances},
          {"max_queued", f.spec.max_queued}, {"queue_timeout_ms", f.spec.queue_timeout_ms}, {"gateway", GatewayPolicyJson(f.spec.gateway)},
          {"routes", GatewayRoutesJson(f.spec.gateway_routes)}};
}

namespace {
json TimingsJson(const manager::PhaseTimings& t) {
  return {{"queue_ms", t.queue_ms},         {"prepare_ms", t.prepare_ms},       {"boot_ms", t.boot_ms},
          {"run_ms", t.run_ms},             {"cleanup_ms", t.cleanup_ms},       {"total_ms", t.total_ms},
          {"placed_at", t.placed_at},       {"disk_ready_at", t.disk_ready_at}, {"booted_at", t.booted_at},
          {"agent_ready_at", t.agent_ready_at}, {"start", t.start}};
}
}  // namespace

namespace {
// Guest networking of an execution: its policy, MAC and addresses.
void AddNetworkJson(const manager::ExecutionRecord& e, json& j) {
  j["network"] = manager::NetworkPolicyToJson(e.spec.network);
  j["addresses"] = e.addresses;
  if (!e.mac.empty()) j["mac"] = e.mac;
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
  AddNetworkJson(e, j);
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
  AddNetworkJson(e, j);
  return j;
}

json RootProcJson(int64_t pid) {
  return {{"pid", pid},          {"ppid", 0},         {"name", pid == 0 ? "kernel" : "init"},
          {"kind", "root"},      {"status", "running"}};
}

namespace {

// Schema builders (OpenAPI 3.0 Schema Objects).
json Str() { return {{"type", "string"}}; }
json Int() { return {{"type", "integer"}}; }
json Num() { return {{"type", "number"}}; }
json Bool() { return {{"type", "boolean"}}; }
json Nullable(json s) {
  s["nullable"] = true;
  return s;
}
json Enum(std::initializer_list<const char*> values) {
  json s = Str();
  for (const char* v : values) s["enum"].push_back(v);
  return s;
}
json ArrayOf(json items) { return {{"type", "array"}, {"items", std::move(items)}}; }
json StringMap() { return {{"type", "object"}, {"additionalProperties", Str()}}; }
json Ref(const std::string& name) { return {{"$ref", "#/components/schemas/" + name}}; }
// A closed object: every field listed, `required` always present.
json Object(json properties, std::vector<std::string> required) {
  json s = {{"type", "object"}, {"additionalProperties", false}, {"properties", std::move(properties)}};
  if (!required.empty()) s["required"] = required;
  return s;
}
std::vector<std::string> Keys(const json& properties, std::initializer_list<const char*> optional = {}) {
  std::vector<std::string> keys;
  for (auto it = properties.begin(); it != properties.end(); ++it) {
    bool opt = false;
    for (const char* o : optional) opt = opt || it.key() == o;
    if (!opt) keys.push_back(it.key());
  }
  return keys;
}
json Closed(json properties, std::initializer_list<const char*> optional = {}) {
  auto required = Keys(properties, optional);
  return Object(std::move(properties), std::move(required));
}
json ListSchema(const char* key, const std::string& item) { return Closed({{key, ArrayOf(Ref(item))}}); }

}  // namespace

void DescribeResponses(Router& router) {
  const json exec_states =
      Enum({"pending", "placing", "starting", "running", "succeeded", "failed", "timed_out", "killed", "lost", "error"});
  json image = {{"id", Str()},
                {"name", Str()},
                {"format", Enum({"raw", "qcow2"})},
                {"filesystem", Str()},
                {"size_bytes", Int()},
                {"virtual_size_bytes", Int()},
                {"created_ms", Int()}};
  router.AddSchema("Image", Closed(image));
  // Inspect (api/image_routes.cc): the image plus its tags, users and copies.
  json details = image;
  details["digest"] = Str();
  details["tags"] = ArrayOf(Str());
  details["referenced_by"] = Closed({{"functions", ArrayOf(Str())}, {"executions", ArrayOf(Str())}});
  details["nodes"] = {{"type", "array"}, {"items", json::object()}};
  router.AddSchema("ImageDetails", Closed(details));
  router.AddSchema("EgressRule", Closed({{"cidr", Str()}, {"protocol", Str()}, {"ports", Str()}}));
  router.AddSchema("NetworkPolicy", Closed({{"mode", Str()},
                                            {"allow", ArrayOf(Ref("EgressRule"))},
                                            {"expose_port", Int()}},
                                           {"allow", "expose_port"}));
  router.AddSchema("GatewayPolicy", Closed({{"auth", Enum({"public", "token", "tenant"})},
                                            {"rate_limit_per_s", Num()},
                                            {"burst", Int()},
                                            {"token_rate_limit_per_s", Num()},
                                            {"token_burst", Int()},
                                            {"max_concurrency", Int()},
                                            {"max_queue", Int()}}));
  router.AddSchema("Function", Closed({{"name", Str()},
                                       {"version", Int()},
                                       {"image", Str()},
                                       {"entrypoint", ArrayOf(Str())},
                                       {"vcpus", Int()},
                                       {"memory_mib", Int()},
                                       {"timeout_ms", Int()},
                                       {"env", StringMap()},
                                       {"cwd", Str()},
                                       {"network", Str()},
                                       {"network_allow", ArrayOf(Ref("EgressRule"))},
                                       {"expose_port", Int()},
                                       {"retryable", Bool()},
                                       {"target_concurrency", Int()},
                                       {"max_instances", Int()},
                                       {"max_queued", Int()},
                                       {"queue_timeout_ms", Int()},
                                       {"tenant", Str()},
                                       {"created_ms", Int()},
                                       {"updated_ms", Int()},
                                       {"snapshot", Bool()},
                                       {"retryable", Bool()},
                                       {"min_warm", Int()},
                                       {"max_warm", Int()},
                                       {"idle_timeout_ms", Int()},
                                       {"keep_alive", Bool()},
                                       {"gateway", Ref("GatewayPolicy")},
                                       {"routes", ArrayOf({{"type", "object"}})}}));
  router.AddSchema("PhaseTimings", Closed({{"queue_ms", Int()},
                                           {"prepare_ms", Int()},
                                           {"boot_ms", Int()},
                                           {"run_ms", Int()},
                                           {"cleanup_ms", Int()},
                                           {"total_ms", Int()},
                                           {"placed_at", Int()},
                                           {"disk_ready_at", Int()},
                                           {"booted_at", Int()},
                                           {"agent_ready_at", Int()},
                                           {"start", Enum({"cold", "template", "warm"})}}));
  router.AddSchema("Execution", Closed({{"execution_id", Str()},
                                        {"pid", Int()},
                                        {"ppid", Int()},
                                        {"name", Str()},
                                        {"kind", Enum({"run", "instance"})},
                                        {"function", Str()},
                                        {"function_version", Int()},
                                        {"tenant", Str()},
                                        {"image", Str()},
                                        {"status", exec_states},
                                        {"exit_code", Nullable(Int())},
                                        {"signal", Int()},
                                        {"stdout", Str()},
                                        {"stderr", Str()},
                                        {"output_truncated", Bool()},
                                        {"duration_ms", Int()},
                                        {"node", Str()},
                                        {"domain", Str()},
                                        {"timings", Ref("PhaseTimings")},
                                        {"created_ms", Int()},
                                        {"finished_ms", Int()},
                                        {"error_code", Str()},
                                        {"error", Str()},
                                        {"network", Ref("NetworkPolicy")},
                                        {"addresses", ArrayOf(Str())},
                                        {"mac", Str()}},
                                       {"error_code", "error", "mac"}));
  // Processes 0 (kernel) and 1 (init) have no record: only the first five fields.
  router.AddSchema("Proc", Closed({{"pid", Int()},
                                   {"ppid", Int()},
                                   {"name", Str()},
                                   {"kind", Enum({"run", "instance", "root"})},
                                   {"status", exec_states},
                                   {"execution_id", Str()},
                                   {"function", Str()},
                                   {"image", Str()},
                                   {"userdata", Str()},
                                   {"boot", Enum({"runtime", "disk"})},
                                   {"command", ArrayOf(Str())},
                                   {"vcpus", Int()},
                                   {"memory_mib", Int()},
                                   {"exit_code", Nullable(Int())},
                                   {"signal", Int()},
                                   {"node", Str()},
                                   {"domain", Str()},
                                   {"created_ms", Int()},
                                   {"finished_ms", Int()},
                                   {"error_code", Str()},
                                   {"error", Str()},
                                   {"network", Ref("NetworkPolicy")},
                                   {"addresses", ArrayOf(Str())},
                                   {"mac", Str()}},
                                  {"network", "addresses", "mac", "execution_id", "function", "image", "userdata", "boot", "command", "vcpus",
                                   "memory_mib", "exit_code", "signal", "node", "domain", "created_ms", "finished_ms",
                                   "error_code", "error"}));
  router.AddSchema("Node", Closed({{"name", Str()},
                                   {"uri", Str()},
                                   {"state", Enum({"up", "down", "cordoned", "draining"})},
                                   {"accel", Str()},
                                   {"labels", StringMap()},
                                   {"hostname", Str()},
                                   {"cpu_model", Str()},
                                   {"cpus", Int()},
                                   {"memory_mib", Int()},
                                   {"overcommit", Closed({{"cpu", Num()}, {"memory", Num()}})},
                                   {"reserved", Closed({{"memory_mib", Int()}})},
                                   {"capacity", Closed({{"vcpus", Int()}, {"memory_mib", Int()}, {"disk_bytes", Int()}})},
                                   {"allocated", Closed({{"vcpus", Int()}, {"memory_mib", Int()}, {"disk_bytes", Int()}})},
                                   {"disk", Closed({{"pool_capacity_bytes", Int()},
                                                    {"pool_available_bytes", Int()},
                                                    {"image_cache_bytes", Int()}})},
                                   {"executions", Int()},
                                   {"last_error", Str()}}));
  router.AddSchema("Logs", Closed({{"stdout", Str()},
                                   {"stderr", Str()},
                                   {"console", Str()},
                                   {"output_truncated", Bool()},
                                   {"console_truncated", Bool()},
                                   {"live", Bool()}}));
  router.AddSchema("Health", Closed({{"status", Enum({"ok", "degraded"})},
                                     {"node", Str()},
                                     {"uri", Str()},
                                     {"accel", Str()},
                                     {"libvirt", Str()},
                                     {"kernel", Str()}}));
  router.AddSchema("Token", Closed({{"id", Str()},
                                    {"tenant", Str()},
                                    {"name", Str()},
                                    {"admin", Bool()},
                                    {"created_ms", Int()},
                                    {"revoked", Bool()},
                                    {"revoked_ms", Nullable(Int())},
                                    {"token", Str()}},
                                   {"token"}));
  router.AddSchema("Deleted", Closed({{"deleted", Str()}, {"untagged", Str()}}, {"deleted", "untagged"}));

  auto describe = [&router](const char* method, const char* pattern, json schema) {
    // A route another part of the table dropped is not an error here.
    router.Describe(method, pattern, std::move(schema));
  };
  describe("GET", "/v1/health", Ref("Health"));
  describe("POST", "/v1/images", Ref("Image"));
  describe("GET", "/v1/images", ListSchema("images", "Image"));
  describe("GET", "/v1/images/{id}", Ref("ImageDetails"));
  describe("DELETE", "/v1/images/{id}", Ref("Deleted"));
  describe("POST", "/v1/functions", Ref("Function"));
  describe("GET", "/v1/functions", ListSchema("functions", "Function"));
  describe("GET", "/v1/functions/{name}", Ref("Function"));
  describe("PUT", "/v1/functions/{name}", Ref("Function"));
  describe("DELETE", "/v1/functions/{name}", Ref("Deleted"));
  describe("POST", "/v1/functions/{name}/invoke", Ref("Execution"));
  describe("GET", "/v1/executions", ListSchema("executions", "Execution"));
  describe("GET", "/v1/executions/{id}", Ref("Execution"));
  describe("GET", "/v1/executions/{id}/logs", Ref("Logs"));
  describe("POST", "/v1/executions/{id}/cancel", Ref("Execution"));
  describe("GET", "/v1/procs", ListSchema("procs", "Proc"));
  describe("POST", "/v1/procs", Ref("Proc"));
  describe("GET", "/v1/procs/{pid}", Ref("Proc"));
  describe("POST", "/v1/procs/{pid}/fork", Ref("Proc"));
  describe("POST", "/v1/procs/{pid}/kill", Closed({{"signalled", ArrayOf(Int())}, {"signal", Enum({"TERM", "KILL"})}}));
  describe("GET", "/v1/procs/{pid}/wait", Ref("Execution"));
  describe("GET", "/v1/procs/{pid}/children", ListSchema("procs", "Proc"));
  describe("GET", "/v1/procs/{pid}/logs", Ref("Logs"));
  describe("GET", "/v1/nodes", ListSchema("nodes", "Node"));
  describe("GET", "/v1/nodes/{name}", Ref("Node"));
  describe("POST", "/v1/nodes", Ref("Node"));
  describe("DELETE", "/v1/nodes/{name}", Ref("Deleted"));
  for (const char* action : {"/v1/nodes/{name}/cordon", "/v1/nodes/{name}/uncordon", "/v1/nodes/{name}/drain"}) {
    describe("POST", action, Ref("Node"));
  }
  describe("POST", "/v1/tokens", Ref("Token"));
  describe("GET", "/v1/tokens", ListSchema("tokens", "Token"));
  describe("DELETE", "/v1/tokens/{id}", Ref("Token"));
  router.Describe("GET", "/v1/docs", Str(), "text/html");
  router.Describe("GET", "/v1/gateway/docs", Str(), "text/html");
  describe("GET", "/v1/functions/{name}/openapi.json", {{"type", "object"}});
  describe("GET", "/v1/gateway/openapi.json", {{"type", "object"}});
  router.Describe("GET", "/metrics", Str(), "text/plain");
}

}  // namespace berth::api
