// The synchronous HTTP gateway end to end: a shell CGI script in a busybox
// image, served by a real berthd through /gw/<tenant>/<function>/..., each
// request running in a fresh TCG guest.
#include <arpa/inet.h>
#include <curl/curl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "common/env.h"
#include "images/rootfs_builder.h"
#include "tests/integration/support/harness.h"

namespace berth::testing {
namespace {

using nlohmann::json;

struct Reply {
  long status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  // lowercased names
};

size_t Collect(char* p, size_t s, size_t n, void* out) {
  static_cast<std::string*>(out)->append(p, s * n);
  return s * n;
}

size_t CollectHeader(char* p, size_t s, size_t n, void* out) {
  std::string line(p, s * n);
  auto colon = line.find(':');
  if (colon != std::string::npos) {
    std::string name = line.substr(0, colon), value = line.substr(colon + 1);
    for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    while (!value.empty() && (value.front() == ' ')) value.erase(0, 1);
    while (!value.empty() && (value.back() == '\n' || value.back() == '\r')) value.pop_back();
    (*static_cast<std::map<std::string, std::string>*>(out))[name] = value;
  }
  return s * n;
}

Reply Request(const std::string& method, const std::string& url, const std::string& body = {},
              std::vector<std::string> headers = {}) {
  Reply r;
  CURL* c = curl_easy_init();
  curl_slist* hl = nullptr;
  for (const auto& h : headers) hl = curl_slist_append(hl, h.c_str());
  hl = curl_slist_append(hl, "Expect:");
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method.c_str());
  if (!body.empty() || method == "POST") {
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.data());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
  }
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, Collect);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &r.body);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, CollectHeader);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &r.headers);
  curl_easy_setopt(c, CURLOPT_TIMEOUT, 300L);
  if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
  curl_slist_free_all(hl);
  curl_easy_cleanup(c);
  return r;
}

class GatewayTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    daemon_ = new BerthdProcess();
    ASSERT_TRUE(daemon_->running()) << "berthd did not start:\n" << daemon_->log();
    // The busybox root filesystem plus the CGI script at /srv/app.sh.
    char tmpl[] = "/tmp/berth-gw-XXXXXX";
    std::string dir = mkdtemp(tmpl);
    ASSERT_EQ(std::system(("cp -a " + RuntimeDir() + "/rootfs-busybox " + dir + "/root && mkdir -p " + dir +
                           "/root/srv && cp " BERTH_SOURCE_DIR "/bench/gateway-cgi/app.sh " + dir + "/root/srv/app.sh")
                              .c_str()),
              0);
    images::RootfsBuildOptions opts;
    opts.source_dir = dir + "/root";
    opts.output_path = dir + "/cgi.qcow2";
    Status s = images::BuildRootfsImage(Env::Default(), opts);
    ASSERT_TRUE(s.ok()) << s.ToString();
    std::ifstream in(opts.output_path, std::ios::binary);
    std::stringstream bytes;
    bytes << in.rdbuf();
    auto up = daemon_->Call("POST", "/v1/images?name=cgi", bytes.str(), "application/octet-stream");
    ASSERT_EQ(up.status, 201) << up.body;
    image_ = up.json()["id"];
    image_bytes_ = bytes.str();
    std::system(("rm -rf " + dir).c_str());
  }
  static void TearDownTestSuite() {
    delete daemon_;
    daemon_ = nullptr;
  }

  static void Create(const std::string& name, const json& gateway, int64_t timeout_ms = 60000) {
    auto r = daemon_->CreateFunction(name, image_, {{"entrypoint", {"/srv/app.sh"}}, {"gateway", gateway},
                                                   {"timeout_ms", timeout_ms}});
    ASSERT_EQ(r.status, 201) << r.body;
    EXPECT_EQ(r.json()["gateway"]["auth"], gateway.value("auth", "tenant"));
  }
  static std::string Url(const std::string& rest) { return daemon_->base_url() + "/gw/default/" + rest; }
  static std::string Bearer() { return "Authorization: Bearer " + daemon_->admin_token(); }

  static BerthdProcess* daemon_;
  static std::string image_;
  static std::string image_bytes_;  // the qcow2 behind image_, for other tenants
};

BerthdProcess* GatewayTest::daemon_ = nullptr;
std::string GatewayTest::image_;
std::string GatewayTest::image_bytes_;

TEST_F(GatewayTest, PublicGetWithQueryStringAndHeaders) {
  Create("pub", {{"auth", "public"}});
  // No token needed; an Authorization header sent anyway never reaches the script.
  auto r = Request("GET", Url("pub/items/42?x=1&y=a%20b"), {}, {"X-Custom: hello", "Authorization: Basic Zm9vOmJhcg=="});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.headers["content-type"], "text/plain");
  EXPECT_EQ(r.headers["x-script"], "app");
  EXPECT_EQ(r.headers["x-berth-execution-id"].size(), 16u) << r.body;
  EXPECT_EQ(r.body,
            "method=GET\npath=/items/42\nquery=x=1&y=a%20b\nscript=/gw/default/pub\ngateway=CGI/1.1\n"
            "custom=hello\nauth=none\n");
  // The execution is an ordinary, durable record.
  auto rec = daemon_->Get("/v1/executions/" + r.headers["x-berth-execution-id"]);
  EXPECT_EQ(rec.status, 200);
  EXPECT_EQ(rec.json()["status"], "succeeded");
}

TEST_F(GatewayTest, TenantRoutePostWithBodyStatusAndLocationNeedsAToken) {
  Create("post", {{"auth", "tenant"}});
  auto denied = Request("POST", Url("post/things"), "abc");
  EXPECT_EQ(denied.status, 401) << denied.body;
  EXPECT_EQ(json::parse(denied.body)["error"]["code"], "UNAUTHENTICATED");
  // Another tenant's token does not see the function at all.
  std::string other = daemon_->CreateToken("other");
  EXPECT_EQ(Request("POST", Url("post/things"), "abc", {"Authorization: Bearer " + other}).status, 404);
  // A function that does not exist is 401 without a token, 404 with one.
  EXPECT_EQ(Request("GET", Url("nope/x")).status, 401);
  EXPECT_EQ(Request("GET", Url("nope/x"), {}, {Bearer()}).status, 404);

  auto r = Request("POST", Url("post/things"), "hello body", {Bearer(), "Content-Type: text/plain"});
  ASSERT_EQ(r.status, 201) << r.body;
  EXPECT_EQ(r.headers["location"], "/things/1");
  EXPECT_EQ(r.headers["x-body-length"], "10");
  EXPECT_EQ(r.body, "got hello body");
  EXPECT_FALSE(r.headers["x-berth-execution-id"].empty());
}

TEST_F(GatewayTest, TimeoutIs504AndCrashIs502WithTheExecutionId) {
  Create("slow", {{"auth", "public"}}, 2000);
  std::thread crash_thread;
  Reply crash;
  crash_thread = std::thread([&] { crash = Request("GET", Url("slow/crash")); });
  auto r = Request("GET", Url("slow/sleep"));
  crash_thread.join();
  ASSERT_EQ(r.status, 504) << r.body;
  std::string id = r.headers["x-berth-execution-id"];
  EXPECT_FALSE(id.empty());
  EXPECT_EQ(json::parse(r.body)["execution_id"], id);
  EXPECT_EQ(daemon_->Get("/v1/executions/" + id).json()["status"], "timed_out");

  ASSERT_EQ(crash.status, 502) << crash.body;
  EXPECT_EQ(json::parse(crash.body)["execution_id"], crash.headers["x-berth-execution-id"]);
  EXPECT_NE(crash.body.find("exited with code 3"), std::string::npos) << crash.body;
}

TEST_F(GatewayTest, RateLimitAnswers429WithRetryAfter) {
  Create("limited", {{"auth", "public"}, {"rate_limit_per_s", 0.01}, {"burst", 1}});
  auto first = Request("GET", Url("limited/"));
  EXPECT_EQ(first.status, 200) << first.body;
  auto second = Request("GET", Url("limited/"));
  EXPECT_EQ(second.status, 429) << second.body;
  EXPECT_FALSE(second.headers["retry-after"].empty());
  EXPECT_GE(std::stoi(second.headers["retry-after"]), 1);
}

TEST_F(GatewayTest, OversizedBodyIs413) {
  Create("big", {{"auth", "public"}});
  auto r = Request("POST", Url("big/"), std::string((1u << 20) + 1, 'x'));
  EXPECT_EQ(r.status, 413) << r.body;
}

TEST_F(GatewayTest, BadPolicyIsRejectedByField) {
  auto r = daemon_->CreateFunction("badpol", image_, {{"entrypoint", {"/srv/app.sh"}}, {"gateway", {{"auth", "everyone"}}}});
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.json()["error"]["field"], "gateway.auth");
  r = daemon_->CreateFunction("badpol", image_, {{"entrypoint", {"/srv/app.sh"}}, {"gateway", {{"burst", "x"}}}});
  EXPECT_EQ(r.json()["error"]["field"], "gateway.burst");
}

// A client that sends its body slowly keeps its connection waiting, but
// nothing else: another gateway request and the admin API answer meanwhile.
TEST_F(GatewayTest, SlowClientDoesNotBlockOtherRequests) {
  Create("echo", {{"auth", "public"}});
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(std::stoi(daemon_->base_url().substr(daemon_->base_url().rfind(':') + 1))));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  std::string head = "POST /gw/default/echo/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\nhello";
  ASSERT_EQ(write(fd, head.data(), head.size()), static_cast<ssize_t>(head.size()));

  auto t0 = std::chrono::steady_clock::now();
  auto health = daemon_->Get("/v1/health");
  EXPECT_EQ(health.status, 200);
  auto other = Request("GET", Url("echo/meanwhile"));
  EXPECT_EQ(other.status, 200) << other.body;
  EXPECT_NE(other.body.find("path=/meanwhile"), std::string::npos);
  double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  // Only now the slow client finishes its body; its request then runs too.
  std::string tail = "world";
  ASSERT_EQ(write(fd, tail.data(), tail.size()), static_cast<ssize_t>(tail.size()));
  std::string answer;
  char buf[4096];
  for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) answer.append(buf, static_cast<size_t>(n));
  close(fd);
  EXPECT_EQ(answer.rfind("HTTP/1.1 201", 0), 0u) << answer;
  EXPECT_NE(answer.find("got helloworld"), std::string::npos) << answer;
  EXPECT_GT(waited, 0.0);
}

// A client that hangs up while its request runs leaks nothing: the
// execution still ends (here by its timeout), the connection is closed once
// the answer is ready (no socket left in CLOSE-WAIT), and the function's
// concurrency slot is free again for the next caller.
TEST_F(GatewayTest, ClientThatDisconnectsMidRequestLeaksNothing) {
  Create("hangup", {{"auth", "public"}, {"max_concurrency", 1}, {"max_queue", 0}}, 3000);
  std::string port = daemon_->base_url().substr(daemon_->base_url().rfind(':') + 1);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(std::stoi(port)));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  std::string req = "GET /gw/default/hangup/sleep HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(write(fd, req.data(), req.size()), static_cast<ssize_t>(req.size()));
  // Hang up once the request is running.
  json running;
  for (int i = 0; i < 600; ++i) {
    running = daemon_->Get("/v1/executions?function=hangup").json();
    if (!running["executions"].empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_FALSE(running["executions"].empty()) << running.dump();
  close(fd);
  std::string id = running["executions"][0]["execution_id"];

  std::string status;
  for (int i = 0; i < 1200; ++i) {
    status = daemon_->Get("/v1/executions/" + id).json().value("status", "");
    if (status != "pending" && status != "placing" && status != "starting" && status != "running") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(status, "timed_out");
  std::string left;
  for (int i = 0; i < 100; ++i) {
    left = Shell("ss -Htan state close-wait '( sport = :" + port + " )'");
    if (left.empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(left, "") << "connections berthd did not close";
  // The slot is free: max_concurrency 1 with no queue would answer 429 otherwise.
  auto next = Request("GET", Url("hangup/after"));
  EXPECT_EQ(next.status, 200) << next.body;
}

// The gateway's runs are ordinary execution records of the route's tenant
// and function: GET /v1/executions?function=<name> lists them for that
// tenant, whether a fresh VM or a warm one (as in bench/gateway.cc) answered.
TEST_F(GatewayTest, GatewayRunsAreListedByFunctionForTheRoutesTenant) {
  std::string token = daemon_->CreateToken("gwlist");
  auto up = daemon_->CallAs(token, "POST", "/v1/images?name=cgi", image_bytes_, "application/octet-stream");
  ASSERT_EQ(up.status, 201) << up.body;
  auto fn = daemon_->CreateFunctionAs(token, "app", up.json()["id"],
                                      {{"entrypoint", {"/srv/app.sh"}},
                                       {"gateway", {{"auth", "public"}}},
                                       {"min_warm", 1},
                                       {"max_warm", 1},
                                       {"keep_alive", true},
                                       {"max_instances", 1}});
  ASSERT_EQ(fn.status, 201) << fn.body;
  std::set<std::string> ran;
  for (int i = 0; i < 3; ++i) {
    auto r = Request("GET", daemon_->base_url() + "/gw/gwlist/app/items?x=1");
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_NE(r.body.find("script=/gw/gwlist/app"), std::string::npos) << r.body;
    ran.insert(r.headers["x-berth-execution-id"]);
  }
  ASSERT_EQ(ran.size(), 3u);
  auto listed = daemon_->CallAs(token, "GET", "/v1/executions?function=app");
  ASSERT_EQ(listed.status, 200) << listed.body;
  std::set<std::string> ids;
  json executions = listed.json()["executions"];
  for (const auto& e : executions) {
    ids.insert(e["execution_id"].get<std::string>());
    EXPECT_EQ(e["function"], "app");
  }
  for (const auto& id : ran) EXPECT_EQ(ids.count(id), 1u) << id << " not in " << listed.body;
  // The same ids one by one, and not in another tenant's listing.
  for (const auto& id : ran) EXPECT_EQ(daemon_->CallAs(token, "GET", "/v1/executions/" + id).status, 200);
  json in_default = daemon_->Get("/v1/executions?function=app").json()["executions"];
  for (const auto& e : in_default) {
    EXPECT_EQ(ran.count(e["execution_id"].get<std::string>()), 0u);
  }
}

TEST_F(GatewayTest, OpenApiDocumentsTheGatewayRoute) {
  auto doc = daemon_->Get("/v1/openapi.json").json();
  ASSERT_TRUE(doc["paths"].contains("/gw/{tenant}/{function}/{path}")) << doc["paths"].dump();
  auto ops = doc["paths"]["/gw/{tenant}/{function}/{path}"];
  EXPECT_TRUE(ops.contains("get"));
  EXPECT_TRUE(ops.contains("post"));
  EXPECT_EQ(ops["get"]["security"].size(), 2u);  // optional bearer auth
}

}  // namespace
}  // namespace berth::testing
