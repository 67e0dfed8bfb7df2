#include "hypervisor/network_xml.h"

#include <algorithm>
#include <charconv>
#include <exception>
#include <set>

#include <pugixml.hpp>

namespace berth::hv {

// Shared with nwfilter_xml.cc (declared there too; both are private to
// hypervisor/): prints an element tree the way libvirt does -- 2-space
// indentation, single-quoted attributes, `<empty/>`, no declaration. Only
// elements and attributes; text only as the sole child of an element.
namespace xml_internal {

void AppendEscaped(std::string& out, std::string_view s) {
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '\'': out += "&apos;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
}

void AppendElement(std::string& out, const pugi::xml_node& node, int depth) {
  if (node.type() != pugi::node_element) return;
  const std::string indent(static_cast<size_t>(depth) * 2, ' ');
  out += indent + '<' + node.name();
  for (const pugi::xml_attribute& attr : node.attributes()) {
    out += ' ';
    out += attr.name();
    out += "='";
    AppendEscaped(out, attr.value());
    out += '\'';
  }
  const pugi::xml_node first = node.first_child();
  if (!first) {
    out += "/>\n";
    return;
  }
  if (first.type() == pugi::node_pcdata && !first.next_sibling()) {
    out += '>';
    AppendEscaped(out, first.value());
    out += "</" + std::string(node.name()) + ">\n";
    return;
  }
  out += ">\n";
  for (const pugi::xml_node& child : node.children()) AppendElement(out, child, depth + 1);
  out += indent + "</" + node.name() + ">\n";
}

std::string PrettyPrint(const pugi::xml_node& root) {
  std::string out;
  AppendElement(out, root, 0);
  return out;
}

}  // namespace xml_internal

namespace {

constexpr size_t kMaxNetworkNameLength = 64;
constexpr size_t kMaxBridgeNameLength = 15;  // IFNAMSIZ - 1

bool IsNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '.' || c == '-';
}

bool IsSimpleName(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), IsNameChar);
}

bool IsHex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

Status CheckMac(const std::string& field, const std::string& mac) {
  bool ok = mac.size() == 17;
  for (size_t i = 0; ok && i < mac.size(); ++i) ok = (i % 3 == 2) ? mac[i] == ':' : IsHex(mac[i]);
  if (!ok) {
    return Status::InvalidArgument(field, field + " must look like 52:54:00:ab:cd:ef, got '" + mac + "'");
  }
  if (std::stoi(mac.substr(0, 2), nullptr, 16) & 1) {
    return Status::InvalidArgument(field, field + " is a multicast address; a NIC needs unicast");
  }
  return Status::Ok();
}

// An address usable by a host inside subnet/prefix: not the network or the
// broadcast address.
Status CheckHostAddress(const std::string& field, uint32_t address, uint32_t network, int prefix) {
  const uint32_t mask = PrefixMask(prefix);
  if ((address & mask) != network) {
    return Status::InvalidArgument(field, field + " " + FormatIpv4(address) + " is outside " +
                                              FormatIpv4(network) + "/" + std::to_string(prefix));
  }
  if (address == network || address == (network | ~mask)) {
    return Status::InvalidArgument(
        field, field + " " + FormatIpv4(address) + " is the network or broadcast address");
  }
  return Status::Ok();
}

void SetAttr(pugi::xml_node node, const char* name, const std::string& value) {
  node.append_attribute(name).set_value(value.c_str());
}

}  // namespace

Result<uint32_t> ParseIpv4(const std::string& field, std::string_view text) {
  uint32_t out = 0;
  std::string_view rest = text;
  for (int i = 0; i < 4; ++i) {
    unsigned value = 0;
    const char* begin = rest.data();
    const char* end = rest.data() + rest.size();
    auto [ptr, ec] = std::from_chars(begin, end, value);
    const size_t digits = static_cast<size_t>(ptr - begin);
    // No signs, no leading zeros (they mean octal to inet_aton), 0..255.
    if (ec != std::errc() || digits == 0 || digits > 3 || value > 255 ||
        (digits > 1 && *begin == '0')) {
      return Status::InvalidArgument(field, field + " must be an IPv4 address like 10.240.0.1, got '" +
                                                std::string(text) + "'");
    }
    out = (out << 8) | value;
    rest.remove_prefix(digits);
    if (i < 3) {
      if (rest.empty() || rest.front() != '.') {
        return Status::InvalidArgument(
            field, field + " must be an IPv4 address like 10.240.0.1, got '" + std::string(text) + "'");
      }
      rest.remove_prefix(1);
    }
  }
  if (!rest.empty()) {
    return Status::InvalidArgument(field, field + " must be an IPv4 address like 10.240.0.1, got '" +
                                              std::string(text) + "'");
  }
  return out;
}

std::string FormatIpv4(uint32_t a) {
  return std::to_string(a >> 24) + "." + std::to_string((a >> 16) & 255) + "." +
         std::to_string((a >> 8) & 255) + "." + std::to_string(a & 255);
}

uint32_t PrefixMask(int prefix_length) {
  if (prefix_length <= 0) return 0;
  if (prefix_length >= 32) return 0xFFFFFFFFu;
  return 0xFFFFFFFFu << (32 - prefix_length);
}

Status ValidateNetworkSpec(const NetworkSpec& spec) {
  if (!IsSimpleName(spec.name) || spec.name.size() > kMaxNetworkNameLength) {
    return Status::InvalidArgument("name", "name is required, at most " +
                                               std::to_string(kMaxNetworkNameLength) +
                                               " characters of letters, digits, '_', '.' and '-'");
  }
  if (!IsSimpleName(spec.bridge) || spec.bridge.size() > kMaxBridgeNameLength) {
    return Status::InvalidArgument(
        "bridge", "bridge is required, at most 15 characters (a Linux interface name) of letters, "
                  "digits, '_', '.' and '-', got '" + spec.bridge + "'");
  }
  if (spec.prefix_length < 8 || spec.prefix_length > 30) {
    return Status::InvalidArgument("prefix_length", "prefix_length must be between 8 and 30, got " +
                                                        std::to_string(spec.prefix_length));
  }
  BERTH_ASSIGN_OR_RETURN(uint32_t gateway, ParseIpv4("gateway_ip", spec.gateway_ip));
  const uint32_t network = gateway & PrefixMask(spec.prefix_length);
  BERTH_RETURN_IF_ERROR(CheckHostAddress("gateway_ip", gateway, network, spec.prefix_length));

  if (spec.dhcp_start.empty() != spec.dhcp_end.empty()) {
    return Status::InvalidArgument(spec.dhcp_start.empty() ? "dhcp_start" : "dhcp_end",
                                   "dhcp_start and dhcp_end go together: set both or neither");
  }
  if (!spec.dhcp_start.empty()) {
    BERTH_ASSIGN_OR_RETURN(uint32_t start, ParseIpv4("dhcp_start", spec.dhcp_start));
    BERTH_ASSIGN_OR_RETURN(uint32_t end, ParseIpv4("dhcp_end", spec.dhcp_end));
    BERTH_RETURN_IF_ERROR(CheckHostAddress("dhcp_start", start, network, spec.prefix_length));
    BERTH_RETURN_IF_ERROR(CheckHostAddress("dhcp_end", end, network, spec.prefix_length));
    if (start > end) {
      return Status::InvalidArgument("dhcp_end", "dhcp_end " + spec.dhcp_end +
                                                     " comes before dhcp_start " + spec.dhcp_start);
    }
    if (gateway >= start && gateway <= end) {
      return Status::InvalidArgument(
          "dhcp_start", "the DHCP range " + spec.dhcp_start + "-" + spec.dhcp_end +
                            " contains the gateway " + spec.gateway_ip);
    }
  } else if (!spec.dhcp_hosts.empty()) {
    return Status::InvalidArgument("dhcp_hosts", "dhcp_hosts need a DHCP range (dhcp_start/dhcp_end)");
  }
  if (spec.dhcp_lease_minutes < 0 || spec.dhcp_lease_minutes > 35'791'394) {
    return Status::InvalidArgument("dhcp_lease_minutes", "dhcp_lease_minutes must be 0 (libvirt's default) to 35791394");
  }
  if (spec.dhcp_lease_minutes > 0 && spec.dhcp_start.empty()) {
    return Status::InvalidArgument("dhcp_lease_minutes", "dhcp_lease_minutes needs a DHCP range (dhcp_start/dhcp_end)");
  }
  std::set<std::string> macs;
  std::set<uint32_t> ips;
  for (size_t i = 0; i < spec.dhcp_hosts.size(); ++i) {
    const DhcpHost& h = spec.dhcp_hosts[i];
    const std::string base = "dhcp_hosts[" + std::to_string(i) + "]";
    BERTH_RETURN_IF_ERROR(CheckMac(base + ".mac", h.mac));
    BERTH_ASSIGN_OR_RETURN(uint32_t ip, ParseIpv4(base + ".ip", h.ip));
    BERTH_RETURN_IF_ERROR(CheckHostAddress(base + ".ip", ip, network, spec.prefix_length));
    if (ip == gateway) {
      return Status::InvalidArgument(base + ".ip", base + ".ip is the gateway address");
    }
    if (!h.name.empty() && (!IsSimpleName(h.name) || h.name.size() > 63)) {
      return Status::InvalidArgument(base + ".name",
                                     base + ".name may hold at most 63 letters, digits, '_', '.' and '-'");
    }
    std::string lower = h.mac;
    std::transform(lower.begin(), lower.end(), lower.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (!macs.insert(lower).second) {
      return Status::InvalidArgument(base + ".mac", base + ".mac " + h.mac + " is used by an earlier host");
    }
    if (!ips.insert(ip).second) {
      return Status::InvalidArgument(base + ".ip", base + ".ip " + h.ip + " is used by an earlier host");
    }
  }
  return Status::Ok();
}

namespace {
constexpr const char* kDnsmasqNamespace = "http://libvirt.org/schemas/network/dnsmasq/1.0";
}  // namespace

Result<std::string> WriteNetworkXml(const NetworkSpec& spec) {
  BERTH_RETURN_IF_ERROR(ValidateNetworkSpec(spec));
  try {
    pugi::xml_document doc;
    pugi::xml_node net = doc.append_child("network");
    if (!spec.dhcp_ping_check) SetAttr(net, "xmlns:dnsmasq", kDnsmasqNamespace);
    net.append_child("name").text().set(spec.name.c_str());
    if (spec.forward == NetworkForward::kNat) SetAttr(net.append_child("forward"), "mode", "nat");
    pugi::xml_node bridge = net.append_child("bridge");
    SetAttr(bridge, "name", spec.bridge);
    // One bridge per tenant, no loops possible: STP would only delay the
    // first packets of every new port by the forwarding delay.
    SetAttr(bridge, "stp", "off");
    SetAttr(bridge, "delay", "0");
    if (!spec.dns) SetAttr(net.append_child("dns"), "enable", "no");
    pugi::xml_node ip = net.append_child("ip");
    SetAttr(ip, "address", spec.gateway_ip);
    SetAttr(ip, "netmask", FormatIpv4(PrefixMask(spec.prefix_length)));
    if (!spec.dhcp_start.empty()) {
      pugi::xml_node dhcp = ip.append_child("dhcp");
      pugi::xml_node range = dhcp.append_child("range");
      SetAttr(range, "start", spec.dhcp_start);
      SetAttr(range, "end", spec.dhcp_end);
      if (spec.dhcp_lease_minutes > 0) {
        pugi::xml_node lease = range.append_child("lease");
        SetAttr(lease, "expiry", std::to_string(spec.dhcp_lease_minutes));
        SetAttr(lease, "unit", "minutes");
      }
      for (const DhcpHost& h : spec.dhcp_hosts) {
        pugi::xml_node host = dhcp.append_child("host");
        SetAttr(host, "mac", h.mac);
        if (!h.name.empty()) SetAttr(host, "name", h.name);
        SetAttr(host, "ip", h.ip);
      }
    }
    if (!spec.dhcp_ping_check) {
      SetAttr(net.append_child("dnsmasq:options").append_child("dnsmasq:option"), "value", "no-ping");
    }
    return xml_internal::PrettyPrint(net);
  } catch (const std::exception& e) {  // only std::bad_alloc is possible
    return Status::Internal(std::string("building network XML: ") + e.what());
  }
}

Result<NetworkSpec> ParseNetworkXml(const std::string& xml) {
  const std::string field = "network_xml";
  try {
    pugi::xml_document doc;
    pugi::xml_parse_result r =
        doc.load_buffer(xml.data(), xml.size(), pugi::parse_default, pugi::encoding_utf8);
    if (!r) {
      return Status::InvalidArgument(field, std::string("not well-formed XML: ") + r.description());
    }
    const pugi::xml_node net = doc.document_element();
    if (std::string_view(net.name()) != "network") {
      return Status::InvalidArgument(field, std::string("root element is <") + net.name() +
                                                ">, not <network>");
    }
    NetworkSpec spec;
    spec.name = net.child_value("name");
    spec.bridge = net.child("bridge").attribute("name").value();
    spec.forward = std::string_view(net.child("forward").attribute("mode").value()) == "nat"
                       ? NetworkForward::kNat
                       : NetworkForward::kNone;
    spec.dns = std::string_view(net.child("dns").attribute("enable").value()) != "no";
    for (const pugi::xml_node& opts : net.children()) {  // any prefix bound to the dnsmasq namespace
      const std::string_view name = opts.name();
      if (name.size() < 8 || name.substr(name.size() - 8) != ":options") continue;
      for (const pugi::xml_node& o : opts.children()) {
        if (std::string_view(o.attribute("value").value()) == "no-ping") spec.dhcp_ping_check = false;
      }
    }
    spec.prefix_length = 0;
    for (const pugi::xml_node& ip : net.children("ip")) {
      const std::string_view family = ip.attribute("family").value();
      if (!family.empty() && family != "ipv4") continue;
      spec.gateway_ip = ip.attribute("address").value();
      if (const pugi::xml_attribute prefix = ip.attribute("prefix")) {
        spec.prefix_length = prefix.as_int();
      } else if (const pugi::xml_attribute mask = ip.attribute("netmask")) {
        BERTH_ASSIGN_OR_RETURN(uint32_t m, ParseIpv4(field, mask.value()));
        int bits = 0;
        while (bits < 32 && (m & (0x80000000u >> bits))) ++bits;
        spec.prefix_length = bits;
      }
      const pugi::xml_node dhcp = ip.child("dhcp");
      spec.dhcp_start = dhcp.child("range").attribute("start").value();
      spec.dhcp_end = dhcp.child("range").attribute("end").value();
      if (const pugi::xml_node lease = dhcp.child("range").child("lease")) {
        const std::string_view unit = lease.attribute("unit").value();
        const long long expiry = lease.attribute("expiry").as_llong();
        // libvirt's default unit is minutes; 0 (infinite) has no minutes to give.
        const long long minutes = unit == "seconds" ? (expiry + 59) / 60 : unit == "hours" ? expiry * 60 : expiry;
        spec.dhcp_lease_minutes = static_cast<int>(std::min<long long>(minutes, 35'791'394));
      }
      for (const pugi::xml_node& h : dhcp.children("host")) {
        spec.dhcp_hosts.push_back(
            {h.attribute("mac").value(), h.attribute("ip").value(), h.attribute("name").value()});
      }
      break;
    }
    return spec;
  } catch (const std::exception& e) {
    return Status::Internal(std::string("parsing network XML: ") + e.what());
  }
}

}  // namespace berth::hv
