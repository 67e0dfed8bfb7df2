// Checking the secret of a webhook request. A sender proves it knows the
// hook's secret in one of two ways:
//   X-Berth-Signature: sha256=<hex HMAC-SHA256 of the raw body, keyed with the secret>
//   X-Berth-Secret: <the secret itself>
// Comparisons are constant-time.
#pragma once

#include <string>
#include <string_view>

namespace berth::events {

// Lowercase hex HMAC-SHA256 of `body` keyed with `secret`.
std::string HmacSha256Hex(std::string_view secret, std::string_view body);

// True when `signature_header` (the X-Berth-Signature value, "" if absent) is
// "sha256=<hex>" of the body's HMAC (hex in any case), or `secret_header`
// (X-Berth-Secret, "" if absent) equals the secret. False otherwise,
// including when both are absent.
bool WebhookAuthorized(std::string_view secret, std::string_view body, std::string_view signature_header,
                       std::string_view secret_header);

}  // namespace berth::events
