// /v1/images: plain uploads, resumable upload sessions (OCI-distribution
// style), tags, inspect, delete.
//
//   POST   /v1/images[?name=N[:T]&format=F]          body = the image (plain or chunked) -> 201 image
//   POST   /v1/images/uploads[?name=&format=]        start a session -> 202 {id, offset: 0}, Location
//   PATCH  /v1/images/uploads/{id}                   Content-Range: [bytes ]<start>-<end> (optional);
//                                                    body appended at start, which must be the
//                                                    session's offset (else 416 + Range + offset);
//                                                    the body must have end-start+1 bytes (else 400
//                                                    naming Content-Range; a short body's bytes stay)
//                                                    -> 202 {id, offset}, Range: 0-<offset-1>
//   GET|HEAD /v1/images/uploads/{id}                 -> 200 {id, offset, ...} / 204, Range
//   PUT    /v1/images/uploads/{id}?digest=sha256:H   last bytes optional in the body; verify,
//                                                    inspect, store -> 201 image
//   DELETE /v1/images/uploads/{id}                   abort
//   GET    /v1/images/tags                           the tenant's tags
//   POST   /v1/images/{ref}/tags {"tag":"name:tag"}  -> 201 image details
//   GET    /v1/images/{ref}                          details: tags, referenced_by, nodes
//   DELETE /v1/images/{ref}                          name:tag untags; an id deletes (409 while used)
#include <nlohmann/json.hpp>
#include <optional>

#include "api/errors.h"
#include "api/json_fields.h"
#include "api/render.h"
#include "api/routes.h"

namespace berth::api {
namespace {

using json = nlohmann::json;

std::string Query(const HttpRequest& req, const char* key) {
  auto it = req.query.find(key);
  return it == req.query.end() ? "" : it->second;
}

json DetailsJson(const manager::ImageDetails& d) {
  json j = ImageJson(d.meta);
  j["digest"] = "sha256:" + d.meta.id;
  j["tags"] = d.tags;
  j["referenced_by"] = {{"functions", d.functions}, {"executions", d.executions}};
  j["nodes"] = d.nodes;
  return j;
}

json SessionJson(const images::UploadSessionInfo& s) {
  return {{"id", s.id},
          {"offset", s.offset},
          {"name", s.name},
          {"format", s.format},
          {"created_ms", s.created_ms},
          {"updated_ms", s.updated_ms},
          {"location", "/v1/images/uploads/" + s.id}};
}

// OCI's Range header: the bytes held, inclusive ("0-0" for none, as OCI does).
std::string RangeHeader(uint64_t offset) { return "0-" + std::to_string(offset == 0 ? 0 : offset - 1); }

HttpResponse SessionResponse(int status, const images::UploadSessionInfo& s) {
  HttpResponse r = Json(status, SessionJson(s));
  r.headers.emplace_back("Location", "/v1/images/uploads/" + s.id);
  r.headers.emplace_back("Range", RangeHeader(s.offset));
  r.headers.emplace_back("Docker-Upload-UUID", s.id);
  return r;
}

// A PATCH's Content-Range: "[bytes ]<start>-<end>" (end inclusive),
// "<start>-" (no end) and "bytes <start>-<end>/<total>" too.
struct ContentRange {
  uint64_t start = 0;
  std::optional<uint64_t> end;  // inclusive
  // Body bytes the range announces (when it has an end).
  std::optional<uint64_t> length() const {
    return end ? std::optional<uint64_t>(*end - start + 1) : std::nullopt;
  }
};

Result<uint64_t> ParseOffset(const std::string& v) {
  if (v.empty() || v.size() > 19 || v.find_first_not_of("0123456789") != std::string::npos) {
    return Status::InvalidArgument("Content-Range", "must be <start>-<end> (byte offsets)");
  }
  return std::stoull(v);
}

Result<ContentRange> ParseContentRange(std::string v) {
  if (v.rfind("bytes ", 0) == 0) v = v.substr(6);
  if (auto slash = v.find('/'); slash != std::string::npos) v = v.substr(0, slash);
  auto dash = v.find('-');
  ContentRange r;
  BERTH_ASSIGN_OR_RETURN(r.start, ParseOffset(v.substr(0, dash)));
  if (dash != std::string::npos && dash + 1 < v.size()) {
    BERTH_ASSIGN_OR_RETURN(r.end, ParseOffset(v.substr(dash + 1)));
    if (*r.end < r.start) {
      return Status::InvalidArgument("Content-Range", "end " + std::to_string(*r.end) + " is before start " +
                                                          std::to_string(r.start));
    }
  }
  return r;
}

Status RangeLengthMismatch(uint64_t announced, uint64_t body) {
  return Status::InvalidArgument("Content-Range", "announces " + std::to_string(announced) +
                                                      " bytes (end - start + 1) but the body has " +
                                                      (body > announced ? "more than " : "") + std::to_string(body));
}

// A body that is read and dropped; the answer was decided before it arrived.
class FixedResponseSink final : public BodySink {
 public:
  explicit FixedResponseSink(HttpResponse r) : response_(std::move(r)) {}
  Status Append(std::string_view) override { return Status::Ok(); }
  HttpResponse Finish() override { return response_; }

 private:
  HttpResponse response_;
};

class ImageUploadSink final : public BodySink {
 public:
  ImageUploadSink(manager::Service& svc, manager::Principal caller, std::unique_ptr<images::ImageUpload> upload,
                  std::string name)
      : svc_(svc), caller_(std::move(caller)), upload_(std::move(upload)), name_(std::move(name)) {}
  Status Append(std::string_view chunk) override { return upload_->Append(chunk); }
  HttpResponse Finish() override {
    return Respond(svc_.CommitImageUpload(caller_, std::move(upload_), name_), 201, ImageJson);
  }

 private:
  manager::Service& svc_;
  manager::Principal caller_;
  std::unique_ptr<images::ImageUpload> upload_;
  std::string name_;
};

// PATCH (and PUT with a body): appends to a session; PUT then finishes it.
class SessionSink final : public BodySink {
 public:
  // `expected_bytes`: the body length Content-Range announced (nullopt: any).
  SessionSink(manager::Service& svc, manager::Principal caller, std::string id,
              std::unique_ptr<images::SessionWriter> writer, std::string finish_digest,
              std::optional<uint64_t> expected_bytes)
      : svc_(svc),
        caller_(std::move(caller)),
        id_(std::move(id)),
        writer_(std::move(writer)),
        digest_(std::move(finish_digest)),
        expected_(expected_bytes) {}
  Status Append(std::string_view chunk) override {
    // Bytes past the announced end are refused before any of them is written.
    if (expected_ && chunk.size() > *expected_ - received_) return RangeLengthMismatch(*expected_, received_ + chunk.size());
    received_ += chunk.size();
    return writer_->Append(chunk);
  }
  HttpResponse Finish() override {
    auto offset = writer_->Close();
    writer_.reset();  // releases the session before a finish takes it
    if (!offset.ok()) return ErrorResponse(offset.status());
    if (expected_ && received_ != *expected_) {
      // A short body: what arrived stays in the session (its offset says so).
      HttpResponse r = ErrorResponse(RangeLengthMismatch(*expected_, received_));
      json body = json::parse(r.body);
      body["offset"] = *offset;
      r.body = body.dump();
      r.headers.emplace_back("Range", RangeHeader(*offset));
      return r;
    }
    if (!digest_.empty()) return FinishSession(svc_, caller_, id_, digest_);
    auto info = svc_.GetImageUploadSession(caller_, id_);
    if (!info.ok()) return ErrorResponse(info.status());
    return SessionResponse(202, *info);
  }

  static HttpResponse FinishSession(manager::Service& svc, const manager::Principal& caller, const std::string& id,
                                    const std::string& digest) {
    auto meta = svc.FinishImageUploadSession(caller, id, digest);
    if (!meta.ok()) return ErrorResponse(meta.status());
    HttpResponse r = Json(201, ImageJson(*meta));
    r.headers.emplace_back("Location", "/v1/images/" + meta->id);
    r.headers.emplace_back("Docker-Content-Digest", "sha256:" + meta->id);
    return r;
  }

 private:
  manager::Service& svc_;
  manager::Principal caller_;
  std::string id_;
  std::unique_ptr<images::SessionWriter> writer_;
  std::string digest_;
  std::optional<uint64_t> expected_;
  uint64_t received_ = 0;
};

// Opens the session for the request's body; answers 416 (with the offset)
// when Content-Range does not start at the session's offset.
Result<std::unique_ptr<BodySink>> SessionSinkFor(manager::Service& svc, const HttpRequest& req, bool finish) {
  const std::string& id = req.params.at("id");
  std::string digest;
  if (finish) {
    digest = Query(req, "digest");
    if (digest.empty()) return Status::InvalidArgument("digest", "is required: ?digest=sha256:<hex>");
  }
  BERTH_ASSIGN_OR_RETURN(auto info, svc.GetImageUploadSession(Who(req), id));
  uint64_t start = info.offset;
  std::optional<uint64_t> expected;
  if (auto it = req.headers.find("content-range"); it != req.headers.end()) {
    BERTH_ASSIGN_OR_RETURN(ContentRange range, ParseContentRange(it->second));
    start = range.start;
    expected = range.length();
    // A declared body length must be the range's: refused before a byte is written.
    if (auto cl = req.headers.find("content-length"); expected && cl != req.headers.end()) {
      auto length = ParseOffset(cl->second);
      if (length.ok() && *length != *expected) return RangeLengthMismatch(*expected, *length);
    }
  }
  uint64_t current = info.offset;
  auto writer = svc.AppendImageUploadSession(Who(req), id, start, &current);
  if (!writer.ok()) {
    if (writer.status().field() != "Content-Range") return writer.status();
    HttpResponse r = ErrorResponse(writer.status());
    r.status = 416;
    json body = json::parse(r.body);
    body["offset"] = current;
    r.body = body.dump();
    r.headers.emplace_back("Range", RangeHeader(current));
    r.headers.emplace_back("Location", "/v1/images/uploads/" + id);
    return std::unique_ptr<BodySink>(new FixedResponseSink(std::move(r)));
  }
  return std::unique_ptr<BodySink>(new SessionSink(svc, Who(req), id, std::move(*writer), digest, expected));
}

}  // namespace

void AddImageRoutes(Router& router, manager::Service& svc) {
  Route upload{"POST", "/v1/images",
               "Upload a disk image (raw ext2/3/4 or self-contained qcow2) as the body (?name=name[:tag], ?format=)"};
  upload.success_status = 201;
  upload.sink = [&svc](const HttpRequest& req) -> Result<std::unique_ptr<BodySink>> {
    std::string name = Query(req, "name");
    if (name.size() > 128) return Status::InvalidArgument("name", "must be at most 128 characters");
    BERTH_ASSIGN_OR_RETURN(auto up, svc.BeginImageUpload());
    // Optional ?format=raw|qcow2: the content must then be of that format (checked at commit).
    if (auto format = Query(req, "format"); !format.empty()) up->ClaimFormat(format);
    return std::unique_ptr<BodySink>(new ImageUploadSink(svc, Who(req), std::move(up), name));
  };
  router.Add(std::move(upload));
  router.Add({"GET", "/v1/images", "List images", [&svc](const HttpRequest& req) {
                return Respond(svc.ListImages(Who(req)), 200, ListOf("images", ImageJson));
              }});

  Route start{"POST", "/v1/images/uploads",
              "Start a resumable upload session (?name=name[:tag], ?format=); answers its id and Location",
              [&svc](const HttpRequest& req) {
                auto s = svc.StartImageUploadSession(Who(req), Query(req, "name"), Query(req, "format"));
                if (!s.ok()) return ErrorResponse(s.status());
                return SessionResponse(202, *s);
              }};
  start.success_status = 202;
  router.Add(std::move(start));
  Route patch{"PATCH", "/v1/images/uploads/{id}",
              "Append the body to an upload session at Content-Range's start (must be the session's offset: "
              "else 416 with the offset)"};
  patch.success_status = 202;
  patch.sink = [&svc](const HttpRequest& req) { return SessionSinkFor(svc, req, false); };
  router.Add(std::move(patch));
  Route put{"PUT", "/v1/images/uploads/{id}",
            "Finish an upload session: ?digest=sha256:<hex> must match; the body, if any, is appended first"};
  put.success_status = 201;
  put.sink = [&svc](const HttpRequest& req) { return SessionSinkFor(svc, req, true); };
  router.Add(std::move(put));
  router.Add({"GET", "/v1/images/uploads/{id}", "An upload session's offset (bytes received)",
              [&svc](const HttpRequest& req) {
                auto s = svc.GetImageUploadSession(Who(req), req.params.at("id"));
                return s.ok() ? SessionResponse(200, *s) : ErrorResponse(s.status());
              }});
  router.Add({"HEAD", "/v1/images/uploads/{id}", "An upload session's offset in its Range header",
              [&svc](const HttpRequest& req) {
                auto s = svc.GetImageUploadSession(Who(req), req.params.at("id"));
                if (!s.ok()) return ErrorResponse(s.status());
                HttpResponse r = SessionResponse(204, *s);
                r.body.clear();
                r.content_type.clear();
                return r;
              }});
  router.Add({"DELETE", "/v1/images/uploads/{id}", "Abort an upload session", [&svc](const HttpRequest& req) {
                Status s = svc.AbortImageUploadSession(Who(req), req.params.at("id"));
                return s.ok() ? Json(200, {{"aborted", req.params.at("id")}}) : ErrorResponse(s);
              }});

  router.Add({"GET", "/v1/images/tags", "List the tenant's image tags", [&svc](const HttpRequest& req) {
                auto tags = svc.ListImageTags(Who(req));
                if (!tags.ok()) return ErrorResponse(tags.status());
                json out = json::array();
                for (const auto& t : *tags) {
                  out.push_back({{"ref", t.name + ":" + t.tag},
                                 {"name", t.name},
                                 {"tag", t.tag},
                                 {"id", t.id},
                                 {"created_ms", t.created_ms}});
                }
                return Json(200, {{"tags", out}});
              }});
  Route tag{"POST", "/v1/images/{id}/tags", "Tag an image (id, name:tag or name): {\"tag\": \"name[:tag]\"}",
            [&svc](const HttpRequest& req) {
              auto j = ParseJsonObject(req.body);
              if (!j.ok()) return ErrorResponse(j.status());
              FieldReader r(*j);
              std::string name_tag;
              Status s = r.String("tag", &name_tag, true);
              if (s.ok()) s = r.NoUnknownFields();
              if (!s.ok()) return ErrorResponse(s);
              return Respond(svc.TagImage(Who(req), req.params.at("id"), name_tag), 201, DetailsJson);
            }};
  tag.success_status = 201;
  router.Add(std::move(tag));
  router.Add({"GET", "/v1/images/{id}", "Inspect an image (id, name:tag or name): tags, referenced by, nodes",
              [&svc](const HttpRequest& req) {
                return Respond(svc.InspectImage(Who(req), req.params.at("id")), 200, DetailsJson);
              }});
  router.Add({"DELETE", "/v1/images/{id}",
              "Untag name:tag, or delete an image by id (409 while a function or a live execution uses it)",
              [&svc](const HttpRequest& req) {
                const std::string& ref = req.params.at("id");
                Status s = svc.DeleteImageRef(Who(req), ref);
                if (!s.ok()) return ErrorResponse(s);
                bool untag = ref.find(':') != std::string::npos && ref.rfind("sha256:", 0) != 0;
                return Json(200, {{untag ? "untagged" : "deleted", ref}});
              }});
}

}  // namespace berth::api
