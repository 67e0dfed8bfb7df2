// A minimal blocking HTTP client (libcurl) for the CLI.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace berth::cli {

struct HttpReply {
  long status = 0;     // 0: no answer (connection failed)
  std::string body;
  std::string error;   // transport error, when status == 0
  uint64_t body_bytes_sent = 0;  // request body bytes libcurl sent (uploads)
};

// `token` (when not empty) is sent as "Authorization: Bearer <token>".
HttpReply HttpRequest(const std::string& method, const std::string& url, const std::string& token,
                      const std::string& body = {}, const std::string& content_type = "application/json");
// Streams a file as the request body (image uploads never sit in memory).
HttpReply HttpUploadFile(const std::string& url, const std::string& token, const std::string& path);

// Called from inside the transfer with the bytes of the body sent so far and
// its total size; at most a few times a second is typical (libcurl decides).
using UploadProgress = std::function<void(uint64_t sent, uint64_t total)>;
// As above, reporting progress; `reply.body_bytes_sent` tells how far an
// interrupted upload got.
HttpReply HttpUploadFile(const std::string& url, const std::string& token, const std::string& path,
                         const UploadProgress& progress);

}  // namespace berth::cli
