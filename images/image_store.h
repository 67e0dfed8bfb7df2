// ImageStore: the local, content-addressed image store.
//
// Layout: DIR/<sha256>.<format> (format "qcow2" or "raw"), where sha256 is
// the hex digest of the file's bytes; DIR/tmp/ holds uploads in progress.
// Every file enters the store through a temporary file that is hashed while
// it is written, fsynced, inspected as hostile (images/image_format.h: the
// header checks, then qemu-img's cross-check) and only then renamed into
// place, so the store never holds a partial or unchecked image and nothing
// else reads an upload before it has passed both stages. Stored files are 0644 and DIR is 0755 because QEMU runs as
// libvirt-qemu and must read them.
//
// Only one ImageStore (one process) may own a directory: construction deletes
// whatever is left in DIR/tmp from a previous run. The methods of one store
// may be called from several threads; a single ImageUpload may not.
// Distribution to nodes (libvirt storage) lives elsewhere; this module only
// deals with local files.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/env.h"
#include "common/sha256.h"
#include "common/status.h"
#include "images/image_format.h"
#include "images/pipelined_writer.h"

namespace berth::images {

struct ImageRecord {
  std::string id;                   // sha256 hex of the file's content (64 lowercase hex)
  std::string format;               // "raw" | "qcow2"
  uint64_t size_bytes = 0;          // file size
  uint64_t virtual_size_bytes = 0;  // disk size the guest sees
  std::string path;                 // absolute path of the stored file
  std::string filesystem;           // "ext4"/"ext3"/"ext2" for raw images, "" for qcow2
};

class ImageStore;

// A streaming upload into the store (for HTTP request bodies). Append the
// bytes in order, then Commit. If the upload is destroyed without a
// successful Commit, or any step fails, its temporary file is removed:
// nothing half-written remains. Must not outlive its ImageStore.
class ImageUpload {
 public:
  ~ImageUpload();
  ImageUpload(const ImageUpload&) = delete;
  ImageUpload& operator=(const ImageUpload&) = delete;

  // Appends a chunk. Fails with ResourceExhausted (field "image") once the
  // total would exceed max_bytes, and the upload is then aborted; any later
  // call fails with FailedPrecondition.
  Status Append(std::string_view chunk);

  // Records the format the uploader declared ("raw", "qcow2", or "" for
  // none); Commit then refuses content of another format. Call before Commit.
  void ClaimFormat(std::string format) { options_.claimed_format = std::move(format); }

  // Flushes, inspects and moves the file into the store. Idempotent across
  // uploads: if the same content is already stored, the stored file is kept
  // and its record returned. A rejected image yields FailedPrecondition
  // (field "image", the reason in words) and leaves nothing behind.
  Result<ImageRecord> Commit();

  // Discards the upload now (also done by the destructor).
  void Abort();

  uint64_t bytes_written() const { return written_; }

 private:
  friend class ImageStore;
  ImageUpload(ImageStore* store, int fd, std::string tmp_path, uint64_t max_bytes, InspectOptions options);

  ImageStore* store_;
  int fd_;
  std::string tmp_path_;
  uint64_t max_bytes_;
  uint64_t written_ = 0;
  Sha256 hash_;
  std::unique_ptr<PipelinedWriter> pipe_;  // writes fd_ and updates hash_ off the caller's thread
  InspectOptions options_;
  bool done_ = false;  // committed or aborted
};

class ImageStore {
 public:
  // Creates DIR (0755) and DIR/tmp if needed and clears DIR/tmp. A failure
  // here is kept in init_status() and returned by every later call.
  ImageStore(Env* env, std::string dir);

  const Status& init_status() const { return init_status_; }
  const std::string& dir() const { return dir_; }

  // Copies src_path into the store (hashing while copying), inspects it and
  // renames it into place. Importing the same content twice returns the same
  // record and keeps one file. NotFound if src_path cannot be opened;
  // FailedPrecondition (field "image") if the image is rejected. `options`
  // are the inspection's (declared format, ISO allowed, size limit).
  Result<ImageRecord> ImportFile(const std::string& src_path, const InspectOptions& options = {});

  // Starts a streaming upload of at most max_bytes bytes, inspected with
  // `options` at Commit.
  Result<std::unique_ptr<ImageUpload>> BeginUpload(uint64_t max_bytes, const InspectOptions& options = {});

  // Looks an image up by id; format and sizes are re-derived from the
  // file's header (stage 1 of the inspection; stored files passed both
  // stages when they entered the store, and this runs no qemu-img).
  // InvalidArgument (field "image") if the id is not 64 lowercase hex
  // characters; NotFound if it is not stored.
  Result<ImageRecord> Get(const std::string& sha256);

  // Deletes a stored image. Same id rules as Get; NotFound if absent.
  // Callers must make sure no guest still uses it (that is not tracked here).
  Status Remove(const std::string& sha256);

  // All stored images, sorted by id. Files that no longer pass inspection
  // are skipped.
  std::vector<ImageRecord> List();

 private:
  friend class ImageUpload;
  friend class UploadSessions;  // finishes a session through Install

  // Inspects tmp_path and moves it to its final name; removes tmp_path on
  // every path out.
  Result<ImageRecord> Install(const std::string& tmp_path, const std::string& sha256, const InspectOptions& options);
  std::string FinalPath(const std::string& id, const std::string& format) const;

  Env* env_;
  std::string dir_;
  std::string tmp_dir_;
  Status init_status_;
  std::atomic<uint64_t> next_tmp_{0};
};

}  // namespace berth::images
