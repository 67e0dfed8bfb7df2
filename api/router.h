// The route table: the one place that says which HTTP method + path pattern
// becomes which typed command. The OpenAPI document is generated from it, so
// the published API and what the server does cannot drift apart.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace berth::api {

// Who sent a request, as the authenticator established it.
struct Caller {
  std::string tenant;
  std::string token_id;
  bool admin = false;
};

struct HttpRequest {
  std::string method;
  std::string path;
  std::map<std::string, std::string> query;
  std::map<std::string, std::string> params;  // from {placeholders} in the pattern
  std::string body;
  std::string authorization;  // the Authorization header, as sent
  std::string host;           // the Host header, as sent (for absolute URLs)
  Caller caller;              // filled in before a non-public route's handler runs
  // Every request header; names lowercased, repeated headers joined with ", ".
  std::map<std::string, std::string> headers;
  std::string raw_query;      // the query string exactly as sent (no '?'), e.g. for CGI
  std::string version;        // "HTTP/1.1"
  std::string remote_addr;    // the client's IP address
};

struct HttpResponse {
  int status = 200;
  std::string body;
  std::string content_type = "application/json";  // "" sends no Content-Type
  // Further response headers, sent as given (Content-Length, Connection and
  // Transfer-Encoding are the server's and must not appear here).
  std::vector<std::pair<std::string, std::string>> headers;
};

// A request body consumed as it arrives (image uploads) instead of buffered.
class BodySink {
 public:
  virtual ~BodySink() = default;
  virtual Status Append(std::string_view chunk) = 0;
  // Called once the whole body arrived; produces the response.
  virtual HttpResponse Finish() = 0;
};

using Handler = std::function<HttpResponse(const HttpRequest&)>;
// Creates the sink for a streaming route (may fail, e.g. bad query args).
using SinkFactory = std::function<Result<std::unique_ptr<BodySink>>(const HttpRequest&)>;
// Delivers the response of an asynchronous route; callable once, from any thread.
using Responder = std::function<void(HttpResponse)>;
// A route that answers later: called on the server's I/O thread once the body
// arrived, it must not block; it hands the work to its own threads and calls
// `respond` exactly once. The connection waits meanwhile without a thread.
using AsyncHandler = std::function<void(HttpRequest, Responder respond)>;

// Handlers of buffered routes run on the server's worker threads, never on
// its I/O threads, so a slow one delays only its own connection.
struct Route {
  std::string method;   // "GET", ...; "*": any method
  // "/v1/functions/{name}/invoke". A last segment "{name...}" matches the
  // rest of the path (zero or more segments, '/' included, a trailing '/'
  // kept), e.g. "/gw/{tenant}/{function}/{path...}".
  std::string pattern;
  std::string summary;  // one line for the OpenAPI document
  Handler handler;      // set for buffered routes
  SinkFactory sink;     // set for streaming routes
  int success_status = 200;
  bool is_public = false;  // true: served without credentials (only /v1/health)
  AsyncHandler async;      // set for asynchronous buffered routes (instead of handler)
  // The router does not authenticate; the handler decides per request
  // (gateway routes: each function is public, token or tenant-only).
  // Documented as optional bearer auth.
  bool handler_authenticates = false;
  size_t max_body_bytes = 0;  // buffered body cap (413); 0: the server's
  // The JSON Schema (OpenAPI 3.0 Schema Object; "$ref": "#/components/schemas/X"
  // for a schema given to Router::AddSchema) of the success body; null: not
  // described. Set with Router::Describe after the route is added.
  nlohmann::json response_schema;
  std::string response_content_type = "application/json";
};

// Turns a bearer token into the caller, or fails (kUnauthenticated -> 401).
using Authenticator = std::function<Result<Caller>(const std::string& bearer)>;

// Extracts the token of "Bearer <token>" (scheme case-insensitive); "" when
// the header is missing or malformed.
std::string BearerToken(const std::string& authorization);

class Router {
 public:
  void Add(Route route) { routes_.push_back(std::move(route)); }
  // Finds the route for method+path, filling params. nullopt + status tells
  // 404 (no such path) from 405 (path exists, method does not).
  const Route* Match(const std::string& method, const std::string& path,
                     std::map<std::string, std::string>* params, int* miss_status) const;
  const std::vector<Route>& routes() const { return routes_; }
  // Without an authenticator every route is served without credentials.
  void set_authenticator(Authenticator a) { authenticator_ = std::move(a); }
  // Authenticates `request` for `route` (filling request->caller), unless the
  // route is public or no authenticator is set. The one place auth happens.
  Status Authorize(const Route& route, HttpRequest* request) const;
  // OpenAPI 3 document of all routes. Error answers (4XX, 5XX) are
  // documented with the schema "Error" ({"error": {code, message, field?}}).
  std::string OpenApiJson() const;
  nlohmann::json OpenApiDocument() const;

  // A named schema for the document's components.schemas (replaces one of the same name).
  void AddSchema(const std::string& name, nlohmann::json schema) { schemas_[name] = std::move(schema); }
  // Sets the success body schema of the route method+pattern (exactly as
  // added); false when there is no such route.
  bool Describe(const std::string& method, const std::string& pattern, nlohmann::json schema,
                const std::string& content_type = "application/json");

 private:
  std::vector<Route> routes_;
  std::map<std::string, nlohmann::json> schemas_;
  Authenticator authenticator_;
};

}  // namespace berth::api
