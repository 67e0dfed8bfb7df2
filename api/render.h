// Rendering of manager records as the JSON the API answers with, shared by
// the v1 routes and the DCK compatibility routes. Pure functions.
#pragma once

#include <nlohmann/json.hpp>

#include "api/errors.h"
#include "api/router.h"
#include "manager/service.h"

namespace berth::api {

// The authenticated caller of a request, as the manager sees it.
inline manager::Principal Who(const HttpRequest& req) {
  return manager::Principal{req.caller.tenant, req.caller.token_id, req.caller.admin};
}

inline constexpr int64_t kBig = int64_t{1} << 53;  // largest integer JSON carries exactly

HttpResponse Json(int status, const nlohmann::json& body);
nlohmann::json ImageJson(const manager::ImageMeta& m);
nlohmann::json FunctionJson(const manager::FunctionRecord& f);
nlohmann::json ExecutionJson(const manager::ExecutionRecord& e);
// The process view of an execution (ps): no output, the tree fields first.
nlohmann::json ProcJson(const manager::ExecutionRecord& e);
// The two roots of the process tree, which have no record.
nlohmann::json RootProcJson(int64_t pid);

// Registers the schemas of the bodies above (Image, Function, Execution,
// Proc, Node, Logs, Health, ...) in `router` and describes the success body
// of the v1 routes that answer with them. Call once the routes are added.
// A field added to a renderer must be added to its schema here too: the
// integration tests check real answers against the document, unknown fields
// included.
void DescribeResponses(Router& router);

// Renders a list result as {"<key>": [render(item), ...]}.
template <typename Render>
auto ListOf(const char* key, Render render) {
  return [key, render](const auto& items) {
    nlohmann::json arr = nlohmann::json::array();
    for (const auto& item : items) arr.push_back(render(item));
    return nlohmann::json{{key, arr}};
  };
}

template <typename T, typename Render>
HttpResponse Respond(const Result<T>& result, int status, Render render) {
  if (!result.ok()) return ErrorResponse(result.status());
  return Json(status, render(*result));
}

}  // namespace berth::api
