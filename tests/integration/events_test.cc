// The event engine end to end: a real berthd, real HTTP, real TCG guests
// running the triggered functions. Topics with two triggers fan out, filters
// skip, failures retry with backoff into dead letters and re-drive, keys
// dedupe, cron triggers fire, webhooks check their secret, async invokes go
// through the queue, and a kill -9 mid-publish loses no acknowledged event.
#include <curl/curl.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <atomic>
#include <iostream>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>

#include "tests/integration/support/harness.h"

namespace berth::testing {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

size_t CollectBody(char* data, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(data, size * n);
  return size * n;
}

// One request with arbitrary headers ("Name: value").
HttpResult Request(const std::string& method, const std::string& url, const std::string& body,
                   const std::vector<std::string>& headers) {
  HttpResult r;
  CURL* c = curl_easy_init();
  curl_slist* list = nullptr;
  for (const auto& h : headers) list = curl_slist_append(list, h.c_str());
  list = curl_slist_append(list, "Expect:");
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method.c_str());
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, list);
  if (method != "GET") {
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.data());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
  }
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, &CollectBody);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &r.body);
  curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
  if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
  curl_slist_free_all(list);
  curl_easy_cleanup(c);
  return r;
}

std::string HmacHex(const std::string& key, const std::string& body) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(body.data()),
       body.size(), mac, &len);
  std::string hex;
  char buf[3];
  for (unsigned int i = 0; i < len; ++i) {
    snprintf(buf, sizeof buf, "%02x", mac[i]);
    hex += buf;
  }
  return hex;
}

class EventsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    daemon_ = new BerthdProcess({"--dispatch-workers", "2", "--cron-fire-creation-minute", "--cron-poll-ms", "250",
                                 "--event-max-payload-bytes", "4096"});
    ASSERT_TRUE(daemon_->running()) << "berthd did not start:\n" << daemon_->log();
    image_ = daemon_->UploadBusybox();
  }
  static void TearDownTestSuite() {
    delete daemon_;
    daemon_ = nullptr;
  }

  static void Function(const std::string& name, const json& entrypoint) {
    auto r = daemon_->CreateFunction(name, image_, {{"entrypoint", entrypoint}});
    ASSERT_EQ(r.status, 201) << r.body;
  }
  static json CreateTrigger(const json& spec) {
    auto r = daemon_->Post("/v1/triggers", spec.dump());
    EXPECT_EQ(r.status, 201) << r.body;
    return r.json();
  }
  static int64_t Publish(const std::string& topic, const std::string& body) {
    auto r = daemon_->Post("/v1/events/" + topic, body);
    EXPECT_EQ(r.status, 202) << r.body;
    return r.json().value("event_id", int64_t{0});
  }
  // Deliveries of one event, newest first.
  static std::vector<json> DeliveriesOf(int64_t event_id) {
    std::vector<json> out;
    auto r = daemon_->Get("/v1/deliveries?limit=1000");
    EXPECT_EQ(r.status, 200) << r.body;
    json list = r.json()["deliveries"];  // a copy: r.json() is a temporary
    for (const auto& d : list) {
      if (d["event_id"] == event_id) out.push_back(d);
    }
    return out;
  }
  // Polls a delivery until it reaches `state` (or a final state), at most timeout_s.
  static json WaitDelivery(int64_t id, const std::string& state, int timeout_s = 120) {
    json d;
    auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
    while (Clock::now() < deadline) {
      auto r = daemon_->Get("/v1/deliveries/" + std::to_string(id));
      d = r.json();
      if (r.status != 200) break;
      if (d["state"] == state || d["state"] == "succeeded" || d["state"] == "dead") break;
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    return d;
  }
  static json Execution(const json& delivery, size_t attempt) {
    EXPECT_GT(delivery["execution_ids"].size(), attempt) << delivery.dump();
    if (delivery["execution_ids"].size() <= attempt) return json::object();
    auto r = daemon_->Get("/v1/executions/" + delivery["execution_ids"][attempt].get<std::string>());
    EXPECT_EQ(r.status, 200) << r.body;
    return r.json();
  }

  static BerthdProcess* daemon_;
  static std::string image_;
};

BerthdProcess* EventsTest::daemon_ = nullptr;
std::string EventsTest::image_;

TEST_F(EventsTest, AnEventRunsEveryMatchingTriggerAndFiltersSkip) {
  const json echo = {"sh", "-c", "cat; echo; echo \"topic=$BERTH_EVENT_TOPIC attempt=$BERTH_ATTEMPT id=$BERTH_EVENT_ID\""};
  Function("fan-a", echo);
  Function("fan-b", echo);
  CreateTrigger({{"name", "orders-a"}, {"topic", "orders"}, {"function", "fan-a"}});
  CreateTrigger({{"name", "orders-b"}, {"topic", "orders"}, {"function", "fan-b"}, {"filter", {{"kind", "order"}}}});
  CreateTrigger({{"name", "filtered"}, {"topic", "filtered"}, {"function", "fan-b"}, {"filter", {{"kind", "order"}}}});

  // Filters decide at publish time: a non-matching or non-JSON event gets no delivery.
  int64_t refund = Publish("filtered", R"({"kind":"refund"})");
  int64_t opaque = Publish("filtered", "not json");
  EXPECT_TRUE(DeliveriesOf(refund).empty());
  EXPECT_TRUE(DeliveriesOf(opaque).empty());

  int64_t order = Publish("orders", R"({"kind":"order","n":42})");
  auto deliveries = DeliveriesOf(order);
  ASSERT_EQ(deliveries.size(), 2u) << daemon_->Get("/v1/deliveries").body;
  std::set<std::string> functions;
  for (const auto& listed : deliveries) {
    json d = WaitDelivery(listed["delivery_id"], "succeeded");
    ASSERT_EQ(d["state"], "succeeded") << d.dump();
    functions.insert(d["function"]);
    json ex = Execution(d, 0);
    EXPECT_EQ(ex["status"], "succeeded");
    std::string out = ex["stdout"];
    EXPECT_NE(out.find(R"({"kind":"order","n":42})"), std::string::npos) << out;
    EXPECT_NE(out.find("topic=orders attempt=1 id=" + std::to_string(order)), std::string::npos) << out;
  }
  EXPECT_EQ(functions, (std::set<std::string>{"fan-a", "fan-b"}));

  // berth's own lifecycle events name the executions.
  auto finished = daemon_->Get("/v1/events?topic=_system.execution.finished&limit=1000");
  ASSERT_EQ(finished.status, 200) << finished.body;
  std::set<std::string> reported;
  json finished_events = finished.json()["events"];
  for (const auto& e : finished_events) reported.insert(e["payload"]["execution_id"].get<std::string>());
  for (const auto& listed : deliveries) {
    json d = daemon_->Get("/v1/deliveries/" + std::to_string(listed["delivery_id"].get<int64_t>())).json();
    EXPECT_TRUE(reported.count(d["execution_ids"][0].get<std::string>())) << finished.body;
  }
}

TEST_F(EventsTest, FailuresRetryWithBackoffIntoDeadLettersAndRedriveAfterAFix) {
  Function("flaky", {"sh", "-c", "cat >/dev/null; echo boom >&2; exit 1"});
  CreateTrigger({{"name", "jobs"},
                 {"topic", "jobs"},
                 {"function", "flaky"},
                 {"max_attempts", 2},
                 {"backoff_initial_ms", 1500},
                 {"backoff_max_ms", 5000}});
  int64_t event = Publish("jobs", R"({"job":7})");
  auto listed = DeliveriesOf(event);
  ASSERT_EQ(listed.size(), 1u);
  int64_t id = listed[0]["delivery_id"];
  json d = WaitDelivery(id, "dead", 180);
  ASSERT_EQ(d["state"], "dead") << d.dump();
  EXPECT_EQ(d["attempts"], 2);
  ASSERT_EQ(d["execution_ids"].size(), 2u);
  std::string error = d["last_error"];
  EXPECT_NE(error.find("exit code 1"), std::string::npos) << error;
  EXPECT_NE(error.find("boom"), std::string::npos) << error;
  // The second attempt waited for the backoff (1500 ms minus at most 20% jitter).
  json first = Execution(d, 0), second = Execution(d, 1);
  EXPECT_EQ(first["status"], "failed");
  EXPECT_GE(second["created_ms"].get<int64_t>() - first["finished_ms"].get<int64_t>(), 1200);

  // Listed as a dead letter, with the dead-letter event on _dead.flaky.
  auto dead = daemon_->Get("/v1/dead-letters?function=flaky");
  ASSERT_EQ(dead.status, 200) << dead.body;
  ASSERT_EQ(dead.json()["dead_letters"].size(), 1u);
  EXPECT_EQ(dead.json()["dead_letters"][0]["delivery_id"], id);
  auto letter = daemon_->Get("/v1/events/" + std::to_string(d["dead_letter_event_id"].get<int64_t>()));
  ASSERT_EQ(letter.status, 200) << letter.body;
  EXPECT_EQ(letter.json()["topic"], "_dead.flaky");
  EXPECT_EQ(letter.json()["payload"]["last_error"], error);
  EXPECT_EQ(letter.json()["payload"]["payload"], json({{"job", 7}}));

  // Each failed attempt was reported on _system.execution.failed.
  json failed_events = daemon_->Get("/v1/events?topic=_system.execution.failed&limit=1000").json()["events"];
  std::set<std::string> failed_ids;
  for (const auto& e : failed_events) failed_ids.insert(e["payload"]["execution_id"].get<std::string>());
  EXPECT_TRUE(failed_ids.count(first["execution_id"]) && failed_ids.count(second["execution_id"]))
      << failed_events.dump();

  // Fix the function, re-drive: a fresh delivery succeeds.
  auto fixed = daemon_->Call("PUT", "/v1/functions/flaky",
                             json{{"image", image_}, {"entrypoint", {"sh", "-c", "cat"}}, {"memory_mib", 192}}.dump());
  ASSERT_EQ(fixed.status, 200) << fixed.body;
  auto redrive = daemon_->Post("/v1/dead-letters/" + std::to_string(id) + "/redrive", "");
  ASSERT_EQ(redrive.status, 202) << redrive.body;
  json again = WaitDelivery(redrive.json()["delivery_id"], "succeeded");
  ASSERT_EQ(again["state"], "succeeded") << again.dump();
  EXPECT_EQ(again["redrive_of"], id);
  EXPECT_EQ(Execution(again, 0)["stdout"], R"({"job":7})");
  EXPECT_TRUE(daemon_->Get("/v1/dead-letters?function=flaky").json()["dead_letters"].empty());
  // A second re-drive of the same letter is refused.
  EXPECT_EQ(daemon_->Post("/v1/dead-letters/" + std::to_string(id) + "/redrive", "").status, 422);
}

TEST_F(EventsTest, AnIdempotencyKeyDedupes) {
  auto first = daemon_->Post("/v1/events/payments?idempotency_key=pay-1", R"({"amount":5})");
  auto again = daemon_->Post("/v1/events/payments?idempotency_key=pay-1", R"({"amount":5})");
  ASSERT_EQ(first.status, 202) << first.body;
  ASSERT_EQ(again.status, 202) << again.body;
  EXPECT_EQ(first.json()["duplicate"], false);
  EXPECT_EQ(again.json()["duplicate"], true);
  EXPECT_EQ(again.json()["event_id"], first.json()["event_id"]);

  // The same through the Idempotency-Key header; a different key is a new event.
  std::string url = daemon_->base_url() + "/v1/events/payments";
  std::vector<std::string> h = {"Authorization: Bearer " + daemon_->admin_token(), "Content-Type: text/plain",
                                "Idempotency-Key: pay-2"};
  auto h1 = Request("POST", url, "five", h);
  auto h2 = Request("POST", url, "five", h);
  ASSERT_EQ(h1.status, 202) << h1.body;
  EXPECT_EQ(h2.json()["event_id"], h1.json()["event_id"]);
  EXPECT_EQ(h2.json()["duplicate"], true);
  EXPECT_NE(h1.json()["event_id"], first.json()["event_id"]);
  auto ev = daemon_->Get("/v1/events/" + std::to_string(h1.json()["event_id"].get<int64_t>()));
  EXPECT_EQ(ev.json()["content_type"], "text/plain");
  EXPECT_EQ(ev.json()["idempotency_key"], "pay-2");
  auto raw = daemon_->Get("/v1/events/" + std::to_string(h1.json()["event_id"].get<int64_t>()) + "?raw=1");
  EXPECT_EQ(raw.body, "five");
  auto all = daemon_->Get("/v1/events?topic=payments");
  EXPECT_EQ(all.json()["events"].size(), 2u) << all.body;
}

TEST_F(EventsTest, ACronTriggerFires) {
  Function("tick", {"sh", "-c", "cat"});
  auto created = daemon_->Post("/v1/cron-triggers",
                               json{{"name", "every-minute"}, {"schedule", "* * * * *"}, {"function", "tick"}}.dump());
  ASSERT_EQ(created.status, 201) << created.body;
  std::string cron_id = created.json()["id"];
  json fired;
  auto deadline = Clock::now() + std::chrono::seconds(90);
  while (Clock::now() < deadline) {
    auto list = daemon_->Get("/v1/deliveries?function=tick").json()["deliveries"];
    if (!list.empty()) {
      fired = list.back();
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  ASSERT_FALSE(fired.is_null()) << "the cron trigger did not fire";
  EXPECT_EQ(daemon_->Call("DELETE", "/v1/cron-triggers/" + cron_id).status, 200);
  EXPECT_EQ(fired["trigger_id"], cron_id);
  json d = WaitDelivery(fired["delivery_id"], "succeeded");
  ASSERT_EQ(d["state"], "succeeded") << d.dump();
  json timer = json::parse(Execution(d, 0)["stdout"].get<std::string>(), nullptr, false);
  EXPECT_EQ(timer["cron_id"], cron_id);
  EXPECT_EQ(timer["scheduled_ms"].get<int64_t>() % 60000, 0);
  EXPECT_EQ(daemon_->Get("/v1/events?topic=_timer.every-minute").json()["events"].size(), 1u);
}

TEST_F(EventsTest, AWebhookChecksItsSecret) {
  auto created = daemon_->Post("/v1/webhooks", json{{"name", "gh"}, {"topic", "hooks.gh"}}.dump());
  ASSERT_EQ(created.status, 201) << created.body;
  std::string secret = created.json()["secret"];
  EXPECT_EQ(secret.size(), 64u);
  EXPECT_EQ(created.json()["url"], "/hooks/gh");
  std::string url = daemon_->base_url() + "/hooks/gh";
  std::string body = R"({"action":"push"})";
  const std::string ct = "Content-Type: application/json";

  EXPECT_EQ(Request("POST", url, body, {ct}).status, 401);
  EXPECT_EQ(Request("POST", url, body, {ct, "X-Berth-Secret: wrong-secret-wrong-secret"}).status, 401);
  EXPECT_EQ(Request("POST", url, body, {ct, "X-Berth-Signature: sha256=" + HmacHex("nope", body)}).status, 401);
  // A bearer token is no substitute for the hook's secret.
  EXPECT_EQ(Request("POST", url, body, {ct, "Authorization: Bearer " + daemon_->admin_token()}).status, 401);
  EXPECT_EQ(Request("POST", daemon_->base_url() + "/hooks/nope", body, {ct, "X-Berth-Secret: " + secret}).status, 404);
  EXPECT_TRUE(daemon_->Get("/v1/events?topic=hooks.gh").json()["events"].empty());

  auto signed_ok = Request("POST", url, body, {ct, "X-Berth-Signature: sha256=" + HmacHex(secret, body)});
  ASSERT_EQ(signed_ok.status, 202) << signed_ok.body;
  auto secret_ok = Request("POST", url, "raw bytes", {"Content-Type: text/plain", "X-Berth-Secret: " + secret});
  ASSERT_EQ(secret_ok.status, 202) << secret_ok.body;
  auto events = daemon_->Get("/v1/events?topic=hooks.gh").json()["events"];
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0]["event_id"], signed_ok.json()["event_id"]);
  EXPECT_EQ(events[0]["payload"], json::parse(body));
  EXPECT_EQ(events[1]["content_type"], "text/plain");

  // Secrets are shown once; other tenants see neither the hook nor its events.
  EXPECT_FALSE(daemon_->Get("/v1/webhooks/gh").json().contains("secret"));
  std::string other = daemon_->CreateToken("other");
  EXPECT_EQ(daemon_->CallAs(other, "GET", "/v1/webhooks/gh").status, 404);
  EXPECT_EQ(daemon_->CallAs(other, "GET", "/v1/events/" + std::to_string(events[0]["event_id"].get<int64_t>())).status,
            404);
  EXPECT_TRUE(daemon_->CallAs(other, "GET", "/v1/events?topic=hooks.gh").json()["events"].empty());
  // Names are global: the URL carries no tenant.
  EXPECT_EQ(daemon_->CallAs(other, "POST", "/v1/webhooks", json{{"name", "gh"}, {"topic", "x"}}.dump()).status, 409);
}

TEST_F(EventsTest, AsyncInvokeAnswers202AndRunsThroughTheQueue) {
  Function("later", {"sh", "-c", "cat; echo \" args=$*\"", "sh"});
  // A trigger on berth's own lifecycle topic sees the run end; its own run reports nothing (no loops).
  Function("observer", {"sh", "-c", "cat"});
  CreateTrigger({{"name", "observe-later"},
                 {"topic", "_system.execution.finished"},
                 {"function", "observer"},
                 {"filter", {{"function", "later"}}}});
  auto r = daemon_->Post("/v1/functions/later/invoke?async=1", json{{"args", {"a", "b"}}, {"stdin", "in"}}.dump());
  ASSERT_EQ(r.status, 202) << r.body;
  int64_t id = r.json()["delivery_id"];
  EXPECT_EQ(r.json()["state"], "pending");
  json d = WaitDelivery(id, "succeeded");
  ASSERT_EQ(d["state"], "succeeded") << d.dump();
  EXPECT_EQ(d["trigger_id"], nullptr);
  EXPECT_EQ(Execution(d, 0)["stdout"], "in args=a b\n");
  std::string later_execution = d["execution_ids"][0];
  json observed;
  auto deadline = Clock::now() + std::chrono::seconds(120);
  while (Clock::now() < deadline && observed.is_null()) {
    json list = daemon_->Get("/v1/deliveries?function=observer").json()["deliveries"];
    if (!list.empty()) observed = WaitDelivery(list[0]["delivery_id"], "succeeded");
    if (observed.is_null()) std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  ASSERT_EQ(observed["state"], "succeeded") << observed.dump();
  json seen = json::parse(Execution(observed, 0)["stdout"].get<std::string>(), nullptr, false);
  EXPECT_EQ(seen["execution_id"], later_execution);
  EXPECT_EQ(seen["status"], "succeeded");
  json finished_events = daemon_->Get("/v1/events?topic=_system.execution.finished&limit=1000").json()["events"];
  for (const auto& e : finished_events) EXPECT_NE(e["payload"]["function"], "observer") << "a lifecycle loop";

  EXPECT_EQ(daemon_->Post("/v1/functions/nope/invoke?async=1", "").status, 404);
  auto bad = daemon_->Post("/v1/functions/later/invoke?async=maybe", "");
  EXPECT_EQ(bad.status, 400);
  EXPECT_EQ(bad.json()["error"]["field"], "async");
  std::string other = daemon_->CreateToken("async-other");
  EXPECT_EQ(daemon_->CallAs(other, "GET", "/v1/deliveries/" + std::to_string(id)).status, 404);
  EXPECT_EQ(daemon_->CallAs(other, "POST", "/v1/functions/later/invoke?async=1", "").status, 404);
}

TEST_F(EventsTest, ExecAndForkProcessesPublishLifecycleEvents) {
  // exec: a parent that lives a few seconds, then a fork of it while it runs
  // (the child runs the same command from a fresh VM); a failing exec.
  auto parent = daemon_->Post("/v1/procs", json{{"name", "lc-parent"}, {"image", image_},
                                                {"command", {"sh", "-c", "sleep 4; echo parent-done"}}}.dump());
  ASSERT_EQ(parent.status, 201) << parent.body;
  const int64_t ppid = parent.json()["pid"];
  const std::string parent_id = parent.json()["execution_id"];
  auto child = daemon_->Post("/v1/procs/" + std::to_string(ppid) + "/fork", json{{"name", "lc-child"}}.dump());
  ASSERT_EQ(child.status, 201) << child.body;
  const std::string child_id = child.json()["execution_id"];
  auto failing = daemon_->Post("/v1/procs", json{{"name", "lc-fail"}, {"image", image_},
                                                 {"command", {"sh", "-c", "exit 3"}}}.dump());
  ASSERT_EQ(failing.status, 201) << failing.body;
  const std::string failing_id = failing.json()["execution_id"];

  // Each ends on its lifecycle topic with its pid and status.
  auto find = [](const std::string& topic, const std::string& id) -> json {
    json events = daemon_->Get("/v1/events?topic=" + topic + "&limit=1000").json()["events"];
    for (const auto& e : events) {
      if (e["payload"].value("execution_id", "") == id) return e["payload"];
    }
    return nullptr;
  };
  json seen_parent, seen_child, seen_failing;
  auto deadline = Clock::now() + std::chrono::seconds(180);
  while (Clock::now() < deadline && (seen_parent.is_null() || seen_child.is_null() || seen_failing.is_null())) {
    if (seen_parent.is_null()) seen_parent = find("_system.execution.finished", parent_id);
    if (seen_child.is_null()) seen_child = find("_system.execution.finished", child_id);
    if (seen_failing.is_null()) seen_failing = find("_system.execution.failed", failing_id);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  ASSERT_FALSE(seen_parent.is_null()) << daemon_->Get("/v1/procs/" + std::to_string(ppid)).body;
  EXPECT_EQ(seen_parent["status"], "succeeded");
  EXPECT_EQ(seen_parent["pid"], ppid);
  EXPECT_EQ(seen_parent["exit_code"], 0);
  ASSERT_FALSE(seen_child.is_null()) << daemon_->Get("/v1/executions/" + child_id).body;
  EXPECT_EQ(seen_child["status"], "succeeded");
  EXPECT_EQ(seen_child["pid"], child.json()["pid"]);
  ASSERT_FALSE(seen_failing.is_null()) << daemon_->Get("/v1/executions/" + failing_id).body;
  EXPECT_EQ(seen_failing["status"], "failed");
  EXPECT_EQ(seen_failing["exit_code"], 3);
  // Exactly once each, and on one topic only.
  EXPECT_TRUE(find("_system.execution.failed", parent_id).is_null());
  EXPECT_TRUE(find("_system.execution.finished", failing_id).is_null());
}

TEST_F(EventsTest, BadInputsAreRefusedNamingTheField) {
  auto field = [](const HttpResult& r) { return r.json()["error"].value("field", std::string()); };
  Function("crud-fn", {"/bin/true"});
  auto r = daemon_->Post("/v1/events/_system.fake", "{}");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(field(r), "topic");
  r = daemon_->Post("/v1/events/big", std::string(5000, 'x'));
  EXPECT_EQ(r.status, 413) << r.body;
  EXPECT_EQ(field(r), "payload");
  r = daemon_->Post("/v1/triggers", json{{"name", "t"}, {"topic", "x"}, {"function", "crud-fn"}, {"filter", "x"}}.dump());
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(field(r), "filter");
  r = daemon_->Post("/v1/triggers", json{{"name", "t"}, {"topic", "x"}, {"function", "no-such-fn"}}.dump());
  EXPECT_EQ(r.status, 422);
  EXPECT_EQ(field(r), "function");
  r = daemon_->Post("/v1/triggers", json{{"name", "t"}, {"topic", "x"}, {"function", "crud-fn"}, {"max_attempts", 0}}.dump());
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(field(r), "max_attempts");
  r = daemon_->Post("/v1/triggers", json{{"name", "t"}, {"topic", "x"}, {"function", "crud-fn"}, {"colour", 1}}.dump());
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(field(r), "colour");
  r = daemon_->Post("/v1/cron-triggers", json{{"name", "c"}, {"schedule", "61 * * * *"}, {"function", "crud-fn"}}.dump());
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(field(r), "schedule");
  r = daemon_->Get("/v1/deliveries?state=bogus");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(field(r), "state");
  r = daemon_->Get("/v1/events/abc");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(field(r), "id");
  r = daemon_->Post("/v1/webhooks", json{{"name", "short"}, {"topic", "x"}, {"secret", "tiny"}}.dump());
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(field(r), "secret");
  EXPECT_EQ(daemon_->Get("/v1/triggers/trg-0000000000000000").status, 404);
  EXPECT_EQ(daemon_->Get("/v1/deliveries/999999").status, 404);

  // Triggers: update and disable, then delete.
  auto created = daemon_->Post("/v1/triggers", json{{"name", "crud"}, {"topic", "crud"}, {"function", "crud-fn"}}.dump());
  ASSERT_EQ(created.status, 201) << created.body;
  std::string id = created.json()["id"];
  auto updated = daemon_->Call("PUT", "/v1/triggers/" + id, json{{"enabled", false}, {"max_attempts", 5}}.dump());
  ASSERT_EQ(updated.status, 200) << updated.body;
  EXPECT_EQ(updated.json()["enabled"], false);
  EXPECT_EQ(updated.json()["max_attempts"], 5);
  EXPECT_EQ(updated.json()["topic"], "crud");
  int64_t ev = Publish("crud", "{}");
  EXPECT_TRUE(DeliveriesOf(ev).empty()) << "a disabled trigger must not fire";
  std::string other = daemon_->CreateToken("crud-other");
  EXPECT_EQ(daemon_->CallAs(other, "GET", "/v1/triggers/" + id).status, 404);
  EXPECT_EQ(daemon_->CallAs(other, "DELETE", "/v1/triggers/" + id).status, 404);
  EXPECT_EQ(daemon_->Call("DELETE", "/v1/triggers/" + id).status, 200);
  EXPECT_EQ(daemon_->Get("/v1/triggers/" + id).status, 404);
}

// kill -9 in the middle of a publish storm: every event berthd answered 202
// for is there after the restart, with its delivery. No VMs run: the
// dispatcher is off (--dispatch-workers 0), the deliveries stay pending.
TEST(EventsCrashTest, NoAcknowledgedEventIsLostToKillDashNine) {
  BerthdProcess daemon({"--dispatch-workers", "0"});
  ASSERT_TRUE(daemon.running()) << daemon.log();
  std::string image = daemon.UploadBusybox();
  ASSERT_EQ(daemon.CreateFunction("cheap", image, {{"entrypoint", {"/bin/true"}}}).status, 201);
  ASSERT_EQ(daemon.Post("/v1/triggers", json{{"name", "storm"}, {"topic", "storm"}, {"function", "cheap"}}.dump()).status,
            201);

  constexpr int kThreads = 16, kTotal = 3000, kKillAfter = 1500;
  std::mutex mu;
  std::vector<int64_t> acked;
  std::atomic<int> next{0};
  std::vector<std::thread> threads;
  const std::string url = daemon.base_url() + "/v1/events/storm";
  const std::string token = daemon.admin_token();
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = next++; i < kTotal; i = next++) {
        auto r = HttpCall("POST", url, json{{"i", i}}.dump(), "application/json", token);
        if (r.status != 202) return;  // berthd is gone
        std::lock_guard<std::mutex> lk(mu);
        acked.push_back(r.json()["event_id"].get<int64_t>());
      }
    });
  }
  auto deadline = Clock::now() + std::chrono::seconds(120);
  while (Clock::now() < deadline) {
    {
      std::lock_guard<std::mutex> lk(mu);
      if (acked.size() >= kKillAfter) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  daemon.Kill();
  for (auto& t : threads) t.join();
  ASSERT_GE(acked.size(), size_t{kKillAfter});
  EXPECT_LT(acked.size(), size_t{kTotal}) << "the kill came after the storm, not in it";

  ASSERT_TRUE(daemon.Start()) << daemon.log();
  std::set<int64_t> events, delivered;
  for (int64_t after = 0;;) {
    auto page = daemon.Get("/v1/events?topic=storm&limit=1000&after_id=" + std::to_string(after));
    ASSERT_EQ(page.status, 200) << page.body;
    auto list = page.json()["events"];
    if (list.empty()) break;
    for (const auto& e : list) events.insert(e["event_id"].get<int64_t>());
    after = list.back()["event_id"];
  }
  std::map<int64_t, int> per_event;
  for (int64_t before = 0;;) {
    auto page = daemon.Get("/v1/deliveries?function=cheap&limit=1000&before_id=" + std::to_string(before));
    ASSERT_EQ(page.status, 200) << page.body;
    auto list = page.json()["deliveries"];
    if (list.empty()) break;
    for (const auto& d : list) {
      ++per_event[d["event_id"].get<int64_t>()];
      EXPECT_EQ(d["state"], "pending");
    }
    before = list.back()["delivery_id"];
  }
  std::cout << "attempted " << std::min(next.load(), kTotal) << ", acknowledged " << acked.size() << ", committed "
            << events.size() << ", with deliveries " << per_event.size() << "\n";
  size_t lost_events = 0, lost_deliveries = 0;
  for (int64_t id : acked) {
    if (!events.count(id)) ++lost_events;
    if (per_event[id] != 1) ++lost_deliveries;
  }
  EXPECT_EQ(lost_events, 0u) << "of " << acked.size() << " acknowledged events";
  EXPECT_EQ(lost_deliveries, 0u) << "acknowledged events without exactly one delivery";
  // Committed but unacknowledged events (the kill cut their answer) may exist; each has its delivery too.
  EXPECT_GE(events.size(), acked.size());
  for (int64_t id : events) EXPECT_EQ(per_event[id], 1) << "event " << id;
}

// A lifecycle event lost to a crash: the execution's end is durable in
// berth.db, but its detached event had not reached events.db when berthd was
// killed (simulated by removing the committed event while berthd is down; the
// real window is one group commit, too short to hit on purpose). The next
// start publishes it, and the other execution's event is not published twice.
TEST(EventsCrashTest, LifecycleEventsLostInACrashArePublishedOnceAtRestart) {
  BerthdProcess daemon({"--dispatch-workers", "0"});
  ASSERT_TRUE(daemon.running()) << daemon.log();
  std::string image = daemon.UploadBusybox();
  ASSERT_EQ(daemon.CreateFunction("life", image, {{"entrypoint", {"/bin/true"}}}).status, 201);
  std::vector<std::string> ids;
  for (int i = 0; i < 2; ++i) {
    auto r = daemon.Post("/v1/functions/life/invoke", "{}");
    ASSERT_EQ(r.status, 200) << r.body;
    ids.push_back(r.json()["execution_id"]);
  }
  auto count = [&](const std::string& id) {
    int n = 0;
    for (const char* topic : {"_system.execution.finished", "_system.execution.failed"}) {
      json events = daemon.Get(std::string("/v1/events?topic=") + topic + "&limit=1000").json()["events"];
      for (const auto& e : events) {
        if (e["payload"].value("execution_id", "") == id) ++n;
      }
    }
    return n;
  };
  for (int i = 0; i < 100 && (count(ids[0]) == 0 || count(ids[1]) == 0); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(count(ids[0]), 1) << daemon.Get("/v1/events?limit=1000").body;
  ASSERT_EQ(count(ids[1]), 1);

  daemon.Kill();
  int code = 0;
  std::string out = Shell("sqlite3 " + daemon.data_dir() + "/events.db \"DELETE FROM events WHERE idempotency_key = '" +
                              ids[1] + "'; DELETE FROM idempotency WHERE key = '" + ids[1] + "';\" 2>&1",
                          &code);
  ASSERT_EQ(code, 0) << out;

  ASSERT_TRUE(daemon.Start()) << daemon.log();
  for (int i = 0; i < 100 && count(ids[1]) == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(count(ids[1]), 1) << "the lost event is published again";
  EXPECT_EQ(count(ids[0]), 1) << "the committed event is not published twice";
  json all = daemon.Get("/v1/events?limit=1000").json()["events"];
  for (const auto& e : all) {
    if (e["payload"].value("execution_id", "") == ids[1]) {
      EXPECT_EQ(e["payload"]["function"], "life");
    }
  }
}

}  // namespace
}  // namespace berth::testing
