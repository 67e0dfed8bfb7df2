// HttpServer: libmicrohttpd glue around a Router. A few I/O threads (epoll)
// serve every connection; a connection whose request is complete is
// suspended while its handler runs on a worker thread (or, for asynchronous
// routes, until the route answers), so neither a slow client nor a slow
// handler holds up the others. Buffered bodies are capped; streaming routes
// get their bytes as they arrive (on the I/O thread).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "api/router.h"
#include "api/worker_pool.h"
#include "common/status.h"

struct MHD_Daemon;

namespace berth::api {

struct HttpServerOptions {
  std::string bind_address = "127.0.0.1";
  uint16_t port = 8470;                       // 0: pick a free port (see port())
  size_t max_body_bytes = 16u << 20;          // buffered (JSON) bodies
  unsigned connection_timeout_s = 3600;       // idle connections only
  unsigned io_threads = 2;                    // libmicrohttpd polling threads
  size_t handler_threads = 64;                // workers for buffered handlers (started on demand)
  size_t handler_queue = 4096;                // waiting requests beyond them; more -> 503
  // libmicrohttpd's per-connection memory pool; upload bodies reach the sink
  // in pieces no larger than its read buffer (the 32 KiB default means one
  // small write per piece). The pool is mmap'd: untouched pages cost no RSS.
  size_t connection_memory_bytes = 1u << 20;
};

class HttpServer {
 public:
  // Adds GET /v1/openapi.json, generated from the router itself, and the
  // /v1/docs page rendered from it.
  HttpServer(Router router, HttpServerOptions options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  Status Start();
  void Stop();
  uint16_t port() const { return port_; }
  const Router& router() const { return router_; }

  // Dispatches one buffered request in the calling thread (also used by
  // tests without sockets); waits for asynchronous routes.
  HttpResponse Dispatch(HttpRequest request) const;

 private:
  struct Impl;
  struct Pending;
  Router router_;
  HttpServerOptions options_;
  MHD_Daemon* daemon_ = nullptr;
  uint16_t port_ = 0;
  // Suspended connections; shared with the responders, which may outlive the server.
  std::shared_ptr<Pending> pending_;
  std::unique_ptr<WorkerPool> workers_;  // last: destroyed (joined) first
};

}  // namespace berth::api
