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
// event's idempotency key is the execution id.
//
// Lifecycle events are at-least-once delivered to the log and stored once:
// - An end publishes its event without waiting for the commit
//   (EventLog::PublishSystemOnceDetached): an answer never waits for an
//   fsync, and the event is still committed before any write the caller
//   makes afterwards. A crash in that window (about one fsync) loses it
//   while the end is already durable in the store.
// - So Start() re-publishes, from the store, the event of every execution
//   that ended since kLifecycleReplayMarginMs before the newest lifecycle
//   event the log holds (RepublishLifecycleEvents). The event log commits
//   in submission order, so everything submitted before that event was
//   committed; the margin covers the time between an end being recorded and
//   its event being submitted. Ends that reconciliation recorded at startup
//   (executions left running, ended lost) are published this way too.
// - The event log keeps one event per (tenant, topic, execution id), however
//   old: a re-published event that did commit is dropped by the writer.
//
// Every per-tenant method acts within caller.tenant only; another tenant's
// objects are NotFound. All methods are thread-safe.
#pragma once

#include <functional>
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
// How long before the newest stored lifecycle event a restart looks for ends
// whose event may be missing (see the header comment).
inline constexpr int64_t kLifecycleReplayMarginMs = 5 * 60'000;

// The lifecycle event of an ended execution (topic, tenant, JSON payload,
// idempotency key = execution id); nullopt for a run of a "_system." event.
std::optional<events::Event> LifecycleEventOf(const ExecutionRecord& ex);

// Ended executions strictly after a (finished_ms, id) cursor, in end order
// (Store::ListEndedExecutionsAfter / Service::ListEndedExecutionsAfter).
using EndedExecutionsFn = std::function<Result<std::vector<ExecutionRecord>>(
    int64_t after_finished_ms, const std::string& after_id, size_t limit)>;

// Queues (EventLog::PublishSystemOnceDetached) the lifecycle event of every
// execution `ended` lists from `since` on, where since is the newest
// lifecycle event's created_ms - kLifecycleReplayMarginMs, or now_ms -
// kLifecycleReplayMarginMs when the log holds none. (An event stored before
// lifecycle events had keys cannot dedupe a re-publish; then since is just
// after it.) Returns how many events were queued; those already stored are
// dropped by the writer.
Result<size_t> RepublishLifecycleEvents(events::EventLog& log, const EndedExecutionsFn& ended, int64_t now_ms);

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

  // Subscribes to the Service's execution ends, re-publishes the lifecycle
  // events a crash may have lost (RepublishLifecycleEvents; a failure there
  // is logged), and starts the dispatcher workers and the cron ticker.
  // Stop() undoes all three, waiting for attempts in flight (call it before
  // the Service goes away).
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
