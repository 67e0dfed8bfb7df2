// Tenants and tokens through real HTTP: every request but /v1/health needs a
// bearer token; a tenant sees and touches only its own images, functions and
// executions (another tenant's are 404, never 403); tokens can be created,
// listed (never with their secret) and revoked.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "tests/integration/support/harness.h"

namespace berth::testing {
namespace {

using nlohmann::json;

void Expect401(const HttpResult& r, const std::string& what) {
  EXPECT_EQ(r.status, 401) << what << ": " << r.body;
  json j = r.json();
  ASSERT_TRUE(j.is_object() && j.contains("error")) << what << ": " << r.body;
  EXPECT_EQ(j["error"]["code"], "UNAUTHENTICATED") << what;
}

void Expect404(const HttpResult& r, const std::string& what) {
  EXPECT_EQ(r.status, 404) << what << ": " << r.body;
  EXPECT_TRUE(r.json().contains("error")) << what << ": " << r.body;
}

TEST(TenancyTest, TenantsSeeAndTouchOnlyTheirOwnObjects) {
  BerthdProcess daemon;
  ASSERT_TRUE(daemon.running()) << daemon.log();

  // The admin token file: 0600, in the data dir, and its secret never in the log.
  struct stat st {};
  ASSERT_EQ(stat((daemon.data_dir() + "/admin.token").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(daemon.admin_token().rfind("brt_", 0), 0u) << daemon.admin_token();
  EXPECT_EQ(daemon.log().find(daemon.admin_token()), std::string::npos) << "the token was logged";
  EXPECT_NE(daemon.log().find(daemon.data_dir() + "/admin.token"), std::string::npos) << daemon.log();

  // Health needs no token; everything else does.
  EXPECT_EQ(daemon.CallAs("", "GET", "/v1/health").status, 200);
  Expect401(daemon.CallAs("", "GET", "/v1/functions"), "no Authorization header");
  Expect401(daemon.CallAs("", "GET", "/v1/openapi.json"), "openapi without a token");
  Expect401(daemon.CallAs("brt_0000", "GET", "/v1/functions"), "unknown token");
  Expect401(daemon.CallAs("two words", "GET", "/v1/functions"), "malformed bearer");
  std::string basic = Shell("curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Basic YTpi' " +
                            daemon.base_url() + "/v1/functions");
  EXPECT_EQ(basic, "401") << "Basic instead of Bearer";
  Expect401(daemon.CallAs("", "POST", "/v1/images?name=x", "bytes", "application/octet-stream"),
            "upload without a token");

  // Tenants A and B, each with a token.
  auto ca = daemon.Post("/v1/tokens", json{{"tenant", "tenant-a"}, {"name", "a"}}.dump());
  ASSERT_EQ(ca.status, 201) << ca.body;
  const std::string ta = ca.json()["token"], ta_id = ca.json()["id"];
  EXPECT_EQ(ca.json()["tenant"], "tenant-a");
  const std::string tb = daemon.CreateToken("tenant-b", "b");
  ASSERT_NE(ta, tb);
  // Only admins make tokens.
  EXPECT_EQ(daemon.CallAs(tb, "POST", "/v1/tokens", json{{"tenant", "tenant-b"}}.dump()).status, 403);

  // A uploads an image, registers a function and invokes it once.
  const std::string image = daemon.UploadBusybox(ta);
  auto created = daemon.CreateFunctionAs(ta, "hello", image, {{"entrypoint", {"echo", "hi from a"}}});
  ASSERT_EQ(created.status, 201) << created.body;
  EXPECT_EQ(created.json()["tenant"], "tenant-a");
  auto inv = daemon.CallAs(ta, "POST", "/v1/functions/hello/invoke", "{}");
  ASSERT_EQ(inv.status, 200) << inv.body;
  EXPECT_EQ(inv.json()["stdout"], "hi from a\n");
  const std::string ex = inv.json()["execution_id"];
  EXPECT_EQ(inv.json()["tenant"], "tenant-a");

  // B sees none of it and can touch none of it.
  auto fl = daemon.CallAs(tb, "GET", "/v1/functions");
  ASSERT_EQ(fl.status, 200);
  EXPECT_TRUE(fl.json()["functions"].empty()) << fl.body;
  auto il = daemon.CallAs(tb, "GET", "/v1/images");
  ASSERT_EQ(il.status, 200);
  EXPECT_TRUE(il.json()["images"].empty()) << il.body;
  auto el = daemon.CallAs(tb, "GET", "/v1/executions");
  ASSERT_EQ(el.status, 200);
  EXPECT_TRUE(el.json()["executions"].empty()) << el.body;
  Expect404(daemon.CallAs(tb, "GET", "/v1/functions/hello"), "B gets A's function");
  Expect404(daemon.CallAs(tb, "POST", "/v1/functions/hello/invoke", "{}"), "B invokes A's function");
  Expect404(daemon.CallAs(tb, "PUT", "/v1/functions/hello",
                          json{{"image", image}, {"entrypoint", {"/bin/true"}}}.dump()),
            "B updates A's function");
  Expect404(daemon.CallAs(tb, "DELETE", "/v1/functions/hello"), "B deletes A's function");
  Expect404(daemon.CallAs(tb, "GET", "/v1/executions/" + ex), "B reads A's execution");
  Expect404(daemon.CallAs(tb, "GET", "/v1/images/" + image), "B inspects A's image");
  Expect404(daemon.CallAs(tb, "DELETE", "/v1/images/" + image), "B deletes A's image");
  // The admin acts within its own tenant ("default"): A's objects are not there either.
  Expect404(daemon.Get("/v1/functions/hello"), "admin gets A's function");

  // A's things are intact.
  auto fa = daemon.CallAs(ta, "GET", "/v1/functions/hello");
  ASSERT_EQ(fa.status, 200) << fa.body;
  EXPECT_EQ(fa.json()["version"], 1);
  EXPECT_EQ(daemon.CallAs(ta, "GET", "/v1/executions/" + ex).status, 200);

  // B uploads the same bytes: same id, its own record, one file.
  EXPECT_EQ(daemon.UploadBusybox(tb), image);
  EXPECT_EQ(daemon.CallAs(tb, "GET", "/v1/images/" + image).status, 200);
  // Names are per tenant: B may have its own "hello".
  EXPECT_EQ(daemon.CreateFunctionAs(tb, "hello", image, json::object()).status, 201);
  EXPECT_EQ(daemon.CallAs(tb, "DELETE", "/v1/functions/hello").status, 200);
  EXPECT_EQ(daemon.CallAs(ta, "GET", "/v1/functions/hello").status, 200) << "A's hello survives B's delete";
  // B deleting its record leaves A's record and the stored file alone.
  EXPECT_EQ(daemon.CallAs(tb, "DELETE", "/v1/images/" + image).status, 200);
  Expect404(daemon.CallAs(tb, "GET", "/v1/images/" + image), "B's deleted record");
  EXPECT_EQ(daemon.CallAs(ta, "GET", "/v1/images/" + image).status, 200);
  int code = 0;
  Shell("ls " + daemon.data_dir() + "/images/" + image + ".* >/dev/null 2>&1", &code);
  EXPECT_EQ(code, 0) << "the shared image file was removed";

  // Token lists: never a secret or hash; B sees only B's, the admin all.
  auto lb = daemon.CallAs(tb, "GET", "/v1/tokens");
  ASSERT_EQ(lb.status, 200) << lb.body;
  ASSERT_EQ(lb.json()["tokens"].size(), 1u) << lb.body;
  EXPECT_EQ(lb.json()["tokens"][0]["tenant"], "tenant-b");
  auto la = daemon.Get("/v1/tokens");
  ASSERT_EQ(la.status, 200);
  EXPECT_EQ(la.json()["tokens"].size(), 3u) << la.body;
  for (const auto& body : {lb.body, la.body}) {
    EXPECT_EQ(body.find("brt_"), std::string::npos) << body;
    EXPECT_EQ(body.find("sha256"), std::string::npos) << body;
  }
  // B cannot revoke A's token; the admin can revoke B's, which then gets 401.
  Expect404(daemon.CallAs(tb, "DELETE", "/v1/tokens/" + ta_id), "B revokes A's token");
  EXPECT_EQ(daemon.CallAs(ta, "GET", "/v1/functions").status, 200);
  std::string tb_id = lb.json()["tokens"][0]["id"];
  auto rv = daemon.Call("DELETE", "/v1/tokens/" + tb_id);
  ASSERT_EQ(rv.status, 200) << rv.body;
  EXPECT_EQ(rv.json()["revoked"], true);
  Expect401(daemon.CallAs(tb, "GET", "/v1/functions"), "revoked token");
  // A revokes its own token.
  EXPECT_EQ(daemon.CallAs(ta, "DELETE", "/v1/tokens/" + ta_id).status, 200);
  Expect401(daemon.CallAs(ta, "GET", "/v1/functions"), "self-revoked token");

  EXPECT_EQ(WaitForTeardown(daemon, ex), "");
}

// The admin token survives a restart: the file is not rewritten and the
// token still works.
TEST(TenancyTest, AdminTokenIsKeptAcrossRestarts) {
  BerthdProcess daemon;
  ASSERT_TRUE(daemon.running()) << daemon.log();
  const std::string first = daemon.admin_token();
  daemon.Stop();
  ASSERT_TRUE(daemon.Start()) << daemon.log();
  EXPECT_EQ(daemon.admin_token(), first);
  EXPECT_EQ(daemon.Get("/v1/functions").status, 200);
}

}  // namespace
}  // namespace berth::testing
