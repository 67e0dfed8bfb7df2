#include "hypervisor/domain_xml.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <exception>
#include <set>
#include <string_view>

#include <pugixml.hpp>

namespace berth::hv {
namespace {

// ---------------------------------------------------------------------------
// Serializer. The tree is built with pugixml; it is printed here rather than
// with xml_document::save because pugixml prints `<acpi />`, leaves '>' and
// '"' unescaped in some contexts and turns control characters into character
// references XML 1.0 forbids. Printing it ourselves gives byte-for-byte the
// layout `virsh dumpxml` uses, which keeps golden files and dumpxml diffable.

// libvirt escapes all five markup characters (virBufferEscapeString); the
// <metadata> subtree it prints through libxml2, which in text escapes only
// & < > (`quotes` false). Either way the result is the same XML.
void AppendEscaped(std::string& out, std::string_view s, bool quotes = true) {
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '\'': out += quotes ? "&apos;" : "'"; break;
      case '"': out += quotes ? "&quot;" : "\""; break;
      default: out += c;
    }
  }
}

// `in_foreign` is true inside a namespaced (metadata) element. depth < 0
// prints compactly: no indentation, no newlines.
void AppendNode(std::string& out, const pugi::xml_node& node, int depth, bool in_foreign) {
  const std::string indent(static_cast<size_t>(std::max(depth, 0)) * 2, ' ');
  const std::string_view nl = depth < 0 ? "" : "\n";
  const int child_depth = depth < 0 ? depth : depth + 1;
  if (node.type() == pugi::node_pcdata) {  // never produced by the writers; kept readable
    out += indent;
    AppendEscaped(out, node.value(), !in_foreign);
    out += nl;
    return;
  }
  if (node.type() != pugi::node_element) return;
  in_foreign = in_foreign || std::string_view(node.name()).find(':') != std::string_view::npos;
  out += indent;
  out += '<';
  out += node.name();
  for (const pugi::xml_attribute& attr : node.attributes()) {
    // libvirt prints its own attributes in single quotes but the metadata
    // subtree through libxml2, which double-quotes namespace declarations.
    const char quote = std::string_view(attr.name()).starts_with("xmlns") ? '"' : '\'';
    out += ' ';
    out += attr.name();
    out += '=';
    out += quote;
    AppendEscaped(out, attr.value());
    out += quote;
  }
  const pugi::xml_node first = node.first_child();
  if (!first || (first.type() == pugi::node_pcdata && !first.next_sibling() &&
                 *first.value() == '\0')) {
    out += "/>";
    out += nl;
    return;
  }
  if (first.type() == pugi::node_pcdata && !first.next_sibling()) {
    out += '>';
    AppendEscaped(out, first.value(), !in_foreign);
    out += "</";
    out += node.name();
    out += '>';
    out += nl;
    return;
  }
  out += '>';
  out += nl;
  for (const pugi::xml_node& child : node.children()) {
    AppendNode(out, child, child_depth, in_foreign);
  }
  out += indent;
  out += "</";
  out += node.name();
  out += '>';
  out += nl;
}

std::string Serialize(const pugi::xml_node& root, bool pretty) {
  std::string out;
  AppendNode(out, root, pretty ? 0 : -1, false);
  return out;
}

// ---------------------------------------------------------------------------
// Tree building.

pugi::xml_node AddElement(pugi::xml_node parent, const char* name) {
  return parent.append_child(name);
}

pugi::xml_node AddText(pugi::xml_node parent, const std::string& name, const std::string& text) {
  pugi::xml_node node = parent.append_child(name.c_str());
  node.text().set(text.c_str());
  return node;
}

void SetAttr(pugi::xml_node node, const char* name, const std::string& value) {
  node.append_attribute(name).set_value(value.c_str());
}

// <execution> with children id, function, tenant, pid, ppid, image, created.
// `prefix` is "berth:" inside a domain and "" for virDomainSetMetadata.
void AddExecution(pugi::xml_node parent, const DomainMetadata& m, const std::string& prefix) {
  pugi::xml_node exec = parent.append_child((prefix + "execution").c_str());
  if (!prefix.empty()) {
    SetAttr(exec, ("xmlns:" + std::string(kMetadataPrefix)).c_str(), kMetadataNamespace);
  }
  AddText(exec, prefix + "id", m.execution_id);
  AddText(exec, prefix + "function", m.function);
  AddText(exec, prefix + "tenant", m.tenant);
  AddText(exec, prefix + "pid", std::to_string(m.pid));
  AddText(exec, prefix + "ppid", std::to_string(m.ppid));
  AddText(exec, prefix + "image", m.image);
  AddText(exec, prefix + "created", std::to_string(m.created_unix_ms));
  if (!m.network.empty()) AddText(exec, prefix + "network", m.network);
  for (const std::string& a : m.addresses) AddText(exec, prefix + "address", a);
}

void AddDisk(pugi::xml_node devices, const DiskSpec& d) {
  pugi::xml_node disk = AddElement(devices, "disk");
  SetAttr(disk, "type", "file");
  SetAttr(disk, "device", "disk");
  pugi::xml_node driver = AddElement(disk, "driver");
  SetAttr(driver, "name", "qemu");
  SetAttr(driver, "type", d.format);
  // Lets the guest's fstrim shrink the qcow2 overlay on the node.
  SetAttr(driver, "discard", "unmap");
  SetAttr(AddElement(disk, "source"), "file", d.path);
  pugi::xml_node target = AddElement(disk, "target");
  SetAttr(target, "dev", d.target);
  SetAttr(target, "bus", "virtio");
  if (d.read_only) AddElement(disk, "readonly");
}

void AddChardevTarget(pugi::xml_node dev, const char* type) {
  pugi::xml_node target = AddElement(dev, "target");
  if (type != nullptr) SetAttr(target, "type", type);
  SetAttr(target, "port", "0");
}

void BuildDomain(pugi::xml_node root, const DomainSpec& spec) {
  pugi::xml_node domain = AddElement(root, "domain");
  SetAttr(domain, "type", spec.accel == Accel::kKvm ? "kvm" : "qemu");
  AddText(domain, "name", spec.name);
  if (!spec.uuid.empty()) {
    std::string uuid = spec.uuid;
    for (char& c : uuid) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    AddText(domain, "uuid", uuid);  // lower case, as libvirt prints it
  }
  if (!spec.title.empty()) AddText(domain, "title", spec.title);
  AddExecution(AddElement(domain, "metadata"), spec.metadata, std::string(kMetadataPrefix) + ":");

  const std::string mib = std::to_string(spec.memory_mib);
  SetAttr(AddText(domain, "memory", mib), "unit", "MiB");
  SetAttr(AddText(domain, "currentMemory", mib), "unit", "MiB");
  SetAttr(AddText(domain, "vcpu", std::to_string(spec.vcpus)), "placement", "static");

  pugi::xml_node os = AddElement(domain, "os");
  pugi::xml_node type = AddText(os, "type", "hvm");
  SetAttr(type, "arch", "x86_64");
  SetAttr(type, "machine", spec.machine);
  if (spec.kernel_path.empty()) {
    // Boot from disk: the image's own bootloader and kernel.
    SetAttr(AddElement(os, "boot"), "dev", "hd");
  } else {
    AddText(os, "kernel", spec.kernel_path);
    AddText(os, "initrd", spec.initrd_path);
    if (!spec.cmdline.empty()) AddText(os, "cmdline", spec.cmdline);
  }

  // ACPI is what lets the guest power itself off cleanly.
  auto features = AddElement(domain, "features");
  AddElement(features, "acpi");
  if (spec.accel == Accel::kTcg && spec.tcg_tb_cache_mib > 0) {
    // Bounds the translation cache, the largest part of an idle TCG guest's RSS.
    auto cache = AddText(AddElement(features, "tcg"), "tb-cache", std::to_string(spec.tcg_tb_cache_mib));
    SetAttr(cache, "unit", "MiB");
  }
  // TCG cannot pass the host CPU through; QEMU's default model is right there.
  if (spec.accel == Accel::kKvm) SetAttr(AddElement(domain, "cpu"), "mode", "host-passthrough");
  SetAttr(AddElement(domain, "clock"), "offset", "utc");
  // An execution never restarts in place: any exit ends the domain and the
  // manager decides what happens next.
  AddText(domain, "on_poweroff", "destroy");
  AddText(domain, "on_reboot", "destroy");
  AddText(domain, "on_crash", "destroy");

  // Devices in the order libvirt prints them.
  pugi::xml_node devices = AddElement(domain, "devices");
  if (!spec.emulator.empty()) AddText(devices, "emulator", spec.emulator);
  for (const DiskSpec& d : spec.disks) AddDisk(devices, d);
  pugi::xml_node usb = AddElement(devices, "controller");
  SetAttr(usb, "type", "usb");
  SetAttr(usb, "model", "none");
  for (const NicSpec& n : spec.nics) {
    pugi::xml_node iface = AddElement(devices, "interface");
    SetAttr(iface, "type", "network");
    if (!n.mac.empty()) SetAttr(AddElement(iface, "mac"), "address", n.mac);
    SetAttr(AddElement(iface, "source"), "network", n.network);
    SetAttr(AddElement(iface, "model"), "type", "virtio");
    if (!n.filter.empty()) {  // libvirt prints <filterref> after <model>
      pugi::xml_node filterref = AddElement(iface, "filterref");
      SetAttr(filterref, "filter", n.filter);
      for (const auto& [name, value] : n.filter_parameters) {
        pugi::xml_node param = AddElement(filterref, "parameter");
        SetAttr(param, "name", name);
        SetAttr(param, "value", value);
      }
    }
  }
  if (!spec.console_log_path.empty()) {
    pugi::xml_node serial = AddElement(devices, "serial");
    SetAttr(serial, "type", "file");
    SetAttr(AddElement(serial, "source"), "path", spec.console_log_path);
    AddChardevTarget(serial, nullptr);
    pugi::xml_node console = AddElement(devices, "console");
    SetAttr(console, "type", "file");
    SetAttr(AddElement(console, "source"), "path", spec.console_log_path);
    AddChardevTarget(console, "serial");
  }
  // mode='bind' unix channel: the only kind virDomainOpenChannel accepts.
  pugi::xml_node channel = AddElement(devices, "channel");
  SetAttr(channel, "type", "unix");
  pugi::xml_node source = AddElement(channel, "source");
  SetAttr(source, "mode", "bind");
  if (!spec.agent_channel.socket_path.empty()) {
    SetAttr(source, "path", spec.agent_channel.socket_path);
  }
  pugi::xml_node target = AddElement(channel, "target");
  SetAttr(target, "type", "virtio");
  SetAttr(target, "name", spec.agent_channel.name);
  // No balloon: memory is fixed per execution, and the device costs boot time.
  SetAttr(AddElement(devices, "memballoon"), "model", "none");
}

// ---------------------------------------------------------------------------
// Parsing. pugixml knows nothing of namespaces, so prefixes are resolved here
// by walking xmlns declarations up the tree.

std::string_view LocalName(const pugi::xml_node& node) {
  std::string_view name = node.name();
  const size_t colon = name.find(':');
  return colon == std::string_view::npos ? name : name.substr(colon + 1);
}

// Namespace URI of an element ("" when unqualified and no default namespace).
std::string_view NamespaceOf(const pugi::xml_node& node) {
  std::string_view name = node.name();
  const size_t colon = name.find(':');
  const std::string decl =
      colon == std::string_view::npos ? "xmlns" : "xmlns:" + std::string(name.substr(0, colon));
  for (pugi::xml_node n = node; n && n.type() == pugi::node_element; n = n.parent()) {
    if (pugi::xml_attribute a = n.attribute(decl.c_str())) return a.value();
  }
  return {};
}

Status ParseInt(const std::string& field, const std::string& element, std::string_view text,
                int64_t* out) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front()))) {
    text.remove_prefix(1);
  }
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) {
    text.remove_suffix(1);
  }
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, *out);
  if (text.empty() || ec != std::errc() || ptr != end) {
    return Status::InvalidArgument(
        field, "berth metadata <" + element + "> is not an integer: '" + std::string(text) + "'");
  }
  return Status::Ok();
}

Result<DomainMetadata> ParseExecution(const pugi::xml_node& exec, const std::string& field) {
  DomainMetadata m;
  std::set<std::string, std::less<>> seen;
  for (const pugi::xml_node& child : exec.children()) {
    if (child.type() != pugi::node_element) continue;
    const std::string_view ns = NamespaceOf(child);
    if (!ns.empty() && ns != kMetadataNamespace) continue;
    const std::string local(LocalName(child));
    if (local == "address") {  // repeated: one per guest address
      m.addresses.emplace_back(child.child_value());
      continue;
    }
    if (!seen.insert(local).second) continue;  // first one wins
    const char* text = child.child_value();
    if (local == "id") {
      m.execution_id = text;
    } else if (local == "function") {
      m.function = text;
    } else if (local == "tenant") {
      m.tenant = text;
    } else if (local == "image") {
      m.image = text;
    } else if (local == "network") {
      m.network = text;
    } else if (local == "pid") {
      BERTH_RETURN_IF_ERROR(ParseInt(field, local, text, &m.pid));
    } else if (local == "ppid") {
      BERTH_RETURN_IF_ERROR(ParseInt(field, local, text, &m.ppid));
    } else if (local == "created") {
      BERTH_RETURN_IF_ERROR(ParseInt(field, local, text, &m.created_unix_ms));
    }
    // Anything else: written by a newer berth; ignored.
  }
  if (m.execution_id.empty()) {
    return Status::InvalidArgument(field, "berth metadata has no <id>");
  }
  return m;
}

Status LoadXml(pugi::xml_document& doc, const std::string& xml, const std::string& field) {
  pugi::xml_parse_result r =
      doc.load_buffer(xml.data(), xml.size(), pugi::parse_default, pugi::encoding_utf8);
  if (!r) {
    return Status::InvalidArgument(field, std::string("not well-formed XML: ") + r.description() +
                                              " at offset " + std::to_string(r.offset));
  }
  return Status::Ok();
}

}  // namespace

Result<std::string> WriteDomainXml(const DomainSpec& spec) {
  BERTH_RETURN_IF_ERROR(ValidateDomainSpec(spec));
  try {
    pugi::xml_document doc;
    BuildDomain(doc, spec);
    return Serialize(doc.document_element(), /*pretty=*/true);
  } catch (const std::exception& e) {  // only std::bad_alloc is possible
    return Status::Internal(std::string("building domain XML: ") + e.what());
  }
}

std::string MetadataXml(const DomainMetadata& metadata) {
  pugi::xml_document doc;
  AddExecution(doc, metadata, "");
  // Compact on purpose: libvirt keeps whitespace text nodes of the fragment,
  // which would spoil its own indentation in dumpxml.
  return Serialize(doc.document_element(), /*pretty=*/false);
}

Result<DomainMetadata> ParseDomainMetadata(const std::string& domain_xml) {
  const std::string field = "domain_xml";
  try {
    pugi::xml_document doc;
    BERTH_RETURN_IF_ERROR(LoadXml(doc, domain_xml, field));
    const pugi::xml_node domain = doc.document_element();
    if (std::string_view(domain.name()) != "domain") {
      return Status::InvalidArgument(
          field, std::string("root element is <") + domain.name() + ">, not <domain>");
    }
    for (const pugi::xml_node& el : domain.child("metadata").children()) {
      if (el.type() == pugi::node_element && LocalName(el) == "execution" &&
          NamespaceOf(el) == kMetadataNamespace) {
        return ParseExecution(el, field);
      }
    }
    return Status::NotFound(std::string("domain carries no berth metadata (no <execution> in ") +
                            kMetadataNamespace + ")");
  } catch (const std::exception& e) {
    return Status::Internal(std::string("parsing domain XML: ") + e.what());
  }
}

Result<std::vector<NicSpec>> ParseDomainNics(const std::string& domain_xml) {
  const std::string field = "domain_xml";
  try {
    pugi::xml_document doc;
    BERTH_RETURN_IF_ERROR(LoadXml(doc, domain_xml, field));
    const pugi::xml_node domain = doc.document_element();
    if (std::string_view(domain.name()) != "domain") {
      return Status::InvalidArgument(field, std::string("root element is <") + domain.name() + ">, not <domain>");
    }
    std::vector<NicSpec> nics;
    for (const pugi::xml_node& iface : domain.child("devices").children("interface")) {
      if (std::string_view(iface.attribute("type").value()) != "network") continue;
      NicSpec nic;
      nic.network = iface.child("source").attribute("network").value();
      nic.mac = iface.child("mac").attribute("address").value();
      nic.filter = iface.child("filterref").attribute("filter").value();
      nics.push_back(std::move(nic));
    }
    return nics;
  } catch (const std::exception& e) {
    return Status::Internal(std::string("parsing domain XML: ") + e.what());
  }
}

Result<DomainMetadata> ParseMetadataXml(const std::string& element_xml) {
  const std::string field = "metadata_xml";
  try {
    pugi::xml_document doc;
    BERTH_RETURN_IF_ERROR(LoadXml(doc, element_xml, field));
    const pugi::xml_node el = doc.document_element();
    const std::string_view ns = NamespaceOf(el);
    if (LocalName(el) != "execution" || (!ns.empty() && ns != kMetadataNamespace)) {
      return Status::InvalidArgument(
          field, std::string("expected berth's <execution> element, got <") + el.name() + ">");
    }
    return ParseExecution(el, field);
  } catch (const std::exception& e) {
    return Status::Internal(std::string("parsing metadata XML: ") + e.what());
  }
}

}  // namespace berth::hv
