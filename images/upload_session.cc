#include "images/upload_session.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <system_error>

#include "common/ids.h"
#include "common/sha256.h"
#include "images/store_files.h"

namespace berth::images {

// Streaming appends need an open descriptor (write, fsync, stat), which Env
// does not offer; those calls use POSIX directly, as ImageStore does.

struct SessionWriter::Live {
  std::mutex mu;
  bool busy = false;       // a writer or a finish holds the session
  bool hash_valid = false;  // `hash` covers exactly the first `hashed` bytes of the .part
  uint64_t hashed = 0;
  std::unique_ptr<Sha256> hash = std::make_unique<Sha256>();

  // Takes the session for one writer, finish, abort or collection; false
  // while someone else holds it.
  bool TryHold() {
    std::lock_guard lock(mu);
    if (busy) return false;
    busy = true;
    return true;
  }
  void Release() {
    std::lock_guard lock(mu);
    busy = false;
  }
};

namespace {

bool IsSessionId(const std::string& id) {
  if (id.size() != 32) return false;
  for (char c : id) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

Status SessionBusy(const std::string& id) {
  return Status(Code::kAborted, "upload session " + id + " is being written or finished", "id");
}

Status NoSession(const std::string& id) {
  return Status::NotFound("upload session '" + id + "' does not exist (finished, aborted or expired)", "id");
}

int64_t MtimeMs(const struct stat& st) {
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000 + st.st_mtim.tv_nsec / 1'000'000;
}

}  // namespace

Result<std::string> ParseSha256Digest(const std::string& digest) {
  constexpr std::string_view kPrefix = "sha256:";
  if (digest.rfind(kPrefix, 0) != 0 || !IsSha256Hex(std::string_view(digest).substr(kPrefix.size()))) {
    return Status::InvalidArgument("digest", "must be sha256:<64 lowercase hex characters>");
  }
  return digest.substr(kPrefix.size());
}

// -------------------------------------------------------------- SessionWriter

SessionWriter::SessionWriter(UploadSessions* owner, std::shared_ptr<Live> live, int fd, uint64_t offset)
    : owner_(owner), live_(std::move(live)), fd_(fd), offset_(offset), start_offset_(offset) {
  // The session holds its hash only while the hash covers exactly the bytes before this writer's first.
  hashing_ = live_->hash_valid && live_->hashed == offset;
  if (!hashing_) live_->hash_valid = false;
  pipe_ = std::make_unique<PipelinedWriter>(fd_, offset, hashing_ ? live_->hash.get() : nullptr,
                                            "cannot write upload session");
}

SessionWriter::~SessionWriter() { (void)Close(); }

Status SessionWriter::Append(std::string_view chunk) {
  if (fd_ < 0) return Status::FailedPrecondition("upload session writer is closed");
  if (chunk.size() > owner_->max_bytes_ - std::min(offset_, owner_->max_bytes_)) {
    return Status(Code::kResourceExhausted,
                  "image upload exceeds the limit of " + std::to_string(owner_->max_bytes_) + " bytes", "image");
  }
  if (Status st = pipe_->Append(chunk); !st.ok()) {
    // Part of what was appended may be on disk: the hash no longer matches the .part.
    live_->hash_valid = false;
    failed_ = true;
    return st;
  }
  offset_ += chunk.size();
  return Status::Ok();
}

Result<uint64_t> SessionWriter::Close() {
  if (fd_ < 0) return offset_;
  Status st = pipe_->Flush();
  if (st.ok() && hashing_) {
    live_->hashed = start_offset_ + pipe_->appended();
  } else {
    live_->hash_valid = false;
  }
  pipe_.reset();
  if (::fsync(fd_) != 0 && st.ok()) st = StoreWriteError("cannot flush upload session", errno);
  struct stat sb;
  if (::fstat(fd_, &sb) == 0) {
    // What is on disk is the offset, whatever this writer believes.
    if (static_cast<uint64_t>(sb.st_size) != offset_) live_->hash_valid = false;
    offset_ = static_cast<uint64_t>(sb.st_size);
  }
  ::close(fd_);
  fd_ = -1;
  live_->Release();
  if (!st.ok()) return st;
  return offset_;
}

// ------------------------------------------------------------- UploadSessions

UploadSessions::UploadSessions(Env* env, ImageStore* store, uint64_t max_bytes)
    : env_(env), store_(store), max_bytes_(max_bytes), dir_(store->dir() + "/uploads") {
  init_status_ = env_->CreateDirs(dir_, 0700).WithContext("upload sessions " + dir_);
}

UploadSessions::~UploadSessions() = default;

Result<UploadSessionInfo> UploadSessions::Start(const std::string& tenant, const std::string& name,
                                                const std::string& format) {
  BERTH_RETURN_IF_ERROR(init_status_);
  if (!format.empty() && format != "raw" && format != "qcow2") {
    return Status::InvalidArgument("format", "must be raw or qcow2");
  }
  UploadSessionInfo info;
  info.id = RandomHex(32);
  info.tenant = tenant;
  info.name = name;
  info.format = format;
  info.created_ms = info.updated_ms = env_->NowUnixMs();
  int fd = ::open(PartPath(info.id).c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return StoreWriteError("cannot create " + PartPath(info.id), errno);
  // World-readable regardless of umask: QEMU (libvirt-qemu) opens the image once stored.
  (void)::fchmod(fd, 0644);
  ::close(fd);
  nlohmann::json meta = {{"tenant", tenant}, {"name", name}, {"format", format}, {"created_ms", info.created_ms}};
  Status st = env_->WriteFileAtomic(MetaPath(info.id), meta.dump(), 0600);
  if (!st.ok()) {
    (void)env_->RemoveFile(PartPath(info.id));
    return st;
  }
  LiveOf(info.id, /*hash_valid_if_new=*/true);
  return info;
}

Result<UploadSessionInfo> UploadSessions::Load(const std::string& id) {
  if (!IsSessionId(id)) return NoSession(id);
  BERTH_RETURN_IF_ERROR(init_status_);
  auto text = env_->ReadFile(MetaPath(id));
  if (!text.ok()) return NoSession(id);
  auto j = nlohmann::json::parse(*text, nullptr, false);
  if (!j.is_object()) return Status::Internal("upload session " + id + ": unreadable state file");
  UploadSessionInfo info;
  info.id = id;
  info.tenant = j.value("tenant", "");
  info.name = j.value("name", "");
  info.format = j.value("format", "");
  info.created_ms = j.value("created_ms", int64_t{0});
  struct stat sb;
  if (::stat(PartPath(id).c_str(), &sb) != 0) return NoSession(id);
  info.offset = static_cast<uint64_t>(sb.st_size);
  info.updated_ms = std::max(info.created_ms, MtimeMs(sb));
  return info;
}

Result<UploadSessionInfo> UploadSessions::Get(const std::string& tenant, const std::string& id) {
  BERTH_ASSIGN_OR_RETURN(auto info, Load(id));
  if (info.tenant != tenant) return NoSession(id);
  return info;
}

std::shared_ptr<SessionWriter::Live> UploadSessions::LiveOf(const std::string& id, bool hash_valid_if_new) {
  std::lock_guard lock(mu_);
  auto& live = live_[id];
  if (!live) {
    live = std::make_shared<SessionWriter::Live>();
    live->hash_valid = hash_valid_if_new;
  }
  return live;
}

void UploadSessions::Forget(const std::string& id) {
  std::lock_guard lock(mu_);
  live_.erase(id);
}

Status UploadSessions::RemoveFiles(const std::string& id) {
  Status a = env_->RemoveFile(PartPath(id));
  Status b = env_->RemoveFile(MetaPath(id));
  return a.ok() ? b : a;
}

Result<std::unique_ptr<SessionWriter>> UploadSessions::Append(const std::string& tenant, const std::string& id,
                                                              uint64_t offset, uint64_t* current_offset) {
  BERTH_ASSIGN_OR_RETURN(auto info, Get(tenant, id));
  // Found on disk but not in memory (a restart): its hash is rebuilt at finish.
  auto live = LiveOf(id, /*hash_valid_if_new=*/info.offset == 0);
  if (!live->TryHold()) return SessionBusy(id);
  // Re-read the offset under the session's hold: a writer may just have finished.
  auto now = Get(tenant, id);
  if (!now.ok()) {
    live->Release();
    return now.status();
  }
  if (current_offset) *current_offset = now->offset;
  if (offset != now->offset) {
    live->Release();
    return Status::FailedPrecondition("ranges must be contiguous: this session's next byte is " +
                                          std::to_string(now->offset) + ", not " + std::to_string(offset),
                                      "Content-Range");
  }
  int fd = ::open(PartPath(id).c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    live->Release();
    return e == ENOENT ? NoSession(id) : StoreWriteError("cannot open upload session", e);
  }
  return std::unique_ptr<SessionWriter>(new SessionWriter(this, live, fd, now->offset));
}

Result<ImageRecord> UploadSessions::Finish(const std::string& tenant, const std::string& id,
                                           const std::string& digest, InspectOptions options) {
  BERTH_ASSIGN_OR_RETURN(std::string want, ParseSha256Digest(digest));
  BERTH_ASSIGN_OR_RETURN(auto info, Get(tenant, id));
  auto live = LiveOf(id, /*hash_valid_if_new=*/info.offset == 0);
  if (!live->TryHold()) return SessionBusy(id);
  BERTH_ASSIGN_OR_RETURN(info, Get(tenant, id));
  std::string got;
  if (live->hash_valid && live->hashed == info.offset) {
    got = live->hash->FinishHex();
    // FinishHex consumed the context: a wrong digest keeps the session, re-hashed next time.
    live->hash_valid = false;
  } else {
    auto hex = Sha256::HexOfFile(PartPath(id));
    if (!hex.ok()) {
      live->Release();
      return hex.status();
    }
    got = *hex;
  }
  if (got != want) {
    live->Release();
    return Status::InvalidArgument("digest", "the " + std::to_string(info.offset) + " bytes received have digest sha256:" +
                                                 got + ", not " + digest);
  }
  if (options.claimed_format.empty()) options.claimed_format = info.format;
  // From here on Install owns (and always removes) the .part.
  auto rec = store_->Install(PartPath(id), got, options);
  (void)env_->RemoveFile(MetaPath(id));
  live->Release();
  Forget(id);
  return rec;
}

Status UploadSessions::Abort(const std::string& tenant, const std::string& id) {
  BERTH_ASSIGN_OR_RETURN(auto info, Get(tenant, id));
  auto live = LiveOf(id, false);
  if (!live->TryHold()) return SessionBusy(id);
  Status st = RemoveFiles(id);
  Forget(id);
  return st;
}

std::vector<UploadSessionInfo> UploadSessions::List() {
  std::vector<UploadSessionInfo> out;
  std::error_code ec;
  std::vector<std::string> ids;
  for (std::filesystem::directory_iterator it(dir_, ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    if (name.size() == 32 + 5 && name.ends_with(".json")) ids.push_back(name.substr(0, 32));
  }
  std::sort(ids.begin(), ids.end());
  for (const auto& id : ids) {
    if (auto info = Load(id); info.ok()) out.push_back(std::move(*info));
  }
  return out;
}

size_t UploadSessions::CollectStale(int64_t idle_before_unix_ms) {
  if (!init_status_.ok()) return 0;
  std::map<std::string, int64_t> newest;  // id -> newest mtime of its files
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir_, ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    std::string id = name.substr(0, name.find('.'));
    struct stat sb;
    if (::lstat(it->path().c_str(), &sb) != 0) continue;
    int64_t& t = newest[id];
    t = std::max(t, MtimeMs(sb));
  }
  size_t removed = 0;
  for (const auto& [id, mtime] : newest) {
    if (mtime >= idle_before_unix_ms) continue;
    if (!IsSessionId(id)) {
      // Not a session's file at all: only ours live here, so it goes too.
      std::filesystem::remove(dir_ + "/" + id + ".part", ec);
      std::filesystem::remove(dir_ + "/" + id + ".json", ec);
      continue;
    }
    auto live = LiveOf(id, false);
    if (!live->TryHold()) continue;
    if (RemoveFiles(id).ok()) ++removed;
    Forget(id);
  }
  return removed;
}

}  // namespace berth::images
