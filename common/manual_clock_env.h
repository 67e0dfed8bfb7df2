// ManualClockEnv: an Env whose clocks only move when told to (tests and
// simulations); files and commands go to a base Env.
#pragma once

#include <atomic>
#include <cstdint>

#include "common/env.h"

namespace berth {

class ManualClockEnv : public Env {
public:
  explicit ManualClockEnv(int64_t start_unix_ms = 1'700'000'000'000,
                          Env *base = Env::Default())
      : base_(base), now_(start_unix_ms) {}

  void SetNowMs(int64_t unix_ms) { now_ = unix_ms; }
  void AdvanceMs(int64_t ms) { now_ += ms; }
  void Advance(int64_t ms) { now_ += ms; } // same as AdvanceMs

  int64_t NowUnixMs() override { return now_; }
  int64_t MonotonicMs() override { return now_; }
  void SleepMs(int64_t ms) override {
    now_ += ms;
  } // sleeping advances the fake time

  Result<CommandResult> Run(const std::vector<std::string> &argv,
                            std::string_view input,
                            int64_t timeout_ms) override {
    return base_->Run(argv, input, timeout_ms);
  }
  Result<CommandResult> RunLimited(const std::vector<std::string> &argv,
                                   std::string_view input, int64_t timeout_ms,
                                   const RunLimits &limits) override {
    return base_->RunLimited(argv, input, timeout_ms, limits);
  }
  Result<std::string> ReadFile(const std::string &path) override {
    return base_->ReadFile(path);
  }
  Status WriteFileAtomic(const std::string &path, std::string_view data,
                         int mode) override {
    return base_->WriteFileAtomic(path, data, mode);
  }
  bool Exists(const std::string &path) override { return base_->Exists(path); }
  Status RemoveFile(const std::string &path) override {
    return base_->RemoveFile(path);
  }
  Status RemoveTree(const std::string &path) override {
    return base_->RemoveTree(path);
  }
  Status CreateDirs(const std::string &path, int mode) override {
    return base_->CreateDirs(path, mode);
  }
  Status Rename(const std::string &from, const std::string &to) override {
    return base_->Rename(from, to);
  }
  Result<uint64_t> FileSize(const std::string &path) override {
    return base_->FileSize(path);
  }

private:
  Env *base_;
  std::atomic<int64_t> now_;
};

} // namespace berth
