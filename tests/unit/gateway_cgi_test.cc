// The gateway's pure parts: CGI response parsing, the CGI environment, the
// token bucket, and the router's wildcard segment and "*" method.
#include <gtest/gtest.h>

#include "api/gateway.h"
#include "api/router.h"

namespace berth::api {
namespace {

TEST(CgiResponseTest, StatusHeadersAndBody) {
  auto r = ParseCgiResponse("Status: 201 Created\r\nContent-Type: text/plain\r\nX-A: 1\r\n\r\nbody\nmore");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 201);
  EXPECT_EQ(r->content_type, "text/plain");
  ASSERT_EQ(r->headers.size(), 1u);
  EXPECT_EQ(r->headers[0], (std::pair<std::string, std::string>{"X-A", "1"}));
  EXPECT_EQ(r->body, "body\nmore");
}

TEST(CgiResponseTest, DefaultsAndRedirects) {
  EXPECT_EQ(ParseCgiResponse("Content-Type: text/html\n\n<p>")->status, 200);
  auto loc = ParseCgiResponse("Location: http://x/\n\n");
  EXPECT_EQ(loc->status, 302);
  auto bare = ParseCgiResponse("Status: 204 No Content\n");  // no blank line, no body
  ASSERT_TRUE(bare.ok());
  EXPECT_EQ(bare->status, 204);
  EXPECT_EQ(bare->body, "");
  // The server's own headers are not taken from the script.
  auto own = ParseCgiResponse("Content-Length: 99\nX-Berth-Execution-Id: forged\nConnection: keep-alive\n\nx");
  ASSERT_TRUE(own.ok());
  EXPECT_TRUE(own->headers.empty());
}

TEST(CgiResponseTest, MalformedOutputIsRefused) {
  EXPECT_FALSE(ParseCgiResponse("").ok());
  EXPECT_FALSE(ParseCgiResponse("hello world\n").ok());
  EXPECT_FALSE(ParseCgiResponse("\nbody").ok());
  EXPECT_FALSE(ParseCgiResponse("Content-Type: text/plain").ok());  // unterminated
  EXPECT_FALSE(ParseCgiResponse("Status: abc\n\n").ok());
  EXPECT_FALSE(ParseCgiResponse("Status: 999 Nope\n\n").ok());
  EXPECT_FALSE(ParseCgiResponse("Bad Name: x\n\n").ok());
}

TEST(CgiEnvironmentTest, RequestBecomesCgiVariables) {
  HttpRequest q;
  q.method = "POST";
  q.raw_query = "a=1&b=%20";
  q.version = "HTTP/1.1";
  q.remote_addr = "10.0.0.7";
  q.host = "example.org:8470";
  q.body = "12345";
  q.headers = {{"content-type", "text/plain"}, {"x-custom-thing", "v"}, {"authorization", "Bearer s3cret"},
               {"proxy", "http://evil"}, {"proxy-authorization", "x"}, {"we.ird", "dropped"}};
  auto env = CgiEnvironment(q, "/gw/acme/fn", "/a/b");
  EXPECT_EQ(env["GATEWAY_INTERFACE"], "CGI/1.1");
  EXPECT_EQ(env["REQUEST_METHOD"], "POST");
  EXPECT_EQ(env["SCRIPT_NAME"], "/gw/acme/fn");
  EXPECT_EQ(env["PATH_INFO"], "/a/b");
  EXPECT_EQ(env["QUERY_STRING"], "a=1&b=%20");
  EXPECT_EQ(env["CONTENT_LENGTH"], "5");
  EXPECT_EQ(env["CONTENT_TYPE"], "text/plain");
  EXPECT_EQ(env["SERVER_NAME"], "example.org");
  EXPECT_EQ(env["SERVER_PORT"], "8470");
  EXPECT_EQ(env["REMOTE_ADDR"], "10.0.0.7");
  EXPECT_EQ(env["HTTP_X_CUSTOM_THING"], "v");
  EXPECT_EQ(env.count("HTTP_AUTHORIZATION"), 0u);
  EXPECT_EQ(env.count("HTTP_PROXY"), 0u);
  EXPECT_EQ(env.count("HTTP_PROXY_AUTHORIZATION"), 0u);
  EXPECT_EQ(env.count("HTTP_CONTENT_TYPE"), 0u);
  for (const auto& [k, v] : env) EXPECT_EQ(k.find('.'), std::string::npos) << k;
}

TEST(TokenBucketTest, BurstThenRate) {
  TokenBucket b;
  b.Configure(2, 3);  // 2/s, burst 3
  int64_t t = 1000;
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(b.WaitMs(t), 0);
    b.Take();
  }
  EXPECT_EQ(b.WaitMs(t), 500);
  EXPECT_EQ(b.WaitMs(t + 500), 0);
  b.Take();
  EXPECT_GT(b.WaitMs(t + 500), 0);
}

TEST(RouterWildcardTest, TrailingWildcardAndAnyMethod) {
  Router r;
  Route gw{"*", "/gw/{tenant}/{function}/{path...}", "gateway"};
  gw.handler = [](const HttpRequest&) { return HttpResponse{}; };
  r.Add(gw);
  std::map<std::string, std::string> p;
  int miss = 0;
  ASSERT_NE(r.Match("PATCH", "/gw/acme/fn/a/b/", &p, &miss), nullptr);
  EXPECT_EQ(p["tenant"], "acme");
  EXPECT_EQ(p["function"], "fn");
  EXPECT_EQ(p["path"], "a/b/");
  ASSERT_NE(r.Match("GET", "/gw/acme/fn", &p, &miss), nullptr);
  EXPECT_EQ(p["path"], "");
  EXPECT_EQ(r.Match("GET", "/gw/acme", &p, &miss), nullptr);
  EXPECT_EQ(miss, 404);
  auto doc = nlohmann::json::parse(r.OpenApiJson());
  ASSERT_TRUE(doc["paths"].contains("/gw/{tenant}/{function}/{path}"));
  EXPECT_TRUE(doc["paths"]["/gw/{tenant}/{function}/{path}"].contains("delete"));
}

}  // namespace
}  // namespace berth::api
