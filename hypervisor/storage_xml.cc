#include "hypervisor/storage_xml.h"

#include <pugixml.hpp>

#include <sstream>

namespace berth::hv {
namespace {

std::string Print(const pugi::xml_document& doc) {
  std::ostringstream os;
  doc.save(os, "  ", pugi::format_default | pugi::format_no_declaration);
  return os.str();
}

// <volume> with name, capacity in bytes, and a target of `format` and `mode`.
pugi::xml_node AddVolume(pugi::xml_document& doc, const std::string& name, uint64_t capacity_bytes,
                         const std::string& format, const char* mode) {
  auto vol = doc.append_child("volume");
  vol.append_child("name").text() = name.c_str();
  auto cap = vol.append_child("capacity");
  cap.append_attribute("unit") = "bytes";
  cap.text() = std::to_string(capacity_bytes).c_str();
  auto target = vol.append_child("target");
  target.append_child("format").append_attribute("type") = format.c_str();
  target.append_child("permissions").append_child("mode").text() = mode;
  return vol;
}

}  // namespace

std::string DirPoolXml(const std::string& name, const std::string& dir) {
  pugi::xml_document doc;
  auto pool = doc.append_child("pool");
  pool.append_attribute("type") = "dir";
  pool.append_child("name").text() = name.c_str();
  auto target = pool.append_child("target");
  target.append_child("path").text() = dir.c_str();
  target.append_child("permissions").append_child("mode").text() = "0755";
  return Print(doc);
}

std::string VolumeXml(const std::string& name, const std::string& format, uint64_t capacity_bytes) {
  pugi::xml_document doc;
  auto vol = AddVolume(doc, name, capacity_bytes, format, "0644");
  // Without <allocation> libvirt allocates the whole capacity up front; a
  // volume filled by an upload or a copy takes disk only where it has data,
  // so a sparse image stays sparse on the node (and its cache bytes are real).
  auto alloc = vol.insert_child_after("allocation", vol.child("capacity"));
  alloc.append_attribute("unit") = "bytes";
  alloc.text() = "0";
  return Print(doc);
}

std::string OverlayVolumeXml(const std::string& name, uint64_t capacity_bytes,
                             const std::string& backing_path, const std::string& backing_format) {
  pugi::xml_document doc;
  auto vol = AddVolume(doc, name, capacity_bytes, "qcow2", "0600");
  auto backing = vol.append_child("backingStore");
  backing.append_child("path").text() = backing_path.c_str();
  backing.append_child("format").append_attribute("type") = backing_format.c_str();
  return Print(doc);
}

Result<std::string> VolumeFormatFromXml(const std::string& volume_xml) {
  pugi::xml_document doc;
  if (!doc.load_string(volume_xml.c_str())) return Status::Internal("libvirt returned unparsable volume XML");
  return std::string(doc.child("volume").child("target").child("format").attribute("type").as_string());
}

}  // namespace berth::hv
