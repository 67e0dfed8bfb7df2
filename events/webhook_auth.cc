#include "events/webhook_auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <cctype>

namespace berth::events {
namespace {

bool ConstantTimeEqual(std::string_view a, std::string_view b) {
  // The length of a secret or digest is no secret; the content is.
  if (a.size() != b.size()) return false;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace

std::string HmacSha256Hex(std::string_view secret, std::string_view body) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(body.data()), body.size(), mac, &len);
  static const char* kHex = "0123456789abcdef";
  std::string out;
  out.reserve(len * 2);
  for (unsigned int i = 0; i < len; ++i) {
    out.push_back(kHex[mac[i] >> 4]);
    out.push_back(kHex[mac[i] & 0xf]);
  }
  return out;
}

bool WebhookAuthorized(std::string_view secret, std::string_view body, std::string_view signature_header,
                       std::string_view secret_header) {
  if (secret.empty()) return false;
  bool ok = false;
  constexpr std::string_view kPrefix = "sha256=";
  if (signature_header.size() > kPrefix.size() && signature_header.substr(0, kPrefix.size()) == kPrefix) {
    std::string given(signature_header.substr(kPrefix.size()));
    for (char& c : given) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    ok = ConstantTimeEqual(given, HmacSha256Hex(secret, body));
  }
  if (!ok && !secret_header.empty()) ok = ConstantTimeEqual(secret_header, secret);
  return ok;
}

}  // namespace berth::events
