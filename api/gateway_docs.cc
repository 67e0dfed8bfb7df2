// Declared gateway routes of functions and the OpenAPI documents made from
// them (issue 7, item 6). See api/gateway.h.
#include <set>

#include "api/errors.h"
#include "api/gateway.h"
#include "api/render.h"

namespace berth::api {
namespace {

using json = nlohmann::json;

constexpr size_t kMaxRoutes = 100;
constexpr int kMaxSchemaDepth = 32;

std::string Index(const std::string& field, size_t i) { return field + "[" + std::to_string(i) + "]"; }

Status Bad(const std::string& field, const std::string& why) { return Status::InvalidArgument(field, why); }

Status CheckString(const json& obj, const char* key, const std::string& field, bool required, size_t max,
                   std::string* out = nullptr) {
  auto it = obj.find(key);
  if (it == obj.end()) return required ? Bad(field + "." + key, "is required") : Status::Ok();
  if (!it->is_string()) return Bad(field + "." + key, "must be a string");
  if (it->get_ref<const std::string&>().size() > max) {
    return Bad(field + "." + key, "must be at most " + std::to_string(max) + " characters");
  }
  if (out) *out = it->get<std::string>();
  return Status::Ok();
}

Status OnlyKeys(const json& obj, const std::string& field, std::initializer_list<const char*> keys) {
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    bool known = false;
    for (const char* k : keys) known = known || it.key() == k;
    if (!known) return Bad(field + "." + it.key(), "unknown field");
  }
  return Status::Ok();
}

// An OpenAPI 3.0 Schema Object without $ref: what the external validator accepts.
Status CheckSchema(const json& s, const std::string& field, int depth) {
  if (depth > kMaxSchemaDepth) return Bad(field, "nests deeper than " + std::to_string(kMaxSchemaDepth));
  if (!s.is_object()) return Bad(field, "must be a schema object");
  static const std::set<std::string> kStrings = {"title", "description", "format", "pattern"};
  static const std::set<std::string> kBools = {"nullable", "readOnly", "writeOnly", "uniqueItems", "deprecated",
                                               "exclusiveMaximum", "exclusiveMinimum"};
  static const std::set<std::string> kNumbers = {"multipleOf", "maximum", "minimum"};
  static const std::set<std::string> kCounts = {"maxLength", "minLength", "maxItems", "minItems", "maxProperties",
                                                "minProperties"};
  static const std::set<std::string> kAny = {"default", "example"};
  for (auto it = s.begin(); it != s.end(); ++it) {
    const std::string& k = it.key();
    const json& v = it.value();
    const std::string f = field + "." + k;
    if (k.rfind("x-", 0) == 0 || kAny.count(k)) continue;
    if (k == "$ref") return Bad(f, "is not supported; write the schema inline");
    if (kStrings.count(k)) {
      if (!v.is_string()) return Bad(f, "must be a string");
    } else if (kBools.count(k)) {
      if (!v.is_boolean()) return Bad(f, "must be true or false");
    } else if (kNumbers.count(k)) {
      if (!v.is_number() || (k == "multipleOf" && v.get<double>() <= 0)) return Bad(f, "must be a (positive) number");
    } else if (kCounts.count(k)) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0) return Bad(f, "must be a non-negative integer");
    } else if (k == "type") {
      static const std::set<std::string> kTypes = {"string", "number", "integer", "boolean", "array", "object"};
      if (!v.is_string() || !kTypes.count(v.get<std::string>())) {
        return Bad(f, "must be one of string, number, integer, boolean, array, object");
      }
    } else if (k == "enum") {
      if (!v.is_array() || v.empty()) return Bad(f, "must be a non-empty array");
    } else if (k == "required") {
      if (!v.is_array() || v.empty()) return Bad(f, "must be a non-empty array of property names");
      for (const auto& r : v) {
        if (!r.is_string()) return Bad(f, "must be a non-empty array of property names");
      }
    } else if (k == "items" || k == "not") {
      BERTH_RETURN_IF_ERROR(CheckSchema(v, f, depth + 1));
    } else if (k == "additionalProperties") {
      if (!v.is_boolean()) BERTH_RETURN_IF_ERROR(CheckSchema(v, f, depth + 1));
    } else if (k == "properties") {
      if (!v.is_object()) return Bad(f, "must be an object of schemas");
      for (auto p = v.begin(); p != v.end(); ++p) BERTH_RETURN_IF_ERROR(CheckSchema(p.value(), f + "." + p.key(), depth + 1));
    } else if (k == "allOf" || k == "anyOf" || k == "oneOf") {
      if (!v.is_array() || v.empty()) return Bad(f, "must be a non-empty array of schemas");
      for (size_t i = 0; i < v.size(); ++i) BERTH_RETURN_IF_ERROR(CheckSchema(v[i], Index(f, i), depth + 1));
    } else {
      return Bad(f, "is not a keyword of an OpenAPI 3.0 schema");
    }
  }
  if (s.value("type", "") == "array" && !s.contains("items")) return Bad(field + ".items", "is required for type array");
  return Status::Ok();
}

// "{name}" placeholders of a route path, in order; fails on a malformed path.
Result<std::vector<std::string>> PathPlaceholders(const std::string& path, const std::string& field) {
  if (path.empty() || path.front() != '/') return Bad(field, "must start with '/'");
  if (path.size() > 1024) return Bad(field, "must be at most 1024 characters");
  std::vector<std::string> names;
  for (size_t i = 0; i < path.size(); ++i) {
    char c = path[i];
    if (c == '?' || c == '#' || c == '}' || static_cast<unsigned char>(c) <= ' ' || c == 0x7f) {
      return Bad(field, std::string("must not contain '") + c + "' (a path, no query)");
    }
    if (c != '{') continue;
    size_t end = path.find('}', i);
    if (end == std::string::npos) return Bad(field, "has a '{' without '}'");
    std::string name = path.substr(i + 1, end - i - 1);
    if (name.empty() || name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") !=
                            std::string::npos) {
      return Bad(field, "placeholder '{" + name + "}' must be letters, digits, '_' or '-'");
    }
    for (const auto& n : names) {
      if (n == name) return Bad(field, "placeholder '{" + name + "}' appears twice");
    }
    names.push_back(name);
    i = end;
  }
  return names;
}

Result<json> ParseBody(const json& b, const std::string& field, bool request) {
  if (!b.is_object()) return Bad(field, "must be an object");
  if (request) {
    BERTH_RETURN_IF_ERROR(OnlyKeys(b, field, {"content_type", "required", "description", "schema"}));
  } else {
    BERTH_RETURN_IF_ERROR(OnlyKeys(b, field, {"content_type", "description", "schema"}));
  }
  json out = json::object();
  std::string content_type = "application/json", description;
  BERTH_RETURN_IF_ERROR(CheckString(b, "content_type", field, false, 200, &content_type));
  if (content_type.empty() || content_type.find('/') == std::string::npos) {
    return Bad(field + ".content_type", "must be a media type such as application/json");
  }
  BERTH_RETURN_IF_ERROR(CheckString(b, "description", field, false, 4000, &description));
  out["content_type"] = content_type;
  out["description"] = description;
  if (request) {
    if (auto r = b.find("required"); r != b.end()) {
      if (!r->is_boolean()) return Bad(field + ".required", "must be true or false");
      out["required"] = *r;
    } else {
      out["required"] = false;
    }
  }
  if (auto s = b.find("schema"); s != b.end()) {
    BERTH_RETURN_IF_ERROR(CheckSchema(*s, field + ".schema", 0));
    out["schema"] = *s;
  }
  return out;
}

Result<json> ParseRoute(const json& r, const std::string& field, std::set<std::string>* seen) {
  if (!r.is_object()) return Bad(field, "must be an object");
  BERTH_RETURN_IF_ERROR(
      OnlyKeys(r, field, {"method", "path", "summary", "description", "parameters", "request", "responses"}));
  json out = json::object();
  std::string method, path, summary, description;
  BERTH_RETURN_IF_ERROR(CheckString(r, "method", field, true, 16, &method));
  for (auto& c : method) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  static const std::set<std::string> kMethods = {"GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE"};
  if (!kMethods.count(method)) return Bad(field + ".method", "must be one of GET, PUT, POST, DELETE, OPTIONS, HEAD, PATCH, TRACE");
  BERTH_RETURN_IF_ERROR(CheckString(r, "path", field, true, 1024, &path));
  BERTH_ASSIGN_OR_RETURN(auto placeholders, PathPlaceholders(path, field + ".path"));
  if (!seen->insert(method + " " + path).second) {
    return Bad(field, method + " " + path + " is declared twice");
  }
  BERTH_RETURN_IF_ERROR(CheckString(r, "summary", field, false, 200, &summary));
  BERTH_RETURN_IF_ERROR(CheckString(r, "description", field, false, 4000, &description));
  out["method"] = method;
  out["path"] = path;
  out["summary"] = summary;
  out["description"] = description;

  json params = json::array();
  std::set<std::string> declared_path;
  std::set<std::string> names;
  if (auto p = r.find("parameters"); p != r.end()) {
    if (!p->is_array()) return Bad(field + ".parameters", "must be an array");
    for (size_t i = 0; i < p->size(); ++i) {
      const json& q = (*p)[i];
      const std::string pf = Index(field + ".parameters", i);
      if (!q.is_object()) return Bad(pf, "must be an object");
      BERTH_RETURN_IF_ERROR(OnlyKeys(q, pf, {"name", "in", "required", "description", "schema"}));
      std::string name, in, pdesc;
      BERTH_RETURN_IF_ERROR(CheckString(q, "name", pf, true, 200, &name));
      if (name.empty()) return Bad(pf + ".name", "must not be empty");
      BERTH_RETURN_IF_ERROR(CheckString(q, "in", pf, true, 16, &in));
      if (in != "path" && in != "query" && in != "header") return Bad(pf + ".in", "must be path, query or header");
      if (!names.insert(in + ":" + name).second) return Bad(pf + ".name", "'" + name + "' is declared twice");
      BERTH_RETURN_IF_ERROR(CheckString(q, "description", pf, false, 4000, &pdesc));
      bool required = in == "path";
      if (auto rq = q.find("required"); rq != q.end()) {
        if (!rq->is_boolean()) return Bad(pf + ".required", "must be true or false");
        if (in == "path" && !rq->get<bool>()) return Bad(pf + ".required", "must be true for a path parameter");
        required = rq->get<bool>();
      }
      if (in == "path") {
        if (std::find(placeholders.begin(), placeholders.end(), name) == placeholders.end()) {
          return Bad(pf + ".name", "'" + name + "' is not a {placeholder} of the path " + path);
        }
        declared_path.insert(name);
      }
      json schema = {{"type", "string"}};
      if (auto s = q.find("schema"); s != q.end()) {
        BERTH_RETURN_IF_ERROR(CheckSchema(*s, pf + ".schema", 0));
        schema = *s;
      }
      params.push_back({{"name", name}, {"in", in}, {"required", required}, {"description", pdesc}, {"schema", schema}});
    }
  }
  // Placeholders not declared are path parameters of type string.
  for (const auto& name : placeholders) {
    if (!declared_path.count(name)) {
      params.push_back({{"name", name}, {"in", "path"}, {"required", true}, {"description", ""},
                        {"schema", {{"type", "string"}}}});
    }
  }
  out["parameters"] = params;

  if (auto b = r.find("request"); b != r.end()) {
    BERTH_ASSIGN_OR_RETURN(out["request"], ParseBody(*b, field + ".request", true));
  }
  json responses = json::object();
  if (auto rs = r.find("responses"); rs != r.end()) {
    if (!rs->is_object() || rs->empty()) return Bad(field + ".responses", "must be a non-empty object keyed by status");
    for (auto it = rs->begin(); it != rs->end(); ++it) {
      const std::string& code = it.key();
      bool ok = code == "default" ||
                (code.size() == 3 && code[0] >= '1' && code[0] <= '5' &&
                 ((std::isdigit(static_cast<unsigned char>(code[1])) && std::isdigit(static_cast<unsigned char>(code[2]))) ||
                  code.substr(1) == "XX"));
      if (!ok) return Bad(field + ".responses." + code, "must be a status such as 200, 2XX or default");
      BERTH_ASSIGN_OR_RETURN(responses[code], ParseBody(it.value(), field + ".responses." + code, false));
    }
  } else {
    responses["200"] = {{"content_type", "application/json"}, {"description", ""}};
  }
  out["responses"] = responses;
  return out;
}

// "/gw/<tenant>/<function><path>", as an OpenAPI path key.
std::string DocPath(const manager::FunctionRecord& f, const std::string& path) {
  return "/gw/" + f.tenant + "/" + f.spec.name + path;
}

json Media(const json& body) {
  json m = json::object();
  if (body.contains("schema")) m["schema"] = body["schema"];
  return {{body.value("content_type", "application/json"), m}};
}

void AddFunctionPaths(const manager::FunctionRecord& f, json* doc, bool tagged) {
  json routes = GatewayRoutesJson(f.spec.gateway_routes);
  bool is_public = f.spec.gateway.auth == "public";
  for (const auto& r : routes) {
    json op = json::object();
    std::string summary = r.value("summary", "");
    op["summary"] = summary.empty() ? r.value("method", "") + " " + r.value("path", "") : summary;
    if (!r.value("description", "").empty()) op["description"] = r["description"];
    if (tagged) op["tags"] = json::array({f.spec.name});
    if (!r["parameters"].empty()) {
      json params = json::array();
      for (const auto& p : r["parameters"]) {
        json q = {{"name", p["name"]}, {"in", p["in"]}, {"required", p["required"]}, {"schema", p["schema"]}};
        if (!p.value("description", "").empty()) q["description"] = p["description"];
        params.push_back(q);
      }
      op["parameters"] = params;
    }
    if (r.contains("request")) {
      op["requestBody"] = {{"required", r["request"].value("required", false)}, {"content", Media(r["request"])}};
      if (!r["request"].value("description", "").empty()) op["requestBody"]["description"] = r["request"]["description"];
    }
    json responses = json::object();
    for (auto it = r["responses"].begin(); it != r["responses"].end(); ++it) {
      std::string desc = it.value().value("description", "");
      responses[it.key()] = {{"description", desc.empty() ? "the function's answer" : desc},
                             {"content", Media(it.value())}};
    }
    auto error = [](const char* what) {
      return json{{"description", what},
                  {"content", {{"application/json", {{"schema", {{"$ref", "#/components/schemas/GatewayError"}}}}}}}};
    };
    if (!is_public) responses["401"] = error("no valid bearer token");
    if (!responses.contains("429")) responses["429"] = error("rate limit or concurrency queue full (see Retry-After)");
    if (!responses.contains("502")) responses["502"] = error("the function crashed or wrote no valid CGI response");
    if (!responses.contains("504")) responses["504"] = error("the function exceeded its timeout");
    op["responses"] = responses;
    op["security"] = is_public ? json::array() : json::array({{{"bearerAuth", json::array()}}});
    std::string method = r.value("method", "GET");
    for (auto& c : method) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    (*doc)["paths"][DocPath(f, r.value("path", "/"))][method] = op;
  }
}

json GatewayDocument(const std::string& title, const std::string& description) {
  json doc = {{"openapi", "3.0.3"},
              {"info", {{"title", title}, {"version", "1"}, {"description", description}}},
              {"paths", json::object()}};
  doc["components"]["securitySchemes"] = {{"bearerAuth", {{"type", "http"}, {"scheme", "bearer"}}}};
  doc["components"]["schemas"]["GatewayError"] = {
      {"type", "object"},
      {"properties",
       {{"error",
         {{"type", "object"},
          {"properties",
           {{"code", {{"type", "string"}}}, {"message", {{"type", "string"}}}, {"execution_id", {{"type", "string"}}}}}}},
        {"execution_id", {{"type", "string"}}}}}};
  return doc;
}

std::string HtmlEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

}  // namespace

std::string OpenApiHtmlPage(const json& doc, const std::string& json_url) {
  std::string h = "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>" +
                  HtmlEscape(doc["info"].value("title", "")) +
                  "</title>\n<style>body{font:14px sans-serif;margin:2em;max-width:70em}code,pre{background:#eee;"
                  "padding:0 .3em}.op{border-left:4px solid #888;margin:.8em 0;padding:.2em .8em}"
                  ".m{font-weight:bold;display:inline-block;width:5em}</style></head><body>\n<h1>" +
                  HtmlEscape(doc["info"].value("title", "")) + "</h1>\n<p>" +
                  HtmlEscape(doc["info"].value("description", "")) + " OpenAPI document: <a href=\"" +
                  HtmlEscape(json_url) + "\">" + HtmlEscape(json_url) + "</a></p>\n";
  if (doc["paths"].empty()) h += "<p>No routes are declared.</p>\n";
  for (auto p = doc["paths"].begin(); p != doc["paths"].end(); ++p) {
    for (auto o = p.value().begin(); o != p.value().end(); ++o) {
      const json& op = o.value();
      std::string m = o.key();
      for (auto& c : m) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      h += "<div class=\"op\"><span class=\"m\">" + m + "</span><code>" + HtmlEscape(p.key()) + "</code>";
      if (op["security"].empty()) h += " <em>(public)</em>";
      h += "<br>" + HtmlEscape(op.value("summary", ""));
      if (op.contains("description")) h += "<p>" + HtmlEscape(op["description"].get<std::string>()) + "</p>";
      if (op.contains("parameters")) {
        h += "<br><small>parameters:";
        for (const auto& q : op["parameters"]) {
          h += " <code>" + HtmlEscape(q["name"].get<std::string>()) + "</code> (" + HtmlEscape(q["in"].get<std::string>()) +
               (q["required"].get<bool>() ? ", required" : "") + ")";
        }
        h += "</small>";
      }
      if (op.contains("requestBody")) {
        h += "<br><small>request body:</small><pre>" + HtmlEscape(op["requestBody"]["content"].dump(2)) + "</pre>";
      }
      h += "<br><small>responses: ";
      bool first = true;
      for (auto r = op["responses"].begin(); r != op["responses"].end(); ++r) {
        h += (first ? "" : ", ") + r.key();
        first = false;
      }
      h += "</small></div>\n";
    }
  }
  h += "</body></html>\n";
  return h;
}


Result<std::string> ParseGatewayRoutes(const json& routes) {
  if (!routes.is_array()) return Bad("routes", "must be an array of route declarations");
  if (routes.size() > kMaxRoutes) return Bad("routes", "must have at most " + std::to_string(kMaxRoutes) + " entries");
  if (routes.empty()) return std::string();
  json out = json::array();
  std::set<std::string> seen;
  for (size_t i = 0; i < routes.size(); ++i) {
    BERTH_ASSIGN_OR_RETURN(json r, ParseRoute(routes[i], Index("routes", i), &seen));
    out.push_back(std::move(r));
  }
  return out.dump();
}

json GatewayRoutesJson(const std::string& gateway_routes) {
  if (gateway_routes.empty()) return json::array();
  json j = json::parse(gateway_routes, nullptr, false);
  return j.is_array() ? j : json::array();
}

json FunctionGatewayOpenApi(const manager::FunctionRecord& f) {
  json doc = GatewayDocument("berth gateway: " + f.tenant + "/" + f.spec.name,
                             "Routes function '" + f.spec.name + "' (version " + std::to_string(f.version) +
                                 ") declares; berth runs it per request (CGI/1.1) at /gw/" + f.tenant + "/" +
                                 f.spec.name + "/. Access: " + f.spec.gateway.auth + ".");
  AddFunctionPaths(f, &doc, false);
  return doc;
}

json TenantGatewayOpenApi(const std::string& tenant, const std::vector<manager::FunctionRecord>& functions) {
  json doc = GatewayDocument("berth gateway: tenant " + tenant,
                             "The declared gateway routes of every function of tenant '" + tenant +
                                 "'; each function is a tag.");
  json tags = json::array();
  for (const auto& f : functions) {
    if (GatewayRoutesJson(f.spec.gateway_routes).empty()) continue;
    tags.push_back({{"name", f.spec.name}, {"description", "/gw/" + f.tenant + "/" + f.spec.name + " (" + f.spec.gateway.auth + ")"}});
    AddFunctionPaths(f, &doc, true);
  }
  if (!tags.empty()) doc["tags"] = tags;
  return doc;
}

void AddGatewayDocRoutes(Router& router, manager::Service& svc) {
  router.Add({"GET", "/v1/functions/{name}/openapi.json",
              "OpenAPI 3 document of the function's declared gateway routes", [&svc](const HttpRequest& req) {
                auto f = svc.GetFunction(Who(req), req.params.at("name"));
                if (!f.ok()) return ErrorResponse(f.status());
                return Json(200, FunctionGatewayOpenApi(*f));
              }});
  // The tenant whose functions a gateway document covers: the caller's; an
  // admin may name another with ?tenant=.
  auto tenant_functions = [&svc](const HttpRequest& req, std::string* tenant) -> Result<std::vector<manager::FunctionRecord>> {
    manager::Principal who = Who(req);
    if (auto it = req.query.find("tenant"); it != req.query.end() && it->second != who.tenant) {
      if (!who.admin) return Status::NotFound("no tenant '" + it->second + "'");
      who = manager::Principal{it->second, who.token_id, false};
    }
    *tenant = who.tenant;
    return svc.ListFunctions(who);
  };
  router.Add({"GET", "/v1/gateway/openapi.json",
              "OpenAPI 3 document of the declared gateway routes of all the tenant's functions (admin: ?tenant=)",
              [tenant_functions](const HttpRequest& req) {
                std::string tenant;
                auto fns = tenant_functions(req, &tenant);
                if (!fns.ok()) return ErrorResponse(fns.status());
                return Json(200, TenantGatewayOpenApi(tenant, *fns));
              }});
  router.Add({"GET", "/v1/gateway/docs",
              "HTML page of the tenant's gateway routes (?function=NAME: one function's; admin: ?tenant=)",
              [&svc, tenant_functions](const HttpRequest& req) {
                json doc;
                std::string url;
                if (auto it = req.query.find("function"); it != req.query.end()) {
                  auto f = svc.GetFunction(Who(req), it->second);
                  if (!f.ok()) return ErrorResponse(f.status());
                  doc = FunctionGatewayOpenApi(*f);
                  url = "/v1/functions/" + f->spec.name + "/openapi.json";
                } else {
                  std::string tenant;
                  auto fns = tenant_functions(req, &tenant);
                  if (!fns.ok()) return ErrorResponse(fns.status());
                  doc = TenantGatewayOpenApi(tenant, *fns);
                  url = "/v1/gateway/openapi.json";
                }
                HttpResponse r{200, OpenApiHtmlPage(doc, url)};
                r.content_type = "text/html; charset=utf-8";
                return r;
              }});
}

}  // namespace berth::api
