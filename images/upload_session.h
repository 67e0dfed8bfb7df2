// UploadSessions: resumable image uploads in the spirit of the OCI
// distribution protocol (start, append contiguous ranges, finish with the
// client's digest, abort).
//
// Layout: <store dir>/uploads/<id>.part (the bytes received so far) and
// <id>.json (tenant, name, claimed format, created). Both survive a berthd
// restart: the offset of a session is the size of its .part, which is
// fsync'd before every append is acknowledged, so an acknowledged offset is
// durable and a crash can only lose bytes the client was never told about.
//
// Hash state: while a session lives in this process its sha256 is updated as
// bytes arrive, so finishing costs no extra read. A session found on disk
// after a restart (or whose in-memory hash no longer covers exactly the bytes
// of the .part, e.g. after a failed write) is re-hashed from its .part at
// finish. The .part is the single source of truth; a persisted hash context
// could disagree with a .part a crash cut short, re-hashing cannot.
//
// A session is owned by its tenant: another tenant's id is NotFound. One
// append or finish at a time per session (a second gets Aborted, HTTP 409).
// Thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "common/env.h"
#include "common/status.h"
#include "images/image_format.h"
#include "images/image_store.h"
#include "images/pipelined_writer.h"

namespace berth::images {

struct UploadSessionInfo {
  std::string id;      // 32 lowercase hex characters
  std::string tenant;
  std::string name;    // the name ("name" or "name:tag") to record at finish; may be empty
  std::string format;  // claimed format ("" none)
  uint64_t offset = 0;  // bytes received (the next PATCH starts here)
  int64_t created_ms = 0;
  int64_t updated_ms = 0;  // last append (the .part's mtime), or created
};

class UploadSessions;

// Appends to one session from `offset` on. Destroying it flushes (fsync)
// what was written and releases the session; bytes written before a failure
// stay (the client asks for the offset and continues from there).
class SessionWriter {
 public:
  ~SessionWriter();
  SessionWriter(const SessionWriter&) = delete;
  SessionWriter& operator=(const SessionWriter&) = delete;
  // ResourceExhausted (field "image") past the store's size limit.
  Status Append(std::string_view chunk);
  // Flushes now; the session's offset afterwards.
  Result<uint64_t> Close();
  uint64_t offset() const { return offset_; }

 private:
  friend class UploadSessions;
  struct Live;
  SessionWriter(UploadSessions* owner, std::shared_ptr<Live> live, int fd, uint64_t offset);
  UploadSessions* owner_;
  std::shared_ptr<Live> live_;
  int fd_;
  uint64_t offset_;
  const uint64_t start_offset_;
  bool hashing_ = false;  // pipe_ updates the session's hash (it covered exactly the .part at the start)
  bool failed_ = false;
  std::unique_ptr<PipelinedWriter> pipe_;  // writes fd_ (and hashes) off the caller's thread
};

class UploadSessions {
 public:
  // `store` must outlive this. Creates <store dir>/uploads (0700).
  UploadSessions(Env* env, ImageStore* store, uint64_t max_bytes);
  ~UploadSessions();

  Result<UploadSessionInfo> Start(const std::string& tenant, const std::string& name, const std::string& format);
  // NotFound (field "id") for unknown ids and other tenants' sessions.
  Result<UploadSessionInfo> Get(const std::string& tenant, const std::string& id);
  // Opens the session for appending at `offset`, which must equal the
  // current offset: otherwise FailedPrecondition with field "Content-Range"
  // and *current_offset set (HTTP 416). Aborted while another writer or a
  // finish holds the session.
  Result<std::unique_ptr<SessionWriter>> Append(const std::string& tenant, const std::string& id, uint64_t offset,
                                                uint64_t* current_offset);
  // Checks the digest ("sha256:<64 hex>") against the bytes received,
  // inspects the image and moves it into the store; the session is gone
  // afterwards. A malformed or wrong digest is InvalidArgument (field
  // "digest", HTTP 400) and keeps the session; a rejected image
  // (FailedPrecondition, field "image") removes it.
  Result<ImageRecord> Finish(const std::string& tenant, const std::string& id, const std::string& digest,
                             InspectOptions options);
  // Removes the session and its bytes. NotFound as Get.
  Status Abort(const std::string& tenant, const std::string& id);
  // Removes sessions (and stray .part / .json files) not touched since
  // `idle_before_unix_ms` and not being written. Returns how many.
  size_t CollectStale(int64_t idle_before_unix_ms);
  // All sessions on disk (for listing and tests).
  std::vector<UploadSessionInfo> List();

  const std::string& dir() const { return dir_; }

 private:
  friend class SessionWriter;
  std::string PartPath(const std::string& id) const { return dir_ + "/" + id + ".part"; }
  std::string MetaPath(const std::string& id) const { return dir_ + "/" + id + ".json"; }
  Result<UploadSessionInfo> Load(const std::string& id);
  // The live state of a session (created on first use after a restart).
  std::shared_ptr<SessionWriter::Live> LiveOf(const std::string& id, bool hash_valid_if_new);
  void Forget(const std::string& id);
  Status RemoveFiles(const std::string& id);

  Env* env_;
  ImageStore* store_;
  uint64_t max_bytes_;
  std::string dir_;
  Status init_status_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<SessionWriter::Live>> live_;
};

// Parses "sha256:<64 lowercase hex>" into the hex; InvalidArgument (field "digest") otherwise.
Result<std::string> ParseSha256Digest(const std::string& digest);

}  // namespace berth::images
