#include "hypervisor/save_image.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <pugixml.hpp>
#include <sstream>

#include "hypervisor/domain_xml.h"

namespace berth::hv {
namespace {

constexpr char kMagic[] = "LibvirtQemudSave";
constexpr char kPartial[] = "LibvirtQemudPart";
constexpr uint32_t kVersion = 2;
constexpr uint32_t kSlack = 64 * 1024;  // what libvirt leaves for edits

uint32_t U32(std::string_view b, size_t off) {
  return static_cast<uint32_t>(static_cast<unsigned char>(b[off])) |
         static_cast<uint32_t>(static_cast<unsigned char>(b[off + 1])) << 8 |
         static_cast<uint32_t>(static_cast<unsigned char>(b[off + 2])) << 16 |
         static_cast<uint32_t>(static_cast<unsigned char>(b[off + 3])) << 24;
}

void PutU32(std::string& b, size_t off, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[off + static_cast<size_t>(i)] = static_cast<char>((v >> (8 * i)) & 0xff);
}

Status Errno(const std::string& what) { return Status::Internal(what + ": " + std::strerror(errno)); }

Status WriteAll(int fd, std::string_view data, const std::string& path) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Errno("writing " + path);
    off += static_cast<size_t>(n);
  }
  return Status::Ok();
}

}  // namespace

Result<SaveImageHeader> ParseSaveImageHeader(std::string_view bytes) {
  if (bytes.size() < kSaveHeaderSize) return Status::InvalidArgument("save_image", "shorter than a save image header");
  if (bytes.substr(0, 16) == std::string_view(kPartial, 16)) {
    return Status::FailedPrecondition("save image is incomplete (libvirt did not finish writing it)", "save_image");
  }
  if (bytes.substr(0, 16) != std::string_view(kMagic, 16)) {
    return Status::InvalidArgument("save_image", "not a libvirt QEMU save image (bad magic)");
  }
  SaveImageHeader h;
  h.version = U32(bytes, 16);
  h.data_len = U32(bytes, 20);
  h.was_running = U32(bytes, 24) != 0;
  h.format = U32(bytes, 28);
  h.cookie_offset = U32(bytes, 32);
  if (h.version != kVersion) {
    return Status::InvalidArgument("save_image", "unsupported save image version " + std::to_string(h.version));
  }
  if (h.data_len == 0 || h.data_len > (64u << 20) || h.cookie_offset > h.data_len) {
    return Status::InvalidArgument("save_image", "corrupt save image header (data length)");
  }
  if (bytes.size() < kSaveHeaderSize + h.data_len) {
    return Status::InvalidArgument("save_image", "save image shorter than its header says");
  }
  std::string_view data = bytes.substr(kSaveHeaderSize, h.data_len);
  size_t xml_region = h.cookie_offset ? h.cookie_offset : h.data_len;
  h.xml = std::string(data.substr(0, xml_region));
  h.xml.resize(std::strlen(h.xml.c_str()));
  if (h.cookie_offset) {
    std::string_view cookie = data.substr(h.cookie_offset);
    h.cookie = std::string(cookie.substr(0, cookie.find('\0')));
  }
  if (h.xml.rfind("<domain", 0) != 0) return Status::InvalidArgument("save_image", "save image holds no domain XML");
  return h;
}

Result<SaveImageHeader> ReadSaveImageHeader(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::NotFound("cannot open save image " + path + ": " + std::strerror(errno));
  std::string head(kSaveHeaderSize, '\0');
  ssize_t n = ::pread(fd, head.data(), head.size(), 0);
  if (n == static_cast<ssize_t>(kSaveHeaderSize)) {
    uint32_t data_len = U32(head, 20);
    if (data_len <= (64u << 20)) {
      head.resize(kSaveHeaderSize + data_len);
      n = ::pread(fd, head.data(), head.size(), 0);
      head.resize(n > 0 ? static_cast<size_t>(n) : 0);
    }
  }
  ::close(fd);
  return ParseSaveImageHeader(head);
}

Result<std::string> EncodeSaveImageHeader(const SaveImageHeader& header, const std::string& xml) {
  if (xml.find('\0') != std::string::npos) return Status::InvalidArgument("xml", "contains a NUL byte");
  size_t xml_len = xml.size() + 1;
  size_t cookie_len = header.cookie.empty() ? 0 : header.cookie.size() + 1;
  size_t needed = xml_len + cookie_len;
  uint32_t data_len = header.data_len;
  if (needed > data_len) data_len = static_cast<uint32_t>(needed + kSlack);
  std::string out(kSaveHeaderSize + data_len, '\0');
  std::memcpy(out.data(), kMagic, 16);
  PutU32(out, 16, kVersion);
  PutU32(out, 20, data_len);
  PutU32(out, 24, header.was_running ? 1 : 0);
  PutU32(out, 28, header.format);
  PutU32(out, 32, cookie_len ? static_cast<uint32_t>(xml_len) : 0);
  std::memcpy(out.data() + kSaveHeaderSize, xml.data(), xml.size());
  if (cookie_len) std::memcpy(out.data() + kSaveHeaderSize + xml_len, header.cookie.data(), header.cookie.size());
  return out;
}

Status WriteCloneSaveImage(const std::string& src, const std::string& dst, const std::string& xml) {
  BERTH_ASSIGN_OR_RETURN(SaveImageHeader header, ReadSaveImageHeader(src));
  if (header.format != 0) return Status::FailedPrecondition("compressed save images cannot be cloned", "save_image");
  BERTH_ASSIGN_OR_RETURN(std::string head, EncodeSaveImageHeader(header, xml));
  std::memcpy(head.data(), kPartial, 16);  // incomplete until the stream is in

  int in = ::open(src.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) return Errno("opening " + src);
  const std::string tmp = dst + ".part";
  int out = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (out < 0) {
    ::close(in);
    return Errno("creating " + tmp);
  }
  auto fail = [&](Status s) {
    ::close(in);
    ::close(out);
    ::unlink(tmp.c_str());
    return s;
  };
  if (Status s = WriteAll(out, head, tmp); !s.ok()) return fail(s);
  struct stat st;
  if (::fstat(in, &st) != 0) return fail(Errno("stat " + src));
  loff_t in_off = static_cast<loff_t>(header.stream_offset());
  if (static_cast<uint64_t>(st.st_size) < header.stream_offset()) {
    return fail(Status::InvalidArgument("save_image", "save image has no migration stream"));
  }
  size_t left = static_cast<size_t>(st.st_size) - header.stream_offset();
  while (left > 0) {  // in-kernel copy; no round trip through user space
    ssize_t n = ::copy_file_range(in, &in_off, out, nullptr, left, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return fail(n < 0 ? Errno("copying " + src) : Status::Internal("short copy of " + src));
    left -= static_cast<size_t>(n);
  }
  if (::pwrite(out, kMagic, 16, 0) != 16 || ::fsync(out) != 0) return fail(Errno("finishing " + tmp));
  ::close(in);
  if (::close(out) != 0) {
    ::unlink(tmp.c_str());
    return Errno("closing " + tmp);
  }
  if (::rename(tmp.c_str(), dst.c_str()) != 0) {
    ::unlink(tmp.c_str());
    return Errno("renaming " + tmp);
  }
  return Status::Ok();
}

Result<std::string> RewriteDomainIdentity(const std::string& saved_xml, const CloneIdentity& id) {
  pugi::xml_document doc;
  if (!doc.load_string(saved_xml.c_str(), pugi::parse_default | pugi::parse_ws_pcdata_single)) {
    return Status::InvalidArgument("xml", "saved domain XML does not parse");
  }
  pugi::xml_node dom = doc.child("domain");
  if (!dom) return Status::InvalidArgument("xml", "saved XML has no <domain>");
  auto set_child_text = [&](const char* name, const std::string& value, pugi::xml_node after) {
    pugi::xml_node n = dom.child(name);
    if (value.empty()) {
      if (n) dom.remove_child(n);
      return;
    }
    if (!n) n = after ? dom.insert_child_after(name, after) : dom.prepend_child(name);
    n.text() = value.c_str();
  };
  set_child_text("name", id.name, {});
  set_child_text("uuid", id.uuid, dom.child("name"));
  set_child_text("title", id.title, dom.child("uuid") ? dom.child("uuid") : dom.child("name"));

  // berth's metadata: replace the element in berth's namespace, keep others.
  pugi::xml_node metadata = dom.child("metadata");
  if (!metadata) {
    pugi::xml_node anchor = dom.child("title") ? dom.child("title") : dom.child("uuid") ? dom.child("uuid") : dom.child("name");
    metadata = dom.insert_child_after("metadata", anchor);
  }
  for (pugi::xml_node child = metadata.first_child(); child;) {
    pugi::xml_node next = child.next_sibling();
    for (pugi::xml_attribute a = child.first_attribute(); a; a = a.next_attribute()) {
      if (std::string_view(a.name()).rfind("xmlns", 0) == 0 && std::string_view(a.value()) == kMetadataNamespace) {
        metadata.remove_child(child);
        break;
      }
    }
    child = next;
  }
  pugi::xml_document md;
  std::string md_xml = MetadataXml(id.metadata);
  // MetadataXml is the bare form for virDomainSetMetadata; inside a domain it
  // needs the berth prefix and namespace, as WriteDomainXml emits it.
  if (!md.load_string(md_xml.c_str())) return Status::Internal("berth metadata does not parse");
  pugi::xml_node exec = metadata.append_child((std::string(kMetadataPrefix) + ":execution").c_str());
  exec.append_attribute((std::string("xmlns:") + kMetadataPrefix).c_str()) = kMetadataNamespace;
  for (pugi::xml_node c = md.first_child().first_child(); c; c = c.next_sibling()) {
    exec.append_child((std::string(kMetadataPrefix) + ":" + c.name()).c_str()).text() = c.text().get();
  }

  pugi::xml_node devices = dom.child("devices");
  std::map<std::string, std::string> pending = id.disks;
  for (pugi::xml_node disk : devices.children("disk")) {
    std::string dev = disk.child("target").attribute("dev").as_string();
    auto it = pending.find(dev);
    if (it == pending.end()) continue;
    pugi::xml_node source = disk.child("source");
    if (!source) source = disk.prepend_child("source");
    source.remove_attribute("file");
    source.append_attribute("file") = it->second.c_str();
    // A flattened backing chain of the template must not be carried over.
    disk.remove_child("backingStore");
    pending.erase(it);
  }
  if (!pending.empty()) {
    return Status::InvalidArgument("disks", "the saved domain has no disk with target '" + pending.begin()->first + "'");
  }
  if (!id.console_log_path.empty()) {
    for (const char* kind : {"serial", "console"}) {
      for (pugi::xml_node n : devices.children(kind)) {
        if (std::string_view(n.attribute("type").as_string()) == "file") {
          n.child("source").attribute("path") = id.console_log_path.c_str();
        }
      }
    }
  }
  if (!id.nics.empty()) {
    std::vector<pugi::xml_node> ifaces;
    for (pugi::xml_node iface : devices.children("interface")) ifaces.push_back(iface);
    if (ifaces.size() != id.nics.size()) {
      return Status::InvalidArgument("nics", "the saved domain has " + std::to_string(ifaces.size()) +
                                                 " interfaces, the clone " + std::to_string(id.nics.size()) + " NICs");
    }
    for (size_t i = 0; i < ifaces.size(); ++i) {
      pugi::xml_node iface = ifaces[i];
      const NicSpec& nic = id.nics[i];
      if (!nic.mac.empty()) {
        pugi::xml_node mac = iface.child("mac");
        if (!mac) mac = iface.prepend_child("mac");
        mac.remove_attribute("address");
        mac.append_attribute("address") = nic.mac.c_str();
      }
      if (!nic.network.empty()) {
        if (std::string_view(iface.attribute("type").as_string()) != "network") {
          return Status::InvalidArgument("nics", "saved interface " + std::to_string(i) + " is not of type network");
        }
        pugi::xml_node source = iface.child("source");
        if (source) iface.remove_child(source);
        pugi::xml_node anchor = iface.child("mac");
        source = anchor ? iface.insert_child_after("source", anchor) : iface.prepend_child("source");
        source.append_attribute("network") = nic.network.c_str();
      }
      // The template's tap device name and the port of its network are its own.
      iface.remove_child("target");
      for (pugi::xml_node fr = iface.child("filterref"); fr; fr = iface.child("filterref")) iface.remove_child(fr);
      if (!nic.filter.empty()) {
        pugi::xml_node fr = iface.append_child("filterref");
        fr.append_attribute("filter") = nic.filter.c_str();
        for (const auto& [name, value] : nic.filter_parameters) {
          pugi::xml_node param = fr.append_child("parameter");
          param.append_attribute("name") = name.c_str();
          param.append_attribute("value") = value.c_str();
        }
      }
    }
  }
  // Channel sockets are per domain: let libvirt pick a fresh path.
  for (pugi::xml_node ch : devices.children("channel")) {
    if (pugi::xml_node source = ch.child("source")) ch.remove_child(source);
  }
  std::ostringstream os;
  doc.save(os, "  ", pugi::format_default | pugi::format_no_declaration);
  return os.str();
}

}  // namespace berth::hv
