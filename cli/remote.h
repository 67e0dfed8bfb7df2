// What every `berth` command that talks to berthd shares: where berthd is and
// which token to send (--api/--token, BERTH_URL/BERTH_API/BERTH_TOKEN, the
// local admin token file), --json, the mapping of replies to exit statuses,
// error printing, and plain-text tables.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "cli/http_client.h"

namespace berth::cli {

// berth's exit statuses (listed in `berth --help` by kExitCodesHelp and in
// the README). `berth wait` and `berth invoke` exit with the process's own
// status instead when the call itself succeeded.
enum ExitCode : int {
  kExitOk = 0,
  kExitServer = 1,       // berthd failed (5xx) or answered something unexpected
  kExitUsage = 2,        // bad command line, or berthd rejected the input (400, 405, 409, 413, 422)
  kExitNotFound = 3,     // 404: no such pid, image, function, execution, token
  kExitAuth = 4,         // 401 / 403: no, bad or revoked token; not an admin
  kExitUnreachable = 5,  // berthd could not be reached
  kExitTimeout = 6,      // berthd answered 504 (a deadline passed)
};
// `berth wait` only: the process was still running when --timeout elapsed
// (as timeout(1)); it ended without running its command (state error/lost).
inline constexpr int kExitWaitTimeout = 124;
inline constexpr int kExitNeverRan = 125;

extern const char* const kExitCodesHelp;

struct Remote {
  std::string api = "http://127.0.0.1:8470";
  std::string token;  // --token or BERTH_TOKEN
  bool json = false;  // --json: machine-readable output

  // The token to send: --token, else $BERTH_TOKEN, else the local admin
  // token file when it is readable, else none (berthd answers 401).
  std::string Token() const;
  HttpReply Call(const std::string& method, const std::string& path, const std::string& body = {}) const;
  HttpReply Upload(const std::string& path, const std::string& file, const UploadProgress& progress = {}) const;
};

// Registers --api, --token and --json on the app (values from the
// environment first) and returns the shared settings.
std::shared_ptr<Remote> AddRemoteOptions(CLI::App& app);

// The exit status for a reply that is not a success.
int ExitCodeFor(const HttpReply& reply);
// Prints berthd's error message (or the transport failure) on stderr;
// returns ExitCodeFor(reply).
int Fail(const HttpReply& reply);
// Prints "berth: <message>" on stderr; returns kExitUsage.
int UsageError(const std::string& message);
bool Ok(const HttpReply& reply);
// The reply's JSON body (discarded value when it is not JSON).
nlohmann::json Body(const HttpReply& reply);
// With --json or for a non-object: the body pretty-printed; returns 0 on
// success, else Fail().
int PrintJson(const HttpReply& reply);
std::string Pretty(const nlohmann::json& j);

// Left-aligned columns two spaces apart; the first row is the header.
void PrintTable(const std::vector<std::vector<std::string>>& rows);
// "12s", "5m", "3h", "2d"; "-" when created_ms is 0.
std::string Age(int64_t created_ms, int64_t now_ms);
int64_t NowUnixMs();
// A field as text: strings as they are, numbers printed, null/absent "-".
std::string Text(const nlohmann::json& obj, const char* key);
// The first 12 characters of an image digest.
std::string ShortId(const std::string& id);
// Human-readable byte count ("1.5 MiB").
std::string Bytes(uint64_t n);

// The exit status of an ended process record (`berth wait`, `berth invoke`):
// its exit code, 128+N if signal N ended it (killed, timed_out), or
// kExitNeverRan (error, lost).
int ProcessExitStatus(const nlohmann::json& record);

// Percent-encodes a query or path component.
std::string UrlEncode(const std::string& s);

// Resolves an image reference (64-hex id, a unique id prefix, or a name:
// the newest image of that name) to its id with GET /v1/images. On failure
// prints why and stores the exit status in *exit_code; returns "".
std::string ResolveImageId(const Remote& remote, const std::string& ref, int* exit_code);

}  // namespace berth::cli
