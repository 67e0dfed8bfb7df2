// berth-bench-event-ingest: durable event ingest through events::EventLog
// (group commit, WAL, synchronous=FULL) with N concurrent publishers, against
// a raw SQLite loop on the same disk that inserts one row and commits per
// event with the same settings. Rounds interleave A (EventLog) and B (raw)
// so drifts of the machine hit both alike. Figures are medians over rounds.
//
//   RESULT <name> value=<v> unit=<u> baseline=<b> ratio=<v/b> goal=<g>
//
// Here higher is better: goal is the SMALLEST ratio that counts as a pass.
#include <sqlite3.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "common/env.h"
#include "events/event_log.h"

namespace {

using Clock = std::chrono::steady_clock;
using berth::events::Event;
using berth::events::EventLog;
using berth::events::EventLogOptions;

double SecondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n == 0 ? 0 : (n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2);
}

std::string Payload(int i) {
  // About 200 bytes of JSON, like a small webhook body.
  std::string p = R"({"order_id":)" + std::to_string(i) + R"(,"customer":"c-1234","items":[{"sku":"ABC-1","qty":2}],)";
  p += R"("note":")" + std::string(120, 'x') + R"("})";
  return p;
}

// A: N publishers for `seconds`, each publishing and waiting for its commit.
double RunEventLog(const std::string& dir, int round, int publishers, double seconds, bool with_trigger,
                   double* avg_batch) {
  EventLogOptions opts;
  opts.db_path = dir + "/events-" + std::to_string(round) + (with_trigger ? "-trg" : "") + ".db";
  auto log = EventLog::Open(berth::Env::Default(), opts);
  if (!log.ok()) {
    std::fprintf(stderr, "open: %s\n", log.status().ToString().c_str());
    std::exit(1);
  }
  if (with_trigger) {
    berth::events::Trigger t;
    t.tenant = "bench";
    t.name = "ingest";
    t.topic = "orders.created";
    t.function = "consumer";
    if (!(*log)->CreateTrigger(t).ok()) std::exit(1);
  }
  std::atomic<bool> stop{false};
  std::atomic<int64_t> total{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  auto start = Clock::now();
  for (int t = 0; t < publishers; ++t) {
    threads.emplace_back([&, t] {
      int i = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        Event e;
        e.tenant = "bench";
        e.topic = "orders.created";
        e.content_type = "application/json";
        e.payload = Payload(t * 1'000'000 + i++);
        if ((*log)->Publish(e).ok()) {
          total.fetch_add(1, std::memory_order_relaxed);
        } else {
          failures.fetch_add(1);
        }
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& th : threads) th.join();
  double elapsed = SecondsSince(start);
  auto stats = (*log)->stats();
  *avg_batch = stats.write_batches ? double(stats.write_items) / double(stats.write_batches) : 0;
  if (failures.load() > 0) {
    std::fprintf(stderr, "%d publishes failed\n", failures.load());
    std::exit(1);
  }
  return double(total.load()) / elapsed;
}

// B: one thread, INSERT + COMMIT per event, WAL + synchronous=FULL.
double RunRawSqlite(const std::string& dir, int round, double seconds) {
  std::string path = dir + "/raw-" + std::to_string(round) + ".db";
  sqlite3* db = nullptr;
  if (sqlite3_open(path.c_str(), &db) != SQLITE_OK) std::exit(1);
  sqlite3_exec(db,
               "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
               "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL,"
               " topic TEXT NOT NULL, content_type TEXT NOT NULL, payload BLOB NOT NULL, idempotency_key TEXT,"
               " created_ms INTEGER NOT NULL);",
               nullptr, nullptr, nullptr);
  sqlite3_stmt* st = nullptr;
  sqlite3_prepare_v2(db,
                     "INSERT INTO events(tenant, topic, content_type, payload, idempotency_key, created_ms) "
                     "VALUES ('bench', 'orders.created', 'application/json', ?, NULL, ?)",
                     -1, &st, nullptr);
  int64_t n = 0;
  auto start = Clock::now();
  auto end = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  while (Clock::now() < end) {
    std::string p = Payload(int(n));
    sqlite3_bind_blob(st, 1, p.data(), int(p.size()), SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, berth::Env::Default()->NowUnixMs());
    // Autocommit: each INSERT is its own transaction and commit (one WAL fsync).
    if (sqlite3_step(st) != SQLITE_DONE) {
      std::fprintf(stderr, "raw insert: %s\n", sqlite3_errmsg(db));
      std::exit(1);
    }
    sqlite3_reset(st);
    ++n;
  }
  double elapsed = SecondsSince(start);
  sqlite3_finalize(st);
  sqlite3_close(db);
  return double(n) / elapsed;
}

std::string Fmt(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Durable event ingest: EventLog (group commit) vs raw SQLite commit per event"};
  int rounds = 3;
  int publishers = 32;
  double seconds = 2.0;
  std::string dir;
  double goal = 0.5;
  app.add_option("--rounds", rounds, "measured rounds (A then B each)")->check(CLI::Range(1, 100));
  app.add_option("--publishers", publishers, "concurrent publishers through EventLog")->check(CLI::Range(1, 1024));
  app.add_option("--seconds", seconds, "length of each measurement")->check(CLI::Range(0.1, 60.0));
  app.add_option("--dir", dir, "folder for the databases (default: a new /var/tmp/berth-bench-events-*)");
  app.add_option("--goal", goal, "smallest ratio that passes, printed as goal=");
  CLI11_PARSE(app, argc, argv);

  bool own_dir = dir.empty();
  if (own_dir) {
    char tmpl[] = "/var/tmp/berth-bench-events-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) {
      std::perror("mkdtemp");
      return 1;
    }
    dir = tmpl;
  } else if (!berth::Env::Default()->CreateDirs(dir).ok()) {
    std::fprintf(stderr, "cannot create %s\n", dir.c_str());
    return 1;
  }
  std::printf("databases in %s; %d publishers; %.1f s per measurement; %d rounds\n", dir.c_str(), publishers,
              seconds, rounds);
  std::printf("%-6s %16s %16s %16s %10s %10s\n", "round", "eventlog ev/s", "+trigger ev/s", "raw commits/s",
              "avg batch", "ratio");
  std::vector<double> a, a_trig, b, batches;
  for (int r = 0; r < rounds; ++r) {
    double batch = 0, batch_trig = 0;
    double va = RunEventLog(dir, r, publishers, seconds, false, &batch);
    double vb = RunRawSqlite(dir, r, seconds);
    double vt = RunEventLog(dir, r, publishers, seconds, true, &batch_trig);
    a.push_back(va);
    b.push_back(vb);
    a_trig.push_back(vt);
    batches.push_back(batch);
    std::printf("%-6d %16.1f %16.1f %16.1f %10.1f %10.2f\n", r + 1, va, vt, vb, batch, va / vb);
  }
  double ma = Median(a), mb = Median(b), mt = Median(a_trig);
  std::printf("medians: eventlog %.1f ev/s (avg %.1f events per commit), with one trigger %.1f ev/s, raw %.1f commits/s\n",
              ma, Median(batches), mt, mb);
  std::printf("RESULT event_ingest_per_s value=%s unit=events/s baseline=%s ratio=%.2f goal=%s\n", Fmt(ma).c_str(),
              Fmt(mb).c_str(), ma / mb, Fmt(goal).c_str());
  std::printf("RESULT event_ingest_with_trigger_per_s value=%s unit=events/s baseline=%s ratio=%.2f goal=%s\n",
              Fmt(mt).c_str(), Fmt(mb).c_str(), mt / mb, Fmt(goal).c_str());
  if (own_dir) (void)berth::Env::Default()->RemoveTree(dir);
  return 0;
}
