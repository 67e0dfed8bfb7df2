#include "api/errors.h"

#include <nlohmann/json.hpp>

namespace berth::api {

int HttpStatusFor(Code code) {
  switch (code) {
    case Code::kOk: return 200;
    case Code::kInvalidArgument: return 400;
    case Code::kNotFound: return 404;
    case Code::kAlreadyExists: return 409;
    case Code::kFailedPrecondition: return 422;
    case Code::kResourceExhausted: return 503;
    case Code::kDeadlineExceeded: return 504;
    case Code::kUnavailable: return 503;
    case Code::kPermissionDenied: return 403;
    case Code::kUnauthenticated: return 401;
    case Code::kAborted: return 409;
    case Code::kUnimplemented: return 501;
    case Code::kInternal: return 500;
  }
  return 500;
}

HttpResponse ErrorResponse(const Status& status) {
  nlohmann::json err = {{"code", CodeName(status.code())}, {"message", status.message()}};
  if (!status.field().empty()) err["field"] = status.field();
  HttpResponse r;
  r.status = HttpStatusFor(status.code());
  if (status.code() == Code::kResourceExhausted) {
    // Which limit ran out decides: a limit the caller set on its own function
    // (too many requests), a size limit on what was sent (too large), or the
    // cluster's room (unavailable for now).
    if (status.field() == "max_instances") r.status = 429;
    if (status.field() == "payload") r.status = 413;
    if (r.status != 413) r.headers.emplace_back("Retry-After", "1");
  }
  r.body = nlohmann::json{{"error", err}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return r;
}

}  // namespace berth::api
