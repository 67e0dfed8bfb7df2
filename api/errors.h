// The single mapping from berth Status codes to HTTP responses.
// Error bodies: {"error": {"code": "INVALID_ARGUMENT", "message": "...", "field": "memory_mib"}}
#pragma once

#include "api/router.h"
#include "common/status.h"

namespace berth::api {

int HttpStatusFor(Code code);
// RESOURCE_EXHAUSTED is 503 (with Retry-After) when the cluster is out of
// room, 429 when the field is "max_instances" (the function's own cap and
// queue are full) and 413 when it is "payload" (an event too large).
HttpResponse ErrorResponse(const Status& status);

}  // namespace berth::api
