// JSON in, typed requests out. Handlers here only parse, call the Service and
// render; they hold no logic of their own.
#include "api/routes.h"
#include "api/svc_routes.h"

#include <nlohmann/json.hpp>

#include "api/errors.h"
#include "api/gateway.h"
#include "api/json_fields.h"
#include "api/render.h"

namespace berth::api {
namespace {

using json = nlohmann::json;
using manager::ExecState;

// Executions that ended in `error` answer with an error status, the error
// naming the field at fault, and the execution record beside it.
HttpResponse ExecutionResponse(const manager::ExecutionRecord& e) {
  if (e.state == ExecState::kLost) {
    // Its node went away mid-run: the caller's answer is gone with it.
    HttpResponse r = ErrorResponse(Status::Unavailable(e.error.empty() ? "the execution was lost" : e.error));
    json body = json::parse(r.body);
    body["execution"] = ExecutionJson(e);
    return Json(r.status, body);
  }
  if (e.state != ExecState::kError) return Json(200, ExecutionJson(e));
  Status st;
  if (e.error_code == "entrypoint_not_found" || e.error_code == "entrypoint_not_executable") {
    st = Status::FailedPrecondition(e.error, "entrypoint");
  } else if (e.error_code == "no_capacity") {
    st = Status::ResourceExhausted(e.error);
  } else {
    st = Status::Unavailable(e.error);
  }
  HttpResponse r = ErrorResponse(st);
  json body = json::parse(r.body);
  body["error"]["execution_error_code"] = e.error_code;
  body["execution"] = ExecutionJson(e);
  return Json(r.status, body);
}

Result<manager::FunctionSpec> ParseFunctionSpec(const std::string& body, const std::string* path_name) {
  BERTH_ASSIGN_OR_RETURN(json j, ParseJsonObject(body));
  manager::FunctionSpec spec;
  if (auto g = j.find("gateway"); g != j.end()) {
    BERTH_RETURN_IF_ERROR(ParseGatewayPolicy(*g, &spec.gateway));
    j.erase("gateway");
  }
  if (auto routes = j.find("routes"); routes != j.end()) {
    BERTH_ASSIGN_OR_RETURN(spec.gateway_routes, ParseGatewayRoutes(*routes));
    j.erase("routes");
  }
  BERTH_RETURN_IF_ERROR(TakeFunctionNetwork(j, &spec));
  FieldReader r(j);
  int64_t vcpus = spec.vcpus, memory = static_cast<int64_t>(spec.memory_mib), timeout = spec.timeout_ms;
  BERTH_RETURN_IF_ERROR(r.String("name", &spec.name, path_name == nullptr));
  BERTH_RETURN_IF_ERROR(r.String("image", &spec.image, true));
  BERTH_RETURN_IF_ERROR(r.StringArray("entrypoint", &spec.entrypoint, true));
  BERTH_RETURN_IF_ERROR(r.Int("vcpus", &vcpus, -kBig, kBig));
  BERTH_RETURN_IF_ERROR(r.Int("memory_mib", &memory, -kBig, kBig));
  BERTH_RETURN_IF_ERROR(r.Int("timeout_ms", &timeout, -kBig, kBig));
  BERTH_RETURN_IF_ERROR(r.StringMap("env", &spec.env));
  BERTH_RETURN_IF_ERROR(r.String("cwd", &spec.cwd));
  BERTH_RETURN_IF_ERROR(r.String("network", &spec.network));
  int64_t min_warm = 0, max_warm = 0, idle_timeout = spec.idle_timeout_ms;
  BERTH_RETURN_IF_ERROR(r.Bool("snapshot", &spec.snapshot));
  BERTH_RETURN_IF_ERROR(r.Bool("retryable", &spec.retryable));
  BERTH_RETURN_IF_ERROR(r.Int("min_warm", &min_warm, -kBig, kBig));
  BERTH_RETURN_IF_ERROR(r.Int("max_warm", &max_warm, -kBig, kBig));
  BERTH_RETURN_IF_ERROR(r.Int("idle_timeout_ms", &idle_timeout, -kBig, kBig));
  BERTH_RETURN_IF_ERROR(r.Bool("keep_alive", &spec.keep_alive));
  int64_t target_concurrency = spec.target_concurrency, max_instances = spec.max_instances,
          max_queued = spec.max_queued;
  BERTH_RETURN_IF_ERROR(r.Int("target_concurrency", &target_concurrency, -kBig, kBig));
  BERTH_RETURN_IF_ERROR(r.Int("max_instances", &max_instances, -kBig, kBig));
  BERTH_RETURN_IF_ERROR(r.Int("max_queued", &max_queued, -kBig, kBig));
  BERTH_RETURN_IF_ERROR(r.Int("queue_timeout_ms", &spec.queue_timeout_ms, -kBig, kBig));
  auto bounded = [](int64_t v) { return v < 0 || v > 1 << 20 ? 1u << 30 : static_cast<uint32_t>(v); };
  spec.target_concurrency = bounded(target_concurrency);
  spec.max_instances = bounded(max_instances);
  spec.max_queued = bounded(max_queued);
  // Out of range: a value the manager's range check rejects by name.
  spec.min_warm = min_warm < 0 || min_warm > 1 << 20 ? 1u << 30 : static_cast<uint32_t>(min_warm);
  spec.max_warm = max_warm < 0 || max_warm > 1 << 20 ? 1u << 30 : static_cast<uint32_t>(max_warm);
  spec.idle_timeout_ms = idle_timeout;
  BERTH_RETURN_IF_ERROR(r.NoUnknownFields());
  if (path_name) {
    if (!spec.name.empty() && spec.name != *path_name) {
      return Status::InvalidArgument("name", "does not match the function named in the path");
    }
    spec.name = *path_name;
  }
  // Out-of-range values become 0 so the manager's range check names them.
  spec.vcpus = vcpus < 0 || vcpus > 1 << 20 ? 0 : static_cast<uint32_t>(vcpus);
  spec.memory_mib = memory < 0 ? 0 : static_cast<uint64_t>(memory);
  spec.timeout_ms = timeout < 0 ? 0 : timeout;
  return spec;
}

Result<manager::InvokeRequest> ParseInvoke(const std::string& body) {
  manager::InvokeRequest req;
  if (body.empty()) return req;  // invoking with no arguments is fine
  BERTH_ASSIGN_OR_RETURN(json j, ParseJsonObject(body));
  FieldReader r(j);
  BERTH_RETURN_IF_ERROR(r.StringArray("args", &req.args));
  BERTH_RETURN_IF_ERROR(r.StringMap("env", &req.env));
  BERTH_RETURN_IF_ERROR(r.String("stdin", &req.stdin_data));
  BERTH_RETURN_IF_ERROR(r.Int("ppid", &req.ppid, 0, kBig));
  BERTH_RETURN_IF_ERROR(r.String("name", &req.name));
  BERTH_RETURN_IF_ERROR(r.NoUnknownFields());
  return req;
}


json TokenJson(const manager::TokenRecord& t) {
  return {{"id", t.id},
          {"tenant", t.tenant},
          {"name", t.name},
          {"admin", t.admin},
          {"created_ms", t.created_ms},
          {"revoked", t.revoked_ms.has_value()},
          {"revoked_ms", t.revoked_ms ? json(*t.revoked_ms) : json(nullptr)}};
}

}  // namespace

Router BuildRouter(manager::Service& svc, manager::EventService* events) {
  Router router;
  router.set_authenticator([&svc](const std::string& bearer) -> Result<Caller> {
    auto p = svc.Authenticate(bearer);
    if (!p.ok()) return p.status();
    return Caller{p->tenant, p->token_id, p->admin};
  });
  Route health{"GET", "/v1/health", "Liveness and node status (no credentials needed)", [&svc](const HttpRequest&) {
                auto h = svc.Health();
                json j = {{"status", h.libvirt_ok ? "ok" : "degraded"},
                          {"node", h.node},
                          {"uri", h.uri},
                          {"accel", h.accel},
                          {"libvirt", h.libvirt_ok ? "connected" : h.libvirt_error},
                          {"kernel", h.kernel_version}};
                return Json(h.libvirt_ok ? 200 : 503, j);
              }};
  health.is_public = true;
  router.Add(std::move(health));

  AddImageRoutes(router, svc);  // api/image_routes.cc

  Route create{"POST", "/v1/functions", "Register a function", [&svc](const HttpRequest& req) {
                 auto spec = ParseFunctionSpec(req.body, nullptr);
                 if (!spec.ok()) return ErrorResponse(spec.status());
                 return Respond(svc.CreateFunction(Who(req), *spec), 201, FunctionJson);
               }};
  create.success_status = 201;
  router.Add(std::move(create));
  router.Add({"GET", "/v1/functions", "List functions", [&svc](const HttpRequest& req) {
                return Respond(svc.ListFunctions(Who(req)), 200, ListOf("functions", FunctionJson));
              }});
  router.Add({"GET", "/v1/functions/{name}", "Get a function", [&svc](const HttpRequest& req) {
                return Respond(svc.GetFunction(Who(req), req.params.at("name")), 200, FunctionJson);
              }});
  router.Add({"PUT", "/v1/functions/{name}", "Update a function (new version)", [&svc](const HttpRequest& req) {
                auto spec = ParseFunctionSpec(req.body, &req.params.at("name"));
                if (!spec.ok()) return ErrorResponse(spec.status());
                return Respond(svc.UpdateFunction(Who(req), *spec), 200, FunctionJson);
              }});
  router.Add({"DELETE", "/v1/functions/{name}", "Delete a function", [&svc](const HttpRequest& req) {
                Status s = svc.DeleteFunction(Who(req), req.params.at("name"));
                return s.ok() ? Json(200, {{"deleted", req.params.at("name")}}) : ErrorResponse(s);
              }});
  router.Add({"POST", "/v1/functions/{name}/invoke",
              "Invoke synchronously; answers when the execution ended (?async=1: queue it; 202 + delivery_id)",
              [&svc, events](const HttpRequest& req) {
                auto inv = ParseInvoke(req.body);
                if (!inv.ok()) return ErrorResponse(inv.status());
                if (auto queued = MaybeInvokeAsync(events, req, *inv)) return *queued;
                auto ex = svc.Invoke(Who(req), req.params.at("name"), *inv);
                if (!ex.ok()) return ErrorResponse(ex.status());
                return ExecutionResponse(*ex);
              }});
  router.Add({"GET", "/v1/executions/{id}", "Get an execution record", [&svc](const HttpRequest& req) {
                return Respond(svc.GetExecution(Who(req), req.params.at("id")), 200, ExecutionJson);
              }});

  Route create_token{"POST", "/v1/tokens",
                     "Create a token for a tenant {tenant, name} (admin only; the secret is answered once)",
                     [&svc](const HttpRequest& req) {
                       auto j = ParseJsonObject(req.body);
                       if (!j.ok()) return ErrorResponse(j.status());
                       FieldReader r(*j);
                       std::string tenant, name;
                       Status s = r.String("tenant", &tenant, true);
                       if (s.ok()) s = r.String("name", &name);
                       if (s.ok()) s = r.NoUnknownFields();
                       if (!s.ok()) return ErrorResponse(s);
                       auto created = svc.CreateToken(Who(req), tenant, name);
                       if (!created.ok()) return ErrorResponse(created.status());
                       json out = TokenJson(created->record);
                       out["token"] = created->secret;
                       return Json(201, out);
                     }};
  create_token.success_status = 201;
  router.Add(std::move(create_token));
  router.Add({"GET", "/v1/tokens", "List tokens (admin: all; others: their tenant's); never secrets",
              [&svc](const HttpRequest& req) {
                return Respond(svc.ListTokens(Who(req)), 200, ListOf("tokens", TokenJson));
              }});
  router.Add({"DELETE", "/v1/tokens/{id}", "Revoke a token (admin: any; others: their tenant's)",
              [&svc](const HttpRequest& req) {
                return Respond(svc.RevokeToken(Who(req), req.params.at("id")), 200, TokenJson);
              }});
  AddProcRoutes(router, svc);
  AddDckRoutes(router, svc);
  AddMetricsRoutes(router, svc);
  AddGatewayRoutes(router, svc);
  AddSvcRoutes(router, svc);
  DescribeResponses(router);
  return router;
}

}  // namespace berth::api
