#include "hypervisor/nwfilter_xml.h"

#include <algorithm>
#include <charconv>
#include <exception>

#include <pugixml.hpp>

#include "hypervisor/network_xml.h"

namespace berth::hv {

namespace xml_internal {
std::string PrettyPrint(const pugi::xml_node& root);  // network_xml.cc
}  // namespace xml_internal

namespace {

// Priorities of the rule groups; see the table in nwfilter_xml.h.
constexpr int kDhcpOutPriority = 100;
constexpr int kDhcpInPriority = 101;
constexpr int kDnsUdpPriority = 110;
constexpr int kDnsTcpPriority = 111;
constexpr int kHostAnswerPriority = 150;
constexpr int kGatewayDropPriority = 200;
constexpr int kAllowBasePriority = 300;
constexpr int kSubnetPriority = 600;
constexpr int kDenyBasePriority = 700;
constexpr int kEgressPriority = 900;
constexpr int kFinalDropPriority = 1000;
constexpr size_t kMaxAllowRules = kSubnetPriority - kAllowBasePriority;  // 300
constexpr size_t kMaxDenyRanges = kEgressPriority - kDenyBasePriority;   // 200

struct Cidr {
  uint32_t network = 0;
  int prefix = 32;
};

Result<Cidr> ParseCidr(const std::string& field, const std::string& text) {
  const size_t slash = text.find('/');
  Cidr c;
  if (slash != std::string::npos) {
    const std::string_view len(text.data() + slash + 1, text.size() - slash - 1);
    auto [ptr, ec] = std::from_chars(len.data(), len.data() + len.size(), c.prefix);
    if (len.empty() || ec != std::errc() || ptr != len.data() + len.size() || c.prefix < 0 ||
        c.prefix > 32) {
      return Status::InvalidArgument(field, field + " must look like 203.0.113.0/24, got '" + text + "'");
    }
  }
  BERTH_ASSIGN_OR_RETURN(uint32_t address,
                         ParseIpv4(field, std::string_view(text).substr(0, slash)));
  if ((address & ~PrefixMask(c.prefix)) != 0) {
    return Status::InvalidArgument(
        field, field + " '" + text + "' has host bits set; did you mean " +
                   FormatIpv4(address & PrefixMask(c.prefix)) + "/" + std::to_string(c.prefix) + "?");
  }
  c.network = address;
  return c;
}

bool IsNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '.' || c == '-';
}

bool IsCanonicalUuid(std::string_view s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    const bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
    if (dash ? c != '-' : !hex) return false;
  }
  return true;
}

void SetAttr(pugi::xml_node node, const char* name, const std::string& value) {
  node.append_attribute(name).set_value(value.c_str());
}

pugi::xml_node AddRule(pugi::xml_node filter, const char* action, const char* direction,
                       int priority, bool statematch = true) {
  pugi::xml_node rule = filter.append_child("rule");
  SetAttr(rule, "action", action);
  SetAttr(rule, "direction", direction);
  SetAttr(rule, "priority", std::to_string(priority));
  if (!statematch) SetAttr(rule, "statematch", "false");
  return rule;
}

void SetDestination(pugi::xml_node match, const Cidr& c) {
  if (c.prefix == 0) return;  // 0.0.0.0/0: any destination
  SetAttr(match, "dstipaddr", FormatIpv4(c.network));
  if (c.prefix != 32) SetAttr(match, "dstipmask", std::to_string(c.prefix));
}

void SetPorts(pugi::xml_node match, uint16_t start, uint16_t end) {
  if (start == 0) return;
  SetAttr(match, "dstportstart", std::to_string(start));
  if (end != 0 && end != start) SetAttr(match, "dstportend", std::to_string(end));
}

}  // namespace

Status ValidateNwFilterSpec(const NwFilterSpec& spec) {
  if (spec.name.empty() || spec.name.size() > 64 ||
      !std::all_of(spec.name.begin(), spec.name.end(), IsNameChar)) {
    return Status::InvalidArgument(
        "name", "name is required, at most 64 letters, digits, '_', '.' and '-'");
  }
  if (spec.name == kCleanTrafficFilter) {
    return Status::InvalidArgument("name", "name must not be one of libvirt's stock filters");
  }
  if (!spec.uuid.empty() && !IsCanonicalUuid(spec.uuid)) {
    return Status::InvalidArgument("uuid", "uuid must be empty or xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx");
  }
  BERTH_ASSIGN_OR_RETURN(uint32_t gateway, ParseIpv4("gateway_ip", spec.gateway_ip));
  BERTH_ASSIGN_OR_RETURN(Cidr subnet, ParseCidr("subnet", spec.subnet));
  if (subnet.prefix < 8 || subnet.prefix > 30) {
    return Status::InvalidArgument("subnet", "subnet must be a /8 to /30, got '" + spec.subnet + "'");
  }
  if ((gateway & PrefixMask(subnet.prefix)) != subnet.network) {
    return Status::InvalidArgument("gateway_ip", "gateway_ip " + spec.gateway_ip +
                                                     " is outside subnet " + spec.subnet);
  }
  if (spec.allow.size() > kMaxAllowRules) {
    return Status::InvalidArgument("allow", "at most " + std::to_string(kMaxAllowRules) +
                                                " allow rules are supported");
  }
  for (size_t i = 0; i < spec.allow.size(); ++i) {
    const NwFilterAllowRule& r = spec.allow[i];
    const std::string base = "allow[" + std::to_string(i) + "]";
    BERTH_RETURN_IF_ERROR(ParseCidr(base + ".cidr", r.cidr).status());
    if (r.port_start == 0 && r.port_end != 0) {
      return Status::InvalidArgument(base + ".port_start", base + ".port_start is required with port_end");
    }
    if (r.port_end != 0 && r.port_end < r.port_start) {
      return Status::InvalidArgument(base + ".port_end", base + ".port_end " +
                                                             std::to_string(r.port_end) +
                                                             " is below port_start " +
                                                             std::to_string(r.port_start));
    }
  }
  if (spec.deny.size() > kMaxDenyRanges) {
    return Status::InvalidArgument("deny", "at most " + std::to_string(kMaxDenyRanges) +
                                               " deny ranges are supported");
  }
  for (size_t i = 0; i < spec.deny.size(); ++i) {
    BERTH_RETURN_IF_ERROR(ParseCidr("deny[" + std::to_string(i) + "]", spec.deny[i]).status());
  }
  return Status::Ok();
}

Result<std::string> WriteNwFilterXml(const NwFilterSpec& spec) {
  BERTH_RETURN_IF_ERROR(ValidateNwFilterSpec(spec));
  try {
    const Cidr gateway{*ParseIpv4("gateway_ip", spec.gateway_ip), 32};
    const Cidr subnet = *ParseCidr("subnet", spec.subnet);
    pugi::xml_document doc;
    pugi::xml_node filter = doc.append_child("filter");
    SetAttr(filter, "name", spec.name);
    SetAttr(filter, "chain", "root");
    if (!spec.uuid.empty()) {
      std::string uuid = spec.uuid;
      std::transform(uuid.begin(), uuid.end(), uuid.begin(),
                     [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      filter.append_child("uuid").text().set(uuid.c_str());
    }
    SetAttr(filter.append_child("filterref"), "filter", kCleanTrafficFilter);

    // DHCP: the client talks from port 68 to 67, first by broadcast (so any
    // destination), answers come from the gateway's dnsmasq.
    pugi::xml_node dhcp_out = AddRule(filter, "accept", "out", kDhcpOutPriority, false).append_child("udp");
    SetAttr(dhcp_out, "srcportstart", "68");
    SetAttr(dhcp_out, "dstportstart", "67");
    pugi::xml_node dhcp_in = AddRule(filter, "accept", "in", kDhcpInPriority, false).append_child("udp");
    SetAttr(dhcp_in, "srcportstart", "67");
    SetAttr(dhcp_in, "dstportstart", "68");
    if (spec.allow_gateway_dns) {
      pugi::xml_node dns_udp = AddRule(filter, "accept", "out", kDnsUdpPriority).append_child("udp");
      SetDestination(dns_udp, gateway);
      SetAttr(dns_udp, "dstportstart", "53");
      pugi::xml_node dns_tcp = AddRule(filter, "accept", "out", kDnsTcpPriority).append_child("tcp");
      SetDestination(dns_tcp, gateway);
      SetAttr(dns_tcp, "dstportstart", "53");
    }
    if (spec.answer_host_connections) {
      // Explicit state, no libvirt statematch: only packets of a connection
      // conntrack already saw both ways (the host opened it).
      pugi::xml_node answer = AddRule(filter, "accept", "out", kHostAnswerPriority, false).append_child("tcp");
      SetDestination(answer, gateway);
      SetAttr(answer, "state", "ESTABLISHED");
    }
    SetDestination(AddRule(filter, "drop", "out", kGatewayDropPriority).append_child("all"), gateway);

    int priority = kAllowBasePriority;
    for (const NwFilterAllowRule& r : spec.allow) {
      const Cidr dst = *ParseCidr("cidr", r.cidr);
      std::vector<const char*> protocols;
      if (r.protocol == FilterProtocol::kTcp) {
        protocols = {"tcp"};
      } else if (r.protocol == FilterProtocol::kUdp) {
        protocols = {"udp"};
      } else if (r.port_start != 0) {
        protocols = {"tcp", "udp"};  // "any" with a port means both port protocols
      } else {
        protocols = {"all"};
      }
      for (const char* proto : protocols) {
        pugi::xml_node match = AddRule(filter, "accept", "out", priority).append_child(proto);
        SetDestination(match, dst);
        SetPorts(match, r.port_start, r.port_end);
      }
      ++priority;
    }
    // Two rules, not one `inout` rule: libvirt reads the addresses of an
    // inout rule from the guest's side in both directions, so dstipaddr
    // there would match every packet the guest sends (seen in iptables -S).
    SetDestination(AddRule(filter, "accept", "out", kSubnetPriority).append_child("all"), subnet);
    pugi::xml_node from_subnet = AddRule(filter, "accept", "in", kSubnetPriority + 1).append_child("all");
    SetAttr(from_subnet, "srcipaddr", FormatIpv4(subnet.network));
    SetAttr(from_subnet, "srcipmask", std::to_string(subnet.prefix));
    priority = kDenyBasePriority;
    for (const std::string& d : spec.deny) {
      SetDestination(AddRule(filter, "drop", "out", priority++).append_child("all"),
                     *ParseCidr("deny", d));
    }
    if (spec.mode == NwFilterMode::kEgress) {
      AddRule(filter, "accept", "out", kEgressPriority).append_child("all");
    }
    AddRule(filter, "drop", "inout", kFinalDropPriority).append_child("all");
    return xml_internal::PrettyPrint(filter);
  } catch (const std::exception& e) {  // only std::bad_alloc is possible
    return Status::Internal(std::string("building nwfilter XML: ") + e.what());
  }
}

namespace {
Status LoadFilter(pugi::xml_document& doc, const std::string& xml) {
  pugi::xml_parse_result r =
      doc.load_buffer(xml.data(), xml.size(), pugi::parse_default, pugi::encoding_utf8);
  if (!r) {
    return Status::InvalidArgument("nwfilter_xml",
                                   std::string("not well-formed XML: ") + r.description());
  }
  if (std::string_view(doc.document_element().name()) != "filter") {
    return Status::InvalidArgument("nwfilter_xml", "root element is not <filter>");
  }
  return Status::Ok();
}
}  // namespace

Result<NwFilterIdentity> ParseNwFilterIdentity(const std::string& xml) {
  pugi::xml_document doc;
  BERTH_RETURN_IF_ERROR(LoadFilter(doc, xml));
  const pugi::xml_node filter = doc.document_element();
  NwFilterIdentity id{filter.attribute("name").value(), filter.child_value("uuid")};
  if (id.name.empty()) return Status::InvalidArgument("nwfilter_xml", "<filter> has no name");
  return id;
}

Result<std::string> SetNwFilterUuid(const std::string& xml, const std::string& uuid) {
  if (!IsCanonicalUuid(uuid)) return Status::InvalidArgument("uuid", "not a uuid: '" + uuid + "'");
  try {
    pugi::xml_document doc;
    BERTH_RETURN_IF_ERROR(LoadFilter(doc, xml));
    pugi::xml_node filter = doc.document_element();
    pugi::xml_node node = filter.child("uuid");
    if (!node) node = filter.prepend_child("uuid");
    node.text().set(uuid.c_str());
    return xml_internal::PrettyPrint(filter);
  } catch (const std::exception& e) {
    return Status::Internal(std::string("editing nwfilter XML: ") + e.what());
  }
}

}  // namespace berth::hv
