// A minimal blocking HTTP client (libcurl) for the CLI.
#pragma once

#include <string>

namespace berth::cli {

struct HttpReply {
  long status = 0;     // 0: no answer (connection failed)
  std::string body;
  std::string error;   // transport error, when status == 0
};

// `token` (when not empty) is sent as "Authorization: Bearer <token>".
HttpReply HttpRequest(const std::string& method, const std::string& url, const std::string& token,
                      const std::string& body = {}, const std::string& content_type = "application/json");
// Streams a file as the request body (image uploads never sit in memory).
HttpReply HttpUploadFile(const std::string& url, const std::string& token, const std::string& path);

}  // namespace berth::cli
