// EventLog: durable publish (also across an unclean exit), group commit with
// many threads, idempotency within and beyond the window, validation, trigger
// CRUD, filters and fan-out of deliveries in the event's transaction.
#include "events/event_log.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <set>
#include <thread>
#include <vector>

#include "events/filter.h"
#include "common/manual_clock_env.h"
#include "tests/support/temp_dir.h"

namespace berth::events {
namespace {

using ::berth::testing::TempDir;
using json = nlohmann::json;

constexpr int64_t kStart = 1'700'000'000'000;

Event Ev(const std::string& topic, const std::string& payload, const std::string& tenant = "t1") {
  Event e;
  e.tenant = tenant;
  e.topic = topic;
  e.content_type = "application/json";
  e.payload = payload;
  return e;
}

std::unique_ptr<EventLog> OpenLog(Env* env, const std::string& path, EventLogOptions opts = {}) {
  opts.db_path = path;
  auto log = EventLog::Open(env, opts);
  EXPECT_TRUE(log.ok()) << log.status().ToString();
  return log.ok() ? std::move(log).value() : nullptr;
}

Trigger MakeTrigger(const std::string& name, const std::string& topic, const std::string& function,
                    json filter = json::object(), const std::string& tenant = "t1") {
  Trigger t;
  t.tenant = tenant;
  t.name = name;
  t.topic = topic;
  t.function = function;
  t.filter = std::move(filter);
  return t;
}

std::vector<Delivery> DeliveriesOf(EventLog* log, int64_t event_id, const std::string& tenant = "t1") {
  DeliveryQuery q;
  q.tenant = tenant;
  auto all = log->ListDeliveries(q);
  EXPECT_TRUE(all.ok());
  std::vector<Delivery> out;
  for (auto& d : *all) {
    if (d.event_id == event_id) out.push_back(d);
  }
  return out;
}

TEST(EventLogTest, PublishStoresTheEventAndAssignsIncreasingIds) {
  TempDir dir;
  ManualClockEnv env(kStart);
  auto log = OpenLog(&env, dir.File("data/events.db"));
  ASSERT_TRUE(log);
  Event e = Ev("orders.created", R"({"id":1})");
  auto a = log->Publish(e);
  auto b = log->Publish(e);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_LT(a->event_id, b->event_id);
  EXPECT_FALSE(a->duplicate);
  auto got = log->GetEvent("t1", a->event_id);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->topic, "orders.created");
  EXPECT_EQ(got->payload, R"({"id":1})");
  EXPECT_EQ(got->content_type, "application/json");
  EXPECT_EQ(got->created_ms, kStart);
  EXPECT_EQ(log->GetEvent("t2", a->event_id).status().code(), Code::kNotFound);  // other tenant
  auto listed = log->ListEvents("t1", "orders.created", 0, 10);
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->size(), 2u);
  auto after = log->ListEvents("t1", "", a->event_id, 10);
  ASSERT_TRUE(after.ok());
  ASSERT_EQ(after->size(), 1u);
  EXPECT_EQ(after->front().id, b->event_id);
}

TEST(EventLogTest, DetachedSystemEventsCommitBeforeAnythingSubmittedLater) {
  TempDir dir;
  ManualClockEnv env(kStart);
  auto log = OpenLog(&env, dir.File("data/events.db"));
  ASSERT_TRUE(log);
  // Many detached events, then one publish that waits: once it returns, every
  // detached event before it is committed, in submission order.
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(log->PublishSystemDetached(Ev("_system.execution.finished", "{\"n\":" + std::to_string(i) + "}")).ok());
  }
  auto last = log->Publish(Ev("after", "{}"));
  ASSERT_TRUE(last.ok()) << last.status().ToString();
  auto listed = log->ListEvents("t1", "_system.execution.finished", 0, 1000);
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 50u);
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ((*listed)[i].payload, "{\"n\":" + std::to_string(i) + "}");
    EXPECT_LT((*listed)[i].id, last->event_id);
  }
  EXPECT_EQ(log->stats().detached_failed, 0u);
  // Validation still answers at once.
  EXPECT_EQ(log->PublishSystemDetached(Ev("bad topic!", "{}")).field(), "topic");
  EXPECT_EQ(log->PublishSystemDetached(Ev("_system.x", "{}", "")).field(), "tenant");
}

TEST(EventLogTest, DetachedEventsQueuedBeforeShutdownAreCommitted) {
  TempDir dir;
  ManualClockEnv env(kStart);
  const std::string path = dir.File("data/events.db");
  {
    auto log = OpenLog(&env, path);
    ASSERT_TRUE(log);
    for (int i = 0; i < 20; ++i) ASSERT_TRUE(log->PublishSystemDetached(Ev("_system.execution.failed", "{}")).ok());
  }  // the writer drains its queue before it stops
  auto log = OpenLog(&env, path);
  ASSERT_TRUE(log);
  auto listed = log->ListEvents("t1", "_system.execution.failed", 0, 1000);
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->size(), 20u);
}

TEST(EventLogTest, BinaryPayloadsRoundTrip) {
  TempDir dir;
  auto log = OpenLog(Env::Default(), dir.File("events.db"));
  ASSERT_TRUE(log);
  Event e = Ev("blobs", ::berth::testing::RandomBytes(5000, 7));
  e.content_type = "application/octet-stream";
  auto r = log->Publish(e);
  ASSERT_TRUE(r.ok());
  auto got = log->GetEvent("t1", r->event_id);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->payload, e.payload);
}

TEST(EventLogTest, ValidatesTopicsTenantsAndPayloadSize) {
  TempDir dir;
  EventLogOptions opts;
  opts.max_payload_bytes = 100;
  auto log = OpenLog(Env::Default(), dir.File("events.db"), opts);
  ASSERT_TRUE(log);
  for (const char* bad : {"", "_timer.x", "-lead", "has space", "semi;colon", "ü"}) {
    auto r = log->Publish(Ev(bad, "{}"));
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << bad;
    EXPECT_EQ(r.status().field(), "topic") << bad;
  }
  EXPECT_FALSE(log->Publish(Ev(std::string(201, 'a'), "{}")).ok());
  EXPECT_TRUE(log->Publish(Ev("a.b-c_d:e/f", "{}")).ok());
  auto no_tenant = log->Publish(Ev("x", "{}", ""));
  EXPECT_EQ(no_tenant.status().field(), "tenant");
  EXPECT_TRUE(log->Publish(Ev("x", std::string(100, 'x'))).ok());
  auto big = log->Publish(Ev("x", std::string(101, 'x')));
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.status().code(), Code::kResourceExhausted);
  EXPECT_EQ(big.status().field(), "payload");
  Event keyed = Ev("x", "{}");
  keyed.idempotency_key = "";
  EXPECT_EQ(log->Publish(keyed).status().field(), "idempotency_key");
}

// An acknowledged event survives the process dying without any cleanup:
// the child is SIGKILLed right after its last Publish returned.
TEST(EventLogTest, AcknowledgedEventsSurviveAnUncleanExit) {
  TempDir dir;
  std::string path = dir.File("events.db");
  {
    // A trigger, so the child's events also get deliveries.
    auto log = OpenLog(Env::Default(), path);
    ASSERT_TRUE(log);
    ASSERT_TRUE(log->CreateTrigger(MakeTrigger("tr", "jobs", "worker")).ok());
  }
  int pipefd[2];
  ASSERT_EQ(::pipe(pipefd), 0);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::close(pipefd[0]);
    EventLogOptions opts;
    opts.db_path = path;
    auto log = EventLog::Open(Env::Default(), opts);
    if (!log.ok()) ::_exit(2);
    for (int i = 0; i < 40; ++i) {
      auto r = (*log)->Publish(Ev("jobs", json{{"n", i}}.dump()));
      if (!r.ok()) ::_exit(3);
      int64_t id = r->event_id;
      if (::write(pipefd[1], &id, sizeof id) != sizeof id) ::_exit(4);
    }
    ::kill(::getpid(), SIGKILL);
    ::_exit(5);
  }
  ::close(pipefd[1]);
  std::vector<int64_t> acked;
  int64_t id;
  while (::read(pipefd[0], &id, sizeof id) == sizeof id) acked.push_back(id);
  ::close(pipefd[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status)) << "child exited with " << WEXITSTATUS(status);
  ASSERT_EQ(acked.size(), 40u);

  auto log = OpenLog(Env::Default(), path);
  ASSERT_TRUE(log);
  for (size_t i = 0; i < acked.size(); ++i) {
    auto e = log->GetEvent("t1", acked[i]);
    ASSERT_TRUE(e.ok()) << "event " << acked[i] << " lost";
    EXPECT_EQ(e->payload, (json{{"n", i}}.dump()));
    EXPECT_EQ(DeliveriesOf(log.get(), acked[i]).size(), 1u) << "delivery of event " << acked[i] << " lost";
  }
}

TEST(EventLogTest, ManyConcurrentPublishersShareCommits) {
  TempDir dir;
  auto log = OpenLog(Env::Default(), dir.File("events.db"));
  ASSERT_TRUE(log);
  constexpr int kThreads = 32, kEach = 40;
  std::vector<std::vector<int64_t>> ids(kThreads);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        auto r = log->Publish(Ev("load", json{{"t", t}, {"i", i}}.dump()));
        if (!r.ok()) {
          ++failures;
          continue;
        }
        ids[t].push_back(r->event_id);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  std::set<int64_t> unique;
  for (auto& v : ids) {
    // Each publisher's own events are committed in its order.
    for (size_t i = 1; i < v.size(); ++i) EXPECT_LT(v[i - 1], v[i]);
    unique.insert(v.begin(), v.end());
  }
  EXPECT_EQ(unique.size(), size_t{kThreads * kEach});
  auto stats = log->stats();
  EXPECT_EQ(stats.write_items, uint64_t{kThreads * kEach});
  EXPECT_LE(stats.write_batches, stats.write_items);
  std::printf("group commit: %llu events in %llu transactions\n",
              static_cast<unsigned long long>(stats.write_items),
              static_cast<unsigned long long>(stats.write_batches));
  auto listed = log->ListEvents("t1", "load", 0, 1000);
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->size(), 1000u);  // the page limit
}

TEST(EventLogTest, IdempotencyKeyWithinAndBeyondTheWindow) {
  TempDir dir;
  ManualClockEnv env(kStart);
  EventLogOptions opts;
  opts.idempotency_window_ms = 60'000;
  auto log = OpenLog(&env, dir.File("events.db"), opts);
  ASSERT_TRUE(log);
  ASSERT_TRUE(log->CreateTrigger(MakeTrigger("tr", "pay", "charge")).ok());
  Event e = Ev("pay", R"({"amount":5})");
  e.idempotency_key = "k1";
  auto first = log->Publish(e);
  ASSERT_TRUE(first.ok());
  EXPECT_FALSE(first->duplicate);

  env.AdvanceMs(59'999);
  auto again = log->Publish(e);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->duplicate);
  EXPECT_EQ(again->event_id, first->event_id);
  // A duplicate creates no second delivery.
  DeliveryQuery q;
  q.tenant = "t1";
  EXPECT_EQ(log->ListDeliveries(q)->size(), 1u);

  // The key is scoped by tenant and topic.
  Event other_topic = e;
  other_topic.topic = "pay2";
  EXPECT_FALSE(log->Publish(other_topic)->duplicate);
  Event other_tenant = e;
  other_tenant.tenant = "t2";
  EXPECT_FALSE(log->Publish(other_tenant)->duplicate);

  // Beyond the window, the same key is a new event (and starts a new window).
  env.AdvanceMs(1);
  auto later = log->Publish(e);
  ASSERT_TRUE(later.ok());
  EXPECT_FALSE(later->duplicate);
  EXPECT_NE(later->event_id, first->event_id);
  auto dup_of_later = log->Publish(e);
  EXPECT_TRUE(dup_of_later->duplicate);
  EXPECT_EQ(dup_of_later->event_id, later->event_id);
  EXPECT_EQ(log->ListDeliveries(q)->size(), 2u);
}

// Publishers racing with one key (most land in the same group-commit batch):
// exactly one creates the event, all get its id.
TEST(EventLogTest, IdempotencyKeyDeduplicatesWithinOneBatch) {
  TempDir dir;
  auto log = OpenLog(Env::Default(), dir.File("events.db"));
  ASSERT_TRUE(log);
  for (int round = 0; round < 5; ++round) {
    constexpr int kThreads = 16;
    std::vector<PublishResult> results(kThreads);
    std::atomic<int> ready{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        Event e = Ev("race", "{}");
        e.idempotency_key = "key-" + std::to_string(round);
        ++ready;
        while (ready.load() < kThreads) std::this_thread::yield();
        auto r = log->Publish(e);
        ASSERT_TRUE(r.ok());
        results[t] = *r;
      });
    }
    for (auto& th : threads) th.join();
    int originals = 0;
    for (auto& r : results) {
      EXPECT_EQ(r.event_id, results[0].event_id);
      if (!r.duplicate) ++originals;
    }
    EXPECT_EQ(originals, 1);
  }
  auto listed = log->ListEvents("t1", "race", 0, 100);
  EXPECT_EQ(listed->size(), 5u);
}

TEST(EventLogTest, FilterMatching) {
  auto payload = ParsePayload(R"({"type":"order","total":10,"customer":{"tier":"gold","address":{"country":"NZ"}},
                                  "tags":["a"],"flag":true,"none":null})");
  ASSERT_TRUE(payload.has_value());
  EXPECT_TRUE(FilterMatches(json::object(), payload));
  EXPECT_TRUE(FilterMatches({{"type", "order"}}, payload));
  EXPECT_TRUE(FilterMatches({{"type", "order"}, {"total", 10}}, payload));
  EXPECT_TRUE(FilterMatches({{"total", 10.0}}, payload));  // JSON number equality
  EXPECT_FALSE(FilterMatches({{"total", "10"}}, payload));  // types differ
  EXPECT_FALSE(FilterMatches({{"type", "refund"}}, payload));
  EXPECT_FALSE(FilterMatches({{"type", "order"}, {"total", 11}}, payload));  // every key must match
  EXPECT_FALSE(FilterMatches({{"missing", 1}}, payload));
  EXPECT_TRUE(FilterMatches({{"customer.tier", "gold"}}, payload));
  EXPECT_TRUE(FilterMatches({{"customer.address.country", "NZ"}}, payload));
  EXPECT_FALSE(FilterMatches({{"customer.address.country", "AU"}}, payload));
  EXPECT_FALSE(FilterMatches({{"customer.tier.x", "gold"}}, payload));  // through a non-object
  EXPECT_TRUE(FilterMatches({{"customer", {{"tier", "gold"}, {"address", {{"country", "NZ"}}}}}}, payload));
  EXPECT_TRUE(FilterMatches({{"tags", {"a"}}, {"flag", true}, {"none", nullptr}}, payload));
  // Non-JSON payloads match only the empty filter.
  auto text = ParsePayload("hello, not json");
  EXPECT_FALSE(text.has_value());
  EXPECT_TRUE(FilterMatches(json::object(), text));
  EXPECT_FALSE(FilterMatches({{"type", "order"}}, text));
  // A JSON payload that is not an object has no fields.
  EXPECT_FALSE(FilterMatches({{"type", "order"}}, ParsePayload("[1,2]")));

  EXPECT_TRUE(ValidateFilter(json::object()).ok());
  EXPECT_TRUE(ValidateFilter({{"a.b", 1}}).ok());
  for (const json& bad : {json::array(), json("x"), json{{"", 1}}, json{{"a..b", 1}}, json{{".a", 1}}}) {
    auto s = ValidateFilter(bad);
    EXPECT_EQ(s.code(), Code::kInvalidArgument) << bad.dump();
    EXPECT_EQ(s.field(), "filter");
  }
}

TEST(EventLogTest, FanOutCreatesOneDeliveryPerMatchingEnabledTrigger) {
  TempDir dir;
  ManualClockEnv env(kStart);
  auto log = OpenLog(&env, dir.File("events.db"));
  ASSERT_TRUE(log);
  auto a = log->CreateTrigger(MakeTrigger("to-a", "orders", "fn-a"));
  auto b = log->CreateTrigger(MakeTrigger("to-b", "orders", "fn-b", {{"customer.tier", "gold"}}));
  Trigger disabled = MakeTrigger("off", "orders", "fn-off");
  disabled.enabled = false;
  ASSERT_TRUE(a.ok() && b.ok() && log->CreateTrigger(disabled).ok());
  ASSERT_TRUE(log->CreateTrigger(MakeTrigger("elsewhere", "refunds", "fn-r")).ok());
  ASSERT_TRUE(log->CreateTrigger(MakeTrigger("other-tenant", "orders", "fn-x", json::object(), "t2")).ok());

  auto gold = log->Publish(Ev("orders", R"({"customer":{"tier":"gold"}})"));
  ASSERT_TRUE(gold.ok());
  auto ds = DeliveriesOf(log.get(), gold->event_id);
  ASSERT_EQ(ds.size(), 2u);
  std::set<std::string> fns;
  for (auto& d : ds) {
    fns.insert(d.function);
    EXPECT_EQ(d.state, DeliveryState::kPending);
    EXPECT_EQ(d.attempts, 0);
    EXPECT_EQ(d.next_attempt_ms, kStart);
    EXPECT_EQ(d.tenant, "t1");
  }
  EXPECT_EQ(fns, (std::set<std::string>{"fn-a", "fn-b"}));

  auto plain = log->Publish(Ev("orders", R"({"customer":{"tier":"silver"}})"));
  ASSERT_EQ(DeliveriesOf(log.get(), plain->event_id).size(), 1u);
  EXPECT_EQ(DeliveriesOf(log.get(), plain->event_id)[0].function, "fn-a");
  Event text = Ev("orders", "not json");
  text.content_type = "text/plain";
  auto t = log->Publish(text);
  ASSERT_EQ(DeliveriesOf(log.get(), t->event_id).size(), 1u);
  EXPECT_TRUE(DeliveriesOf(log.get(), t->event_id, "t2").empty());
  auto none = log->Publish(Ev("nobody-listens", "{}"));
  EXPECT_TRUE(DeliveriesOf(log.get(), none->event_id).empty());

  // Disabling, then deleting, a trigger takes effect for later events.
  Trigger off = *a;
  off.enabled = false;
  ASSERT_TRUE(log->UpdateTrigger(off).ok());
  auto after_disable = log->Publish(Ev("orders", R"({"customer":{"tier":"gold"}})"));
  ASSERT_EQ(DeliveriesOf(log.get(), after_disable->event_id).size(), 1u);
  ASSERT_TRUE(log->DeleteTrigger("t1", b->id).ok());
  auto after_delete = log->Publish(Ev("orders", R"({"customer":{"tier":"gold"}})"));
  EXPECT_TRUE(DeliveriesOf(log.get(), after_delete->event_id).empty());

  // The cache is rebuilt from the table on open.
  log.reset();
  log = OpenLog(&env, dir.File("events.db"));
  auto reopened = log->Publish(Ev("orders", "{}"));
  ASSERT_TRUE(reopened.ok());
  EXPECT_TRUE(DeliveriesOf(log.get(), reopened->event_id).empty());  // a off, b gone, "off" off
  auto refunds = log->Publish(Ev("refunds", "{}"));
  EXPECT_EQ(DeliveriesOf(log.get(), refunds->event_id).size(), 1u);
}

TEST(EventLogTest, TriggerCrudAndValidation) {
  TempDir dir;
  auto log = OpenLog(Env::Default(), dir.File("events.db"));
  ASSERT_TRUE(log);
  Trigger spec = MakeTrigger("t", "orders", "fn", {{"a", 1}});
  spec.retry.max_attempts = 5;
  spec.retry.dead_letter_topic = "failed.orders";
  auto created = log->CreateTrigger(spec);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  EXPECT_EQ(created->id.rfind("trg-", 0), 0u);
  EXPECT_EQ(log->CreateTrigger(spec).status().code(), Code::kAlreadyExists);
  auto got = log->GetTrigger("t1", created->id);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->filter, (json{{"a", 1}}));
  EXPECT_EQ(got->retry.max_attempts, 5);
  EXPECT_EQ(got->retry.dead_letter_topic, "failed.orders");
  EXPECT_EQ(log->GetTrigger("t2", created->id).status().code(), Code::kNotFound);
  EXPECT_EQ(log->ListTriggers("t1")->size(), 1u);
  EXPECT_TRUE(log->ListTriggers("t2")->empty());
  Trigger upd = *got;
  upd.topic = "orders.v2";
  upd.filter = json::object();
  ASSERT_TRUE(log->UpdateTrigger(upd).ok());
  EXPECT_EQ(log->GetTrigger("t1", created->id)->topic, "orders.v2");
  upd.tenant = "t2";
  EXPECT_EQ(log->UpdateTrigger(upd).status().code(), Code::kNotFound);
  EXPECT_EQ(log->DeleteTrigger("t2", created->id).code(), Code::kNotFound);
  EXPECT_TRUE(log->DeleteTrigger("t1", created->id).ok());
  EXPECT_EQ(log->DeleteTrigger("t1", created->id).code(), Code::kNotFound);

  struct Case {
    std::function<void(Trigger&)> mutate;
    std::string field;
  };
  std::vector<Case> cases = {
      {[](Trigger& t) { t.name = ""; }, "name"},
      {[](Trigger& t) { t.name = "bad name"; }, "name"},
      {[](Trigger& t) { t.topic = "bad topic"; }, "topic"},
      {[](Trigger& t) { t.function = ""; }, "function"},
      {[](Trigger& t) { t.filter = json::array(); }, "filter"},
      {[](Trigger& t) { t.retry.max_attempts = 0; }, "max_attempts"},
      {[](Trigger& t) { t.retry.backoff_initial_ms = 0; }, "backoff_initial_ms"},
      {[](Trigger& t) { t.retry.backoff_max_ms = 1; }, "backoff_max_ms"},
      {[](Trigger& t) { t.retry.max_event_age_ms = -1; }, "max_event_age_ms"},
      {[](Trigger& t) { t.retry.dead_letter_topic = "no spaces"; }, "dead_letter_topic"},
      {[](Trigger& t) { t.tenant = ""; }, "tenant"},
  };
  for (auto& c : cases) {
    Trigger t = MakeTrigger("ok", "orders", "fn");
    c.mutate(t);
    auto r = log->CreateTrigger(t);
    ASSERT_FALSE(r.ok()) << c.field;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << c.field;
    EXPECT_EQ(r.status().field(), c.field);
  }
  // Reserved topics are allowed for triggers (dead letters, timers).
  EXPECT_TRUE(log->CreateTrigger(MakeTrigger("dl", "_dead.fn", "janitor")).ok());
}

}  // namespace
}  // namespace berth::events
