// Service's image references, tags, resumable upload sessions and image GC.
// (Plain uploads, listing and function/execution use of images are in
// service.cc.)
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <optional>

#include "common/sha256.h"
#include "manager/service.h"

namespace berth::manager {
namespace {

constexpr std::string_view kDigestPrefix = "sha256:";

bool IsRefChar(char c, bool allow_upper) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-' ||
         (allow_upper && c >= 'A' && c <= 'Z');
}

// Image names: lowercase letters, digits, '.', '_', '-' (1..128, starting
// with a letter or digit). Tags as OCI: [A-Za-z0-9_][A-Za-z0-9._-]{0,127}.
bool IsImageName(std::string_view s) {
  if (s.empty() || s.size() > 128 || s[0] == '.' || s[0] == '-' || s[0] == '_') return false;
  for (char c : s) {
    if (!IsRefChar(c, false)) return false;
  }
  return true;
}

bool IsImageTag(std::string_view s) {
  if (s.empty() || s.size() > 128 || s[0] == '.' || s[0] == '-') return false;
  for (char c : s) {
    if (!IsRefChar(c, true)) return false;
  }
  return true;
}

// "name[:tag]" -> {name, tag ("latest" when absent)}; nullopt if malformed.
std::optional<std::pair<std::string, std::string>> SplitNameTag(const std::string& ref) {
  auto colon = ref.rfind(':');
  std::string name = colon == std::string::npos ? ref : ref.substr(0, colon);
  std::string tag = colon == std::string::npos ? "latest" : ref.substr(colon + 1);
  if (!IsImageName(name) || !IsImageTag(tag)) return std::nullopt;
  return std::make_pair(name, tag);
}

// The id a ref spells directly ("<hex>" or "sha256:<hex>"), or "".
std::string DirectId(const std::string& ref) {
  if (IsSha256Hex(ref)) return ref;
  if (ref.rfind(kDigestPrefix, 0) == 0 && IsSha256Hex(std::string_view(ref).substr(kDigestPrefix.size()))) {
    return ref.substr(kDigestPrefix.size());
  }
  return "";
}

int64_t FileMtimeUnixMs(const std::string& path) {
  struct stat sb;
  if (::stat(path.c_str(), &sb) != 0) return 0;
  return static_cast<int64_t>(sb.st_mtim.tv_sec) * 1000 + sb.st_mtim.tv_nsec / 1'000'000;
}

}  // namespace

Result<std::string> Service::ResolveImageRef(const std::string& tenant, const std::string& ref, const char* field) {
  if (ref.empty()) return Status::InvalidArgument(field, "is required (an image id, name:tag or name)");
  if (std::string id = DirectId(ref); !id.empty()) return id;
  if (auto nt = SplitNameTag(ref)) {
    auto tag = store_->ResolveTag(tenant, nt->first, nt->second);
    if (tag.ok()) return tag->id;
    if (tag.status().code() != Code::kNotFound) return tag.status();
  }
  if (ref.find(':') == std::string::npos) {
    // An image uploaded under a plain name: the newest of that name wins (list is oldest first).
    BERTH_ASSIGN_OR_RETURN(auto all, store_->ListImages(tenant));
    std::string id;
    for (const auto& m : all) {
      if (m.name == ref) id = m.id;
    }
    if (!id.empty()) return id;
  }
  if (!SplitNameTag(ref)) {
    return Status::InvalidArgument(field, "'" + ref + "' is neither an image id (64 hex, or sha256:<hex>), name:tag nor a name");
  }
  return Status::NotFound("image '" + ref + "' does not exist", field);
}

Status Service::TagUploadName(const std::string& tenant, const std::string& id, const std::string& name) {
  if (name.empty()) return Status::Ok();
  auto nt = SplitNameTag(name);
  if (!nt) return Status::Ok();  // a free-form name (before tags): kept as the record's name only
  return store_->PutTag(ImageTag{tenant, nt->first, nt->second, id, env_->NowUnixMs()});
}

Result<ImageDetails> Service::InspectImage(const Principal& caller, const std::string& ref) {
  BERTH_ASSIGN_OR_RETURN(std::string id, ResolveImageRef(caller.tenant, ref, "id"));
  ImageDetails d;
  auto meta = store_->GetImage(caller.tenant, id);
  if (!meta.ok()) {
    if (meta.status().code() == Code::kNotFound) return Status::NotFound("image '" + ref + "' does not exist", "id");
    return meta.status();
  }
  d.meta = std::move(*meta);
  BERTH_ASSIGN_OR_RETURN(auto tags, store_->ListTags(caller.tenant, id));
  for (const auto& t : tags) d.tags.push_back(t.name + ":" + t.tag);
  BERTH_ASSIGN_OR_RETURN(d.functions, store_->FunctionsUsingImage(caller.tenant, id));
  BERTH_ASSIGN_OR_RETURN(d.executions, store_->LiveExecutionsUsingImage(caller.tenant, id));
  for (Node* n : cluster_->All()) {
    if (cluster_->IsDown(n->name())) continue;
    if (n->CachedImages().count(id)) d.nodes.push_back(n->name());
  }
  return d;
}

Result<ImageDetails> Service::TagImage(const Principal& caller, const std::string& ref, const std::string& name_tag) {
  auto nt = SplitNameTag(name_tag);
  if (!nt) {
    return Status::InvalidArgument("tag",
                                   "must be name[:tag]: a name of lowercase letters, digits, '.', '_', '-' "
                                   "(at most 128) and a tag of letters, digits, '.', '_', '-' (at most 128)");
  }
  {
    std::lock_guard lock(image_mu_);
    BERTH_ASSIGN_OR_RETURN(std::string id, ResolveImageRef(caller.tenant, ref, "id"));
    auto meta = store_->GetImage(caller.tenant, id);
    if (!meta.ok()) {
      if (meta.status().code() == Code::kNotFound) return Status::NotFound("image '" + ref + "' does not exist", "id");
      return meta.status();
    }
    BERTH_RETURN_IF_ERROR(store_->PutTag(ImageTag{caller.tenant, nt->first, nt->second, id, env_->NowUnixMs()}));
  }
  return InspectImage(caller, nt->first + ":" + nt->second);
}

Result<std::vector<ImageTag>> Service::ListImageTags(const Principal& caller) {
  return store_->ListTags(caller.tenant, "");
}

Status Service::DeleteImageRef(const Principal& caller, const std::string& ref) {
  if (DirectId(ref).empty() && ref.find(':') != std::string::npos) {
    auto nt = SplitNameTag(ref);
    if (!nt) return Status::InvalidArgument("id", "'" + ref + "' is neither an image id nor name:tag");
    std::lock_guard lock(image_mu_);
    auto st = store_->DeleteTag(caller.tenant, nt->first, nt->second);
    if (st.code() == Code::kNotFound) return Status::NotFound(st.message(), "id");
    return st;
  }
  BERTH_ASSIGN_OR_RETURN(std::string id, ResolveImageRef(caller.tenant, ref, "id"));
  return DeleteImage(caller, id);
}

Status Service::DeleteImage(const Principal& caller, const std::string& id) {
  std::lock_guard lock(image_mu_);
  BERTH_ASSIGN_OR_RETURN(auto meta, GetImage(caller, id));
  BERTH_ASSIGN_OR_RETURN(auto users, store_->FunctionsUsingImage(caller.tenant, id));
  if (!users.empty()) {
    return Status(Code::kAborted, "image is used by function '" + users.front() + "'", "id");
  }
  BERTH_ASSIGN_OR_RETURN(auto running, store_->LiveExecutionsUsingImage(caller.tenant, id));
  if (!running.empty()) {
    return Status(Code::kAborted, "image is used by running execution " + running.front(), "id");
  }
  BERTH_RETURN_IF_ERROR(store_->DeleteTagsOf(caller.tenant, id));
  BERTH_RETURN_IF_ERROR(store_->DeleteImage(caller.tenant, id));
  return RemoveImageBlobIfUnreferenced(id);
}

Status Service::RemoveImageBlobIfUnreferenced(const std::string& id) {
  // Another tenant's record still needs the file (and the nodes' copies).
  BERTH_ASSIGN_OR_RETURN(int64_t others, store_->ImageRecordCount(id));
  if (others > 0) return Status::Ok();
  for (Node* n : cluster_->All()) {
    if (!cluster_->IsDown(n->name())) (void)n->EvictImage(id);
  }
  Status st = images_->Remove(id);
  return st.code() == Code::kNotFound ? Status::Ok() : st;
}

// ------------------------------------------------------------ upload sessions

Result<images::UploadSessionInfo> Service::StartImageUploadSession(const Principal& caller, const std::string& name,
                                                                   const std::string& format) {
  if (name.size() > 128) return Status::InvalidArgument("name", "must be at most 128 characters");
  return uploads_->Start(caller.tenant, name, format);
}

Result<images::UploadSessionInfo> Service::GetImageUploadSession(const Principal& caller, const std::string& id) {
  return uploads_->Get(caller.tenant, id);
}

Result<std::unique_ptr<images::SessionWriter>> Service::AppendImageUploadSession(const Principal& caller,
                                                                                 const std::string& id,
                                                                                 uint64_t offset,
                                                                                 uint64_t* current_offset) {
  return uploads_->Append(caller.tenant, id, offset, current_offset);
}

Result<ImageMeta> Service::FinishImageUploadSession(const Principal& caller, const std::string& id,
                                                    const std::string& digest) {
  BERTH_ASSIGN_OR_RETURN(auto session, uploads_->Get(caller.tenant, id));
  std::lock_guard lock(image_mu_);
  BERTH_ASSIGN_OR_RETURN(auto record, uploads_->Finish(caller.tenant, id, digest, images::InspectOptions{}));
  return RecordImage(caller, record, session.name);
}

Status Service::AbortImageUploadSession(const Principal& caller, const std::string& id) {
  return uploads_->Abort(caller.tenant, id);
}

// ------------------------------------------------------------------------ GC

ImageGcReport Service::CollectImageGarbage() {
  ImageGcReport report;
  const int64_t now = env_->NowUnixMs();
  report.sessions_removed = uploads_->CollectStale(now - config_.upload_session_grace_ms);
  {
    std::lock_guard lock(image_mu_);
    // Records nothing references, past the grace period.
    auto unreferenced = store_->ListUnreferencedImages();
    if (!unreferenced.ok()) spdlog::warn("image gc: {}", unreferenced.status().ToString());
    for (const auto& m : unreferenced.ok() ? *unreferenced : std::vector<ImageMeta>{}) {
      if (m.created_ms > now - config_.image_gc_grace_ms) continue;
      // A free-form name from before tags (not a valid name[:tag]) still holds its image.
      if (!m.name.empty() && !SplitNameTag(m.name)) continue;
      auto running = store_->LiveExecutionsUsingImage(m.tenant, m.id);
      if (!running.ok() || !running->empty()) continue;
      if (!store_->DeleteImage(m.tenant, m.id).ok()) continue;
      ++report.images_removed;
      spdlog::info("image gc: removed unreferenced image {} of tenant {}", m.id, m.tenant);
    }
    // Blobs no record names (their last record went, or a crash came between
    // storing the file and recording it), past the grace period.
    for (const auto& rec : images_->List()) {
      auto count = store_->ImageRecordCount(rec.id);
      if (!count.ok() || *count > 0) continue;
      if (FileMtimeUnixMs(rec.path) > now - config_.image_gc_grace_ms) continue;
      if (RemoveImageBlobIfUnreferenced(rec.id).ok()) ++report.files_removed;
    }
  }
  if (config_.image_cache_bytes > 0) {
    // Images of registered functions stay: their templates and warm VMs are backed by them.
    auto in_use = [this](const std::string& id) {
      auto live = store_->LiveExecutionsUsingImage("", id);
      auto fns = store_->FunctionCountUsingImage(id);
      return !live.ok() || !live->empty() || !fns.ok() || *fns > 0;
    };
    for (Node* n : cluster_->All()) {
      if (cluster_->IsDown(n->name())) continue;
      report.volumes_evicted += n->TrimImageCache(config_.image_cache_bytes, in_use);
    }
  }
  return report;
}

void Service::StartImageGc() {
  if (config_.image_gc_interval_ms <= 0) return;
  image_gc_thread_ = std::thread([this] {
    std::unique_lock lock(image_gc_mu_);
    while (!image_gc_stop_) {
      image_gc_cv_.wait_for(lock, std::chrono::milliseconds(config_.image_gc_interval_ms));
      if (image_gc_stop_) break;
      lock.unlock();
      auto r = CollectImageGarbage();
      if (r.sessions_removed + r.images_removed + r.files_removed + r.volumes_evicted > 0) {
        spdlog::info("image gc: {} upload sessions, {} image records, {} files, {} cached volumes removed",
                     r.sessions_removed, r.images_removed, r.files_removed, r.volumes_evicted);
      }
      lock.lock();
    }
  });
}

void Service::StopImageGc() {
  {
    std::lock_guard lock(image_gc_mu_);
    image_gc_stop_ = true;
  }
  image_gc_cv_.notify_all();
  if (image_gc_thread_.joinable()) image_gc_thread_.join();
}

}  // namespace berth::manager
