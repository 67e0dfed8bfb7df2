#include "events/event_log.h"

#include <sqlite3.h>

#include <algorithm>
#include <memory>
#include <utility>

#include "common/ids.h"
#include "events/cron.h"
#include "events/filter.h"

namespace berth::events {
namespace {

using json = nlohmann::json;

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, topic TEXT NOT NULL,
  content_type TEXT NOT NULL, payload BLOB NOT NULL, idempotency_key TEXT, created_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_topic ON events(tenant, topic, id);
-- Keyed events, for the window-free dedupe of PublishSystemOnceDetached.
CREATE INDEX IF NOT EXISTS events_by_key ON events(tenant, topic, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS idempotency (
  tenant TEXT NOT NULL, topic TEXT NOT NULL, key TEXT NOT NULL, event_id INTEGER NOT NULL,
  created_ms INTEGER NOT NULL, PRIMARY KEY (tenant, topic, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS triggers (
  id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT NULL, topic TEXT NOT NULL, function TEXT NOT NULL,
  filter TEXT NOT NULL, enabled INTEGER NOT NULL, max_attempts INTEGER NOT NULL,
  backoff_initial_ms INTEGER NOT NULL, backoff_max_ms INTEGER NOT NULL, max_event_age_ms INTEGER NOT NULL,
  dead_letter_topic TEXT NOT NULL, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
  UNIQUE (tenant, name));
CREATE TABLE IF NOT EXISTS cron_triggers (
  id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT NULL, schedule TEXT NOT NULL, function TEXT NOT NULL,
  enabled INTEGER NOT NULL, max_attempts INTEGER NOT NULL, backoff_initial_ms INTEGER NOT NULL,
  backoff_max_ms INTEGER NOT NULL, max_event_age_ms INTEGER NOT NULL, dead_letter_topic TEXT NOT NULL,
  last_fired_ms INTEGER NOT NULL, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
  UNIQUE (tenant, name));
CREATE TABLE IF NOT EXISTS deliveries (
  id INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, event_id INTEGER NOT NULL,
  trigger_id TEXT NOT NULL, function TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL,
  max_attempts INTEGER NOT NULL, backoff_initial_ms INTEGER NOT NULL, backoff_max_ms INTEGER NOT NULL,
  max_event_age_ms INTEGER NOT NULL, dead_letter_topic TEXT NOT NULL, next_attempt_ms INTEGER NOT NULL,
  last_error TEXT NOT NULL, execution_ids TEXT NOT NULL, age_base_ms INTEGER NOT NULL,
  created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL, started_ms INTEGER NOT NULL,
  finished_ms INTEGER NOT NULL, redrive_of INTEGER NOT NULL, redriven_by INTEGER NOT NULL,
  dead_letter_event_id INTEGER NOT NULL);
-- One delivery per (event, trigger); re-drives are extra deliveries on purpose.
CREATE UNIQUE INDEX IF NOT EXISTS deliveries_once ON deliveries(event_id, trigger_id) WHERE redrive_of = 0;
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_attempt_ms);
CREATE INDEX IF NOT EXISTS deliveries_by_tenant ON deliveries(tenant, id);
-- Webhook sources; names are global because /hooks/<name> carries no tenant.
CREATE TABLE IF NOT EXISTS webhooks (
  id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT NULL UNIQUE, topic TEXT NOT NULL,
  secret TEXT NOT NULL, created_ms INTEGER NOT NULL);
PRAGMA user_version = 1;
)sql";

#define EVENT_COLS "id, tenant, topic, content_type, payload, idempotency_key, created_ms"
#define TRIGGER_COLS                                                                                  \
  "id, tenant, name, topic, function, filter, enabled, max_attempts, backoff_initial_ms, backoff_max_ms, " \
  "max_event_age_ms, dead_letter_topic, created_ms, updated_ms"
#define CRON_COLS                                                                                       \
  "id, tenant, name, schedule, function, enabled, max_attempts, backoff_initial_ms, backoff_max_ms, "  \
  "max_event_age_ms, dead_letter_topic, last_fired_ms, created_ms, updated_ms"
#define DELIVERY_COLS                                                                                  \
  "id, tenant, event_id, trigger_id, function, state, attempts, max_attempts, backoff_initial_ms, "   \
  "backoff_max_ms, max_event_age_ms, dead_letter_topic, next_attempt_ms, last_error, execution_ids, " \
  "age_base_ms, created_ms, updated_ms, started_ms, finished_ms, redrive_of, redriven_by, "           \
  "dead_letter_event_id"

Status ValidateTenant(const std::string& tenant) {
  if (tenant.empty() || tenant.size() > 100) return Status::InvalidArgument("tenant", "must be 1 to 100 characters");
  return Status::Ok();
}

Status ValidatePayload(const std::string& content_type, const std::string& payload, int64_t max_bytes) {
  if (content_type.size() > 200) return Status::InvalidArgument("content_type", "at most 200 characters");
  if (static_cast<int64_t>(payload.size()) > max_bytes) {
    return Status(Code::kResourceExhausted,
                  "payload of " + std::to_string(payload.size()) + " bytes exceeds the limit of " +
                      std::to_string(max_bytes),
                  "payload");
  }
  return Status::Ok();
}

Status ValidateTriggerSpec(const Trigger& t) {
  BERTH_RETURN_IF_ERROR(ValidateTenant(t.tenant));
  BERTH_RETURN_IF_ERROR(ValidateName(t.name, "name"));
  BERTH_RETURN_IF_ERROR(ValidateTopic(t.topic, /*allow_reserved=*/true));
  BERTH_RETURN_IF_ERROR(ValidateName(t.function, "function"));
  BERTH_RETURN_IF_ERROR(ValidateFilter(t.filter));
  return ValidateRetryPolicy(t.retry);
}

Status ValidateCronSpec(const CronTrigger& c, int64_t now_ms) {
  BERTH_RETURN_IF_ERROR(ValidateTenant(c.tenant));
  BERTH_RETURN_IF_ERROR(ValidateName(c.name, "name"));
  BERTH_RETURN_IF_ERROR(ValidateName(c.function, "function"));
  BERTH_ASSIGN_OR_RETURN(auto schedule, CronSchedule::Parse(c.schedule));
  if (!schedule.NextAfter(now_ms)) {
    return Status::InvalidArgument("schedule", "never fires within the next 10 years");
  }
  return ValidateRetryPolicy(c.retry);
}

std::string DeadLetterTopic(const Delivery& d) {
  return d.retry.dead_letter_topic.empty() ? "_dead." + d.function : d.retry.dead_letter_topic;
}

}  // namespace

// A cached prepared statement, bound positionally; reset on scope exit.
// Only used with db_mu_ held.
class EventLog::Stmt {
 public:
  Stmt(EventLog* log, const char* sql) : db_(log->db_), st_(log->Prepared(sql)) {}
  ~Stmt() {
    if (st_ != nullptr) {
      sqlite3_reset(st_);
      sqlite3_clear_bindings(st_);
    }
  }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  Stmt& Bind(const std::string& v) {
    sqlite3_bind_text(st_, ++idx_, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& BindBlob(const std::string& v) {
    sqlite3_bind_blob(st_, ++idx_, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& Bind(int64_t v) {
    sqlite3_bind_int64(st_, ++idx_, v);
    return *this;
  }
  Stmt& BindNull() {
    sqlite3_bind_null(st_, ++idx_);
    return *this;
  }
  int Step() { return st_ == nullptr ? SQLITE_ERROR : sqlite3_step(st_); }
  // Runs a statement that returns no rows.
  Status Run(const std::string& what) {
    int rc = Step();
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) return Error(what);
    return Status::Ok();
  }
  std::string Text(int col) const {
    auto* p = sqlite3_column_blob(st_, col);
    return p ? std::string(static_cast<const char*>(p), static_cast<size_t>(sqlite3_column_bytes(st_, col))) : "";
  }
  int64_t Int(int col) const { return sqlite3_column_int64(st_, col); }
  bool IsNull(int col) const { return sqlite3_column_type(st_, col) == SQLITE_NULL; }
  Status Error(const std::string& what) const {
    int ext = sqlite3_extended_errcode(db_);
    if (ext == SQLITE_CONSTRAINT_UNIQUE || ext == SQLITE_CONSTRAINT_PRIMARYKEY) {
      return Status::AlreadyExists(what + ": already exists");
    }
    return Status::Internal(what + ": " + sqlite3_errmsg(db_));
  }
  int changes() const { return sqlite3_changes(db_); }
  int64_t last_id() const { return sqlite3_last_insert_rowid(db_); }

  Event ToEvent() const {
    Event e;
    e.id = Int(0);
    e.tenant = Text(1);
    e.topic = Text(2);
    e.content_type = Text(3);
    e.payload = Text(4);
    if (!IsNull(5)) e.idempotency_key = Text(5);
    e.created_ms = Int(6);
    return e;
  }
  RetryPolicy ToRetry(int col) const {
    RetryPolicy p;
    p.max_attempts = static_cast<int>(Int(col));
    p.backoff_initial_ms = Int(col + 1);
    p.backoff_max_ms = Int(col + 2);
    p.max_event_age_ms = Int(col + 3);
    p.dead_letter_topic = Text(col + 4);
    return p;
  }
  Trigger ToTrigger() const {
    Trigger t;
    t.id = Text(0);
    t.tenant = Text(1);
    t.name = Text(2);
    t.topic = Text(3);
    t.function = Text(4);
    t.filter = json::parse(Text(5), nullptr, false);
    if (!t.filter.is_object()) t.filter = json::object();
    t.enabled = Int(6) != 0;
    t.retry = ToRetry(7);
    t.created_ms = Int(12);
    t.updated_ms = Int(13);
    return t;
  }
  CronTrigger ToCron() const {
    CronTrigger c;
    c.id = Text(0);
    c.tenant = Text(1);
    c.name = Text(2);
    c.schedule = Text(3);
    c.function = Text(4);
    c.enabled = Int(5) != 0;
    c.retry = ToRetry(6);
    c.last_fired_ms = Int(11);
    c.created_ms = Int(12);
    c.updated_ms = Int(13);
    return c;
  }
  Webhook ToWebhook() const {
    Webhook w;
    w.id = Text(0);
    w.tenant = Text(1);
    w.name = Text(2);
    w.topic = Text(3);
    w.secret = Text(4);
    w.created_ms = Int(5);
    return w;
  }
  Delivery ToDelivery() const {
    Delivery d;
    d.id = Int(0);
    d.tenant = Text(1);
    d.event_id = Int(2);
    d.trigger_id = Text(3);
    d.function = Text(4);
    d.state = ParseDeliveryState(Text(5)).value_or(DeliveryState::kPending);
    d.attempts = static_cast<int>(Int(6));
    d.retry = ToRetry(7);
    d.next_attempt_ms = Int(12);
    d.last_error = Text(13);
    auto ids = json::parse(Text(14), nullptr, false);
    if (ids.is_array()) {
      for (const auto& id : ids) {
        if (id.is_string()) d.execution_ids.push_back(id.get<std::string>());
      }
    }
    d.age_base_ms = Int(15);
    d.created_ms = Int(16);
    d.updated_ms = Int(17);
    d.started_ms = Int(18);
    d.finished_ms = Int(19);
    d.redrive_of = Int(20);
    d.redriven_by = Int(21);
    d.dead_letter_event_id = Int(22);
    return d;
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* st_;
  int idx_ = 0;
};

// Enabled and disabled triggers by (tenant, topic), mirrored from the table
// so the writer matches without a query per event.
struct EventLog::TriggerCache {
  std::map<std::pair<std::string, std::string>, std::vector<Trigger>> by_topic;

  void Remove(const std::string& id) {
    for (auto it = by_topic.begin(); it != by_topic.end();) {
      auto& v = it->second;
      v.erase(std::remove_if(v.begin(), v.end(), [&](const Trigger& t) { return t.id == id; }), v.end());
      it = v.empty() ? by_topic.erase(it) : std::next(it);
    }
  }
  void Put(const Trigger& t) {
    Remove(t.id);
    by_topic[{t.tenant, t.topic}].push_back(t);
  }
};

struct EventLog::WriteItem {
  enum class Kind { kPublish, kInvoke, kCronFire };
  Kind kind = Kind::kPublish;
  Event event;
  std::string function;  // kInvoke
  RetryPolicy retry;     // kInvoke
  std::string cron_id;   // kCronFire
  int64_t fire_ms = 0;   // kCronFire
  // Results.
  Status status;
  PublishResult publish;
  int64_t delivery_id = 0;
  bool fired = false;
  bool done = false;
  bool detached = false;  // nobody waits: the writer deletes it when done
  bool once = false;      // kPublish: dedupe against every stored event, not only the window
};

EventLog::EventLog(Env* env, EventLogOptions options)
    : env_(env), options_(std::move(options)), triggers_(std::make_unique<TriggerCache>()) {}

EventLog::~EventLog() {
  {
    std::lock_guard<std::mutex> lk(queue_mu_);
    stopping_ = true;
  }
  queue_cv_.notify_all();
  if (writer_.joinable()) writer_.join();
  for (auto& [sql, st] : prepared_) sqlite3_finalize(st);
  if (db_ != nullptr) sqlite3_close(db_);
}

Result<std::unique_ptr<EventLog>> EventLog::Open(Env* env, EventLogOptions options) {
  if (options.db_path.empty()) return Status::InvalidArgument("db_path", "is empty");
  if (options.max_batch == 0) options.max_batch = 1;
  std::unique_ptr<EventLog> log(new EventLog(env, std::move(options)));
  BERTH_RETURN_IF_ERROR(log->Init());
  return log;
}

Status EventLog::Init() {
  if (auto slash = options_.db_path.rfind('/'); slash != std::string::npos && slash > 0) {
    BERTH_RETURN_IF_ERROR(env_->CreateDirs(options_.db_path.substr(0, slash)));
  }
  if (sqlite3_open_v2(options_.db_path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) !=
      SQLITE_OK) {
    return Status::Internal("cannot open " + options_.db_path + ": " + (db_ ? sqlite3_errmsg(db_) : "no memory"));
  }
  sqlite3_busy_timeout(db_, 5000);
  // FULL in WAL mode syncs the WAL at every commit: acknowledged means on disk.
  BERTH_RETURN_IF_ERROR(ExecSql("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"));
  BERTH_RETURN_IF_ERROR(ExecSql(kSchema));
  {
    std::lock_guard<std::mutex> lk(db_mu_);
    // At-least-once: attempts a crash interrupted run again, now.
    Stmt st(this, "UPDATE deliveries SET state = 'pending', next_attempt_ms = ?, updated_ms = ?, "
                  "last_error = 'attempt interrupted by a restart' WHERE state = 'running'");
    int64_t now = env_->NowUnixMs();
    BERTH_RETURN_IF_ERROR(st.Bind(now).Bind(now).Run("recover running deliveries"));
    BERTH_RETURN_IF_ERROR(LoadTriggerCache());
  }
  writer_ = std::thread([this] { WriterLoop(); });
  return Status::Ok();
}

Status EventLog::ExecSql(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    return Status::Internal(std::string("sqlite: ") + msg);
  }
  return Status::Ok();
}

sqlite3_stmt* EventLog::Prepared(const char* sql) {
  auto it = prepared_.find(sql);
  if (it != prepared_.end()) return it->second;
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v3(db_, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, nullptr) != SQLITE_OK) return nullptr;
  prepared_.emplace(sql, st);
  return st;
}

Status EventLog::LoadTriggerCache() {
  Stmt st(this, "SELECT " TRIGGER_COLS " FROM triggers");
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) triggers_->Put(st.ToTrigger());
  if (rc != SQLITE_DONE) return st.Error("load triggers");
  return Status::Ok();
}

EventLogStats EventLog::stats() {
  std::lock_guard<std::mutex> lk(queue_mu_);
  return stats_;
}

void EventLog::SetDeliveryListener(std::function<void()> listener) {
  std::lock_guard<std::mutex> lk(listener_mu_);
  listener_ = std::move(listener);
}

void EventLog::NotifyListener() {
  // Called under the lock, so SetDeliveryListener({}) returning means the
  // old listener is not running and will not run again.
  std::lock_guard<std::mutex> lk(listener_mu_);
  if (listener_) listener_();
}

// ---- group commit ----

Result<EventLog::WriteItem*> EventLog::Submit(WriteItem* item) {
  std::unique_lock<std::mutex> lk(queue_mu_);
  if (stopping_) return Status::Unavailable("event log is shut down");
  queue_.push_back(item);
  queue_cv_.notify_one();
  done_cv_.wait(lk, [&] { return item->done; });
  if (!item->status.ok()) return item->status;
  return item;
}

void EventLog::WriterLoop() {
  std::vector<WriteItem*> batch;
  while (true) {
    batch.clear();
    {
      std::unique_lock<std::mutex> lk(queue_mu_);
      queue_cv_.wait(lk, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and everything queued is done
      while (!queue_.empty() && batch.size() < options_.max_batch) {
        batch.push_back(queue_.front());
        queue_.pop_front();
      }
    }
    int created = 0;
    Status commit;
    {
      std::lock_guard<std::mutex> lk(db_mu_);
      int64_t now = env_->NowUnixMs();
      commit = ExecSql("BEGIN IMMEDIATE");
      if (commit.ok()) {
        for (WriteItem* item : batch) {
          // A savepoint per item: one failing item does not take the batch down.
          Status st = ExecSql("SAVEPOINT item");
          int n = 0;
          if (st.ok()) st = ApplyWrite(item, now, &n);
          if (st.ok()) {
            created += n;
          } else {
            (void)ExecSql("ROLLBACK TO item");
            item->status = st;
          }
          (void)ExecSql("RELEASE item");
        }
        if (++batches_since_prune_ >= 256) {
          batches_since_prune_ = 0;
          Stmt prune(this, "DELETE FROM idempotency WHERE created_ms <= ?");
          (void)prune.Bind(now - options_.idempotency_window_ms).Run("prune idempotency keys");
        }
        commit = ExecSql("COMMIT");
        if (!commit.ok()) (void)ExecSql("ROLLBACK");
      }
    }
    std::vector<std::unique_ptr<WriteItem>> detached;
    {
      std::lock_guard<std::mutex> lk(queue_mu_);
      for (WriteItem* item : batch) {
        if (!commit.ok()) item->status = commit.WithContext("commit");
        item->done = true;
        if (item->detached) {
          if (!item->status.ok()) stats_.detached_failed += 1;
          detached.emplace_back(item);
        }
      }
      if (commit.ok()) {
        stats_.write_batches += 1;
        stats_.write_items += batch.size();
      }
    }
    detached.clear();
    done_cv_.notify_all();
    if (commit.ok() && created > 0) NotifyListener();
  }
}

Status EventLog::ApplyWrite(WriteItem* item, int64_t now, int* created) {
  switch (item->kind) {
    case WriteItem::Kind::kPublish: {
      if (item->once) {
        const Event& ev = item->event;
        Stmt st(this, "SELECT id FROM events WHERE tenant = ? AND topic = ? AND idempotency_key = ? LIMIT 1");
        int rc = st.Bind(ev.tenant).Bind(ev.topic).Bind(*ev.idempotency_key).Step();
        if (rc == SQLITE_ROW) {
          item->publish = PublishResult{st.Int(0), true};
          return Status::Ok();
        }
        if (rc != SQLITE_DONE) return st.Error("stored event lookup");
      }
      BERTH_ASSIGN_OR_RETURN(item->publish, InsertEvent(item->event, now, created));
      return Status::Ok();
    }
    case WriteItem::Kind::kInvoke: {
      BERTH_ASSIGN_OR_RETURN(item->publish, InsertEvent(item->event, now, created));
      Delivery d;
      d.tenant = item->event.tenant;
      d.event_id = item->publish.event_id;
      d.function = item->function;
      d.retry = item->retry;
      d.next_attempt_ms = d.age_base_ms = d.created_ms = d.updated_ms = now;
      BERTH_ASSIGN_OR_RETURN(item->delivery_id, InsertDelivery(d));
      ++*created;
      return Status::Ok();
    }
    case WriteItem::Kind::kCronFire: {
      CronTrigger cron;
      {
        Stmt st(this, "SELECT " CRON_COLS " FROM cron_triggers WHERE id = ?");
        int rc = st.Bind(item->cron_id).Step();
        if (rc == SQLITE_DONE) return Status::Ok();  // deleted meanwhile: not fired
        if (rc != SQLITE_ROW) return st.Error("load cron trigger");
        cron = st.ToCron();
      }
      if (!cron.enabled || item->fire_ms <= cron.last_fired_ms) return Status::Ok();
      {
        Stmt st(this, "UPDATE cron_triggers SET last_fired_ms = ? WHERE id = ?");
        BERTH_RETURN_IF_ERROR(st.Bind(item->fire_ms).Bind(cron.id).Run("record cron fire"));
      }
      Event ev;
      ev.tenant = cron.tenant;
      ev.topic = "_timer." + cron.name;
      ev.content_type = "application/json";
      ev.payload = json{{"cron_id", cron.id},
                        {"name", cron.name},
                        {"schedule", cron.schedule},
                        {"scheduled_ms", item->fire_ms}}
                       .dump();
      BERTH_ASSIGN_OR_RETURN(item->publish, InsertEvent(ev, now, created));
      Delivery d;
      d.tenant = cron.tenant;
      d.event_id = item->publish.event_id;
      d.trigger_id = cron.id;
      d.function = cron.function;
      d.retry = cron.retry;
      d.next_attempt_ms = d.age_base_ms = d.created_ms = d.updated_ms = now;
      BERTH_ASSIGN_OR_RETURN(item->delivery_id, InsertDelivery(d));
      ++*created;
      item->fired = true;
      return Status::Ok();
    }
  }
  return Status::Internal("unknown write");
}

Result<PublishResult> EventLog::InsertEvent(const Event& ev, int64_t now, int* created) {
  if (ev.idempotency_key) {
    Stmt st(this, "SELECT event_id, created_ms FROM idempotency WHERE tenant = ? AND topic = ? AND key = ?");
    int rc = st.Bind(ev.tenant).Bind(ev.topic).Bind(*ev.idempotency_key).Step();
    if (rc == SQLITE_ROW && now - st.Int(1) < options_.idempotency_window_ms) {
      return PublishResult{st.Int(0), true};
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return st.Error("idempotency lookup");
  }
  PublishResult result;
  {
    Stmt st(this,
            "INSERT INTO events(tenant, topic, content_type, payload, idempotency_key, created_ms) "
            "VALUES (?, ?, ?, ?, ?, ?)");
    st.Bind(ev.tenant).Bind(ev.topic).Bind(ev.content_type).BindBlob(ev.payload);
    if (ev.idempotency_key) {
      st.Bind(*ev.idempotency_key);
    } else {
      st.BindNull();
    }
    BERTH_RETURN_IF_ERROR(st.Bind(now).Run("insert event"));
    result.event_id = st.last_id();
  }
  if (ev.idempotency_key) {
    Stmt st(this,
            "INSERT OR REPLACE INTO idempotency(tenant, topic, key, event_id, created_ms) VALUES (?, ?, ?, ?, ?)");
    BERTH_RETURN_IF_ERROR(st.Bind(ev.tenant)
                              .Bind(ev.topic)
                              .Bind(*ev.idempotency_key)
                              .Bind(result.event_id)
                              .Bind(now)
                              .Run("record idempotency key"));
  }
  auto it = triggers_->by_topic.find({ev.tenant, ev.topic});
  if (it == triggers_->by_topic.end()) return result;
  std::optional<json> parsed;
  bool tried_parse = false;
  for (const Trigger& t : it->second) {
    if (!t.enabled) continue;
    if (!t.filter.empty() && !tried_parse) {
      parsed = ParsePayload(ev.payload);
      tried_parse = true;
    }
    if (!FilterMatches(t.filter, parsed)) continue;
    Delivery d;
    d.tenant = ev.tenant;
    d.event_id = result.event_id;
    d.trigger_id = t.id;
    d.function = t.function;
    d.retry = t.retry;
    d.next_attempt_ms = d.age_base_ms = d.created_ms = d.updated_ms = now;
    BERTH_ASSIGN_OR_RETURN(int64_t id, InsertDelivery(d));
    if (id != 0) ++*created;
  }
  return result;
}

Result<int64_t> EventLog::InsertDelivery(const Delivery& d) {
  Stmt st(this, "INSERT OR IGNORE INTO deliveries(tenant, event_id, trigger_id, function, state, attempts, "
                "max_attempts, backoff_initial_ms, backoff_max_ms, max_event_age_ms, dead_letter_topic, "
                "next_attempt_ms, last_error, execution_ids, age_base_ms, created_ms, updated_ms, started_ms, "
                "finished_ms, redrive_of, redriven_by, dead_letter_event_id) "
                "VALUES (?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?, ?, ?, '', '[]', ?, ?, ?, 0, 0, ?, 0, 0)");
  BERTH_RETURN_IF_ERROR(st.Bind(d.tenant)
                            .Bind(d.event_id)
                            .Bind(d.trigger_id)
                            .Bind(d.function)
                            .Bind(int64_t{d.retry.max_attempts})
                            .Bind(d.retry.backoff_initial_ms)
                            .Bind(d.retry.backoff_max_ms)
                            .Bind(d.retry.max_event_age_ms)
                            .Bind(d.retry.dead_letter_topic)
                            .Bind(d.next_attempt_ms)
                            .Bind(d.age_base_ms)
                            .Bind(d.created_ms)
                            .Bind(d.updated_ms)
                            .Bind(d.redrive_of)
                            .Run("insert delivery"));
  return st.changes() > 0 ? st.last_id() : 0;
}

// ---- events ----

Result<PublishResult> EventLog::Publish(const Event& event) {
  BERTH_RETURN_IF_ERROR(ValidateTopic(event.topic, /*allow_reserved=*/false));
  return PublishSystem(event);
}

Status EventLog::ValidateSystemEvent(const Event& event) const {
  BERTH_RETURN_IF_ERROR(ValidateTenant(event.tenant));
  BERTH_RETURN_IF_ERROR(ValidateTopic(event.topic, /*allow_reserved=*/true));
  BERTH_RETURN_IF_ERROR(ValidatePayload(event.content_type, event.payload, options_.max_payload_bytes));
  if (event.idempotency_key && (event.idempotency_key->empty() || event.idempotency_key->size() > 200)) {
    return Status::InvalidArgument("idempotency_key", "must be 1 to 200 characters");
  }
  return Status::Ok();
}

Result<PublishResult> EventLog::PublishSystem(const Event& event) {
  BERTH_RETURN_IF_ERROR(ValidateSystemEvent(event));
  WriteItem item;
  item.event = event;
  BERTH_ASSIGN_OR_RETURN(WriteItem * done, Submit(&item));
  return done->publish;
}

Status EventLog::PublishSystemDetached(const Event& event) { return QueueDetachedPublish(event, false); }

Status EventLog::PublishSystemOnceDetached(const Event& event) {
  if (!event.idempotency_key) return Status::InvalidArgument("idempotency_key", "is required");
  return QueueDetachedPublish(event, true);
}

Status EventLog::QueueDetachedPublish(const Event& event, bool once) {
  BERTH_RETURN_IF_ERROR(ValidateSystemEvent(event));
  auto item = std::make_unique<WriteItem>();
  item->event = event;
  item->detached = true;
  item->once = once;
  std::lock_guard<std::mutex> lk(queue_mu_);
  if (stopping_) return Status::Unavailable("event log is shut down");
  queue_.push_back(item.release());  // the writer deletes it once committed
  queue_cv_.notify_one();
  return Status::Ok();
}

Result<std::optional<Event>> EventLog::NewestEvent(const std::vector<std::string>& topics) {
  if (topics.empty()) return std::optional<Event>();
  std::string sql = "SELECT " EVENT_COLS " FROM events WHERE topic IN (";
  for (size_t i = 0; i < topics.size(); ++i) sql += i ? ",?" : "?";
  sql += ") ORDER BY id DESC LIMIT 1";
  std::lock_guard<std::mutex> lk(db_mu_);
  Stmt st(this, sql.c_str());
  for (const auto& t : topics) st.Bind(t);
  int rc = st.Step();
  if (rc == SQLITE_DONE) return std::optional<Event>();
  if (rc != SQLITE_ROW) return st.Error("newest event");
  return std::optional<Event>(st.ToEvent());
}

Result<Event> EventLog::GetEvent(const std::string& tenant, int64_t event_id) {
  std::lock_guard<std::mutex> lk(db_mu_);
  Stmt st(this, "SELECT " EVENT_COLS " FROM events WHERE id = ? AND tenant = ?");
  int rc = st.Bind(event_id).Bind(tenant).Step();
  if (rc == SQLITE_DONE) return Status::NotFound("event " + std::to_string(event_id) + " does not exist");
  if (rc != SQLITE_ROW) return st.Error("get event");
  return st.ToEvent();
}

Result<std::vector<Event>> EventLog::ListEvents(const std::string& tenant, const std::string& topic,
                                                int64_t after_id, int limit) {
  limit = std::clamp(limit, 1, 1000);
  std::lock_guard<std::mutex> lk(db_mu_);
  Stmt st(this, "SELECT " EVENT_COLS " FROM events WHERE tenant = ? AND (? = '' OR topic = ?) AND id > ? "
                "ORDER BY id LIMIT ?");
  st.Bind(tenant).Bind(topic).Bind(topic).Bind(after_id).Bind(int64_t{limit});
  std::vector<Event> out;
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) out.push_back(st.ToEvent());
  if (rc != SQLITE_DONE) return st.Error("list events");
  return out;
}

// ---- triggers ----

Result<Trigger> EventLog::CreateTrigger(const Trigger& spec) {
  BERTH_RETURN_IF_ERROR(ValidateTriggerSpec(spec));
  Trigger t = spec;
  t.id = "trg-" + RandomHex(16);
  t.created_ms = t.updated_ms = env_->NowUnixMs();
  std::lock_guard<std::mutex> lk(db_mu_);
  Stmt st(this, "INSERT INTO triggers(" TRIGGER_COLS ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
  Status s = st.Bind(t.id)
                 .Bind(t.tenant)
                 .Bind(t.name)
                 .Bind(t.topic)
                 .Bind(t.function)
                 .Bind(t.filter.dump())
                 .Bind(int64_t{t.enabled})
                 .Bind(int64_t{t.retry.max_attempts})
                 .Bind(t.retry.backoff_initial_ms)
                 .Bind(t.retry.backoff_max_ms)
                 .Bind(t.retry.max_event_age_ms)
                 .Bind(t.retry.dead_letter_topic)
                 .Bind(t.created_ms)
                 .Bind(t.updated_ms)
                 .Run("create trigger");
  if (s.code() == Code::kAlreadyExists) return Status::AlreadyExists("trigger '" + t.name + "' already exists");
  BERTH_RETURN_IF_ERROR(s);
  triggers_->Put(t);
  return t;
}

Result<Trigger> EventLog::GetTrigger(const std::string& tenant, const std::string& id) {
  std::lock_guard<std::mutex> lk(db_mu_);
  Stmt st(this, "SELECT " TRIGGER_COLS " FROM triggers WHERE id = ? AND tenant = ?");
  int rc = st.Bind(id).Bind(tenant).Step();
  if (rc == SQLITE_DONE) return Status::NotFound("trigger '" + id + "' does not exist");
  if (rc != SQLITE_ROW) return st.Error("get trigger");
  return st.ToTrigger();
}

Result<std::vector<Trigger>> EventLog::ListTriggers(const std::string& tenant) {
  std::lock_guard<std::mutex> lk(db_mu_);
  Stmt st(this, "SELECT " TRIGGER_COLS " FROM triggers WHERE tenant = ? ORDER BY name");
  st.Bind(tenant);
  std::vector<Trigger> out;
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) out.push_back(st.ToTrigger());
  if (rc != SQLITE_DONE) return st.Error("list triggers");
  return out;
}

Result<Trigger> EventLog::UpdateTrigger(const Trigger& trigger) {
  BERTH_RETURN_IF_ERROR(ValidateTriggerSpec(trigger));
  BERTH_ASSIGN_OR_RETURN(Trigger t, GetTrigger(trigger.tenant, trigger.id));
  Trigger updated = trigger;
  updated.created_ms = t.created_ms;
  updated.updated_ms = env_->NowUnixMs();
  std::lock_guard<std::mutex> lk(db_mu_);
  Stmt st(this, "UPDATE triggers SET name = ?, topic = ?, function = ?, filter = ?, enabled = ?, max_attempts = ?, "
                "backoff_initial_ms = ?, backoff_max_ms = ?, max_event_age_ms = ?, dead_letter_topic = ?, "
                "updated_ms = ? WHERE id = ? AND tenant = ?");
  Status s = st.Bind(updated.name)
                 .Bind(updated.topic)
                 .Bind(updated.function)
                 .Bind(updated.filter.dump())
                 .Bind(int64_t{updated.enabled})
                 .Bind(int64_t{updated.retry.max_attempts})
                 .Bind(updated.retry.backoff_initial_ms)
                 .Bind(updated.retry.backoff_max_ms)
                 .Bind(updated.retry.max_event_age_ms)
                 .Bind(updated.retry.dead_letter_topic)
                 .Bind(updated.updated_ms)
                 .Bind(updated.id)
                 .Bind(updated.tenant)
                 .Run("update trigger");
  if (s.code() == Code::kAlreadyExists) {
    return Status::AlreadyExists("trigger '" + updated.name + "' already exists");
  }
  BERTH_RETURN_IF_ERROR(s);
  if (st.changes() == 0) return Status::NotFound("trigger '" + updated.id + "' does not exist");
  triggers_->Put(updated);
  return updated;
}

Status EventLog::DeleteTrigger(const std::string& tenant, const std::string& id) {
  std::lock_guard<std::mutex> lk(db_mu_);
  Stmt st(this, "DELETE FROM triggers WHERE id = ? AND tenant = ?");
  BERTH_RETURN_IF_ERROR(st.Bind(id).Bind(tenant).Run("delete trigger"));
  if (st.changes() == 0) return Status::NotFound("trigger '" + id + "' does not exist");
  triggers_->Remove(id);
  return Status::Ok();
}

// ---- cron triggers ----

Result<CronTrigger> EventLog::CreateCronTrigger(const CronTrigger& spec) {
  int64_t now = env_->NowUnixMs();
  BERTH_RETURN_IF_ERROR(ValidateCronSpec(spec, now));
  CronTrigger c = spec;
  c.id = "cron-" + RandomHex(16);
  c.last_fired_ms = 0;
  c.created_ms = c.updated_ms = now;
  std::lock_guard<std::mutex> lk(db_mu_);
  Stmt st(this, "INSERT INTO cron_triggers(" CRON_COLS ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
  Status s = st.Bind(c.id)
                 .Bind(c.tenant)
                 .Bind(c.name)
                 .Bind(c.schedule)
                 .Bind(c.function)
                 .Bind(int64_t{c.enabled})
                 .Bind(int64_t{c.retry.max_attempts})
                 .Bind(c.retry.backoff_initial_ms)
                 .Bind(c.retry.backoff_max_ms)
                 .Bind(c.retry.max_event_age_ms)
                 .Bind(c.retry.dead_letter_topic)
                 .Bind(c.last_fired_ms)
                 .Bind(c.created_ms)
                 .Bind(c.updated_ms)
                 .Run("create cron trigger");
  if (s.code() == Code::kAlreadyExists) return Status::AlreadyExists("cron trigger '" + c.name + "' already exists");
  BERTH_RETURN_IF_ERROR(s);
  return c;
}

Result<CronTrigger> EventLog::GetCronTrigger(const std::string& tenant, const std::string& id) {
  std::lock_guard<std::mutex> lk(db_mu_);
  Stmt st(this, "SELECT " CRON_COLS " FROM cron_triggers WHERE id = ? AND tenant = ?");
  int rc = st.Bind(id).Bind(tenant).Step();
  if (rc == SQLITE_DONE) return Status::NotFound("cron trigger '" + id + "' does not exist");
  if (rc != SQLITE_ROW) return st.Error("get cron trigger");
  return st.ToCron();
}

Result<std::vector<CronTrigger>> EventLog::ListCronTriggers(const std::string& tenant) {
  std::lock_guard<std::mutex> lk(db_mu_);
  Stmt st(this, "SELECT " CRON_COLS " FROM cron_triggers WHERE tenant = ? ORDER BY name");
  st.Bind(tenant);
  std::vector<CronTrigger> out;
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) out.push_back(st.ToCron());
  if (rc != SQLITE_DONE) return st.Error("list cron triggers");
  return out;
}

Result<std::vector<CronTrigger>> EventLog::ListEnabledCronTriggers() {
  std::lock_guard<std::mutex> lk(db_mu_);
  Stmt st(this, "SELECT " CRON_COLS " FROM cron_triggers WHERE enabled = 1 ORDER BY id");
  std::vector<CronTrigger> out;
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) out.push_back(st.ToCron());
  if (rc != SQLITE_DONE) return st.Error("list cron triggers");
  return out;
}

Result<CronTrigger> EventLog::UpdateCronTrigger(const CronTrigger& cron) {
  int64_t now = env_->NowUnixMs();
  BERTH_RETURN_IF_ERROR(ValidateCronSpec(cron, now));
  BERTH_ASSIGN_OR_RETURN(CronTrigger old, GetCronTrigger(cron.tenant, cron.id));
  CronTrigger c = cron;
  c.created_ms = old.created_ms;
  c.last_fired_ms = old.last_fired_ms;
  c.updated_ms = now;
  std::lock_guard<std::mutex> lk(db_mu_);
  Stmt st(this, "UPDATE cron_triggers SET name = ?, schedule = ?, function = ?, enabled = ?, max_attempts = ?, "
                "backoff_initial_ms = ?, backoff_max_ms = ?, max_event_age_ms = ?, dead_letter_topic = ?, "
                "updated_ms = ? WHERE id = ? AND tenant = ?");
  Status s = st.Bind(c.name)
                 .Bind(c.schedule)
                 .Bind(c.function)
                 .Bind(int64_t{c.enabled})
                 .Bind(int64_t{c.retry.max_attempts})
                 .Bind(c.retry.backoff_initial_ms)
                 .Bind(c.retry.backoff_max_ms)
                 .Bind(c.retry.max_event_age_ms)
                 .Bind(c.retry.dead_letter_topic)
                 .Bind(c.updated_ms)
                 .Bind(c.id)
                 .Bind(c.tenant)
                 .Run("update cron trigger");
  if (s.code() == Code::kAlreadyExists) return Status::AlreadyExists("cron trigger '" + c.name + "' already exists");
  BERTH_RETURN_IF_ERROR(s);
  if (st.changes() == 0) return Status::NotFound("cron trigger '" + c.id + "' does not exist");
  return c;
}

Status EventLog::DeleteCronTrigger(const std::string& tenant, const std::string& id) {
  std::lock_guard<std::mutex> lk(db_mu_);
  Stmt st(this, "DELETE FROM cron_triggers WHERE id = ? AND tenant = ?");
  BERTH_RETURN_IF_ERROR(st.Bind(id).Bind(tenant).Run("delete cron trigger"));
  if (st.changes() == 0) return Status::NotFound("cron trigger '" + id + "' does not exist");
  return Status::Ok();
}

Result<bool> EventLog::FireCron(const std::string& cron_id, int64_t fire_ms) {
  WriteItem item;
  item.kind = WriteItem::Kind::kCronFire;
  item.cron_id = cron_id;
  item.fire_ms = fire_ms;
  BERTH_ASSIGN_OR_RETURN(WriteItem * done, Submit(&item));
  return done->fired;
}

// ---- webhooks ----

Result<Webhook> EventLog::CreateWebhook(const Webhook& spec) {
  BERTH_RETURN_IF_ERROR(ValidateTenant(spec.tenant));
  BERTH_RETURN_IF_ERROR(ValidateName(spec.name, "name"));
  BERTH_RETURN_IF_ERROR(ValidateTopic(spec.topic, /*allow_reserved=*/false));
  if (spec.secret.size() < 16 || spec.secret.size() > 200) {
    return Status::InvalidArgument("secret", "must be 16 to 200 characters");
  }
  Webhook w = spec;
  w.id = "hook-" + RandomHex(16);
  w.created_ms = env_->NowUnixMs();
  std::lock_guard<std::mutex> lk(db_mu_);
  Stmt st(this, "INSERT INTO webhooks(id, tenant, name, topic, secret, created_ms) VALUES (?, ?, ?, ?, ?, ?)");
  Status s = st.Bind(w.id).Bind(w.tenant).Bind(w.name).Bind(w.topic).Bind(w.secret).Bind(w.created_ms).Run(
      "create webhook");
  if (s.code() == Code::kAlreadyExists) {
    return Status(Code::kAlreadyExists, "webhook '" + w.name + "' already exists", "name");
  }
  BERTH_RETURN_IF_ERROR(s);
  return w;
}

Result<Webhook> EventLog::GetWebhook(const std::string& tenant, const std::string& name) {
  std::lock_guard<std::mutex> lk(db_mu_);
  Stmt st(this, "SELECT id, tenant, name, topic, secret, created_ms FROM webhooks "
                "WHERE name = ? AND (? = '' OR tenant = ?)");
  int rc = st.Bind(name).Bind(tenant).Bind(tenant).Step();
  if (rc == SQLITE_DONE) return Status::NotFound("webhook '" + name + "' does not exist");
  if (rc != SQLITE_ROW) return st.Error("get webhook");
  return st.ToWebhook();
}

Result<Webhook> EventLog::FindWebhook(const std::string& name) { return GetWebhook("", name); }

Result<std::vector<Webhook>> EventLog::ListWebhooks(const std::string& tenant) {
  std::lock_guard<std::mutex> lk(db_mu_);
  Stmt st(this, "SELECT id, tenant, name, topic, secret, created_ms FROM webhooks WHERE tenant = ? ORDER BY name");
  st.Bind(tenant);
  std::vector<Webhook> out;
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) out.push_back(st.ToWebhook());
  if (rc != SQLITE_DONE) return st.Error("list webhooks");
  return out;
}

Status EventLog::DeleteWebhook(const std::string& tenant, const std::string& name) {
  std::lock_guard<std::mutex> lk(db_mu_);
  Stmt st(this, "DELETE FROM webhooks WHERE name = ? AND tenant = ?");
  BERTH_RETURN_IF_ERROR(st.Bind(name).Bind(tenant).Run("delete webhook"));
  if (st.changes() == 0) return Status::NotFound("webhook '" + name + "' does not exist");
  return Status::Ok();
}

// ---- deliveries ----

Result<int64_t> EventLog::Enqueue(const std::string& tenant, const std::string& function, std::string payload,
                                  std::string content_type, std::optional<RetryPolicy> retry) {
  BERTH_RETURN_IF_ERROR(ValidateTenant(tenant));
  BERTH_RETURN_IF_ERROR(ValidateName(function, "function"));
  BERTH_RETURN_IF_ERROR(ValidatePayload(content_type, payload, options_.max_payload_bytes));
  WriteItem item;
  item.kind = WriteItem::Kind::kInvoke;
  item.retry = retry.value_or(options_.default_retry);
  BERTH_RETURN_IF_ERROR(ValidateRetryPolicy(item.retry));
  item.function = function;
  item.event.tenant = tenant;
  item.event.topic = "_invoke." + function;
  item.event.content_type = std::move(content_type);
  item.event.payload = std::move(payload);
  BERTH_ASSIGN_OR_RETURN(WriteItem * done, Submit(&item));
  return done->delivery_id;
}

Result<Delivery> EventLog::GetDelivery(const std::string& tenant, int64_t delivery_id) {
  std::lock_guard<std::mutex> lk(db_mu_);
  Stmt st(this, "SELECT " DELIVERY_COLS " FROM deliveries WHERE id = ? AND tenant = ?");
  int rc = st.Bind(delivery_id).Bind(tenant).Step();
  if (rc == SQLITE_DONE) return Status::NotFound("delivery " + std::to_string(delivery_id) + " does not exist");
  if (rc != SQLITE_ROW) return st.Error("get delivery");
  return st.ToDelivery();
}

Result<std::vector<Delivery>> EventLog::ListDeliveries(const DeliveryQuery& q) {
  int limit = std::clamp(q.limit, 1, 1000);
  std::string state = q.state ? DeliveryStateName(*q.state) : "";
  std::lock_guard<std::mutex> lk(db_mu_);
  Stmt st(this, "SELECT " DELIVERY_COLS " FROM deliveries WHERE tenant = ? AND (? = '' OR function = ?) "
                "AND (? = '' OR state = ?) AND (? = 0 OR id < ?) ORDER BY id DESC LIMIT ?");
  st.Bind(q.tenant).Bind(q.function).Bind(q.function).Bind(state).Bind(state).Bind(q.before_id).Bind(q.before_id);
  st.Bind(int64_t{limit});
  std::vector<Delivery> out;
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) out.push_back(st.ToDelivery());
  if (rc != SQLITE_DONE) return st.Error("list deliveries");
  return out;
}

Result<std::vector<Delivery>> EventLog::ListDeadLetters(const std::string& tenant, const std::string& function,
                                                        int limit) {
  limit = std::clamp(limit, 1, 1000);
  std::lock_guard<std::mutex> lk(db_mu_);
  Stmt st(this, "SELECT " DELIVERY_COLS " FROM deliveries WHERE tenant = ? AND state = 'dead' AND redriven_by = 0 "
                "AND (? = '' OR function = ?) ORDER BY id DESC LIMIT ?");
  st.Bind(tenant).Bind(function).Bind(function).Bind(int64_t{limit});
  std::vector<Delivery> out;
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) out.push_back(st.ToDelivery());
  if (rc != SQLITE_DONE) return st.Error("list dead letters");
  return out;
}

Result<int64_t> EventLog::Redrive(const std::string& tenant, int64_t delivery_id) {
  BERTH_ASSIGN_OR_RETURN(Delivery dead, GetDelivery(tenant, delivery_id));
  int64_t new_id = 0;
  {
    std::lock_guard<std::mutex> lk(db_mu_);
    BERTH_RETURN_IF_ERROR(ExecSql("BEGIN IMMEDIATE"));
    auto work = [&]() -> Status {
      // Re-read inside the transaction: the state may have moved on.
      Stmt check(this, "SELECT state, redriven_by FROM deliveries WHERE id = ?");
      if (check.Bind(delivery_id).Step() != SQLITE_ROW) return check.Error("re-read delivery");
      if (check.Text(0) != "dead" || check.Int(1) != 0) {
        return Status::FailedPrecondition("delivery " + std::to_string(delivery_id) +
                                          " is not an un-redriven dead letter");
      }
      int64_t now = env_->NowUnixMs();
      Delivery d = dead;
      d.next_attempt_ms = d.age_base_ms = d.created_ms = d.updated_ms = now;
      d.redrive_of = dead.id;
      BERTH_ASSIGN_OR_RETURN(new_id, InsertDelivery(d));
      Stmt mark(this, "UPDATE deliveries SET redriven_by = ?, updated_ms = ? WHERE id = ?");
      return mark.Bind(new_id).Bind(now).Bind(delivery_id).Run("mark re-driven");
    };
    Status s = work();
    if (s.ok()) s = ExecSql("COMMIT");
    if (!s.ok()) {
      (void)ExecSql("ROLLBACK");
      return s;
    }
  }
  NotifyListener();
  return new_id;
}

Result<std::vector<Delivery>> EventLog::ClaimDue(int64_t now_ms, size_t max,
                                                 const std::function<bool(const Delivery&)>& admit) {
  std::vector<Delivery> claimed;
  if (max == 0) return claimed;
  std::lock_guard<std::mutex> lk(db_mu_);
  {
    Stmt st(this, "SELECT " DELIVERY_COLS " FROM deliveries WHERE state = 'pending' AND next_attempt_ms <= ? "
                  "ORDER BY next_attempt_ms, id LIMIT 256");
    st.Bind(now_ms);
    int rc;
    while (claimed.size() < max && (rc = st.Step()) == SQLITE_ROW) {
      Delivery d = st.ToDelivery();
      if (admit(d)) claimed.push_back(std::move(d));
    }
  }
  if (claimed.empty()) return claimed;
  BERTH_RETURN_IF_ERROR(ExecSql("BEGIN IMMEDIATE"));
  Status s;
  for (Delivery& d : claimed) {
    Stmt st(this, "UPDATE deliveries SET state = 'running', attempts = attempts + 1, started_ms = ?, "
                  "updated_ms = ? WHERE id = ?");
    s = st.Bind(now_ms).Bind(now_ms).Bind(d.id).Run("claim delivery");
    if (!s.ok()) break;
    d.state = DeliveryState::kRunning;
    d.attempts += 1;
    d.started_ms = d.updated_ms = now_ms;
  }
  if (s.ok()) s = ExecSql("COMMIT");
  if (!s.ok()) {
    (void)ExecSql("ROLLBACK");
    return s;
  }
  return claimed;
}

Status EventLog::FinishAttempt(int64_t delivery_id, const AttemptResult& result) {
  int created = 0;
  {
    std::lock_guard<std::mutex> lk(db_mu_);
    Delivery d;
    {
      Stmt st(this, "SELECT " DELIVERY_COLS " FROM deliveries WHERE id = ?");
      int rc = st.Bind(delivery_id).Step();
      if (rc == SQLITE_DONE) return Status::NotFound("delivery " + std::to_string(delivery_id) + " does not exist");
      if (rc != SQLITE_ROW) return st.Error("get delivery");
      d = st.ToDelivery();
    }
    if (d.state != DeliveryState::kRunning) {
      return Status::FailedPrecondition("delivery " + std::to_string(delivery_id) + " is not running");
    }
    if (!result.execution_id.empty()) d.execution_ids.push_back(result.execution_id);
    std::string ids = json(d.execution_ids).dump();
    int64_t now = env_->NowUnixMs();
    BERTH_RETURN_IF_ERROR(ExecSql("BEGIN IMMEDIATE"));
    auto work = [&]() -> Status {
      if (result.ok) {
        Stmt st(this, "UPDATE deliveries SET state = 'succeeded', execution_ids = ?, finished_ms = ?, "
                      "updated_ms = ? WHERE id = ?");
        return st.Bind(ids).Bind(now).Bind(now).Bind(d.id).Run("finish delivery");
      }
      if (!result.dead) {
        Stmt st(this, "UPDATE deliveries SET state = 'pending', execution_ids = ?, last_error = ?, "
                      "next_attempt_ms = ?, updated_ms = ? WHERE id = ?");
        return st.Bind(ids).Bind(result.error).Bind(result.next_attempt_ms).Bind(now).Bind(d.id).Run(
            "reschedule delivery");
      }
      // Dead: publish the dead letter in the same transaction.
      Event original;
      {
        Stmt st(this, "SELECT " EVENT_COLS " FROM events WHERE id = ?");
        int rc = st.Bind(d.event_id).Step();
        if (rc == SQLITE_ROW) {
          original = st.ToEvent();
        } else if (rc != SQLITE_DONE) {
          return st.Error("load original event");
        }
      }
      json letter = {{"delivery_id", d.id},
                     {"original_event_id", d.event_id},
                     {"original_topic", original.topic},
                     {"trigger_id", d.trigger_id},
                     {"function", d.function},
                     {"attempts", d.attempts},
                     {"last_error", result.error},
                     {"execution_ids", d.execution_ids},
                     {"content_type", original.content_type}};
      if (auto parsed = ParsePayload(original.payload)) {
        letter["payload"] = std::move(*parsed);
      } else {
        letter["payload_base64"] = Base64Encode(original.payload);
      }
      Event dead_event;
      dead_event.tenant = d.tenant;
      dead_event.topic = DeadLetterTopic(d);
      dead_event.content_type = "application/json";
      dead_event.payload = letter.dump(-1, ' ', false, json::error_handler_t::replace);
      BERTH_ASSIGN_OR_RETURN(PublishResult published, InsertEvent(dead_event, now, &created));
      Stmt st(this, "UPDATE deliveries SET state = 'dead', execution_ids = ?, last_error = ?, finished_ms = ?, "
                    "updated_ms = ?, dead_letter_event_id = ? WHERE id = ?");
      return st.Bind(ids).Bind(result.error).Bind(now).Bind(now).Bind(published.event_id).Bind(d.id).Run(
          "bury delivery");
    };
    Status s = work();
    if (s.ok()) s = ExecSql("COMMIT");
    if (!s.ok()) {
      (void)ExecSql("ROLLBACK");
      return s;
    }
  }
  if (created > 0 || (!result.ok && !result.dead)) NotifyListener();
  return Status::Ok();
}

Result<std::optional<int64_t>> EventLog::NextDueMs() {
  std::lock_guard<std::mutex> lk(db_mu_);
  Stmt st(this, "SELECT MIN(next_attempt_ms) FROM deliveries WHERE state = 'pending'");
  int rc = st.Step();
  if (rc != SQLITE_ROW) return st.Error("next due delivery");
  if (st.IsNull(0)) return std::optional<int64_t>();
  return std::optional<int64_t>(st.Int(0));
}

}  // namespace berth::events
