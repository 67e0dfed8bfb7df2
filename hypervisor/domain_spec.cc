#include "hypervisor/domain_spec.h"

#include <algorithm>
#include <cstddef>
#include <set>
#include <string>
#include <string_view>

namespace berth::hv {
namespace {

constexpr size_t kMaxNameLength = 64;
constexpr uint32_t kMinVcpus = 1;
constexpr uint32_t kMaxVcpus = 256;
constexpr uint64_t kMinMemoryMib = 16;
constexpr uint64_t kMaxMemoryMib = 1048576;  // 1 TiB
// sun_path is 108 bytes including the NUL; QEMU fails late on longer paths.
constexpr size_t kMaxSocketPathLength = 107;
// x86 COMMAND_LINE_SIZE is 2048 including the NUL.
constexpr size_t kMaxCmdlineLength = 2047;
constexpr size_t kMaxTextLength = 1024;
constexpr size_t kMaxPathLength = 4095;

bool IsAsciiAlnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}
bool IsHex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

// Empty when `s` is valid UTF-8 made only of characters XML 1.0 allows and
// that are not control characters (C0 incl. tab/newline, DEL, C1); otherwise
// why not. Every string berth puts into domain XML is single-line text, so
// rejecting all control characters also rejects newlines.
std::string TextProblem(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    uint32_t cp = 0;
    size_t len = 0;
    if (b0 < 0x80) {
      cp = b0;
      len = 1;
    } else if ((b0 & 0xE0) == 0xC0) {
      cp = b0 & 0x1F;
      len = 2;
    } else if ((b0 & 0xF0) == 0xE0) {
      cp = b0 & 0x0F;
      len = 3;
    } else if ((b0 & 0xF8) == 0xF0) {
      cp = b0 & 0x07;
      len = 4;
    } else {
      return "is not valid UTF-8";
    }
    if (i + len > s.size()) return "is not valid UTF-8";
    for (size_t k = 1; k < len; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if ((b & 0xC0) != 0x80) return "is not valid UTF-8";
      cp = (cp << 6) | (b & 0x3F);
    }
    const bool overlong = (len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) ||
                          (len == 4 && cp < 0x10000);
    if (overlong || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return "is not valid UTF-8";
    }
    if (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F)) {
      return "must not contain control characters (newlines, tabs, NUL, ...)";
    }
    if (cp == 0xFFFE || cp == 0xFFFF) return "contains a character XML does not allow";
    i += len;
  }
  return {};
}

Status CheckText(const std::string& field, std::string_view value, size_t max_len = kMaxTextLength) {
  if (value.size() > max_len) {
    return Status::InvalidArgument(
        field, field + " is " + std::to_string(value.size()) + " bytes long; at most " +
                   std::to_string(max_len) + " are allowed");
  }
  if (std::string problem = TextProblem(value); !problem.empty()) {
    return Status::InvalidArgument(field, field + " " + problem);
  }
  return Status::Ok();
}

// Host paths: absolute, plain text, and none of the characters that are
// markup in XML or quotes (pugixml would escape them, but a path holding
// them is never one berth made, and other tools splice paths into shell
// commands and QEMU options).
Status CheckPath(const std::string& field, const std::string& path) {
  if (path.empty()) return Status::InvalidArgument(field, field + " is required");
  if (path.front() != '/') {
    return Status::InvalidArgument(field, field + " must be an absolute path, got '" + path + "'");
  }
  BERTH_RETURN_IF_ERROR(CheckText(field, path, kMaxPathLength));
  if (path.find_first_of("<>&'\"") != std::string::npos) {
    return Status::InvalidArgument(
        field, field + " must not contain any of < > & ' \" (got '" + path + "')");
  }
  return Status::Ok();
}

// Names that reach QEMU's command line or libvirt object names:
// [A-Za-z0-9_.-] only.
bool IsSimpleName(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!IsAsciiAlnum(c) && c != '_' && c != '.' && c != '-') return false;
  }
  return true;
}

Status CheckName(const std::string& name) {
  if (name.empty()) return Status::InvalidArgument("name", "name is required");
  if (name.size() > kMaxNameLength) {
    return Status::InvalidArgument("name", "name is " + std::to_string(name.size()) +
                                               " characters long; at most " +
                                               std::to_string(kMaxNameLength) + " are allowed");
  }
  if (!IsSimpleName(name)) {
    return Status::InvalidArgument("name",
                                   "name may contain only letters, digits, '_', '.' and '-'");
  }
  const std::string_view prefix = kDomainNamePrefix;
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) {
    return Status::InvalidArgument(
        "name", "name must start with '" + std::string(prefix) + "' followed by an id, got '" +
                    name + "'");
  }
  return Status::Ok();
}

// Canonical 8-4-4-4-12 hex form, as virUUIDFormat prints it (either case).
bool IsCanonicalUuid(std::string_view s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const bool dash_pos = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash_pos ? s[i] != '-' : !IsHex(s[i])) return false;
  }
  return true;
}

// xx:xx:xx:xx:xx:xx, unicast (libvirt refuses multicast addresses for NICs).
Status CheckMac(const std::string& field, const std::string& mac) {
  bool ok = mac.size() == 17;
  for (size_t i = 0; ok && i < mac.size(); ++i) {
    ok = (i % 3 == 2) ? mac[i] == ':' : IsHex(mac[i]);
  }
  if (!ok) {
    return Status::InvalidArgument(field,
                                   field + " must look like 52:54:00:ab:cd:ef, got '" + mac + "'");
  }
  const int first_octet = std::stoi(mac.substr(0, 2), nullptr, 16);
  if (first_octet & 1) {
    return Status::InvalidArgument(field, field + " is a multicast address; a NIC needs unicast");
  }
  return Status::Ok();
}

Status CheckDisks(const std::vector<DiskSpec>& disks) {
  std::set<std::string> targets;
  for (size_t i = 0; i < disks.size(); ++i) {
    const DiskSpec& d = disks[i];
    const std::string base = "disks[" + std::to_string(i) + "]";
    BERTH_RETURN_IF_ERROR(CheckPath(base + ".path", d.path));
    if (d.format != "qcow2" && d.format != "raw") {
      return Status::InvalidArgument(base + ".format", base + ".format must be 'qcow2' or 'raw'");
    }
    const std::string& t = d.target;
    if (t.size() != 3 || t[0] != 'v' || t[1] != 'd' || t[2] < 'a' || t[2] > 'z') {
      return Status::InvalidArgument(base + ".target",
                                     base + ".target must be vda..vdz (virtio disk)");
    }
    if (!targets.insert(t).second) {
      return Status::InvalidArgument(base + ".target",
                                     base + ".target '" + t + "' is used by an earlier disk");
    }
  }
  return Status::Ok();
}

Status CheckChannel(const ChannelSpec& ch) {
  if (ch.name.empty()) {
    return Status::InvalidArgument("agent_channel.name", "agent_channel.name is required");
  }
  if (!IsSimpleName(ch.name)) {
    return Status::InvalidArgument(
        "agent_channel.name",
        "agent_channel.name may contain only letters, digits, '_', '.' and '-'");
  }
  if (!ch.socket_path.empty()) {
    BERTH_RETURN_IF_ERROR(CheckPath("agent_channel.socket_path", ch.socket_path));
    if (ch.socket_path.size() > kMaxSocketPathLength) {
      return Status::InvalidArgument(
          "agent_channel.socket_path",
          "agent_channel.socket_path is longer than a unix socket path may be (" +
              std::to_string(kMaxSocketPathLength) + " bytes)");
    }
  }
  return Status::Ok();
}

// <filterref>: a filter name like a libvirt object name; parameter names
// as nwfilter variables ([A-Za-z0-9_]), values plain single-line text.
Status CheckNicFilter(const std::string& base, const NicSpec& n) {
  if (n.filter.empty()) {
    if (!n.filter_parameters.empty()) {
      return Status::InvalidArgument(base + ".filter",
                                     base + ".filter is required with filter_parameters");
    }
    return Status::Ok();
  }
  if (!IsSimpleName(n.filter) || n.filter.size() > kMaxNameLength) {
    return Status::InvalidArgument(
        base + ".filter", base + ".filter may contain only letters, digits, '_', '.' and '-'");
  }
  for (size_t k = 0; k < n.filter_parameters.size(); ++k) {
    const std::string field = base + ".filter_parameters[" + std::to_string(k) + "]";
    const auto& [name, value] = n.filter_parameters[k];
    if (name.empty() || name.size() > kMaxNameLength ||
        !std::all_of(name.begin(), name.end(), [](char c) { return IsAsciiAlnum(c) || c == '_'; })) {
      return Status::InvalidArgument(field + ".name",
                                     field + ".name may contain only letters, digits and '_'");
    }
    if (value.empty()) return Status::InvalidArgument(field + ".value", field + ".value is required");
    BERTH_RETURN_IF_ERROR(CheckText(field + ".value", value));
  }
  return Status::Ok();
}

Status CheckNics(const std::vector<NicSpec>& nics) {
  for (size_t i = 0; i < nics.size(); ++i) {
    const std::string base = "nics[" + std::to_string(i) + "]";
    const NicSpec& n = nics[i];
    if (n.network.empty()) {
      return Status::InvalidArgument(base + ".network", base + ".network is required");
    }
    BERTH_RETURN_IF_ERROR(CheckText(base + ".network", n.network));
    if (n.network.find('/') != std::string::npos) {
      return Status::InvalidArgument(base + ".network",
                                     base + ".network must not contain '/'");
    }
    if (!n.mac.empty()) BERTH_RETURN_IF_ERROR(CheckMac(base + ".mac", n.mac));
    BERTH_RETURN_IF_ERROR(CheckNicFilter(base, n));
  }
  return Status::Ok();
}

}  // namespace

Status ValidateDomainMetadata(const DomainMetadata& m) {
  if (m.execution_id.empty()) {
    return Status::InvalidArgument("metadata.execution_id", "metadata.execution_id is required");
  }
  BERTH_RETURN_IF_ERROR(CheckText("metadata.execution_id", m.execution_id));
  BERTH_RETURN_IF_ERROR(CheckText("metadata.function", m.function));
  BERTH_RETURN_IF_ERROR(CheckText("metadata.tenant", m.tenant));
  BERTH_RETURN_IF_ERROR(CheckText("metadata.image", m.image));
  BERTH_RETURN_IF_ERROR(CheckText("metadata.network", m.network));
  for (size_t i = 0; i < m.addresses.size(); ++i) {
    BERTH_RETURN_IF_ERROR(CheckText("metadata.addresses[" + std::to_string(i) + "]", m.addresses[i]));
  }
  if (m.pid < 0) return Status::InvalidArgument("metadata.pid", "metadata.pid must be >= 0");
  if (m.ppid < 0) return Status::InvalidArgument("metadata.ppid", "metadata.ppid must be >= 0");
  if (m.created_unix_ms < 0) {
    return Status::InvalidArgument("metadata.created_unix_ms",
                                   "metadata.created_unix_ms must be >= 0");
  }
  return Status::Ok();
}

Status ValidateDomainSpec(const DomainSpec& spec) {
  BERTH_RETURN_IF_ERROR(CheckName(spec.name));
  if (!spec.uuid.empty() && !IsCanonicalUuid(spec.uuid)) {
    return Status::InvalidArgument(
        "uuid", "uuid must be empty or in the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (hex)");
  }
  BERTH_RETURN_IF_ERROR(CheckText("title", spec.title));
  if (!spec.emulator.empty()) BERTH_RETURN_IF_ERROR(CheckPath("emulator", spec.emulator));
  if (!IsSimpleName(spec.machine)) {
    return Status::InvalidArgument(
        "machine", "machine is required and may contain only letters, digits, '_', '.' and '-'");
  }
  if (spec.vcpus < kMinVcpus || spec.vcpus > kMaxVcpus) {
    return Status::InvalidArgument("vcpus", "vcpus must be between " + std::to_string(kMinVcpus) +
                                                " and " + std::to_string(kMaxVcpus) + ", got " +
                                                std::to_string(spec.vcpus));
  }
  if (spec.memory_mib < kMinMemoryMib || spec.memory_mib > kMaxMemoryMib) {
    return Status::InvalidArgument(
        "memory_mib", "memory_mib must be between " + std::to_string(kMinMemoryMib) + " and " +
                          std::to_string(kMaxMemoryMib) + " MiB, got " +
                          std::to_string(spec.memory_mib));
  }
  if (!spec.kernel_path.empty() || !spec.initrd_path.empty()) {  // both empty: boot from disk
    BERTH_RETURN_IF_ERROR(CheckPath("kernel_path", spec.kernel_path));
    BERTH_RETURN_IF_ERROR(CheckPath("initrd_path", spec.initrd_path));
    BERTH_RETURN_IF_ERROR(CheckText("cmdline", spec.cmdline, kMaxCmdlineLength));
  } else if (spec.disks.empty()) {
    return Status::InvalidArgument("disks", "a domain that boots from disk needs at least one disk");
  }
  BERTH_RETURN_IF_ERROR(CheckDisks(spec.disks));
  BERTH_RETURN_IF_ERROR(CheckChannel(spec.agent_channel));
  if (!spec.console_log_path.empty()) {
    BERTH_RETURN_IF_ERROR(CheckPath("console_log_path", spec.console_log_path));
  }
  BERTH_RETURN_IF_ERROR(CheckNics(spec.nics));
  return ValidateDomainMetadata(spec.metadata);
}

}  // namespace berth::hv
