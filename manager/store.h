// Store: berth's durable state in one SQLite file (WAL mode).
//
// Every write is one transaction; a record written and acknowledged survives
// a crash of berthd. Methods are thread-safe (one connection, serialized).
// SQLite headers stay inside store.cc.
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "manager/types.h"

struct sqlite3;

namespace berth::manager {

// A registered node: its spec (JSON, see manager/cluster.h) and its
// administrative state (up, cordoned, draining).
struct NodeRow {
  std::string name, uri, spec_json, state;
  int64_t created_ms = 0;
};

// Capacity claimed on a node by one execution (id = the execution's id),
// from placement until its VM is gone.
struct ClaimRow {
  std::string id, node;
  int64_t vcpus = 0, memory_mib = 0, created_ms = 0;
  // Disk bytes the claim holds on the node (schema 6); unset for a row an
  // older berthd wrote, whose disk was not recorded.
  std::optional<int64_t> disk_bytes;
};

struct ImageTag {
  std::string tenant, name, tag, id;
  int64_t created_ms = 0;
};

struct ExecutionFilter {
  std::string function;                // "" any
  std::vector<ExecState> states;       // empty: any
  std::optional<int64_t> since_ms, until_ms;  // created_ms in [since, until)
  std::optional<int64_t> ppid;
  size_t limit = 100;
  bool oldest_first = false;           // by pid ascending (process tables)
};

class Store {
 public:
  // Opens (creating if needed) the database at `path` and migrates the schema.
  static Result<std::unique_ptr<Store>> Open(const std::string& path);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // The schema version this code writes (PRAGMA user_version). Version 1 is
  // the pre-tenancy schema (user_version 0 with tables present); Open
  // migrates older databases in place, in one transaction.
  static constexpr int kSchemaVersion = 6;  // 4: image_tags; 5: executions.network; 6: claims.disk_bytes
  Result<int> SchemaVersion();

  // Images: one record per (tenant, id); the file behind them is shared
  // (content-addressed), so the same bytes uploaded by two tenants give two
  // records and one file.
  Status PutImage(const ImageMeta& image);  // insert, or keep the tenant's existing record
  Result<ImageMeta> GetImage(const std::string& tenant, const std::string& id);
  Result<std::vector<ImageMeta>> ListImages(const std::string& tenant);
  Status DeleteImage(const std::string& tenant, const std::string& id);
  // How many records (of any tenant) reference this image id.
  Result<int64_t> ImageRecordCount(const std::string& id);
  // The tenant's functions referencing an image (an image in use cannot be deleted).
  Result<std::vector<std::string>> FunctionsUsingImage(const std::string& tenant, const std::string& image_id);
  // Image tags (schema 4): (tenant, name, tag) -> image id. PutTag inserts or
  // moves the tag; ResolveTag and DeleteTag are NotFound for unknown tags.
  Status PutTag(const ImageTag& tag);
  Result<ImageTag> ResolveTag(const std::string& tenant, const std::string& name, const std::string& tag);
  Status DeleteTag(const std::string& tenant, const std::string& name, const std::string& tag);
  // The tenant's tags ("" id: all of them), by name and tag.
  Result<std::vector<ImageTag>> ListTags(const std::string& tenant, const std::string& image_id);
  Status DeleteTagsOf(const std::string& tenant, const std::string& image_id);
  // Ids of non-terminal executions using an image ("" tenant: any tenant's).
  Result<std::vector<std::string>> LiveExecutionsUsingImage(const std::string& tenant, const std::string& image_id);
  // Image records of every tenant with no tag and no function referencing
  // them (GC candidates; live executions are checked by the caller).
  Result<std::vector<ImageMeta>> ListUnreferencedImages();
  // How many functions of any tenant reference an image.
  Result<int64_t> FunctionCountUsingImage(const std::string& image_id);

  // Functions, unique per (tenant, name). Create fails kAlreadyExists; Update bumps the version.
  Status CreateFunction(const FunctionRecord& fn);
  Result<FunctionRecord> UpdateFunction(const std::string& tenant, const FunctionSpec& spec, int64_t now_ms);
  Result<FunctionRecord> GetFunction(const std::string& tenant, const std::string& name);
  Result<std::vector<FunctionRecord>> ListFunctions(const std::string& tenant);
  Status DeleteFunction(const std::string& tenant, const std::string& name);

  // Tenants and tokens.
  Status PutTenant(const std::string& name, int64_t now_ms);  // insert or keep
  Status InsertToken(const TokenRecord& token);
  // The token whose secret hashes to sha256 (revoked ones too); NotFound otherwise.
  Result<TokenRecord> FindTokenBySha256(const std::string& sha256);
  Result<TokenRecord> GetToken(const std::string& id);
  // All tokens ("" tenant) or one tenant's, oldest first.
  Result<std::vector<TokenRecord>> ListTokens(const std::string& tenant);
  // Sets revoked_ms (keeps an earlier revocation time). NotFound if unknown.
  Status RevokeToken(const std::string& id, int64_t now_ms);
  Result<int64_t> TokenCount();

  // Executions. NewPid hands out the next process id (monotonic, never reused).
  Result<int64_t> NewPid();
  Status InsertExecution(const ExecutionRecord& ex);
  // Writes the full record; the caller has checked the state transition.
  Status UpdateExecution(const ExecutionRecord& ex);
  Result<ExecutionRecord> GetExecution(const std::string& id);
  // One tenant's executions ("" function: all of them), newest first.
  Result<std::vector<ExecutionRecord>> ListExecutions(const std::string& tenant, const std::string& function,
                                                       size_t limit);
  // One tenant's executions matching every set field of the filter.
  Result<std::vector<ExecutionRecord>> ListExecutions(const std::string& tenant, const ExecutionFilter& filter);
  // The tenant's process `pid`; NotFound (field "pid") for others' pids too.
  Result<ExecutionRecord> GetExecutionByPid(const std::string& tenant, int64_t pid);
  // Retention: deletes finished records beyond the newest `keep` that
  // finished before `finished_before_ms` (0: any time), except those whose
  // claim is still held (its release needs the record). Returns how many.
  Result<int64_t> PruneFinishedExecutions(size_t keep, int64_t finished_before_ms);
  // Ended executions of every tenant, in end order: finished_ms, then id,
  // strictly after the cursor (after_finished_ms, after_id); at most `limit`.
  // Start with (since_ms, "") to get those that ended at since_ms or later.
  Result<std::vector<ExecutionRecord>> ListEndedExecutionsAfter(int64_t after_finished_ms, const std::string& after_id,
                                                                size_t limit);
  // Nodes. PutNode inserts or updates by name; AlreadyExists if another node has the uri.
  Status PutNode(const NodeRow& node);
  Result<std::vector<NodeRow>> ListNodes();
  Status DeleteNode(const std::string& name);
  // Claims (allocations). Insert fails AlreadyExists for a duplicate id.
  Status InsertClaim(const ClaimRow& claim);
  Status DeleteClaim(const std::string& id);  // a missing claim is fine
  Result<std::vector<ClaimRow>> ListClaims();
  // NotFound for an unknown claim id.
  Result<ClaimRow> GetClaim(const std::string& id);

  // Executions that were not terminal when berthd stopped (for reconciliation).
  Result<std::vector<ExecutionRecord>> ListUnfinishedExecutions();

 private:
  explicit Store(sqlite3* db) : db_(db) {}
  Status Exec(const std::string& sql);
  Status Migrate();

  std::mutex mu_;
  sqlite3* db_;
};

}  // namespace berth::manager
