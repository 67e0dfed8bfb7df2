// api/json_fields: strict JSON -> typed values; every failure is an
// INVALID_ARGUMENT naming the field.
#include "api/json_fields.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <limits>
#include <map>
#include <string>
#include <vector>

namespace berth::api {
namespace {

using json = nlohmann::json;

void ExpectInvalid(const Status& s, const std::string& field, const std::string& why) {
  EXPECT_FALSE(s.ok()) << why;
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << why << ": " << s.ToString();
  EXPECT_EQ(s.field(), field) << why << ": " << s.ToString();
}

TEST(ParseJsonObjectTest, RejectsNonObjects) {
  for (const std::string& body :
       std::vector<std::string>{"", "[]", "{", "null", "1", "\"s\"", "true", "{\"a\":1} x", "{'a':1}",
                                "{\"a\":1,}", std::string("{\"a\":\"\xff\"}")}) {
    auto r = ParseJsonObject(body);
    ASSERT_FALSE(r.ok()) << "accepted: " << body;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << body;
    EXPECT_EQ(r.status().field(), "body") << body;
  }
}

TEST(ParseJsonObjectTest, DistinctMessagesForEmptyMalformedAndNotObject) {
  auto empty = ParseJsonObject("");
  auto malformed = ParseJsonObject("{");
  auto array = ParseJsonObject("[]");
  ASSERT_FALSE(empty.ok());
  ASSERT_FALSE(malformed.ok());
  ASSERT_FALSE(array.ok());
  EXPECT_NE(empty.status().message(), malformed.status().message());
  EXPECT_NE(malformed.status().message(), array.status().message());
  EXPECT_NE(empty.status().message().find("empty"), std::string::npos);
}

TEST(ParseJsonObjectTest, AcceptsObjects) {
  auto r = ParseJsonObject(" {\"a\": [1, 2], \"b\": {\"c\": null}} \n");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)["a"][1], 2);
  auto e = ParseJsonObject("{}");
  ASSERT_TRUE(e.ok());
  EXPECT_TRUE(e->empty());
}

TEST(ParseJsonObjectTest, DeepNestingDoesNotCrash) {
  // Request bodies are untrusted and may be up to 16 MiB: a deeply nested
  // document must parse (or fail) without exhausting the stack.
  const size_t depth = 500'000;
  std::string body = "{\"a\":" + std::string(depth, '[') + std::string(depth, ']') + "}";
  auto r = ParseJsonObject(body);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE((*r)["a"].is_array());
  auto bad = ParseJsonObject("{\"a\":" + std::string(depth, '['));
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().field(), "body");
}

TEST(FieldReaderTest, RequiredMissingAndNull) {
  json obj = json::parse(R"({"n": null})");
  FieldReader r(obj);
  std::string s = "untouched";
  ExpectInvalid(r.String("name", &s, true), "name", "missing required string");
  ExpectInvalid(r.String("n", &s, true), "n", "null required string");
  EXPECT_EQ(s, "untouched");
  std::vector<std::string> v;
  ExpectInvalid(r.StringArray("entrypoint", &v, true), "entrypoint", "missing required array");
  int64_t i = 5;
  ExpectInvalid(r.Int("vcpus", &i, 1, 64, true), "vcpus", "missing required int");
  EXPECT_EQ(i, 5);
  Status req = r.String("name", &s, true);
  EXPECT_NE(req.message().find("required"), std::string::npos) << req.message();
}

TEST(FieldReaderTest, OptionalMissingKeepsDefaults) {
  json obj = json::object();
  FieldReader r(obj);
  std::string s = "default";
  std::vector<std::string> v = {"d"};
  std::map<std::string, std::string> m = {{"k", "v"}};
  int64_t i = 42;
  EXPECT_TRUE(r.String("s", &s).ok());
  EXPECT_TRUE(r.StringArray("v", &v).ok());
  EXPECT_TRUE(r.StringMap("m", &m).ok());
  EXPECT_TRUE(r.Int("i", &i, 0, 100).ok());
  EXPECT_EQ(s, "default");
  EXPECT_EQ(v, std::vector<std::string>{"d"});
  EXPECT_EQ(m.size(), 1u);
  EXPECT_EQ(i, 42);
  EXPECT_TRUE(r.NoUnknownFields().ok());
}

TEST(FieldReaderTest, ReadsGoodValues) {
  json obj = json::parse(R"({"s": "x\u00e9", "a": ["p", "", "q"], "m": {"K": "v", "E": ""}, "i": -7})");
  FieldReader r(obj);
  std::string s;
  std::vector<std::string> a;
  std::map<std::string, std::string> m;
  int64_t i = 0;
  ASSERT_TRUE(r.String("s", &s, true).ok());
  ASSERT_TRUE(r.StringArray("a", &a, true).ok());
  ASSERT_TRUE(r.StringMap("m", &m).ok());
  ASSERT_TRUE(r.Int("i", &i, -10, 10, true).ok());
  EXPECT_EQ(s, "x\xc3\xa9");
  EXPECT_EQ(a, (std::vector<std::string>{"p", "", "q"}));
  EXPECT_EQ(m, (std::map<std::string, std::string>{{"K", "v"}, {"E", ""}}));
  EXPECT_EQ(i, -7);
  EXPECT_TRUE(r.NoUnknownFields().ok());
}

TEST(FieldReaderTest, WrongTypes) {
  json obj = json::parse(
      R"({"s_num": 1, "s_arr": ["x"], "s_bool": true, "a_str": "x", "a_mixed": ["x", 1], "a_nested": [["x"]],
          "a_obj": {"x": "y"}, "m_arr": ["x"], "m_str": "x", "i_str": "5", "i_float": 5.5, "i_float_whole": 5.0,
          "i_bool": true, "i_arr": [5], "i_exp": 1e3})");
  FieldReader r(obj);
  std::string s;
  std::vector<std::string> a;
  std::map<std::string, std::string> m;
  int64_t i = 0;
  ExpectInvalid(r.String("s_num", &s), "s_num", "number as string");
  ExpectInvalid(r.String("s_arr", &s), "s_arr", "array as string");
  ExpectInvalid(r.String("s_bool", &s), "s_bool", "bool as string");
  ExpectInvalid(r.StringArray("a_str", &a), "a_str", "string as array");
  ExpectInvalid(r.StringArray("a_mixed", &a), "a_mixed", "array with a number");
  ExpectInvalid(r.StringArray("a_nested", &a), "a_nested", "nested array");
  ExpectInvalid(r.StringArray("a_obj", &a), "a_obj", "object as array");
  EXPECT_TRUE(a.empty()) << "a failed read must not leave partial results";
  ExpectInvalid(r.StringMap("m_arr", &m), "m_arr", "array as map");
  ExpectInvalid(r.StringMap("m_str", &m), "m_str", "string as map");
  ExpectInvalid(r.Int("i_str", &i, 0, 100), "i_str", "string as int");
  ExpectInvalid(r.Int("i_float", &i, 0, 100), "i_float", "float as int");
  ExpectInvalid(r.Int("i_float_whole", &i, 0, 100), "i_float_whole", "5.0 as int");
  ExpectInvalid(r.Int("i_bool", &i, 0, 100), "i_bool", "bool as int");
  ExpectInvalid(r.Int("i_arr", &i, 0, 100), "i_arr", "array as int");
  ExpectInvalid(r.Int("i_exp", &i, 0, 10000), "i_exp", "1e3 as int");
  EXPECT_EQ(i, 0);
  EXPECT_TRUE(s.empty());
  EXPECT_TRUE(m.empty());
}

TEST(FieldReaderTest, StringMapWithNonStringValueNamesTheMapAndTheKey) {
  json obj = json::parse(R"({"env": {"A": "1", "B": 2, "C": "3"}})");
  FieldReader r(obj);
  std::map<std::string, std::string> m = {{"old", "x"}};
  Status s = r.StringMap("env", &m);
  ExpectInvalid(s, "env", "number value in map");
  EXPECT_NE(s.message().find("'B'"), std::string::npos) << s.message();
  EXPECT_EQ(m, (std::map<std::string, std::string>{{"old", "x"}})) << "failed read must not modify the output";
  for (const char* v : {R"({"env": {"A": null}})", R"({"env": {"A": ["x"]}})", R"({"env": {"A": {"x": "y"}}})",
                        R"({"env": {"A": true}})"}) {
    json o = json::parse(v);
    FieldReader rr(o);
    std::map<std::string, std::string> mm;
    ExpectInvalid(rr.StringMap("env", &mm), "env", v);
  }
}

TEST(FieldReaderTest, IntegerBoundsAreInclusive) {
  struct Case {
    const char* json;
    int64_t min, max;
    bool ok;
  };
  const Case cases[] = {
      {R"({"x": 64})", 64, 65536, true},      {R"({"x": 63})", 64, 65536, false},
      {R"({"x": 65536})", 64, 65536, true},   {R"({"x": 65537})", 64, 65536, false},
      {R"({"x": 0})", 1, 64, false},          {R"({"x": -1})", 0, 10, false},
      {R"({"x": -5})", -5, -1, true},         {R"({"x": -9223372036854775808})", INT64_MIN, 0, true},
      {R"({"x": 9223372036854775807})", 0, INT64_MAX, true},
      {R"({"x": 9223372036854775807})", 0, INT64_MAX - 1, false},
      {R"({"x": 18446744073709551615})", 0, 3600000, false},
      {R"({"x": 9223372036854775808})", 0, 3600000, false},
  };
  for (const auto& c : cases) {
    json obj = json::parse(c.json);
    FieldReader r(obj);
    int64_t out = 12345;
    Status s = r.Int("x", &out, c.min, c.max);
    if (c.ok) {
      EXPECT_TRUE(s.ok()) << c.json << " [" << c.min << "," << c.max << "]: " << s.ToString();
      EXPECT_EQ(out, obj["x"].get<int64_t>()) << c.json;
    } else {
      ExpectInvalid(s, "x", c.json);
      EXPECT_EQ(out, 12345) << c.json;
      EXPECT_NE(s.message().find(std::to_string(c.max)), std::string::npos) << s.message();
    }
  }
}

TEST(FieldReaderTest, UnsignedAboveInt64MaxIsNotSilentlyClamped) {

  json obj = json::parse(R"({"x": 18446744073709551615})");
  FieldReader r(obj);
  int64_t out = 0;
  Status s = r.Int("x", &out, 0, std::numeric_limits<int64_t>::max());
  ExpectInvalid(s, "x", "2^64-1 does not fit an int64");
  EXPECT_EQ(out, 0);
}

TEST(FieldReaderTest, NoUnknownFieldsNamesTheUnknownField) {
  json obj = json::parse(R"({"name": "f", "memroy_mib": 128, "vcpus": 1})");
  FieldReader r(obj);
  std::string name;
  int64_t vcpus = 0, memory = 0;
  ASSERT_TRUE(r.String("name", &name, true).ok());
  ASSERT_TRUE(r.Int("vcpus", &vcpus, 1, 64).ok());
  ASSERT_TRUE(r.Int("memory_mib", &memory, 64, 65536).ok());  // absent: fine
  Status s = r.NoUnknownFields();
  ExpectInvalid(s, "memroy_mib", "typo'd field");
  EXPECT_NE(s.message().find("unknown"), std::string::npos) << s.message();
}

TEST(FieldReaderTest, FieldsReadButFailedOrNullAreNotUnknown) {
  json obj = json::parse(R"({"a": 1, "b": null})");
  FieldReader r(obj);
  std::string s;
  int64_t i = 0;
  EXPECT_FALSE(r.String("a", &s).ok());
  EXPECT_TRUE(r.Int("b", &i, 0, 1).ok());
  EXPECT_TRUE(r.NoUnknownFields().ok());
}

TEST(FieldReaderTest, NoUnknownFieldsBeforeAnyReadNamesAField) {
  json obj = json::parse(R"({"zzz": 1})");
  FieldReader r(obj);
  ExpectInvalid(r.NoUnknownFields(), "zzz", "nothing read");
  json empty = json::object();
  FieldReader r2(empty);
  EXPECT_TRUE(r2.NoUnknownFields().ok());
}

}  // namespace
}  // namespace berth::api
