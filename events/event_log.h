// EventLog: the durable heart of the event engine, in its own SQLite file
// (WAL, synchronous=FULL: an acknowledged write survives power loss).
//
// It stores events, triggers, cron triggers and deliveries. Publish() is
// group-committed: one writer thread takes every queued publish, writes them
// all in one transaction, commits (one fsync) and wakes their callers, so many
// concurrent publishers share each fsync. Deliveries (event x enabled matching
// trigger) are created in the same transaction as their event, so a crash can
// never keep an acknowledged event from its triggers; a unique (event,
// trigger) index makes that creation idempotent.
//
// All methods are thread-safe. Time comes from the Env's NowUnixMs().
// Tenancy: every per-tenant call filters by tenant; another tenant's object
// is NotFound. Ids: events and deliveries are increasing int64s, triggers
// "trg-<hex>", cron triggers "cron-<hex>".
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/env.h"
#include "common/status.h"
#include "events/types.h"

struct sqlite3;
struct sqlite3_stmt;

namespace berth::events {

struct EventLogOptions {
  std::string db_path;                            // e.g. <data dir>/events.db; parent folder is created
  int64_t max_payload_bytes = 256 * 1024;         // larger payloads: ResourceExhausted, field "payload"
  int64_t idempotency_window_ms = 24 * 3600'000;  // how long a (tenant, topic, key) stays a duplicate
  size_t max_batch = 1024;                        // events per group-commit transaction
  RetryPolicy default_retry;                      // for Enqueue() when none is given
};

// A page of deliveries. Empty strings / nullopt mean "any".
struct DeliveryQuery {
  std::string tenant;  // required
  std::string function;
  std::optional<DeliveryState> state;
  int64_t before_id = 0;  // 0 = newest first from the top; else ids < before_id
  int limit = 100;        // 1..1000
};

// What the dispatcher reports after one attempt.
struct AttemptResult {
  bool ok = false;
  std::string error;         // when !ok
  std::string execution_id;  // may be empty
  // When !ok: retry at next_attempt_ms, or go dead (and publish the dead
  // letter) when dead is true.
  bool dead = false;
  int64_t next_attempt_ms = 0;
};

// Counters of the group-commit writer since Open().
struct EventLogStats {
  uint64_t write_batches = 0;  // transactions the writer committed (one fsync each)
  uint64_t write_items = 0;    // publishes, enqueues and cron fires in them
  uint64_t detached_failed = 0;  // PublishSystemDetached events whose write failed
};

class EventLog {
 public:
  // Opens (creating if needed) the database, and puts deliveries a crash left
  // "running" back to "pending", due now (at-least-once: they run again).
  static Result<std::unique_ptr<EventLog>> Open(Env* env, EventLogOptions options);
  // Finishes the publishes already queued, then stops the writer.
  ~EventLog();
  EventLog(const EventLog&) = delete;
  EventLog& operator=(const EventLog&) = delete;

  // ---- events ----

  // Returns once the event (and its deliveries) is durably committed.
  // Errors: InvalidArgument field "tenant" / "topic" (see ValidateTopic; "_"
  // topics are reserved) / "content_type"; ResourceExhausted field "payload"
  // when the payload exceeds max_payload_bytes; Unavailable after shutdown.
  // With an idempotency key already used for (tenant, topic) within the
  // window (also earlier in the same batch): the first event's id, duplicate=true.
  Result<PublishResult> Publish(const Event& event);
  // Publish for berth's own events: the same, but on reserved "_" topics too
  // (e.g. "_system.execution.finished").
  Result<PublishResult> PublishSystem(const Event& event);
  // PublishSystem without waiting for the commit: the event joins the group
  // commit's queue and is committed with the next batch, in submission order
  // with every other write (so a write submitted after it, by any thread, is
  // never committed before it). For berth's lifecycle events, whose
  // publisher (an answer on its way to a client) must not wait for an fsync;
  // a crash in that window (about one fsync) loses the event. Errors: as
  // PublishSystem's validation, Unavailable after shutdown; a commit failure
  // later is counted in stats().detached_failed.
  Status PublishSystemDetached(const Event& event);
  // PublishSystemDetached for an event that may be published more than once
  // (berth re-publishes lifecycle events after a restart, see
  // manager/event_service.h): the idempotency key is required, and an event
  // of the same (tenant, topic, key) already stored, however old, makes this
  // one a no-op (the idempotency window does not apply). The check runs in
  // the committing writer, so two such publishes racing store one event.
  Status PublishSystemOnceDetached(const Event& event);
  // The newest committed event (highest id) on any of `topics`, of any
  // tenant; nullopt when there is none. Its created_ms is its batch's time.
  Result<std::optional<Event>> NewestEvent(const std::vector<std::string>& topics);
  Result<Event> GetEvent(const std::string& tenant, int64_t event_id);
  // Events of a tenant (optionally one topic) with id > after_id, oldest first; limit 1..1000.
  Result<std::vector<Event>> ListEvents(const std::string& tenant, const std::string& topic, int64_t after_id,
                                        int limit);

  // ---- triggers (topic -> function) ----

  // Validates (fields "tenant", "name", "topic", "function", "filter",
  // "max_attempts", "backoff_initial_ms", "backoff_max_ms", "max_event_age_ms",
  // "dead_letter_topic"); AlreadyExists for a duplicate name. Ignores id and
  // timestamps in `spec`. Applies to events committed after it returns.
  Result<Trigger> CreateTrigger(const Trigger& spec);
  Result<Trigger> GetTrigger(const std::string& tenant, const std::string& id);
  Result<std::vector<Trigger>> ListTriggers(const std::string& tenant);
  // Replaces every field but id, tenant and created_ms.
  Result<Trigger> UpdateTrigger(const Trigger& trigger);
  Status DeleteTrigger(const std::string& tenant, const std::string& id);

  // ---- cron triggers ----

  // Validates like CreateTrigger, plus "schedule" (must parse and fire within 10 years).
  Result<CronTrigger> CreateCronTrigger(const CronTrigger& spec);
  Result<CronTrigger> GetCronTrigger(const std::string& tenant, const std::string& id);
  Result<std::vector<CronTrigger>> ListCronTriggers(const std::string& tenant);
  Result<CronTrigger> UpdateCronTrigger(const CronTrigger& cron);  // keeps last_fired_ms
  Status DeleteCronTrigger(const std::string& tenant, const std::string& id);
  // Every enabled cron trigger of every tenant (for the CronTicker).
  Result<std::vector<CronTrigger>> ListEnabledCronTriggers();
  // Atomically, once per (cron, fire time): records last_fired_ms = fire_ms,
  // publishes the timer event and queues its delivery to the cron's function.
  // Returns false (and does nothing) when fire_ms <= last_fired_ms, or the
  // cron trigger is gone or disabled.
  Result<bool> FireCron(const std::string& cron_id, int64_t fire_ms);

  // ---- webhooks ----

  // Validates (fields "tenant", "name", "topic" (not reserved), "secret": 16
  // to 200 characters); AlreadyExists when any tenant has a hook of that name.
  // Ignores id and created_ms in `spec`.
  Result<Webhook> CreateWebhook(const Webhook& spec);
  Result<Webhook> GetWebhook(const std::string& tenant, const std::string& name);
  // By name alone, whatever the tenant (for the public /hooks/<name> endpoint).
  Result<Webhook> FindWebhook(const std::string& name);
  Result<std::vector<Webhook>> ListWebhooks(const std::string& tenant);
  Status DeleteWebhook(const std::string& tenant, const std::string& name);

  // ---- deliveries ----

  // Direct asynchronous invocation: durably queues `payload` for `function`
  // (an event on topic "_invoke.<function>" plus one trigger-less delivery),
  // with the same retries and dead letters as triggered deliveries.
  // Returns the delivery id. Errors as Publish, plus field "function".
  Result<int64_t> Enqueue(const std::string& tenant, const std::string& function, std::string payload,
                          std::string content_type = "application/json",
                          std::optional<RetryPolicy> retry = std::nullopt);
  Result<Delivery> GetDelivery(const std::string& tenant, int64_t delivery_id);
  Result<std::vector<Delivery>> ListDeliveries(const DeliveryQuery& query);
  // Dead deliveries not yet re-driven, newest first (function "" = all).
  Result<std::vector<Delivery>> ListDeadLetters(const std::string& tenant, const std::string& function,
                                                int limit = 100);
  // Queues a new delivery of the dead delivery's event to the same function
  // (fresh attempts, the same retry policy, age counted from now) and returns
  // its id. FailedPrecondition unless the delivery is dead and not yet re-driven.
  Result<int64_t> Redrive(const std::string& tenant, int64_t delivery_id);

  // ---- used by the Dispatcher ----

  // Claims up to `max` pending deliveries due at `now_ms`, oldest due first,
  // skipping those `admit` refuses (e.g. over a concurrency limit; `admit` is
  // called in order and may count what it admits). Claimed ones become
  // "running" with attempts+1 and started_ms = now_ms, durably. Looks at the
  // 256 oldest due deliveries per call (a backlog of one saturated function
  // deeper than that delays the others until it drains).
  Result<std::vector<Delivery>> ClaimDue(int64_t now_ms, size_t max,
                                         const std::function<bool(const Delivery&)>& admit);
  // Ends a running attempt: succeeded, pending again (retry), or dead — the
  // latter publishing, in the same transaction, a dead-letter event to the
  // policy's dead_letter_topic (default "_dead.<function>") with JSON payload
  // {"delivery_id","original_event_id","original_topic","trigger_id","function",
  //  "attempts","last_error","execution_ids","content_type", and "payload"
  //  (the original JSON) or "payload_base64" (any other bytes)}.
  Status FinishAttempt(int64_t delivery_id, const AttemptResult& result);
  // The earliest next_attempt_ms of a pending delivery, or nullopt.
  Result<std::optional<int64_t>> NextDueMs();
  // Called from the committing thread after each commit that queued or
  // rescheduled deliveries; it must be quick and must not call back into the
  // EventLog. One listener; pass {} to clear (after which it is not running).
  void SetDeliveryListener(std::function<void()> listener);

  EventLogStats stats();
  Env* env() const { return env_; }
  const EventLogOptions& options() const { return options_; }

 private:
  struct WriteItem;
  struct TriggerCache;
  class Stmt;

  EventLog(Env* env, EventLogOptions options);
  Status Init();
  void WriterLoop();
  Result<WriteItem*> Submit(WriteItem* item);
  // Validates and queues a publish nobody waits for (the writer deletes it
  // once committed); `once`: dedupe against every stored event of its key.
  Status QueueDetachedPublish(const Event& event, bool once);
  Status ValidateSystemEvent(const Event& event) const;
  Status ExecSql(const char* sql);
  sqlite3_stmt* Prepared(const char* sql);
  Status LoadTriggerCache();
  // Inside an open transaction, db_mu_ held.
  Status ApplyWrite(WriteItem* item, int64_t now_ms, int* deliveries_created);
  Result<PublishResult> InsertEvent(const Event& event, int64_t now_ms, int* deliveries_created);
  Result<int64_t> InsertDelivery(const Delivery& d);
  void NotifyListener();

  Env* env_;
  EventLogOptions options_;
  sqlite3* db_ = nullptr;
  std::mutex db_mu_;  // guards db_, prepared_, triggers_
  std::map<std::string, sqlite3_stmt*> prepared_;
  std::unique_ptr<TriggerCache> triggers_;
  int64_t batches_since_prune_ = 0;
  EventLogStats stats_;  // guarded by queue_mu_

  std::mutex queue_mu_;
  std::condition_variable queue_cv_;  // writer waits for work
  std::condition_variable done_cv_;   // publishers wait for their commit
  std::deque<WriteItem*> queue_;
  bool stopping_ = false;
  std::thread writer_;

  std::mutex listener_mu_;
  std::function<void()> listener_;
};

}  // namespace berth::events
