#include "manager/auth.h"

#include <spdlog/spdlog.h>

#include "common/ids.h"
#include "common/sha256.h"

namespace berth::manager {

std::string NewTokenSecret() { return "brt_" + RandomHex(40); }

Result<Principal> Auth::Authenticate(const std::string& bearer) {
  if (bearer.empty()) return Status::Unauthenticated("missing bearer token");
  auto token = store_->FindTokenBySha256(Sha256::HexOf(bearer));
  if (!token.ok()) {
    if (token.status().code() == Code::kNotFound) return Status::Unauthenticated("unknown token");
    return token.status();
  }
  if (token->revoked_ms) return Status::Unauthenticated("token has been revoked");
  return Principal{token->tenant, token->id, token->admin};
}

Result<CreatedToken> Auth::Insert(const std::string& tenant, const std::string& name, bool admin,
                                  std::string secret) {
  int64_t now = env_->NowUnixMs();
  BERTH_RETURN_IF_ERROR(store_->PutTenant(tenant, now));
  CreatedToken out;
  out.secret = std::move(secret);
  out.record.id = RandomHex(12);
  out.record.tenant = tenant;
  out.record.name = name;
  out.record.sha256 = Sha256::HexOf(out.secret);
  out.record.admin = admin;
  out.record.created_ms = now;
  BERTH_RETURN_IF_ERROR(store_->InsertToken(out.record));
  return out;
}

Result<CreatedToken> Auth::CreateToken(const Principal& caller, const std::string& tenant, const std::string& name,
                                       bool admin) {
  if (!caller.admin) return Status::PermissionDenied("only an admin token may create tokens");
  BERTH_RETURN_IF_ERROR(ValidateTenantName(tenant));
  if (name.size() > 128) return Status::InvalidArgument("name", "must be at most 128 characters");
  BERTH_ASSIGN_OR_RETURN(auto created, Insert(tenant, name, admin, NewTokenSecret()));
  spdlog::info("token {} created for tenant {} by token {}", created.record.id, tenant, caller.token_id);
  return created;
}

Result<std::vector<TokenRecord>> Auth::ListTokens(const Principal& caller) {
  return store_->ListTokens(caller.admin ? "" : caller.tenant);
}

Result<TokenRecord> Auth::RevokeToken(const Principal& caller, const std::string& id) {
  auto token = store_->GetToken(id);
  if (!token.ok()) return token.status();
  if (!caller.admin && token->tenant != caller.tenant) {
    return Status::NotFound("token '" + id + "' does not exist");
  }
  BERTH_RETURN_IF_ERROR(store_->RevokeToken(id, env_->NowUnixMs()));
  spdlog::info("token {} of tenant {} revoked by token {}", id, token->tenant, caller.token_id);
  return store_->GetToken(id);
}

Result<bool> Auth::EnsureAdminToken(const std::string& path) {
  BERTH_ASSIGN_OR_RETURN(int64_t count, store_->TokenCount());
  if (count > 0) return false;
  // The file first: a crash in between leaves no token, and the next start
  // writes a new file.
  std::string secret = NewTokenSecret();
  BERTH_RETURN_IF_ERROR(env_->WriteFileAtomic(path, secret + "\n", 0600));
  BERTH_RETURN_IF_ERROR(Insert(kDefaultTenant, "admin", true, std::move(secret)).status());
  return true;
}

}  // namespace berth::manager
