#include "cli/image_commands.h"

#include <curl/curl.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <ostream>
#include <system_error>

#include "common/sha256.h"
#include "images/image_format.h"

namespace berth::cli {
namespace {

// Paths may hold bytes that are not UTF-8; replace them instead of throwing.
std::string Dump(const nlohmann::json& j) {
  return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string AbsolutePath(const std::string& p) {
  std::error_code ec;
  auto abs = std::filesystem::absolute(p, ec);
  return ec ? p : abs.lexically_normal().string();
}

nlohmann::json InfoJson(const std::string& path, const images::ImageInfo& info) {
  return {{"path", path},
          {"format", info.format},
          {"size_bytes", info.size_bytes},
          {"virtual_size_bytes", info.virtual_size_bytes},
          {"filesystem", info.filesystem}};
}

std::string DefaultStateDir() {
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/berth/uploads";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.cache/berth/uploads";
  return "/tmp/berth-uploads";
}

size_t CollectBody(char* data, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(data, size * n);
  return size * n;
}

struct RangeBody {
  FILE* f;
  uint64_t left;
};

size_t ReadRange(char* buf, size_t size, size_t n, void* user) {
  auto* rb = static_cast<RangeBody*>(user);
  size_t want = static_cast<size_t>(std::min<uint64_t>(size * n, rb->left));
  if (want == 0) return 0;
  size_t got = std::fread(buf, 1, want, rb->f);
  rb->left -= got;
  return got;
}

struct ProgressCtx {
  const UploadProgress* progress;
  uint64_t base, total;
};

int OnProgress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t ulnow) {
  auto* p = static_cast<ProgressCtx*>(user);
  (*p->progress)(p->base + static_cast<uint64_t>(ulnow), p->total);
  return 0;
}

// One request; with `file`, its bytes [from, from+length) are the streamed body.
HttpReply Send(const std::string& method, const std::string& url, const std::string& token,
               const std::vector<std::string>& extra_headers, const std::string& file = "", uint64_t from = 0,
               uint64_t length = 0, const UploadProgress* progress = nullptr, uint64_t total = 0) {
  HttpReply reply;
  CURL* curl = curl_easy_init();
  if (!curl) {
    reply.error = "cannot initialize libcurl";
    return reply;
  }
  curl_slist* headers = nullptr;
  if (!token.empty()) headers = curl_slist_append(headers, ("Authorization: Bearer " + token).c_str());
  for (const auto& h : extra_headers) headers = curl_slist_append(headers, h.c_str());
  headers = curl_slist_append(headers, "Expect:");
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_NOPROXY, "*");
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &CollectBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &reply.body);
  FILE* f = nullptr;
  RangeBody body{nullptr, 0};
  ProgressCtx pctx{progress, from, total};
  if (!file.empty()) {
    f = std::fopen(file.c_str(), "rb");
    if (!f || ::fseeko(f, static_cast<off_t>(from), SEEK_SET) != 0) {
      if (f) std::fclose(f);
      curl_slist_free_all(headers);
      curl_easy_cleanup(curl);
      reply.error = "cannot read " + file;
      return reply;
    }
    body = {f, length};
    headers = curl_slist_append(headers, "Content-Type: application/octet-stream");
    curl_easy_setopt(curl, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(curl, CURLOPT_READFUNCTION, &ReadRange);
    curl_easy_setopt(curl, CURLOPT_READDATA, &body);
    curl_easy_setopt(curl, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(length));
    curl_easy_setopt(curl, CURLOPT_UPLOAD_BUFFERSIZE, 1L << 20);  // fewer, larger sends than the 64 KiB default
    if (progress && *progress) {
      curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
      curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, &OnProgress);
      curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &pctx);
    }
  }
  curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method.c_str());
  if (method == "HEAD") curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
  if (file.empty() && (method == "POST" || method == "PUT" || method == "PATCH")) {
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(0));
  }
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  CURLcode rc = curl_easy_perform(curl);
  if (rc == CURLE_OK) {
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &reply.status);
  } else {
    reply.error = curl_easy_strerror(rc);
  }
  curl_off_t sent = 0;
  if (curl_easy_getinfo(curl, CURLINFO_SIZE_UPLOAD_T, &sent) == CURLE_OK) reply.body_bytes_sent = static_cast<uint64_t>(sent);
  if (f) std::fclose(f);
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
  return reply;
}

}  // namespace

HttpReply PushResumable(const ResumablePush& push) {
  HttpReply fail;
  std::error_code ec;
  const uint64_t total = std::filesystem::file_size(push.file, ec);
  if (ec) {
    fail.error = "cannot read " + push.file + ": " + ec.message();
    return fail;
  }
  auto sha = Sha256::HexOfFile(push.file);
  if (!sha.ok()) {
    fail.error = sha.status().ToString();
    return fail;
  }
  const std::string digest = "sha256:" + *sha;
  const std::string dir = push.state_dir.empty() ? DefaultStateDir() : push.state_dir;
  const std::string state_path = dir + "/" + *sha + ".json";
  const std::string base = push.api + "/v1/images/uploads";

  // A session an earlier run left, if berthd still has it.
  std::string id;
  uint64_t offset = 0;
  {
    std::ifstream in(state_path);
    auto state = nlohmann::json::parse(in, nullptr, false);
    if (state.is_object() && state.value("api", "") == push.api) {
      HttpReply r = Send("GET", base + "/" + state.value("id", ""), push.token, {});
      if (r.status == 200) {
        id = state.value("id", "");
        offset = nlohmann::json::parse(r.body, nullptr, false).value("offset", uint64_t{0});
        if (push.notes) *push.notes << "berth: resuming upload session " << id << " at byte " << offset << "\n";
      }
    }
  }
  if (id.empty()) {
    std::string q = "?name=" + UrlEncode(push.name);
    if (!push.format.empty()) q += "&format=" + UrlEncode(push.format);
    HttpReply r = Send("POST", base + q, push.token, {});
    if (r.status != 202) return r;
    id = nlohmann::json::parse(r.body, nullptr, false).value("id", "");
    std::filesystem::create_directories(dir, ec);
    std::ofstream(state_path) << nlohmann::json{{"api", push.api}, {"id", id}, {"file", push.file}}.dump() << "\n";
  }
  const std::string url = base + "/" + id;
  HttpReply last;
  for (int attempt = 0; attempt < std::max(1, push.attempts) && offset < total; ++attempt) {
    last = Send("PATCH", url, push.token,
                {"Content-Range: " + std::to_string(offset) + "-" + std::to_string(total - 1)}, push.file, offset,
                total - offset, &push.progress, total);
    if (last.status == 202) {
      offset = nlohmann::json::parse(last.body, nullptr, false).value("offset", offset);
      continue;
    }
    if (last.status != 0 && last.status != 416) return last;  // berthd refused: the session is kept for a retry
    // Dropped (or out of step): ask berthd where it is and go on from there.
    HttpReply where = Send("GET", url, push.token, {});
    if (where.status != 200) return last.status ? last : where;
    offset = nlohmann::json::parse(where.body, nullptr, false).value("offset", offset);
    if (push.notes) *push.notes << "berth: upload interrupted (" << (last.error.empty() ? "416" : last.error)
                                << "); resuming at byte " << offset << "\n";
  }
  if (offset < total) {
    if (push.notes) {
      *push.notes << "berth: upload stopped at byte " << offset << " of " << total
                  << "; run the same push again to resume it\n";
    }
    return last;
  }
  if (push.progress) push.progress(total, total);
  HttpReply done = Send("PUT", url + "?digest=" + digest, push.token, {});
  if (done.status == 201) std::filesystem::remove(state_path, ec);
  return done;
}

void AddImageTagCommand(CLI::App& image, std::shared_ptr<Remote> remote, int& exit_code) {
  auto args = std::make_shared<std::pair<std::string, std::string>>();
  auto* tag = image.add_subcommand("tag", "Point NAME[:TAG] (default tag: latest) at an image");
  tag->add_option("image", args->first, "Image id, id prefix, name or name:tag")->required();
  tag->add_option("tag", args->second, "NAME[:TAG]")->required();
  tag->callback([=, &exit_code] {
    std::string ref = args->first;
    if (ref.find(':') == std::string::npos) {
      int rc = kExitOk;
      ref = ResolveImageId(*remote, ref, &rc);
      if (ref.empty()) {
        exit_code = rc;
        return;
      }
    }
    auto r = remote->Call("POST", "/v1/images/" + ref + "/tags", nlohmann::json{{"tag", args->second}}.dump());
    if (!Ok(r)) {
      exit_code = Fail(r);
      return;
    }
    if (remote->json) {
      std::cout << Pretty(Body(r)) << "\n";
    } else {
      std::cout << args->second << " -> " << Body(r).value("id", "") << "\n";
    }
    exit_code = kExitOk;
  });
}

int RunImageBuild(Env* env, const images::RootfsBuildOptions& opts, std::ostream& out, std::ostream& err) {
  Status st = images::BuildRootfsImage(env, opts);
  if (!st.ok()) {
    err << "berth: image build: " << st.ToString() << "\n";
    return 1;
  }
  // Inspect what was written: the same gate an upload would pass.
  auto info = images::InspectImage(env, opts.output_path);
  if (!info.ok()) {
    err << "berth: image build: built image fails inspection: " << info.status().ToString() << "\n";
    return 1;
  }
  auto sha = Sha256::HexOfFile(opts.output_path);
  if (!sha.ok()) {
    err << "berth: image build: " << sha.status().ToString() << "\n";
    return 1;
  }
  nlohmann::json j = InfoJson(AbsolutePath(opts.output_path), *info);
  j["sha256"] = *sha;
  out << Dump(j) << "\n";
  return 0;
}

int RunImageInspect(Env* env, const std::string& path, std::ostream& out, std::ostream& err) {
  auto info = images::InspectImage(env, path);
  if (!info.ok()) {
    err << "berth: image inspect: " << info.status().ToString() << "\n";
    return info.status().code() == Code::kFailedPrecondition ? 2 : 1;
  }
  out << Dump(InfoJson(AbsolutePath(path), *info)) << "\n";
  return 0;
}

void AddImageCommands(CLI::App& app, int& exit_code) {
  CLI::App* image = app.add_subcommand("image", "Disk images: build locally, push to berthd, list, inspect, remove");
  image->require_subcommand(1);

  auto build_opts = std::make_shared<images::RootfsBuildOptions>();
  CLI::App* build = image->add_subcommand("build", "Build an ext4 root filesystem image from a directory");
  build->add_option("dir", build_opts->source_dir, "Directory whose contents become the image's /")
      ->required();
  build->add_option("-o,--output", build_opts->output_path, "Image file to write")->required();
  build->add_option("--size-mib", build_opts->size_mib, "Filesystem size in MiB (0 = automatic)");
  build->add_option("--format", build_opts->format, "Output format")
      ->check(CLI::IsMember({"qcow2", "raw"}))
      ->capture_default_str();
  build->add_option("--label", build_opts->label, "ext4 volume label (max 16 bytes)")->capture_default_str();
  build->callback([build_opts, &exit_code] {
    exit_code = RunImageBuild(Env::Default(), *build_opts, std::cout, std::cerr);
  });
  // `image inspect` (local file or berthd's record) is registered with the remote commands.
}

}  // namespace berth::cli
