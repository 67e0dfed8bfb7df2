// Records of the event engine: events, triggers, cron triggers, deliveries,
// and the validation rules for their names. Plain data; no storage here.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace berth::events {

// An event as published, and as stored (id and created_ms are set by the log).
struct Event {
  int64_t id = 0;                 // assigned at commit; increasing
  std::string tenant;
  std::string topic;
  std::string content_type;       // free text, e.g. "application/json"
  std::string payload;            // bytes
  std::optional<std::string> idempotency_key;
  int64_t created_ms = 0;         // Env::NowUnixMs() at commit
};

struct PublishResult {
  int64_t event_id = 0;
  bool duplicate = false;  // same (tenant, topic, idempotency key) seen within the window
};

// How a delivery is retried. Copied into each delivery when it is created,
// so later edits of a trigger do not change deliveries already queued.
struct RetryPolicy {
  int max_attempts = 3;              // >= 1; attempts in all, the first included
  int64_t backoff_initial_ms = 1000; // delay before the 2nd attempt; doubles per attempt
  int64_t backoff_max_ms = 60'000;   // cap of that delay
  int64_t max_event_age_ms = 0;      // 0 = unlimited; older deliveries go dead instead of retrying
  std::string dead_letter_topic;     // empty = "_dead.<function>"
};

// Topic -> function wiring.
struct Trigger {
  std::string id;        // "trg-<16 hex>", set on create
  std::string tenant;
  std::string name;      // unique per tenant
  std::string topic;     // exact topic (reserved "_..." topics allowed, e.g. "_dead.fn")
  std::string function;
  // A JSON object: every key (a dotted path into the payload, "a.b.c") must
  // exist in the event's JSON payload with an equal value. An empty object
  // matches every event, including non-JSON payloads; a non-empty one never
  // matches a payload that is not JSON.
  nlohmann::json filter = nlohmann::json::object();
  bool enabled = true;
  RetryPolicy retry;
  int64_t created_ms = 0;
  int64_t updated_ms = 0;
};

// A schedule -> function wiring. Each fire publishes a timer event on topic
// "_timer.<name>" (payload: {"cron_id","name","schedule","scheduled_ms"})
// and queues a delivery of it to `function`.
struct CronTrigger {
  std::string id;        // "cron-<16 hex>", set on create
  std::string tenant;
  std::string name;      // unique per tenant among cron triggers
  std::string schedule;  // 5-field cron, UTC (see events/cron.h)
  std::string function;
  bool enabled = true;
  RetryPolicy retry;
  int64_t last_fired_ms = 0;  // scheduled time of the last fire (0 = never)
  int64_t created_ms = 0;
  int64_t updated_ms = 0;
};

enum class DeliveryState { kPending, kRunning, kSucceeded, kDead };
const char* DeliveryStateName(DeliveryState s);  // "pending", "running", "succeeded", "dead"
std::optional<DeliveryState> ParseDeliveryState(std::string_view s);

// One event handed to one function, with its attempts.
struct Delivery {
  int64_t id = 0;
  std::string tenant;
  int64_t event_id = 0;
  std::string trigger_id;    // trigger or cron trigger id; empty for a direct Enqueue
  std::string function;
  DeliveryState state = DeliveryState::kPending;
  int attempts = 0;          // attempts started so far
  RetryPolicy retry;
  int64_t next_attempt_ms = 0;  // when a pending delivery is due
  std::string last_error;
  std::vector<std::string> execution_ids;  // one per attempt that reported one
  int64_t age_base_ms = 0;   // max_event_age_ms counts from here (event time, or re-drive time)
  int64_t created_ms = 0;
  int64_t updated_ms = 0;
  int64_t started_ms = 0;    // start of the latest attempt
  int64_t finished_ms = 0;   // when it became succeeded or dead
  int64_t redrive_of = 0;    // the dead delivery this one re-drives (0 = none)
  int64_t redriven_by = 0;   // for a dead delivery: the delivery that re-drove it
  int64_t dead_letter_event_id = 0;  // the dead-letter event published when it died
};

// A webhook source: `POST /hooks/<name>` with the hook's secret publishes
// the request body as an event on `topic` for `tenant`. Names are unique
// across tenants (the public URL carries no tenant).
struct Webhook {
  std::string id;      // "hook-<16 hex>", set on create
  std::string tenant;
  std::string name;
  std::string topic;   // a non-reserved topic
  std::string secret;  // shared secret (HMAC key); only shown to the API when created
  int64_t created_ms = 0;
};

// Standard base64 with padding (for non-JSON payloads inside JSON).
std::string Base64Encode(std::string_view bytes);

// Validation, each returning InvalidArgument naming `field`.
// Topics: 1..200 chars of [A-Za-z0-9._:/-], starting with a letter or digit;
// with allow_reserved, also a leading '_' (system topics: _timer., _dead., _invoke.).
Status ValidateTopic(std::string_view topic, bool allow_reserved, const std::string& field = "topic");
// Trigger/cron names and function names: 1..100 chars of [A-Za-z0-9._-], starting alnum.
Status ValidateName(std::string_view name, const std::string& field);
Status ValidateRetryPolicy(const RetryPolicy& p);

}  // namespace berth::events
