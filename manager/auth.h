// Auth: API tokens and tenants on top of the Store. Tokens are random secrets
// ("brt_" + 40 hex characters); only their sha256 is stored, so the secret is
// shown once, when the token is created. Service delegates its token methods
// here (kept apart so it can be tested without libvirt). Thread-safe.
#pragma once

#include <string>
#include <vector>

#include "common/env.h"
#include "common/status.h"
#include "manager/store.h"
#include "manager/types.h"

namespace berth::manager {

// A new token: its record and its secret, which is shown only this once.
struct CreatedToken {
  TokenRecord record;
  std::string secret;
};

// Token secrets: "brt_" + 40 random lowercase hex characters.
std::string NewTokenSecret();
// Tenant names follow the function name rules (lowercase, digits, '-', '_'; field "tenant").
Status ValidateTenantName(const std::string& name);

class Auth {
 public:
  Auth(Env* env, Store* store) : env_(env), store_(store) {}

  // `bearer` is the secret from "Authorization: Bearer <secret>".
  // kUnauthenticated when it is empty, unknown or revoked.
  Result<Principal> Authenticate(const std::string& bearer);

  // Admin only (kPermissionDenied otherwise); creates the tenant if new.
  Result<CreatedToken> CreateToken(const Principal& caller, const std::string& tenant, const std::string& name,
                                   bool admin = false);
  // Admin: every token; others: their tenant's.
  Result<std::vector<TokenRecord>> ListTokens(const Principal& caller);
  // Admin: any token; others: their tenant's (another tenant's is NotFound).
  Result<TokenRecord> RevokeToken(const Principal& caller, const std::string& id);

  // If the store holds no token at all: writes a new admin secret (tenant
  // "default") to `path` (mode 0600, atomically), then records the token.
  // Returns true if it created one.
  Result<bool> EnsureAdminToken(const std::string& path);

 private:
  Result<CreatedToken> Insert(const std::string& tenant, const std::string& name, bool admin, std::string secret);

  Env* env_;
  Store* store_;
};

}  // namespace berth::manager
