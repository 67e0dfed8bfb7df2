// manager::Store against a real SQLite file: images, functions, pids and
// executions, durability across reopen, and WAL mode.
#include "tests/support/temp_dir.h"
#include "manager/store.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <sqlite3.h>

#include "common/env.h"

namespace berth::manager {
namespace {

using ::berth::testing::TempDir;

std::string Sha(char c) { return std::string(64, c); }

ImageMeta Image(char c, int64_t created, const std::string& name = "img") {
  ImageMeta m;
  m.id = Sha(c);
  m.name = name;
  m.format = "qcow2";
  m.filesystem = "ext4";
  m.size_bytes = 123456789012ull;
  m.virtual_size_bytes = 10ull << 30;
  m.tenant = "acme";
  m.created_ms = created;
  return m;
}

FunctionRecord Function(const std::string& name, const std::string& image, int64_t now) {
  FunctionRecord fn;
  fn.spec.name = name;
  fn.spec.image = image;
  fn.spec.entrypoint = {"/bin/sh", "-c", "echo \"$X\""};
  fn.spec.vcpus = 3;
  fn.spec.memory_mib = 768;
  fn.spec.timeout_ms = 12'345;
  fn.spec.env = {{"X", "1"}, {"UNICODE", "caf\xc3\xa9"}};
  fn.spec.cwd = "/srv";
  fn.spec.network = "none";
  fn.tenant = "acme";
  fn.version = 1;
  fn.created_ms = now;
  fn.updated_ms = now;
  return fn;
}

ExecutionRecord Execution(const std::string& id, const std::string& function, int64_t pid, int64_t created,
                          ExecState state = ExecState::kPending) {
  ExecutionRecord ex;
  ex.id = id;
  ex.function = function;
  ex.function_version = 2;
  ex.tenant = "acme";
  ex.image = Sha('a');
  ex.state = state;
  ex.node = "local";
  ex.domain = "berth-" + id;
  ex.pid = pid;
  ex.ppid = 1;
  ex.created_ms = created;
  return ex;
}

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(tmp_.path().empty());
    db_path_ = tmp_.path() + "/berth.db";
    Reopen();
  }
  void Reopen() {
    store_.reset();
    auto s = Store::Open(db_path_);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(*s);
  }

  TempDir tmp_;
  std::string db_path_;
  std::unique_ptr<Store> store_;
};

TEST_F(StoreTest, OpenFailsUnavailableForUnwritableLocation) {
  auto s = Store::Open("/nonexistent/berth/dir/berth.db");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), Code::kUnavailable) << s.status().ToString();
}

TEST_F(StoreTest, ImagesPutGetListDelete) {
  ASSERT_TRUE(store_->PutImage(Image('b', 200, "second")).ok());
  ASSERT_TRUE(store_->PutImage(Image('a', 100, "first")).ok());

  auto got = store_->GetImage("acme", Sha('a'));
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->id, Sha('a'));
  EXPECT_EQ(got->name, "first");
  EXPECT_EQ(got->format, "qcow2");
  EXPECT_EQ(got->filesystem, "ext4");
  EXPECT_EQ(got->size_bytes, 123456789012ull);
  EXPECT_EQ(got->virtual_size_bytes, 10ull << 30);
  EXPECT_EQ(got->tenant, "acme");
  EXPECT_EQ(got->created_ms, 100);

  auto list = store_->ListImages("acme");
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].id, Sha('a')) << "oldest first";
  EXPECT_EQ((*list)[1].id, Sha('b'));

  ASSERT_TRUE(store_->DeleteImage("acme", Sha('a')).ok());
  auto missing = store_->GetImage("acme", Sha('a'));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Code::kNotFound);
  Status again = store_->DeleteImage("acme", Sha('a'));
  EXPECT_EQ(again.code(), Code::kNotFound) << again.ToString();
  EXPECT_EQ(store_->DeleteImage("acme", Sha('c')).code(), Code::kNotFound);
  list = store_->ListImages("acme");
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].id, Sha('b'));
}

TEST_F(StoreTest, PutImageTwiceKeepsOneRecordAndTheFirstMetadata) {
  ASSERT_TRUE(store_->PutImage(Image('a', 100, "original")).ok());
  ASSERT_TRUE(store_->PutImage(Image('a', 999, "renamed")).ok());
  auto list = store_->ListImages("acme");
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].name, "original");
  EXPECT_EQ((*list)[0].created_ms, 100);
}

TEST_F(StoreTest, FunctionCreateGetAndDuplicate) {
  const FunctionRecord fn = Function("resize", Sha('a'), 1000);
  ASSERT_TRUE(store_->CreateFunction(fn).ok());
  auto got = store_->GetFunction("acme", "resize");
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->spec.name, "resize");
  EXPECT_EQ(got->spec.image, Sha('a'));
  EXPECT_EQ(got->spec.entrypoint, fn.spec.entrypoint);
  EXPECT_EQ(got->spec.vcpus, 3u);
  EXPECT_EQ(got->spec.memory_mib, 768u);
  EXPECT_EQ(got->spec.timeout_ms, 12'345);
  EXPECT_EQ(got->spec.env, fn.spec.env);
  EXPECT_EQ(got->spec.cwd, "/srv");
  EXPECT_EQ(got->spec.network, "none");
  EXPECT_EQ(got->tenant, "acme");
  EXPECT_EQ(got->version, 1);
  EXPECT_EQ(got->created_ms, 1000);
  EXPECT_EQ(got->updated_ms, 1000);

  FunctionRecord dup = Function("resize", Sha('b'), 2000);
  Status s = store_->CreateFunction(dup);
  EXPECT_EQ(s.code(), Code::kAlreadyExists) << s.ToString();
  // The original is untouched.
  auto still = store_->GetFunction("acme", "resize");
  ASSERT_TRUE(still.ok());
  EXPECT_EQ(still->spec.image, Sha('a'));
  EXPECT_EQ(still->created_ms, 1000);

  auto missing = store_->GetFunction("acme", "nope");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Code::kNotFound);
}

TEST_F(StoreTest, UpdateBumpsVersionKeepsCreatedAndTenant) {
  ASSERT_TRUE(store_->CreateFunction(Function("f", Sha('a'), 1000)).ok());
  FunctionSpec spec = Function("f", Sha('b'), 0).spec;
  spec.memory_mib = 2048;
  spec.env = {};
  spec.entrypoint = {"/bin/true"};
  auto u1 = store_->UpdateFunction("acme", spec, 5000);
  ASSERT_TRUE(u1.ok()) << u1.status().ToString();
  EXPECT_EQ(u1->version, 2);
  EXPECT_EQ(u1->created_ms, 1000);
  EXPECT_EQ(u1->updated_ms, 5000);
  EXPECT_EQ(u1->tenant, "acme");
  EXPECT_EQ(u1->spec.image, Sha('b'));
  EXPECT_EQ(u1->spec.memory_mib, 2048u);
  EXPECT_TRUE(u1->spec.env.empty());
  EXPECT_EQ(u1->spec.entrypoint, std::vector<std::string>{"/bin/true"});

  auto u2 = store_->UpdateFunction("acme", spec, 6000);
  ASSERT_TRUE(u2.ok());
  EXPECT_EQ(u2->version, 3);
  EXPECT_EQ(u2->created_ms, 1000);
  EXPECT_EQ(u2->updated_ms, 6000);
  auto got = store_->GetFunction("acme", "f");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->version, 3);

  spec.name = "missing";
  auto none = store_->UpdateFunction("acme", spec, 7000);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), Code::kNotFound);
  EXPECT_EQ(store_->GetFunction("acme", "missing").status().code(), Code::kNotFound) << "update must not create";
}

TEST_F(StoreTest, ListFunctionsOrderedByNameAndDelete) {
  for (const char* n : {"zeta", "alpha", "mid-1", "mid-0"}) {
    ASSERT_TRUE(store_->CreateFunction(Function(n, Sha('a'), 1)).ok()) << n;
  }
  auto list = store_->ListFunctions("acme");
  ASSERT_TRUE(list.ok());
  std::vector<std::string> names;
  for (const auto& f : *list) names.push_back(f.spec.name);
  EXPECT_EQ(names, (std::vector<std::string>{"alpha", "mid-0", "mid-1", "zeta"}));

  ASSERT_TRUE(store_->DeleteFunction("acme", "mid-0").ok());
  EXPECT_EQ(store_->DeleteFunction("acme", "mid-0").code(), Code::kNotFound);
  EXPECT_EQ(store_->GetFunction("acme", "mid-0").status().code(), Code::kNotFound);
  list = store_->ListFunctions("acme");
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->size(), 3u);
  // Re-creating a deleted function starts again at version 1.
  ASSERT_TRUE(store_->CreateFunction(Function("mid-0", Sha('a'), 9)).ok());
  EXPECT_EQ(store_->GetFunction("acme", "mid-0")->version, 1);
}

TEST_F(StoreTest, FunctionsUsingImage) {
  ASSERT_TRUE(store_->CreateFunction(Function("b-fn", Sha('a'), 1)).ok());
  ASSERT_TRUE(store_->CreateFunction(Function("a-fn", Sha('a'), 1)).ok());
  ASSERT_TRUE(store_->CreateFunction(Function("other", Sha('b'), 1)).ok());
  auto users = store_->FunctionsUsingImage("acme", Sha('a'));
  ASSERT_TRUE(users.ok());
  EXPECT_EQ(*users, (std::vector<std::string>{"a-fn", "b-fn"}));
  auto none = store_->FunctionsUsingImage("acme", Sha('c'));
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());

  // Moving a function to another image moves it out of the list.
  ASSERT_TRUE(store_->UpdateFunction("acme", Function("b-fn", Sha('b'), 1).spec, 2).ok());
  users = store_->FunctionsUsingImage("acme", Sha('a'));
  ASSERT_TRUE(users.ok());
  EXPECT_EQ(*users, std::vector<std::string>{"a-fn"});
  users = store_->FunctionsUsingImage("acme", Sha('b'));
  EXPECT_EQ(*users, (std::vector<std::string>{"b-fn", "other"}));
  ASSERT_TRUE(store_->DeleteFunction("acme", "a-fn").ok());
  EXPECT_TRUE(store_->FunctionsUsingImage("acme", Sha('a'))->empty());
}

TEST_F(StoreTest, NewPidMonotonicUniqueAndDurableAcrossReopen) {
  std::vector<int64_t> pids;
  for (int i = 0; i < 20; ++i) {
    auto p = store_->NewPid();
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    if (!pids.empty()) {
      EXPECT_GT(*p, pids.back());
    }
    pids.push_back(*p);
  }
  EXPECT_GT(pids.front(), 0);
  Reopen();
  auto after = store_->NewPid();
  ASSERT_TRUE(after.ok());
  EXPECT_GT(*after, pids.back()) << "a pid handed out before the reopen was reused";
}

TEST_F(StoreTest, NewPidUniqueUnderConcurrency) {
  std::mutex mu;
  std::set<int64_t> seen;
  std::atomic<int> errors{0}, dups{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        auto p = store_->NewPid();
        if (!p.ok()) {
          ++errors;
          continue;
        }
        std::lock_guard lock(mu);
        if (!seen.insert(*p).second) ++dups;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(dups.load(), 0);
  EXPECT_EQ(seen.size(), 400u);
}

TEST_F(StoreTest, RecordsSurviveCloseAndReopen) {
  ASSERT_TRUE(store_->PutImage(Image('a', 1)).ok());
  ASSERT_TRUE(store_->CreateFunction(Function("f", Sha('a'), 1)).ok());
  ASSERT_TRUE(store_->UpdateFunction("acme", Function("f", Sha('a'), 1).spec, 2).ok());
  ExecutionRecord ex = Execution("e1", "f", 77, 10, ExecState::kSucceeded);
  ex.exit_code = 0;
  ex.stdout_data = std::string("out\0put", 7);
  ASSERT_TRUE(store_->InsertExecution(ex).ok());
  Reopen();
  auto img = store_->GetImage("acme", Sha('a'));
  ASSERT_TRUE(img.ok()) << img.status().ToString();
  auto fn = store_->GetFunction("acme", "f");
  ASSERT_TRUE(fn.ok());
  EXPECT_EQ(fn->version, 2);
  auto got = store_->GetExecution("e1");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->state, ExecState::kSucceeded);
  EXPECT_EQ(got->stdout_data, std::string("out\0put", 7));
  ASSERT_TRUE(got->exit_code.has_value());
  EXPECT_EQ(*got->exit_code, 0);
}

TEST_F(StoreTest, ExecutionInsertUpdateGetWithNullVersusZeroExitCode) {
  ExecutionRecord ex = Execution("e1", "f", 42, 1000);
  ASSERT_FALSE(ex.exit_code.has_value());
  ASSERT_TRUE(store_->InsertExecution(ex).ok());
  auto got = store_->GetExecution("e1");
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_FALSE(got->exit_code.has_value()) << "no exit code must stay null, not become 0";
  EXPECT_EQ(got->state, ExecState::kPending);
  EXPECT_EQ(got->pid, 42);
  EXPECT_EQ(got->ppid, 1);
  EXPECT_EQ(got->function_version, 2);
  EXPECT_EQ(got->domain, "berth-e1");
  EXPECT_EQ(got->node, "local");

  ex.state = ExecState::kSucceeded;
  ex.exit_code = 0;
  ex.signal = 0;
  ex.duration_ms = 321;
  ex.timings.prepare_ms = 10;
  ex.timings.boot_ms = 20;
  ex.timings.run_ms = 30;
  ex.timings.cleanup_ms = 40;
  ex.timings.total_ms = 100;
  ex.finished_ms = 2000;
  ex.output_truncated = true;
  ex.error_code = "";
  ASSERT_TRUE(store_->UpdateExecution(ex).ok());
  got = store_->GetExecution("e1");
  ASSERT_TRUE(got.ok());
  ASSERT_TRUE(got->exit_code.has_value()) << "exit code 0 must not read back as null";
  EXPECT_EQ(*got->exit_code, 0);
  EXPECT_EQ(got->state, ExecState::kSucceeded);
  EXPECT_EQ(got->duration_ms, 321);
  EXPECT_EQ(got->timings.prepare_ms, 10);
  EXPECT_EQ(got->timings.boot_ms, 20);
  EXPECT_EQ(got->timings.run_ms, 30);
  EXPECT_EQ(got->timings.cleanup_ms, 40);
  EXPECT_EQ(got->timings.total_ms, 100);
  EXPECT_EQ(got->finished_ms, 2000);
  EXPECT_EQ(got->created_ms, 1000);
  EXPECT_TRUE(got->output_truncated);

  ex.state = ExecState::kFailed;
  ex.exit_code = -1;
  ex.signal = 9;
  ex.error_code = "killed";
  ex.error = "signal 9";
  ASSERT_TRUE(store_->UpdateExecution(ex).ok());
  got = store_->GetExecution("e1");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got->exit_code, -1);
  EXPECT_EQ(got->signal, 9);
  EXPECT_EQ(got->error_code, "killed");
  EXPECT_EQ(got->error, "signal 9");
  EXPECT_EQ(got->state, ExecState::kFailed);

  // Updating must not duplicate the record.
  auto list = store_->ListExecutions("acme", "", 100);
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->size(), 1u);

  EXPECT_EQ(store_->GetExecution("nope").status().code(), Code::kNotFound);
}

TEST_F(StoreTest, InsertingADuplicateExecutionFails) {
  ASSERT_TRUE(store_->InsertExecution(Execution("e1", "f", 1, 1)).ok());
  EXPECT_FALSE(store_->InsertExecution(Execution("e1", "f", 2, 1)).ok()) << "duplicate id";
  EXPECT_FALSE(store_->InsertExecution(Execution("e2", "f", 1, 1)).ok()) << "duplicate pid";
  EXPECT_EQ(store_->GetExecution("e1")->pid, 1);
}

TEST_F(StoreTest, BinaryOutputRoundTripsByteForByte) {
  std::string out;
  for (int i = 0; i < 256; ++i) out.push_back(static_cast<char>(i));
  out += std::string("\0\0\xff\xfe\xc3(\xed\xa0\x80 end", 13);
  std::string err = std::string("\x80\x81", 2) + std::string(100'000, '\0') + "tail";
  ExecutionRecord ex = Execution("bin", "f", 5, 1, ExecState::kFailed);
  ex.stdout_data = out;
  ex.stderr_data = err;
  ex.exit_code = 1;
  ASSERT_TRUE(store_->InsertExecution(ex).ok());
  auto got = store_->GetExecution("bin");
  ASSERT_TRUE(got.ok());
  ASSERT_EQ(got->stdout_data.size(), out.size());
  EXPECT_TRUE(got->stdout_data == out);
  ASSERT_EQ(got->stderr_data.size(), err.size());
  EXPECT_TRUE(got->stderr_data == err);

  // Empty output stays empty (not null / missing).
  ExecutionRecord e2 = Execution("empty", "f", 6, 1);
  ASSERT_TRUE(store_->InsertExecution(e2).ok());
  auto g2 = store_->GetExecution("empty");
  ASSERT_TRUE(g2.ok());
  EXPECT_EQ(g2->stdout_data, "");
  EXPECT_EQ(g2->stderr_data, "");
}

TEST_F(StoreTest, ListExecutionsByFunctionNewestFirstWithLimit) {
  int64_t pid = 100;
  for (int64_t created : {300, 100, 500, 200, 400}) {
    ASSERT_TRUE(store_->InsertExecution(Execution("f-" + std::to_string(created), "f", pid++, created)).ok());
  }
  ASSERT_TRUE(store_->InsertExecution(Execution("g-1", "g", pid++, 1000)).ok());
  ASSERT_TRUE(store_->InsertExecution(Execution("g-2", "g", pid++, 50)).ok());
  // Two with the same timestamp: the later pid is newer.
  ASSERT_TRUE(store_->InsertExecution(Execution("f-tie-a", "f", 900, 600)).ok());
  ASSERT_TRUE(store_->InsertExecution(Execution("f-tie-b", "f", 901, 600)).ok());

  auto ids = [](const std::vector<ExecutionRecord>& v) {
    std::vector<std::string> out;
    for (const auto& e : v) out.push_back(e.id);
    return out;
  };
  auto top3 = store_->ListExecutions("acme", "f", 3);
  ASSERT_TRUE(top3.ok());
  EXPECT_EQ(ids(*top3), (std::vector<std::string>{"f-tie-b", "f-tie-a", "f-500"}));
  auto all_f = store_->ListExecutions("acme", "f", 100);
  ASSERT_TRUE(all_f.ok());
  EXPECT_EQ(ids(*all_f),
            (std::vector<std::string>{"f-tie-b", "f-tie-a", "f-500", "f-400", "f-300", "f-200", "f-100"}));
  auto g = store_->ListExecutions("acme", "g", 10);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(ids(*g), (std::vector<std::string>{"g-1", "g-2"}));
  auto everything = store_->ListExecutions("acme", "", 4);
  ASSERT_TRUE(everything.ok());
  EXPECT_EQ(ids(*everything), (std::vector<std::string>{"g-1", "f-tie-b", "f-tie-a", "f-500"}));
  auto none = store_->ListExecutions("acme", "nobody", 10);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  auto zero = store_->ListExecutions("acme", "f", 0);
  ASSERT_TRUE(zero.ok());
  EXPECT_TRUE(zero->empty());
}

TEST_F(StoreTest, ListUnfinishedReturnsOnlyPendingStartingRunning) {
  const std::vector<ExecState> states = {ExecState::kPending,   ExecState::kStarting, ExecState::kRunning,
                                         ExecState::kSucceeded, ExecState::kFailed,   ExecState::kTimedOut,
                                         ExecState::kError,     ExecState::kKilled,   ExecState::kLost};
  int64_t pid = 10;
  for (ExecState s : states) {
    ASSERT_TRUE(store_->InsertExecution(Execution(std::string("x-") + ExecStateName(s), "f", pid--, 1, s)).ok());
  }
  auto unfinished = store_->ListUnfinishedExecutions();
  ASSERT_TRUE(unfinished.ok()) << unfinished.status().ToString();
  std::vector<std::string> ids;
  for (const auto& e : *unfinished) ids.push_back(e.id);
  // Ordered by pid: running (8) < starting (9) < pending (10).
  EXPECT_EQ(ids, (std::vector<std::string>{"x-running", "x-starting", "x-pending"}));
  for (const auto& e : *unfinished) EXPECT_FALSE(IsTerminal(e.state)) << e.id;

  // Finishing one removes it from the list.
  ExecutionRecord r = *store_->GetExecution("x-running");
  r.state = ExecState::kSucceeded;
  r.exit_code = 0;
  ASSERT_TRUE(store_->UpdateExecution(r).ok());
  unfinished = store_->ListUnfinishedExecutions();
  ASSERT_TRUE(unfinished.ok());
  EXPECT_EQ(unfinished->size(), 2u);
}

TEST_F(StoreTest, WalModeIsOn) {
  ASSERT_TRUE(store_->PutImage(Image('a', 1)).ok());
  EXPECT_TRUE(Env::Default()->Exists(db_path_ + "-wal")) << "no -wal file next to the open database";
  auto r = Env::Default()->Run({"sqlite3", db_path_, "PRAGMA journal_mode"}, "", 30'000);
  if (!r.ok() && r.status().code() == Code::kUnavailable) GTEST_SKIP() << "sqlite3 CLI not installed";
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->exit_code, 0) << r->err;
  EXPECT_EQ(FirstLine(r->out), "wal");
  // An external reader sees the committed record while the store is open.
  auto count = Env::Default()->Run({"sqlite3", db_path_, "SELECT count(*) FROM images"}, "", 30'000);
  ASSERT_TRUE(count.ok());
  EXPECT_EQ(FirstLine(count->out), "1") << count->err;
}

TEST_F(StoreTest, FreshDatabaseIsAtTheCurrentSchemaVersion) {
  auto v = store_->SchemaVersion();
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(*v, Store::kSchemaVersion);
  Reopen();
  EXPECT_EQ(*store_->SchemaVersion(), Store::kSchemaVersion);
}

TEST_F(StoreTest, FunctionsAndImagesArePerTenant) {
  ImageMeta a = Image('a', 1, "mine");
  ImageMeta b = Image('a', 2, "theirs");
  b.tenant = "other";
  ASSERT_TRUE(store_->PutImage(a).ok());
  ASSERT_TRUE(store_->PutImage(b).ok());
  EXPECT_EQ(*store_->ImageRecordCount(Sha('a')), 2);
  EXPECT_EQ(store_->GetImage("acme", Sha('a'))->name, "mine");
  EXPECT_EQ(store_->GetImage("other", Sha('a'))->name, "theirs");
  EXPECT_EQ(store_->GetImage("nobody", Sha('a')).status().code(), Code::kNotFound);
  EXPECT_EQ(store_->ListImages("other")->size(), 1u);
  ASSERT_TRUE(store_->DeleteImage("acme", Sha('a')).ok());
  EXPECT_EQ(store_->DeleteImage("acme", Sha('a')).code(), Code::kNotFound);
  EXPECT_EQ(*store_->ImageRecordCount(Sha('a')), 1) << "the other tenant's record stays";
  EXPECT_TRUE(store_->GetImage("other", Sha('a')).ok());

  FunctionRecord mine = Function("same", Sha('a'), 1);
  FunctionRecord theirs = Function("same", Sha('b'), 2);
  theirs.tenant = "other";
  ASSERT_TRUE(store_->CreateFunction(mine).ok());
  ASSERT_TRUE(store_->CreateFunction(theirs).ok()) << "names are unique per tenant only";
  EXPECT_EQ(store_->CreateFunction(theirs).code(), Code::kAlreadyExists);
  EXPECT_EQ(store_->GetFunction("acme", "same")->spec.image, Sha('a'));
  EXPECT_EQ(store_->GetFunction("other", "same")->spec.image, Sha('b'));
  EXPECT_EQ(store_->ListFunctions("acme")->size(), 1u);
  EXPECT_EQ(*store_->FunctionsUsingImage("other", Sha('a')), std::vector<std::string>{});
  auto upd = store_->UpdateFunction("nobody", mine.spec, 5);
  EXPECT_EQ(upd.status().code(), Code::kNotFound);
  EXPECT_EQ(store_->DeleteFunction("nobody", "same").code(), Code::kNotFound);
  ASSERT_TRUE(store_->DeleteFunction("other", "same").ok());
  EXPECT_TRUE(store_->GetFunction("acme", "same").ok());

  ExecutionRecord ex = Execution("e-other", "same", 7, 1);
  ex.tenant = "other";
  ASSERT_TRUE(store_->InsertExecution(ex).ok());
  ASSERT_TRUE(store_->InsertExecution(Execution("e-acme", "same", 8, 2)).ok());
  auto acme = store_->ListExecutions("acme", "", 10);
  ASSERT_TRUE(acme.ok());
  ASSERT_EQ(acme->size(), 1u);
  EXPECT_EQ((*acme)[0].id, "e-acme");
  EXPECT_EQ(store_->ListExecutions("other", "same", 10)->size(), 1u);
}

TokenRecord Token(const std::string& id, const std::string& tenant, const std::string& sha, int64_t created) {
  TokenRecord t;
  t.id = id;
  t.tenant = tenant;
  t.name = "n-" + id;
  t.sha256 = sha;
  t.created_ms = created;
  return t;
}

TEST_F(StoreTest, TokensInsertFindListRevoke) {
  EXPECT_EQ(*store_->TokenCount(), 0);
  TokenRecord admin = Token("t1", "default", Sha('1'), 10);
  admin.admin = true;
  ASSERT_TRUE(store_->PutTenant("default", 10).ok());
  ASSERT_TRUE(store_->PutTenant("default", 11).ok()) << "insert or keep";
  ASSERT_TRUE(store_->InsertToken(admin).ok());
  ASSERT_TRUE(store_->InsertToken(Token("t2", "acme", Sha('2'), 20)).ok());
  ASSERT_TRUE(store_->InsertToken(Token("t3", "acme", Sha('3'), 30)).ok());
  EXPECT_EQ(store_->InsertToken(Token("t4", "acme", Sha('3'), 40)).code(), Code::kAlreadyExists)
      << "hashes are unique";
  EXPECT_EQ(*store_->TokenCount(), 3);

  auto found = store_->FindTokenBySha256(Sha('1'));
  ASSERT_TRUE(found.ok()) << found.status().ToString();
  EXPECT_EQ(found->id, "t1");
  EXPECT_EQ(found->tenant, "default");
  EXPECT_EQ(found->name, "n-t1");
  EXPECT_TRUE(found->admin);
  EXPECT_FALSE(found->revoked_ms.has_value());
  EXPECT_EQ(store_->FindTokenBySha256(Sha('9')).status().code(), Code::kNotFound);

  auto all = store_->ListTokens("");
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 3u);
  EXPECT_EQ((*all)[0].id, "t1");
  auto acme = store_->ListTokens("acme");
  ASSERT_EQ(acme->size(), 2u);
  EXPECT_FALSE((*acme)[0].admin);

  ASSERT_TRUE(store_->RevokeToken("t2", 100).ok());
  ASSERT_TRUE(store_->RevokeToken("t2", 200).ok()) << "revoking twice is fine";
  EXPECT_EQ(store_->RevokeToken("nope", 100).code(), Code::kNotFound);
  Reopen();
  auto revoked = store_->GetToken("t2");
  ASSERT_TRUE(revoked.ok());
  ASSERT_TRUE(revoked->revoked_ms.has_value());
  EXPECT_EQ(*revoked->revoked_ms, 100) << "the first revocation time is kept";
  EXPECT_TRUE(store_->FindTokenBySha256(Sha('2'))->revoked_ms.has_value());
  EXPECT_FALSE(store_->GetToken("t3")->revoked_ms.has_value());
  EXPECT_EQ(store_->GetToken("nope").status().code(), Code::kNotFound);
}

// The schema of berthd before tenancy (version 1: PRAGMA user_version 0),
// exactly as that berthd created it.
constexpr const char* kSchemaV1 = R"sql(
CREATE TABLE IF NOT EXISTS images (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, format TEXT NOT NULL, filesystem TEXT NOT NULL,
  size_bytes INTEGER NOT NULL, virtual_size_bytes INTEGER NOT NULL, tenant TEXT NOT NULL,
  created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS functions (
  name TEXT PRIMARY KEY, tenant TEXT NOT NULL, version INTEGER NOT NULL, spec TEXT NOT NULL,
  image TEXT NOT NULL, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS executions (
  id TEXT PRIMARY KEY, function TEXT NOT NULL, function_version INTEGER NOT NULL,
  tenant TEXT NOT NULL, image TEXT NOT NULL, state TEXT NOT NULL, node TEXT NOT NULL,
  domain TEXT NOT NULL, pid INTEGER NOT NULL UNIQUE, ppid INTEGER NOT NULL, exit_code INTEGER,
  signal INTEGER NOT NULL, error_code TEXT NOT NULL, error TEXT NOT NULL, stdout BLOB NOT NULL,
  stderr BLOB NOT NULL, output_truncated INTEGER NOT NULL, duration_ms INTEGER NOT NULL,
  timings TEXT NOT NULL, created_ms INTEGER NOT NULL, finished_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS executions_by_function ON executions(function, created_ms);
CREATE INDEX IF NOT EXISTS executions_by_state ON executions(state);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters(name, value) VALUES ('pid', 1);
)sql";

void ExecSql(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  char* err = nullptr;
  int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
  std::string msg = err ? err : "";
  sqlite3_free(err);
  sqlite3_close(db);
  ASSERT_EQ(rc, SQLITE_OK) << msg;
}

TEST(StoreMigrationTest, Version1DatabaseUpgradesInPlace) {
  TempDir tmp;
  const std::string path = tmp.path() + "/berth.db";
  const std::string a = Sha('a'), b = Sha('b');
  ExecSql(path, std::string(kSchemaV1) +
                    "INSERT INTO images VALUES ('" + a + "', 'busybox', 'qcow2', '', 100, 200, 'default', 5);"
                    "INSERT INTO images VALUES ('" + b + "', 'other', 'raw', 'ext4', 300, 300, 'default', 6);"
                    "INSERT INTO functions VALUES ('echo', 'default', 3, "
                    "'{\"entrypoint\":[\"/bin/echo\",\"hi\"],\"vcpus\":2,\"memory_mib\":192,\"timeout_ms\":5000,"
                    "\"env\":{\"K\":\"V\"},\"cwd\":\"/tmp\",\"network\":\"none\"}', '" + a + "', 7, 8);"
                    "INSERT INTO executions VALUES ('ex1', 'echo', 3, 'default', '" + a +
                    "', 'succeeded', 'local', 'berth-ex1', 41, 0, 0, 0, '', '', X'6869', X'', 0, 12, '{}', 9, 10);"
                    "UPDATE counters SET value = 41 WHERE name = 'pid';");

  auto opened = Store::Open(path);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  auto& store = *opened;
  EXPECT_EQ(*store->SchemaVersion(), Store::kSchemaVersion);

  // Everything the old berthd wrote is there, in tenant "default".
  auto images = store->ListImages("default");
  ASSERT_TRUE(images.ok()) << images.status().ToString();
  ASSERT_EQ(images->size(), 2u);
  EXPECT_EQ((*images)[0].id, a);
  EXPECT_EQ((*images)[0].name, "busybox");
  EXPECT_EQ((*images)[0].virtual_size_bytes, 200u);
  EXPECT_EQ((*images)[1].filesystem, "ext4");
  auto fn = store->GetFunction("default", "echo");
  ASSERT_TRUE(fn.ok()) << fn.status().ToString();
  EXPECT_EQ(fn->version, 3);
  EXPECT_EQ(fn->spec.image, a);
  EXPECT_EQ(fn->spec.entrypoint, (std::vector<std::string>{"/bin/echo", "hi"}));
  EXPECT_EQ(fn->spec.vcpus, 2u);
  EXPECT_EQ(fn->spec.env.at("K"), "V");
  EXPECT_EQ(fn->created_ms, 7);
  auto ex = store->GetExecution("ex1");
  ASSERT_TRUE(ex.ok());
  EXPECT_EQ(ex->stdout_data, "hi");
  EXPECT_EQ(ex->tenant, "default");
  EXPECT_EQ(store->ListExecutions("default", "echo", 10)->size(), 1u);
  EXPECT_GT(*store->NewPid(), 41) << "the pid counter survives";
  EXPECT_EQ(*store->TokenCount(), 0);

  // The new keys hold: names and images per tenant.
  FunctionRecord other;
  other.spec = fn->spec;
  other.tenant = "acme";
  ASSERT_TRUE(store->CreateFunction(other).ok());
  EXPECT_EQ(store->CreateFunction(*fn).code(), Code::kAlreadyExists);
  ImageMeta img = (*images)[0];
  img.tenant = "acme";
  ASSERT_TRUE(store->PutImage(img).ok());
  EXPECT_EQ(*store->ImageRecordCount(a), 2);
  ASSERT_TRUE(store->PutTenant("acme", 1).ok());

  // Opening again is a no-op.
  store.reset();
  auto again = Store::Open(path);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(*(*again)->SchemaVersion(), Store::kSchemaVersion);
  EXPECT_EQ((*again)->ListImages("default")->size(), 2u);
  EXPECT_EQ((*again)->ListFunctions("acme")->size(), 1u);
  EXPECT_TRUE((*again)->GetFunction("default", "echo").ok());
}

TEST(StoreMigrationTest, NewerSchemaIsRefused) {
  TempDir tmp;
  const std::string path = tmp.path() + "/berth.db";
  ExecSql(path, "CREATE TABLE future (x INTEGER); PRAGMA user_version = 99;");
  auto opened = Store::Open(path);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.status().code(), Code::kFailedPrecondition) << opened.status().ToString();
}

// The schema of berthd with tenancy, before processes (version 2), exactly as
// that berthd created it.
constexpr const char* kSchemaV2 = R"sql(
CREATE TABLE IF NOT EXISTS tenants (name TEXT PRIMARY KEY, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
  id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT NULL, sha256 TEXT NOT NULL UNIQUE,
  admin INTEGER NOT NULL, created_ms INTEGER NOT NULL, revoked_ms INTEGER);
CREATE INDEX IF NOT EXISTS tokens_by_tenant ON tokens(tenant, created_ms);
CREATE TABLE IF NOT EXISTS images (
  tenant TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL, format TEXT NOT NULL, filesystem TEXT NOT NULL,
  size_bytes INTEGER NOT NULL, virtual_size_bytes INTEGER NOT NULL, created_ms INTEGER NOT NULL,
  PRIMARY KEY (tenant, id));
CREATE INDEX IF NOT EXISTS images_by_id ON images(id);
CREATE TABLE IF NOT EXISTS functions (
  tenant TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, spec TEXT NOT NULL,
  image TEXT NOT NULL, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL, PRIMARY KEY (tenant, name));
CREATE INDEX IF NOT EXISTS functions_by_image ON functions(image);
CREATE TABLE IF NOT EXISTS executions (
  id TEXT PRIMARY KEY, function TEXT NOT NULL, function_version INTEGER NOT NULL,
  tenant TEXT NOT NULL, image TEXT NOT NULL, state TEXT NOT NULL, node TEXT NOT NULL,
  domain TEXT NOT NULL, pid INTEGER NOT NULL UNIQUE, ppid INTEGER NOT NULL, exit_code INTEGER,
  signal INTEGER NOT NULL, error_code TEXT NOT NULL, error TEXT NOT NULL, stdout BLOB NOT NULL,
  stderr BLOB NOT NULL, output_truncated INTEGER NOT NULL, duration_ms INTEGER NOT NULL,
  timings TEXT NOT NULL, created_ms INTEGER NOT NULL, finished_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS executions_by_function ON executions(function, created_ms);
CREATE INDEX IF NOT EXISTS executions_by_tenant ON executions(tenant, created_ms);
CREATE INDEX IF NOT EXISTS executions_by_state ON executions(state);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters(name, value) VALUES ('pid', 1);
)sql";

TEST(StoreMigrationTest, Version2DatabaseGainsProcessColumnsAndKeepsItsRows) {
  TempDir tmp;
  const std::string path = tmp.path() + "/v2.db";
  ExecSql(path, std::string(kSchemaV2) +
                    "INSERT INTO executions VALUES ('e1','fn',1,'acme','img','booting','local','berth-e1',7,1,NULL,0,"
                    "'','',X'',X'',0,0,'{\"boot_ms\":12}',100,0);"
                    "INSERT INTO executions VALUES ('e2','fn',1,'acme','img','succeeded','local','berth-e2',8,1,0,0,"
                    "'','',X'6869',X'',0,5,'{}',200,300);"
                    "PRAGMA user_version = 2;");
  auto store = Store::Open(path);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  EXPECT_EQ(*(*store)->SchemaVersion(), Store::kSchemaVersion);
  auto e1 = (*store)->GetExecution("e1");
  ASSERT_TRUE(e1.ok()) << e1.status().ToString();
  EXPECT_EQ(e1->state, ExecState::kStarting) << "booting is now starting";
  EXPECT_EQ(e1->name, "fn") << "old records are named after their function";
  EXPECT_EQ(e1->kind, ProcKind::kRun);
  EXPECT_EQ(e1->timings.boot_ms, 12);
  auto e2 = (*store)->GetExecution("e2");
  ASSERT_TRUE(e2.ok());
  EXPECT_EQ(e2->stdout_data, "hi");
  // The new columns are writable.
  e2->userdata = "ud";
  e2->console = "console text";
  e2->console_truncated = true;
  ASSERT_TRUE((*store)->UpdateExecution(*e2).ok());
  EXPECT_EQ((*store)->GetExecution("e2")->console, "console text");
  // Opening again is a no-op.
  store->reset();
  auto again = Store::Open(path);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ((*again)->GetExecution("e2")->userdata, "ud");
}

TEST_F(StoreTest, ProcessFieldsRoundTrip) {
  ExecutionRecord ex = Execution("p1", "", 42, 10, ExecState::kRunning);
  ex.name = "webserver01";
  ex.kind = ProcKind::kInstance;
  ex.userdata = "#cloud-config\n";
  ex.spec.command = {"/bin/sh", "-c", "sleep 1"};
  ex.spec.env = {{"A", "1"}};
  ex.spec.vcpus = 2;
  ex.spec.memory_mib = 512;
  ex.spec.timeout_ms = 0;
  ex.spec.cwd = "/srv";
  ex.spec.boot = BootMode::kDisk;
  ex.timings.queue_ms = 3;
  ex.timings.agent_ready_at = 99;
  ex.timings.start = "template";
  ASSERT_TRUE(store_->InsertExecution(ex).ok());
  auto got = store_->GetExecutionByPid("acme", 42);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->name, "webserver01");
  EXPECT_EQ(got->kind, ProcKind::kInstance);
  EXPECT_EQ(got->userdata, "#cloud-config\n");
  EXPECT_EQ(got->spec.command, ex.spec.command);
  EXPECT_EQ(got->spec.env, ex.spec.env);
  EXPECT_EQ(got->spec.vcpus, 2u);
  EXPECT_EQ(got->spec.memory_mib, 512u);
  EXPECT_EQ(got->spec.cwd, "/srv");
  EXPECT_EQ(got->spec.boot, BootMode::kDisk);
  EXPECT_EQ(got->timings.queue_ms, 3);
  EXPECT_EQ(got->timings.agent_ready_at, 99);
  EXPECT_EQ(got->timings.start, "template");
  // Another tenant's pid is not there, and says which field.
  auto other = store_->GetExecutionByPid("other", 42);
  EXPECT_EQ(other.status().code(), Code::kNotFound);
  EXPECT_EQ(other.status().field(), "pid");
}

TEST_F(StoreTest, ExecutionFilterCombinesFunctionStateTimeAndParent) {
  ASSERT_TRUE(store_->InsertExecution(Execution("a", "f", 2, 100, ExecState::kRunning)).ok());
  ASSERT_TRUE(store_->InsertExecution(Execution("b", "f", 3, 200, ExecState::kSucceeded)).ok());
  ExecutionRecord c = Execution("c", "g", 4, 300, ExecState::kFailed);
  c.ppid = 2;
  ASSERT_TRUE(store_->InsertExecution(c).ok());
  auto ids = [&](const ExecutionFilter& f) {
    std::vector<std::string> out;
    auto r = store_->ListExecutions("acme", f);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (r.ok()) for (const auto& e : *r) out.push_back(e.id);
    return out;
  };
  ExecutionFilter f;
  EXPECT_EQ(ids(f), (std::vector<std::string>{"c", "b", "a"}));
  f.function = "f";
  EXPECT_EQ(ids(f), (std::vector<std::string>{"b", "a"}));
  f.states = {ExecState::kSucceeded};
  EXPECT_EQ(ids(f), (std::vector<std::string>{"b"}));
  ExecutionFilter t;
  t.since_ms = 150;
  t.until_ms = 300;
  EXPECT_EQ(ids(t), (std::vector<std::string>{"b"}));
  ExecutionFilter kids;
  kids.ppid = 2;
  EXPECT_EQ(ids(kids), (std::vector<std::string>{"c"}));
  ExecutionFilter oldest;
  oldest.oldest_first = true;
  oldest.limit = 2;
  EXPECT_EQ(ids(oldest), (std::vector<std::string>{"a", "b"}));
  ExecutionFilter live;
  live.states = {ExecState::kPending, ExecState::kRunning};
  EXPECT_EQ(ids(live), (std::vector<std::string>{"a"}));
}

TEST_F(StoreTest, RetentionKeepsTheNewestAndEverythingUnfinished) {
  for (int i = 0; i < 10; ++i) {
    ExecutionRecord e = Execution("done" + std::to_string(i), "f", 10 + i, i, ExecState::kSucceeded);
    e.finished_ms = 1000 + i;
    ASSERT_TRUE(store_->InsertExecution(e).ok());
  }
  ASSERT_TRUE(store_->InsertExecution(Execution("live", "f", 50, 5, ExecState::kRunning)).ok());
  // Keep the newest 3; the cut-off (finished before 1005) spares done5..done9.
  auto n = store_->PruneFinishedExecutions(3, 1005);
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_EQ(*n, 5);
  EXPECT_FALSE(store_->GetExecution("done4").ok());
  EXPECT_TRUE(store_->GetExecution("done5").ok());
  EXPECT_TRUE(store_->GetExecution("live").ok());
  // No cut-off: only the newest 3 finished remain.
  n = store_->PruneFinishedExecutions(3, 0);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 2);
  EXPECT_TRUE(store_->GetExecution("done7").ok());
  EXPECT_FALSE(store_->GetExecution("done6").ok());
  EXPECT_TRUE(store_->GetExecution("live").ok());
}

}  // namespace
}  // namespace berth::manager

namespace berth::manager {
namespace {

TEST_F(StoreTest, ClaimsKeepTheirDiskAcrossReopen) {
  ClaimRow with_disk{"c1", "n1", 2, 512, 100, int64_t{3} << 30};
  ClaimRow unknown{"c2", "n2", 1, 256, 200};  // as an older berthd wrote it: no disk recorded
  ASSERT_TRUE(store_->InsertClaim(with_disk).ok());
  ASSERT_TRUE(store_->InsertClaim(unknown).ok());
  EXPECT_EQ(store_->InsertClaim(with_disk).code(), Code::kAlreadyExists);
  Reopen();
  auto c1 = store_->GetClaim("c1");
  ASSERT_TRUE(c1.ok()) << c1.status().ToString();
  EXPECT_EQ(c1->node, "n1");
  EXPECT_EQ(c1->vcpus, 2);
  EXPECT_EQ(c1->memory_mib, 512);
  EXPECT_EQ(c1->created_ms, 100);
  ASSERT_TRUE(c1->disk_bytes.has_value());
  EXPECT_EQ(*c1->disk_bytes, int64_t{3} << 30);
  EXPECT_FALSE(store_->GetClaim("c2")->disk_bytes.has_value());
  EXPECT_EQ(store_->GetClaim("nope").status().code(), Code::kNotFound);
  auto all = store_->ListClaims();
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0].disk_bytes, std::optional<int64_t>(int64_t{3} << 30));
  EXPECT_EQ((*all)[1].disk_bytes, std::nullopt);
  ASSERT_TRUE(store_->DeleteClaim("c1").ok());
  EXPECT_EQ(store_->GetClaim("c1").status().code(), Code::kNotFound);
}

// A record whose claim is still held (its node was away when it ended) is
// what lets the claim go later: retention leaves it.
TEST_F(StoreTest, RetentionSparesRecordsWhoseClaimIsHeld) {
  for (int i = 0; i < 3; ++i) {
    ExecutionRecord e = Execution("old" + std::to_string(i), "f", 10 + i, i, ExecState::kLost);
    e.finished_ms = 1000 + i;
    ASSERT_TRUE(store_->InsertExecution(e).ok());
  }
  ASSERT_TRUE(store_->InsertClaim(ClaimRow{"old1", "n1", 1, 256, 5, 0}).ok());
  auto n = store_->PruneFinishedExecutions(0, 0);
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_EQ(*n, 2);
  EXPECT_TRUE(store_->GetExecution("old1").ok());
  ASSERT_TRUE(store_->DeleteClaim("old1").ok());
  EXPECT_EQ(*store_->PruneFinishedExecutions(0, 0), 1);
}

// A version 5 database (claims without a disk column) opens at the current
// version with its claims intact; their disk reads as unknown, new rows store it.
TEST(StoreMigrationTest, Version5ClaimsGainADiskColumnAndKeepTheirRows) {
  TempDir tmp;
  const std::string path = tmp.path() + "/v5.db";
  {
    auto fresh = Store::Open(path);  // today's schema, then the claims table as version 5 had it
    ASSERT_TRUE(fresh.ok()) << fresh.status().ToString();
  }
  ExecSql(path,
          "DROP TABLE claims;"
          "CREATE TABLE claims (id TEXT PRIMARY KEY, node TEXT NOT NULL, vcpus INTEGER NOT NULL, "
          "memory_mib INTEGER NOT NULL, created_ms INTEGER NOT NULL);"
          "CREATE INDEX claims_by_node ON claims(node);"
          "INSERT INTO claims VALUES ('adopted', 'n1', 2, 384, 77);"
          "PRAGMA user_version = 5;");
  auto store = Store::Open(path);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  EXPECT_EQ(*(*store)->SchemaVersion(), Store::kSchemaVersion);
  auto claims = (*store)->ListClaims();
  ASSERT_TRUE(claims.ok()) << claims.status().ToString();
  ASSERT_EQ(claims->size(), 1u);
  EXPECT_EQ((*claims)[0].id, "adopted");
  EXPECT_EQ((*claims)[0].node, "n1");
  EXPECT_EQ((*claims)[0].vcpus, 2);
  EXPECT_EQ((*claims)[0].memory_mib, 384);
  EXPECT_EQ((*claims)[0].created_ms, 77);
  EXPECT_FALSE((*claims)[0].disk_bytes.has_value());
  ASSERT_TRUE((*store)->InsertClaim(ClaimRow{"new", "n1", 1, 256, 78, 4096}).ok());
  EXPECT_EQ(*(*store)->GetClaim("new")->disk_bytes, 4096);
  // Opening again is a no-op.
  store->reset();
  auto again = Store::Open(path);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ((*again)->ListClaims()->size(), 2u);
  EXPECT_EQ(*(*again)->GetClaim("new")->disk_bytes, 4096);
}

}  // namespace
}  // namespace berth::manager
