// Store: berth's durable state in one SQLite file (WAL mode).
//
// Every write is one transaction; a record written and acknowledged survives
// a crash of berthd. Methods are thread-safe (one connection, serialized).
// SQLite headers stay inside store.cc.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/status.h"
#include "manager/types.h"

struct sqlite3;

namespace berth::manager {

class Store {
 public:
  // Opens (creating if needed) the database at `path` and migrates the schema.
  static Result<std::unique_ptr<Store>> Open(const std::string& path);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Images.
  Status PutImage(const ImageMeta& image);  // insert or keep existing (content-addressed)
  Result<ImageMeta> GetImage(const std::string& id);
  Result<std::vector<ImageMeta>> ListImages();
  Status DeleteImage(const std::string& id);
  // Functions referencing an image (an image in use cannot be deleted).
  Result<std::vector<std::string>> FunctionsUsingImage(const std::string& image_id);

  // Functions. Create fails kAlreadyExists; Update bumps the version.
  Status CreateFunction(const FunctionRecord& fn);
  Result<FunctionRecord> UpdateFunction(const FunctionSpec& spec, int64_t now_ms);
  Result<FunctionRecord> GetFunction(const std::string& name);
  Result<std::vector<FunctionRecord>> ListFunctions();
  Status DeleteFunction(const std::string& name);

  // Executions. NewPid hands out the next process id (monotonic, never reused).
  Result<int64_t> NewPid();
  Status InsertExecution(const ExecutionRecord& ex);
  // Writes the full record; the caller has checked the state transition.
  Status UpdateExecution(const ExecutionRecord& ex);
  Result<ExecutionRecord> GetExecution(const std::string& id);
  Result<std::vector<ExecutionRecord>> ListExecutions(const std::string& function, size_t limit);
  // Executions that were not terminal when berthd stopped (for reconciliation).
  Result<std::vector<ExecutionRecord>> ListUnfinishedExecutions();

 private:
  explicit Store(sqlite3* db) : db_(db) {}
  Status Exec(const std::string& sql);

  std::mutex mu_;
  sqlite3* db_;
};

}  // namespace berth::manager
