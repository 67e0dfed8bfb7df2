// ConnectRestoredAgent: a restored clone whose agent does not answer Hello on
// the first connection (its port-open event lost) is retried on a fresh
// connection; other failures end it at once. Scripted channels, no guest.
#include <gtest/gtest.h>

#include <chrono>
#include <deque>
#include <mutex>
#include <thread>

#include "hypervisor/agent_client.h"
#include "tests/support/unimplemented_hypervisor.h"

namespace berth::hv {
namespace {

// What one connection's guest side does with the host's Hello.
enum class Guest { kSilent, kAnswers, kGone };

class ScriptedChannel : public AgentChannel {
 public:
  explicit ScriptedChannel(Guest guest) : guest_(guest) {}
  Status Send(agent::MsgType type, std::string_view) override {
    if (closed_) return Status::Unavailable("closed");
    if (type == agent::MsgType::kHello && guest_ == Guest::kAnswers) {
      agent::HelloMsg reply;
      reply.agent_version = "scripted";
      reply.entropy_mixed = true;
      replies_.push_back({agent::MsgType::kHello, nlohmann::json(reply).dump()});
    }
    return Status::Ok();
  }
  Result<agent::Frame> Receive(int64_t timeout_ms) override {
    if (guest_ == Guest::kGone) return Status::Unavailable("the domain is gone");
    if (replies_.empty()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(timeout_ms));
      return Status::DeadlineExceeded("nothing");
    }
    agent::Frame f = replies_.front();
    replies_.pop_front();
    return f;
  }
  void Close() override { closed_ = true; }

 private:
  Guest guest_;
  bool closed_ = false;
  std::deque<agent::Frame> replies_;
};

// Hands out one scripted channel per OpenAgentChannel, in order.
class ScriptedHypervisor : public UnimplementedHypervisor {
 public:
  explicit ScriptedHypervisor(std::vector<Guest> script) : script_(std::move(script)) {}
  Result<std::unique_ptr<AgentChannel>> OpenAgentChannel(const std::string& domain, const std::string&) override {
    std::lock_guard lock(mu_);
    EXPECT_EQ(domain, "berth-clone");
    if (opened_ >= script_.size()) return Status::Unavailable("no more channels in the script");
    return std::unique_ptr<AgentChannel>(new ScriptedChannel(script_[opened_++]));
  }
  size_t opened() const { return opened_; }

 private:
  std::mutex mu_;
  std::vector<Guest> script_;
  size_t opened_ = 0;
};

TEST(RestoredAgentTest, AnswersOnTheFirstConnection) {
  ScriptedHypervisor hv({Guest::kAnswers});
  auto agent = ConnectRestoredAgent(hv, "berth-clone", agent::kPortName, 5000, 100);
  ASSERT_TRUE(agent.ok()) << agent.status().ToString();
  EXPECT_EQ(agent->reconnects, 0);
  EXPECT_EQ(agent->hello.agent_version, "scripted");
  EXPECT_TRUE(agent->client);
  EXPECT_EQ(hv.opened(), 1u);
}

TEST(RestoredAgentTest, SilentFirstConnectionIsRetriedOnAFreshOne) {
  ScriptedHypervisor hv({Guest::kSilent, Guest::kSilent, Guest::kAnswers});
  const auto t0 = std::chrono::steady_clock::now();
  auto agent = ConnectRestoredAgent(hv, "berth-clone", agent::kPortName, 5000, 100);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(agent.ok()) << agent.status().ToString();
  EXPECT_EQ(agent->reconnects, 2);
  EXPECT_TRUE(agent->hello.entropy_mixed);
  EXPECT_EQ(hv.opened(), 3u);
  EXPECT_LT(ms, 5000);  // two reconnect intervals, not the whole timeout
}

TEST(RestoredAgentTest, GivesUpAtTheTimeoutWithDeadlineExceeded) {
  ScriptedHypervisor hv(std::vector<Guest>(50, Guest::kSilent));
  const auto t0 = std::chrono::steady_clock::now();
  auto agent = ConnectRestoredAgent(hv, "berth-clone", agent::kPortName, 500, 100);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_FALSE(agent.ok());
  EXPECT_EQ(agent.status().code(), Code::kDeadlineExceeded) << agent.status().ToString();
  EXPECT_NE(agent.status().message().find("reconnect"), std::string::npos) << agent.status().ToString();
  EXPECT_GE(ms, 450);
  EXPECT_LT(ms, 2000);
  EXPECT_GE(hv.opened(), 3u);
}

TEST(RestoredAgentTest, AGoneDomainFailsAtOnce) {
  ScriptedHypervisor hv({Guest::kGone, Guest::kAnswers});
  auto agent = ConnectRestoredAgent(hv, "berth-clone", agent::kPortName, 5000, 100);
  ASSERT_FALSE(agent.ok());
  EXPECT_EQ(agent.status().code(), Code::kUnavailable) << agent.status().ToString();
  EXPECT_EQ(hv.opened(), 1u);
}

}  // namespace
}  // namespace berth::hv
