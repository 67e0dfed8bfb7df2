// The execution state machine: every (from, to) pair of CanTransition against
// a table written out here, IsTerminal, and the status names.
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <utility>
#include <vector>

#include "manager/types.h"

namespace berth::manager {
namespace {

using S = ExecState;

const std::vector<S> kAll = {S::kPending, S::kPlacing,  S::kStarting, S::kRunning, S::kSucceeded,
                             S::kFailed,  S::kTimedOut, S::kKilled,   S::kLost,    S::kError};

// The legal transitions, as documented in manager/types.h:
//   pending -> placing -> starting -> running -> succeeded | failed | timed_out
//   starting -> placing (a failed start moves to another node)
//   any non-terminal -> killed | lost | error
const std::set<std::pair<S, S>> kLegal = {
    {S::kPending, S::kPlacing},   {S::kPending, S::kKilled},  {S::kPending, S::kLost},   {S::kPending, S::kError},
    {S::kPlacing, S::kStarting},  {S::kPlacing, S::kKilled},  {S::kPlacing, S::kLost},   {S::kPlacing, S::kError},
    {S::kStarting, S::kRunning},  {S::kStarting, S::kKilled}, {S::kStarting, S::kLost},  {S::kStarting, S::kError},
    {S::kStarting, S::kPlacing},
    {S::kRunning, S::kSucceeded}, {S::kRunning, S::kFailed},  {S::kRunning, S::kTimedOut},
    {S::kRunning, S::kKilled},    {S::kRunning, S::kLost},    {S::kRunning, S::kError},
};

TEST(ExecStateTest, TransitionTableIsExactlyTheDocumentedOne) {
  int legal = 0;
  for (S from : kAll) {
    for (S to : kAll) {
      const bool expected = kLegal.count({from, to}) > 0;
      EXPECT_EQ(CanTransition(from, to), expected)
          << ExecStateName(from) << " -> " << ExecStateName(to);
      legal += CanTransition(from, to) ? 1 : 0;
    }
  }
  EXPECT_EQ(legal, 19);
}

TEST(ExecStateTest, NoSelfTransitionsAndNothingLeavesATerminalState) {
  for (S s : kAll) EXPECT_FALSE(CanTransition(s, s)) << ExecStateName(s);
  for (S from : kAll) {
    if (!IsTerminal(from)) continue;
    for (S to : kAll) EXPECT_FALSE(CanTransition(from, to)) << ExecStateName(from) << " -> " << ExecStateName(to);
  }
  // Nothing goes back to pending, and no state is skipped on the happy path.
  for (S from : kAll) EXPECT_FALSE(CanTransition(from, S::kPending));
  EXPECT_FALSE(CanTransition(S::kPending, S::kRunning));
  EXPECT_FALSE(CanTransition(S::kPending, S::kSucceeded));
  EXPECT_FALSE(CanTransition(S::kStarting, S::kSucceeded));
  EXPECT_FALSE(CanTransition(S::kStarting, S::kTimedOut));
  EXPECT_FALSE(CanTransition(S::kPending, S::kStarting));
  EXPECT_FALSE(CanTransition(S::kPlacing, S::kRunning));
}

// A start that failed before its command ran goes back to placing, as the
// same record, on another node; the moved start may fail, move again, or run.
// Once running (the command ran), it never goes back.
TEST(ExecStateTest, FailedStartGoesBackToPlacingButARunningCommandNever) {
  EXPECT_TRUE(CanTransition(S::kStarting, S::kPlacing));
  const std::vector<S> moved_twice = {S::kPending, S::kPlacing, S::kStarting, S::kPlacing,
                                      S::kStarting, S::kPlacing, S::kStarting, S::kRunning, S::kSucceeded};
  for (size_t i = 1; i < moved_twice.size(); ++i) {
    EXPECT_TRUE(CanTransition(moved_twice[i - 1], moved_twice[i]))
        << ExecStateName(moved_twice[i - 1]) << " -> " << ExecStateName(moved_twice[i]);
  }
  EXPECT_FALSE(CanTransition(S::kRunning, S::kPlacing));
  EXPECT_FALSE(CanTransition(S::kRunning, S::kStarting));
  for (S from : kAll) {
    if (IsTerminal(from)) {
      EXPECT_FALSE(CanTransition(from, S::kPlacing)) << ExecStateName(from);
    }
  }
}

TEST(ExecStateTest, EveryNonTerminalStateCanBeKilledLostOrFail) {
  for (S s : kAll) {
    if (IsTerminal(s)) continue;
    EXPECT_TRUE(CanTransition(s, S::kError)) << ExecStateName(s);
    EXPECT_TRUE(CanTransition(s, S::kKilled)) << ExecStateName(s);
    EXPECT_TRUE(CanTransition(s, S::kLost)) << ExecStateName(s);
  }
}

TEST(ExecStateTest, IsTerminal) {
  EXPECT_FALSE(IsTerminal(S::kPending));
  EXPECT_FALSE(IsTerminal(S::kPlacing));
  EXPECT_FALSE(IsTerminal(S::kStarting));
  EXPECT_FALSE(IsTerminal(S::kRunning));
  EXPECT_TRUE(IsTerminal(S::kKilled));
  EXPECT_TRUE(IsTerminal(S::kLost));
  EXPECT_TRUE(IsTerminal(S::kSucceeded));
  EXPECT_TRUE(IsTerminal(S::kFailed));
  EXPECT_TRUE(IsTerminal(S::kTimedOut));
  EXPECT_TRUE(IsTerminal(S::kError));
}

TEST(ExecStateTest, NamesAreTheApiSpellings) {
  EXPECT_STREQ(ExecStateName(S::kPending), "pending");
  EXPECT_STREQ(ExecStateName(S::kPlacing), "placing");
  EXPECT_STREQ(ExecStateName(S::kStarting), "starting");
  EXPECT_STREQ(ExecStateName(S::kKilled), "killed");
  EXPECT_STREQ(ExecStateName(S::kLost), "lost");
  EXPECT_STREQ(ExecStateName(S::kRunning), "running");
  EXPECT_STREQ(ExecStateName(S::kSucceeded), "succeeded");
  EXPECT_STREQ(ExecStateName(S::kFailed), "failed");
  EXPECT_STREQ(ExecStateName(S::kTimedOut), "timed_out");
  EXPECT_STREQ(ExecStateName(S::kError), "error");
}

TEST(ExecStateTest, AllExecStatesListsEveryStateOnce) { EXPECT_EQ(AllExecStates(), kAll); }

TEST(ExecStateTest, NamesRoundTripAndAreDistinct) {
  std::set<std::string> names;
  for (S s : kAll) {
    const std::string name = ExecStateName(s);
    names.insert(name);
    auto parsed = ParseExecState(name);
    ASSERT_TRUE(parsed.ok()) << name << ": " << parsed.status().ToString();
    EXPECT_EQ(*parsed, s) << name;
  }
  EXPECT_EQ(names.size(), kAll.size());
}

TEST(ExecStateTest, UnknownNamesAreInvalidArgumentOnFieldStatus) {
  for (const std::string& bad : std::vector<std::string>{"", "PENDING", "Running", "timed-out", "timedout", " pending", "pending ",
                                "unknown", "done", "booting", std::string("error\0x", 7)}) {
    auto parsed = ParseExecState(bad);
    ASSERT_FALSE(parsed.ok()) << "'" << bad << "' parsed";
    EXPECT_EQ(parsed.status().code(), Code::kInvalidArgument) << bad;
    EXPECT_EQ(parsed.status().field(), "state") << bad;
  }
}

}  // namespace
}  // namespace berth::manager
