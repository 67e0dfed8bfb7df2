// The OpenAPI documents against an external validator and real answers:
// /v1/openapi.json must be valid OpenAPI 3 (@seriousme/openapi-schema-validator,
// an npm package scripts/lib.sh installs into <build>/openapi-tools), and real
// responses of a real berthd (images, functions, invoke, executions, procs,
// nodes, tokens, health, errors) must match the response schemas the
// document gives for them (checked with Ajv, closed objects: a field the
// server sends but the document does not list fails too).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "tests/integration/support/harness.h"

namespace berth::testing {
namespace {

using nlohmann::json;

// node_modules with the validator, or "" (then the test skips, unless
// BERTH_REQUIRE_OPENAPI_TOOLS is set, as scripts/test.sh does).
std::string ToolsDir() {
  std::string dir = std::getenv("BERTH_OPENAPI_TOOLS") ? std::getenv("BERTH_OPENAPI_TOOLS")
                                                       : std::string(BERTH_BINARY_DIR) + "/openapi-tools";
  dir += "/node_modules";
  if (!std::filesystem::exists(dir + "/@seriousme/openapi-schema-validator") ||
      !std::filesystem::exists(dir + "/ajv")) {
    return "";
  }
  return dir;
}

#define REQUIRE_TOOLS()                                                                                      \
  do {                                                                                                       \
    if (ToolsDir().empty()) {                                                                                \
      if (std::getenv("BERTH_REQUIRE_OPENAPI_TOOLS")) FAIL() << "the OpenAPI validator is not installed";   \
      GTEST_SKIP() << "no OpenAPI validator in " BERTH_BINARY_DIR "/openapi-tools (scripts/test.sh installs it)"; \
    }                                                                                                        \
  } while (0)

// Runs the external checker on a document (and samples); its report and exit code.
std::string Check(const json& doc, const json& samples, int* code) {
  char tmpl[] = "/tmp/berth-openapi-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  std::ofstream(dir + "/doc.json") << doc.dump(2);
  std::string cmd = "node " BERTH_SOURCE_DIR "/tests/integration/openapi/check.mjs " + ToolsDir() + " " + dir +
                    "/doc.json";
  if (!samples.is_null()) {
    std::ofstream(dir + "/samples.json") << samples.dump(2);
    cmd += " " + dir + "/samples.json";
  }
  std::string out = Shell(cmd + " 2>&1", code);
  std::filesystem::remove_all(dir);
  return out;
}

class OpenApiTest : public ::testing::Test {
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

  // Calls method+path and records the answer as a sample of `templ`.
  HttpResult Sample(const std::string& name, const std::string& method, const std::string& templ,
                    const std::string& path, const std::string& body = {}, const std::string& token = "admin",
                    const std::string& content_type = "application/json") {
    auto r = daemon_->CallAs(token == "admin" ? daemon_->admin_token() : token, method, path, body);
    samples_.push_back({{"name", name},
                        {"method", method},
                        {"path", templ},
                        {"status", r.status},
                        {"content_type", content_type},
                        {"body", r.body}});
    return r;
  }

  static BerthdProcess* daemon_;
  static std::string image_;
  json samples_ = json::array();
};

BerthdProcess* OpenApiTest::daemon_ = nullptr;
std::string OpenApiTest::image_;

TEST_F(OpenApiTest, AdminDocumentPassesTheExternalValidator) {
  REQUIRE_TOOLS();
  auto r = daemon_->Get("/v1/openapi.json");
  ASSERT_EQ(r.status, 200) << r.body;
  int code = -1;
  std::string report = Check(r.json(), nullptr, &code);
  EXPECT_EQ(code, 0) << report;
  EXPECT_NE(report.find("ok document"), std::string::npos) << report;
}

// The validator really validates: a broken document fails.
TEST_F(OpenApiTest, TheValidatorRejectsABrokenDocument) {
  REQUIRE_TOOLS();
  json doc = daemon_->Get("/v1/openapi.json").json();
  doc["paths"]["/v1/health"]["get"]["responses"] = "none";
  int code = -1;
  std::string report = Check(doc, nullptr, &code);
  EXPECT_NE(code, 0) << report;
}

TEST_F(OpenApiTest, RealResponsesMatchTheDocument) {
  REQUIRE_TOOLS();
  Sample("health", "GET", "/v1/health", "/v1/health", {}, "");
  Sample("images", "GET", "/v1/images", "/v1/images");
  Sample("image", "GET", "/v1/images/{id}", "/v1/images/" + image_);
  Sample("unknown image", "GET", "/v1/images/{id}", "/v1/images/nope");

  json spec = {{"name", "echo"}, {"image", image_}, {"entrypoint", {"/bin/echo"}}, {"memory_mib", 192},
               {"timeout_ms", 60000}, {"env", {{"A", "b"}}}};
  auto created = Sample("create function", "POST", "/v1/functions", "/v1/functions", spec.dump());
  ASSERT_EQ(created.status, 201) << created.body;
  Sample("bad function", "POST", "/v1/functions", "/v1/functions", json{{"name", "x"}, {"vcpus", "two"}}.dump());
  Sample("functions", "GET", "/v1/functions", "/v1/functions");
  Sample("function", "GET", "/v1/functions/{name}", "/v1/functions/echo");
  spec["env"]["A"] = "c";
  Sample("update function", "PUT", "/v1/functions/{name}", "/v1/functions/echo", spec.dump());

  auto invoked = Sample("invoke", "POST", "/v1/functions/{name}/invoke", "/v1/functions/echo/invoke",
                        json{{"args", {"hello"}}}.dump());
  EXPECT_EQ(invoked.status, 200) << invoked.body;
  // An execution that failed on the platform side answers an error with the record beside it.
  json record = invoked.json().contains("execution") ? invoked.json()["execution"] : invoked.json();
  ASSERT_TRUE(record.contains("execution_id")) << invoked.body;
  std::string id = record["execution_id"];
  std::string pid = std::to_string(record["pid"].get<int64_t>());
  Sample("invoke unknown", "POST", "/v1/functions/{name}/invoke", "/v1/functions/nope/invoke", "{}");
  Sample("invoke bad field", "POST", "/v1/functions/{name}/invoke", "/v1/functions/echo/invoke",
         json{{"args", "hello"}}.dump());

  Sample("executions", "GET", "/v1/executions", "/v1/executions?function=echo");
  Sample("executions bad state", "GET", "/v1/executions", "/v1/executions?state=sleepy");
  Sample("execution", "GET", "/v1/executions/{id}", "/v1/executions/" + id);
  Sample("execution logs", "GET", "/v1/executions/{id}/logs", "/v1/executions/" + id + "/logs");
  Sample("cancel ended", "POST", "/v1/executions/{id}/cancel", "/v1/executions/" + id + "/cancel");

  Sample("procs", "GET", "/v1/procs", "/v1/procs?all=1");
  Sample("proc", "GET", "/v1/procs/{pid}", "/v1/procs/" + pid);
  Sample("init", "GET", "/v1/procs/{pid}", "/v1/procs/1");
  Sample("children", "GET", "/v1/procs/{pid}/children", "/v1/procs/1/children?all=1");
  Sample("proc logs", "GET", "/v1/procs/{pid}/logs", "/v1/procs/" + pid + "/logs");
  Sample("wait", "GET", "/v1/procs/{pid}/wait", "/v1/procs/" + pid + "/wait");
  Sample("kill init", "POST", "/v1/procs/{pid}/kill", "/v1/procs/1/kill", "{}");
  Sample("bad pid", "GET", "/v1/procs/{pid}", "/v1/procs/abc");

  auto nodes = Sample("nodes", "GET", "/v1/nodes", "/v1/nodes");
  ASSERT_EQ(nodes.status, 200) << nodes.body;
  ASSERT_FALSE(nodes.json()["nodes"].empty()) << nodes.body;
  std::string node = nodes.json()["nodes"][0]["name"];
  Sample("node", "GET", "/v1/nodes/{name}", "/v1/nodes/" + node);
  Sample("unknown node", "GET", "/v1/nodes/{name}", "/v1/nodes/nope");

  Sample("create token", "POST", "/v1/tokens", "/v1/tokens", json{{"tenant", "t2"}, {"name", "n"}}.dump());
  Sample("tokens", "GET", "/v1/tokens", "/v1/tokens");
  Sample("no token", "GET", "/v1/functions", "/v1/functions", {}, "");
  Sample("bad token", "GET", "/v1/functions", "/v1/functions", {}, "nope");
  auto docs = Sample("docs", "GET", "/v1/docs", "/v1/docs", {}, "admin", "text/html");
  EXPECT_NE(docs.body.find("/v1/procs/{pid}/fork"), std::string::npos) << "the page lists the API's routes";
  Sample("docs without a token", "GET", "/v1/docs", "/v1/docs", {}, "");
  Sample("delete function", "DELETE", "/v1/functions/{name}", "/v1/functions/echo");

  int code = -1;
  std::string report = Check(daemon_->Get("/v1/openapi.json").json(), samples_, &code);
  EXPECT_EQ(code, 0) << report;
  EXPECT_NE(report.find("all checks passed"), std::string::npos) << report;
}

json ItemRoutes() {
  return json::array(
      {{{"method", "GET"},
        {"path", "/items/{id}"},
        {"summary", "Get an item"},
        {"description", "Looks an item up by id."},
        {"parameters",
         {{{"name", "id"}, {"in", "path"}, {"schema", {{"type", "integer"}, {"minimum", 1}}}},
          {{"name", "verbose"}, {"in", "query"}, {"schema", {{"type", "boolean"}}}}}},
        {"responses",
         {{"200",
           {{"description", "the item"},
            {"schema",
             {{"type", "object"},
              {"required", {"id", "name"}},
              {"properties",
               {{"id", {{"type", "integer"}}},
                {"name", {{"type", "string"}}},
                {"tags", {{"type", "array"}, {"items", {{"type", "string"}}}}}}}}}}},
          {"404", {{"description", "no such item"}, {"content_type", "text/plain"}}}}}},
       {{"method", "post"},
        {"path", "/items"},
        {"request",
         {{"required", true},
          {"schema", {{"type", "object"}, {"properties", {{"name", {{"type", "string"}, {"maxLength", 64}}}}}}}}},
        {"responses", {{"201", {{"description", "created"}, {"content_type", "text/plain"}}}}}},
       {{"method", "GET"}, {"path", "/"}}});
}

TEST_F(OpenApiTest, PerFunctionAndTenantGatewayDocumentsPassTheValidator) {
  REQUIRE_TOOLS();
  auto created = daemon_->CreateFunction("items", image_, {{"gateway", {{"auth", "public"}}}, {"routes", ItemRoutes()}});
  ASSERT_EQ(created.status, 201) << created.body;
  EXPECT_EQ(created.json()["routes"].size(), 3u) << created.body;
  EXPECT_EQ(created.json()["routes"][1]["method"], "POST");
  auto other = daemon_->CreateFunction(
      "orders", image_,
      {{"gateway", {{"auth", "token"}}},
       {"routes", {{{"method", "DELETE"}, {"path", "/orders/{order}"}, {"summary", "Cancel an order"}}}}});
  ASSERT_EQ(other.status, 201) << other.body;
  ASSERT_EQ(daemon_->CreateFunction("undocumented", image_, {}).status, 201);

  auto one = daemon_->Get("/v1/functions/items/openapi.json");
  ASSERT_EQ(one.status, 200) << one.body;
  json doc = one.json();
  ASSERT_TRUE(doc["paths"].contains("/gw/default/items/items/{id}")) << doc.dump(2);
  auto get = doc["paths"]["/gw/default/items/items/{id}"]["get"];
  EXPECT_EQ(get["summary"], "Get an item");
  EXPECT_EQ(get["security"], json::array());  // public
  EXPECT_EQ(get["parameters"][0]["required"], true);
  EXPECT_TRUE(doc["paths"]["/gw/default/items/items"]["post"]["requestBody"]["required"].get<bool>());
  EXPECT_TRUE(doc["paths"].contains("/gw/default/items/"));
  EXPECT_FALSE(doc["paths"].contains("/gw/default/orders/orders/{order}"));
  int code = -1;
  std::string report = Check(doc, nullptr, &code);
  EXPECT_EQ(code, 0) << report << "\n" << doc.dump(2);

  auto all = daemon_->Get("/v1/gateway/openapi.json");
  ASSERT_EQ(all.status, 200) << all.body;
  doc = all.json();
  EXPECT_TRUE(doc["paths"].contains("/gw/default/items/items/{id}"));
  ASSERT_TRUE(doc["paths"].contains("/gw/default/orders/orders/{order}")) << doc.dump(2);
  // The order route needs a token: its parameter comes from the path, undeclared.
  auto del = doc["paths"]["/gw/default/orders/orders/{order}"]["delete"];
  EXPECT_EQ(del["security"][0].count("bearerAuth"), 1u);
  EXPECT_EQ(del["parameters"][0]["name"], "order");
  EXPECT_EQ(doc["tags"].size(), 2u);  // "undocumented" declares nothing
  report = Check(doc, nullptr, &code);
  EXPECT_EQ(code, 0) << report << "\n" << doc.dump(2);

  // Another tenant sees only its own (none), and not this tenant's function.
  std::string t2 = daemon_->CreateToken("t2");
  auto theirs = daemon_->CallAs(t2, "GET", "/v1/gateway/openapi.json");
  ASSERT_EQ(theirs.status, 200);
  EXPECT_TRUE(theirs.json()["paths"].empty()) << theirs.body;
  EXPECT_EQ(daemon_->CallAs(t2, "GET", "/v1/functions/items/openapi.json").status, 404);
  EXPECT_EQ(daemon_->CallAs(t2, "GET", "/v1/gateway/openapi.json?tenant=default").status, 404);
  EXPECT_EQ(daemon_->CallAs("", "GET", "/v1/gateway/openapi.json").status, 401);
  // The admin may ask for any tenant's.
  EXPECT_TRUE(daemon_->Get("/v1/gateway/openapi.json?tenant=t2").json()["paths"].empty());

  auto page = daemon_->Get("/v1/gateway/docs");
  ASSERT_EQ(page.status, 200);
  EXPECT_NE(page.body.find("/gw/default/items/items/{id}"), std::string::npos) << page.body;
  EXPECT_NE(page.body.find("Cancel an order"), std::string::npos);
  auto fn_page = daemon_->Get("/v1/gateway/docs?function=items");
  ASSERT_EQ(fn_page.status, 200);
  EXPECT_EQ(fn_page.body.find("Cancel an order"), std::string::npos);
  EXPECT_NE(fn_page.body.find("Looks an item up by id."), std::string::npos);

  // Updating the function replaces its routes.
  auto updated = daemon_->Call("PUT", "/v1/functions/items",
                               json{{"image", image_}, {"entrypoint", {"/bin/true"}}, {"memory_mib", 192}}.dump());
  ASSERT_EQ(updated.status, 200) << updated.body;
  EXPECT_TRUE(daemon_->Get("/v1/functions/items/openapi.json").json()["paths"].empty());
}

TEST_F(OpenApiTest, BadRouteDeclarationsAreRejectedNamingTheField) {
  auto expect = [&](const json& routes, const std::string& field) {
    auto r = daemon_->CreateFunction("badroutes", image_, {{"routes", routes}});
    EXPECT_EQ(r.status, 400) << field << ": " << r.body;
    EXPECT_EQ(r.json()["error"].value("field", ""), field) << r.body;
  };
  json ok = {{"method", "GET"}, {"path", "/a"}};
  expect("GET /a", "routes");
  expect(json::array({ok, 5}), "routes[1]");
  expect(json::array({{{"path", "/a"}}}), "routes[0].method");
  expect(json::array({{{"method", "FETCH"}, {"path", "/a"}}}), "routes[0].method");
  expect(json::array({{{"method", "GET"}, {"path", "a"}}}), "routes[0].path");
  expect(json::array({{{"method", "GET"}, {"path", "/a?x=1"}}}), "routes[0].path");
  expect(json::array({{{"method", "GET"}, {"path", "/a/{"}}}), "routes[0].path");
  expect(json::array({ok, ok}), "routes[1]");
  expect(json::array({{{"method", "GET"}, {"path", "/a"}, {"colour", "red"}}}), "routes[0].colour");
  expect(json::array({{{"method", "GET"}, {"path", "/a"}, {"parameters", {{{"name", "x"}, {"in", "cookie"}}}}}}),
         "routes[0].parameters[0].in");
  expect(json::array({{{"method", "GET"}, {"path", "/a"}, {"parameters", {{{"name", "x"}, {"in", "path"}}}}}}),
         "routes[0].parameters[0].name");
  expect(json::array({{{"method", "GET"},
                       {"path", "/a/{x}"},
                       {"parameters", {{{"name", "x"}, {"in", "path"}, {"required", false}}}}}}),
         "routes[0].parameters[0].required");
  expect(json::array({{{"method", "POST"}, {"path", "/a"}, {"request", {{"schema", {{"$ref", "#/x"}}}}}}}),
         "routes[0].request.schema.$ref");
  expect(json::array({{{"method", "GET"}, {"path", "/a"}, {"responses", {{"200", {{"schema", {{"type", "thing"}}}}}}}}}),
         "routes[0].responses.200.schema.type");
  expect(json::array({{{"method", "GET"},
                       {"path", "/a"},
                       {"responses", {{"200", {{"schema", {{"type", "object"}, {"properties", {{"n", {{"type", "array"}}}}}}}}}}}}}),
         "routes[0].responses.200.schema.properties.n.items");
  expect(json::array({{{"method", "GET"}, {"path", "/a"}, {"responses", {{"20", json::object()}}}}}),
         "routes[0].responses.20");
  expect(json::array({{{"method", "GET"}, {"path", "/a"}, {"responses", {{"200", {{"content_type", "json"}}}}}}}),
         "routes[0].responses.200.content_type");
  // Nothing was created by the rejected definitions.
  EXPECT_EQ(daemon_->Get("/v1/functions/badroutes").status, 404);
}

}  // namespace
}  // namespace berth::testing
