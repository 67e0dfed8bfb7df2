// The synchronous HTTP gateway (issue 7): `ANY /gw/{tenant}/{function}/{path...}`
// runs the function and answers on the same connection, speaking CGI/1.1
// (RFC 3875) to it: the request body is its stdin, the request is described
// in its environment (REQUEST_METHOD, PATH_INFO, QUERY_STRING, CONTENT_TYPE,
// CONTENT_LENGTH, SCRIPT_NAME, HTTP_*, ...), and its stdout is parsed as a
// CGI response (header lines, a blank line, the body).
//
// Addressing: always /gw/<tenant>/<function>/..., so a public route needs no
// token to name its tenant. Access follows the function's GatewayPolicy:
// public (no token), token (any valid token) or tenant (a token of that
// tenant; another tenant's function is 404). An unknown function answers 401
// to a caller without a valid token, so its existence does not leak.
//
// Answers: the function's CGI response; 504 when it exceeded its timeout; 502
// when it crashed, failed without a valid CGI response, wrote a malformed one
// or more than max_response_bytes; 413 for a body over max_request_bytes;
// 429 (+ Retry-After) past a rate limit or a full concurrency queue; 503 when
// the gateway's own pool is full, or when no node had room for the run within
// capacity_wait_ms (a run waits for room, holding its concurrency slot).
// Every answer that ran an execution carries its id in X-Berth-Execution-Id
// (JSON error bodies also name it).
//
// The connection waits suspended (no thread); executions run on a bounded
// worker pool, per-function concurrency limits queue requests in front of it.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "api/router.h"
#include "common/status.h"
#include "manager/service.h"
#include "manager/types.h"

namespace berth::api {

struct GatewayOptions {
  size_t workers = 32;                  // executions at once through the gateway
  size_t max_waiting = 1024;            // admitted requests waiting for a worker; more -> 503
  size_t max_request_bytes = 1u << 20;  // request body; more -> 413
  size_t max_response_bytes = 1u << 20; // CGI output (headers + body); more -> 502
  // No node has room for the run: wait this long for capacity (other runs
  // ending) before answering 503 + Retry-After.
  int64_t capacity_wait_ms = 10'000;
};

// Adds the gateway route to `router`; the gateway lives as long as the route.
// (routes.h declares the overload with default options that BuildRouter uses.)
void AddGatewayRoutes(Router& router, manager::Service& service, GatewayOptions options);

// Reads the "gateway" object of a function definition (types only; ranges
// are checked by the manager). Errors name "gateway.<field>".
Status ParseGatewayPolicy(const nlohmann::json& j, manager::GatewayPolicy* out);
nlohmann::json GatewayPolicyJson(const manager::GatewayPolicy& p);

// --- The parts below are pure and exposed for tests. ---

// The CGI environment of one request. `script_name` is "/gw/<tenant>/<function>",
// `path_info` the rest ("" or starting with '/'). Authorization and Proxy*
// headers are never passed on.
std::map<std::string, std::string> CgiEnvironment(const HttpRequest& request, const std::string& script_name,
                                                  const std::string& path_info);

// Parses a CGI program's stdout: header lines ("Status: 201 Created",
// "Content-Type: ...", "Location: ...", others passed on), ended by a blank
// line (\n or \r\n), then the body. At least one header is required; output
// that ends after the headers has an empty body. No Status: 200, or 302 with
// a Location. InvalidArgument (-> 502) when malformed.
Result<HttpResponse> ParseCgiResponse(std::string_view output);

// A token bucket: `rate` tokens per second, at most `burst` stored.
class TokenBucket {
 public:
  void Configure(double rate, double burst);
  // Refills to now_ms; 0 if a token is there, else the ms until one is.
  int64_t WaitMs(int64_t now_ms);
  void Take() { tokens_ -= 1; }
  bool full() const { return tokens_ >= burst_; }

 private:
  double rate_ = 0, burst_ = 1, tokens_ = -1;
  int64_t last_ms_ = 0;
};

}  // namespace berth::api

namespace berth::api {

// ---- Declared routes and their documents (issue 7, item 6) ----
//
// A function definition may carry "routes": [{method, path, summary,
// description, parameters: [{name, in: path|query|header, required,
// description, schema}], request: {content_type, required, description,
// schema}, responses: {"200"|"2XX"|"default": {description, content_type,
// schema}}}]. `path` is relative to /gw/<tenant>/<function> ("/items/{id}");
// its {placeholders} are path parameters (declared or not). Schemas are
// OpenAPI 3.0 Schema Objects without $ref. The routes document; they do not
// restrict what the gateway serves.

// Checks and normalises a "routes" value; the result is the JSON text that
// FunctionSpec::gateway_routes keeps. Errors are InvalidArgument naming the
// field, e.g. "routes[1].parameters[0].in".
Result<std::string> ParseGatewayRoutes(const nlohmann::json& routes);
// The stored routes as JSON (an empty array when none).
nlohmann::json GatewayRoutesJson(const std::string& gateway_routes);

// OpenAPI 3.0 document of one function's declared gateway routes, its paths
// absolute (/gw/<tenant>/<function>/...), auth as its gateway policy says.
nlohmann::json FunctionGatewayOpenApi(const manager::FunctionRecord& function);
// One document for all of a tenant's functions (each function a tag).
nlohmann::json TenantGatewayOpenApi(const std::string& tenant, const std::vector<manager::FunctionRecord>& functions);

// A self-contained HTML page (no scripts, no CDN) listing an OpenAPI
// document's operations, linking to the document at json_url.
std::string OpenApiHtmlPage(const nlohmann::json& doc, const std::string& json_url);

// GET /v1/functions/{name}/openapi.json, GET /v1/gateway/openapi.json (the
// caller's tenant; admins may pass ?tenant=) and GET /v1/gateway/docs (an
// HTML page of the tenant's document, or one function's with ?function=).
void AddGatewayDocRoutes(Router& router, manager::Service& service);

}  // namespace berth::api
