// The event engine's routes: topics and events, triggers, cron triggers,
// deliveries and dead letters, webhooks (admin side and the public
// /hooks/<name>), and asynchronous invocation. Handlers only parse, call the
// EventService, render.
#include <nlohmann/json.hpp>

#include "api/json_fields.h"
#include "api/render.h"
#include "api/routes.h"
#include "manager/event_service.h"

namespace berth::api {
namespace {

using json = nlohmann::json;

template <typename T, typename Render>
HttpResponse Answer(const Result<T>& result, int status, Render render) {
  if (!result.ok()) return ErrorResponse(result.status());
  return Json(status, render(*result));
}

std::string Header(const HttpRequest& req, const char* lowercase_name) {
  auto it = req.headers.find(lowercase_name);
  return it == req.headers.end() ? std::string() : it->second;
}

std::string Query(const HttpRequest& req, const char* name) {
  auto it = req.query.find(name);
  return it == req.query.end() ? std::string() : it->second;
}

Result<int64_t> ParseInt(const std::string& text, const char* field, int64_t fallback, int64_t min, int64_t max) {
  if (text.empty()) return fallback;
  int64_t v = 0;
  size_t used = 0;
  try {
    v = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size()) return Status::InvalidArgument(field, "must be an integer");
  if (v < min || v > max) {
    return Status::InvalidArgument(field, "must be between " + std::to_string(min) + " and " + std::to_string(max));
  }
  return v;
}

Result<int64_t> QueryInt(const HttpRequest& req, const char* name, int64_t fallback, int64_t min, int64_t max) {
  return ParseInt(Query(req, name), name, fallback, min, max);
}

Result<int64_t> PathId(const HttpRequest& req) {
  auto id = ParseInt(req.params.at("id"), "id", 0, 1, kBig);
  if (!id.ok() || req.params.at("id").empty()) return Status::InvalidArgument("id", "must be a positive integer");
  return id;
}

// Idempotency-Key header, or ?idempotency_key= (the header wins).
std::optional<std::string> IdempotencyKey(const HttpRequest& req) {
  std::string key = Header(req, "idempotency-key");
  if (key.empty()) key = Query(req, "idempotency_key");
  if (key.empty() && !req.headers.count("idempotency-key") && !req.query.count("idempotency_key")) return std::nullopt;
  return key;  // an empty key given explicitly is refused by the log, naming the field
}

// ---- rendering ----

json EventJson(const events::Event& e) {
  json j = {{"event_id", e.id},
            {"topic", e.topic},
            {"content_type", e.content_type},
            {"size_bytes", e.payload.size()},
            {"idempotency_key", e.idempotency_key ? json(*e.idempotency_key) : json(nullptr)},
            {"created_ms", e.created_ms}};
  // JSON payloads inline; any other bytes as base64 (GET ...?raw=1 gives them as sent).
  json parsed = json::parse(e.payload, nullptr, false);
  if (!parsed.is_discarded()) {
    j["payload"] = std::move(parsed);
  } else {
    j["payload_base64"] = events::Base64Encode(e.payload);
  }
  return j;
}

void RetryJson(const events::RetryPolicy& p, json* j) {
  (*j)["max_attempts"] = p.max_attempts;
  (*j)["backoff_initial_ms"] = p.backoff_initial_ms;
  (*j)["backoff_max_ms"] = p.backoff_max_ms;
  (*j)["max_event_age_ms"] = p.max_event_age_ms;
  (*j)["dead_letter_topic"] = p.dead_letter_topic.empty() ? json(nullptr) : json(p.dead_letter_topic);
}

json TriggerJson(const events::Trigger& t) {
  json j = {{"id", t.id},           {"name", t.name},       {"topic", t.topic},
            {"function", t.function}, {"filter", t.filter}, {"enabled", t.enabled},
            {"created_ms", t.created_ms}, {"updated_ms", t.updated_ms}};
  RetryJson(t.retry, &j);
  return j;
}

json CronJson(const events::CronTrigger& c) {
  json j = {{"id", c.id},
            {"name", c.name},
            {"schedule", c.schedule},
            {"function", c.function},
            {"enabled", c.enabled},
            {"topic", "_timer." + c.name},
            {"last_fired_ms", c.last_fired_ms == 0 ? json(nullptr) : json(c.last_fired_ms)},
            {"created_ms", c.created_ms},
            {"updated_ms", c.updated_ms}};
  RetryJson(c.retry, &j);
  return j;
}

json DeliveryJson(const events::Delivery& d) {
  auto opt = [](int64_t v) { return v == 0 ? json(nullptr) : json(v); };
  json j = {{"delivery_id", d.id},
            {"event_id", d.event_id},
            {"trigger_id", d.trigger_id.empty() ? json(nullptr) : json(d.trigger_id)},
            {"function", d.function},
            {"state", events::DeliveryStateName(d.state)},
            {"attempts", d.attempts},
            {"next_attempt_ms", d.state == events::DeliveryState::kPending ? json(d.next_attempt_ms) : json(nullptr)},
            {"last_error", d.last_error},
            {"execution_ids", d.execution_ids},
            {"created_ms", d.created_ms},
            {"updated_ms", d.updated_ms},
            {"started_ms", opt(d.started_ms)},
            {"finished_ms", opt(d.finished_ms)},
            {"redrive_of", opt(d.redrive_of)},
            {"redriven_by", opt(d.redriven_by)},
            {"dead_letter_event_id", opt(d.dead_letter_event_id)}};
  RetryJson(d.retry, &j);
  return j;
}

json WebhookJson(const events::Webhook& w) {
  return {{"id", w.id}, {"name", w.name}, {"topic", w.topic}, {"url", "/hooks/" + w.name}, {"created_ms", w.created_ms}};
}

json PublishJson(const events::PublishResult& p) { return {{"event_id", p.event_id}, {"duplicate", p.duplicate}}; }

// ---- parsing ----

// Reads the retry fields (flat, as the API spells them) over `p`.
Status ReadRetry(FieldReader& r, events::RetryPolicy* p) {
  int64_t attempts = p->max_attempts;
  BERTH_RETURN_IF_ERROR(r.Int("max_attempts", &attempts, -kBig, kBig));
  BERTH_RETURN_IF_ERROR(r.Int("backoff_initial_ms", &p->backoff_initial_ms, -kBig, kBig));
  BERTH_RETURN_IF_ERROR(r.Int("backoff_max_ms", &p->backoff_max_ms, -kBig, kBig));
  BERTH_RETURN_IF_ERROR(r.Int("max_event_age_ms", &p->max_event_age_ms, -kBig, kBig));
  BERTH_RETURN_IF_ERROR(r.String("dead_letter_topic", &p->dead_letter_topic));
  // Out of int range: a value the range check rejects by name.
  p->max_attempts = attempts < 0 || attempts > 1'000'000 ? 0 : static_cast<int>(attempts);
  return Status::Ok();
}

// A trigger body over `t` (create: defaults, update: the stored trigger).
Status ReadTrigger(const std::string& body, bool create, events::Trigger* t) {
  BERTH_ASSIGN_OR_RETURN(json j, ParseJsonObject(body));
  if (auto it = j.find("filter"); it != j.end()) {
    if (!it->is_null() && !it->is_object()) {
      return Status::InvalidArgument("filter",
                                     "must be a JSON object of dotted paths to values, e.g. {\"type\": \"order\"}");
    }
    t->filter = it->is_null() ? json::object() : *it;
    j.erase(it);
  }
  FieldReader r(j);
  BERTH_RETURN_IF_ERROR(r.String("name", &t->name, create));
  BERTH_RETURN_IF_ERROR(r.String("topic", &t->topic, create));
  BERTH_RETURN_IF_ERROR(r.String("function", &t->function, create));
  BERTH_RETURN_IF_ERROR(r.Bool("enabled", &t->enabled));
  BERTH_RETURN_IF_ERROR(ReadRetry(r, &t->retry));
  return r.NoUnknownFields();
}

Status ReadCron(const std::string& body, bool create, events::CronTrigger* c) {
  BERTH_ASSIGN_OR_RETURN(json j, ParseJsonObject(body));
  FieldReader r(j);
  BERTH_RETURN_IF_ERROR(r.String("name", &c->name, create));
  BERTH_RETURN_IF_ERROR(r.String("schedule", &c->schedule, create));
  BERTH_RETURN_IF_ERROR(r.String("function", &c->function, create));
  BERTH_RETURN_IF_ERROR(r.Bool("enabled", &c->enabled));
  BERTH_RETURN_IF_ERROR(ReadRetry(r, &c->retry));
  return r.NoUnknownFields();
}

HttpResponse Deleted(const Status& s, const std::string& what) {
  return s.ok() ? Json(200, {{"deleted", what}}) : ErrorResponse(s);
}

}  // namespace

std::optional<HttpResponse> MaybeInvokeAsync(manager::EventService* events, const HttpRequest& req,
                                             const manager::InvokeRequest& invoke) {
  auto it = req.query.find("async");
  if (it == req.query.end() || it->second == "0" || it->second == "false") return std::nullopt;
  if (!(it->second.empty() || it->second == "1" || it->second == "true")) {
    return ErrorResponse(Status::InvalidArgument("async", "must be 1/true or 0/false"));
  }
  if (events == nullptr) return ErrorResponse(Status::Unavailable("asynchronous invocation needs the event engine"));
  const std::string& function = req.params.at("name");
  auto id = events->InvokeAsync(Who(req), function, invoke);
  if (!id.ok()) return ErrorResponse(id.status());
  return Json(202, {{"delivery_id", *id},
                    {"function", function},
                    {"state", "pending"},
                    {"delivery_url", "/v1/deliveries/" + std::to_string(*id)}});
}

void AddEventRoutes(Router& router, manager::EventService& es) {
  // ---- events ----
  Route publish{"POST", "/v1/events/{topic...}",
                "Publish the body (any content type) as an event; 202 once it is durably committed. "
                "Idempotency-Key header or ?idempotency_key= dedupes within a window",
                [&es](const HttpRequest& req) {
                  return Answer(es.Publish(Who(req), req.params.at("topic"), req.body, Header(req, "content-type"),
                                           IdempotencyKey(req)),
                                202, [&req](const events::PublishResult& p) {
                                  json j = PublishJson(p);
                                  j["topic"] = req.params.at("topic");
                                  return j;
                                });
                }};
  publish.success_status = 202;
  router.Add(std::move(publish));
  router.Add({"GET", "/v1/events", "List events oldest first (?topic=&after_id=&limit=)", [&es](const HttpRequest& req) {
                auto after = QueryInt(req, "after_id", 0, 0, kBig);
                if (!after.ok()) return ErrorResponse(after.status());
                auto limit = QueryInt(req, "limit", 100, 1, 1000);
                if (!limit.ok()) return ErrorResponse(limit.status());
                auto list = es.ListEvents(Who(req), Query(req, "topic"), *after, static_cast<int>(*limit));
                if (!list.ok()) return ErrorResponse(list.status());
                json out = ListOf("events", EventJson)(*list);
                out["next_after_id"] = list->empty() ? json(nullptr) : json(list->back().id);
                return Json(200, out);
              }});
  router.Add({"GET", "/v1/events/{id}", "Get an event (?raw=1: the payload as published, with its content type)",
              [&es](const HttpRequest& req) {
                auto id = PathId(req);
                if (!id.ok()) return ErrorResponse(id.status());
                auto ev = es.GetEvent(Who(req), *id);
                if (!ev.ok()) return ErrorResponse(ev.status());
                std::string raw = Query(req, "raw");
                if (raw == "1" || raw == "true") return HttpResponse{200, ev->payload, ev->content_type};
                return Json(200, EventJson(*ev));
              }});

  // ---- triggers ----
  Route create_trigger{"POST", "/v1/triggers",
                       "Create a trigger {name, topic, function, filter?, enabled?, max_attempts?, "
                       "backoff_initial_ms?, backoff_max_ms?, max_event_age_ms?, dead_letter_topic?}",
                       [&es](const HttpRequest& req) {
                         events::Trigger t;
                         if (Status s = ReadTrigger(req.body, true, &t); !s.ok()) return ErrorResponse(s);
                         return Answer(es.CreateTrigger(Who(req), t), 201, TriggerJson);
                       }};
  create_trigger.success_status = 201;
  router.Add(std::move(create_trigger));
  router.Add({"GET", "/v1/triggers", "List triggers", [&es](const HttpRequest& req) {
                return Answer(es.ListTriggers(Who(req)), 200, ListOf("triggers", TriggerJson));
              }});
  router.Add({"GET", "/v1/triggers/{id}", "Get a trigger", [&es](const HttpRequest& req) {
                return Answer(es.GetTrigger(Who(req), req.params.at("id")), 200, TriggerJson);
              }});
  router.Add({"PUT", "/v1/triggers/{id}", "Update a trigger (fields given replace the stored ones)",
              [&es](const HttpRequest& req) {
                auto t = es.GetTrigger(Who(req), req.params.at("id"));
                if (!t.ok()) return ErrorResponse(t.status());
                if (Status s = ReadTrigger(req.body, false, &*t); !s.ok()) return ErrorResponse(s);
                return Answer(es.UpdateTrigger(Who(req), *t), 200, TriggerJson);
              }});
  router.Add({"DELETE", "/v1/triggers/{id}", "Delete a trigger", [&es](const HttpRequest& req) {
                return Deleted(es.DeleteTrigger(Who(req), req.params.at("id")), req.params.at("id"));
              }});

  // ---- cron triggers ----
  Route create_cron{"POST", "/v1/cron-triggers",
                    "Create a cron trigger {name, schedule (5-field cron, UTC), function, enabled?, retry fields?}; "
                    "each fire publishes on _timer.<name>",
                    [&es](const HttpRequest& req) {
                      events::CronTrigger c;
                      if (Status s = ReadCron(req.body, true, &c); !s.ok()) return ErrorResponse(s);
                      return Answer(es.CreateCronTrigger(Who(req), c), 201, CronJson);
                    }};
  create_cron.success_status = 201;
  router.Add(std::move(create_cron));
  router.Add({"GET", "/v1/cron-triggers", "List cron triggers", [&es](const HttpRequest& req) {
                return Answer(es.ListCronTriggers(Who(req)), 200, ListOf("cron_triggers", CronJson));
              }});
  router.Add({"GET", "/v1/cron-triggers/{id}", "Get a cron trigger", [&es](const HttpRequest& req) {
                return Answer(es.GetCronTrigger(Who(req), req.params.at("id")), 200, CronJson);
              }});
  router.Add({"PUT", "/v1/cron-triggers/{id}", "Update a cron trigger (fields given replace the stored ones)",
              [&es](const HttpRequest& req) {
                auto c = es.GetCronTrigger(Who(req), req.params.at("id"));
                if (!c.ok()) return ErrorResponse(c.status());
                if (Status s = ReadCron(req.body, false, &*c); !s.ok()) return ErrorResponse(s);
                return Answer(es.UpdateCronTrigger(Who(req), *c), 200, CronJson);
              }});
  router.Add({"DELETE", "/v1/cron-triggers/{id}", "Delete a cron trigger", [&es](const HttpRequest& req) {
                return Deleted(es.DeleteCronTrigger(Who(req), req.params.at("id")), req.params.at("id"));
              }});

  // ---- deliveries and dead letters ----
  router.Add({"GET", "/v1/deliveries", "List deliveries newest first (?function=&state=&before_id=&limit=)",
              [&es](const HttpRequest& req) {
                events::DeliveryQuery q;
                q.function = Query(req, "function");
                if (std::string state = Query(req, "state"); !state.empty()) {
                  q.state = events::ParseDeliveryState(state);
                  if (!q.state) {
                    return ErrorResponse(Status::InvalidArgument("state", "must be pending, running, succeeded or dead"));
                  }
                }
                auto before = QueryInt(req, "before_id", 0, 0, kBig);
                if (!before.ok()) return ErrorResponse(before.status());
                auto limit = QueryInt(req, "limit", 100, 1, 1000);
                if (!limit.ok()) return ErrorResponse(limit.status());
                q.before_id = *before;
                q.limit = static_cast<int>(*limit);
                return Answer(es.ListDeliveries(Who(req), q), 200, ListOf("deliveries", DeliveryJson));
              }});
  router.Add({"GET", "/v1/deliveries/{id}", "Get a delivery (its attempts, last error and executions)",
              [&es](const HttpRequest& req) {
                auto id = PathId(req);
                if (!id.ok()) return ErrorResponse(id.status());
                return Answer(es.GetDelivery(Who(req), *id), 200, DeliveryJson);
              }});
  router.Add({"GET", "/v1/dead-letters", "Dead deliveries not yet re-driven, newest first (?function=&limit=)",
              [&es](const HttpRequest& req) {
                auto limit = QueryInt(req, "limit", 100, 1, 1000);
                if (!limit.ok()) return ErrorResponse(limit.status());
                return Answer(es.ListDeadLetters(Who(req), Query(req, "function"), static_cast<int>(*limit)), 200,
                              ListOf("dead_letters", DeliveryJson));
              }});
  Route redrive{"POST", "/v1/dead-letters/{id}/redrive",
                "Queue a dead delivery's event to its function again (fresh attempts)", [&es](const HttpRequest& req) {
                  auto id = PathId(req);
                  if (!id.ok()) return ErrorResponse(id.status());
                  auto fresh = es.Redrive(Who(req), *id);
                  if (!fresh.ok()) return ErrorResponse(fresh.status());
                  return Json(202, {{"delivery_id", *fresh}, {"redrive_of", *id}, {"state", "pending"}});
                }};
  redrive.success_status = 202;
  router.Add(std::move(redrive));

  // ---- webhooks ----
  Route create_hook{"POST", "/v1/webhooks",
                    "Create a webhook {name, topic, secret?}; the secret (generated when omitted) is answered once",
                    [&es](const HttpRequest& req) {
                      auto j = ParseJsonObject(req.body);
                      if (!j.ok()) return ErrorResponse(j.status());
                      FieldReader r(*j);
                      std::string name, topic, secret;
                      Status s = r.String("name", &name, true);
                      if (s.ok()) s = r.String("topic", &topic, true);
                      if (s.ok()) s = r.String("secret", &secret);
                      if (s.ok()) s = r.NoUnknownFields();
                      if (!s.ok()) return ErrorResponse(s);
                      auto created = es.CreateWebhook(Who(req), name, topic, secret);
                      if (!created.ok()) return ErrorResponse(created.status());
                      json out = WebhookJson(created->hook);
                      out["secret"] = created->secret;
                      return Json(201, out);
                    }};
  create_hook.success_status = 201;
  router.Add(std::move(create_hook));
  router.Add({"GET", "/v1/webhooks", "List webhooks (never their secrets)", [&es](const HttpRequest& req) {
                return Answer(es.ListWebhooks(Who(req)), 200, ListOf("webhooks", WebhookJson));
              }});
  router.Add({"GET", "/v1/webhooks/{name}", "Get a webhook", [&es](const HttpRequest& req) {
                return Answer(es.GetWebhook(Who(req), req.params.at("name")), 200, WebhookJson);
              }});
  router.Add({"DELETE", "/v1/webhooks/{name}", "Delete a webhook", [&es](const HttpRequest& req) {
                return Deleted(es.DeleteWebhook(Who(req), req.params.at("name")), req.params.at("name"));
              }});
  Route hook{"POST", "/hooks/{name}",
             "Webhook receiver (no bearer token): X-Berth-Signature: sha256=<hex HMAC-SHA256 of the body> or "
             "X-Berth-Secret: <secret>; publishes the body on the hook's topic",
             [&es](const HttpRequest& req) {
               return Answer(es.ReceiveWebhook(req.params.at("name"), req.body, Header(req, "content-type"),
                                               Header(req, "x-berth-signature"), Header(req, "x-berth-secret"),
                                               IdempotencyKey(req)),
                             202, PublishJson);
             }};
  hook.success_status = 202;
  hook.is_public = true;
  router.Add(std::move(hook));
}

}  // namespace berth::api
