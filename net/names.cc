#include "net/names.h"

#include "common/ids.h"
#include "common/sha256.h"

namespace berth::net {

namespace {
std::string ModeLetter(NetworkMode mode) { return mode == NetworkMode::kIsolated ? "i" : "e"; }
}  // namespace

std::string TenantNetworkName(const std::string& tenant, NetworkMode mode) {
  if (mode == NetworkMode::kNone) return {};
  return std::string(kNetworkNamePrefix) + ModeLetter(mode) + "-" + Sha256::HexOf(tenant).substr(0, 10);
}

std::string TenantBridgeName(const std::string& tenant, NetworkMode mode) {
  if (mode == NetworkMode::kNone) return {};
  return "bn" + ModeLetter(mode) + "-" + Sha256::HexOf(tenant).substr(0, 10);
}

std::string FunctionFilterName(const std::string& tenant, const std::string& function) {
  std::string key = tenant;
  key += '\0';  // ("a", "bc") and ("ab", "c") must differ
  key += function;
  return std::string(kNwFilterNamePrefix) + Sha256::HexOf(key).substr(0, 16);
}

std::string RandomMac(const std::function<std::string(size_t)>& random_hex) {
  std::string hex = random_hex ? random_hex(6) : RandomHex(6);
  hex.resize(6, '0');
  return "52:54:00:" + hex.substr(0, 2) + ":" + hex.substr(2, 2) + ":" + hex.substr(4, 2);
}

}  // namespace berth::net
