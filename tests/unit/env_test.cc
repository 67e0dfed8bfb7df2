// Env::Default(): command execution (capture, exit codes, stdin, missing
// programs, timeouts that really kill) and the file helpers.
#include "tests/support/temp_dir.h"
#include "common/env.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace berth {
namespace {

using ::berth::testing::TempDir;

using ::berth::testing::RandomBytes;

int Mode(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return -1;
  return static_cast<int>(st.st_mode & 07777);
}

// True once `pid` no longer exists (or is a zombie waiting for its reaper).
bool ProcessGone(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  if (!stat) return true;
  std::string line;
  std::getline(stat, line);
  auto close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] == 'Z';
}

bool WaitGone(pid_t pid, int ms) {
  for (int i = 0; i < ms / 20; ++i) {
    if (ProcessGone(pid)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return ProcessGone(pid);
}

int64_t Now() { return Env::Default()->MonotonicMs(); }

TEST(EnvRunTest, CapturesStdoutStderrAndExitCode) {
  auto r = Env::Default()->Run({"sh", "-c", "echo out1; echo err1 >&2; printf out2; exit 3"});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->exit_code, 3);
  EXPECT_EQ(r->out, "out1\nout2");
  EXPECT_EQ(r->err, "err1\n");
}

TEST(EnvRunTest, ZeroExitAndArgvArePassedVerbatim) {
  auto r = Env::Default()->Run({"printf", "%s|", "a b", "", "$HOME", "'q'"});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->exit_code, 0);
  EXPECT_EQ(r->out, "a b||$HOME|'q'|");
  EXPECT_EQ(r->err, "");
}

TEST(EnvRunTest, NonZeroExitIsNotAnError) {
  auto r = Env::Default()->Run({"false"});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->exit_code, 1);
}

TEST(EnvRunTest, KilledBySignalIs128PlusSignal) {
  auto r = Env::Default()->Run({"sh", "-c", "kill -TERM $$; sleep 5"});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->exit_code, 128 + SIGTERM);
}

TEST(EnvRunTest, LargeBinaryOutputOnBothStreams) {
  // More than a pipe buffer on each stream at once: both must be drained concurrently.
  auto r = Env::Default()->Run(
      {"sh", "-c", "head -c 3000000 /dev/zero; head -c 2000000 /dev/zero >&2; head -c 1000000 /dev/zero"});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->exit_code, 0);
  EXPECT_EQ(r->out.size(), 4'000'000u);
  EXPECT_EQ(r->err.size(), 2'000'000u);
  EXPECT_EQ(r->out.find_first_not_of('\0'), std::string::npos);
}

TEST(EnvRunTest, StdinIsFedToTheChild) {
  auto r = Env::Default()->Run({"cat"}, "hello\nworld");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->exit_code, 0);
  EXPECT_EQ(r->out, "hello\nworld");
}

TEST(EnvRunTest, LargeBinaryStdinRoundTripsThroughCat) {
  const std::string input = RandomBytes(5u << 20, 3);  // far beyond the 64 KiB pipe buffer
  auto r = Env::Default()->Run({"cat"}, input);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->exit_code, 0);
  ASSERT_EQ(r->out.size(), input.size());
  EXPECT_TRUE(r->out == input);
}

TEST(EnvRunTest, EmptyInputGivesImmediateEof) {
  // With no input the child must see EOF at once, not hang until the timeout.
  const int64_t t0 = Now();
  auto r = Env::Default()->Run({"cat"}, "", 5000);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->out, "");
  EXPECT_LT(Now() - t0, 2000);
}

TEST(EnvRunTest, ChildIgnoringStdinDoesNotBlock) {
  // The child exits without reading a large input: the writer must give up (EPIPE).
  const std::string input(1u << 20, 'x');
  auto r = Env::Default()->Run({"sh", "-c", "echo done"}, input, 10'000);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->out, "done\n");
  EXPECT_EQ(r->exit_code, 0);
}

TEST(EnvRunTest, MissingProgramIsUnavailable) {
  auto r = Env::Default()->Run({"berth-no-such-program-7f3a"});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kUnavailable) << r.status().ToString();
  EXPECT_NE(r.status().message().find("berth-no-such-program-7f3a"), std::string::npos);
  auto abs = Env::Default()->Run({"/nonexistent/dir/prog"});
  ASSERT_FALSE(abs.ok());
  EXPECT_EQ(abs.status().code(), Code::kUnavailable) << abs.status().ToString();
}

TEST(EnvRunTest, NonExecutableFileIsAnErrorButNotUnavailable) {
  TempDir tmp;
  ASSERT_FALSE(tmp.path().empty());
  const std::string path = tmp.path() + "/not-exec";
  ASSERT_TRUE(Env::Default()->WriteFileAtomic(path, "#!/bin/sh\necho hi\n", 0644).ok());
  auto r = Env::Default()->Run({path});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInternal) << r.status().ToString();
}

TEST(EnvRunTest, EmptyArgvIsInvalidArgument) {
  auto r = Env::Default()->Run({});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
}

TEST(EnvRunTest, TimeoutKillsTheChildAndItsGroup) {
  TempDir tmp;
  ASSERT_FALSE(tmp.path().empty());
  const std::string pidfile = tmp.path() + "/pids";
  // The shell starts a grandchild sleeper, records both pids, and waits.
  const std::string script = "sleep 30 & echo $$ $! > " + pidfile + "; wait";
  const int64_t t0 = Now();
  auto r = Env::Default()->Run({"sh", "-c", script}, "", 500);
  const int64_t elapsed = Now() - t0;
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kDeadlineExceeded) << r.status().ToString();
  EXPECT_GE(elapsed, 450);
  EXPECT_LT(elapsed, 5000) << "Run must return soon after its timeout, not when the child ends";
  std::ifstream in(pidfile);
  pid_t shell = 0, sleeper = 0;
  in >> shell >> sleeper;
  ASSERT_GT(shell, 0);
  ASSERT_GT(sleeper, 0);
  EXPECT_TRUE(WaitGone(shell, 2000)) << "the child survived its timeout";
  EXPECT_TRUE(WaitGone(sleeper, 2000)) << "the child's own child survived the timeout";
  if (!ProcessGone(sleeper)) ::kill(sleeper, SIGKILL);
}

TEST(EnvRunTest, TimeoutKeepsNothingRunningForSilentChild) {
  const int64_t t0 = Now();
  auto r = Env::Default()->Run({"sleep", "20"}, "", 300);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kDeadlineExceeded);
  EXPECT_LT(Now() - t0, 3000);
}

TEST(EnvRunTest, TimeoutAppliesEvenWhenTheChildClosesItsOutput) {

  const int64_t t0 = Now();
  auto r = Env::Default()->Run({"sh", "-c", "exec >/dev/null 2>&1; sleep 6"}, "", 300);
  const int64_t elapsed = Now() - t0;
  ASSERT_FALSE(r.ok()) << "finished normally after " << elapsed << " ms";
  EXPECT_EQ(r.status().code(), Code::kDeadlineExceeded);
  EXPECT_LT(elapsed, 3000);
}

TEST(EnvRunTest, ConcurrentRunsDoNotMixOutput) {
  std::vector<std::thread> threads;
  std::atomic<int> good{0};
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([i, &good] {
      const std::string in = "thread-" + std::to_string(i) + std::string(100'000, static_cast<char>('a' + i));
      auto r = Env::Default()->Run({"cat"}, in);
      if (r.ok() && r->out == in && r->exit_code == 0) ++good;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(good.load(), 8);
}

TEST(EnvFileTest, WriteReadRemoveRoundTrip) {
  TempDir tmp;
  ASSERT_FALSE(tmp.path().empty());
  Env* env = Env::Default();
  const std::string path = tmp.path() + "/data.bin";
  const std::string data = RandomBytes(300'000, 5) + std::string("\0tail", 5);
  ASSERT_TRUE(env->WriteFileAtomic(path, data).ok());
  EXPECT_TRUE(env->Exists(path));
  auto back = env->ReadFile(path);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(*back == data);
  auto size = env->FileSize(path);
  ASSERT_TRUE(size.ok());
  EXPECT_EQ(*size, data.size());
  EXPECT_EQ(Mode(path), 0644);

  // Overwrite with shorter content: no stale tail remains.
  ASSERT_TRUE(env->WriteFileAtomic(path, "short").ok());
  auto again = env->ReadFile(path);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, "short");
  EXPECT_EQ(*env->FileSize(path), 5u);

  // Empty file.
  ASSERT_TRUE(env->WriteFileAtomic(path, "").ok());
  EXPECT_EQ(*env->ReadFile(path), "");
  EXPECT_EQ(*env->FileSize(path), 0u);

  ASSERT_TRUE(env->RemoveFile(path).ok());
  EXPECT_FALSE(env->Exists(path));
  EXPECT_TRUE(env->RemoveFile(path).ok()) << "removing a missing file is OK";
  auto gone = env->ReadFile(path);
  ASSERT_FALSE(gone.ok());
  EXPECT_EQ(gone.status().code(), Code::kNotFound) << gone.status().ToString();
  auto no_size = env->FileSize(path);
  ASSERT_FALSE(no_size.ok());
  EXPECT_EQ(no_size.status().code(), Code::kNotFound);
}

TEST(EnvFileTest, WriteFileAtomicModeIsExactAndNoTempFilesRemain) {
  TempDir tmp;
  ASSERT_FALSE(tmp.path().empty());
  Env* env = Env::Default();
  const mode_t old = ::umask(0077);  // the requested mode must win over the umask
  Status s = env->WriteFileAtomic(tmp.path() + "/a", "x", 0640);
  Status s2 = env->WriteFileAtomic(tmp.path() + "/b", "y", 0755);
  ::umask(old);
  ASSERT_TRUE(s.ok()) << s.ToString();
  ASSERT_TRUE(s2.ok()) << s2.ToString();
  EXPECT_EQ(Mode(tmp.path() + "/a"), 0640);
  EXPECT_EQ(Mode(tmp.path() + "/b"), 0755);
  auto ls = env->Run({"ls", "-A", tmp.path()});
  ASSERT_TRUE(ls.ok());
  EXPECT_EQ(ls->out, "a\nb\n") << "temporary files left behind";
}

TEST(EnvFileTest, WriteFileAtomicIntoMissingDirectoryFails) {
  Status s = Env::Default()->WriteFileAtomic("/nonexistent/berth/dir/file", "x");
  EXPECT_FALSE(s.ok());
}

TEST(EnvFileTest, ConcurrentAtomicWritersOfOnePathNeverProduceAMix) {

  TempDir tmp;
  ASSERT_FALSE(tmp.path().empty());
  const std::string path = tmp.path() + "/shared";
  std::vector<std::string> contents;
  for (int i = 0; i < 6; ++i) contents.push_back(std::string(1u << 20, static_cast<char>('A' + i)));
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&, i] {
      for (int k = 0; k < 10; ++k) {
        if (!Env::Default()->WriteFileAtomic(path, contents[i]).ok()) ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  auto data = Env::Default()->ReadFile(path);
  ASSERT_TRUE(data.ok());
  bool whole = false;
  for (const auto& c : contents) whole = whole || *data == c;
  EXPECT_TRUE(whole) << "the file is a mix of several writers' data (" << data->size() << " bytes)";
}

TEST(EnvFileTest, CreateDirsNestedIdempotentWithMode) {
  TempDir tmp;
  ASSERT_FALSE(tmp.path().empty());
  Env* env = Env::Default();
  const std::string deep = tmp.path() + "/a/b/c";
  ASSERT_TRUE(env->CreateDirs(deep, 0700).ok());
  EXPECT_TRUE(env->Exists(deep));
  EXPECT_EQ(Mode(deep), 0700);
  ASSERT_TRUE(env->CreateDirs(deep, 0755).ok()) << "existing directory is fine";
  EXPECT_EQ(Mode(deep), 0755);
  ASSERT_TRUE(env->WriteFileAtomic(deep + "/f", "x").ok());
  // A regular file in the way is an error.
  Status s = env->CreateDirs(deep + "/f/g");
  EXPECT_FALSE(s.ok());
  ASSERT_TRUE(env->RemoveTree(tmp.path() + "/a").ok());
  EXPECT_FALSE(env->Exists(tmp.path() + "/a"));
  EXPECT_TRUE(env->RemoveTree(tmp.path() + "/a").ok()) << "missing tree is OK";
}

TEST(EnvFileTest, RenameAndFileSize) {
  TempDir tmp;
  ASSERT_FALSE(tmp.path().empty());
  Env* env = Env::Default();
  ASSERT_TRUE(env->WriteFileAtomic(tmp.path() + "/x", std::string(12345, 'z')).ok());
  ASSERT_TRUE(env->Rename(tmp.path() + "/x", tmp.path() + "/y").ok());
  EXPECT_FALSE(env->Exists(tmp.path() + "/x"));
  auto sz = env->FileSize(tmp.path() + "/y");
  ASSERT_TRUE(sz.ok());
  EXPECT_EQ(*sz, 12345u);
  Status missing = env->Rename(tmp.path() + "/nope", tmp.path() + "/z");
  EXPECT_EQ(missing.code(), Code::kNotFound);
}

TEST(EnvMiscTest, ClocksAndFirstLine) {
  Env* env = Env::Default();
  const int64_t wall = env->NowUnixMs();
  EXPECT_GT(wall, 1'600'000'000'000);  // after 2020
  const int64_t m0 = env->MonotonicMs();
  env->SleepMs(50);
  const int64_t m1 = env->MonotonicMs();
  EXPECT_GE(m1 - m0, 50);
  EXPECT_EQ(FirstLine("one\ntwo\n"), "one");
  EXPECT_EQ(FirstLine("single"), "single");
  EXPECT_EQ(FirstLine(""), "");
  EXPECT_EQ(FirstLine("\nsecond"), "");
}

}  // namespace
}  // namespace berth
