#include "manager/event_service.h"

#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

#include "common/ids.h"
#include "events/webhook_auth.h"

namespace berth::manager {
namespace {

using json = nlohmann::json;

// Why an execution that did not succeed counts as a failed attempt.
std::string DescribeFailure(const ExecutionRecord& ex) {
  std::string out = "execution " + ex.id + " ended " + ExecStateName(ex.state);
  if (ex.exit_code) out += " with exit code " + std::to_string(*ex.exit_code);
  if (ex.signal != 0) out += " (signal " + std::to_string(ex.signal) + ")";
  if (!ex.error_code.empty()) out += ": " + ex.error_code;
  if (!ex.error.empty()) out += ": " + ex.error;
  std::string err = ex.stderr_data;
  while (!err.empty() && (err.back() == '\n' || err.back() == ' ')) err.pop_back();
  constexpr size_t kTail = 300;
  if (!err.empty()) out += "; stderr: " + (err.size() > kTail ? "..." + err.substr(err.size() - kTail) : err);
  return out;
}

// The invoke request an async invocation queued (see kInvokeContentType).
Result<InvokeRequest> ParseQueuedInvoke(const std::string& payload) {
  json j = json::parse(payload, nullptr, false);
  if (!j.is_object()) return Status::InvalidArgument("payload", "queued invoke request is not a JSON object");
  InvokeRequest req;
  try {
    if (j.contains("args")) req.args = j["args"].get<std::vector<std::string>>();
    if (j.contains("env")) req.env = j["env"].get<std::map<std::string, std::string>>();
    if (j.contains("stdin")) req.stdin_data = j["stdin"].get<std::string>();
    if (j.contains("name")) req.name = j["name"].get<std::string>();
  } catch (const json::exception& e) {
    return Status::InvalidArgument("payload", std::string("malformed queued invoke request: ") + e.what());
  }
  return req;
}

}  // namespace

Result<std::unique_ptr<EventService>> EventService::Open(Env* env, Service* service, EventServiceConfig config) {
  std::unique_ptr<EventService> es(new EventService(service, std::move(config)));
  BERTH_ASSIGN_OR_RETURN(es->log_, events::EventLog::Open(env, es->config_.log));
  if (es->config_.dispatcher.workers > 0) {
    es->dispatcher_ = std::make_unique<events::Dispatcher>(es->log_.get(), es.get(), es->config_.dispatcher);
  }
  es->ticker_ = std::make_unique<events::CronTicker>(es->log_.get(), es->config_.ticker);
  return es;
}

EventService::~EventService() { Stop(); }

void EventService::Start() {
  std::lock_guard<std::mutex> lk(mu_);
  if (started_) return;
  started_ = true;
  service_->SetExecutionListener([this](const ExecutionRecord& ex) { OnExecutionEnded(ex); });
  // After subscribing, so an end between the two is published by one or the
  // other (or both: the log keeps one).
  if (config_.lifecycle_events) {
    Service* svc = service_;
    auto queued = RepublishLifecycleEvents(
        *log_,
        [svc](int64_t after_ms, const std::string& after_id, size_t limit) {
          return svc->ListEndedExecutionsAfter(after_ms, after_id, limit);
        },
        log_->env()->NowUnixMs());
    if (!queued.ok()) {
      spdlog::warn("re-publishing lifecycle events: {}", queued.status().ToString());
    } else if (*queued > 0) {
      spdlog::info("re-published the lifecycle events of {} recently ended executions (those already stored are "
                   "kept once)", *queued);
    }
  }
  if (dispatcher_) dispatcher_->Start();
  ticker_->Start();
}

void EventService::BeginStop() {
  if (dispatcher_) dispatcher_->BeginStop();
}

void EventService::Stop() {
  std::lock_guard<std::mutex> lk(mu_);
  if (!started_) return;
  started_ = false;
  ticker_->Stop();
  // Attempts in flight finish (and publish their lifecycle events) first.
  if (dispatcher_) dispatcher_->Stop();
  service_->SetExecutionListener({});
}

Status EventService::RequireFunction(const Principal& caller, const std::string& function) {
  auto fn = service_->GetFunction(caller, function);
  if (fn.ok()) return Status::Ok();
  if (fn.status().code() == Code::kNotFound) {
    return Status::FailedPrecondition("function '" + function + "' does not exist", "function");
  }
  if (fn.status().code() == Code::kInvalidArgument) return Status::InvalidArgument("function", fn.status().message());
  return fn.status();
}

// ---- events ----

Result<events::PublishResult> EventService::Publish(const Principal& caller, const std::string& topic,
                                                    std::string payload, std::string content_type,
                                                    std::optional<std::string> idempotency_key) {
  events::Event ev;
  ev.tenant = caller.tenant;
  ev.topic = topic;
  ev.payload = std::move(payload);
  ev.content_type = content_type.empty() ? "application/octet-stream" : std::move(content_type);
  ev.idempotency_key = std::move(idempotency_key);
  return log_->Publish(ev);
}

Result<events::Event> EventService::GetEvent(const Principal& caller, int64_t id) {
  return log_->GetEvent(caller.tenant, id);
}

Result<std::vector<events::Event>> EventService::ListEvents(const Principal& caller, const std::string& topic,
                                                            int64_t after_id, int limit) {
  if (!topic.empty()) BERTH_RETURN_IF_ERROR(events::ValidateTopic(topic, /*allow_reserved=*/true));
  return log_->ListEvents(caller.tenant, topic, after_id, limit);
}

// ---- triggers ----

Result<events::Trigger> EventService::CreateTrigger(const Principal& caller, events::Trigger spec) {
  spec.tenant = caller.tenant;
  BERTH_RETURN_IF_ERROR(RequireFunction(caller, spec.function));
  return log_->CreateTrigger(spec);
}

Result<events::Trigger> EventService::GetTrigger(const Principal& caller, const std::string& id) {
  return log_->GetTrigger(caller.tenant, id);
}

Result<std::vector<events::Trigger>> EventService::ListTriggers(const Principal& caller) {
  return log_->ListTriggers(caller.tenant);
}

Result<events::Trigger> EventService::UpdateTrigger(const Principal& caller, events::Trigger trigger) {
  trigger.tenant = caller.tenant;
  BERTH_RETURN_IF_ERROR(log_->GetTrigger(caller.tenant, trigger.id).status());
  BERTH_RETURN_IF_ERROR(RequireFunction(caller, trigger.function));
  return log_->UpdateTrigger(trigger);
}

Status EventService::DeleteTrigger(const Principal& caller, const std::string& id) {
  return log_->DeleteTrigger(caller.tenant, id);
}

Result<events::CronTrigger> EventService::CreateCronTrigger(const Principal& caller, events::CronTrigger spec) {
  spec.tenant = caller.tenant;
  BERTH_RETURN_IF_ERROR(RequireFunction(caller, spec.function));
  return log_->CreateCronTrigger(spec);
}

Result<events::CronTrigger> EventService::GetCronTrigger(const Principal& caller, const std::string& id) {
  return log_->GetCronTrigger(caller.tenant, id);
}

Result<std::vector<events::CronTrigger>> EventService::ListCronTriggers(const Principal& caller) {
  return log_->ListCronTriggers(caller.tenant);
}

Result<events::CronTrigger> EventService::UpdateCronTrigger(const Principal& caller, events::CronTrigger cron) {
  cron.tenant = caller.tenant;
  BERTH_RETURN_IF_ERROR(log_->GetCronTrigger(caller.tenant, cron.id).status());
  BERTH_RETURN_IF_ERROR(RequireFunction(caller, cron.function));
  return log_->UpdateCronTrigger(cron);
}

Status EventService::DeleteCronTrigger(const Principal& caller, const std::string& id) {
  return log_->DeleteCronTrigger(caller.tenant, id);
}

// ---- deliveries ----

Result<int64_t> EventService::InvokeAsync(const Principal& caller, const std::string& function,
                                          const InvokeRequest& request) {
  BERTH_RETURN_IF_ERROR(service_->GetFunction(caller, function).status());
  if (request.ppid != kInitPid) {
    return Status::InvalidArgument("ppid", "an asynchronous invocation runs under init (1); omit ppid");
  }
  json body = {{"args", request.args}, {"env", request.env}, {"stdin", request.stdin_data}};
  if (!request.name.empty()) body["name"] = request.name;
  return log_->Enqueue(caller.tenant, function, body.dump(-1, ' ', false, json::error_handler_t::replace),
                       kInvokeContentType);
}

Result<events::Delivery> EventService::GetDelivery(const Principal& caller, int64_t id) {
  return log_->GetDelivery(caller.tenant, id);
}

Result<std::vector<events::Delivery>> EventService::ListDeliveries(const Principal& caller,
                                                                   events::DeliveryQuery query) {
  query.tenant = caller.tenant;
  return log_->ListDeliveries(query);
}

Result<std::vector<events::Delivery>> EventService::ListDeadLetters(const Principal& caller,
                                                                    const std::string& function, int limit) {
  return log_->ListDeadLetters(caller.tenant, function, limit);
}

Result<int64_t> EventService::Redrive(const Principal& caller, int64_t delivery_id) {
  return log_->Redrive(caller.tenant, delivery_id);
}

// ---- webhooks ----

Result<CreatedWebhook> EventService::CreateWebhook(const Principal& caller, const std::string& name,
                                                   const std::string& topic, std::string secret) {
  events::Webhook spec;
  spec.tenant = caller.tenant;
  spec.name = name;
  spec.topic = topic;
  spec.secret = secret.empty() ? RandomHex(64) : std::move(secret);
  BERTH_ASSIGN_OR_RETURN(events::Webhook hook, log_->CreateWebhook(spec));
  CreatedWebhook out{hook, hook.secret};
  return out;
}

Result<events::Webhook> EventService::GetWebhook(const Principal& caller, const std::string& name) {
  return log_->GetWebhook(caller.tenant, name);
}

Result<std::vector<events::Webhook>> EventService::ListWebhooks(const Principal& caller) {
  return log_->ListWebhooks(caller.tenant);
}

Status EventService::DeleteWebhook(const Principal& caller, const std::string& name) {
  return log_->DeleteWebhook(caller.tenant, name);
}

Result<events::PublishResult> EventService::ReceiveWebhook(const std::string& name, std::string body,
                                                           std::string content_type,
                                                           const std::string& signature_header,
                                                           const std::string& secret_header,
                                                           std::optional<std::string> idempotency_key) {
  BERTH_ASSIGN_OR_RETURN(events::Webhook hook, log_->FindWebhook(name));
  if (!events::WebhookAuthorized(hook.secret, body, signature_header, secret_header)) {
    return Status::Unauthenticated("missing or wrong webhook secret: send X-Berth-Signature: sha256=<hex HMAC-SHA256 "
                                   "of the body> or X-Berth-Secret: <secret>");
  }
  Principal owner{hook.tenant, "", false};
  return Publish(owner, hook.topic, std::move(body), std::move(content_type), std::move(idempotency_key));
}

// ---- running deliveries ----

Result<events::RunOutcome> EventService::Run(const events::Delivery& d, const events::Event& ev) {
  InvokeRequest req;
  bool queued_invoke =
      d.trigger_id.empty() && ev.content_type == kInvokeContentType && ev.topic == "_invoke." + d.function;
  if (queued_invoke) {
    BERTH_ASSIGN_OR_RETURN(req, ParseQueuedInvoke(ev.payload));
  } else {
    req.stdin_data = ev.payload;
  }
  req.env["BERTH_EVENT_ID"] = std::to_string(ev.id);
  req.env["BERTH_EVENT_TOPIC"] = ev.topic;
  req.env["BERTH_EVENT_CONTENT_TYPE"] = ev.content_type;
  req.env["BERTH_DELIVERY_ID"] = std::to_string(d.id);
  req.env["BERTH_ATTEMPT"] = std::to_string(d.attempts);
  Principal runner{d.tenant, "", false};
  BERTH_ASSIGN_OR_RETURN(ExecutionRecord ex, service_->Invoke(runner, d.function, req));
  if (ex.state == ExecState::kSucceeded) return events::RunOutcome::Succeeded(ex.id);
  return events::RunOutcome::Failed(DescribeFailure(ex), ex.id);
}

void EventService::OnExecutionEnded(const ExecutionRecord& ex) {
  if (!config_.lifecycle_events) return;
  std::optional<events::Event> ev = LifecycleEventOf(ex);
  if (!ev) return;
  // Not waiting for the commit keeps an fsync off every answer (a gateway
  // request, an invoke); the event is still committed before anything the
  // caller writes afterwards (e.g. the delivery's result), and a crash before
  // the commit is made good by the next Start().
  if (Status s = log_->PublishSystemOnceDetached(*ev); !s.ok()) {
    spdlog::warn("lifecycle event for execution {}: {}", ex.id, s.ToString());
  }
}

std::optional<events::Event> LifecycleEventOf(const ExecutionRecord& ex) {
  // A run for a system event reports nothing: a trigger on a system topic
  // must not feed itself.
  auto topic = ex.spec.env.find("BERTH_EVENT_TOPIC");
  if (topic != ex.spec.env.end() && topic->second.rfind("_system.", 0) == 0) return std::nullopt;
  bool ok = ex.state == ExecState::kSucceeded;
  json payload = {{"execution_id", ex.id},
                  {"function", ex.function},
                  {"status", ExecStateName(ex.state)},
                  {"exit_code", ex.exit_code ? json(*ex.exit_code) : json(nullptr)},
                  {"signal", ex.signal},
                  {"error_code", ex.error_code},
                  {"error", ex.error},
                  {"duration_ms", ex.duration_ms},
                  {"pid", ex.pid}};
  events::Event ev;
  ev.tenant = ex.tenant;
  ev.topic = ok ? kExecutionFinishedTopic : kExecutionFailedTopic;
  ev.content_type = "application/json";
  ev.payload = payload.dump(-1, ' ', false, json::error_handler_t::replace);
  ev.idempotency_key = ex.id;
  return ev;
}

Result<size_t> RepublishLifecycleEvents(events::EventLog& log, const EndedExecutionsFn& ended, int64_t now_ms) {
  BERTH_ASSIGN_OR_RETURN(std::optional<events::Event> newest,
                         log.NewestEvent({kExecutionFinishedTopic, kExecutionFailedTopic}));
  int64_t since = now_ms - kLifecycleReplayMarginMs;
  if (newest) {
    // Without a key (published before keys) it cannot dedupe what ended
    // before it: start after it.
    since = newest->idempotency_key ? newest->created_ms - kLifecycleReplayMarginMs : newest->created_ms + 1;
  }
  constexpr size_t kPage = 256;
  size_t queued = 0;
  int64_t after_ms = since;
  std::string after_id;  // "": every id ending at `since` too
  while (true) {
    BERTH_ASSIGN_OR_RETURN(std::vector<ExecutionRecord> page, ended(after_ms, after_id, kPage));
    for (const ExecutionRecord& ex : page) {
      if (!IsTerminal(ex.state)) continue;
      std::optional<events::Event> ev = LifecycleEventOf(ex);
      if (!ev) continue;
      BERTH_RETURN_IF_ERROR(log.PublishSystemOnceDetached(*ev));
      ++queued;
    }
    if (page.size() < kPage) break;
    after_ms = page.back().finished_ms;
    after_id = page.back().id;
  }
  return queued;
}

}  // namespace berth::manager
