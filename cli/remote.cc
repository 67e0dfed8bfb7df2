#include "cli/remote.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>

namespace berth::cli {

using json = nlohmann::json;

namespace {
constexpr const char* kDefaultTokenFile = "/var/lib/berth/admin.token";
}  // namespace

const char* const kExitCodesHelp =
    "Environment: BERTH_URL (or BERTH_API) names berthd, BERTH_TOKEN the API token.\n"
    "Exit status: 0 ok; 1 berthd failed (5xx); 2 bad usage or input berthd rejected (4xx);\n"
    "  3 not found (404); 4 not authenticated or not allowed (401/403); 5 berthd unreachable;\n"
    "  6 berthd timed out (504). `berth wait` and `berth invoke` exit with the process's status:\n"
    "  its exit code, 128+N if signal N ended it, 124 if still running at --timeout, 125 if it\n"
    "  never ran (state error or lost).";

std::string Remote::Token() const {
  if (!token.empty()) return token;
  std::ifstream in(kDefaultTokenFile);
  std::string t;
  if (in) std::getline(in, t);
  while (!t.empty() && (t.back() == '\r' || t.back() == ' ')) t.pop_back();
  return t;
}

HttpReply Remote::Call(const std::string& method, const std::string& path, const std::string& body) const {
  return HttpRequest(method, api + path, Token(), body);
}

HttpReply Remote::Upload(const std::string& path, const std::string& file, const UploadProgress& progress) const {
  return HttpUploadFile(api + path, Token(), file, progress);
}

std::shared_ptr<Remote> AddRemoteOptions(CLI::App& app) {
  auto remote = std::make_shared<Remote>();
  if (const char* env = std::getenv("BERTH_URL"); env && *env) remote->api = env;
  if (const char* env = std::getenv("BERTH_API"); env && *env) remote->api = env;
  if (const char* env = std::getenv("BERTH_TOKEN"); env && *env) remote->token = env;
  app.add_option("--api", remote->api, "berthd address (env BERTH_URL or BERTH_API)")->capture_default_str();
  app.add_option("--token", remote->token,
                 std::string("API token (env BERTH_TOKEN; default: ") + kDefaultTokenFile + " if readable)");
  app.add_flag("--json", remote->json, "Machine-readable JSON output instead of tables");
  return remote;
}

int ExitCodeFor(const HttpReply& r) {
  if (r.status == 0) return kExitUnreachable;
  if (r.status >= 200 && r.status < 300) return kExitOk;
  if (r.status == 404) return kExitNotFound;
  if (r.status == 401 || r.status == 403) return kExitAuth;
  if (r.status == 504) return kExitTimeout;
  if (r.status >= 400 && r.status < 500) return kExitUsage;
  return kExitServer;
}

int Fail(const HttpReply& r) {
  if (r.status == 0) {
    std::cerr << "berth: cannot reach berthd: " << r.error << " (is berthd running? see --api / BERTH_URL)\n";
    return ExitCodeFor(r);
  }
  if (r.status == 401) {
    std::cerr << "berth: not authenticated (pass --token, set BERTH_TOKEN, or make " << kDefaultTokenFile
              << " readable)\n";
  }
  auto j = json::parse(r.body, nullptr, false);
  if (j.is_object() && j.contains("error") && j["error"].is_object()) {
    const json& e = j["error"];
    std::cerr << "berth: " << e.value("message", "error");
    if (e.contains("field") && e["field"].is_string()) std::cerr << " (field " << e["field"].get<std::string>() << ")";
    std::cerr << " [" << e.value("code", "HTTP " + std::to_string(r.status)) << "]\n";
  } else {
    std::cerr << "berth: HTTP " << r.status << ": " << r.body << "\n";
  }
  return ExitCodeFor(r);
}

int UsageError(const std::string& message) {
  std::cerr << "berth: " << message << "\n";
  return kExitUsage;
}

bool Ok(const HttpReply& r) { return r.status >= 200 && r.status < 300; }

json Body(const HttpReply& r) { return json::parse(r.body, nullptr, false); }

std::string Pretty(const json& j) { return j.dump(2, ' ', false, json::error_handler_t::replace); }

int PrintJson(const HttpReply& r) {
  if (!Ok(r)) return Fail(r);
  auto j = Body(r);
  std::cout << (j.is_discarded() ? r.body : Pretty(j)) << "\n";
  return kExitOk;
}

void PrintTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& row : rows) {
    if (width.size() < row.size()) width.resize(row.size(), 0);
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(width[i] - row[i].size() + 2, ' ');
    }
    std::cout << line << "\n";
  }
}

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string Age(int64_t created_ms, int64_t now_ms) {
  if (created_ms <= 0) return "-";
  int64_t s = std::max<int64_t>(0, (now_ms - created_ms) / 1000);
  if (s < 120) return std::to_string(s) + "s";
  if (s < 120 * 60) return std::to_string(s / 60) + "m";
  if (s < 48 * 3600) return std::to_string(s / 3600) + "h";
  return std::to_string(s / 86400) + "d";
}

std::string Text(const json& obj, const char* key) {
  if (!obj.is_object() || !obj.contains(key)) return "-";
  const json& v = obj[key];
  if (v.is_string()) return v.get<std::string>().empty() ? "-" : v.get<std::string>();
  if (v.is_null()) return "-";
  if (v.is_boolean()) return v.get<bool>() ? "yes" : "no";
  return v.dump();
}

std::string ShortId(const std::string& id) { return id.size() > 12 ? id.substr(0, 12) : (id.empty() ? "-" : id); }

std::string Bytes(uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

int ProcessExitStatus(const json& rec) {
  const std::string state = rec.value("status", "");
  const int sig = rec.contains("signal") && rec["signal"].is_number() ? rec["signal"].get<int>() : 0;
  const bool has_code = rec.contains("exit_code") && rec["exit_code"].is_number();
  if (state == "error" || state == "lost") return kExitNeverRan;
  if (state == "killed" || state == "timed_out") return 128 + (sig > 0 ? sig : SIGKILL);
  if (sig > 0 && !has_code) return 128 + sig;
  if (has_code) return rec["exit_code"].get<int>() & 0xff;
  return kExitServer;
}

std::string UrlEncode(const std::string& s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

std::string ResolveImageId(const Remote& remote, const std::string& ref, int* exit_code) {
  auto is_hex = [](const std::string& s) { return s.find_first_not_of("0123456789abcdef") == std::string::npos; };
  if (ref.size() == 64 && is_hex(ref)) return ref;
  auto r = remote.Call("GET", "/v1/images");
  if (!Ok(r)) {
    *exit_code = Fail(r);
    return "";
  }
  std::string by_name;
  std::vector<std::string> by_prefix;
  for (const auto& m : Body(r).value("images", json::array())) {
    std::string id = m.value("id", "");
    if (m.value("name", "") == ref) by_name = id;  // oldest first: the last one is the newest
    if (ref.size() >= 4 && is_hex(ref) && id.rfind(ref, 0) == 0) by_prefix.push_back(id);
  }
  if (!by_name.empty()) return by_name;
  if (by_prefix.size() == 1) return by_prefix.front();
  if (by_prefix.size() > 1) {
    *exit_code = UsageError("image id prefix '" + ref + "' is ambiguous (" + std::to_string(by_prefix.size()) +
                            " images); give more characters");
    return "";
  }
  std::cerr << "berth: image '" << ref << "' does not exist\n";
  *exit_code = kExitNotFound;
  return "";
}

}  // namespace berth::cli
