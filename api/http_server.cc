#include "api/http_server.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>

#include <cstring>
#include <spdlog/spdlog.h>

#include "api/errors.h"

namespace berth::api {

namespace {

// Per-request state, alive from the first callback to request completion.
struct RequestState {
  HttpRequest request;
  const Route* route = nullptr;
  std::unique_ptr<BodySink> sink;
  std::optional<HttpResponse> early;  // an error decided before the body ended
  bool too_large = false;
};

int CollectQuery(void* cls, MHD_ValueKind, const char* key, const char* value) {
  auto* q = static_cast<std::map<std::string, std::string>*>(cls);
  (*q)[key] = value ? value : "";
  return MHD_YES;
}

MHD_Result Send(MHD_Connection* conn, const HttpResponse& r) {
  MHD_Response* resp =
      MHD_create_response_from_buffer(r.body.size(), const_cast<char*>(r.body.data()), MHD_RESPMEM_MUST_COPY);
  MHD_add_response_header(resp, "Content-Type", r.content_type.c_str());
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

}  // namespace

struct HttpServer::Impl {
  static MHD_Result Access(void* cls, MHD_Connection* conn, const char* url, const char* method, const char*,
                           const char* upload_data, size_t* upload_size, void** con_cls) {
    auto* self = static_cast<HttpServer*>(cls);
    auto* st = static_cast<RequestState*>(*con_cls);
    if (st == nullptr) {
      st = new RequestState;
      *con_cls = st;
      st->request.method = method;
      st->request.path = url;
      MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND,
                                reinterpret_cast<MHD_KeyValueIterator>(&CollectQuery), &st->request.query);
      if (const char* host = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST)) {
        st->request.host = host;
      }
      if (const char* auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION)) {
        st->request.authorization = auth;
      }
      int miss = 404;
      st->route = self->router_.Match(st->request.method, st->request.path, &st->request.params, &miss);
      Status auth;
      if (st->route) auth = Guarded("authorize", [&] { return self->router_.Authorize(*st->route, &st->request); });
      if (!st->route) {
        st->early = MissResponse(st->request.method, st->request.path, miss);
      } else if (!auth.ok()) {
        st->early = ErrorResponse(auth);
      } else if (st->route->sink) {
        auto sink = Guarded("sink factory", [&]() -> Result<std::unique_ptr<BodySink>> { return st->route->sink(st->request); });
        if (sink.ok()) {
          st->sink = std::move(*sink);
        } else {
          st->early = ErrorResponse(sink.status());
        }
      }
      return MHD_YES;
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
      } else if (st->request.body.size() + chunk.size() > self->options_.max_body_bytes) {
        st->early = ErrorResponse(Status::InvalidArgument(
            "body", "request body exceeds " + std::to_string(self->options_.max_body_bytes) + " bytes"));
        st->early->status = 413;
        st->request.body.clear();
      } else {
        st->request.body.append(chunk);
      }
      return MHD_YES;
    }
    // The whole request arrived.
    if (st->early) return Send(conn, *st->early);
    if (st->sink) {
      auto r = Guarded("sink finish", [&]() -> Result<HttpResponse> { return st->sink->Finish(); });
      st->sink.reset();
      return Send(conn, r.ok() ? *r : ErrorResponse(r.status()));
    }
    return Send(conn, self->Dispatch(std::move(st->request)));
  }

  static void Completed(void*, MHD_Connection*, void** con_cls, MHD_RequestTerminationCode) {
    delete static_cast<RequestState*>(*con_cls);
    *con_cls = nullptr;
  }
};

HttpServer::HttpServer(Router router, HttpServerOptions options)
    : router_(std::move(router)), options_(std::move(options)) {
  router_.Add({"GET", "/v1/openapi.json", "This API's OpenAPI 3 document", [this](const HttpRequest&) {
                 return HttpResponse{200, router_.OpenApiJson()};
               }});
}

HttpServer::~HttpServer() { Stop(); }

HttpResponse HttpServer::Dispatch(HttpRequest request) const {
  int miss = 404;
  std::map<std::string, std::string> params;
  const Route* route = router_.Match(request.method, request.path, &params, &miss);
  if (!route) return MissResponse(request.method, request.path, miss);
  if (Status s = router_.Authorize(*route, &request); !s.ok()) return ErrorResponse(s);
  if (!route->handler) {
    return ErrorResponse(Status::InvalidArgument("body", "this endpoint takes a streamed body; send it over HTTP"));
  }
  request.params = std::move(params);
  try {
    return route->handler(request);
  } catch (const std::exception& e) {
    spdlog::error("handler {} {} threw: {}", request.method, request.path, e.what());
    return ErrorResponse(Status::Internal("internal error"));
  }
}

Status HttpServer::Start() {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(options_.port);
  if (inet_pton(AF_INET, options_.bind_address.c_str(), &addr.sin_addr) != 1) {
    return Status::InvalidArgument("listen", "not an IPv4 address: " + options_.bind_address);
  }
  daemon_ = MHD_start_daemon(
      MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, options_.port, nullptr,
      nullptr, &Impl::Access, this, MHD_OPTION_SOCK_ADDR, &addr, MHD_OPTION_NOTIFY_COMPLETED, &Impl::Completed,
      nullptr, MHD_OPTION_CONNECTION_TIMEOUT, options_.connection_timeout_s, MHD_OPTION_END);
  if (!daemon_) {
    return Status::Unavailable("cannot listen on " + options_.bind_address + ":" + std::to_string(options_.port) +
                               " (port in use?)");
  }
  const MHD_DaemonInfo* info = MHD_get_daemon_info(daemon_, MHD_DAEMON_INFO_BIND_PORT);
  port_ = info ? info->port : options_.port;
  return Status::Ok();
}

void HttpServer::Stop() {
  if (daemon_) {
    MHD_stop_daemon(daemon_);
    daemon_ = nullptr;
  }
}

}  // namespace berth::api
