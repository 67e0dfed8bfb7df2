// Webhook sources: the signature/secret check (RFC 4231 vectors for the
// HMAC), webhook records in the event log, system publishes on reserved
// topics, and the cron ticker's fire-the-creation-minute option.
#include "events/webhook_auth.h"

#include <gtest/gtest.h>

#include "events/cron_ticker.h"
#include "events/event_log.h"
#include "common/manual_clock_env.h"
#include "tests/support/temp_dir.h"

namespace berth::events {
namespace {

using ::berth::testing::TempDir;

TEST(EventWebhookTest, HmacMatchesRfc4231) {
  EXPECT_EQ(HmacSha256Hex("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

TEST(EventWebhookTest, SignatureOrSecretHeaderAuthorizes) {
  const std::string secret = "0123456789abcdef0123";
  const std::string body = R"({"a":1})";
  std::string sig = "sha256=" + HmacSha256Hex(secret, body);
  EXPECT_TRUE(WebhookAuthorized(secret, body, sig, ""));
  std::string upper = sig;
  for (size_t i = 7; i < upper.size(); ++i) upper[i] = static_cast<char>(std::toupper(upper[i]));
  EXPECT_TRUE(WebhookAuthorized(secret, body, upper, ""));
  EXPECT_TRUE(WebhookAuthorized(secret, body, "", secret));
  EXPECT_FALSE(WebhookAuthorized(secret, body, "", ""));
  EXPECT_FALSE(WebhookAuthorized(secret, body + " ", sig, ""));
  EXPECT_FALSE(WebhookAuthorized(secret, body, HmacSha256Hex(secret, body), ""));  // no "sha256=" prefix
  EXPECT_FALSE(WebhookAuthorized(secret, body, "sha256=", ""));
  EXPECT_FALSE(WebhookAuthorized(secret, body, "", secret + "x"));
  EXPECT_FALSE(WebhookAuthorized(secret, body, "", secret.substr(1)));
  EXPECT_TRUE(WebhookAuthorized(secret, body, "sha256=bad", secret));  // either proof is enough
  EXPECT_FALSE(WebhookAuthorized("", body, "", ""));
}

TEST(EventWebhookTest, WebhooksAreStoredPerTenantWithGlobalNames) {
  TempDir dir;
  EventLogOptions opts;
  opts.db_path = dir.path() + "/events.db";
  auto log = EventLog::Open(Env::Default(), opts);
  ASSERT_TRUE(log.ok()) << log.status().ToString();
  Webhook w;
  w.tenant = "t1";
  w.name = "gh";
  w.topic = "hooks.gh";
  w.secret = "short";
  EXPECT_EQ((*log)->CreateWebhook(w).status().field(), "secret");
  w.secret = std::string(32, 's');
  w.topic = "_reserved";
  EXPECT_EQ((*log)->CreateWebhook(w).status().field(), "topic");
  w.topic = "hooks.gh";
  auto created = (*log)->CreateWebhook(w);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  EXPECT_EQ(created->id.rfind("hook-", 0), 0u);
  Webhook clash = w;
  clash.tenant = "t2";
  EXPECT_EQ((*log)->CreateWebhook(clash).status().code(), Code::kAlreadyExists);
  EXPECT_EQ((*log)->GetWebhook("t2", "gh").status().code(), Code::kNotFound);
  EXPECT_EQ((*log)->FindWebhook("gh")->tenant, "t1");
  EXPECT_EQ((*log)->ListWebhooks("t1")->size(), 1u);
  EXPECT_TRUE((*log)->ListWebhooks("t2")->empty());
  EXPECT_EQ((*log)->DeleteWebhook("t2", "gh").code(), Code::kNotFound);
  EXPECT_TRUE((*log)->DeleteWebhook("t1", "gh").ok());
  EXPECT_EQ((*log)->FindWebhook("gh").status().code(), Code::kNotFound);
}

TEST(EventWebhookTest, SystemPublishesMayUseReservedTopics) {
  TempDir dir;
  EventLogOptions opts;
  opts.db_path = dir.path() + "/events.db";
  auto log = EventLog::Open(Env::Default(), opts);
  ASSERT_TRUE(log.ok());
  Event e;
  e.tenant = "t1";
  e.topic = "_system.execution.finished";
  e.content_type = "application/json";
  e.payload = "{}";
  EXPECT_EQ((*log)->Publish(e).status().field(), "topic");
  auto published = (*log)->PublishSystem(e);
  ASSERT_TRUE(published.ok()) << published.status().ToString();
  EXPECT_EQ((*log)->GetEvent("t1", published->event_id)->topic, "_system.execution.finished");
}

TEST(EventWebhookTest, CronCanFireTheMinuteItWasCreatedIn) {
  TempDir dir;
  constexpr int64_t kMinute = 1'700'000'040'000 - 1'700'000'040'000 % 60'000;
  ManualClockEnv env(kMinute + 20'000);  // hh:mm:20
  EventLogOptions opts;
  opts.db_path = dir.path() + "/events.db";
  auto log = EventLog::Open(&env, opts);
  ASSERT_TRUE(log.ok());
  CronTrigger c;
  c.tenant = "t1";
  c.name = "every";
  c.schedule = "* * * * *";
  c.function = "fn";
  ASSERT_TRUE((*log)->CreateCronTrigger(c).ok());
  CronTicker plain(log->get());
  EXPECT_EQ(*plain.Tick(), 0);  // by default the next whole minute is the first slot
  CronTickerOptions eager;
  eager.fire_creation_minute = true;
  CronTicker ticker(log->get(), eager);
  EXPECT_EQ(*ticker.Tick(), 1);
  EXPECT_EQ(*ticker.Tick(), 0);  // once per slot
  auto timers = (*log)->ListEvents("t1", "_timer.every", 0, 10);
  ASSERT_EQ(timers->size(), 1u);
  EXPECT_NE(timers->front().payload.find(std::to_string(kMinute)), std::string::npos);
  env.AdvanceMs(60'000);
  EXPECT_EQ(*ticker.Tick(), 1);  // the next slot as usual
}

}  // namespace
}  // namespace berth::events
