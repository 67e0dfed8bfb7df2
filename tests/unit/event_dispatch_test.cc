// Dispatcher and cron: retries with backoff on a fake clock, dead letters and
// re-drive, max event age, concurrency limits, recovery of deliveries a crash
// left running, and cron triggers firing once per slot across a restart.
#include "events/dispatcher.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "events/cron_ticker.h"
#include "common/manual_clock_env.h"
#include "tests/support/temp_dir.h"

namespace berth::events {
namespace {

using ::berth::testing::TempDir;
using json = nlohmann::json;

constexpr int64_t kStart = 1'700'000'000'000;  // 2023-11-14 22:13:20 UTC

std::unique_ptr<EventLog> OpenLog(Env* env, const std::string& path) {
  EventLogOptions opts;
  opts.db_path = path;
  auto log = EventLog::Open(env, opts);
  EXPECT_TRUE(log.ok()) << log.status().ToString();
  return log.ok() ? std::move(log).value() : nullptr;
}

// Fails the first `fail_first` attempts of each function, then succeeds.
class ScriptedRunner : public FunctionRunner {
 public:
  Result<RunOutcome> Run(const Delivery& d, const Event& e) override {
    std::lock_guard<std::mutex> lk(mu_);
    int n = ++calls_[d.function];
    payloads_.push_back(e.payload);
    std::string exec = "exec-" + d.function + "-" + std::to_string(n);
    if (n <= fail_first_[d.function]) return RunOutcome::Failed("boom " + std::to_string(n), exec);
    return RunOutcome::Succeeded(exec);
  }
  void FailFirst(const std::string& fn, int n) {
    std::lock_guard<std::mutex> lk(mu_);
    fail_first_[fn] = n;
  }
  int Calls(const std::string& fn) {
    std::lock_guard<std::mutex> lk(mu_);
    return calls_[fn];
  }
  std::vector<std::string> payloads() {
    std::lock_guard<std::mutex> lk(mu_);
    return payloads_;
  }

 private:
  std::mutex mu_;
  std::map<std::string, int> calls_;
  std::map<std::string, int> fail_first_;
  std::vector<std::string> payloads_;
};

DispatcherOptions NoJitter() {
  DispatcherOptions o;
  o.jitter = 0;
  o.seed = 1;
  return o;
}

RetryPolicy Policy(int attempts, int64_t initial, int64_t max, int64_t max_age = 0) {
  RetryPolicy p;
  p.max_attempts = attempts;
  p.backoff_initial_ms = initial;
  p.backoff_max_ms = max;
  p.max_event_age_ms = max_age;
  return p;
}

TEST(EventDispatchTest, RetriesWithExponentialBackoffThenDeadLetters) {
  TempDir dir;
  ManualClockEnv env(kStart);
  auto log = OpenLog(&env, dir.File("events.db"));
  ASSERT_TRUE(log);
  ScriptedRunner runner;
  runner.FailFirst("fn", 100);
  Dispatcher dispatcher(log.get(), &runner, NoJitter());
  auto id = log->Enqueue("t1", "fn", R"({"job":7})", "application/json", Policy(4, 1000, 3000));
  ASSERT_TRUE(id.ok()) << id.status().ToString();

  // Attempt 1 now; then waits of 1000, 2000, 3000 (capped) before attempts 2..4.
  const int64_t waits[] = {1000, 2000, 3000};
  EXPECT_EQ(*dispatcher.RunDue(), 1);
  for (int64_t wait : waits) {
    auto d = log->GetDelivery("t1", *id);
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(d->state, DeliveryState::kPending);
    EXPECT_EQ(d->next_attempt_ms, env.NowUnixMs() + wait);
    env.AdvanceMs(wait - 1);
    EXPECT_EQ(*dispatcher.RunDue(), 0) << "ran before its backoff elapsed";
    env.AdvanceMs(1);
    EXPECT_EQ(*dispatcher.RunDue(), 1);
  }
  EXPECT_EQ(runner.Calls("fn"), 4);
  auto dead = log->GetDelivery("t1", *id);
  ASSERT_TRUE(dead.ok());
  EXPECT_EQ(dead->state, DeliveryState::kDead);
  EXPECT_EQ(dead->attempts, 4);
  EXPECT_EQ(dead->last_error, "boom 4");
  EXPECT_EQ(dead->execution_ids,
            (std::vector<std::string>{"exec-fn-1", "exec-fn-2", "exec-fn-3", "exec-fn-4"}));
  EXPECT_EQ(dead->finished_ms, kStart + 6000);
  EXPECT_TRUE(dead->trigger_id.empty());

  // The dead letter went to "_dead.fn" with the original event and the error.
  auto letters = log->ListEvents("t1", "_dead.fn", 0, 10);
  ASSERT_TRUE(letters.ok());
  ASSERT_EQ(letters->size(), 1u);
  EXPECT_EQ(letters->front().id, dead->dead_letter_event_id);
  auto body = json::parse(letters->front().payload);
  EXPECT_EQ(body["original_event_id"], dead->event_id);
  EXPECT_EQ(body["original_topic"], "_invoke.fn");
  EXPECT_EQ(body["payload"], (json{{"job", 7}}));
  EXPECT_EQ(body["last_error"], "boom 4");
  EXPECT_EQ(body["function"], "fn");
  EXPECT_EQ(body["attempts"], 4);

  auto listed = log->ListDeadLetters("t1", "fn");
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ(listed->front().id, *id);
  EXPECT_TRUE(log->ListDeadLetters("t1", "other")->empty());
  EXPECT_TRUE(log->ListDeadLetters("t2", "")->empty());
}

TEST(EventDispatchTest, JitterIsSeededAndShortensTheDelayOnly) {
  TempDir dir;
  auto log = OpenLog(Env::Default(), dir.File("events.db"));
  ASSERT_TRUE(log);
  ScriptedRunner runner;
  DispatcherOptions o;
  o.jitter = 0.5;
  o.seed = 42;
  Dispatcher a(log.get(), &runner, o), b(log.get(), &runner, o);
  RetryPolicy p = Policy(10, 100, 100'000);
  for (int attempts = 1; attempts <= 8; ++attempts) {
    int64_t full = 100LL << (attempts - 1);
    int64_t da = a.RetryDelayMs(attempts, p);
    EXPECT_EQ(da, b.RetryDelayMs(attempts, p));  // same seed, same delays
    EXPECT_LE(da, full);
    EXPECT_GE(da, full / 2);
  }
}

TEST(EventDispatchTest, DeadLetterFansOutAndRedriveRunsTheOriginalEventAgain) {
  TempDir dir;
  ManualClockEnv env(kStart);
  auto log = OpenLog(&env, dir.File("events.db"));
  ASSERT_TRUE(log);
  Trigger t;
  t.tenant = "t1";
  t.name = "charge";
  t.topic = "orders";
  t.function = "charger";
  t.retry = Policy(2, 500, 500);
  t.retry.dead_letter_topic = "orders.failed";
  auto trig = log->CreateTrigger(t);
  ASSERT_TRUE(trig.ok());
  Trigger janitor;
  janitor.tenant = "t1";
  janitor.name = "janitor";
  janitor.topic = "orders.failed";
  janitor.function = "janitor";
  ASSERT_TRUE(log->CreateTrigger(janitor).ok());

  ScriptedRunner runner;
  runner.FailFirst("charger", 2);
  Dispatcher dispatcher(log.get(), &runner, NoJitter());
  auto ev = log->Publish(Event{0, "t1", "orders", "text/plain", "\x01\x02 raw", std::nullopt, 0});
  ASSERT_TRUE(ev.ok());
  EXPECT_EQ(*dispatcher.RunDue(), 1);
  env.AdvanceMs(500);
  // Attempt 2 fails -> dead -> the dead letter's delivery to the janitor runs in the same pass.
  EXPECT_EQ(*dispatcher.RunDue(), 2);
  EXPECT_EQ(runner.Calls("janitor"), 1);
  auto dead = log->ListDeadLetters("t1", "charger");
  ASSERT_EQ(dead->size(), 1u);
  Delivery d = dead->front();
  EXPECT_EQ(d.trigger_id, trig->id);
  EXPECT_EQ(d.event_id, ev->event_id);
  auto letter = json::parse(runner.payloads().back());
  EXPECT_EQ(letter["original_event_id"], ev->event_id);
  EXPECT_EQ(letter["trigger_id"], trig->id);
  EXPECT_EQ(letter["payload_base64"], "AQIgcmF3");  // non-JSON bytes travel as base64
  EXPECT_EQ(letter["content_type"], "text/plain");

  env.AdvanceMs(10'000);
  auto redriven = log->Redrive("t1", d.id);
  ASSERT_TRUE(redriven.ok()) << redriven.status().ToString();
  EXPECT_EQ(log->Redrive("t1", d.id).status().code(), Code::kFailedPrecondition);  // once
  EXPECT_EQ(log->Redrive("t2", d.id).status().code(), Code::kNotFound);
  EXPECT_TRUE(log->ListDeadLetters("t1", "charger")->empty());
  auto fresh = log->GetDelivery("t1", *redriven);
  ASSERT_TRUE(fresh.ok());
  EXPECT_EQ(fresh->event_id, ev->event_id);
  EXPECT_EQ(fresh->function, "charger");
  EXPECT_EQ(fresh->redrive_of, d.id);
  EXPECT_EQ(fresh->attempts, 0);
  EXPECT_EQ(log->GetDelivery("t1", d.id)->redriven_by, *redriven);

  EXPECT_EQ(*dispatcher.RunDue(), 1);  // 3rd call of charger: succeeds
  auto done = log->GetDelivery("t1", *redriven);
  EXPECT_EQ(done->state, DeliveryState::kSucceeded);
  EXPECT_EQ(done->attempts, 1);
  EXPECT_EQ(done->execution_ids, std::vector<std::string>{"exec-charger-3"});
  EXPECT_EQ(runner.payloads()[3], "\x01\x02 raw");  // charger, charger, janitor, charger
  // A succeeded delivery cannot be re-driven.
  EXPECT_EQ(log->Redrive("t1", *redriven).status().code(), Code::kFailedPrecondition);
}

TEST(EventDispatchTest, MaxEventAgeEndsRetriesEarly) {
  TempDir dir;
  ManualClockEnv env(kStart);
  auto log = OpenLog(&env, dir.File("events.db"));
  ASSERT_TRUE(log);
  ScriptedRunner runner;
  runner.FailFirst("fn", 100);
  Dispatcher dispatcher(log.get(), &runner, NoJitter());
  auto id = log->Enqueue("t1", "fn", "{}", "application/json", Policy(10, 1000, 100'000, 2500));
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(*dispatcher.RunDue(), 1);  // fails at 0, retry at 1000 (age 1000 <= 2500)
  env.AdvanceMs(1000);
  EXPECT_EQ(*dispatcher.RunDue(), 1);  // fails at 1000, retry would be at 3000 > 2500: dead
  auto d = log->GetDelivery("t1", *id);
  EXPECT_EQ(d->state, DeliveryState::kDead);
  EXPECT_EQ(d->attempts, 2);
  EXPECT_NE(d->last_error.find("max_event_age_ms"), std::string::npos);

  // A delivery already too old when it comes due goes dead without running.
  auto old = log->Enqueue("t1", "old", "{}", "application/json", Policy(3, 10, 10, 100));
  env.AdvanceMs(101);
  EXPECT_EQ(*dispatcher.RunDue(), 1);
  EXPECT_EQ(runner.Calls("old"), 0);
  EXPECT_EQ(log->GetDelivery("t1", *old)->state, DeliveryState::kDead);
  EXPECT_EQ(log->ListEvents("t1", "_dead.old", 0, 10)->size(), 1u);
}

TEST(EventDispatchTest, RunnerErrorsCountAsFailedAttempts) {
  TempDir dir;
  ManualClockEnv env(kStart);
  auto log = OpenLog(&env, dir.File("events.db"));
  ASSERT_TRUE(log);
  struct ErrorRunner : FunctionRunner {
    Result<RunOutcome> Run(const Delivery&, const Event&) override { return Status::Unavailable("no node"); }
  } runner;
  Dispatcher dispatcher(log.get(), &runner, NoJitter());
  auto id = log->Enqueue("t1", "fn", "{}", "application/json", Policy(1, 10, 10));
  EXPECT_EQ(*dispatcher.RunDue(), 1);
  auto d = log->GetDelivery("t1", *id);
  EXPECT_EQ(d->state, DeliveryState::kDead);
  EXPECT_NE(d->last_error.find("no node"), std::string::npos);
}

// Workers run deliveries concurrently, never above the per-function and
// per-tenant limits.
TEST(EventDispatchTest, ConcurrencyLimitsAreRespected) {
  TempDir dir;
  auto log = OpenLog(Env::Default(), dir.File("events.db"));
  ASSERT_TRUE(log);
  class SlowRunner : public FunctionRunner {
   public:
    Result<RunOutcome> Run(const Delivery& d, const Event&) override {
      {
        std::lock_guard<std::mutex> lk(mu);
        int f = ++by_fn[d.tenant + "/" + d.function];
        int t = ++by_tenant[d.tenant];
        max_fn[d.tenant + "/" + d.function] = std::max(max_fn[d.tenant + "/" + d.function], f);
        max_tenant[d.tenant] = std::max(max_tenant[d.tenant], t);
        max_total = std::max(max_total, ++total);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(15));
      std::lock_guard<std::mutex> lk(mu);
      --by_fn[d.tenant + "/" + d.function];
      --by_tenant[d.tenant];
      --total;
      ++done;
      return RunOutcome::Succeeded();
    }
    std::mutex mu;
    std::map<std::string, int> by_fn, by_tenant, max_fn, max_tenant;
    int total = 0, max_total = 0;
    std::atomic<int> done{0};
  } runner;
  DispatcherOptions o;
  o.workers = 8;
  o.per_function_limit = 2;
  o.per_tenant_limit = 3;
  Dispatcher dispatcher(log.get(), &runner, o);
  dispatcher.Start();
  int total = 0;
  for (const auto& [tenant, fn, n] : std::vector<std::tuple<std::string, std::string, int>>{
           {"t1", "a", 12}, {"t1", "b", 12}, {"t2", "c", 12}, {"t2", "d", 12}}) {
    for (int i = 0; i < n; ++i, ++total) ASSERT_TRUE(log->Enqueue(tenant, fn, "{}").ok());
  }
  for (int i = 0; i < 2000 && runner.done.load() < total; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  dispatcher.Stop();
  ASSERT_EQ(runner.done.load(), total);
  for (auto& [fn, m] : runner.max_fn) EXPECT_LE(m, 2) << fn;
  for (auto& [tenant, m] : runner.max_tenant) EXPECT_LE(m, 3) << tenant;
  EXPECT_LE(runner.max_total, 6);
  std::printf("max concurrent: total %d, t1 %d, t2 %d\n", runner.max_total, runner.max_tenant["t1"],
              runner.max_tenant["t2"]);
  DeliveryQuery q;
  q.tenant = "t1";
  q.state = DeliveryState::kSucceeded;
  q.limit = 1000;
  EXPECT_EQ(log->ListDeliveries(q)->size(), 24u);
}

TEST(EventDispatchTest, WorkersPickUpPublishedEventsAndStopJoins) {
  TempDir dir;
  auto log = OpenLog(Env::Default(), dir.File("events.db"));
  ASSERT_TRUE(log);
  Trigger t;
  t.tenant = "t1";
  t.name = "a";
  t.topic = "jobs";
  t.function = "fa";
  ASSERT_TRUE(log->CreateTrigger(t).ok());
  t.name = "b";
  t.function = "fb";
  ASSERT_TRUE(log->CreateTrigger(t).ok());
  ScriptedRunner runner;
  DispatcherOptions o;
  o.poll_interval_ms = 10'000;  // wake-ups must come from the log, not polling
  Dispatcher dispatcher(log.get(), &runner, o);
  dispatcher.Start();
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(log->Publish(Event{0, "t1", "jobs", "", "{}", std::nullopt, 0}).ok());
  for (int i = 0; i < 1000 && runner.Calls("fa") + runner.Calls("fb") < 40; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  dispatcher.Stop();
  EXPECT_EQ(runner.Calls("fa"), 20);
  EXPECT_EQ(runner.Calls("fb"), 20);
}

// A delivery claimed (running) when the process died runs again after reopen.
TEST(EventDispatchTest, RunningDeliveriesGoBackToPendingAfterACrash) {
  TempDir dir;
  std::string path = dir.File("events.db");
  int64_t id = 0;
  {
    auto log = OpenLog(Env::Default(), path);
    ASSERT_TRUE(log);
    auto r = log->Enqueue("t1", "fn", R"({"x":1})");
    ASSERT_TRUE(r.ok());
    id = *r;
  }
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    EventLogOptions opts;
    opts.db_path = path;
    auto log = EventLog::Open(Env::Default(), opts);
    if (!log.ok()) ::_exit(2);
    auto claimed = (*log)->ClaimDue(Env::Default()->NowUnixMs(), 10, [](const Delivery&) { return true; });
    if (!claimed.ok() || claimed->size() != 1) ::_exit(3);
    ::kill(::getpid(), SIGKILL);  // dies mid-attempt
    ::_exit(4);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status)) << "child exited with " << WEXITSTATUS(status);

  auto log = OpenLog(Env::Default(), path);
  ASSERT_TRUE(log);
  auto d = log->GetDelivery("t1", id);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->state, DeliveryState::kPending);
  EXPECT_EQ(d->attempts, 1);  // the interrupted attempt counts
  EXPECT_NE(d->last_error.find("restart"), std::string::npos);
  ScriptedRunner runner;
  Dispatcher dispatcher(log.get(), &runner, NoJitter());
  EXPECT_EQ(*dispatcher.RunDue(), 1);
  EXPECT_EQ(log->GetDelivery("t1", id)->state, DeliveryState::kSucceeded);
  EXPECT_EQ(log->GetDelivery("t1", id)->attempts, 2);
}

// berthd stopping: an attempt whose runner gives up because of the stop
// (the manager detached its execution) is not recorded as failed: with one
// attempt allowed it would be dead, and the event lost. It stays claimed and
// runs again after the next start.
TEST(EventDispatchTest, AnAttemptCutShortByAStopRunsAgainAfterTheNextStart) {
  TempDir dir;
  std::string path = dir.File("events.db");
  auto log = OpenLog(Env::Default(), path);
  ASSERT_TRUE(log);
  auto id = log->Enqueue("t1", "fn", R"({"x":1})", "application/json", Policy(1, 100, 100));
  ASSERT_TRUE(id.ok());
  struct StoppingRunner : FunctionRunner {
    std::mutex mu;
    std::condition_variable cv;
    bool entered = false, release = false;
    Result<RunOutcome> Run(const Delivery&, const Event&) override {
      std::unique_lock lk(mu);
      entered = true;
      cv.notify_all();
      cv.wait(lk, [&] { return release; });
      return Status::Unavailable("berthd is stopping; execution e1 goes on");
    }
  } runner;
  Dispatcher dispatcher(log.get(), &runner, NoJitter());
  dispatcher.Start();
  {
    std::unique_lock lk(runner.mu);
    ASSERT_TRUE(runner.cv.wait_for(lk, std::chrono::seconds(10), [&] { return runner.entered; }));
  }
  dispatcher.BeginStop();
  {
    std::lock_guard lk(runner.mu);
    runner.release = true;
  }
  runner.cv.notify_all();
  dispatcher.Stop();
  EXPECT_EQ(log->GetDelivery("t1", *id)->state, DeliveryState::kRunning) << "not recorded as a failed attempt";
  log.reset();

  log = OpenLog(Env::Default(), path);
  ASSERT_TRUE(log);
  EXPECT_EQ(log->GetDelivery("t1", *id)->state, DeliveryState::kPending);
  ScriptedRunner again;
  Dispatcher next(log.get(), &again, NoJitter());
  EXPECT_EQ(*next.RunDue(), 1);
  EXPECT_EQ(log->GetDelivery("t1", *id)->state, DeliveryState::kSucceeded);
  EXPECT_EQ(again.Calls("fn"), 1);
}

TEST(EventDispatchTest, CronFiresOncePerSlotAcrossRestarts) {
  TempDir dir;
  std::string path = dir.File("events.db");
  // 2024-01-01 00:00:30 UTC.
  const int64_t t0 = 1'704'067'230'000;
  ManualClockEnv env(t0);
  std::string cron_id;
  {
    auto log = OpenLog(&env, path);
    ASSERT_TRUE(log);
    CronTrigger c;
    c.tenant = "t1";
    c.name = "every5";
    c.schedule = "*/5 * * * *";
    c.function = "tick";
    auto created = log->CreateCronTrigger(c);
    ASSERT_TRUE(created.ok()) << created.status().ToString();
    cron_id = created->id;
    CronTicker ticker(log.get());
    EXPECT_EQ(*ticker.Tick(), 0);  // 00:00 is before the trigger existed
    env.SetNowMs(t0 + 4 * 60'000 + 29'000);  // 00:04:59
    EXPECT_EQ(*ticker.Tick(), 0);
    env.AdvanceMs(1000);  // 00:05:00
    EXPECT_EQ(*ticker.Tick(), 1);
    EXPECT_EQ(*ticker.Tick(), 0);  // same slot
    EXPECT_EQ(*log->FireCron(cron_id, t0 - 30'000 + 5 * 60'000), false);  // direct re-fire refused
  }
  {
    // Restart within the same slot: no second event.
    auto log = OpenLog(&env, path);
    ASSERT_TRUE(log);
    CronTicker ticker(log.get());
    env.AdvanceMs(30'000);
    EXPECT_EQ(*ticker.Tick(), 0);
    EXPECT_EQ(log->GetCronTrigger("t1", cron_id)->last_fired_ms, t0 - 30'000 + 5 * 60'000);
    // Down for an hour: one catch-up event, for the latest slot (01:05).
    env.SetNowMs(t0 - 30'000 + 65 * 60'000 + 10'000);
    EXPECT_EQ(*ticker.Tick(), 1);
    EXPECT_EQ(*ticker.Tick(), 0);

    auto timers = log->ListEvents("t1", "_timer.every5", 0, 100);
    ASSERT_TRUE(timers.ok());
    ASSERT_EQ(timers->size(), 2u);
    EXPECT_EQ(json::parse((*timers)[0].payload)["scheduled_ms"], t0 - 30'000 + 5 * 60'000);
    EXPECT_EQ(json::parse((*timers)[1].payload)["scheduled_ms"], t0 - 30'000 + 65 * 60'000);
    EXPECT_EQ(json::parse((*timers)[1].payload)["cron_id"], cron_id);
    DeliveryQuery q;
    q.tenant = "t1";
    q.function = "tick";
    auto ds = log->ListDeliveries(q);
    ASSERT_EQ(ds->size(), 2u);
    EXPECT_EQ(ds->front().trigger_id, cron_id);
    ScriptedRunner runner;
    Dispatcher dispatcher(log.get(), &runner, NoJitter());
    EXPECT_EQ(*dispatcher.RunDue(), 2);
    EXPECT_EQ(runner.Calls("tick"), 2);

    // Disabled cron triggers do not fire.
    CronTrigger off = *log->GetCronTrigger("t1", cron_id);
    off.enabled = false;
    ASSERT_TRUE(log->UpdateCronTrigger(off).ok());
    env.AdvanceMs(10 * 60'000);
    EXPECT_EQ(*ticker.Tick(), 0);
  }
}

TEST(EventDispatchTest, ConcurrentFiresOfOneSlotPublishOnce) {
  TempDir dir;
  ManualClockEnv env(1'704'067'200'000);
  auto log = OpenLog(&env, dir.File("events.db"));
  ASSERT_TRUE(log);
  CronTrigger c;
  c.tenant = "t1";
  c.name = "hourly";
  c.schedule = "0 * * * *";
  c.function = "f";
  auto created = log->CreateCronTrigger(c);
  ASSERT_TRUE(created.ok());
  std::atomic<int> fired{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      if (*log->FireCron(created->id, 1'704'067'200'000 + 3'600'000)) ++fired;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(fired.load(), 1);
  EXPECT_EQ(log->ListEvents("t1", "_timer.hourly", 0, 10)->size(), 1u);
}

TEST(EventDispatchTest, CronTriggerValidationAndCrud) {
  TempDir dir;
  ManualClockEnv env(kStart);
  auto log = OpenLog(&env, dir.File("events.db"));
  ASSERT_TRUE(log);
  CronTrigger c;
  c.tenant = "t1";
  c.name = "nightly";
  c.schedule = "0 3 * * *";
  c.function = "backup";
  auto created = log->CreateCronTrigger(c);
  ASSERT_TRUE(created.ok());
  EXPECT_EQ(log->CreateCronTrigger(c).status().code(), Code::kAlreadyExists);
  EXPECT_EQ(log->ListCronTriggers("t1")->size(), 1u);
  EXPECT_TRUE(log->ListCronTriggers("t2")->empty());
  for (const char* bad : {"0 3 * *", "61 * * * *", "0 0 31 2 *"}) {
    CronTrigger b = c;
    b.name = "bad";
    b.schedule = bad;
    auto r = log->CreateCronTrigger(b);
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << bad;
    EXPECT_EQ(r.status().field(), "schedule") << bad;
  }
  EXPECT_EQ(log->DeleteCronTrigger("t2", created->id).code(), Code::kNotFound);
  EXPECT_TRUE(log->DeleteCronTrigger("t1", created->id).ok());
  EXPECT_FALSE(*log->FireCron(created->id, kStart + 3'600'000));  // gone: nothing fires
}

}  // namespace
}  // namespace berth::events
