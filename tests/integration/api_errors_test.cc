// Bad input through real HTTP: every case is a 4xx with a JSON error naming
// the field and the reason, and nothing is created by a rejected request.
#include <gtest/gtest.h>

#include <algorithm>

#include "tests/integration/support/harness.h"

namespace berth::testing {
namespace {

using nlohmann::json;

class ApiErrorsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    daemon_ = new BerthdProcess();
    ASSERT_TRUE(daemon_->running()) << daemon_->log();
    image_ = daemon_->UploadBusybox();
  }
  static void TearDownTestSuite() {
    delete daemon_;
    daemon_ = nullptr;
  }
  static void ExpectError(const HttpResult& r, long status, const std::string& field) {
    EXPECT_EQ(r.status, status) << r.body;
    json j = r.json();
    ASSERT_TRUE(j.is_object()) << "error body is not JSON: " << r.body;
    ASSERT_TRUE(j.contains("error")) << r.body;
    EXPECT_FALSE(j["error"]["message"].get<std::string>().empty());
    EXPECT_FALSE(j["error"]["code"].get<std::string>().empty());
    if (!field.empty()) {
      EXPECT_EQ(j["error"].value("field", ""), field) << r.body;
    }
  }
  static BerthdProcess* daemon_;
  static std::string image_;
};

BerthdProcess* ApiErrorsTest::daemon_ = nullptr;
std::string ApiErrorsTest::image_;

TEST_F(ApiErrorsTest, MalformedJson) {
  ExpectError(daemon_->Post("/v1/functions", "{\"name\": \"x\", "), 400, "body");
  ExpectError(daemon_->Post("/v1/functions", "[1,2]"), 400, "body");
  ExpectError(daemon_->Post("/v1/functions", ""), 400, "body");
}

TEST_F(ApiErrorsTest, UnknownFunction) {
  ExpectError(daemon_->Post("/v1/functions/nope/invoke", "{}"), 404, "");
  ExpectError(daemon_->Get("/v1/functions/nope"), 404, "");
  ExpectError(daemon_->Get("/v1/executions/0123456789abcdef"), 404, "");
}

TEST_F(ApiErrorsTest, NotADiskImage) {
  auto r = daemon_->Call("POST", "/v1/images", std::string(4096, 'x') + "this is not a disk image",
                         "application/octet-stream");
  ExpectError(r, 422, "image");
  auto vmdk = daemon_->Call("POST", "/v1/images", "# Disk DescriptorFile\nversion=1\nRW 100 FLAT \"/etc/shadow\" 0\n",
                            "application/octet-stream");
  ExpectError(vmdk, 422, "image");
  // Nothing was registered by the rejected uploads.
  auto list = daemon_->Get("/v1/images").json()["images"];
  EXPECT_EQ(list.size(), 1u);
}

TEST_F(ApiErrorsTest, InvalidFunctionFields) {
  ExpectError(daemon_->CreateFunction("zero-mem", image_, {{"memory_mib", 0}}), 400, "memory_mib");
  ExpectError(daemon_->CreateFunction("neg-cpu", image_, {{"vcpus", -1}}), 400, "vcpus");
  ExpectError(daemon_->CreateFunction("no-ep", image_, {{"entrypoint", json::array()}}), 400, "entrypoint");
  ExpectError(daemon_->CreateFunction("bad-ep", image_, {{"entrypoint", "echo hi"}}), 400, "entrypoint");
  ExpectError(daemon_->CreateFunction("Bad Name", image_, json::object()), 400, "name");
  ExpectError(daemon_->CreateFunction("typo", image_, {{"memroy_mib", 128}}), 400, "memroy_mib");
  ExpectError(daemon_->CreateFunction("no-image", std::string(64, 'a'), json::object()), 400, "image");
  ExpectError(daemon_->CreateFunction("bad-timeout", image_, {{"timeout_ms", "soon"}}), 400, "timeout_ms");
  ExpectError(daemon_->CreateFunction("bad-env", image_, {{"env", {{"1X", "y"}}}}), 400, "env");
  EXPECT_TRUE(daemon_->Get("/v1/functions").json()["functions"].empty());
}

TEST_F(ApiErrorsTest, DuplicateFunctionAndVersions) {
  ASSERT_EQ(daemon_->CreateFunction("dup", image_, json::object()).status, 201);
  ExpectError(daemon_->CreateFunction("dup", image_, json::object()), 409, "");
  json spec = {{"image", image_}, {"entrypoint", {"/bin/echo", "v2"}}};
  auto updated = daemon_->Call("PUT", "/v1/functions/dup", spec.dump());
  ASSERT_EQ(updated.status, 200) << updated.body;
  EXPECT_EQ(updated.json()["version"], 2);
  EXPECT_EQ(daemon_->Call("DELETE", "/v1/functions/dup").status, 200);
  ExpectError(daemon_->Get("/v1/functions/dup"), 404, "");
}

TEST_F(ApiErrorsTest, InvokeBodyIsChecked) {
  ASSERT_EQ(daemon_->CreateFunction("strict", image_, json::object()).status, 201);
  ExpectError(daemon_->Post("/v1/functions/strict/invoke", "{\"args\": \"not-an-array\"}"), 400, "args");
  ExpectError(daemon_->Post("/v1/functions/strict/invoke", "{\"stdin\": 5}"), 400, "stdin");
  ExpectError(daemon_->Post("/v1/functions/strict/invoke", "{\"argz\": []}"), 400, "argz");
  // No execution was started by a rejected invoke.
  EXPECT_TRUE(daemon_->Get("/v1/executions").json()["executions"].empty());
}

TEST_F(ApiErrorsTest, UnknownRoutesAndMethods) {
  ExpectError(daemon_->Get("/v1/nothing-here"), 404, "");
  ExpectError(daemon_->Call("PATCH", "/v1/functions"), 405, "method");
  ExpectError(daemon_->Get("/v1/images/NOT-A-SHA256"), 400, "id");
  // Encoded slashes are decoded before routing: a traversal never reaches a handler.
  ExpectError(daemon_->Get("/v1/images/..%2F..%2Fetc%2Fpasswd"), 404, "");
}

TEST_F(ApiErrorsTest, OpenApiDocumentListsEveryRoute) {
  auto r = daemon_->Get("/v1/openapi.json");
  ASSERT_EQ(r.status, 200);
  json paths = r.json()["paths"];
  for (const char* p : {"/v1/functions", "/v1/functions/{name}/invoke", "/v1/images", "/v1/executions/{id}",
                        "/v1/health"}) {
    EXPECT_TRUE(paths.contains(p)) << p;
  }
  // Every documented GET without parameters really answers.
  for (auto it = paths.begin(); it != paths.end(); ++it) {
    if (it.key().find('{') == std::string::npos && it.value().contains("get")) {
      EXPECT_EQ(daemon_->Get(it.key()).status, 200) << it.key();
    }
  }
}

TEST(BerthdStartup, UnreachableLibvirtGivesAOneLineHint) {
  int code = 0;
  std::string out = Shell(std::string(BERTH_BINARY_DIR) +
                              "/daemon/berthd --port 0 --data-dir /tmp/berth-unreachable-test --runtime-dir " +
                              RuntimeDir() + " --node-uri 'qemu:///system?socket=/tmp/no-such-libvirt.sock' 2>&1",
                          &code);
  Shell("rm -rf /tmp/berth-unreachable-test");
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("libvirtd -d"), std::string::npos) << out;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
}

}  // namespace
}  // namespace berth::testing
