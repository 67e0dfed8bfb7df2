// api::Router matching and OpenAPI generation; api::HttpServer::Dispatch
// without sockets; and a real HttpServer on an ephemeral port spoken to with
// libcurl: buffered routes, 404/405, the body cap, and streaming routes.
#include "api/router.h"

#include <curl/curl.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <chrono>
#include <cstring>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "api/errors.h"
#include "api/http_server.h"
#include "common/sha256.h"

namespace berth::api {
namespace {

using json = nlohmann::json;

HttpResponse Text(std::string body) { return HttpResponse{200, std::move(body), "text/plain"}; }

Router SampleRouter() {
  Router r;
  r.Add({"GET", "/v1/functions", "List functions", [](const HttpRequest&) { return Text("list"); }});
  r.Add({"POST", "/v1/functions", "Create a function", [](const HttpRequest&) { return Text("create"); }, {}, 201});
  r.Add({"GET", "/v1/functions/{name}", "Get a function",
         [](const HttpRequest& q) { return Text("get " + q.params.at("name")); }});
  r.Add({"PUT", "/v1/functions/{name}", "Update a function",
         [](const HttpRequest& q) { return Text("put " + q.params.at("name")); }});
  r.Add({"DELETE", "/v1/functions/{name}", "Delete a function",
         [](const HttpRequest& q) { return Text("delete " + q.params.at("name")); }});
  r.Add({"POST", "/v1/functions/{name}/invoke", "Invoke",
         [](const HttpRequest& q) { return Text("invoke " + q.params.at("name")); }});
  r.Add({"GET", "/v1/functions/{name}/executions/{id}", "One execution of a function",
         [](const HttpRequest& q) { return Text(q.params.at("name") + "/" + q.params.at("id")); }});
  r.Add({"POST", "/v1/images", "Upload an image", {},
         [](const HttpRequest&) -> Result<std::unique_ptr<BodySink>> { return Status::Unimplemented("x"); }, 201});
  return r;
}

TEST(RouterMatchTest, ExactAndParameterisedRoutes) {
  Router r = SampleRouter();
  std::map<std::string, std::string> params;
  int miss = 0;
  const Route* route = r.Match("GET", "/v1/functions", &params, &miss);
  ASSERT_NE(route, nullptr);
  EXPECT_EQ(route->summary, "List functions");
  EXPECT_TRUE(params.empty());

  route = r.Match("POST", "/v1/functions", &params, &miss);
  ASSERT_NE(route, nullptr);
  EXPECT_EQ(route->summary, "Create a function");

  route = r.Match("GET", "/v1/functions/resize", &params, &miss);
  ASSERT_NE(route, nullptr);
  EXPECT_EQ(route->summary, "Get a function");
  EXPECT_EQ(params, (std::map<std::string, std::string>{{"name", "resize"}}));

  route = r.Match("DELETE", "/v1/functions/resize", &params, &miss);
  ASSERT_NE(route, nullptr);
  EXPECT_EQ(route->method, "DELETE");

  route = r.Match("POST", "/v1/functions/resize/invoke", &params, &miss);
  ASSERT_NE(route, nullptr);
  EXPECT_EQ(route->summary, "Invoke");
  EXPECT_EQ(params.at("name"), "resize");

  route = r.Match("GET", "/v1/functions/f1/executions/abc123", &params, &miss);
  ASSERT_NE(route, nullptr);
  EXPECT_EQ(params, (std::map<std::string, std::string>{{"name", "f1"}, {"id", "abc123"}}));
}

TEST(RouterMatchTest, ParamsAreReplacedNotMerged) {
  Router r = SampleRouter();
  std::map<std::string, std::string> params = {{"stale", "x"}};
  int miss = 0;
  ASSERT_NE(r.Match("GET", "/v1/functions/a", &params, &miss), nullptr);
  EXPECT_EQ(params, (std::map<std::string, std::string>{{"name", "a"}}));
  ASSERT_NE(r.Match("GET", "/v1/functions", &params, &miss), nullptr);
  EXPECT_TRUE(params.empty());
}

TEST(RouterMatchTest, MissStatus404Versus405) {
  Router r = SampleRouter();
  std::map<std::string, std::string> params;
  int miss = 0;
  EXPECT_EQ(r.Match("GET", "/v1/nothing", &params, &miss), nullptr);
  EXPECT_EQ(miss, 404);
  miss = 0;
  EXPECT_EQ(r.Match("GET", "/v1/functions/a/b", &params, &miss), nullptr);
  EXPECT_EQ(miss, 404);
  miss = 0;
  EXPECT_EQ(r.Match("GET", "/v2/functions", &params, &miss), nullptr);
  EXPECT_EQ(miss, 404);
  miss = 0;
  EXPECT_EQ(r.Match("GET", "/", &params, &miss), nullptr);
  EXPECT_EQ(miss, 404);
  miss = 0;
  EXPECT_EQ(r.Match("DELETE", "/v1/functions", &params, &miss), nullptr);
  EXPECT_EQ(miss, 405);
  miss = 0;
  EXPECT_EQ(r.Match("GET", "/v1/functions/x/invoke", &params, &miss), nullptr);
  EXPECT_EQ(miss, 405);
  miss = 0;
  EXPECT_EQ(r.Match("PATCH", "/v1/functions/x", &params, &miss), nullptr);
  EXPECT_EQ(miss, 405);
  miss = 0;
  EXPECT_EQ(r.Match("get", "/v1/functions", &params, &miss), nullptr) << "methods are case-sensitive";
  EXPECT_EQ(miss, 405);
}

TEST(RouterMatchTest, CaseSensitiveLiteralSegments) {
  Router r = SampleRouter();
  std::map<std::string, std::string> params;
  int miss = 0;
  EXPECT_EQ(r.Match("GET", "/V1/functions", &params, &miss), nullptr);
  EXPECT_EQ(miss, 404);
}

TEST(RouterMatchTest, TrailingAndRepeatedSlashesAreIgnored) {
  Router r = SampleRouter();
  std::map<std::string, std::string> params;
  int miss = 0;
  const Route* route = r.Match("GET", "/v1/functions/", &params, &miss);
  ASSERT_NE(route, nullptr);
  EXPECT_EQ(route->summary, "List functions");
  route = r.Match("GET", "/v1/functions/x/", &params, &miss);
  ASSERT_NE(route, nullptr);
  EXPECT_EQ(route->summary, "Get a function");
  EXPECT_EQ(params.at("name"), "x") << "the trailing slash is not part of the parameter";
  route = r.Match("GET", "//v1//functions", &params, &miss);
  ASSERT_NE(route, nullptr);
  EXPECT_EQ(route->summary, "List functions");
}

TEST(RouterMatchTest, FirstMatchingRouteWins) {
  Router r;
  r.Add({"GET", "/v1/things/special", "literal", [](const HttpRequest&) { return Text("literal"); }});
  r.Add({"GET", "/v1/things/{id}", "param", [](const HttpRequest&) { return Text("param"); }});
  std::map<std::string, std::string> params;
  int miss = 0;
  const Route* route = r.Match("GET", "/v1/things/special", &params, &miss);
  ASSERT_NE(route, nullptr);
  EXPECT_EQ(route->summary, "literal");
  route = r.Match("GET", "/v1/things/other", &params, &miss);
  ASSERT_NE(route, nullptr);
  EXPECT_EQ(route->summary, "param");
  EXPECT_EQ(params.at("id"), "other");
}

TEST(RouterOpenApiTest, ContainsEveryRouteWithMethodAndPathParameters) {
  Router r = SampleRouter();
  json doc = json::parse(r.OpenApiJson());
  EXPECT_EQ(doc["openapi"].get<std::string>().substr(0, 2), "3.");
  ASSERT_TRUE(doc["paths"].is_object());
  for (const Route& route : r.routes()) {
    std::string method = route.method;
    for (auto& c : method) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    ASSERT_TRUE(doc["paths"].contains(route.pattern)) << route.pattern;
    ASSERT_TRUE(doc["paths"][route.pattern].contains(method)) << route.method << " " << route.pattern;
    const json& op = doc["paths"][route.pattern][method];
    EXPECT_EQ(op["summary"], route.summary);
    EXPECT_TRUE(op["responses"].contains(std::to_string(route.success_status))) << route.pattern;
  }
  // Path parameters, in order, required, in: path.
  const json& exec = doc["paths"]["/v1/functions/{name}/executions/{id}"]["get"];
  ASSERT_TRUE(exec.contains("parameters"));
  ASSERT_EQ(exec["parameters"].size(), 2u);
  EXPECT_EQ(exec["parameters"][0]["name"], "name");
  EXPECT_EQ(exec["parameters"][1]["name"], "id");
  for (const auto& p : exec["parameters"]) {
    EXPECT_EQ(p["in"], "path");
    EXPECT_EQ(p["required"], true);
  }
  EXPECT_FALSE(doc["paths"]["/v1/functions"]["get"].contains("parameters"));
  EXPECT_EQ(doc["paths"]["/v1/functions/{name}"].size(), 3u) << "GET, PUT and DELETE share one path item";
  EXPECT_TRUE(doc["paths"]["/v1/functions"]["post"]["responses"].contains("201"));
  // The streaming route declares a binary request body; buffered ones do not.
  EXPECT_TRUE(doc["paths"]["/v1/images"]["post"].contains("requestBody"));
  EXPECT_FALSE(doc["paths"]["/v1/functions"]["post"].contains("requestBody"));
  size_t ops = 0;
  for (auto& [path, item] : doc["paths"].items()) ops += item.size();
  EXPECT_EQ(ops, r.routes().size());
}

// ---------------------------------------------------------------------------
// HttpServer::Dispatch, no sockets.

TEST(HttpServerDispatchTest, RoutesParamsQueryAndErrors) {
  Router r;
  r.Add({"GET", "/v1/echo/{x}", "echo", [](const HttpRequest& q) {
           json j = {{"x", q.params.at("x")}, {"q", q.query}, {"body", q.body}};
           return HttpResponse{200, j.dump()};
         }});
  r.Add({"GET", "/v1/throws", "throws",
         [](const HttpRequest&) -> HttpResponse { throw std::runtime_error("secret detail"); }});
  r.Add({"GET", "/v1/throws-logic", "throws",
         [](const HttpRequest&) -> HttpResponse { throw std::out_of_range("map::at"); }});
  HttpServer server(std::move(r), HttpServerOptions{});

  HttpRequest req;
  req.method = "GET";
  req.path = "/v1/echo/hello";
  req.query = {{"a", "1"}};
  req.body = "b";
  req.params = {{"bogus", "x"}};
  HttpResponse ok = server.Dispatch(req);
  EXPECT_EQ(ok.status, 200);
  json j = json::parse(ok.body);
  EXPECT_EQ(j["x"], "hello");
  EXPECT_EQ(j["q"]["a"], "1");
  EXPECT_EQ(j["body"], "b");

  for (const char* path : {"/v1/throws", "/v1/throws-logic"}) {
    HttpResponse err = server.Dispatch(HttpRequest{"GET", path, {}, {}, {}});
    EXPECT_EQ(err.status, 500) << path;
    EXPECT_EQ(err.content_type, "application/json");
    json e = json::parse(err.body, nullptr, false);
    ASSERT_TRUE(e.is_object()) << err.body;
    EXPECT_EQ(e["error"]["code"], "INTERNAL");
    EXPECT_EQ(err.body.find("secret detail"), std::string::npos) << "exception text leaks to clients";
  }

  HttpResponse nf = server.Dispatch(HttpRequest{"GET", "/v1/none", {}, {}, {}});
  EXPECT_EQ(nf.status, 404);
  EXPECT_EQ(json::parse(nf.body)["error"]["code"], "NOT_FOUND");
  HttpResponse na = server.Dispatch(HttpRequest{"POST", "/v1/throws", {}, {}, {}});
  EXPECT_EQ(na.status, 405);
  EXPECT_TRUE(json::parse(na.body, nullptr, false).contains("error"));
}

TEST(HttpServerDispatchTest, OpenApiRouteIsBuiltIn) {
  HttpServer server(SampleRouter(), HttpServerOptions{});
  HttpResponse r = server.Dispatch(HttpRequest{"GET", "/v1/openapi.json", {}, {}, {}});
  ASSERT_EQ(r.status, 200);
  json doc = json::parse(r.body);
  EXPECT_TRUE(doc["paths"].contains("/v1/openapi.json"));
  EXPECT_TRUE(doc["paths"].contains("/v1/functions/{name}/invoke"));
}

// ---------------------------------------------------------------------------
// Real HTTP through libcurl.

struct CurlResult {
  long status = 0;
  std::string body;
  std::string content_type;
  CURLcode code = CURLE_OK;
  json Json() const { return json::parse(body, nullptr, false); }
};

size_t Collect(char* p, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(p, size * n);
  return size * n;
}

struct Upload {
  const std::string* data;
  size_t off = 0;
  size_t max_piece;
};

size_t Feed(char* buf, size_t size, size_t n, void* userp) {
  auto* u = static_cast<Upload*>(userp);
  size_t want = std::min({size * n, u->max_piece, u->data->size() - u->off});
  std::memcpy(buf, u->data->data() + u->off, want);
  u->off += want;
  return want;
}

CurlResult Call(const std::string& method, const std::string& url, const std::string* body = nullptr,
                size_t piece = 0) {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  CurlResult res;
  CURL* c = curl_easy_init();
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
  curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, &Collect);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &res.body);
  Upload up{body, 0, piece ? piece : (body ? body->size() + 1 : 1)};
  if (body) {
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_READFUNCTION, &Feed);
    curl_easy_setopt(c, CURLOPT_READDATA, &up);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body->size()));
  }
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method.c_str());
  res.code = curl_easy_perform(c);
  if (res.code == CURLE_OK) {
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &res.status);
    char* ct = nullptr;
    curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct);
    if (ct) res.content_type = ct;
  }
  curl_easy_cleanup(c);
  return res;
}

std::string RandomBytes(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& ch : s) ch = static_cast<char>(rng() & 0xff);
  return s;
}

// What the streaming routes saw, shared with the test body.
struct SinkLog {
  std::mutex mu;
  std::string bytes;
  int appends = 0;
  int finishes = 0;
  int destroyed = 0;
  int calls_after_failure = 0;
  bool failed = false;
};

class RecordingSink : public BodySink {
 public:
  RecordingSink(std::shared_ptr<SinkLog> log, size_t fail_after, std::string tag)
      : log_(std::move(log)), fail_after_(fail_after), tag_(std::move(tag)) {}
  ~RecordingSink() override {
    std::lock_guard lock(log_->mu);
    ++log_->destroyed;
  }
  Status Append(std::string_view chunk) override {
    std::lock_guard lock(log_->mu);
    ++log_->appends;
    if (log_->failed) ++log_->calls_after_failure;
    if (fail_after_ && log_->bytes.size() + chunk.size() > fail_after_) {
      log_->failed = true;
      return Status::FailedPrecondition("sink refused byte " + std::to_string(fail_after_), "image");
    }
    log_->bytes.append(chunk);
    return Status::Ok();
  }
  HttpResponse Finish() override {
    std::lock_guard lock(log_->mu);
    ++log_->finishes;
    json j = {{"size", log_->bytes.size()}, {"sha256", Sha256::HexOf(log_->bytes)}, {"tag", tag_}};
    return HttpResponse{201, j.dump()};
  }

 private:
  std::shared_ptr<SinkLog> log_;
  size_t fail_after_;
  std::string tag_;
};

constexpr size_t kMaxBody = 1024;

class HttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Router r;
    r.Add({"GET", "/v1/ping", "ping", [](const HttpRequest&) { return Text("pong"); }});
    r.Add({"POST", "/v1/echo", "echo", [](const HttpRequest& q) {
             return HttpResponse{200, json{{"size", q.body.size()}, {"sha256", Sha256::HexOf(q.body)}}.dump()};
           }});
    r.Add({"GET", "/v1/items/{id}", "item", [](const HttpRequest& q) {
             return HttpResponse{200, json{{"id", q.params.at("id")}, {"query", q.query}}.dump()};
           }});
    r.Add({"GET", "/v1/throws", "throws",
           [](const HttpRequest&) -> HttpResponse { throw std::runtime_error("boom"); }});
    r.Add({"GET", "/v1/slow", "slow", [](const HttpRequest&) {
             std::this_thread::sleep_for(std::chrono::milliseconds(1500));
             return Text("slow");
           }});
    r.Add({"POST", "/v1/upload", "streaming upload", {},
           [log = log_](const HttpRequest& q) -> Result<std::unique_ptr<BodySink>> {
             auto it = q.query.find("tag");
             return std::unique_ptr<BodySink>(new RecordingSink(log, 0, it == q.query.end() ? "" : it->second));
           },
           201});
    r.Add({"POST", "/v1/upload-fails", "streaming upload that fails", {},
           [log = fail_log_](const HttpRequest&) -> Result<std::unique_ptr<BodySink>> {
             return std::unique_ptr<BodySink>(new RecordingSink(log, 1u << 20, ""));
           },
           201});
    r.Add({"POST", "/v1/upload-refused", "sink factory fails", {},
           [](const HttpRequest&) -> Result<std::unique_ptr<BodySink>> {
             return Status::InvalidArgument("name", "bad name query argument");
           },
           201});
    HttpServerOptions opts;
    opts.port = 0;
    opts.max_body_bytes = kMaxBody;
    server_ = std::make_unique<HttpServer>(std::move(r), opts);
    Status s = server_->Start();
    ASSERT_TRUE(s.ok()) << s.ToString();
    ASSERT_NE(server_->port(), 0);
    base_ = "http://127.0.0.1:" + std::to_string(server_->port());
  }
  void TearDown() override {
    if (server_) server_->Stop();
  }

  std::shared_ptr<SinkLog> log_ = std::make_shared<SinkLog>();
  std::shared_ptr<SinkLog> fail_log_ = std::make_shared<SinkLog>();
  std::unique_ptr<HttpServer> server_;
  std::string base_;
};

TEST_F(HttpServerTest, RoutesAnswer) {
  CurlResult r = Call("GET", base_ + "/v1/ping");
  ASSERT_EQ(r.code, CURLE_OK) << curl_easy_strerror(r.code);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "pong");
  EXPECT_EQ(r.content_type, "text/plain");

  r = Call("GET", base_ + "/v1/items/abc?verbose=1&q=a%20b");
  ASSERT_EQ(r.code, CURLE_OK);
  EXPECT_EQ(r.status, 200);
  json j = r.Json();
  EXPECT_EQ(j["id"], "abc");
  EXPECT_EQ(j["query"]["verbose"], "1");
  EXPECT_EQ(j["query"]["q"], "a b");

  r = Call("GET", base_ + "/v1/ping/");
  EXPECT_EQ(r.status, 200) << "trailing slash";

  r = Call("GET", base_ + "/v1/openapi.json");
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(r.Json()["paths"].contains("/v1/upload"));
}

TEST_F(HttpServerTest, UnknownPathIs404JsonAndWrongMethodIs405Json) {
  CurlResult r = Call("GET", base_ + "/v1/nope");
  ASSERT_EQ(r.code, CURLE_OK);
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.content_type, "application/json");
  json j = r.Json();
  ASSERT_TRUE(j.is_object()) << r.body;
  EXPECT_EQ(j["error"]["code"], "NOT_FOUND");

  r = Call("DELETE", base_ + "/v1/ping");
  ASSERT_EQ(r.code, CURLE_OK);
  EXPECT_EQ(r.status, 405);
  EXPECT_TRUE(r.Json().contains("error")) << r.body;
}

TEST_F(HttpServerTest, HandlerThatThrowsIs500Json) {
  CurlResult r = Call("GET", base_ + "/v1/throws");
  ASSERT_EQ(r.code, CURLE_OK);
  EXPECT_EQ(r.status, 500);
  EXPECT_EQ(r.Json()["error"]["code"], "INTERNAL");
  // The server survives.
  EXPECT_EQ(Call("GET", base_ + "/v1/ping").status, 200);
}

TEST_F(HttpServerTest, BufferedBodyCap) {
  const std::string at_limit(kMaxBody, 'x');
  CurlResult r = Call("POST", base_ + "/v1/echo", &at_limit);
  ASSERT_EQ(r.code, CURLE_OK);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.Json()["size"], kMaxBody);
  EXPECT_EQ(r.Json()["sha256"], Sha256::HexOf(at_limit));

  // Sent in small pieces, so the cap is checked across chunks.
  const std::string over(kMaxBody + 1, 'y');
  r = Call("POST", base_ + "/v1/echo", &over, 100);
  ASSERT_EQ(r.code, CURLE_OK);
  EXPECT_EQ(r.status, 413);
  json j = r.Json();
  ASSERT_TRUE(j.is_object()) << r.body;
  EXPECT_EQ(j["error"]["field"], "body");

  const std::string big(256 * 1024, 'z');
  r = Call("POST", base_ + "/v1/echo", &big);
  ASSERT_EQ(r.code, CURLE_OK);
  EXPECT_EQ(r.status, 413);
  EXPECT_EQ(r.Json()["error"]["field"], "body");
  EXPECT_EQ(r.content_type, "application/json");
}

TEST_F(HttpServerTest, StreamingRouteGetsEveryByteInOrder) {
  const std::string body = RandomBytes(5u << 20, 42);  // 5 MiB, far above max_body_bytes
  CurlResult r = Call("POST", base_ + "/v1/upload?tag=t1", &body, 7777);
  ASSERT_EQ(r.code, CURLE_OK) << curl_easy_strerror(r.code);
  EXPECT_EQ(r.status, 201) << r.body;
  json j = r.Json();
  EXPECT_EQ(j["size"], body.size());
  EXPECT_EQ(j["sha256"], Sha256::HexOf(body));
  EXPECT_EQ(j["tag"], "t1") << "the sink factory sees the query";
  std::lock_guard lock(log_->mu);
  ASSERT_EQ(log_->bytes.size(), body.size());
  EXPECT_TRUE(log_->bytes == body) << "bytes arrived out of order or altered";
  EXPECT_GT(log_->appends, 1) << "the body should arrive in several chunks";
  EXPECT_EQ(log_->finishes, 1);
  EXPECT_EQ(log_->destroyed, 1);
}

TEST_F(HttpServerTest, StreamingRouteWithEmptyBodyStillFinishes) {
  const std::string empty;
  CurlResult r = Call("POST", base_ + "/v1/upload", &empty);
  ASSERT_EQ(r.code, CURLE_OK);
  EXPECT_EQ(r.status, 201) << r.body;
  EXPECT_EQ(r.Json()["size"], 0);
  std::lock_guard lock(log_->mu);
  EXPECT_EQ(log_->finishes, 1);
}

TEST_F(HttpServerTest, SinkAppendFailingMidwayYieldsItsErrorStatus) {
  const std::string body = RandomBytes(3u << 20, 43);
  CurlResult r = Call("POST", base_ + "/v1/upload-fails", &body, 50'000);
  ASSERT_EQ(r.code, CURLE_OK) << curl_easy_strerror(r.code);
  EXPECT_EQ(r.status, 422) << r.body;
  json j = r.Json();
  ASSERT_TRUE(j.is_object()) << r.body;
  EXPECT_EQ(j["error"]["code"], "FAILED_PRECONDITION");
  EXPECT_EQ(j["error"]["field"], "image");
  std::lock_guard lock(fail_log_->mu);
  EXPECT_EQ(fail_log_->finishes, 0) << "Finish must not run after a failed Append";
  EXPECT_EQ(fail_log_->destroyed, 1) << "the failed sink is released";
  EXPECT_LE(fail_log_->bytes.size(), 1u << 20);
  EXPECT_TRUE(fail_log_->failed);
  // Appends stopped at the failure: the rest of the body was discarded.
  EXPECT_EQ(fail_log_->calls_after_failure, 0);
  EXPECT_EQ(fail_log_->bytes, body.substr(0, fail_log_->bytes.size())) << "bytes before the failure in order";
}

TEST_F(HttpServerTest, SinkFactoryFailureIsReturned) {
  const std::string body(10'000, 'q');
  CurlResult r = Call("POST", base_ + "/v1/upload-refused", &body);
  ASSERT_EQ(r.code, CURLE_OK);
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.Json()["error"]["field"], "name");
}

TEST_F(HttpServerTest, SlowHandlerDoesNotBlockOtherConnections) {
  std::thread slow([&] { EXPECT_EQ(Call("GET", base_ + "/v1/slow").status, 200); });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  auto t0 = std::chrono::steady_clock::now();
  CurlResult r = Call("GET", base_ + "/v1/ping");
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  slow.join();
  EXPECT_EQ(r.status, 200);
  EXPECT_LT(ms, 1000) << "a slow request blocked another connection";
}

// Runs one POST against a fresh server whose streaming route is `factory`;
// returns the HTTP status (0 when the request itself failed).
long PostToStreamingRoute(SinkFactory factory) {
  Router r;
  r.Add({"POST", "/v1/upload", "upload", {}, std::move(factory), 201});
  HttpServerOptions opts;
  opts.port = 0;
  HttpServer server(std::move(r), opts);
  if (!server.Start().ok()) return 0;
  const std::string body(100'000, 'b');
  CurlResult res = Call("POST", "http://127.0.0.1:" + std::to_string(server.port()) + "/v1/upload", &body);
  return res.code == CURLE_OK ? res.status : 0;
}

class ThrowingSink : public BodySink {
 public:
  explicit ThrowingSink(bool in_append) : in_append_(in_append) {}
  Status Append(std::string_view) override {
    if (in_append_) throw std::runtime_error("append blew up");
    return Status::Ok();
  }
  HttpResponse Finish() override { throw std::runtime_error("finish blew up"); }

 private:
  bool in_append_;
};

TEST(HttpServerStreamingExceptionsTest, ThrowingSinkBecomes500InsteadOfCrashing) {

  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  // Each scenario runs in a child process: today it aborts there.
  EXPECT_EXIT(
      {
        long st = PostToStreamingRoute([](const HttpRequest&) -> Result<std::unique_ptr<BodySink>> {
          throw std::runtime_error("factory blew up");
        });
        std::exit(st == 500 ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(
      {
        long st = PostToStreamingRoute([](const HttpRequest&) -> Result<std::unique_ptr<BodySink>> {
          return std::unique_ptr<BodySink>(new ThrowingSink(true));
        });
        std::exit(st == 500 ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(
      {
        long st = PostToStreamingRoute([](const HttpRequest&) -> Result<std::unique_ptr<BodySink>> {
          return std::unique_ptr<BodySink>(new ThrowingSink(false));
        });
        std::exit(st == 500 ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "");
}

TEST(HttpServerStartTest, BadBindAddressAndStopIsIdempotent) {
  HttpServerOptions opts;
  opts.bind_address = "not-an-ip";
  opts.port = 0;
  HttpServer bad(Router{}, opts);
  Status s = bad.Start();
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();

  HttpServerOptions ok_opts;
  ok_opts.port = 0;
  HttpServer a(Router{}, ok_opts);
  ASSERT_TRUE(a.Start().ok());
  // A second server on the same fixed port cannot start.
  HttpServerOptions same;
  same.port = a.port();
  HttpServer b(Router{}, same);
  Status busy = b.Start();
  EXPECT_EQ(busy.code(), Code::kUnavailable) << busy.ToString();
  a.Stop();
  a.Stop();
  CurlResult r = Call("GET", "http://127.0.0.1:" + std::to_string(a.port()) + "/v1/openapi.json");
  EXPECT_NE(r.code, CURLE_OK) << "server still answering after Stop";
}

}  // namespace
}  // namespace berth::api
