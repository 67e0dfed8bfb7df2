// IPv4 addresses and CIDR blocks, as net/ reasons about them (allocation,
// overlap, policy ranges). Host byte order throughout.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"

namespace berth::net {

struct Cidr {
  uint32_t network = 0;  // host bits are always zero
  int prefix = 32;       // 0..32

  uint32_t mask() const { return prefix == 0 ? 0 : 0xFFFFFFFFu << (32 - prefix); }
  uint32_t first() const { return network; }
  uint32_t last() const { return network | ~mask(); }
  uint64_t size() const { return uint64_t{1} << (32 - prefix); }
  bool Contains(uint32_t address) const { return (address & mask()) == network; }
  bool Contains(const Cidr& other) const { return other.prefix >= prefix && Contains(other.network); }
  bool Overlaps(const Cidr& other) const { return Contains(other) || other.Contains(*this); }
  std::string ToString() const;  // "10.240.3.0/24"
  friend bool operator==(const Cidr&, const Cidr&) = default;
  friend auto operator<=>(const Cidr&, const Cidr&) = default;
};

// "a.b.c.d" (no leading zeros, each 0..255). InvalidArgument naming `field`.
Result<uint32_t> ParseIpv4Address(const std::string& field, std::string_view text);
std::string FormatIpv4Address(uint32_t address);

// "a.b.c.d/len", or "a.b.c.d" meaning /32. Host bits must be zero (so a typo
// like 10.0.0.1/8 is an error, not silently 10.0.0.0/8).
Result<Cidr> ParseCidr(const std::string& field, std::string_view text);

}  // namespace berth::net
