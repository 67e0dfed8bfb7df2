#include "images/image_format.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string_view>
#include <vector>

namespace berth::images {
namespace {

// Env has no positional-read primitive and reading a multi-GiB image through
// Env::ReadFile just to look at its header would be absurd, so inspection
// reads the prefix with plain POSIX calls (the only OS access here that does
// not go through Env; qemu-img goes through Env::RunLimited).
constexpr size_t kPrefixBytes = 128 * 1024;  // covers ISO (32 KiB) and btrfs (64 KiB) magics

constexpr char kQcowMagic[] = "QFI\xfb";
constexpr uint32_t kExtMagic = 0xEF53;
constexpr size_t kExtSuperblockOffset = 1024;
constexpr uint32_t kQcow2DataFileExtension = 0x44415441;
constexpr uint32_t kQcow2FullDiskEncryptionExtension = 0x0537be77;

Status Reject(const std::string& message) { return Status::FailedPrecondition(message, "image"); }

Status NotADiskImage(const std::string& found) {
  return Reject("not a disk image: expected a qcow2 or a raw ext2/3/4 filesystem image (found: " + found + ")");
}

uint32_t Be32(std::string_view b, size_t off) {
  const auto* p = reinterpret_cast<const unsigned char*>(b.data() + off);
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}
uint64_t Be64(std::string_view b, size_t off) { return (uint64_t{Be32(b, off)} << 32) | Be32(b, off + 4); }
uint16_t Le16(std::string_view b, size_t off) {
  const auto* p = reinterpret_cast<const unsigned char*>(b.data() + off);
  return static_cast<uint16_t>(p[0] | (p[1] << 8));
}
uint32_t Le32(std::string_view b, size_t off) {
  const auto* p = reinterpret_cast<const unsigned char*>(b.data() + off);
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}

bool HasAt(std::string_view b, size_t off, std::string_view magic) {
  return b.size() >= off + magic.size() && b.substr(off, magic.size()) == magic;
}

// Bytes from a hostile file, made safe to quote in a message: printable
// ASCII kept, everything else as \xNN, at most 200 characters.
std::string Quote(std::string_view raw) {
  std::string out = "\"";
  size_t n = 0;
  for (unsigned char c : raw) {
    if (++n > 200) {
      out += "...";
      break;
    }
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      out += hex;
    }
  }
  return out + "\"";
}

// "1 TiB", "1 EiB", "1.5 GiB", "512 bytes".
std::string HumanBytes(uint64_t n) {
  static const char* kUnits[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int unit = 0;
  double v = static_cast<double>(n);
  while (v >= 1024 && unit < 6) {
    v /= 1024;
    ++unit;
  }
  char buf[48];
  if (unit == 0 || v == static_cast<double>(static_cast<uint64_t>(v))) {
    std::snprintf(buf, sizeof buf, "%llu %s", static_cast<unsigned long long>(v), kUnits[unit]);
  } else {
    std::snprintf(buf, sizeof buf, "%.1f %s", v, kUnits[unit]);
  }
  return buf;
}

std::string SizeTooLarge(const std::string& what, uint64_t size, uint64_t limit) {
  return what + " " + std::to_string(size) + " bytes (" + HumanBytes(size) + ") exceeds the limit of " +
         std::to_string(limit) + " bytes (" + HumanBytes(limit) + ")";
}

// An open read-only file: its size and a bounded positional read.
class ImageFile {
 public:
  ~ImageFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  Status Open(const std::string& path) {
    // O_NONBLOCK: opening a FIFO must not hang (it is then refused as not a regular file).
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd_ < 0) {
      int e = errno;
      if (e == ENOENT) return Status::NotFound("cannot open " + path + ": " + std::strerror(e));
      return Status::Internal("cannot open " + path + ": " + std::strerror(e));
    }
    struct stat st;
    if (::fstat(fd_, &st) != 0) return Status::Internal("cannot stat " + path + ": " + std::strerror(errno));
    if (!S_ISREG(st.st_mode)) return Reject("not a disk image: " + path + " is not a regular file");
    size_ = static_cast<uint64_t>(st.st_size);
    return Status::Ok();
  }
  uint64_t size() const { return size_; }
  // Reads up to n bytes at offset (fewer at end of file).
  Result<std::string> ReadAt(uint64_t offset, size_t n) const {
    std::string buf(n, '\0');
    size_t got = 0;
    while (got < n) {
      ssize_t r = ::pread(fd_, buf.data() + got, n - got, static_cast<off_t>(offset + got));
      if (r < 0) {
        if (errno == EINTR) continue;
        return Status::Internal(std::string("cannot read image: ") + std::strerror(errno));
      }
      if (r == 0) break;
      got += static_cast<size_t>(r);
    }
    buf.resize(got);
    return buf;
  }

 private:
  int fd_ = -1;
  uint64_t size_ = 0;
};

// ------------------------------------------------------------- detection

// What the bytes are. `format` is "qcow2", "raw" (an ext superblock), "iso",
// the name of a refused format, or "" (not a disk image); `what` describes
// it for messages; `reason` says why a refused format is refused.
struct Detected {
  std::string format;
  std::string what;
  std::string reason;
};

// The first extent path of a VMDK text descriptor ("RW 2048 FLAT \"path\" 0").
std::string VmdkExtentPath(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    std::string_view line = text.substr(pos, eol == std::string_view::npos ? std::string_view::npos : eol - pos);
    pos = eol == std::string_view::npos ? text.size() : eol + 1;
    while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
    if (!(line.starts_with("RW ") || line.starts_with("RDONLY ") || line.starts_with("NOACCESS "))) continue;
    size_t open = line.find('"');
    if (open == std::string_view::npos) continue;
    size_t close = line.find('"', open + 1);
    if (close == std::string_view::npos) continue;
    return std::string(line.substr(open + 1, close - open - 1));
  }
  return "";
}

// QEMU's own rule for a VMDK descriptor: blank and comment lines, then a
// "version=" line; plus the customary "# Disk DescriptorFile" header.
bool LooksLikeVmdkDescriptor(std::string_view b) {
  std::string_view head = b.substr(0, 4096);
  if (head.find("# Disk DescriptorFile") != std::string_view::npos || HasAt(b, 0, "# Disk Descriptor")) return true;
  size_t pos = 0;
  while (pos < head.size()) {
    while (pos < head.size() && (head[pos] == ' ' || head[pos] == '\t' || head[pos] == '\r')) ++pos;
    if (pos >= head.size()) return false;
    if (head[pos] == '\n') {
      ++pos;
      continue;
    }
    if (head[pos] == '#') {
      size_t eol = head.find('\n', pos);
      if (eol == std::string_view::npos) return false;
      pos = eol + 1;
      continue;
    }
    return head.substr(pos).starts_with("version=");
  }
  return false;
}

Detected Refused(std::string format, std::string what, std::string reason) {
  return {std::move(format), std::move(what), std::move(reason)};
}

// Formats recognized by a magic at the start of the file (or a footer at its
// end) that berth refuses. Checked before the accepted formats, so that a
// polyglot is refused.
Detected DetectRefused(std::string_view b, std::string_view tail) {
  static const std::string kOnlyQcow2AndRaw = "berth accepts only self-contained qcow2 and raw images";
  if (HasAt(b, 0, "KDMV")) {
    return Refused("vmdk", "VMDK sparse image",
                   "VMDK images can reference other host files (extents, parent disks); " + kOnlyQcow2AndRaw);
  }
  if (HasAt(b, 0, "COWD")) {
    return Refused("vmdk", "VMDK COWD (ESX sparse) image",
                   "VMDK images can reference other host files; " + kOnlyQcow2AndRaw);
  }
  if (LooksLikeVmdkDescriptor(b)) {
    std::string extent = VmdkExtentPath(b.substr(0, 64 * 1024));
    std::string what = "VMDK descriptor, which can reference host files";
    if (!extent.empty()) what += " (it names " + Quote(extent) + ")";
    return Refused("vmdk", what, "a descriptor makes QEMU open the files it names; " + kOnlyQcow2AndRaw);
  }
  if (HasAt(b, 0, "conectix")) {
    return Refused("vhd", "VHD (VirtualPC) image", "VHD images are not supported; " + kOnlyQcow2AndRaw);
  }
  if (HasAt(b, 0, "vhdxfile")) {
    return Refused("vhdx", "VHDX image", "VHDX images can reference a parent disk; " + kOnlyQcow2AndRaw);
  }
  if ((b.size() >= 0x44 && Le32(b, 0x40) == 0xbeda107f) || HasAt(b, 0, "<<< Oracle VM VirtualBox Disk Image >>>") ||
      HasAt(b, 0, "<<< Sun xVM VirtualBox Disk Image >>>") || HasAt(b, 0, "<<< QEMU VM Virtual Disk Image >>>")) {
    return Refused("vdi", "VirtualBox VDI image", "VDI images are not supported; " + kOnlyQcow2AndRaw);
  }
  if (HasAt(b, 0, std::string_view("QED\0", 4))) {
    return Refused("qed", "QED image", "QED images can reference a backing file; " + kOnlyQcow2AndRaw);
  }
  if (HasAt(b, 0, "LUKS\xba\xbe")) {
    return Refused("luks", "LUKS encrypted volume", "encrypted images are not supported; " + kOnlyQcow2AndRaw);
  }
  if (HasAt(b, 0, "WithoutFreeSpace") || HasAt(b, 0, "WithouFreSpacExt") || HasAt(b, 0, "ParallelsDiskImage")) {
    return Refused("parallels", "Parallels disk image", "Parallels images are not supported; " + kOnlyQcow2AndRaw);
  }
  if (HasAt(b, 0, "Bochs Virtual HD Image")) {
    return Refused("bochs", "Bochs disk image", "Bochs images are not supported; " + kOnlyQcow2AndRaw);
  }
  if (HasAt(b, 0, "#!/bin/sh\n#V2.0 Format") || HasAt(b, 0, "cloop")) {
    return Refused("cloop", "cloop image", "cloop images are not supported; " + kOnlyQcow2AndRaw);
  }
  // A fixed VHD is raw data with a 512-byte footer (511 in old VirtualPC).
  if (HasAt(tail, tail.size() >= 512 ? tail.size() - 512 : 0, "conectix") ||
      (tail.size() >= 511 && HasAt(tail, tail.size() - 511, "conectix"))) {
    return Refused("vhd", "VHD (VirtualPC) image (footer at the end of the file)",
                   "VHD images are not supported; " + kOnlyQcow2AndRaw);
  }
  if (HasAt(tail, 0, "koly")) return Refused("dmg", "DMG image", "DMG images are not supported; " + kOnlyQcow2AndRaw);
  return {};
}

// Best-effort name for data that is not a disk image, for the error message.
std::string DescribeOther(std::string_view b, uint64_t file_size) {
  if (HasAt(b, 257, "ustar")) return "tar archive";
  if (HasAt(b, 0, "\x1f\x8b")) return "gzip data";
  if (HasAt(b, 0, std::string_view("\xfd" "7zXZ\0", 6))) return "xz data";
  if (HasAt(b, 0, "\x28\xb5\x2f\xfd")) return "zstd data";
  if (HasAt(b, 0, "BZh")) return "bzip2 data";
  if (HasAt(b, 0, "PK\x03\x04")) return "zip archive";
  if (HasAt(b, 0, "7z\xbc\xaf\x27\x1c")) return "7-zip archive";
  if (HasAt(b, 0, "\x7f" "ELF")) return "ELF executable";
  if (HasAt(b, 0, "hsqs")) return "squashfs filesystem (only ext2/3/4 is supported)";
  if (HasAt(b, 0, "XFSB")) return "XFS filesystem (only ext2/3/4 is supported)";
  if (HasAt(b, 0x10040, "_BHRfS_M")) return "btrfs filesystem (only ext2/3/4 is supported)";
  if (HasAt(b, 4086, "SWAPSPACE2") || HasAt(b, 4086, "SWAP-SPACE")) return "Linux swap area";
  if (HasAt(b, 512, "EFI PART")) return "partitioned disk (GPT); expected a bare filesystem";
  if (b.size() >= 512 && static_cast<unsigned char>(b[510]) == 0x55 && static_cast<unsigned char>(b[511]) == 0xAA) {
    return "partitioned disk or boot sector (MBR); expected a bare filesystem";
  }
  if (file_size < kExtSuperblockOffset + 1024) {
    return "a " + std::to_string(file_size) + "-byte file, too small for a filesystem";
  }
  return "unrecognized data";
}

Detected Detect(std::string_view b, std::string_view tail, uint64_t file_size) {
  if (file_size == 0) return {"", "empty file", ""};
  if (HasAt(b, 0, std::string_view(kQcowMagic, 4))) {
    if (b.size() >= 8 && Be32(b, 4) == 1) {
      return Refused("qcow", "qcow version 1 image", "qcow version 1 images are not supported; convert to qcow2");
    }
    return {"qcow2", "qcow2 image", ""};
  }
  Detected refused = DetectRefused(b, tail);
  if (!refused.format.empty()) return refused;
  if (HasAt(b, 0x8001, "CD001")) return {"iso", "ISO 9660 image", ""};
  if (b.size() >= kExtSuperblockOffset + 1024 && Le16(b, kExtSuperblockOffset + 56) == kExtMagic) {
    return {"raw", "raw ext2/3/4 filesystem image", ""};
  }
  return {"", DescribeOther(b, file_size), ""};
}

// A refusal for whatever Detect found that is not accepted.
Status RejectDetected(const Detected& d) {
  if (d.format.empty()) return NotADiskImage(d.what);
  return Reject("refused image format: " + d.what + "; " + d.reason);
}

// The uploader's declared format must be what the content is.
Status CheckClaim(const Detected& d, const InspectOptions& options) {
  const std::string& claim = options.claimed_format;
  if (claim.empty()) return Status::Ok();
  if (claim != "raw" && claim != "qcow2" && claim != "iso") {
    return Reject("declared format '" + claim + "' is not one berth accepts (raw or qcow2)");
  }
  bool matches = claim == d.format || (d.format == "iso" && claim == "raw");
  if (matches) return Status::Ok();
  std::string article = std::string_view("aeiouAEIOU").find(d.what.front()) != std::string_view::npos ? "an " : "a ";
  std::string found = d.format.empty() ? "not a disk image (found: " + d.what + ")" : article + d.what;
  std::string msg = "image was uploaded as " + claim + " but is " + found;
  if (d.format == "qcow2" || d.format == "raw") {
    msg += "; declare its real format";
  } else if (!d.format.empty() && !d.reason.empty()) {
    msg += "; " + d.reason;
  }
  return Reject(msg);
}

// ------------------------------------------------------------------ qcow2

struct Qcow2Extension {
  uint32_t type = 0;
  std::string_view data;
};

Result<ImageInfo> InspectQcow2Header(const ImageFile& file, std::string_view b, const InspectOptions& options) {
  constexpr size_t kV2HeaderLen = 72;
  constexpr size_t kV3MinHeaderLen = 104;
  if (b.size() < kV2HeaderLen) {
    return Reject("truncated qcow2 header: the file has " + std::to_string(file.size()) + " bytes, a header needs " +
                  std::to_string(kV2HeaderLen));
  }
  uint32_t version = Be32(b, 4);
  if (version != 2 && version != 3) return Reject("unsupported qcow2 version " + std::to_string(version));

  // A backing file is the most dangerous reference: refuse it first, naming it.
  uint64_t backing_offset = Be64(b, 8);
  if (backing_offset != 0) {
    uint32_t backing_size = Be32(b, 16);
    std::string name;
    if (backing_size > 0 && backing_size <= 1023 && backing_offset < file.size()) {
      auto read = file.ReadAt(backing_offset, backing_size);
      if (read.ok()) name = *read;
    }
    std::string named = name.empty() ? "a backing file" : "a backing file (" + Quote(name) + ")";
    return Reject("qcow2 image names " + named + "; images with backing files are refused");
  }
  if (version == 3 && b.size() < kV3MinHeaderLen) {
    return Reject("truncated qcow2 v3 header: the file has " + std::to_string(file.size()) + " bytes, a header needs " +
                  std::to_string(kV3MinHeaderLen));
  }
  uint32_t cluster_bits = Be32(b, 20);
  if (cluster_bits < 9 || cluster_bits > 21) {
    return Reject("qcow2 cluster_bits " + std::to_string(cluster_bits) + " outside 9..21");
  }
  uint64_t cluster_size = uint64_t{1} << cluster_bits;
  uint32_t crypt_method = Be32(b, 32);
  if (crypt_method != 0) {
    return Reject("qcow2 image is encrypted (crypt_method " + std::to_string(crypt_method) +
                  "); encrypted images are refused");
  }

  size_t ext_start = kV2HeaderLen;
  uint64_t incompatible = 0;
  if (version == 3) {
    incompatible = Be64(b, 72);
    uint32_t refcount_order = Be32(b, 96);
    if (refcount_order > 6) return Reject("qcow2 refcount_order " + std::to_string(refcount_order) + " is invalid");
    uint32_t header_length = Be32(b, 100);
    if (header_length < kV3MinHeaderLen || header_length % 8 != 0 || header_length > cluster_size) {
      return Reject("qcow2 header_length " + std::to_string(header_length) + " is invalid");
    }
    ext_start = header_length;
  }

  // Header extensions live in the first cluster; walk all of them so that an
  // external data file name or encryption header cannot hide there.
  if (file.size() < cluster_size) {
    return Reject("truncated qcow2 image: the file has " + std::to_string(file.size()) +
                  " bytes, less than its first cluster (" + std::to_string(cluster_size) + ")");
  }
  std::string first_cluster;
  std::string_view area = b;
  if (cluster_size > b.size()) {
    BERTH_ASSIGN_OR_RETURN(first_cluster, file.ReadAt(0, cluster_size));
    area = first_cluster;
  }
  area = area.substr(0, std::min<uint64_t>(cluster_size, area.size()));
  std::vector<Qcow2Extension> extensions;
  bool terminated = false;
  for (uint64_t off = ext_start; extensions.size() < 4096 && off + 8 <= area.size();) {
    uint32_t type = Be32(area, off);
    uint64_t len = Be32(area, off + 4);
    if (type == 0) {
      terminated = true;
      break;
    }
    if (off + 8 + len > area.size()) break;
    extensions.push_back({type, area.substr(off + 8, len)});
    off += 8 + ((len + 7) & ~uint64_t{7});
  }
  auto data_file_name = [&]() -> std::string {
    for (const auto& e : extensions) {
      if (e.type == kQcow2DataFileExtension) return e.data.empty() ? "" : " (" + Quote(e.data) + ")";
    }
    return "";
  };

  constexpr uint64_t kDirty = 1u << 0, kCorrupt = 1u << 1, kExternalData = 1u << 2, kCompressionType = 1u << 3,
                     kExtendedL2 = 1u << 4;
  if (incompatible & kExternalData) {
    return Reject("qcow2 image uses an external data file" + data_file_name() +
                  "; images with external data files are refused");
  }
  if (incompatible & kCorrupt) return Reject("qcow2 image is marked corrupt");
  uint64_t unknown = incompatible & ~(kDirty | kCompressionType | kExtendedL2);
  if (unknown != 0) {
    char hex[32];
    std::snprintf(hex, sizeof hex, "0x%llx", static_cast<unsigned long long>(unknown));
    return Reject(std::string("qcow2 image has unknown incompatible feature bits ") + hex +
                  "; berth refuses features it cannot vet");
  }
  for (const auto& e : extensions) {
    if (e.type == kQcow2DataFileExtension) {
      return Reject("qcow2 image names an external data file" + data_file_name() +
                    "; images with external data files are refused");
    }
    if (e.type == kQcow2FullDiskEncryptionExtension) {
      return Reject("qcow2 image has a full disk encryption header; encrypted images are refused");
    }
  }
  if (!terminated) {
    return Reject("qcow2 header extensions are malformed (no end marker within the first cluster)");
  }

  uint64_t virtual_size = Be64(b, 24);
  if (virtual_size == 0) return Reject("qcow2 virtual size is 0");
  if (virtual_size > options.max_virtual_size_bytes) {
    return Reject(SizeTooLarge("qcow2 virtual size", virtual_size, options.max_virtual_size_bytes));
  }
  ImageInfo info;
  info.format = "qcow2";
  info.size_bytes = file.size();
  info.virtual_size_bytes = virtual_size;
  return info;
}

// -------------------------------------------------------------------- raw

Status CheckRawSize(uint64_t size, const InspectOptions& options) {
  if (size % 512 != 0) {
    return Reject("raw image size " + std::to_string(size) + " is not a multiple of 512 bytes");
  }
  if (size > options.max_virtual_size_bytes) {
    return Reject(SizeTooLarge("raw image size", size, options.max_virtual_size_bytes));
  }
  return Status::Ok();
}

Result<ImageInfo> InspectRawExt(const ImageFile& file, std::string_view b, const InspectOptions& options) {
  const size_t sb = kExtSuperblockOffset;
  uint64_t size = file.size();
  BERTH_RETURN_IF_ERROR(CheckRawSize(size, options));

  uint32_t log_block_size = Le32(b, sb + 24);
  if (log_block_size > 6) return Reject("ext superblock is corrupt (block size)");
  uint64_t block_size = uint64_t{1024} << log_block_size;
  uint32_t feature_compat = Le32(b, sb + 0x5C);
  uint32_t feature_incompat = Le32(b, sb + 0x60);
  uint32_t feature_ro_compat = Le32(b, sb + 0x64);

  constexpr uint32_t kCompatHasJournal = 0x4;
  constexpr uint32_t kIncompatJournalDev = 0x8, kIncompatExtents = 0x40, kIncompat64Bit = 0x80,
                     kIncompatFlexBg = 0x200, kIncompatMmp = 0x100, kIncompatEaInode = 0x400,
                     kIncompatCsumSeed = 0x2000, kIncompatLargeDir = 0x4000, kIncompatInlineData = 0x8000,
                     kIncompatEncrypt = 0x10000, kIncompatCasefold = 0x20000;
  constexpr uint32_t kRoCompatHugeFile = 0x8, kRoCompatGdtCsum = 0x10, kRoCompatDirNlink = 0x20,
                     kRoCompatExtraIsize = 0x40, kRoCompatQuota = 0x100, kRoCompatBigalloc = 0x200,
                     kRoCompatMetadataCsum = 0x400;

  if (feature_incompat & kIncompatJournalDev) {
    return NotADiskImage("an ext external journal device, not a filesystem");
  }
  uint64_t blocks = Le32(b, sb + 0x04);
  if (feature_incompat & kIncompat64Bit) blocks |= uint64_t{Le32(b, sb + 0x150)} << 32;
  if (blocks == 0) return Reject("ext superblock is corrupt (0 blocks)");
  if (blocks > size / block_size) {
    return Reject("ext filesystem is larger than the image file (" + std::to_string(size) +
                  " bytes); the image is truncated");
  }

  ImageInfo info;
  info.format = "raw";
  info.size_bytes = size;
  info.virtual_size_bytes = size;
  const uint32_t ext4_incompat = kIncompatExtents | kIncompat64Bit | kIncompatFlexBg | kIncompatMmp |
                                 kIncompatEaInode | kIncompatCsumSeed | kIncompatLargeDir |
                                 kIncompatInlineData | kIncompatEncrypt | kIncompatCasefold;
  const uint32_t ext4_ro_compat = kRoCompatHugeFile | kRoCompatGdtCsum | kRoCompatDirNlink | kRoCompatExtraIsize |
                                  kRoCompatQuota | kRoCompatBigalloc | kRoCompatMetadataCsum;
  if ((feature_incompat & ext4_incompat) || (feature_ro_compat & ext4_ro_compat)) {
    info.filesystem = "ext4";
  } else if (feature_compat & kCompatHasJournal) {
    info.filesystem = "ext3";
  } else {
    info.filesystem = "ext2";
  }
  return info;
}

// ---------------------------------------------------------------- qemu-img

// Keys qemu-img info emits when an image refers to other files.
bool JsonHasForbiddenKey(const nlohmann::json& j, std::string* which, std::string* value, int depth = 0) {
  if (depth > 16) return false;
  if (j.is_object()) {
    for (const auto& [key, v] : j.items()) {
      if (key == "backing-filename" || key == "full-backing-filename" || key == "backing-filename-format" ||
          key == "backing-image" || key == "data-file" || key == "data_file" || key == "data-file-raw") {
        *which = key;
        *value = v.is_string() ? v.get<std::string>() : "";
        return true;
      }
      if (JsonHasForbiddenKey(v, which, value, depth + 1)) return true;
    }
  } else if (j.is_array()) {
    for (const auto& v : j) {
      if (JsonHasForbiddenKey(v, which, value, depth + 1)) return true;
    }
  }
  return false;
}

// Runs one qemu-img command under the options' timeout and limits.
Result<CommandResult> RunQemuImg(Env* env, const std::vector<std::string>& argv, const InspectOptions& options) {
  auto run = env->RunLimited(argv, {}, options.qemu_img_timeout_ms, options.qemu_img_limits);
  if (!run.ok()) return run.status().WithContext("qemu-img is needed to validate images");
  return run;
}

// Explains a qemu-img exit that is not a verdict about the image's content.
std::string QemuImgFailure(const std::string& what, const CommandResult& r) {
  if (r.exit_code == 128 + SIGXCPU || r.exit_code == 128 + SIGKILL) {
    return "qemu-img " + what + " was stopped by its CPU time limit while reading the image";
  }
  std::string line = FirstLine(r.err);
  if (line.empty()) line = "exit status " + std::to_string(r.exit_code);
  return "qemu-img " + what + " cannot read the image: " + line;
}

Status QemuImgCheckQcow2(Env* env, const std::string& path, const InspectOptions& options) {
  BERTH_ASSIGN_OR_RETURN(CommandResult r,
                         RunQemuImg(env, {"qemu-img", "check", "-f", "qcow2", "--output=json", SafePathArg(path)},
                                    options));
  if (r.exit_code == 0) return Status::Ok();
  nlohmann::json j = nlohmann::json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  auto count = [&](const char* key) -> uint64_t {
    if (!j.is_object()) return 0;
    auto it = j.find(key);
    return it != j.end() && it->is_number_unsigned() ? it->get<uint64_t>() : 0;
  };
  switch (r.exit_code) {
    case 2:
      return Reject("qemu-img check found " + std::to_string(count("corruptions")) +
                    " corruptions in the qcow2 image; repair it before uploading");
    case 3:
      return Reject("qemu-img check found " + std::to_string(count("leaks")) +
                    " leaked clusters in the qcow2 image; repair it (qemu-img check -r leaks) before uploading");
    case 63:
      return Reject("qemu-img check cannot check this qcow2 image");
    default:
      return Reject(QemuImgFailure("check", r));
  }
}

}  // namespace

std::string SafePathArg(const std::string& path) {
  if (path.empty() || path[0] == '/') return path;
  return "./" + path;
}

Result<ImageInfo> InspectImageHeader(const std::string& path, const InspectOptions& options) {
  ImageFile file;
  BERTH_RETURN_IF_ERROR(file.Open(path));
  BERTH_ASSIGN_OR_RETURN(std::string prefix, file.ReadAt(0, kPrefixBytes));
  std::string tail = prefix;  // the last 512 bytes (or the whole of a smaller file)
  if (file.size() >= 512) {
    BERTH_ASSIGN_OR_RETURN(tail, file.ReadAt(file.size() - 512, 512));
  }

  Detected d = Detect(prefix, tail, file.size());
  BERTH_RETURN_IF_ERROR(CheckClaim(d, options));
  if (d.format == "qcow2") return InspectQcow2Header(file, prefix, options);
  if (d.format == "raw") return InspectRawExt(file, prefix, options);
  if (d.format == "iso") {
    if (!options.allow_iso) {
      return Reject("refused image format: ISO 9660 image; ISO images are accepted only where explicitly "
                    "allowed (cloud-init seeds)");
    }
    BERTH_RETURN_IF_ERROR(CheckRawSize(file.size(), options));
    ImageInfo info;
    info.format = "raw";
    info.size_bytes = info.virtual_size_bytes = file.size();
    info.filesystem = "iso9660";
    return info;
  }
  return RejectDetected(d);
}

Result<ImageInfo> CrossCheckWithQemuImg(Env* env, const std::string& path, const ImageInfo& header,
                                        const InspectOptions& options) {
  if (header.format != "raw" && header.format != "qcow2") {
    return Status::Internal("CrossCheckWithQemuImg: unexpected format '" + header.format + "'");
  }
  // -f always: qemu-img must never probe the format of a hostile file.
  BERTH_ASSIGN_OR_RETURN(
      CommandResult r,
      RunQemuImg(env, {"qemu-img", "info", "-f", header.format, "--output=json", SafePathArg(path)}, options));
  if (r.exit_code != 0) return Reject(QemuImgFailure("info", r));
  nlohmann::json j = nlohmann::json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Status::Internal("qemu-img info printed invalid JSON");
  // json::value throws on a type mismatch: look the fields up by hand.
  auto format_it = j.find("format");
  std::string qemu_format = format_it != j.end() && format_it->is_string() ? format_it->get<std::string>() : "";
  if (qemu_format != header.format) {
    return Reject("qemu-img reads the image as '" + qemu_format + "', not as " + header.format);
  }
  std::string key, value;
  if (JsonHasForbiddenKey(j, &key, &value)) {
    std::string named = value.empty() ? "" : " (" + Quote(value) + ")";
    if (key.find("backing") != std::string::npos) {
      return Reject("qemu-img reports a backing file" + named + "; images with backing files are refused");
    }
    return Reject("qemu-img reports an external data file" + named + "; images with external data files are refused");
  }
  if (auto enc = j.find("encrypted"); enc != j.end() && !(enc->is_boolean() && !enc->get<bool>())) {
    return Reject("qemu-img reports the image as encrypted; encrypted images are refused");
  }
  auto vs = j.find("virtual-size");
  if (vs == j.end() || !vs->is_number_unsigned()) return Status::Internal("qemu-img info did not report virtual-size");
  uint64_t qemu_virtual_size = vs->get<uint64_t>();
  if (qemu_virtual_size != header.virtual_size_bytes) {
    return Reject("the image header and qemu-img disagree about the virtual size (" +
                  std::to_string(header.virtual_size_bytes) + " vs " + std::to_string(qemu_virtual_size) + " bytes)");
  }
  if (header.format == "qcow2") BERTH_RETURN_IF_ERROR(QemuImgCheckQcow2(env, path, options));
  return header;
}

Result<ImageInfo> InspectImage(Env* env, const std::string& path, const InspectOptions& options) {
  BERTH_ASSIGN_OR_RETURN(ImageInfo header, InspectImageHeader(path, options));
  return CrossCheckWithQemuImg(env, path, header, options);
}

}  // namespace berth::images
