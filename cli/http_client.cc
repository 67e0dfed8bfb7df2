#include "cli/http_client.h"

#include <curl/curl.h>

#include <cstdio>
#include <mutex>

namespace berth::cli {
namespace {

size_t Collect(char* data, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(data, size * n);
  return size * n;
}

HttpReply Perform(CURL* curl, curl_slist* headers) {
  HttpReply reply;
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &Collect);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &reply.body);
  curl_easy_setopt(curl, CURLOPT_NOPROXY, "*");
  CURLcode rc = curl_easy_perform(curl);
  curl_off_t sent = 0;
  if (curl_easy_getinfo(curl, CURLINFO_SIZE_UPLOAD_T, &sent) == CURLE_OK && sent > 0) {
    reply.body_bytes_sent = static_cast<uint64_t>(sent);
  }
  if (rc == CURLE_OK) {
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &reply.status);
  } else {
    reply.error = curl_easy_strerror(rc);
  }
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
  return reply;
}

CURL* Init(const std::string& url) {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  CURL* curl = curl_easy_init();
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  return curl;
}

curl_slist* WithAuth(curl_slist* headers, const std::string& token) {
  if (token.empty()) return headers;
  return curl_slist_append(headers, ("Authorization: Bearer " + token).c_str());
}

// libcurl's transfer-info callback: forwards upload progress (0 = go on).
int OnProgress(void* user, curl_off_t, curl_off_t, curl_off_t ultotal, curl_off_t ulnow) {
  const auto& progress = *static_cast<const UploadProgress*>(user);
  progress(static_cast<uint64_t>(ulnow), static_cast<uint64_t>(ultotal));
  return 0;
}

}  // namespace

HttpReply HttpRequest(const std::string& method, const std::string& url, const std::string& token,
                      const std::string& body, const std::string& content_type) {
  CURL* curl = Init(url);
  curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method.c_str());
  if (method == "POST" || method == "PUT") {
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.data());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
  }
  return Perform(curl, WithAuth(curl_slist_append(nullptr, ("Content-Type: " + content_type).c_str()), token));
}

HttpReply HttpUploadFile(const std::string& url, const std::string& token, const std::string& path) {
  return HttpUploadFile(url, token, path, UploadProgress());
}

HttpReply HttpUploadFile(const std::string& url, const std::string& token, const std::string& path,
                         const UploadProgress& progress) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return {0, "", "cannot open " + path};
  std::fseek(f, 0, SEEK_END);
  long size = std::ftell(f);
  std::fseek(f, 0, SEEK_SET);
  CURL* curl = Init(url);
  curl_easy_setopt(curl, CURLOPT_POST, 1L);
  curl_easy_setopt(curl, CURLOPT_READDATA, f);
  curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(size));
  curl_easy_setopt(curl, CURLOPT_UPLOAD_BUFFERSIZE, 1L << 20);  // fewer, larger sends than the 64 KiB default
  if (progress) {
    curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, &OnProgress);
    curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &progress);
  }
  auto* headers = curl_slist_append(nullptr, "Content-Type: application/octet-stream");
  headers = curl_slist_append(headers, "Expect:");
  headers = WithAuth(headers, token);
  HttpReply reply = Perform(curl, headers);
  std::fclose(f);
  return reply;
}

}  // namespace berth::cli
