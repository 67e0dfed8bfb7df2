// Names of the libvirt objects berth creates for guest networking, and guest
// MAC addresses. Tenant and function names are hashed (sha256) into names,
// so any tenant string gives a short, safe libvirt name and bridge name.
#pragma once

#include <functional>
#include <string>

#include "net/network_policy.h"

namespace berth::net {

// Every berth network name starts with this (ListNetworks(kNetworkNamePrefix)).
inline constexpr const char* kNetworkNamePrefix = "berth-net-";
// Every berth nwfilter name starts with this (ListNwFilters(kNwFilterNamePrefix)).
inline constexpr const char* kNwFilterNamePrefix = "berth-fw-";

// The tenant's network on a node for `mode` (egress or isolated are separate
// networks): "berth-net-e-<10 hex>" / "berth-net-i-<10 hex>" of sha256(tenant).
// Empty for kNone (no network).
std::string TenantNetworkName(const std::string& tenant, NetworkMode mode);
// Its bridge: "bne-<10 hex>" / "bni-<10 hex>", 14 characters (Linux allows 15).
// Empty for kNone.
std::string TenantBridgeName(const std::string& tenant, NetworkMode mode);
// The per-function filter: "berth-fw-<16 hex of sha256(tenant NUL function)>".
std::string FunctionFilterName(const std::string& tenant, const std::string& function);

// A random unicast, locally administered-looking MAC in QEMU's 52:54:00
// range: "52:54:00:xx:xx:xx", lower case. `random_hex(n)` must return n
// random lowercase hex characters (common/ids.h RandomHex by default; tests
// pass a fixed source).
std::string RandomMac(const std::function<std::string(size_t)>& random_hex = {});

}  // namespace berth::net
