// ValidateFunctionSpec / ValidateFunctionName: each bad field is named
// exactly as the JSON API spells it, and every limit is checked at its edges.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "manager/service.h"

namespace berth::manager {
namespace {

FunctionSpec Valid() {
  FunctionSpec s;
  s.name = "resize-images_2";
  s.image = std::string(32, 'a') + std::string(32, '0');
  s.entrypoint = {"/bin/echo", "hi"};
  s.vcpus = 2;
  s.memory_mib = 512;
  s.timeout_ms = 10'000;
  s.env = {{"PATH", "/usr/bin:/bin"}, {"_PRIVATE", "1"}, {"a1", ""}};
  s.cwd = "/work";
  s.network = "none";
  return s;
}

// Expects `spec` to fail with InvalidArgument naming `field`.
void ExpectBad(const FunctionSpec& spec, const std::string& field, const std::string& why) {
  Status s = ValidateFunctionSpec(spec);
  EXPECT_FALSE(s.ok()) << why << ": accepted";
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << why << ": " << s.ToString();
  EXPECT_EQ(s.field(), field) << why << ": " << s.ToString();
  EXPECT_FALSE(s.message().empty()) << why;
}

void ExpectGood(const FunctionSpec& spec, const std::string& why) {
  Status s = ValidateFunctionSpec(spec);
  EXPECT_TRUE(s.ok()) << why << ": " << s.ToString();
}

TEST(FunctionValidationTest, ValidSpecAndDefaultsPass) {
  ExpectGood(Valid(), "valid spec");
  FunctionSpec d;  // defaults: only name, image and entrypoint are missing
  d.name = "f";
  d.image = std::string(64, 'b');
  d.entrypoint = {"/bin/true"};
  ExpectGood(d, "defaults");
}

TEST(FunctionValidationTest, Name) {
  for (const std::string& good : std::vector<std::string>{"a", "0", "9lives", "a-b_c", std::string(63, 'x')}) {
    EXPECT_TRUE(ValidateFunctionName(good).ok()) << good;
    FunctionSpec s = Valid();
    s.name = good;
    ExpectGood(s, "name " + good);
  }
  for (const std::string& bad : std::vector<std::string>{std::string(), std::string(64, 'x'), std::string("Upper"), std::string("aB"),
                                std::string("-lead"), std::string("_lead"), std::string("a b"),
                                std::string("a.b"), std::string("a/b"), std::string("caf\xc3\xa9"),
                                std::string("a\0b", 3), std::string("a\n")}) {
    Status st = ValidateFunctionName(bad);
    EXPECT_EQ(st.code(), Code::kInvalidArgument) << "'" << bad << "'";
    EXPECT_EQ(st.field(), "name") << "'" << bad << "'";
    FunctionSpec s = Valid();
    s.name = bad;
    ExpectBad(s, "name", "name '" + bad + "'");
  }
}

TEST(FunctionValidationTest, Image) {
  const std::string good = std::string(64, 'f');
  for (const std::string& bad : std::vector<std::string>{std::string(), std::string(63, 'a'), std::string(65, 'a'), std::string(64, 'A'),
                                std::string(63, 'a') + "g", "sha256:" + std::string(64, 'a'),
                                std::string("ubuntu:latest")}) {
    FunctionSpec s = Valid();
    s.image = bad;
    ExpectBad(s, "image", "image '" + bad + "'");
  }
  FunctionSpec s = Valid();
  s.image = good;
  ExpectGood(s, "64 lowercase hex");
}

TEST(FunctionValidationTest, Entrypoint) {
  FunctionSpec s = Valid();
  s.entrypoint = {};
  ExpectBad(s, "entrypoint", "empty argv");
  s.entrypoint = {""};
  ExpectBad(s, "entrypoint", "empty argv[0]");
  s.entrypoint = {"", "x"};
  ExpectBad(s, "entrypoint", "empty argv[0] with args");
  s.entrypoint = {std::string("/bin/e\0cho", 10)};
  ExpectBad(s, "entrypoint", "NUL in argv[0]");
  s.entrypoint = {"/bin/echo", std::string("a\0b", 3)};
  ExpectBad(s, "entrypoint", "NUL in a later argument");
  s.entrypoint = {"/bin/echo", ""};  // empty later arguments are legitimate
  ExpectGood(s, "empty second argument");
  s.entrypoint = {"echo"};  // resolved in PATH inside the image
  ExpectGood(s, "relative argv[0]");
}

TEST(FunctionValidationTest, VcpusBoundaries) {
  const std::pair<uint32_t, bool> cases[] = {{0, false}, {1, true}, {2, true}, {64, true}, {65, false},
                                             {4'294'967'295u, false}};
  for (auto [v, ok] : cases) {
    FunctionSpec s = Valid();
    s.vcpus = v;
    if (ok) {
      ExpectGood(s, "vcpus " + std::to_string(v));
    } else {
      ExpectBad(s, "vcpus", "vcpus " + std::to_string(v));
    }
  }
}

TEST(FunctionValidationTest, MemoryBoundaries) {
  const std::pair<uint64_t, bool> cases[] = {{0, false},      {63, false},    {64, true},
                                             {65536, true},   {65537, false}, {~uint64_t{0}, false}};
  for (auto [m, ok] : cases) {
    FunctionSpec s = Valid();
    s.memory_mib = m;
    if (ok) {
      ExpectGood(s, "memory_mib " + std::to_string(m));
    } else {
      ExpectBad(s, "memory_mib", "memory_mib " + std::to_string(m));
    }
  }
}

TEST(FunctionValidationTest, TimeoutBoundaries) {
  const std::pair<int64_t, bool> cases[] = {{-1, false},       {0, false},        {1, true},
                                            {3'600'000, true}, {3'600'001, false}, {INT64_MIN, false},
                                            {INT64_MAX, false}};
  for (auto [t, ok] : cases) {
    FunctionSpec s = Valid();
    s.timeout_ms = t;
    if (ok) {
      ExpectGood(s, "timeout_ms " + std::to_string(t));
    } else {
      ExpectBad(s, "timeout_ms", "timeout_ms " + std::to_string(t));
    }
  }
}

TEST(FunctionValidationTest, Env) {
  for (const std::string& bad : std::vector<std::string>{std::string(), std::string("1ABC"), std::string("A-B"), std::string("A B"),
                                std::string("A=B"), std::string("\xc3\xa9"), std::string("A\0", 2)}) {
    FunctionSpec s = Valid();
    s.env = {{"GOOD", "1"}, {bad, "v"}};
    ExpectBad(s, "env", "env name '" + bad + "'");
  }
  FunctionSpec s = Valid();
  s.env = {{"GOOD", std::string("a\0b", 3)}};
  ExpectBad(s, "env", "NUL in env value");
  s.env = {{"A1", "="}, {"_", "x y\nz"}, {"lower_case", ""}};
  ExpectGood(s, "unusual but valid env");
  s.env = {};
  ExpectGood(s, "no env");
}

TEST(FunctionValidationTest, Cwd) {
  for (const std::string& bad : std::vector<std::string>{"", "work", "./work", "~/x"}) {
    FunctionSpec s = Valid();
    s.cwd = bad;
    ExpectBad(s, "cwd", "cwd '" + bad + "'");
  }
  FunctionSpec s = Valid();
  s.cwd = "/";
  ExpectGood(s, "cwd /");
}

TEST(FunctionValidationTest, Network) {
  for (const std::string& bad : std::vector<std::string>{"", "default", "bridge", "NONE", "none "}) {
    FunctionSpec s = Valid();
    s.network = bad;
    ExpectBad(s, "network", "network '" + bad + "'");
  }
}

TEST(FunctionValidationTest, FirstBadFieldInSpecOrderIsReported) {
  // Several bad fields at once: the checks run in declaration order.
  FunctionSpec s = Valid();
  s.vcpus = 0;
  s.memory_mib = 1;
  s.network = "x";
  ExpectBad(s, "vcpus", "vcpus before memory_mib and network");
  s = Valid();
  s.name = "";
  s.image = "";
  ExpectBad(s, "name", "name first");
}

}  // namespace
}  // namespace berth::manager
