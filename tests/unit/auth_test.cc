// manager::Auth (what Service::Authenticate and the token routes delegate
// to) against a real SQLite store: token hashing, lookup, revocation, the
// admin token file; and api::Router's one authorization check.
#include "manager/auth.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <string>

#include <nlohmann/json.hpp>

#include "api/errors.h"
#include "api/http_server.h"
#include "api/router.h"
#include "common/env.h"
#include "common/sha256.h"

namespace berth::manager {
namespace {

class AuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/berth-auth-XXXXXX";
    const char* p = ::mkdtemp(tmpl);
    ASSERT_NE(p, nullptr);
    dir_ = p;
    auto s = Store::Open(dir_ + "/berth.db");
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(*s);
    auth_ = std::make_unique<Auth>(Env::Default(), store_.get());
  }
  void TearDown() override {
    auth_.reset();
    store_.reset();
    (void)Env::Default()->RemoveTree(dir_);
  }
  Principal Admin() {
    auto r = auth_->EnsureAdminToken(dir_ + "/admin.token");
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    auto secret = Env::Default()->ReadFile(dir_ + "/admin.token");
    EXPECT_TRUE(secret.ok());
    auto p = auth_->Authenticate(FirstLine(*secret));
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    return p.ok() ? *p : Principal{};
  }

  std::string dir_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Auth> auth_;
};

TEST_F(AuthTest, AdminTokenFileIsWrittenOnceWithMode0600) {
  const std::string path = dir_ + "/admin.token";
  auto created = auth_->EnsureAdminToken(path);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  EXPECT_TRUE(*created);
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  std::string secret = FirstLine(*Env::Default()->ReadFile(path));
  EXPECT_EQ(secret.rfind("brt_", 0), 0u) << secret;
  EXPECT_EQ(secret.size(), 44u);

  auto p = auth_->Authenticate(secret);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->tenant, kDefaultTenant);
  EXPECT_TRUE(p->admin);
  EXPECT_FALSE(p->token_id.empty());

  // Stored hashed, never in the clear.
  auto rec = store_->GetToken(p->token_id);
  ASSERT_TRUE(rec.ok());
  EXPECT_EQ(rec->sha256, Sha256::HexOf(secret));
  EXPECT_NE(rec->sha256, secret);

  // Tokens exist now: nothing is created or rewritten.
  auto again = auth_->EnsureAdminToken(path);
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(*again);
  EXPECT_EQ(FirstLine(*Env::Default()->ReadFile(path)), secret);
  EXPECT_EQ(*store_->TokenCount(), 1);
}

TEST_F(AuthTest, MissingUnknownAndRevokedAreUnauthenticated) {
  EXPECT_EQ(auth_->Authenticate("").status().code(), Code::kUnauthenticated);
  EXPECT_EQ(auth_->Authenticate("brt_nope").status().code(), Code::kUnauthenticated);
  Principal admin = Admin();
  auto t = auth_->CreateToken(admin, "acme", "ci");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  ASSERT_TRUE(auth_->Authenticate(t->secret).ok());
  ASSERT_TRUE(auth_->RevokeToken(admin, t->record.id).ok());
  auto after = auth_->Authenticate(t->secret);
  EXPECT_EQ(after.status().code(), Code::kUnauthenticated) << after.status().ToString();
  // A secret that differs in one character is another token.
  std::string near = t->secret;
  near.back() = near.back() == '0' ? '1' : '0';
  EXPECT_EQ(auth_->Authenticate(near).status().code(), Code::kUnauthenticated);
}

TEST_F(AuthTest, CreateTokenIsAdminOnlyAndMakesTheTenant) {
  Principal admin = Admin();
  auto t = auth_->CreateToken(admin, "acme", "ci");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->secret.rfind("brt_", 0), 0u);
  EXPECT_EQ(t->record.tenant, "acme");
  EXPECT_EQ(t->record.name, "ci");
  EXPECT_FALSE(t->record.admin);
  auto p = auth_->Authenticate(t->secret);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->tenant, "acme");
  EXPECT_FALSE(p->admin);
  EXPECT_EQ(p->token_id, t->record.id);

  auto denied = auth_->CreateToken(*p, "acme", "mine");
  EXPECT_EQ(denied.status().code(), Code::kPermissionDenied);
  auto bad = auth_->CreateToken(admin, "Not A Tenant", "");
  EXPECT_EQ(bad.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(bad.status().field(), "tenant");
  // Two tokens never share a secret.
  auto t2 = auth_->CreateToken(admin, "acme", "ci");
  ASSERT_TRUE(t2.ok());
  EXPECT_NE(t2->secret, t->secret);
  EXPECT_NE(t2->record.id, t->record.id);
}

TEST_F(AuthTest, ListAndRevokeAreScopedToTheTenant) {
  Principal admin = Admin();
  auto a = auth_->CreateToken(admin, "tenant-a", "a");
  auto b = auth_->CreateToken(admin, "tenant-b", "b");
  ASSERT_TRUE(a.ok() && b.ok());
  Principal pa = *auth_->Authenticate(a->secret);
  Principal pb = *auth_->Authenticate(b->secret);

  EXPECT_EQ(auth_->ListTokens(admin)->size(), 3u);
  auto la = auth_->ListTokens(pa);
  ASSERT_TRUE(la.ok());
  ASSERT_EQ(la->size(), 1u);
  EXPECT_EQ((*la)[0].id, a->record.id);

  // B cannot revoke A's token: it does not exist for B.
  EXPECT_EQ(auth_->RevokeToken(pb, a->record.id).status().code(), Code::kNotFound);
  EXPECT_TRUE(auth_->Authenticate(a->secret).ok());
  EXPECT_EQ(auth_->RevokeToken(pb, "nope").status().code(), Code::kNotFound);
  // A can revoke its own; the admin can revoke anyone's.
  auto ra = auth_->RevokeToken(pa, a->record.id);
  ASSERT_TRUE(ra.ok()) << ra.status().ToString();
  EXPECT_TRUE(ra->revoked_ms.has_value());
  ASSERT_TRUE(auth_->RevokeToken(admin, b->record.id).ok());
  EXPECT_FALSE(auth_->Authenticate(b->secret).ok());
  EXPECT_TRUE(auth_->Authenticate(FirstLine(*Env::Default()->ReadFile(dir_ + "/admin.token"))).ok());
}

}  // namespace
}  // namespace berth::manager

namespace berth::api {
namespace {

Router AuthRouter() {
  Router r;
  r.set_authenticator([](const std::string& bearer) -> Result<Caller> {
    if (bearer == "good") return Caller{"acme", "tok1", false};
    return Status::Unauthenticated("unknown token");
  });
  Route health{"GET", "/v1/health", "health", [](const HttpRequest&) { return HttpResponse{200, "{}"}; }};
  health.is_public = true;
  r.Add(std::move(health));
  r.Add({"GET", "/v1/who", "who", [](const HttpRequest& req) { return HttpResponse{200, req.caller.tenant}; }});
  return r;
}

HttpRequest Get(const std::string& path, const std::string& auth) {
  HttpRequest req{"GET", path, {}, {}, {}};
  req.authorization = auth;
  return req;
}

TEST(RouterAuthTest, BearerTokenParsing) {
  EXPECT_EQ(BearerToken("Bearer abc"), "abc");
  EXPECT_EQ(BearerToken("bearer abc"), "abc");
  EXPECT_EQ(BearerToken("BEARER  abc "), "abc");
  EXPECT_EQ(BearerToken("Bearer"), "");
  EXPECT_EQ(BearerToken("Bearer "), "");
  EXPECT_EQ(BearerToken("Basic YWJjOmRlZg=="), "");
  EXPECT_EQ(BearerToken("Bearer a b"), "");
  EXPECT_EQ(BearerToken("abc"), "");
}

TEST(RouterAuthTest, OneCheckBeforeEveryNonPublicHandler) {
  HttpServer server(AuthRouter(), HttpServerOptions{});
  EXPECT_EQ(server.Dispatch(Get("/v1/health", "")).status, 200) << "health is public";
  HttpResponse ok = server.Dispatch(Get("/v1/who", "Bearer good"));
  EXPECT_EQ(ok.status, 200);
  EXPECT_EQ(ok.body, "acme") << "the handler sees the caller";
  for (const char* auth : {"", "Bearer", "Bearer bad", "Token good", "good"}) {
    HttpResponse r = server.Dispatch(Get("/v1/who", auth));
    EXPECT_EQ(r.status, 401) << "'" << auth << "'";
    EXPECT_NE(r.body.find("UNAUTHENTICATED"), std::string::npos) << r.body;
  }
  // The built-in OpenAPI document is not public, and it says so.
  EXPECT_EQ(server.Dispatch(Get("/v1/openapi.json", "")).status, 401);
  HttpResponse doc = server.Dispatch(Get("/v1/openapi.json", "Bearer good"));
  ASSERT_EQ(doc.status, 200);
  auto j = nlohmann::json::parse(doc.body);
  EXPECT_EQ(j["components"]["securitySchemes"]["bearerAuth"]["scheme"], "bearer");
  EXPECT_TRUE(j["paths"]["/v1/health"]["get"]["security"].empty());
  EXPECT_TRUE(j["paths"]["/v1/who"]["get"]["responses"].contains("401"));
}

}  // namespace
}  // namespace berth::api
