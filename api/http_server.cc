#include "api/http_server.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>

#include <condition_variable>
#include <cstring>
#include <future>
#include <mutex>
#include <set>
#include <spdlog/spdlog.h>

#include "api/errors.h"
#include "api/gateway.h"

namespace berth::api {

namespace {

// The answer to one suspended connection, delivered once from any thread.
struct Reply {
  std::mutex mu;
  MHD_Connection* conn = nullptr;
  std::optional<HttpResponse> response;
  bool answered = false;
};

// Per-request state, alive from the request line to request completion.
struct RequestState {
  bool started = false;
  std::string raw_uri;
  HttpRequest request;
  const Route* route = nullptr;
  std::unique_ptr<BodySink> sink;
  std::optional<HttpResponse> early;  // an error decided before the body ended
  std::shared_ptr<Reply> reply;       // set while the connection waits for its answer
};

int CollectQuery(void* cls, MHD_ValueKind, const char* key, const char* value) {
  auto* q = static_cast<std::map<std::string, std::string>*>(cls);
  (*q)[key] = value ? value : "";
  return MHD_YES;
}

int CollectHeader(void* cls, MHD_ValueKind, const char* key, const char* value) {
  auto* h = static_cast<std::map<std::string, std::string>*>(cls);
  std::string name = key;
  for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  auto [it, inserted] = h->emplace(name, value ? value : "");
  if (!inserted) it->second += std::string(", ") + (value ? value : "");
  return MHD_YES;
}

MHD_Result Send(MHD_Connection* conn, const HttpResponse& r) {
  MHD_Response* resp =
      MHD_create_response_from_buffer(r.body.size(), const_cast<char*>(r.body.data()), MHD_RESPMEM_MUST_COPY);
  if (!r.content_type.empty()) MHD_add_response_header(resp, "Content-Type", r.content_type.c_str());
  for (const auto& [name, value] : r.headers) {
    if (MHD_add_response_header(resp, name.c_str(), value.c_str()) != MHD_YES) {
      spdlog::warn("response header '{}' refused", name);
    }
  }
  if (r.status == 401) MHD_add_response_header(resp, "WWW-Authenticate", "Bearer realm=\"berth\"");
  MHD_Result ret = MHD_queue_response(conn, static_cast<unsigned>(r.status), resp);
  MHD_destroy_response(resp);
  return ret;
}

// The answer for a request no route serves: 404, or 405 when the path exists.
HttpResponse MissResponse(const std::string& method, const std::string& path, int miss_status) {
  if (miss_status == 405) {
    HttpResponse r = ErrorResponse(
        Status::InvalidArgument("method", "method " + method + " is not allowed on " + path));
    r.status = 405;
    return r;
  }
  return ErrorResponse(Status::NotFound("no such endpoint: " + method + " " + path));
}

HttpResponse Busy(const std::string& why) {
  HttpResponse r = ErrorResponse(Status::Unavailable(why));
  r.headers.emplace_back("Retry-After", "1");
  return r;
}

// Route code runs inside libmicrohttpd's C callbacks, where an exception
// would terminate berthd: turn it into a 500 instead.
template <typename Fn>
auto Guarded(const char* what, Fn fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const std::exception& e) {
    spdlog::error("{} threw: {}", what, e.what());
    return Status::Internal("internal error");
  }
}

HttpResponse RunHandler(const Route& route, const HttpRequest& request) {
  try {
    return route.handler(request);
  } catch (const std::exception& e) {
    spdlog::error("handler {} {} threw: {}", request.method, request.path, e.what());
    return ErrorResponse(Status::Internal("internal error"));
  }
}

}  // namespace

// The suspended connections. Suspending and resuming happen under `mu`, so
// Stop can answer every waiting connection and know that none is left
// suspended before it stops libmicrohttpd (which refuses to stop otherwise).
struct HttpServer::Pending {
  std::mutex mu;
  std::condition_variable cv;
  std::set<std::shared_ptr<Reply>> replies;
  int unfinished = 0;  // deferred requests whose answer is not sent yet (Completed)
  bool stopping = false;

  void Answer(const std::shared_ptr<Reply>& reply, HttpResponse response) {
    {
      std::lock_guard lock(reply->mu);
      if (reply->answered) return;
      reply->answered = true;
      reply->response = std::move(response);
    }
    std::lock_guard lock(mu);
    if (replies.erase(reply) > 0) MHD_resume_connection(reply->conn);
    cv.notify_all();
  }
};

struct HttpServer::Impl {
  // Called with the request line: the raw URI (the query string exactly as
  // sent) is only available here. Its result becomes *con_cls.
  static void* UriLog(void*, const char* uri, MHD_Connection*) {
    auto* st = new RequestState;
    st->raw_uri = uri ? uri : "";
    return st;
  }

  static void Begin(HttpServer* self, MHD_Connection* conn, RequestState* st, const char* url, const char* method,
                    const char* version) {
    st->started = true;
    HttpRequest& rq = st->request;
    rq.method = method;
    rq.path = url;
    rq.version = version ? version : "";
    if (auto q = st->raw_uri.find('?'); q != std::string::npos) rq.raw_query = st->raw_uri.substr(q + 1);
    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, reinterpret_cast<MHD_KeyValueIterator>(&CollectQuery),
                              &rq.query);
    MHD_get_connection_values(conn, MHD_HEADER_KIND, reinterpret_cast<MHD_KeyValueIterator>(&CollectHeader),
                              &rq.headers);
    if (auto it = rq.headers.find("host"); it != rq.headers.end()) rq.host = it->second;
    if (const char* auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION)) {
      rq.authorization = auth;
    }
    if (const MHD_ConnectionInfo* ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        ci && ci->client_addr) {
      char buf[INET6_ADDRSTRLEN] = {};
      const sockaddr* sa = ci->client_addr;
      if (sa->sa_family == AF_INET) {
        inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(sa)->sin_addr, buf, sizeof buf);
      } else if (sa->sa_family == AF_INET6) {
        inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr, buf, sizeof buf);
      }
      rq.remote_addr = buf;
    }
    int miss = 404;
    st->route = self->router_.Match(rq.method, rq.path, &rq.params, &miss);
    Status auth;
    if (st->route) auth = Guarded("authorize", [&] { return self->router_.Authorize(*st->route, &rq); });
    if (!st->route) {
      st->early = MissResponse(rq.method, rq.path, miss);
    } else if (!auth.ok()) {
      st->early = ErrorResponse(auth);
    } else if (st->route->sink) {
      auto sink = Guarded("sink factory", [&]() -> Result<std::unique_ptr<BodySink>> { return st->route->sink(rq); });
      if (sink.ok()) {
        st->sink = std::move(*sink);
      } else {
        st->early = ErrorResponse(sink.status());
      }
    } else if (auto it = rq.headers.find("content-length"); it != rq.headers.end()) {
      // Refuse a declared oversized body at once (the bytes are still read and dropped).
      size_t cap = BodyCap(self, *st->route);
      char* end = nullptr;
      unsigned long long declared = std::strtoull(it->second.c_str(), &end, 10);
      if (end != it->second.c_str() && declared > cap) st->early = TooLarge(cap);
    }
  }

  static size_t BodyCap(const HttpServer* self, const Route& route) {
    return route.max_body_bytes ? route.max_body_bytes : self->options_.max_body_bytes;
  }

  static HttpResponse TooLarge(size_t cap) {
    HttpResponse r =
        ErrorResponse(Status::InvalidArgument("body", "request body exceeds " + std::to_string(cap) + " bytes"));
    r.status = 413;
    return r;
  }

  // Suspends the connection and starts `start`, which must arrange for the
  // responder to be called once (from any thread).
  static MHD_Result Defer(HttpServer* self, MHD_Connection* conn, RequestState* st,
                          const std::function<void(Responder)>& start) {
    auto reply = std::make_shared<Reply>();
    reply->conn = conn;
    {
      std::lock_guard lock(self->pending_->mu);
      if (self->pending_->stopping) return Send(conn, Busy("server is shutting down"));
      MHD_suspend_connection(conn);
      self->pending_->replies.insert(reply);
      ++self->pending_->unfinished;
      st->reply = reply;
    }
    Responder respond = [pending = self->pending_, reply](HttpResponse r) { pending->Answer(reply, std::move(r)); };
    try {
      start(respond);
    } catch (const std::exception& e) {
      spdlog::error("{} {} threw: {}", st->request.method, st->request.path, e.what());
      respond(ErrorResponse(Status::Internal("internal error")));
    }
    return MHD_YES;
  }

  static MHD_Result Access(void* cls, MHD_Connection* conn, const char* url, const char* method, const char* version,
                           const char* upload_data, size_t* upload_size, void** con_cls) {
    auto* self = static_cast<HttpServer*>(cls);
    auto* st = static_cast<RequestState*>(*con_cls);
    if (st == nullptr) {
      st = new RequestState;
      *con_cls = st;
    }
    if (!st->started) {
      Begin(self, conn, st, url, method, version);
      return MHD_YES;
    }
    if (st->reply) {  // resumed: the answer is there
      std::lock_guard lock(st->reply->mu);
      return Send(conn, st->reply->response ? *st->reply->response
                                            : ErrorResponse(Status::Internal("no response was produced")));
    }
    if (*upload_size > 0) {
      std::string_view chunk(upload_data, *upload_size);
      *upload_size = 0;
      if (st->early) return MHD_YES;  // discard the rest of a failed request
      if (st->sink) {
        if (Status s = Guarded("sink append", [&] { return st->sink->Append(chunk); }); !s.ok()) {
          st->sink.reset();  // aborts the upload: nothing half-written remains
          st->early = ErrorResponse(s);
        }
      } else if (size_t cap = BodyCap(self, *st->route); st->request.body.size() + chunk.size() > cap) {
        st->early = TooLarge(cap);
        st->request.body.clear();
      } else {
        st->request.body.append(chunk);
      }
      return MHD_YES;
    }
    // The whole request arrived.
    if (st->early) return Send(conn, *st->early);
    if (st->sink) {
      // Finishing (checksums, inspection, commit) may take a while: off the I/O thread.
      auto sink = std::shared_ptr<BodySink>(std::move(st->sink));
      return Defer(self, conn, st, [self, sink](Responder respond) {
        bool queued = self->workers_->Submit([sink, respond] {
          auto r = Guarded("sink finish", [&]() -> Result<HttpResponse> { return sink->Finish(); });
          respond(r.ok() ? *r : ErrorResponse(r.status()));
        });
        if (!queued) respond(Busy("too many requests in progress"));
      });
    }
    const Route* route = st->route;
    if (route->async) {
      return Defer(self, conn, st, [route, st](Responder respond) { route->async(std::move(st->request), respond); });
    }
    if (!route->handler) {
      return Send(conn, ErrorResponse(Status::InvalidArgument("body", "this endpoint has no handler")));
    }
    return Defer(self, conn, st, [self, route, st](Responder respond) {
      bool queued = self->workers_->Submit(
          [route, request = std::move(st->request), respond] { respond(RunHandler(*route, request)); });
      if (!queued) respond(Busy("too many requests in progress"));
    });
  }

  static void Completed(void* cls, MHD_Connection*, void** con_cls, MHD_RequestTerminationCode) {
    auto* st = static_cast<RequestState*>(*con_cls);
    if (st && st->reply) {
      auto* self = static_cast<HttpServer*>(cls);
      std::lock_guard lock(self->pending_->mu);
      --self->pending_->unfinished;
      self->pending_->cv.notify_all();
    }
    delete st;
    *con_cls = nullptr;
  }
};

HttpServer::HttpServer(Router router, HttpServerOptions options)
    : router_(std::move(router)), options_(std::move(options)), pending_(std::make_shared<Pending>()) {
  router_.Add({"GET", "/v1/openapi.json", "This API's OpenAPI 3 document", [this](const HttpRequest&) {
                 return HttpResponse{200, router_.OpenApiJson()};
               }});
  // Rendered on the server from the same document, so the page needs no
  // script and no second request (and, like every route but health, a token).
  router_.Add({"GET", "/v1/docs", "This API's documentation page (HTML, rendered from /v1/openapi.json)",
               [this](const HttpRequest&) {
                 HttpResponse r{200, OpenApiHtmlPage(router_.OpenApiDocument(), "/v1/openapi.json")};
                 r.content_type = "text/html; charset=utf-8";
                 return r;
               }});
}

HttpServer::~HttpServer() { Stop(); }

HttpResponse HttpServer::Dispatch(HttpRequest request) const {
  int miss = 404;
  std::map<std::string, std::string> params;
  const Route* route = router_.Match(request.method, request.path, &params, &miss);
  if (!route) return MissResponse(request.method, request.path, miss);
  if (Status s = router_.Authorize(*route, &request); !s.ok()) return ErrorResponse(s);
  request.params = std::move(params);
  if (route->async) {
    auto promise = std::make_shared<std::promise<HttpResponse>>();
    auto once = std::make_shared<std::once_flag>();
    auto future = promise->get_future();
    route->async(std::move(request), [promise, once](HttpResponse r) {
      std::call_once(*once, [&] { promise->set_value(std::move(r)); });
    });
    return future.get();
  }
  if (!route->handler) {
    return ErrorResponse(Status::InvalidArgument("body", "this endpoint takes a streamed body; send it over HTTP"));
  }
  return RunHandler(*route, request);
}

Status HttpServer::Start() {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(options_.port);
  if (inet_pton(AF_INET, options_.bind_address.c_str(), &addr.sin_addr) != 1) {
    return Status::InvalidArgument("listen", "not an IPv4 address: " + options_.bind_address);
  }
  if (!workers_) workers_ = std::make_unique<WorkerPool>(options_.handler_threads, options_.handler_queue);
  {
    std::lock_guard lock(pending_->mu);
    pending_->stopping = false;
  }
  unsigned io_threads = options_.io_threads == 0 ? 1 : options_.io_threads;
  daemon_ = MHD_start_daemon(
      MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG, options_.port,
      nullptr, nullptr, &Impl::Access, this, MHD_OPTION_SOCK_ADDR, &addr, MHD_OPTION_URI_LOG_CALLBACK, &Impl::UriLog,
      nullptr, MHD_OPTION_NOTIFY_COMPLETED, &Impl::Completed, this, MHD_OPTION_CONNECTION_TIMEOUT,
      options_.connection_timeout_s, MHD_OPTION_THREAD_POOL_SIZE, io_threads, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
      options_.connection_memory_bytes, MHD_OPTION_END);
  if (!daemon_) {
    return Status::Unavailable("cannot listen on " + options_.bind_address + ":" + std::to_string(options_.port) +
                               " (port in use?)");
  }
  const MHD_DaemonInfo* info = MHD_get_daemon_info(daemon_, MHD_DAEMON_INFO_BIND_PORT);
  port_ = info ? info->port : options_.port;
  return Status::Ok();
}

void HttpServer::Stop() {
  if (!daemon_) return;
  // Connections still waiting for an answer get 503 now (a late answer is
  // dropped): libmicrohttpd cannot stop with suspended connections.
  std::set<std::shared_ptr<Reply>> waiting;
  {
    std::lock_guard lock(pending_->mu);
    pending_->stopping = true;
    waiting = pending_->replies;
  }
  for (const auto& reply : waiting) pending_->Answer(reply, Busy("server is shutting down"));
  {
    std::unique_lock lock(pending_->mu);
    pending_->cv.wait(lock, [&] { return pending_->replies.empty(); });
    // Let the answers just given reach their clients (bounded: a client
    // that does not read is cut off).
    pending_->cv.wait_for(lock, std::chrono::seconds(5), [&] { return pending_->unfinished <= 0; });
  }
  MHD_stop_daemon(daemon_);
  daemon_ = nullptr;
}

}  // namespace berth::api
