#include "manager/store.h"

#include <sqlite3.h>

#include <nlohmann/json.hpp>

#include "manager/networks.h"

namespace berth::manager {
namespace {

using json = nlohmann::json;

// The current schema (version 3: tenants and tokens; images and functions
// keyed by tenant; executions as processes). Idempotent, so it also runs on every open.
constexpr const char* kSchema = R"sql(
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
  timings TEXT NOT NULL, created_ms INTEGER NOT NULL, finished_ms INTEGER NOT NULL,
  name TEXT NOT NULL DEFAULT '', kind TEXT NOT NULL DEFAULT 'run', userdata BLOB NOT NULL DEFAULT '',
  spec TEXT NOT NULL DEFAULT '{}', console BLOB NOT NULL DEFAULT '', console_truncated INTEGER NOT NULL DEFAULT 0,
  network TEXT NOT NULL DEFAULT '{}');
CREATE INDEX IF NOT EXISTS executions_by_ppid ON executions(tenant, ppid);
CREATE INDEX IF NOT EXISTS executions_by_finished ON executions(finished_ms);
CREATE INDEX IF NOT EXISTS executions_by_function ON executions(function, created_ms);
CREATE INDEX IF NOT EXISTS executions_by_tenant ON executions(tenant, created_ms);
CREATE INDEX IF NOT EXISTS executions_by_state ON executions(state);
CREATE TABLE IF NOT EXISTS nodes (
  name TEXT PRIMARY KEY, uri TEXT NOT NULL UNIQUE, spec TEXT NOT NULL, state TEXT NOT NULL,
  created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS claims (
  id TEXT PRIMARY KEY, node TEXT NOT NULL, vcpus INTEGER NOT NULL, memory_mib INTEGER NOT NULL,
  created_ms INTEGER NOT NULL, disk_bytes INTEGER);
CREATE INDEX IF NOT EXISTS claims_by_node ON claims(node);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters(name, value) VALUES ('pid', 1);
CREATE TABLE IF NOT EXISTS image_tags (
  tenant TEXT NOT NULL, name TEXT NOT NULL, tag TEXT NOT NULL, id TEXT NOT NULL, created_ms INTEGER NOT NULL,
  PRIMARY KEY (tenant, name, tag));
CREATE INDEX IF NOT EXISTS image_tags_by_id ON image_tags(tenant, id);
)sql";

// Version 1 -> 2, run inside one transaction around kSchema: the old images
// (primary key id) and functions (primary key name) tables are set aside,
// the new ones created by kSchema, the rows copied (they keep their tenant
// column's value, "default" for everything an old berthd wrote), and the
// tenants table filled from every tenant the data names.
constexpr const char* kMigrateV1Before = R"sql(
ALTER TABLE images RENAME TO images_v1;
ALTER TABLE functions RENAME TO functions_v1;
)sql";
constexpr const char* kMigrateV1After = R"sql(
INSERT INTO images(tenant, id, name, format, filesystem, size_bytes, virtual_size_bytes, created_ms)
  SELECT tenant, id, name, format, filesystem, size_bytes, virtual_size_bytes, created_ms FROM images_v1;
INSERT INTO functions(tenant, name, version, spec, image, created_ms, updated_ms)
  SELECT tenant, name, version, spec, image, created_ms, updated_ms FROM functions_v1;
INSERT OR IGNORE INTO tenants(name, created_ms)
  SELECT tenant, MIN(created_ms) FROM (
    SELECT tenant, created_ms FROM images_v1 UNION ALL SELECT tenant, created_ms FROM functions_v1
    UNION ALL SELECT tenant, created_ms FROM executions) GROUP BY tenant;
DROP TABLE images_v1;
DROP TABLE functions_v1;
)sql";

// Version 2 -> 3 (process model): executions get a name, a kind, user-data,
// the spec they were started with and their console log; "booting" is now
// "starting". Runs before kSchema, whose indexes need the new columns.
constexpr const char* kMigrateV2Executions = R"sql(
ALTER TABLE executions ADD COLUMN name TEXT NOT NULL DEFAULT '';
ALTER TABLE executions ADD COLUMN kind TEXT NOT NULL DEFAULT 'run';
ALTER TABLE executions ADD COLUMN userdata BLOB NOT NULL DEFAULT '';
ALTER TABLE executions ADD COLUMN spec TEXT NOT NULL DEFAULT '{}';
ALTER TABLE executions ADD COLUMN console BLOB NOT NULL DEFAULT '';
ALTER TABLE executions ADD COLUMN console_truncated INTEGER NOT NULL DEFAULT 0;
UPDATE executions SET state = 'starting' WHERE state = 'booting';
UPDATE executions SET name = function WHERE name = '';
)sql";

// Version < 5 -> 5 (guest networking): the execution's NIC (MAC, addresses).
constexpr const char* kMigrateV4Executions = R"sql(
ALTER TABLE executions ADD COLUMN network TEXT NOT NULL DEFAULT '{}';
)sql";

// Version < 6 -> 6: the disk a claim holds (NULL in rows written before:
// unknown). Only for a claims table that exists without the column.
constexpr const char* kMigrateV5Claims = R"sql(
ALTER TABLE claims ADD COLUMN disk_bytes INTEGER;
)sql";

// A prepared statement bound positionally; finalized on scope exit.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql, -1, &st_, nullptr) != SQLITE_OK) st_ = nullptr;
  }
  ~Stmt() { sqlite3_finalize(st_); }
  bool ok() const { return st_ != nullptr; }
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
  // SQLITE_ROW, SQLITE_DONE or an error code.
  int Step() { return sqlite3_step(st_); }
  std::string Text(int col) const {
    auto* p = sqlite3_column_blob(st_, col);
    return p ? std::string(static_cast<const char*>(p), static_cast<size_t>(sqlite3_column_bytes(st_, col))) : "";
  }
  int64_t Int(int col) const { return sqlite3_column_int64(st_, col); }
  // Steps through all rows, mapping each with `row`; `what` names a failure.
  template <typename RowFn>
  auto Collect(RowFn row, const std::string& what) -> Result<std::vector<decltype(row(*this))>> {
    std::vector<decltype(row(*this))> out;
    int rc;
    while ((rc = Step()) == SQLITE_ROW) out.push_back(row(*this));
    if (rc != SQLITE_DONE) return Error(what);
    return out;
  }
  bool IsNull(int col) const { return sqlite3_column_type(st_, col) == SQLITE_NULL; }
  Status Error(const std::string& what) const {
    return Status::Internal(what + ": " + sqlite3_errmsg(db_));
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* st_ = nullptr;
  int idx_ = 0;
};

json SpecToJson(const FunctionSpec& s) {
  json j = {{"entrypoint", s.entrypoint}, {"vcpus", s.vcpus}, {"memory_mib", s.memory_mib},
          {"timeout_ms", s.timeout_ms}, {"env", s.env},     {"cwd", s.cwd},
          {"network", s.network}, {"snapshot", s.snapshot}, {"retryable", s.retryable},    {"min_warm", s.min_warm},
          {"max_warm", s.max_warm}, {"idle_timeout_ms", s.idle_timeout_ms}, {"keep_alive", s.keep_alive},
          {"target_concurrency", s.target_concurrency}, {"max_instances", s.max_instances},
          {"max_queued", s.max_queued}, {"queue_timeout_ms", s.queue_timeout_ms},
          {"network_allow", EgressRulesToJson(s.network_allow)}, {"expose_port", s.expose_port},
          {"gateway", {{"auth", s.gateway.auth}, {"rate_limit_per_s", s.gateway.rate_limit_per_s},
                       {"burst", s.gateway.burst}, {"token_rate_limit_per_s", s.gateway.token_rate_limit_per_s},
                       {"token_burst", s.gateway.token_burst}, {"max_concurrency", s.gateway.max_concurrency},
                       {"max_queue", s.gateway.max_queue}}}};
  if (!s.gateway_routes.empty()) j["gateway_routes"] = json::parse(s.gateway_routes, nullptr, false);
  return j;
}

FunctionRecord FunctionFromRow(const Stmt& st) {
  FunctionRecord fn;
  fn.spec.name = st.Text(0);
  fn.tenant = st.Text(1);
  fn.version = st.Int(2);
  json j = json::parse(st.Text(3), nullptr, false);
  fn.spec.image = st.Text(4);
  fn.created_ms = st.Int(5);
  fn.updated_ms = st.Int(6);
  if (j.is_object()) {
    fn.spec.entrypoint = j.value("entrypoint", std::vector<std::string>{});
    fn.spec.vcpus = j.value("vcpus", 1u);
    fn.spec.memory_mib = j.value("memory_mib", uint64_t{256});
    fn.spec.timeout_ms = j.value("timeout_ms", int64_t{30000});
    fn.spec.env = j.value("env", std::map<std::string, std::string>{});
    fn.spec.cwd = j.value("cwd", "/");
    fn.spec.network = j.value("network", "none");
    if (auto a = j.find("network_allow"); a != j.end()) fn.spec.network_allow = EgressRulesFromJson(*a);
    fn.spec.expose_port = j.value("expose_port", uint16_t{0});
    fn.spec.snapshot = j.value("snapshot", true);
    fn.spec.retryable = j.value("retryable", false);
    fn.spec.min_warm = j.value("min_warm", 0u);
    fn.spec.max_warm = j.value("max_warm", 0u);
    fn.spec.idle_timeout_ms = j.value("idle_timeout_ms", int64_t{300000});
    fn.spec.keep_alive = j.value("keep_alive", false);
    if (auto r = j.find("gateway_routes"); r != j.end() && r->is_array()) fn.spec.gateway_routes = r->dump();
    fn.spec.target_concurrency = j.value("target_concurrency", 1u);
    fn.spec.max_instances = j.value("max_instances", 0u);
    fn.spec.max_queued = j.value("max_queued", 16u);
    fn.spec.queue_timeout_ms = j.value("queue_timeout_ms", int64_t{30000});
    if (auto g = j.find("gateway"); g != j.end() && g->is_object()) {
      GatewayPolicy& p = fn.spec.gateway;
      p.auth = g->value("auth", std::string("tenant"));
      p.rate_limit_per_s = g->value("rate_limit_per_s", 0.0);
      p.burst = g->value("burst", int64_t{0});
      p.token_rate_limit_per_s = g->value("token_rate_limit_per_s", 0.0);
      p.token_burst = g->value("token_burst", int64_t{0});
      p.max_concurrency = g->value("max_concurrency", int64_t{0});
      p.max_queue = g->value("max_queue", int64_t{0});
    }
  }
  return fn;
}

constexpr const char* kFunctionCols = "name, tenant, version, spec, image, created_ms, updated_ms";
constexpr const char* kExecCols =
    "id, function, function_version, tenant, image, state, node, domain, pid, ppid, exit_code, signal, "
    "error_code, error, stdout, stderr, output_truncated, duration_ms, timings, created_ms, finished_ms, "
    "name, kind, userdata, spec, console, console_truncated, network";
// The states IsTerminal (types.h) calls unfinished, as an SQL list.
constexpr const char* kUnfinishedStates = "('pending','placing','starting','running')";

json TimingsToJson(const PhaseTimings& t) {
  return {{"queue_ms", t.queue_ms},       {"prepare_ms", t.prepare_ms},
          {"boot_ms", t.boot_ms},         {"run_ms", t.run_ms},
          {"cleanup_ms", t.cleanup_ms},   {"total_ms", t.total_ms},
          {"placed_at", t.placed_at},     {"disk_ready_at", t.disk_ready_at},
          {"booted_at", t.booted_at},     {"agent_ready_at", t.agent_ready_at},
          {"start", t.start}};
}

PhaseTimings TimingsFromJson(const json& t) {
  PhaseTimings out;
  if (!t.is_object()) return out;
  out.queue_ms = t.value("queue_ms", int64_t{0});
  out.prepare_ms = t.value("prepare_ms", int64_t{0});
  out.boot_ms = t.value("boot_ms", int64_t{0});
  out.run_ms = t.value("run_ms", int64_t{0});
  out.cleanup_ms = t.value("cleanup_ms", int64_t{0});
  out.total_ms = t.value("total_ms", int64_t{0});
  out.placed_at = t.value("placed_at", int64_t{0});
  out.disk_ready_at = t.value("disk_ready_at", int64_t{0});
  out.booted_at = t.value("booted_at", int64_t{0});
  out.agent_ready_at = t.value("agent_ready_at", int64_t{0});
  out.start = t.value("start", std::string("cold"));
  return out;
}

json ProcSpecToJson(const ProcSpec& p) {
  return {{"command", p.command},       {"env", p.env},
          {"args", p.args},             {"stdin", p.stdin_data},       {"cwd", p.cwd},
          {"vcpus", p.vcpus},           {"memory_mib", p.memory_mib},
          {"timeout_ms", p.timeout_ms}, {"boot", p.boot == BootMode::kDisk ? "disk" : "runtime"},
          {"network", NetworkPolicyToJson(p.network)}};
}

ProcSpec ProcSpecFromJson(const json& j) {
  ProcSpec p;
  if (!j.is_object()) return p;
  p.command = j.value("command", std::vector<std::string>{});
  p.env = j.value("env", std::map<std::string, std::string>{});
  p.args = j.value("args", std::vector<std::string>{});
  p.stdin_data = j.value("stdin", std::string());
  p.cwd = j.value("cwd", std::string("/"));
  p.vcpus = j.value("vcpus", 1u);
  p.memory_mib = j.value("memory_mib", uint64_t{256});
  p.timeout_ms = j.value("timeout_ms", int64_t{0});
  p.boot = j.value("boot", std::string("runtime")) == "disk" ? BootMode::kDisk : BootMode::kRuntime;
  if (auto n = j.find("network"); n != j.end()) p.network = NetworkPolicyFromJson(*n);
  return p;
}

ExecutionRecord ExecutionFromRow(const Stmt& st) {
  ExecutionRecord ex;
  ex.id = st.Text(0);
  ex.function = st.Text(1);
  ex.function_version = st.Int(2);
  ex.tenant = st.Text(3);
  ex.image = st.Text(4);
  auto state = ParseExecState(st.Text(5));
  ex.state = state.ok() ? *state : ExecState::kError;
  ex.node = st.Text(6);
  ex.domain = st.Text(7);
  ex.pid = st.Int(8);
  ex.ppid = st.Int(9);
  if (!st.IsNull(10)) ex.exit_code = static_cast<int>(st.Int(10));
  ex.signal = static_cast<int>(st.Int(11));
  ex.error_code = st.Text(12);
  ex.error = st.Text(13);
  ex.stdout_data = st.Text(14);
  ex.stderr_data = st.Text(15);
  ex.output_truncated = st.Int(16) != 0;
  ex.duration_ms = st.Int(17);
  ex.timings = TimingsFromJson(json::parse(st.Text(18), nullptr, false));
  ex.created_ms = st.Int(19);
  ex.finished_ms = st.Int(20);
  ex.name = st.Text(21);
  ex.kind = st.Text(22) == "instance" ? ProcKind::kInstance : ProcKind::kRun;
  ex.userdata = st.Text(23);
  ex.spec = ProcSpecFromJson(json::parse(st.Text(24), nullptr, false));
  ex.console = st.Text(25);
  ex.console_truncated = st.Int(26) != 0;
  if (json n = json::parse(st.Text(27), nullptr, false); n.is_object()) {
    ex.mac = n.value("mac", std::string());
    ex.addresses = n.value("addresses", std::vector<std::string>{});
  }
  return ex;
}

void BindExecution(Stmt& st, const ExecutionRecord& ex) {
  st.Bind(ex.id).Bind(ex.function).Bind(ex.function_version).Bind(ex.tenant).Bind(ex.image);
  st.Bind(std::string(ExecStateName(ex.state))).Bind(ex.node).Bind(ex.domain).Bind(ex.pid).Bind(ex.ppid);
  if (ex.exit_code) {
    st.Bind(int64_t{*ex.exit_code});
  } else {
    st.BindNull();
  }
  st.Bind(int64_t{ex.signal}).Bind(ex.error_code).Bind(ex.error).BindBlob(ex.stdout_data).BindBlob(ex.stderr_data);
  st.Bind(int64_t{ex.output_truncated ? 1 : 0}).Bind(ex.duration_ms).Bind(TimingsToJson(ex.timings).dump());
  st.Bind(ex.created_ms).Bind(ex.finished_ms);
  st.Bind(ex.name).Bind(std::string(ProcKindName(ex.kind))).BindBlob(ex.userdata);
  st.Bind(ProcSpecToJson(ex.spec).dump(-1, ' ', false, json::error_handler_t::replace));
  st.BindBlob(ex.console).Bind(int64_t{ex.console_truncated ? 1 : 0});
  st.Bind(json{{"mac", ex.mac}, {"addresses", ex.addresses}}.dump());
}

}  // namespace

Result<std::unique_ptr<Store>> Store::Open(const std::string& path) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                           nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return Status::Unavailable("cannot open database " + path + ": " + msg);
  }
  sqlite3_busy_timeout(db, 5000);
  std::unique_ptr<Store> store(new Store(db));
  BERTH_RETURN_IF_ERROR(store->Exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;"));
  BERTH_RETURN_IF_ERROR(store->Migrate().WithContext("migrating " + path));
  return store;
}

Store::~Store() { sqlite3_close(db_); }

Result<int> Store::SchemaVersion() {
  std::lock_guard lock(mu_);
  Stmt st(db_, "PRAGMA user_version");
  if (st.Step() != SQLITE_ROW) return st.Error("reading schema version");
  return static_cast<int>(st.Int(0));
}

Status Store::Migrate() {
  BERTH_ASSIGN_OR_RETURN(int version, SchemaVersion());
  if (version == 0) {
    // Before versioning: a database with tables is version 1, else it is new.
    Stmt st(db_, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'functions'");
    if (st.Step() != SQLITE_ROW) return st.Error("inspecting schema");
    version = st.Int(0) > 0 ? 1 : kSchemaVersion;
  }
  if (version > kSchemaVersion) {
    return Status::FailedPrecondition("database schema version " + std::to_string(version) +
                                      " is newer than this berthd understands (" + std::to_string(kSchemaVersion) +
                                      ")");
  }
  // (claims came with nodes, so old databases may have no claims table at all)
  bool claims_lack_disk = false;
  {
    Stmt st(db_,
            "SELECT (SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'claims'), "
            "(SELECT count(*) FROM pragma_table_info('claims') WHERE name = 'disk_bytes')");
    if (st.Step() != SQLITE_ROW) return st.Error("inspecting schema");
    claims_lack_disk = st.Int(0) > 0 && st.Int(1) == 0;
  }
  std::string sql = "BEGIN IMMEDIATE;\n";
  if (version == 1) sql += kMigrateV1Before;
  if (version == 1 || version == 2) sql += kMigrateV2Executions;
  if (version < 5) sql += kMigrateV4Executions;
  if (claims_lack_disk) sql += kMigrateV5Claims;
  sql += kSchema;
  if (version == 1) sql += kMigrateV1After;
  sql += "PRAGMA user_version = " + std::to_string(kSchemaVersion) + ";\nCOMMIT;";
  Status s = Exec(sql);
  if (!s.ok()) {
    (void)Exec("ROLLBACK");
    return s;
  }
  return Status::Ok();
}

Status Store::Exec(const std::string& sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    return Status::Internal("sqlite: " + msg);
  }
  return Status::Ok();
}

Status Store::PutImage(const ImageMeta& image) {
  std::lock_guard lock(mu_);
  Stmt st(db_,
          "INSERT OR IGNORE INTO images(id, name, format, filesystem, size_bytes, virtual_size_bytes, tenant, "
          "created_ms) VALUES (?,?,?,?,?,?,?,?)");
  st.Bind(image.id).Bind(image.name).Bind(image.format).Bind(image.filesystem);
  st.Bind(static_cast<int64_t>(image.size_bytes)).Bind(static_cast<int64_t>(image.virtual_size_bytes));
  st.Bind(image.tenant).Bind(image.created_ms);
  if (st.Step() != SQLITE_DONE) return st.Error("storing image");
  return Status::Ok();
}

namespace {
ImageMeta ImageFromRow(const Stmt& st) {
  ImageMeta m;
  m.id = st.Text(0);
  m.name = st.Text(1);
  m.format = st.Text(2);
  m.filesystem = st.Text(3);
  m.size_bytes = static_cast<uint64_t>(st.Int(4));
  m.virtual_size_bytes = static_cast<uint64_t>(st.Int(5));
  m.tenant = st.Text(6);
  m.created_ms = st.Int(7);
  return m;
}
constexpr const char* kImageSelect =
    "SELECT id, name, format, filesystem, size_bytes, virtual_size_bytes, tenant, created_ms FROM images";
}  // namespace

Result<ImageMeta> Store::GetImage(const std::string& tenant, const std::string& id) {
  std::lock_guard lock(mu_);
  Stmt st(db_, (std::string(kImageSelect) + " WHERE tenant = ? AND id = ?").c_str());
  st.Bind(tenant).Bind(id);
  int rc = st.Step();
  if (rc == SQLITE_ROW) return ImageFromRow(st);
  if (rc == SQLITE_DONE) return Status::NotFound("image '" + id + "' does not exist");
  return st.Error("reading image");
}

Result<std::vector<ImageMeta>> Store::ListImages(const std::string& tenant) {
  std::lock_guard lock(mu_);
  Stmt st(db_, (std::string(kImageSelect) + " WHERE tenant = ? ORDER BY created_ms, id").c_str());
  st.Bind(tenant);
  return st.Collect(ImageFromRow, "listing images");
}

Status Store::DeleteImage(const std::string& tenant, const std::string& id) {
  std::lock_guard lock(mu_);
  Stmt st(db_, "DELETE FROM images WHERE tenant = ? AND id = ?");
  st.Bind(tenant).Bind(id);
  if (st.Step() != SQLITE_DONE) return st.Error("deleting image");
  if (sqlite3_changes(db_) == 0) return Status::NotFound("image '" + id + "' does not exist");
  return Status::Ok();
}

Result<int64_t> Store::ImageRecordCount(const std::string& id) {
  std::lock_guard lock(mu_);
  Stmt st(db_, "SELECT count(*) FROM images WHERE id = ?");
  st.Bind(id);
  if (st.Step() != SQLITE_ROW) return st.Error("counting image records");
  return st.Int(0);
}

Result<std::vector<std::string>> Store::FunctionsUsingImage(const std::string& tenant, const std::string& image_id) {
  std::lock_guard lock(mu_);
  Stmt st(db_, "SELECT name FROM functions WHERE tenant = ? AND image = ? ORDER BY name");
  st.Bind(tenant).Bind(image_id);
  return st.Collect([](const Stmt& row) { return row.Text(0); }, "listing functions");
}

Status Store::PutTag(const ImageTag& tag) {
  std::lock_guard lock(mu_);
  Stmt st(db_, "INSERT OR REPLACE INTO image_tags(tenant, name, tag, id, created_ms) VALUES (?,?,?,?,?)");
  st.Bind(tag.tenant).Bind(tag.name).Bind(tag.tag).Bind(tag.id).Bind(tag.created_ms);
  if (st.Step() != SQLITE_DONE) return st.Error("storing tag");
  return Status::Ok();
}

namespace {
ImageTag TagFromRow(const Stmt& st) { return ImageTag{st.Text(0), st.Text(1), st.Text(2), st.Text(3), st.Int(4)}; }
constexpr const char* kTagSelect = "SELECT tenant, name, tag, id, created_ms FROM image_tags";
}  // namespace

Result<ImageTag> Store::ResolveTag(const std::string& tenant, const std::string& name, const std::string& tag) {
  std::lock_guard lock(mu_);
  Stmt st(db_, (std::string(kTagSelect) + " WHERE tenant = ? AND name = ? AND tag = ?").c_str());
  st.Bind(tenant).Bind(name).Bind(tag);
  int rc = st.Step();
  if (rc == SQLITE_ROW) return TagFromRow(st);
  if (rc == SQLITE_DONE) return Status::NotFound("image '" + name + ":" + tag + "' does not exist");
  return st.Error("reading tag");
}

Status Store::DeleteTag(const std::string& tenant, const std::string& name, const std::string& tag) {
  std::lock_guard lock(mu_);
  Stmt st(db_, "DELETE FROM image_tags WHERE tenant = ? AND name = ? AND tag = ?");
  st.Bind(tenant).Bind(name).Bind(tag);
  if (st.Step() != SQLITE_DONE) return st.Error("deleting tag");
  if (sqlite3_changes(db_) == 0) return Status::NotFound("image '" + name + ":" + tag + "' does not exist");
  return Status::Ok();
}

Result<std::vector<ImageTag>> Store::ListTags(const std::string& tenant, const std::string& image_id) {
  std::lock_guard lock(mu_);
  Stmt st(db_, (std::string(kTagSelect) + " WHERE tenant = ? AND (? = '' OR id = ?) ORDER BY name, tag").c_str());
  st.Bind(tenant).Bind(image_id).Bind(image_id);
  return st.Collect(TagFromRow, "listing tags");
}

Status Store::DeleteTagsOf(const std::string& tenant, const std::string& image_id) {
  std::lock_guard lock(mu_);
  Stmt st(db_, "DELETE FROM image_tags WHERE tenant = ? AND id = ?");
  st.Bind(tenant).Bind(image_id);
  if (st.Step() != SQLITE_DONE) return st.Error("deleting tags");
  return Status::Ok();
}

Result<std::vector<std::string>> Store::LiveExecutionsUsingImage(const std::string& tenant,
                                                                 const std::string& image_id) {
  std::lock_guard lock(mu_);
  Stmt st(db_,
          "SELECT id FROM executions WHERE image = ? AND (? = '' OR tenant = ?) AND state NOT IN "
          "('succeeded','failed','timed_out','killed','lost','error') ORDER BY created_ms");
  st.Bind(image_id).Bind(tenant).Bind(tenant);
  return st.Collect([](const Stmt& row) { return row.Text(0); }, "listing executions");
}

Result<std::vector<ImageMeta>> Store::ListUnreferencedImages() {
  std::lock_guard lock(mu_);
  Stmt st(db_, (std::string(kImageSelect) +
                " i WHERE NOT EXISTS (SELECT 1 FROM image_tags t WHERE t.tenant = i.tenant AND t.id = i.id)"
                " AND NOT EXISTS (SELECT 1 FROM functions f WHERE f.tenant = i.tenant AND f.image = i.id)"
                " ORDER BY created_ms")
                   .c_str());
  return st.Collect(ImageFromRow, "listing images");
}

Result<int64_t> Store::FunctionCountUsingImage(const std::string& image_id) {
  std::lock_guard lock(mu_);
  Stmt st(db_, "SELECT count(*) FROM functions WHERE image = ?");
  st.Bind(image_id);
  if (st.Step() != SQLITE_ROW) return st.Error("counting functions");
  return st.Int(0);
}

Status Store::CreateFunction(const FunctionRecord& fn) {
  std::lock_guard lock(mu_);
  Stmt st(db_, "INSERT INTO functions(name, tenant, version, spec, image, created_ms, updated_ms) VALUES (?,?,?,?,?,?,?)");
  st.Bind(fn.spec.name).Bind(fn.tenant).Bind(fn.version).Bind(SpecToJson(fn.spec).dump()).Bind(fn.spec.image);
  st.Bind(fn.created_ms).Bind(fn.updated_ms);
  int rc = st.Step();
  if (rc == SQLITE_CONSTRAINT) return Status::AlreadyExists("function '" + fn.spec.name + "' already exists");
  if (rc != SQLITE_DONE) return st.Error("creating function");
  return Status::Ok();
}

Result<FunctionRecord> Store::UpdateFunction(const std::string& tenant, const FunctionSpec& spec, int64_t now_ms) {
  {
    std::lock_guard lock(mu_);
    Stmt st(db_,
            "UPDATE functions SET version = version + 1, spec = ?, image = ?, updated_ms = ? "
            "WHERE tenant = ? AND name = ?");
    st.Bind(SpecToJson(spec).dump()).Bind(spec.image).Bind(now_ms).Bind(tenant).Bind(spec.name);
    if (st.Step() != SQLITE_DONE) return st.Error("updating function");
    if (sqlite3_changes(db_) == 0) return Status::NotFound("function '" + spec.name + "' does not exist");
  }
  return GetFunction(tenant, spec.name);
}

Result<FunctionRecord> Store::GetFunction(const std::string& tenant, const std::string& name) {
  std::lock_guard lock(mu_);
  Stmt st(db_, (std::string("SELECT ") + kFunctionCols + " FROM functions WHERE tenant = ? AND name = ?").c_str());
  st.Bind(tenant).Bind(name);
  int rc = st.Step();
  if (rc == SQLITE_ROW) return FunctionFromRow(st);
  if (rc == SQLITE_DONE) return Status::NotFound("function '" + name + "' does not exist");
  return st.Error("reading function");
}

Result<std::vector<FunctionRecord>> Store::ListFunctions(const std::string& tenant) {
  std::lock_guard lock(mu_);
  Stmt st(db_, (std::string("SELECT ") + kFunctionCols + " FROM functions WHERE tenant = ? ORDER BY name").c_str());
  st.Bind(tenant);
  return st.Collect(FunctionFromRow, "listing functions");
}

Status Store::DeleteFunction(const std::string& tenant, const std::string& name) {
  std::lock_guard lock(mu_);
  Stmt st(db_, "DELETE FROM functions WHERE tenant = ? AND name = ?");
  st.Bind(tenant).Bind(name);
  if (st.Step() != SQLITE_DONE) return st.Error("deleting function");
  if (sqlite3_changes(db_) == 0) return Status::NotFound("function '" + name + "' does not exist");
  return Status::Ok();
}

namespace {
constexpr const char* kTokenSelect = "SELECT id, tenant, name, sha256, admin, created_ms, revoked_ms FROM tokens";
TokenRecord TokenFromRow(const Stmt& st) {
  TokenRecord t;
  t.id = st.Text(0);
  t.tenant = st.Text(1);
  t.name = st.Text(2);
  t.sha256 = st.Text(3);
  t.admin = st.Int(4) != 0;
  t.created_ms = st.Int(5);
  if (!st.IsNull(6)) t.revoked_ms = st.Int(6);
  return t;
}
}  // namespace

Status Store::PutTenant(const std::string& name, int64_t now_ms) {
  std::lock_guard lock(mu_);
  Stmt st(db_, "INSERT OR IGNORE INTO tenants(name, created_ms) VALUES (?, ?)");
  st.Bind(name).Bind(now_ms);
  if (st.Step() != SQLITE_DONE) return st.Error("storing tenant");
  return Status::Ok();
}

Status Store::InsertToken(const TokenRecord& t) {
  std::lock_guard lock(mu_);
  Stmt st(db_, "INSERT INTO tokens(id, tenant, name, sha256, admin, created_ms, revoked_ms) VALUES (?,?,?,?,?,?,?)");
  st.Bind(t.id).Bind(t.tenant).Bind(t.name).Bind(t.sha256).Bind(int64_t{t.admin ? 1 : 0}).Bind(t.created_ms);
  if (t.revoked_ms) {
    st.Bind(*t.revoked_ms);
  } else {
    st.BindNull();
  }
  int rc = st.Step();
  if (rc == SQLITE_CONSTRAINT) return Status::AlreadyExists("token '" + t.id + "' already exists");
  if (rc != SQLITE_DONE) return st.Error("storing token");
  return Status::Ok();
}

Result<TokenRecord> Store::FindTokenBySha256(const std::string& sha256) {
  std::lock_guard lock(mu_);
  Stmt st(db_, (std::string(kTokenSelect) + " WHERE sha256 = ?").c_str());
  st.Bind(sha256);
  int rc = st.Step();
  if (rc == SQLITE_ROW) return TokenFromRow(st);
  if (rc == SQLITE_DONE) return Status::NotFound("no such token");
  return st.Error("reading token");
}

Result<TokenRecord> Store::GetToken(const std::string& id) {
  std::lock_guard lock(mu_);
  Stmt st(db_, (std::string(kTokenSelect) + " WHERE id = ?").c_str());
  st.Bind(id);
  int rc = st.Step();
  if (rc == SQLITE_ROW) return TokenFromRow(st);
  if (rc == SQLITE_DONE) return Status::NotFound("token '" + id + "' does not exist");
  return st.Error("reading token");
}

Result<std::vector<TokenRecord>> Store::ListTokens(const std::string& tenant) {
  std::lock_guard lock(mu_);
  std::string sql = std::string(kTokenSelect) + (tenant.empty() ? "" : " WHERE tenant = ?") + " ORDER BY created_ms, id";
  Stmt st(db_, sql.c_str());
  if (!tenant.empty()) st.Bind(tenant);
  return st.Collect(TokenFromRow, "listing tokens");
}

Status Store::RevokeToken(const std::string& id, int64_t now_ms) {
  std::lock_guard lock(mu_);
  Stmt st(db_, "UPDATE tokens SET revoked_ms = coalesce(revoked_ms, ?) WHERE id = ?");
  st.Bind(now_ms).Bind(id);
  if (st.Step() != SQLITE_DONE) return st.Error("revoking token");
  if (sqlite3_changes(db_) == 0) return Status::NotFound("token '" + id + "' does not exist");
  return Status::Ok();
}

Result<int64_t> Store::TokenCount() {
  std::lock_guard lock(mu_);
  Stmt st(db_, "SELECT count(*) FROM tokens");
  if (st.Step() != SQLITE_ROW) return st.Error("counting tokens");
  return st.Int(0);
}

Result<int64_t> Store::NewPid() {
  std::lock_guard lock(mu_);
  Stmt st(db_, "UPDATE counters SET value = value + 1 WHERE name = 'pid' RETURNING value");
  if (st.Step() != SQLITE_ROW) return st.Error("allocating pid");
  return st.Int(0);
}

Status Store::InsertExecution(const ExecutionRecord& ex) {
  std::lock_guard lock(mu_);
  Stmt st(db_, (std::string("INSERT INTO executions(") + kExecCols +
                ") VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)").c_str());
  BindExecution(st, ex);
  if (st.Step() != SQLITE_DONE) return st.Error("recording execution");
  return Status::Ok();
}

Status Store::UpdateExecution(const ExecutionRecord& ex) {
  std::lock_guard lock(mu_);
  // Same column order as kExecCols; the id (first) goes into the WHERE clause.
  Stmt st(db_,
          "UPDATE executions SET id = ?1, function = ?2, function_version = ?3, tenant = ?4, image = ?5, state = ?6, "
          "node = ?7, domain = ?8, pid = ?9, ppid = ?10, exit_code = ?11, signal = ?12, error_code = ?13, "
          "error = ?14, stdout = ?15, stderr = ?16, output_truncated = ?17, duration_ms = ?18, timings = ?19, "
          "created_ms = ?20, finished_ms = ?21, name = ?22, kind = ?23, userdata = ?24, spec = ?25, console = ?26, "
          "console_truncated = ?27, network = ?28 WHERE id = ?1");
  BindExecution(st, ex);
  if (st.Step() != SQLITE_DONE) return st.Error("updating execution");
  if (sqlite3_changes(db_) == 0) return Status::NotFound("execution '" + ex.id + "' does not exist");
  return Status::Ok();
}

Result<ExecutionRecord> Store::GetExecution(const std::string& id) {
  std::lock_guard lock(mu_);
  Stmt st(db_, (std::string("SELECT ") + kExecCols + " FROM executions WHERE id = ?").c_str());
  st.Bind(id);
  int rc = st.Step();
  if (rc == SQLITE_ROW) return ExecutionFromRow(st);
  if (rc == SQLITE_DONE) return Status::NotFound("execution '" + id + "' does not exist");
  return st.Error("reading execution");
}

Result<std::vector<ExecutionRecord>> Store::ListExecutions(const std::string& tenant, const std::string& function,
                                                            size_t limit) {
  ExecutionFilter f;
  f.function = function;
  f.limit = limit;
  return ListExecutions(tenant, f);
}

Result<std::vector<ExecutionRecord>> Store::ListExecutions(const std::string& tenant, const ExecutionFilter& f) {
  std::lock_guard lock(mu_);
  std::string sql = std::string("SELECT ") + kExecCols + " FROM executions WHERE tenant = ?";
  if (!f.function.empty()) sql += " AND function = ?";
  if (!f.states.empty()) {
    sql += " AND state IN (";
    for (size_t i = 0; i < f.states.size(); ++i) sql += i ? ",?" : "?";
    sql += ")";
  }
  if (f.since_ms) sql += " AND created_ms >= ?";
  if (f.until_ms) sql += " AND created_ms < ?";
  if (f.ppid) sql += " AND ppid = ?";
  sql += f.oldest_first ? " ORDER BY pid ASC LIMIT ?" : " ORDER BY created_ms DESC, pid DESC LIMIT ?";
  Stmt st(db_, sql.c_str());
  st.Bind(tenant);
  if (!f.function.empty()) st.Bind(f.function);
  for (ExecState s : f.states) st.Bind(std::string(ExecStateName(s)));
  if (f.since_ms) st.Bind(*f.since_ms);
  if (f.until_ms) st.Bind(*f.until_ms);
  if (f.ppid) st.Bind(*f.ppid);
  st.Bind(static_cast<int64_t>(f.limit));
  return st.Collect(ExecutionFromRow, "listing executions");
}

Result<ExecutionRecord> Store::GetExecutionByPid(const std::string& tenant, int64_t pid) {
  std::lock_guard lock(mu_);
  Stmt st(db_, (std::string("SELECT ") + kExecCols + " FROM executions WHERE pid = ? AND tenant = ?").c_str());
  st.Bind(pid).Bind(tenant);
  int rc = st.Step();
  if (rc == SQLITE_ROW) return ExecutionFromRow(st);
  if (rc == SQLITE_DONE) return Status::NotFound("process " + std::to_string(pid) + " does not exist", "pid");
  return st.Error("reading execution");
}

Result<int64_t> Store::PruneFinishedExecutions(size_t keep, int64_t finished_before_ms) {
  std::lock_guard lock(mu_);
  // Keeps the newest `keep` finished records; of the rest, removes those that
  // finished before the cut-off (0: all of them).
  Stmt st(db_, (std::string("DELETE FROM executions WHERE finished_ms > 0 AND finished_ms < ? AND state NOT IN ") +
                kUnfinishedStates +
                " AND id NOT IN (SELECT id FROM executions WHERE finished_ms > 0 ORDER BY finished_ms DESC LIMIT ?) "
                "AND id NOT IN (SELECT id FROM claims)")
                   .c_str());
  st.Bind(finished_before_ms > 0 ? finished_before_ms : int64_t{1} << 62).Bind(static_cast<int64_t>(keep));
  if (st.Step() != SQLITE_DONE) return st.Error("pruning executions");
  return static_cast<int64_t>(sqlite3_changes(db_));
}

Result<std::vector<ExecutionRecord>> Store::ListEndedExecutionsAfter(int64_t after_finished_ms,
                                                                    const std::string& after_id, size_t limit) {
  std::lock_guard lock(mu_);
  Stmt st(db_, (std::string("SELECT ") + kExecCols +
                " FROM executions WHERE finished_ms > 0 AND state NOT IN " + kUnfinishedStates +
                " AND (finished_ms > ? OR (finished_ms = ? AND id > ?)) ORDER BY finished_ms, id LIMIT ?")
                   .c_str());
  st.Bind(after_finished_ms).Bind(after_finished_ms).Bind(after_id).Bind(static_cast<int64_t>(limit));
  return st.Collect(ExecutionFromRow, "listing ended executions");
}

Result<std::vector<ExecutionRecord>> Store::ListUnfinishedExecutions() {
  std::lock_guard lock(mu_);
  Stmt st(db_, (std::string("SELECT ") + kExecCols +
                " FROM executions WHERE state IN " + kUnfinishedStates + " ORDER BY pid").c_str());
  return st.Collect(ExecutionFromRow, "listing executions");
}

Status Store::PutNode(const NodeRow& n) {
  std::lock_guard lock(mu_);
  Stmt st(db_, "INSERT INTO nodes(name, uri, spec, state, created_ms) VALUES (?,?,?,?,?) ON CONFLICT(name) DO UPDATE "
               "SET uri = excluded.uri, spec = excluded.spec, state = excluded.state");
  st.Bind(n.name).Bind(n.uri).Bind(n.spec_json).Bind(n.state).Bind(n.created_ms);
  int rc = st.Step();
  if (rc == SQLITE_CONSTRAINT) return Status::AlreadyExists("another node already has uri '" + n.uri + "'");
  if (rc != SQLITE_DONE) return st.Error("storing node");
  return Status::Ok();
}

Result<std::vector<NodeRow>> Store::ListNodes() {
  std::lock_guard lock(mu_);
  Stmt st(db_, "SELECT name, uri, spec, state, created_ms FROM nodes ORDER BY created_ms, name");
  return st.Collect(
      [](const Stmt& r) { return NodeRow{r.Text(0), r.Text(1), r.Text(2), r.Text(3), r.Int(4)}; }, "listing nodes");
}

Status Store::DeleteNode(const std::string& name) {
  std::lock_guard lock(mu_);
  Stmt st(db_, "DELETE FROM nodes WHERE name = ?");
  st.Bind(name);
  if (st.Step() != SQLITE_DONE) return st.Error("deleting node");
  if (sqlite3_changes(db_) == 0) return Status::NotFound("node '" + name + "' does not exist");
  return Status::Ok();
}

Status Store::InsertClaim(const ClaimRow& c) {
  std::lock_guard lock(mu_);
  Stmt st(db_, "INSERT INTO claims(id, node, vcpus, memory_mib, created_ms, disk_bytes) VALUES (?,?,?,?,?,?)");
  st.Bind(c.id).Bind(c.node).Bind(c.vcpus).Bind(c.memory_mib).Bind(c.created_ms);
  if (c.disk_bytes) {
    st.Bind(*c.disk_bytes);
  } else {
    st.BindNull();
  }
  int rc = st.Step();
  if (rc == SQLITE_CONSTRAINT) return Status::AlreadyExists("claim '" + c.id + "' exists");
  if (rc != SQLITE_DONE) return st.Error("storing claim");
  return Status::Ok();
}

Status Store::DeleteClaim(const std::string& id) {
  std::lock_guard lock(mu_);
  Stmt st(db_, "DELETE FROM claims WHERE id = ?");
  st.Bind(id);
  if (st.Step() != SQLITE_DONE) return st.Error("deleting claim");
  return Status::Ok();
}

namespace {
constexpr const char* kClaimCols = "id, node, vcpus, memory_mib, created_ms, disk_bytes";
ClaimRow ClaimFromRow(const Stmt& r) {
  ClaimRow c{r.Text(0), r.Text(1), r.Int(2), r.Int(3), r.Int(4)};
  if (!r.IsNull(5)) c.disk_bytes = r.Int(5);
  return c;
}
}  // namespace

Result<std::vector<ClaimRow>> Store::ListClaims() {
  std::lock_guard lock(mu_);
  Stmt st(db_, (std::string("SELECT ") + kClaimCols + " FROM claims ORDER BY created_ms").c_str());
  return st.Collect(ClaimFromRow, "listing claims");
}

Result<ClaimRow> Store::GetClaim(const std::string& id) {
  std::lock_guard lock(mu_);
  Stmt st(db_, (std::string("SELECT ") + kClaimCols + " FROM claims WHERE id = ?").c_str());
  st.Bind(id);
  int rc = st.Step();
  if (rc == SQLITE_ROW) return ClaimFromRow(st);
  if (rc == SQLITE_DONE) return Status::NotFound("claim '" + id + "' does not exist");
  return st.Error("reading claim");
}

}  // namespace berth::manager
