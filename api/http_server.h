// HttpServer: libmicrohttpd glue around a Router. One thread per connection
// (a synchronous invocation blocks only its own connection). Buffered bodies
// are capped; streaming routes get their bytes as they arrive.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "api/router.h"
#include "common/status.h"

struct MHD_Daemon;

namespace berth::api {

struct HttpServerOptions {
  std::string bind_address = "127.0.0.1";
  uint16_t port = 8470;                       // 0: pick a free port (see port())
  size_t max_body_bytes = 16u << 20;          // buffered (JSON) bodies
  unsigned connection_timeout_s = 3600;       // idle connections only
};

class HttpServer {
 public:
  // Adds GET /v1/openapi.json, generated from the router itself.
  HttpServer(Router router, HttpServerOptions options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  Status Start();
  void Stop();
  uint16_t port() const { return port_; }
  const Router& router() const { return router_; }

  // Dispatches one buffered request (also used by tests without sockets).
  HttpResponse Dispatch(HttpRequest request) const;

 private:
  struct Impl;
  Router router_;
  HttpServerOptions options_;
  MHD_Daemon* daemon_ = nullptr;
  uint16_t port_ = 0;
};

}  // namespace berth::api
