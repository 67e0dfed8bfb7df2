// EventService: the event engine wired to the manager. It owns the durable
// EventLog (events.db), the Dispatcher that runs deliveries, and the
// CronTicker, and is the Dispatcher's FunctionRunner: each attempt is one
// Service::Invoke of the delivery's function in the delivery's tenant, with
// the event payload on stdin and the environment
//   BERTH_EVENT_ID, BERTH_EVENT_TOPIC, BERTH_EVENT_CONTENT_TYPE,
//   BERTH_DELIVERY_ID, BERTH_ATTEMPT (1 for the first attempt).
// An attempt succeeds only when the execution ends "succeeded"; any other end
// is a failed attempt whose error names the execution's state, exit code or
// error (retried with backoff, then dead-lettered; see events/dispatcher.h).
//
// Direct asynchronous invocations (InvokeAsync) go through the same queue:
// their event, on topic "_invoke.<function>", carries the invoke request
// ({"args","env","stdin"}) with content type kInvokeContentType, which the
// runner unpacks instead of passing it on stdin.
//
// Lifecycle events: each execution that Service::Invoke ran, and each process
// that exec or fork started (POST /v1/procs, /v1/procs/{pid}/fork), publishes,
// in its tenant, an event on "_system.execution.finished" (ended "succeeded") or
// "_system.execution.failed" (any other end) with JSON payload
// {"execution_id","function","status","exit_code","signal","error_code",
//  "error","duration_ms","pid"}. Executions started for an event of a
// "_system." topic publish none, so a trigger on them cannot loop. The
// event is queued for the event log's next group commit without waiting for
// it (EventLog::PublishSystemDetached): an answer never waits for its fsync,
// and it is still committed before any write the caller makes afterwards.
//
// Every per-tenant method acts within caller.tenant only; another tenant's
// objects are NotFound. All methods are thread-safe.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/env.h"
#include "common/status.h"
#include "events/cron_ticker.h"
#include "events/dispatcher.h"
#include "events/event_log.h"
#include "manager/executor.h"
#include "manager/service.h"
#include "manager/types.h"

namespace berth::manager {

inline constexpr const char* kInvokeContentType = "application/vnd.berth.invoke+json";
inline constexpr const char* kExecutionFinishedTopic = "_system.execution.finished";
inline constexpr const char* kExecutionFailedTopic = "_system.execution.failed";

struct EventServiceConfig {
  events::EventLogOptions log;  // log.db_path: e.g. <data dir>/events.db
  // workers = 0: no dispatcher at all (deliveries stay pending; for tests and
  // for a node that only ingests).
  events::DispatcherOptions dispatcher;
  events::CronTickerOptions ticker;
  bool lifecycle_events = true;
};

// A webhook as created: the only time its secret is shown.
struct CreatedWebhook {
  events::Webhook hook;
  std::string secret;
};

class EventService final : public events::FunctionRunner {
 public:
  // Opens the event log (recovering deliveries a crash left running).
  // `service` must outlive the EventService.
  static Result<std::unique_ptr<EventService>> Open(Env* env, Service* service, EventServiceConfig config);
  ~EventService() override;  // Stop()s

  // Starts the dispatcher workers and the cron ticker, and subscribes to the
  // Service's execution ends. Stop() undoes all three, waiting for attempts
  // in flight (call it before the Service goes away).
  void Start();
  void Stop();
  // Takes no new deliveries; attempts that the stop interrupts stay for the
  // next start (Dispatcher::BeginStop). Call before Service::Detach.
  void BeginStop();

  // ---- events ----
  // Durably publishes; errors name the field ("topic", "payload" as
  // ResourceExhausted when too large, "idempotency_key", "content_type").
  Result<events::PublishResult> Publish(const Principal& caller, const std::string& topic, std::string payload,
                                        std::string content_type, std::optional<std::string> idempotency_key);
  Result<events::Event> GetEvent(const Principal& caller, int64_t id);
  Result<std::vector<events::Event>> ListEvents(const Principal& caller, const std::string& topic, int64_t after_id,
                                                int limit);

  // ---- triggers ---- (the function must exist: FailedPrecondition field "function")
  Result<events::Trigger> CreateTrigger(const Principal& caller, events::Trigger spec);
  Result<events::Trigger> GetTrigger(const Principal& caller, const std::string& id);
  Result<std::vector<events::Trigger>> ListTriggers(const Principal& caller);
  Result<events::Trigger> UpdateTrigger(const Principal& caller, events::Trigger trigger);
  Status DeleteTrigger(const Principal& caller, const std::string& id);

  Result<events::CronTrigger> CreateCronTrigger(const Principal& caller, events::CronTrigger spec);
  Result<events::CronTrigger> GetCronTrigger(const Principal& caller, const std::string& id);
  Result<std::vector<events::CronTrigger>> ListCronTriggers(const Principal& caller);
  Result<events::CronTrigger> UpdateCronTrigger(const Principal& caller, events::CronTrigger cron);
  Status DeleteCronTrigger(const Principal& caller, const std::string& id);

  // ---- deliveries ----
  // Queues an asynchronous invocation of `function` (which must exist:
  // NotFound) and returns its delivery id. request.ppid must be init (1).
  Result<int64_t> InvokeAsync(const Principal& caller, const std::string& function, const InvokeRequest& request);
  Result<events::Delivery> GetDelivery(const Principal& caller, int64_t id);
  Result<std::vector<events::Delivery>> ListDeliveries(const Principal& caller, events::DeliveryQuery query);
  Result<std::vector<events::Delivery>> ListDeadLetters(const Principal& caller, const std::string& function,
                                                        int limit);
  Result<int64_t> Redrive(const Principal& caller, int64_t delivery_id);

  // ---- webhooks ----
  // An empty secret is generated (64 hex characters).
  Result<CreatedWebhook> CreateWebhook(const Principal& caller, const std::string& name, const std::string& topic,
                                       std::string secret);
  Result<events::Webhook> GetWebhook(const Principal& caller, const std::string& name);
  Result<std::vector<events::Webhook>> ListWebhooks(const Principal& caller);
  Status DeleteWebhook(const Principal& caller, const std::string& name);
  // The public side: NotFound for an unknown hook, Unauthenticated unless the
  // signature or secret header proves the secret (events/webhook_auth.h);
  // then publishes `body` on the hook's topic in the hook's tenant.
  Result<events::PublishResult> ReceiveWebhook(const std::string& name, std::string body, std::string content_type,
                                               const std::string& signature_header, const std::string& secret_header,
                                               std::optional<std::string> idempotency_key);

  // events::FunctionRunner (called by dispatcher workers).
  Result<events::RunOutcome> Run(const events::Delivery& delivery, const events::Event& event) override;

  events::EventLog& log() { return *log_; }

 private:
  EventService(Service* service, EventServiceConfig config) : service_(service), config_(std::move(config)) {}
  Status RequireFunction(const Principal& caller, const std::string& function);
  void OnExecutionEnded(const ExecutionRecord& ex);

  Service* service_;
  EventServiceConfig config_;
  std::unique_ptr<events::EventLog> log_;
  std::unique_ptr<events::Dispatcher> dispatcher_;  // null when workers == 0
  std::unique_ptr<events::CronTicker> ticker_;
  std::mutex mu_;
  bool started_ = false;
};

}  // namespace berth::manager
