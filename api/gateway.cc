#include "api/gateway.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>

#include <spdlog/spdlog.h>

#include "api/errors.h"
#include "api/routes.h"
#include "api/render.h"
#include "api/worker_pool.h"
#include "common/env.h"

namespace berth::api {
namespace {

using json = nlohmann::json;

std::string Lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool IsTokenChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

// A gateway error: the API's error body, plus the execution id when one ran.
HttpResponse GatewayError(int status, const char* code, const std::string& message, const std::string& execution_id = "") {
  json err = {{"code", code}, {"message", message}};
  json body = {{"error", err}};
  if (!execution_id.empty()) {
    body["error"]["execution_id"] = execution_id;
    body["execution_id"] = execution_id;
  }
  HttpResponse r = Json(status, body);
  if (!execution_id.empty()) r.headers.emplace_back("X-Berth-Execution-Id", execution_id);
  return r;
}

HttpResponse TooMany(const std::string& message, int64_t retry_after_ms) {
  HttpResponse r = GatewayError(429, "RESOURCE_EXHAUSTED", message);
  r.headers.emplace_back("Retry-After", std::to_string(std::max<int64_t>(1, (retry_after_ms + 999) / 1000)));
  return r;
}

HttpResponse Unauthenticated(const std::string& message) {
  HttpResponse r = ErrorResponse(Status::Unauthenticated(message));
  return r;
}

// Turns a finished execution into the gateway's answer.
HttpResponse ExecutionAnswer(const manager::ExecutionRecord& ex, const std::string& function, size_t max_response_bytes) {
  using manager::ExecState;
  const std::string& id = ex.id;
  switch (ex.state) {
    case ExecState::kTimedOut:
      return GatewayError(504, "DEADLINE_EXCEEDED",
                          "function '" + function + "' exceeded its timeout of " + std::to_string(ex.spec.timeout_ms) + " ms", id);
    case ExecState::kError:
      if (ex.error_code == "no_capacity") {
        HttpResponse r = GatewayError(503, "UNAVAILABLE", "no capacity to run function '" + function + "'", id);
        r.headers.emplace_back("Retry-After", "1");
        return r;
      }
      return GatewayError(502, "BAD_GATEWAY", "function '" + function + "' could not run (" + ex.error_code + ")", id);
    case ExecState::kKilled:
    case ExecState::kLost:
      return GatewayError(502, "BAD_GATEWAY",
                          "function '" + function + "' ended " + manager::ExecStateName(ex.state) + " before answering", id);
    default:
      break;
  }
  if (ex.output_truncated || ex.stdout_data.size() > max_response_bytes) {
    return GatewayError(502, "BAD_GATEWAY",
                        "function '" + function + "' wrote more than " + std::to_string(max_response_bytes) +
                            " bytes of response",
                        id);
  }
  auto parsed = ParseCgiResponse(ex.stdout_data);
  if (!parsed.ok()) {
    std::string why = ex.state == ExecState::kFailed && ex.exit_code
                          ? "exited with code " + std::to_string(*ex.exit_code) + " without a valid CGI response (" +
                                parsed.status().message() + ")"
                          : "wrote a malformed CGI response: " + parsed.status().message();
    return GatewayError(502, "BAD_GATEWAY", "function '" + function + "' " + why, id);
  }
  parsed->headers.emplace_back("X-Berth-Execution-Id", id);
  return std::move(*parsed);
}

}  // namespace

// ---- CGI ----

std::map<std::string, std::string> CgiEnvironment(const HttpRequest& req, const std::string& script_name,
                                                  const std::string& path_info) {
  std::map<std::string, std::string> env;
  env["GATEWAY_INTERFACE"] = "CGI/1.1";
  env["SERVER_PROTOCOL"] = req.version.empty() ? "HTTP/1.1" : req.version;
  env["SERVER_SOFTWARE"] = "berth";
  env["REQUEST_METHOD"] = req.method;
  env["SCRIPT_NAME"] = script_name;
  env["PATH_INFO"] = path_info;
  env["QUERY_STRING"] = req.raw_query;
  env["REQUEST_URI"] = script_name + path_info + (req.raw_query.empty() ? "" : "?" + req.raw_query);
  env["REMOTE_ADDR"] = req.remote_addr;
  std::string host = req.host, port;
  if (auto colon = host.rfind(':'); colon != std::string::npos && host.find(']', colon) == std::string::npos) {
    port = host.substr(colon + 1);
    host.resize(colon);
  }
  env["SERVER_NAME"] = host;
  if (!port.empty()) env["SERVER_PORT"] = port;
  if (!req.body.empty() || req.headers.count("content-length")) env["CONTENT_LENGTH"] = std::to_string(req.body.size());
  if (auto it = req.headers.find("content-type"); it != req.headers.end()) env["CONTENT_TYPE"] = it->second;
  if (!req.caller.tenant.empty()) {
    env["AUTH_TYPE"] = "Bearer";
    env["REMOTE_USER"] = req.caller.tenant;
  }
  for (const auto& [name, value] : req.headers) {
    std::string lower = Lower(name);
    // Credentials stay with berth; Proxy* would be httpoxy; the body's
    // type and length are CONTENT_TYPE and CONTENT_LENGTH.
    if (lower == "authorization" || lower.rfind("proxy", 0) == 0 || lower == "content-type" ||
        lower == "content-length") {
      continue;
    }
    std::string var = "HTTP_";
    bool ok = !lower.empty();
    for (char c : lower) {
      if (c == '-') {
        var += '_';
      } else if (std::isalnum(static_cast<unsigned char>(c)) || c == '_') {
        var += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      } else {
        ok = false;
      }
    }
    if (ok) env[var] = value;
  }
  return env;
}

Result<HttpResponse> ParseCgiResponse(std::string_view out) {
  HttpResponse r;
  r.status = 0;
  r.content_type.clear();
  size_t pos = 0;
  int count = 0;
  bool location = false;
  bool ended = false;
  while (pos < out.size()) {
    size_t nl = out.find('\n', pos);
    if (nl == std::string_view::npos) {
      return Status::InvalidArgument("stdout", "header line " + std::to_string(count + 1) + " is not terminated");
    }
    std::string_view line = out.substr(pos, nl - pos);
    pos = nl + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) {
      ended = true;
      break;
    }
    if (++count > 100) return Status::InvalidArgument("stdout", "more than 100 header lines");
    size_t colon = line.find(':');
    std::string_view name = colon == std::string_view::npos ? std::string_view() : line.substr(0, colon);
    if (name.empty() || !std::all_of(name.begin(), name.end(), IsTokenChar)) {
      return Status::InvalidArgument("stdout", "line " + std::to_string(count) + " is not a CGI header (name: value)");
    }
    std::string_view value = line.substr(colon + 1);
    while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
    while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
    for (char c : value) {
      if ((static_cast<unsigned char>(c) < 0x20 && c != '\t') || c == 0x7f) {
        return Status::InvalidArgument("stdout", "header " + std::string(name) + " holds a control character");
      }
    }
    std::string lname = Lower(std::string(name));
    if (lname == "status") {
      if (value.size() < 3 || !std::all_of(value.begin(), value.begin() + 3, ::isdigit) ||
          (value.size() > 3 && value[3] != ' ')) {
        return Status::InvalidArgument("stdout", "Status must be a three-digit code and a reason, e.g. '201 Created'");
      }
      int code = std::stoi(std::string(value.substr(0, 3)));
      if (code < 100 || code > 599) return Status::InvalidArgument("stdout", "Status code out of range");
      r.status = code;
    } else if (lname == "content-type") {
      r.content_type = std::string(value);
    } else if (lname == "content-length" || lname == "transfer-encoding" || lname == "connection" ||
               lname == "keep-alive" || lname == "x-berth-execution-id") {
      continue;  // the server's to set
    } else {
      if (lname == "location") location = true;
      r.headers.emplace_back(std::string(name), std::string(value));
    }
  }
  if (count == 0) return Status::InvalidArgument("stdout", "no CGI header (e.g. 'Content-Type: text/plain' and a blank line)");
  if (ended) r.body = std::string(out.substr(pos));
  if (r.status == 0) r.status = location ? 302 : 200;
  return r;
}

// ---- Limits ----

void TokenBucket::Configure(double rate, double burst) {
  rate_ = rate;
  burst_ = std::max(1.0, burst);
  if (tokens_ < 0 || tokens_ > burst_) tokens_ = burst_;
}

int64_t TokenBucket::WaitMs(int64_t now_ms) {
  if (last_ms_ != 0 && now_ms > last_ms_) tokens_ = std::min(burst_, tokens_ + rate_ * (now_ms - last_ms_) / 1000.0);
  last_ms_ = now_ms;
  if (tokens_ >= 1) return 0;
  if (rate_ <= 0) return 1000;
  return static_cast<int64_t>(std::ceil((1 - tokens_) * 1000.0 / rate_));
}

// ---- Policy JSON ----

Status ParseGatewayPolicy(const json& j, manager::GatewayPolicy* p) {
  if (!j.is_object()) return Status::InvalidArgument("gateway", "must be an object");
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string field = "gateway." + it.key();
    const json& v = it.value();
    auto integer = [&](int64_t* out) -> Status {
      if (!v.is_number_integer()) return Status::InvalidArgument(field, "must be an integer");
      // Out of int64 range: -1, which the manager's range check rejects.
      *out = v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX) ? -1 : v.get<int64_t>();
      return Status::Ok();
    };
    auto number = [&](double* out) -> Status {
      if (!v.is_number()) return Status::InvalidArgument(field, "must be a number");
      *out = v.get<double>();
      return Status::Ok();
    };
    if (it.key() == "auth") {
      if (!v.is_string()) return Status::InvalidArgument(field, "must be public, token or tenant");
      p->auth = v.get<std::string>();
    } else if (it.key() == "rate_limit_per_s") {
      BERTH_RETURN_IF_ERROR(number(&p->rate_limit_per_s));
    } else if (it.key() == "token_rate_limit_per_s") {
      BERTH_RETURN_IF_ERROR(number(&p->token_rate_limit_per_s));
    } else if (it.key() == "burst") {
      BERTH_RETURN_IF_ERROR(integer(&p->burst));
    } else if (it.key() == "token_burst") {
      BERTH_RETURN_IF_ERROR(integer(&p->token_burst));
    } else if (it.key() == "max_concurrency") {
      BERTH_RETURN_IF_ERROR(integer(&p->max_concurrency));
    } else if (it.key() == "max_queue") {
      BERTH_RETURN_IF_ERROR(integer(&p->max_queue));
    } else {
      return Status::InvalidArgument(field, "unknown field");
    }
  }
  return Status::Ok();
}

json GatewayPolicyJson(const manager::GatewayPolicy& p) {
  return {{"auth", p.auth},
          {"rate_limit_per_s", p.rate_limit_per_s},
          {"burst", p.burst},
          {"token_rate_limit_per_s", p.token_rate_limit_per_s},
          {"token_burst", p.token_burst},
          {"max_concurrency", p.max_concurrency},
          {"max_queue", p.max_queue}};
}

// ---- The gateway ----

namespace {

class Gateway {
 public:
  Gateway(manager::Service& svc, Env* env, GatewayOptions options)
      : svc_(svc), env_(env), options_(options),
        pool_(std::make_unique<WorkerPool>(options.workers, options.max_waiting)) {}

  ~Gateway() {
    stopping_ = true;
    pool_.reset();  // runs (and refuses) what is queued, joins the workers
    std::lock_guard lock(mu_);
    for (auto& [key, fn] : functions_) {
      for (auto& job : fn.waiting) job.respond(GatewayError(503, "UNAVAILABLE", "gateway is shutting down"));
    }
  }

  void Handle(HttpRequest req, Responder respond);

 private:
  struct Job {
    std::string key;  // tenant/function
    manager::Principal principal;
    std::string function;
    manager::InvokeRequest invoke;
    Responder respond;
  };
  struct FunctionState {
    TokenBucket bucket;
    int64_t active = 0;
    int64_t max_concurrency = 0;
    std::deque<Job> waiting;
  };

  void Start(Job job);  // with active already counted
  void Run(Job& job);
  void Finished(const std::string& key);

  manager::Service& svc_;
  Env* env_;
  GatewayOptions options_;
  std::atomic<bool> stopping_{false};
  std::mutex mu_;
  std::map<std::string, FunctionState> functions_;
  std::map<std::string, TokenBucket> callers_;
  std::unique_ptr<WorkerPool> pool_;  // last: destroyed first
};

void Gateway::Handle(HttpRequest req, Responder respond) {
  const std::string tenant = req.params["tenant"], name = req.params["function"], rest = req.params["path"];
  std::string path_info = rest.empty() ? (!req.path.empty() && req.path.back() == '/' ? "/" : "") : "/" + rest;

  // Who is calling (optional here: the function's policy decides).
  std::optional<manager::Principal> caller;
  std::string bearer = BearerToken(req.authorization);
  if (!bearer.empty()) {
    auto p = svc_.Authenticate(bearer);
    if (p.ok()) caller = *p;
  }
  const char* need_token = req.authorization.empty() ? "this route needs 'Authorization: Bearer <token>'"
                                                     : "the bearer token is malformed, unknown or revoked";
  manager::Principal owner{tenant, "", false};
  auto fn = svc_.GetFunction(owner, name);
  if (!fn.ok()) {
    if (fn.status().code() != Code::kNotFound) return respond(ErrorResponse(fn.status()));
    if (!caller) return respond(Unauthenticated(need_token));
    return respond(ErrorResponse(Status::NotFound("no function '" + name + "' in tenant '" + tenant + "'")));
  }
  const manager::GatewayPolicy& policy = fn->spec.gateway;
  if (policy.auth != "public") {
    if (!caller) return respond(Unauthenticated(need_token));
    if (policy.auth == "tenant" && caller->tenant != tenant) {
      return respond(ErrorResponse(Status::NotFound("no function '" + name + "' in tenant '" + tenant + "'")));
    }
  }
  if (caller) req.caller = Caller{caller->tenant, caller->token_id, caller->admin};

  Job job;
  job.key = tenant + "/" + name;
  job.principal = manager::Principal{tenant, caller ? caller->token_id : "", false};
  job.function = name;
  std::string script_name = "/gw/" + tenant + "/" + name;
  job.invoke.env = CgiEnvironment(req, script_name, path_info);
  job.invoke.stdin_data = std::move(req.body);
  job.invoke.name = name;
  job.respond = std::move(respond);

  std::unique_lock lock(mu_);
  int64_t now = env_->MonotonicMs();
  FunctionState& st = functions_[job.key];
  // Rate limits: both buckets must have a token; only then is one taken from each.
  TokenBucket* fn_bucket = nullptr;
  TokenBucket* caller_bucket = nullptr;
  int64_t wait = 0;
  if (policy.rate_limit_per_s > 0) {
    fn_bucket = &st.bucket;
    fn_bucket->Configure(policy.rate_limit_per_s,
                         policy.burst > 0 ? policy.burst : std::ceil(policy.rate_limit_per_s));
    wait = std::max(wait, fn_bucket->WaitMs(now));
  }
  if (policy.token_rate_limit_per_s > 0) {
    if (callers_.size() > 10'000) {  // forget callers whose buckets refilled
      for (auto it = callers_.begin(); it != callers_.end();) {
        it = it->second.WaitMs(now) == 0 && it->second.full() ? callers_.erase(it) : std::next(it);
      }
    }
    std::string who = caller ? "token:" + caller->token_id : "addr:" + req.remote_addr;
    caller_bucket = &callers_[job.key + "\n" + who];
    caller_bucket->Configure(policy.token_rate_limit_per_s,
                             policy.token_burst > 0 ? policy.token_burst : std::ceil(policy.token_rate_limit_per_s));
    wait = std::max(wait, caller_bucket->WaitMs(now));
  }
  if (wait > 0) {
    lock.unlock();
    return job.respond(TooMany("rate limit of function '" + name + "' exceeded", wait));
  }
  if (fn_bucket) fn_bucket->Take();
  if (caller_bucket) caller_bucket->Take();
  // Concurrency: run now, wait in the function's queue, or refuse.
  st.max_concurrency = policy.max_concurrency;
  if (st.max_concurrency > 0 && st.active >= st.max_concurrency) {
    if (static_cast<int64_t>(st.waiting.size()) >= policy.max_queue) {
      lock.unlock();
      return job.respond(TooMany("function '" + name + "' has " + std::to_string(st.active) +
                                     " requests running and its queue is full",
                                 1000));
    }
    st.waiting.push_back(std::move(job));
    return;
  }
  ++st.active;
  lock.unlock();
  Start(std::move(job));
}

void Gateway::Start(Job job) {
  auto shared = std::make_shared<Job>(std::move(job));
  bool queued = !stopping_ && pool_ && pool_->Submit([this, shared] {
    Run(*shared);
    Finished(shared->key);
  });
  if (!queued) {
    HttpResponse r = GatewayError(503, "UNAVAILABLE", "the gateway is at capacity; retry later");
    r.headers.emplace_back("Retry-After", "1");
    shared->respond(std::move(r));
    Finished(shared->key);
  }
}

void Gateway::Run(Job& job) {
  // The cluster's room (not the function's own limits) ran out: capacity
  // comes back as other executions end, so the request waits for it (with
  // backoff, at most capacity_wait_ms) before it answers 503.
  auto out_of_room = [](const Result<manager::ExecutionRecord>& ex) {
    if (!ex.ok()) {
      return ex.status().code() == Code::kResourceExhausted && ex.status().field() != "max_instances" &&
             ex.status().field() != "payload";
    }
    return ex->state == manager::ExecState::kError && ex->error_code == "no_capacity";
  };
  const int64_t give_up = env_->MonotonicMs() + options_.capacity_wait_ms;
  int64_t backoff_ms = 5;
  for (;;) {
    if (stopping_) return job.respond(GatewayError(503, "UNAVAILABLE", "gateway is shutting down"));
    auto ex = svc_.Invoke(job.principal, job.function, job.invoke);
    if (out_of_room(ex) && env_->MonotonicMs() + backoff_ms < give_up) {
      env_->SleepMs(backoff_ms);
      backoff_ms = std::min<int64_t>(backoff_ms * 2, 250);
      continue;
    }
    if (!ex.ok()) return job.respond(ErrorResponse(ex.status()));
    return job.respond(ExecutionAnswer(*ex, job.function, options_.max_response_bytes));
  }
}

void Gateway::Finished(const std::string& key) {
  std::unique_lock lock(mu_);
  auto it = functions_.find(key);
  if (it == functions_.end()) return;
  FunctionState& st = it->second;
  --st.active;
  if (!st.waiting.empty() && (st.max_concurrency <= 0 || st.active < st.max_concurrency)) {
    Job next = std::move(st.waiting.front());
    st.waiting.pop_front();
    ++st.active;
    lock.unlock();
    Start(std::move(next));
  } else if (st.active == 0 && st.waiting.empty() && st.bucket.full()) {
    functions_.erase(it);  // nothing to remember
  }
}

}  // namespace

void AddGatewayRoutes(Router& router, manager::Service& service, GatewayOptions options) {
  auto gateway = std::make_shared<Gateway>(service, Env::Default(), options);
  Route route{"*", "/gw/{tenant}/{function}/{path...}",
              "Call a function through the gateway: CGI/1.1, the request on its stdin and in its environment, its "
              "stdout as the response (public, token or tenant access per function)"};
  route.async = [gateway](HttpRequest req, Responder respond) { gateway->Handle(std::move(req), std::move(respond)); };
  route.handler_authenticates = true;
  route.max_body_bytes = options.max_request_bytes;
  router.Add(std::move(route));
  AddGatewayDocRoutes(router, service);
}

void AddGatewayRoutes(Router& router, manager::Service& service) { AddGatewayRoutes(router, service, GatewayOptions{}); }

}  // namespace berth::api
