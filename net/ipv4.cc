#include "net/ipv4.h"

#include <charconv>

namespace berth::net {

std::string FormatIpv4Address(uint32_t a) {
  return std::to_string(a >> 24) + "." + std::to_string((a >> 16) & 255) + "." +
         std::to_string((a >> 8) & 255) + "." + std::to_string(a & 255);
}

std::string Cidr::ToString() const { return FormatIpv4Address(network) + "/" + std::to_string(prefix); }

Result<uint32_t> ParseIpv4Address(const std::string& field, std::string_view text) {
  auto bad = [&] {
    return Status::InvalidArgument(
        field, field + " must be an IPv4 address like 203.0.113.7, got '" + std::string(text) + "'");
  };
  uint32_t out = 0;
  std::string_view rest = text;
  for (int i = 0; i < 4; ++i) {
    unsigned value = 0;
    auto [ptr, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), value);
    const size_t digits = static_cast<size_t>(ptr - rest.data());
    if (ec != std::errc() || digits == 0 || digits > 3 || value > 255 || (digits > 1 && rest[0] == '0')) {
      return bad();
    }
    out = (out << 8) | value;
    rest.remove_prefix(digits);
    if (i < 3) {
      if (rest.empty() || rest.front() != '.') return bad();
      rest.remove_prefix(1);
    }
  }
  if (!rest.empty()) return bad();
  return out;
}

Result<Cidr> ParseCidr(const std::string& field, std::string_view text) {
  const size_t slash = text.find('/');
  Cidr c;
  if (slash != std::string_view::npos) {
    const std::string_view len = text.substr(slash + 1);
    auto [ptr, ec] = std::from_chars(len.data(), len.data() + len.size(), c.prefix);
    if (len.empty() || ec != std::errc() || ptr != len.data() + len.size() || c.prefix < 0 ||
        c.prefix > 32 || (len.size() > 1 && len[0] == '0')) {
      return Status::InvalidArgument(
          field, field + " must be a CIDR block like 203.0.113.0/24, got '" + std::string(text) + "'");
    }
  }
  auto address = ParseIpv4Address(field, text.substr(0, slash));
  if (!address.ok()) {
    return Status::InvalidArgument(
        field, field + " must be a CIDR block like 203.0.113.0/24, got '" + std::string(text) + "'");
  }
  c.network = *address & c.mask();
  if (c.network != *address) {
    return Status::InvalidArgument(field, field + " '" + std::string(text) +
                                              "' has host bits set; did you mean " + c.ToString() + "?");
  }
  return c;
}

}  // namespace berth::net
