// api/errors: the one Code -> HTTP status mapping and the error body shape.
#include "api/errors.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace berth::api {
namespace {

using json = nlohmann::json;

TEST(HttpErrorsTest, HttpStatusForEveryCode) {
  const std::vector<std::pair<Code, int>> table = {
      {Code::kOk, 200},
      {Code::kInvalidArgument, 400},
      {Code::kNotFound, 404},
      {Code::kAlreadyExists, 409},
      {Code::kFailedPrecondition, 422},
      {Code::kResourceExhausted, 503},
      {Code::kDeadlineExceeded, 504},
      {Code::kUnavailable, 503},
      {Code::kPermissionDenied, 403},
      {Code::kUnauthenticated, 401},
      {Code::kAborted, 409},
      {Code::kUnimplemented, 501},
      {Code::kInternal, 500},
  };
  // The table covers every enumerator (kOk = 0 .. kInternal).
  ASSERT_EQ(table.size(), static_cast<size_t>(Code::kInternal) + 1);
  for (auto [code, http] : table) EXPECT_EQ(HttpStatusFor(code), http) << CodeName(code);
  // Every error code maps to an error status.
  for (auto [code, http] : table) {
    if (code != Code::kOk) {
      EXPECT_GE(HttpStatusFor(code), 400) << CodeName(code);
    }
  }
}

TEST(HttpErrorsTest, UnknownCodeValueIsInternalServerError) {
  EXPECT_EQ(HttpStatusFor(static_cast<Code>(999)), 500);
}

TEST(HttpErrorsTest, ErrorBodyWithField) {
  HttpResponse r = ErrorResponse(Status::InvalidArgument("memory_mib", "must be between 64 and 65536 (MiB)"));
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.content_type, "application/json");
  json j = json::parse(r.body);
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j.size(), 1u) << r.body;
  ASSERT_TRUE(j.contains("error"));
  const json& e = j["error"];
  ASSERT_TRUE(e.is_object());
  EXPECT_EQ(e.size(), 3u) << r.body;
  EXPECT_EQ(e["code"], "INVALID_ARGUMENT");
  EXPECT_EQ(e["message"], "must be between 64 and 65536 (MiB)");
  EXPECT_EQ(e["field"], "memory_mib");
}

TEST(HttpErrorsTest, ErrorBodyWithoutFieldOmitsIt) {
  HttpResponse r = ErrorResponse(Status::NotFound("function 'x' does not exist"));
  EXPECT_EQ(r.status, 404);
  json j = json::parse(r.body);
  const json& e = j.at("error");
  EXPECT_EQ(e.size(), 2u) << r.body;
  EXPECT_EQ(e["code"], "NOT_FOUND");
  EXPECT_EQ(e["message"], "function 'x' does not exist");
  EXPECT_FALSE(e.contains("field"));
}

TEST(HttpErrorsTest, EveryCodeNameAppearsInItsBody) {
  for (int c = static_cast<int>(Code::kInvalidArgument); c <= static_cast<int>(Code::kInternal); ++c) {
    Code code = static_cast<Code>(c);
    HttpResponse r = ErrorResponse(Status(code, "m"));
    EXPECT_EQ(r.status, HttpStatusFor(code));
    json j = json::parse(r.body);
    EXPECT_EQ(j["error"]["code"], CodeName(code));
  }
}

TEST(HttpErrorsTest, SpecialCharactersAreEscapedAndRoundTrip) {
  const std::string msg = "quote \" backslash \\ newline \n tab \t nul " + std::string(1, '\0') + " <&> \xc3\xa9";
  HttpResponse r = ErrorResponse(Status::FailedPrecondition(msg, "entry\"point"));
  EXPECT_EQ(r.status, 422);
  json j = json::parse(r.body);
  EXPECT_EQ(j["error"]["message"].get<std::string>(), msg);
  EXPECT_EQ(j["error"]["field"].get<std::string>(), "entry\"point");
}

TEST(HttpErrorsTest, InvalidUtf8DoesNotThrowAndYieldsValidJson) {
  const std::string bad_msg = std::string("bad \xff\xfe bytes \xc3") + " and \x80 end";
  const std::string bad_field = std::string("f\xff");
  HttpResponse r;
  ASSERT_NO_THROW(r = ErrorResponse(Status::InvalidArgument(bad_field, bad_msg)));
  EXPECT_EQ(r.status, 400);
  json j;
  ASSERT_NO_THROW(j = json::parse(r.body)) << r.body;
  const std::string m = j["error"]["message"].get<std::string>();
  EXPECT_EQ(m.rfind("bad ", 0), 0u) << m;
  EXPECT_NE(m.find(" end"), std::string::npos) << m;
  EXPECT_NE(m.find("\xef\xbf\xbd"), std::string::npos) << "invalid bytes become U+FFFD: " << m;
  EXPECT_EQ(m.find('\xff'), std::string::npos);
  EXPECT_TRUE(j["error"].contains("field"));
}


// Which limit ran out decides the status of RESOURCE_EXHAUSTED.
TEST(HttpErrorsTest, ResourceExhaustedByTheLimitThatRanOut) {
  auto retry_after = [](const HttpResponse& r) {
    for (const auto& [k, v] : r.headers) {
      if (k == "Retry-After") return v;
    }
    return std::string();
  };
  HttpResponse cluster = ErrorResponse(Status::ResourceExhausted("no node has room"));
  EXPECT_EQ(cluster.status, 503);
  EXPECT_EQ(retry_after(cluster), "1");
  HttpResponse capped = ErrorResponse(Status(Code::kResourceExhausted, "queue full", "max_instances"));
  EXPECT_EQ(capped.status, 429);
  EXPECT_EQ(retry_after(capped), "1");
  HttpResponse large = ErrorResponse(Status(Code::kResourceExhausted, "too large", "payload"));
  EXPECT_EQ(large.status, 413);
  EXPECT_EQ(retry_after(large), "");
}

}  // namespace
}  // namespace berth::api
