// The single mapping from berth Status codes to HTTP responses.
// Error bodies: {"error": {"code": "INVALID_ARGUMENT", "message": "...", "field": "memory_mib"}}
#pragma once

#include "api/router.h"
#include "common/status.h"

namespace berth::api {

int HttpStatusFor(Code code);
// RESOURCE_EXHAUSTED is 503 (with Retry-After) when the cluster is out of
// room, but 429 when it names a field: then a limit the caller set on its own
// function (e.g. max_instances with a full queue) refused the call.
HttpResponse ErrorResponse(const Status& status);

}  // namespace berth::api
