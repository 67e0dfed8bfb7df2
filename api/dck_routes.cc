// Seed 001's DCK API, unchanged, under /dck/api/v1.0: images are "binaries",
// instances are processes under the roots kernel (0) and init (1). Backed by
// the same registry and executions as /v1; only the JSON shapes differ.
#include <ctime>

#include "api/json_fields.h"
#include "api/render.h"
#include "api/routes.h"

namespace berth::api {
namespace {

using json = nlohmann::json;

constexpr const char* kBase = "/dck/api/v1.0";

std::string BaseUrl(const HttpRequest& req) {
  return "http://" + (req.host.empty() ? std::string("localhost") : req.host) + kBase;
}

std::string IsoTime(int64_t unix_ms) {
  std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  return buf;
}

json DckImageSummary(const HttpRequest& req, const manager::ImageMeta& m) {
  return {{"url", BaseUrl(req) + "/image/" + m.id}, {"id", m.id}, {"name", m.name}};
}

// Glance v1's fields, as strings like the seed shows them.
json DckImage(const manager::ImageMeta& m) {
  return {{"status", "active"},
          {"name", m.name},
          {"deleted", "False"},
          {"checksum", m.id},
          {"created_at", IsoTime(m.created_ms)},
          {"disk_format", m.format},
          {"updated_at", IsoTime(m.created_ms)},
          {"owner", m.tenant},
          {"protected", "False"},
          {"min_ram", "0"},
          {"container_format", "bare"},
          {"min_disk", "0"},
          {"is_public", "False"},
          {"id", m.id},
          {"size", std::to_string(m.size_bytes)}};
}

json DckRoot(const HttpRequest& req, int64_t pid) {
  return {{"url", BaseUrl(req) + "/proc/" + std::to_string(pid)},
          {"ppid", 0},
          {"pid", pid},
          {"name", pid == 0 ? "kernel" : "init"}};
}

json DckProc(const HttpRequest& req, const manager::ExecutionRecord& e) {
  return {{"userdata", e.userdata},
          {"name", e.name},
          {"url", BaseUrl(req) + "/proc/" + std::to_string(e.pid)},
          {"pid", e.pid},
          {"imageid", e.image},
          {"ppid", e.ppid}};
}

// The seed's exec answer has no url.
json DckCreated(const manager::ExecutionRecord& e) {
  return {{"userdata", e.userdata}, {"ppid", e.ppid}, {"pid", e.pid}, {"name", e.name}, {"imageid", e.image}};
}

Result<int64_t> DckPid(const HttpRequest& req) {
  const std::string& s = req.params.at("pid");
  if (s.empty() || s.size() > 15 || s.find_first_not_of("0123456789") != std::string::npos) {
    return Status::InvalidArgument("pid", "must be a non-negative integer");
  }
  return std::stoll(s);
}

}  // namespace

void AddDckRoutes(Router& router, manager::Service& svc) {
  const std::string b = kBase;
  router.Add({"GET", b + "/images", "DCK: list images (dck-ls)", [&svc](const HttpRequest& req) {
                auto images = svc.ListImages(Who(req));
                if (!images.ok()) return ErrorResponse(images.status());
                json arr = json::array();
                for (const auto& m : *images) arr.push_back(DckImageSummary(req, m));
                return Json(200, {{"images", arr}});
              }});
  router.Add({"GET", b + "/image/{id}", "DCK: show an image (dck-ls ID)", [&svc](const HttpRequest& req) {
                auto m = svc.GetImage(Who(req), req.params.at("id"));
                if (!m.ok()) return ErrorResponse(m.status());
                return Json(200, {{"image", DckImage(*m)}});
              }});
  router.Add({"GET", b + "/procs", "DCK: list instances (dck-ps)", [&svc](const HttpRequest& req) {
                auto procs = svc.ListProcs(Who(req), false, 100000);
                if (!procs.ok()) return ErrorResponse(procs.status());
                json arr = json::array({DckRoot(req, 0), DckRoot(req, 1)});
                for (const auto& p : *procs) arr.push_back(DckProc(req, p));
                return Json(200, {{"instances", arr}});
              }});
  router.Add({"GET", b + "/proc/{pid}", "DCK: show an instance (dck-ps PID)", [&svc](const HttpRequest& req) {
                auto pid = DckPid(req);
                if (!pid.ok()) return ErrorResponse(pid.status());
                if (*pid == 0 || *pid == 1) return Json(200, {{"instance", DckRoot(req, *pid)}});
                auto p = svc.GetProc(Who(req), *pid);
                if (!p.ok()) return ErrorResponse(p.status());
                return Json(200, {{"instance", DckProc(req, *p)}});
              }});
  Route exec{"POST", b + "/proc/{pid}",
             "DCK: start a child of PID {type: exec|fork, name, imageid, userdata} (dck-exec)",
             [&svc](const HttpRequest& req) {
               auto pid = DckPid(req);
               if (!pid.ok()) return ErrorResponse(pid.status());
               auto j = ParseJsonObject(req.body);
               if (!j.ok()) return ErrorResponse(j.status());
               FieldReader r(*j);
               std::string type, name, imageid, userdata;
               Status s = r.String("type", &type, true);
               if (s.ok()) s = r.String("name", &name);
               if (s.ok()) s = r.String("imageid", &imageid);
               if (s.ok()) s = r.String("userdata", &userdata);
               if (s.ok()) s = r.NoUnknownFields();
               if (!s.ok()) return ErrorResponse(s);
               Result<manager::ExecutionRecord> started = Status::Internal("unreachable");
               if (type == "exec") {
                 manager::ExecRequest er;
                 er.ppid = *pid;
                 er.name = name;
                 er.image = imageid;
                 er.userdata = userdata;
                 started = svc.Exec(Who(req), er);
                 if (!started.ok() && started.status().field() == "image") {
                   started = Status(started.status().code(), started.status().message(), "imageid");
                 }
               } else if (type == "fork") {
                 // The child takes the parent's image and user-data (seed 001).
                 started = svc.Fork(Who(req), *pid, name);
               } else {
                 return ErrorResponse(Status::InvalidArgument("type", "must be 'exec' or 'fork'"));
               }
               if (!started.ok()) return ErrorResponse(started.status());
               return Json(201, {{"instance", DckCreated(*started)}});
             }};
  exec.success_status = 201;
  router.Add(std::move(exec));
  router.Add({"GET", b + "/proc/{pid}/children", "DCK: children of PID (dck-ps-ppid)",
              [&svc](const HttpRequest& req) {
                auto pid = DckPid(req);
                if (!pid.ok()) return ErrorResponse(pid.status());
                auto kids = svc.Children(Who(req), *pid, false);
                if (!kids.ok()) return ErrorResponse(kids.status());
                json arr = json::array();
                if (*pid == 0) arr.push_back(DckRoot(req, 1));
                for (const auto& k : *kids) arr.push_back(DckProc(req, k));
                return Json(200, {{"instances", arr}});
              }});
}

}  // namespace berth::api
