#include "images/image_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "images/image_format.h"
#include "images/store_files.h"

namespace berth::images {
namespace {

// Env offers whole-file reads and atomic whole-file writes only; streaming a
// multi-GiB upload needs an open descriptor (write, fsync, fchmod) and
// listing needs a directory walk, so those few calls use POSIX directly.

constexpr const char* kFormats[] = {"qcow2", "raw"};

Status InvalidId() {
  return Status::InvalidArgument("image", "image id must be a sha256: 64 lowercase hex characters");
}

// Makes a completed rename durable.
void SyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  (void)::fsync(fd);
  ::close(fd);
}

}  // namespace

// ---------------------------------------------------------------- ImageUpload

ImageUpload::ImageUpload(ImageStore* store, int fd, std::string tmp_path, uint64_t max_bytes,
                         InspectOptions options)
    : store_(store),
      fd_(fd),
      tmp_path_(std::move(tmp_path)),
      max_bytes_(max_bytes),
      pipe_(std::make_unique<PipelinedWriter>(fd, 0, &hash_, "cannot write image upload")),
      options_(std::move(options)) {}

ImageUpload::~ImageUpload() { Abort(); }

void ImageUpload::Abort() {
  pipe_.reset();  // its threads use fd_
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  if (!done_) {
    (void)store_->env_->RemoveFile(tmp_path_);
    done_ = true;
  }
}

Status ImageUpload::Append(std::string_view chunk) {
  if (done_) return Status::FailedPrecondition("image upload is already finished or aborted");
  if (chunk.size() > max_bytes_ - written_) {
    Abort();
    return Status(Code::kResourceExhausted,
                  "image upload exceeds the limit of " + std::to_string(max_bytes_) + " bytes", "image");
  }
  if (Status st = pipe_->Append(chunk); !st.ok()) {
    Abort();
    return st;
  }
  written_ += chunk.size();
  return Status::Ok();
}

Result<ImageRecord> ImageUpload::Commit() {
  if (done_) return Status::FailedPrecondition("image upload is already finished or aborted");
  if (Status st = pipe_->Flush(); !st.ok()) {
    Abort();
    return st;
  }
  pipe_.reset();
  // World-readable regardless of umask: QEMU (libvirt-qemu) opens it.
  if (::fchmod(fd_, 0644) != 0 || ::fsync(fd_) != 0) {
    int e = errno;
    Abort();
    return StoreWriteError("cannot flush image upload", e);
  }
  int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    int e = errno;
    Abort();
    return StoreWriteError("cannot flush image upload", e);
  }
  // From here on Install owns (and always removes) the temporary file.
  done_ = true;
  return store_->Install(tmp_path_, hash_.FinishHex(), options_);
}

// ----------------------------------------------------------------- ImageStore

ImageStore::ImageStore(Env* env, std::string dir) : env_(env) {
  std::error_code ec;
  std::filesystem::path abs = std::filesystem::absolute(dir, ec);
  dir_ = ec ? dir : abs.lexically_normal().string();
  while (dir_.size() > 1 && dir_.back() == '/') dir_.pop_back();
  tmp_dir_ = dir_ + "/tmp";
  init_status_ = env_->CreateDirs(dir_, 0755);
  // Leftovers in tmp/ are uploads a previous process never finished.
  if (init_status_.ok()) init_status_ = env_->RemoveTree(tmp_dir_);
  if (init_status_.ok()) init_status_ = env_->CreateDirs(tmp_dir_, 0700);
  init_status_ = init_status_.WithContext("image store " + dir_);
}

std::string ImageStore::FinalPath(const std::string& id, const std::string& format) const {
  return dir_ + "/" + id + "." + format;
}

Result<std::unique_ptr<ImageUpload>> ImageStore::BeginUpload(uint64_t max_bytes, const InspectOptions& options) {
  BERTH_RETURN_IF_ERROR(init_status_);
  std::string tmp = tmp_dir_ + "/upload-" + std::to_string(::getpid()) + "-" + std::to_string(next_tmp_++) + "-" +
                    std::to_string(env_->MonotonicMs()) + ".part";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return StoreWriteError("cannot create " + tmp, errno);
  return std::unique_ptr<ImageUpload>(new ImageUpload(this, fd, std::move(tmp), max_bytes, options));
}

Result<ImageRecord> ImageStore::ImportFile(const std::string& src_path, const InspectOptions& options) {
  BERTH_RETURN_IF_ERROR(init_status_);
  int fd = ::open(src_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    std::string msg = "cannot open " + src_path + ": " + std::strerror(e);
    return e == ENOENT ? Status::NotFound(msg) : Status::Internal(msg);
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    return Status::InvalidArgument("image", src_path + " is not a regular file");
  }
  BERTH_ASSIGN_OR_RETURN(std::unique_ptr<ImageUpload> upload, BeginUpload(UINT64_MAX, options));
  std::string buf(1 << 20, '\0');
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::Internal("cannot read " + src_path + ": " + std::strerror(errno));
    }
    if (n == 0) break;
    BERTH_RETURN_IF_ERROR(upload->Append(std::string_view(buf.data(), static_cast<size_t>(n))));
  }
  return upload->Commit();
}

Result<ImageRecord> ImageStore::Install(const std::string& tmp_path, const std::string& sha256,
                                        const InspectOptions& options) {
  // Both stages (header checks, then qemu-img) before the file gets a name
  // anything else looks at.
  auto info = InspectImage(env_, tmp_path, options);
  if (!info.ok()) {
    (void)env_->RemoveFile(tmp_path);
    return info.status();
  }
  ImageRecord rec;
  rec.id = sha256;
  rec.format = info->format;
  rec.size_bytes = info->size_bytes;
  rec.virtual_size_bytes = info->virtual_size_bytes;
  rec.filesystem = info->filesystem;
  rec.path = FinalPath(sha256, info->format);
  if (env_->Exists(rec.path)) {
    // Same content already stored: keep the existing file.
    (void)env_->RemoveFile(tmp_path);
    return rec;
  }
  Status st = env_->Rename(tmp_path, rec.path);
  if (!st.ok()) {
    (void)env_->RemoveFile(tmp_path);
    return st;
  }
  SyncDir(dir_);
  return rec;
}

Result<ImageRecord> ImageStore::Get(const std::string& sha256) {
  // The id becomes part of a path: only exact sha256 hex gets that far.
  if (!IsSha256Hex(sha256)) return InvalidId();
  BERTH_RETURN_IF_ERROR(init_status_);
  for (const char* format : kFormats) {
    std::string path = FinalPath(sha256, format);
    if (!env_->Exists(path)) continue;
    // Admitted files passed both stages (with whatever options their upload
    // had); re-deriving format and sizes needs only the header.
    InspectOptions stored;
    stored.allow_iso = true;
    stored.max_virtual_size_bytes = UINT64_MAX;
    auto info = InspectImageHeader(path, stored);
    if (!info.ok()) {
      if (info.status().code() == Code::kNotFound) continue;  // removed meanwhile
      return info.status().WithContext("stored image " + sha256);
    }
    if (info->format != format) {
      return Status::Internal("stored image " + path + " is not in " + format + " format");
    }
    ImageRecord rec;
    rec.id = sha256;
    rec.format = info->format;
    rec.size_bytes = info->size_bytes;
    rec.virtual_size_bytes = info->virtual_size_bytes;
    rec.path = path;
    rec.filesystem = info->filesystem;
    return rec;
  }
  return Status::NotFound("image " + sha256 + " is not in the store");
}

Status ImageStore::Remove(const std::string& sha256) {
  if (!IsSha256Hex(sha256)) return InvalidId();
  BERTH_RETURN_IF_ERROR(init_status_);
  bool found = false;
  for (const char* format : kFormats) {
    std::string path = FinalPath(sha256, format);
    if (!env_->Exists(path)) continue;
    found = true;
    BERTH_RETURN_IF_ERROR(env_->RemoveFile(path));
  }
  if (!found) return Status::NotFound("image " + sha256 + " is not in the store");
  SyncDir(dir_);
  return Status::Ok();
}

std::vector<ImageRecord> ImageStore::List() {
  std::vector<ImageRecord> out;
  if (!init_status_.ok()) return out;
  std::vector<std::string> ids;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir_, ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    auto dot = name.find('.');
    if (dot == std::string::npos) continue;
    std::string id = name.substr(0, dot);
    std::string ext = name.substr(dot + 1);
    if (!IsSha256Hex(id) || (ext != "qcow2" && ext != "raw")) continue;
    ids.push_back(id);
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  for (const auto& id : ids) {
    auto rec = Get(id);
    if (rec.ok()) out.push_back(std::move(rec).value());
  }
  return out;
}

}  // namespace berth::images
