// Lifecycle events are at-least-once: an execution end that is durable in the
// store but whose detached event never committed (a crash in the group
// commit's window) gets its event when the event engine starts again, and an
// end whose event did commit is not published twice, however old it is.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/manual_clock_env.h"
#include "events/event_log.h"
#include "manager/event_service.h"
#include "manager/store.h"
#include "tests/support/temp_dir.h"

namespace berth::manager {
namespace {

using ::berth::testing::TempDir;
using json = nlohmann::json;

constexpr int64_t kStart = 1'700'000'000'000;

class LifecycleReplayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    env_.SetNowMs(kStart);
    auto store = Store::Open(dir_.File("berth.db"));
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(store).value();
    Reopen();
  }

  // A "restart" of the event log: the old one finishes what it queued.
  void Reopen() {
    log_.reset();
    events::EventLogOptions opts;
    opts.db_path = dir_.File("events.db");
    auto log = events::EventLog::Open(&env_, opts);
    ASSERT_TRUE(log.ok()) << log.status().ToString();
    log_ = std::move(log).value();
  }

  // Records an ended execution in the store, as the executor does.
  ExecutionRecord End(const std::string& id, ExecState state, int64_t finished_ms, const std::string& tenant = "t1") {
    ExecutionRecord ex;
    ex.id = id;
    ex.function = "fn";
    ex.tenant = tenant;
    ex.image = "img";
    ex.state = state;
    auto pid = store_->NewPid();
    EXPECT_TRUE(pid.ok());
    ex.pid = *pid;
    ex.ppid = kInitPid;
    if (state == ExecState::kSucceeded || state == ExecState::kFailed) ex.exit_code = state == ExecState::kSucceeded ? 0 : 3;
    ex.created_ms = finished_ms - 10;
    ex.finished_ms = finished_ms;
    EXPECT_TRUE(store_->InsertExecution(ex).ok());
    return ex;
  }

  // What the listener does at an end (EventService::OnExecutionEnded).
  void PublishLive(const ExecutionRecord& ex) {
    auto ev = LifecycleEventOf(ex);
    ASSERT_TRUE(ev.has_value());
    ASSERT_TRUE(log_->PublishSystemOnceDetached(*ev).ok());
  }

  size_t Replay() {
    EndedExecutionsFn ended = [this](int64_t after_ms, const std::string& after_id, size_t limit) {
      return store_->ListEndedExecutionsAfter(after_ms, after_id, limit);
    };
    auto n = RepublishLifecycleEvents(*log_, ended, env_.NowUnixMs());
    EXPECT_TRUE(n.ok()) << n.status().ToString();
    Reopen();  // commits what was queued
    return n.ok() ? *n : 0;
  }

  // Execution ids of the lifecycle events on `topic`, in order.
  std::vector<std::string> Ids(const std::string& topic, const std::string& tenant = "t1") {
    auto evs = log_->ListEvents(tenant, topic, 0, 1000);
    EXPECT_TRUE(evs.ok()) << evs.status().ToString();
    std::vector<std::string> out;
    for (const auto& e : *evs) {
      json p = json::parse(e.payload);
      EXPECT_EQ(e.idempotency_key.value_or(""), p["execution_id"]);
      out.push_back(p["execution_id"]);
    }
    return out;
  }

  ManualClockEnv env_;
  TempDir dir_{"berth-lifecycle"};
  std::unique_ptr<Store> store_;
  std::unique_ptr<events::EventLog> log_;
};

TEST_F(LifecycleReplayTest, AnEndWhoseEventNeverCommittedIsPublishedOnceAtRestart) {
  // A ended and its event committed; B ended, but berthd died before its
  // detached event was committed (the store has the end, the log nothing).
  ExecutionRecord a = End("aaaa", ExecState::kSucceeded, kStart);
  PublishLive(a);
  env_.AdvanceMs(5);
  Reopen();
  End("bbbb", ExecState::kFailed, kStart + 3);
  ASSERT_EQ(Ids(kExecutionFinishedTopic), std::vector<std::string>{"aaaa"});
  ASSERT_TRUE(Ids(kExecutionFailedTopic).empty());

  // The restart publishes B's event, and A's only once.
  env_.AdvanceMs(60'000);
  EXPECT_EQ(Replay(), 2u);
  EXPECT_EQ(Ids(kExecutionFinishedTopic), std::vector<std::string>{"aaaa"});
  EXPECT_EQ(Ids(kExecutionFailedTopic), std::vector<std::string>{"bbbb"});
  auto failed = log_->ListEvents("t1", kExecutionFailedTopic, 0, 10);
  ASSERT_TRUE(failed.ok());
  json p = json::parse(failed->at(0).payload);
  EXPECT_EQ(p["status"], "failed");
  EXPECT_EQ(p["exit_code"], 3);
  EXPECT_EQ(p["function"], "fn");

  // Another restart changes nothing.
  env_.AdvanceMs(1000);
  Replay();
  EXPECT_EQ(Ids(kExecutionFinishedTopic), std::vector<std::string>{"aaaa"});
  EXPECT_EQ(Ids(kExecutionFailedTopic), std::vector<std::string>{"bbbb"});
}

TEST_F(LifecycleReplayTest, DedupeHoldsBeyondTheIdempotencyWindow) {
  // berthd crashed and stayed down for two days (beyond the 24 h window):
  // A's committed event still dedupes, B's missing one is still found.
  ExecutionRecord a = End("aaaa", ExecState::kSucceeded, kStart);
  PublishLive(a);
  Reopen();
  End("bbbb", ExecState::kSucceeded, kStart + 2);
  env_.AdvanceMs(int64_t{48} * 3600'000);
  EXPECT_EQ(Replay(), 2u);
  EXPECT_EQ(Ids(kExecutionFinishedTopic), (std::vector<std::string>{"aaaa", "bbbb"}));
}

TEST_F(LifecycleReplayTest, RacingPublishesOfOneEndStoreOneEvent) {
  // The listener and the restart's replay may both publish an end that
  // happens while the engine starts; both land in the same batch here.
  ExecutionRecord a = End("aaaa", ExecState::kLost, kStart);
  PublishLive(a);
  PublishLive(a);
  Reopen();
  EXPECT_EQ(Ids(kExecutionFailedTopic), std::vector<std::string>{"aaaa"});
}

TEST_F(LifecycleReplayTest, OnlyRecentEndsAreLookedAt) {
  // Ends long before the newest lifecycle event had theirs committed before
  // it (the log commits in submission order): not looked at again.
  End("old0", ExecState::kSucceeded, kStart - 3600'000);
  ExecutionRecord a = End("aaaa", ExecState::kSucceeded, kStart);
  PublishLive(a);
  env_.AdvanceMs(10);
  Reopen();
  // Within the margin before it: looked at (and published if missing).
  End("near", ExecState::kSucceeded, kStart - kLifecycleReplayMarginMs / 2);
  // A run for a system event never reports.
  ExecutionRecord sys = End("sys0", ExecState::kSucceeded, kStart + 1);
  sys.spec.env["BERTH_EVENT_TOPIC"] = "_system.execution.failed";
  ASSERT_TRUE(store_->UpdateExecution(sys).ok());
  // Still running: no event yet.
  End("live", ExecState::kRunning, 0);
  EXPECT_EQ(Replay(), 2u);  // near and aaaa
  EXPECT_EQ(Ids(kExecutionFinishedTopic), (std::vector<std::string>{"aaaa", "near"}));
}

TEST_F(LifecycleReplayTest, WithNoLifecycleEventYetOnlyTheLastMarginIsLookedAt) {
  // E.g. the first start with lifecycle events on an old store, or ends that
  // reconciliation just recorded (executions left running, ended lost).
  End("hist", ExecState::kSucceeded, kStart - 2 * kLifecycleReplayMarginMs);
  End("lost", ExecState::kLost, kStart - 5);
  EXPECT_EQ(Replay(), 1u);
  EXPECT_TRUE(Ids(kExecutionFinishedTopic).empty());
  EXPECT_EQ(Ids(kExecutionFailedTopic), std::vector<std::string>{"lost"});
}

TEST_F(LifecycleReplayTest, ANewestEventWithoutKeyStartsTheReplayAfterIt) {
  // Published before lifecycle events had keys: what ended before it cannot
  // be deduplicated, so only later ends are looked at.
  End("prev", ExecState::kSucceeded, kStart - 10);
  events::Event legacy = *LifecycleEventOf(*store_->GetExecution("prev"));
  legacy.idempotency_key.reset();
  ASSERT_TRUE(log_->PublishSystem(legacy).ok());
  End("next", ExecState::kSucceeded, kStart + 10);
  env_.AdvanceMs(20);
  EXPECT_EQ(Replay(), 1u);
  auto evs = log_->ListEvents("t1", kExecutionFinishedTopic, 0, 10);
  ASSERT_TRUE(evs.ok());
  ASSERT_EQ(evs->size(), 2u);
  EXPECT_EQ(json::parse(evs->at(1).payload)["execution_id"], "next");
}

TEST(LifecycleEventOfTest, SystemRunsReportNothingAndTheKeyIsTheExecutionId) {
  ExecutionRecord ex;
  ex.id = "0123456789abcdef";
  ex.tenant = "t1";
  ex.state = ExecState::kTimedOut;
  auto ev = LifecycleEventOf(ex);
  ASSERT_TRUE(ev.has_value());
  EXPECT_EQ(ev->topic, kExecutionFailedTopic);
  EXPECT_EQ(ev->idempotency_key.value_or(""), ex.id);
  ex.spec.env["BERTH_EVENT_TOPIC"] = "_system.execution.finished";
  EXPECT_FALSE(LifecycleEventOf(ex).has_value());
}

}  // namespace
}  // namespace berth::manager
