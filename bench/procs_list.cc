// berth-bench-procs-list: latency of GET /v1/procs?all=1 and
// GET /v1/executions?limit=N with N execution records (default 10,000), next
// to a bare SQLite query for the same rows on the same database in the same
// run (issue 3).
//
// The records are seeded through manager::Store directly into a fresh data
// dir (finished function runs of one tenant, one function, a line of stdout
// each); then berthd starts on that data dir and the two routes are timed
// over HTTP (keep-alive, the admin token, full body read). The baseline opens
// the same berth.db read-only and runs the query berth runs (same columns,
// same WHERE/ORDER BY/LIMIT), reading every column of every row.
//   RESULT procs_list_ms      value=<median ms> unit=ms baseline=<sqlite ms> ratio=<..> goal=<g>
//   RESULT executions_list_ms ...
//   RESULT procs_list_p99_ms / executions_list_p99_ms ... (p99 over the rounds)
#include <signal.h>
#include <sqlite3.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/support/bench_support.h"
#include "common/ids.h"
#include "manager/store.h"

namespace {

using namespace berth::bench;
using json = nlohmann::json;

double P99(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[std::min(v.size() - 1, static_cast<size_t>(v.size() * 0.99))];
}

// The columns and order berth's Store::ListExecutions reads (manager/store.cc).
constexpr const char* kCols =
    "id, function, function_version, tenant, image, state, node, domain, pid, ppid, exit_code, signal, error_code, "
    "error, stdout, stderr, output_truncated, duration_ms, timings, created_ms, finished_ms, name, kind, userdata, "
    "spec, network";

// Milliseconds to run `sql` (tenant bound first, limit last) and read every column of every row.
double TimeQuery(sqlite3* db, const std::string& sql, int64_t limit, size_t* rows) {
  auto t0 = Clock::now();
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) != SQLITE_OK) Fail(std::string("prepare: ") + sqlite3_errmsg(db));
  sqlite3_bind_text(st, 1, "default", -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, limit);
  size_t n = 0, bytes = 0;
  while (sqlite3_step(st) == SQLITE_ROW) {
    for (int c = 0, cols = sqlite3_column_count(st); c < cols; ++c) {
      if (sqlite3_column_type(st, c) == SQLITE_INTEGER) {
        bytes += static_cast<size_t>(sqlite3_column_int64(st, c) & 1);
      } else {
        const void* p = sqlite3_column_blob(st, c);
        bytes += p ? static_cast<size_t>(sqlite3_column_bytes(st, c)) : 0;
      }
    }
    ++n;
  }
  sqlite3_finalize(st);
  *rows = n;
  double ms = MsBetween(t0, Clock::now());
  if (bytes == 0) Fail("the bare query read no data");  // and the reads are not optimised away
  return ms;
}

int Run(int records, int rounds, const std::string& berthd, const std::string& runtime_dir, double goal) {
  std::string id = berth::RandomHex(6);
  std::string tmp = "/tmp/berth-bench-procs-" + id, work = "/var/lib/berth/bench/procs-" + id;
  MustRun({"mkdir", "-p", tmp + "/data", work});
  std::string pool = "berth-bench-procs-" + id, log_pool = pool + "-logs";
  pid_t pid = -1;
  auto cleanup = [&] {
    StopBerthd(&pid);
    // A stopped berthd leaves running VMs to the next one (none here).
    TryRun({"sh", "-c",
            "for d in $(virsh -q -c qemu:///system list --name); do virsh -q -c qemu:///system dumpxml \"$d\" "
            "2>/dev/null | grep -q '" + work + "/' && virsh -q -c qemu:///system destroy \"$d\" >/dev/null 2>&1; done"});
    for (const auto& p : {pool, log_pool}) {
      TryRun({"virsh", "-q", "-c", "qemu:///system", "pool-destroy", p});
      TryRun({"virsh", "-q", "-c", "qemu:///system", "pool-undefine", p});
    }
    TryRun({"rm", "-rf", tmp, work});
  };
  try {
    // Seed: N finished runs, as berth writes them.
    {
      auto store = berth::manager::Store::Open(tmp + "/data/berth.db");
      Check(store.status(), "opening the store");
      Check((*store)->PutTenant("default", 1), "tenant");
      auto t0 = Clock::now();
      int64_t now = 1'700'000'000'000;
      for (int i = 0; i < records; ++i) {
        berth::manager::ExecutionRecord ex;
        ex.id = berth::RandomHex(8);
        auto p = (*store)->NewPid();
        Check(p.status(), "pid");
        ex.pid = *p;
        ex.ppid = 1;
        ex.function = "fn";
        ex.function_version = 1;
        ex.name = "fn";
        ex.tenant = "default";
        ex.image = std::string(64, 'a');
        ex.state = berth::manager::ExecState::kSucceeded;
        ex.exit_code = 0;
        ex.stdout_data = "hello from run " + std::to_string(i) + "\n";
        ex.node = "local";
        ex.domain = "berth-default-" + std::to_string(ex.pid) + "-" + ex.id.substr(0, 6);
        ex.duration_ms = 12;
        ex.created_ms = now + i * 10;
        ex.finished_ms = ex.created_ms + 900;
        ex.timings.total_ms = 900;
        Check((*store)->InsertExecution(ex), "inserting execution " + std::to_string(i));
      }
      std::printf("seeded %d execution records in %.1f s\n", records, MsBetween(t0, Clock::now()) / 1000);
    }
    std::string base;
    StartBerthd({berthd, tmp, runtime_dir, "qemu:///system", pool, work + "/pool", log_pool, work + "/logs"}, &pid,
                &base);

    sqlite3* db = nullptr;
    if (sqlite3_open_v2((tmp + "/data/berth.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
      Fail("opening berth.db read-only");
    }
    struct Case {
      const char* name;
      std::string url;
      std::string sql;
      const char* list_key;
      size_t expect;
    };
    std::string from = std::string("SELECT ") + kCols + " FROM executions WHERE tenant = ?";
    std::vector<Case> cases = {
        {"procs_list", base + "/v1/procs?all=1&limit=" + std::to_string(records), from + " ORDER BY pid ASC LIMIT ?",
         "procs", static_cast<size_t>(records) + 2},
        {"executions_list", base + "/v1/executions?limit=" + std::to_string(records),
         from + " ORDER BY created_ms DESC, pid DESC LIMIT ?", "executions", static_cast<size_t>(records)}};
    for (const auto& c : cases) {
      // One unmeasured round each (page cache, first-use allocations), checked for completeness.
      auto first = Http("GET", c.url);
      if (first.status != 200) Fail(std::string(c.name) + ": HTTP " + std::to_string(first.status) + " " + first.body);
      size_t got = json::parse(first.body)[c.list_key].size();
      if (got != c.expect) Fail(std::string(c.name) + ": " + std::to_string(got) + " entries, expected " + std::to_string(c.expect));
      size_t rows = 0;
      TimeQuery(db, c.sql, records, &rows);
      if (rows != static_cast<size_t>(records)) Fail("bare query returned " + std::to_string(rows) + " rows");

      std::vector<double> api, bare;
      size_t body_bytes = first.body.size();
      for (int r = 0; r < rounds; ++r) {
        CheckStop();
        auto t0 = Clock::now();
        auto res = Http("GET", c.url);
        api.push_back(MsBetween(t0, Clock::now()));
        if (res.status != 200) Fail(std::string(c.name) + ": HTTP " + std::to_string(res.status));
        bare.push_back(TimeQuery(db, c.sql, records, &rows));
      }
      std::printf("%s: %zu entries, %.1f MiB of JSON; API median %.1f ms p99 %.1f ms | bare SQLite median %.1f ms p99 %.1f ms\n",
                  c.name, got, body_bytes / 1048576.0, Median(api), P99(api), Median(bare), P99(bare));
      PrintResult(std::string(c.name) + "_ms", Median(api), "ms", Median(bare), goal);
      PrintResult(std::string(c.name) + "_p99_ms", P99(api), "ms", P99(bare), goal);
    }
    sqlite3_close(db);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "berth-bench-procs-list: %s\n", e.what());
    cleanup();
    return 1;
  }
  cleanup();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int records = 10'000, rounds = 20;
  double goal = 10;
  std::string berthd = std::string(BERTH_BINARY_DIR) + "/daemon/berthd";
  std::string runtime_dir = std::string(BERTH_BINARY_DIR) + "/runtime";
  CLI::App app{"berth-bench-procs-list: GET /v1/procs and /v1/executions with N records vs a bare SQLite query"};
  app.add_option("--records", records, "execution records to seed")->check(CLI::Range(1, 1'000'000))->capture_default_str();
  app.add_option("--rounds", rounds, "measured requests per route")->check(CLI::Range(1, 10'000))->capture_default_str();
  app.add_option("--berthd", berthd, "berthd binary")->capture_default_str();
  app.add_option("--runtime-dir", runtime_dir, "guest runtime folder (berthd wants one)")->capture_default_str();
  app.add_option("--goal", goal, "allowed API/bare-SQLite ratio printed as goal=")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  signal(SIGPIPE, SIG_IGN);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  return Run(records, rounds, berthd, runtime_dir, goal);
}
