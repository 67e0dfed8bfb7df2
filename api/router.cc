#include "api/router.h"

#include <nlohmann/json.hpp>

namespace berth::api {
namespace {

std::vector<std::string> Split(const std::string& path) {
  std::vector<std::string> parts;
  size_t i = 0;
  while (i < path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    if (j > i) parts.push_back(path.substr(i, j - i));
    i = j + 1;
  }
  return parts;
}

// "{name...}": the trailing wildcard segment; sets *name.
bool IsWildcard(const std::string& seg, std::string* name) {
  if (seg.size() < 6 || seg.front() != '{' || seg.compare(seg.size() - 4, 4, "...}") != 0) return false;
  if (name) *name = seg.substr(1, seg.size() - 5);
  return true;
}

bool MatchPattern(const std::string& pattern, const std::string& path, std::map<std::string, std::string>* params) {
  auto pp = Split(pattern), xp = Split(path);
  std::string wildcard;
  bool has_wildcard = !pp.empty() && IsWildcard(pp.back(), &wildcard);
  size_t fixed = has_wildcard ? pp.size() - 1 : pp.size();
  if (has_wildcard ? xp.size() < fixed : xp.size() != fixed) return false;
  std::map<std::string, std::string> found;
  for (size_t i = 0; i < fixed; ++i) {
    if (pp[i].size() > 2 && pp[i].front() == '{' && pp[i].back() == '}') {
      found[pp[i].substr(1, pp[i].size() - 2)] = xp[i];
    } else if (pp[i] != xp[i]) {
      return false;
    }
  }
  if (has_wildcard) {
    std::string rest;
    for (size_t i = fixed; i < xp.size(); ++i) rest += (i > fixed ? "/" : "") + xp[i];
    if (!rest.empty() && !path.empty() && path.back() == '/') rest += '/';
    found[wildcard] = std::move(rest);
  }
  if (params) *params = std::move(found);
  return true;
}

}  // namespace

const Route* Router::Match(const std::string& method, const std::string& path,
                           std::map<std::string, std::string>* params, int* miss_status) const {
  bool path_known = false;
  for (const auto& r : routes_) {
    std::map<std::string, std::string> p;
    if (!MatchPattern(r.pattern, path, &p)) continue;
    path_known = true;
    if (r.method == method || r.method == "*") {
      *params = std::move(p);
      return &r;
    }
  }
  *miss_status = path_known ? 405 : 404;
  return nullptr;
}

std::string BearerToken(const std::string& authorization) {
  constexpr size_t kScheme = 7;  // "Bearer "
  if (authorization.size() <= kScheme) return "";
  std::string scheme = authorization.substr(0, kScheme);
  for (auto& c : scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (scheme != "bearer ") return "";
  std::string token = authorization.substr(kScheme);
  while (!token.empty() && token.front() == ' ') token.erase(0, 1);
  while (!token.empty() && token.back() == ' ') token.pop_back();
  for (char c : token) {
    if (c <= ' ' || c > '~') return "";
  }
  return token;
}

Status Router::Authorize(const Route& route, HttpRequest* request) const {
  if (route.is_public || route.handler_authenticates || !authenticator_) return Status::Ok();
  if (request->authorization.empty()) {
    return Status::Unauthenticated("missing Authorization header; send 'Authorization: Bearer <token>'");
  }
  std::string token = BearerToken(request->authorization);
  if (token.empty()) return Status::Unauthenticated("malformed Authorization header; expected 'Bearer <token>'");
  auto caller = authenticator_(token);
  if (!caller.ok()) {
    if (caller.status().code() == Code::kUnauthenticated) return caller.status();
    return caller.status().WithContext("authenticating");
  }
  request->caller = std::move(*caller);
  return Status::Ok();
}

bool Router::Describe(const std::string& method, const std::string& pattern, nlohmann::json schema,
                      const std::string& content_type) {
  for (auto& r : routes_) {
    if (r.method == method && r.pattern == pattern) {
      r.response_schema = std::move(schema);
      r.response_content_type = content_type;
      return true;
    }
  }
  return false;
}

std::string Router::OpenApiJson() const { return OpenApiDocument().dump(2); }

nlohmann::json Router::OpenApiDocument() const {
  using json = nlohmann::json;
  json doc = {{"openapi", "3.0.3"},
              {"info", {{"title", "berth API"}, {"version", "1"}}},
              {"paths", json::object()}};
  doc["components"]["schemas"] = json::object();
  for (const auto& [name, schema] : schemas_) doc["components"]["schemas"][name] = schema;
  doc["components"]["schemas"]["Error"] = {
      {"type", "object"},
      {"required", {"error"}},
      {"properties",
       {{"error",
         {{"type", "object"},
          {"required", {"code", "message"}},
          {"properties",
           {{"code", {{"type", "string"}, {"description", "e.g. INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED"}}},
            {"message", {{"type", "string"}}},
            {"field", {{"type", "string"}, {"description", "the request field at fault, when one is"}}},
            {"execution_error_code", {{"type", "string"}}},
            {"execution_id", {{"type", "string"}}}}}}},
        {"execution_id", {{"type", "string"}}},
        {"execution", {{"type", "object"}, {"description", "the execution record, for errors of an execution"}}}}}};
  auto error_response = [](const char* what) {
    return json{{"description", what},
                {"content", {{"application/json", {{"schema", {{"$ref", "#/components/schemas/Error"}}}}}}}};
  };
  if (authenticator_) {
    doc["components"]["securitySchemes"] = {{"bearerAuth", {{"type", "http"}, {"scheme", "bearer"}}}};
    doc["security"] = json::array({{{"bearerAuth", json::array()}}});
  }
  for (const auto& r : routes_) {
    json success = {{"description", "success"}};
    if (!r.response_schema.is_null()) {
      success["content"][r.response_content_type]["schema"] = r.response_schema;
    }
    json op = {{"summary", r.summary},
               {"responses",
                {{std::to_string(r.success_status), success},
                 {"4XX", error_response("a bad request, unknown object or conflict")},
                 {"5XX", error_response("the server or a node cannot serve it now")}}}};
    // OpenAPI path templates cannot span '/': a "{rest...}" wildcard is
    // published as "{rest}" and described as taking the rest of the path.
    std::string doc_path;
    nlohmann::json params = nlohmann::json::array();
    for (const auto& part : Split(r.pattern)) {
      std::string wildcard;
      if (IsWildcard(part, &wildcard)) {
        doc_path += "/{" + wildcard + "}";
        params.push_back({{"name", wildcard}, {"in", "path"}, {"required", true},
                          {"description", "the rest of the path; may be empty and may contain '/'"},
                          {"schema", {{"type", "string"}}}});
      } else {
        doc_path += "/" + part;
        if (part.size() > 2 && part.front() == '{') {
          params.push_back({{"name", part.substr(1, part.size() - 2)}, {"in", "path"}, {"required", true},
                            {"schema", {{"type", "string"}}}});
        }
      }
    }
    if (doc_path.empty()) doc_path = "/";
    if (!params.empty()) op["parameters"] = params;
    if (authenticator_) {
      if (r.is_public) {
        op["security"] = nlohmann::json::array();
      } else if (r.handler_authenticates) {
        // Optional: the handler decides per request.
        op["security"] = nlohmann::json::array({nlohmann::json::object(), {{"bearerAuth", nlohmann::json::array()}}});
        op["responses"]["401"] = error_response("this route needs a bearer token and none (or a bad one) was sent");
      } else {
        op["responses"]["401"] = error_response("missing, malformed, unknown or revoked bearer token");
      }
    }
    if (r.sink) {
      op["requestBody"] = {{"content", {{"application/octet-stream", {{"schema", {{"type", "string"}, {"format", "binary"}}}}}}}};
    }
    std::vector<std::string> methods;
    if (r.method == "*") {
      methods = {"get", "put", "post", "delete", "options", "head", "patch"};
    } else {
      std::string method = r.method;
      for (auto& c : method) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      methods = {method};
    }
    for (const auto& m : methods) {
      nlohmann::json one = op;
      if (methods.size() > 1) one["summary"] = r.summary + " (" + m + ")";
      doc["paths"][doc_path][m] = std::move(one);
    }
  }
  return doc;
}

}  // namespace berth::api
