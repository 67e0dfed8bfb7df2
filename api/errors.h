// The single mapping from berth Status codes to HTTP responses.
// Error bodies: {"error": {"code": "INVALID_ARGUMENT", "message": "...", "field": "memory_mib"}}
#pragma once

#include "api/router.h"
#include "common/status.h"

namespace berth::api {

int HttpStatusFor(Code code);
HttpResponse ErrorResponse(const Status& status);

}  // namespace berth::api
