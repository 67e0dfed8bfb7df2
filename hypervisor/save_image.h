// libvirt QEMU save images ("virsh save" files) and clones of them.
//
// Layout (libvirt 9.0, src/qemu/qemu_saveimage.h), little-endian on x86:
//   char magic[16] "LibvirtQemudSave" ("LibvirtQemudPart" while incomplete)
//   u32 version (2), data_len, was_running, format (0 = raw), cookieOffset,
//   u32 unused[14]                                   -> 92 bytes
//   data_len bytes: domain XML, NUL, cookie XML at cookieOffset, NUL, zero padding
//   QEMU's migration stream ("QEVM...") to the end of the file.
//
// libvirt refuses `virsh restore --xml` with another UUID, so a clone gets its
// own identity by rewriting the XML inside a copy of the image: in place when
// the new XML fits into data_len, otherwise with a larger data_len and the
// stream moved behind it (libvirt reads the stream from 92 + data_len, so any
// data_len works).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "hypervisor/domain_spec.h"

namespace berth::hv {

inline constexpr size_t kSaveHeaderSize = 92;

struct SaveImageHeader {
  uint32_t version = 0;
  uint32_t data_len = 0;
  bool was_running = false;
  uint32_t format = 0;       // 0 raw; compressed images cannot be cloned here
  uint32_t cookie_offset = 0;
  std::string xml;           // the domain XML (migratable form)
  std::string cookie;        // the save cookie XML ("" if none)
  uint64_t stream_offset() const { return kSaveHeaderSize + data_len; }
};

// Parses header + data from the first bytes of a save image (at least
// kSaveHeaderSize + data_len of them). FailedPrecondition for an incomplete
// image ("LibvirtQemudPart"), InvalidArgument for anything malformed.
Result<SaveImageHeader> ParseSaveImageHeader(std::string_view bytes);
Result<SaveImageHeader> ReadSaveImageHeader(const std::string& path);

// Header + data bytes for `header` with its XML replaced by `xml`: the same
// data_len when it fits, else a larger one (then the stream must move).
Result<std::string> EncodeSaveImageHeader(const SaveImageHeader& header, const std::string& xml);

// Writes `dst`: a copy of save image `src` whose domain XML is `xml`. The
// file is complete (final magic) only once everything is written; it is
// created under a temporary name and renamed into place.
Status WriteCloneSaveImage(const std::string& src, const std::string& dst, const std::string& xml);

// What makes a restored clone its own domain.
struct CloneIdentity {
  std::string name;
  std::string uuid;                          // "" lets libvirt choose
  std::string title;
  DomainMetadata metadata;
  std::map<std::string, std::string> disks;  // target dev ("vda") -> new source file
  std::string console_log_path;              // serial/console file source ("" keeps it)
  // The clone's NICs, one per saved <interface> in order ("" network/mac:
  // none given). Empty keeps the saved interfaces as they are, which only
  // suits domains without any: a clone must never reuse another VM's MAC.
  // Each saved interface gets the NIC's MAC, its network as the source
  // (libvirt's port id, bridge and host device name are dropped, so the
  // clone gets its own port) and its filterref with parameters.
  std::vector<NicSpec> nics;
};

// Rewrites the saved (migratable) domain XML for a clone. Everything the
// guest sees (devices, addresses, CPU) is kept, so the clone stays
// ABI-compatible with the saved state (a NIC's MAC is not ABI: the guest
// agent sets the new one, see guest/agent/network.h). InvalidArgument if a
// disk target is missing, the number of NICs differs from the saved
// interfaces, or the XML is malformed.
Result<std::string> RewriteDomainIdentity(const std::string& saved_xml, const CloneIdentity& identity);

}  // namespace berth::hv
