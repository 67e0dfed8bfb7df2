#include "images/image_format.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <string_view>

namespace berth::images {
namespace {

// Env has no positional-read primitive and reading a multi-GiB image through
// Env::ReadFile just to look at its header would be absurd, so inspection
// reads the prefix with plain POSIX calls (the only OS access here that does
// not go through Env; qemu-img still goes through Env::Run).
constexpr size_t kPrefixBytes = 128 * 1024;  // covers ISO (32 KiB) and btrfs (64 KiB) magics
constexpr int64_t kQemuImgTimeoutMs = 30'000;

constexpr char kQcowMagic[] = "QFI\xfb";
constexpr uint32_t kExtMagic = 0xEF53;
constexpr size_t kExtSuperblockOffset = 1024;

Status Reject(const std::string& message) { return Status::InvalidArgument("image", message); }

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

// An open read-only file: its size and a bounded positional read.
class ImageFile {
 public:
  ~ImageFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  Status Open(const std::string& path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
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

// Formats that must be refused even if the file also looks like something we
// accept (a polyglot), because some tool might probe them and follow their
// references to other host files.
std::string DetectForeignHeader(std::string_view b) {
  if (HasAt(b, 0, "KDMV")) return "VMDK sparse extent";
  if (HasAt(b, 0, "COWD")) return "VMDK COWD (ESX sparse) extent";
  // A VMDK descriptor is text and names extent files on the host by path.
  if (b.substr(0, 1024).find("# Disk DescriptorFile") != std::string_view::npos ||
      HasAt(b, 0, "# Disk Descriptor")) {
    return "VMDK descriptor, which can reference host files";
  }
  if (HasAt(b, 0, "conectix")) return "VHD (VirtualPC) image";
  if (HasAt(b, 0, "vhdxfile")) return "VHDX image";
  if (b.size() >= 0x44 && Le32(b, 0x40) == 0xbeda107f) return "VirtualBox VDI image";
  if (HasAt(b, 0, "<<< Oracle VM VirtualBox Disk Image >>>") || HasAt(b, 0, "<<< Sun xVM VirtualBox Disk Image >>>")) {
    return "VirtualBox VDI image";
  }
  if (HasAt(b, 0, std::string_view("QED\0", 4))) return "QED image, which can reference a backing file";
  if (HasAt(b, 0, "QFI\xfb")) return "qcow image";
  if (HasAt(b, 0, "LUKS\xba\xbe")) return "LUKS encrypted volume";
  if (HasAt(b, 0, "WithoutFreeSpace") || HasAt(b, 0, "ParallelsDiskImage")) return "Parallels disk image";
  if (HasAt(b, 0, "cloop")) return "cloop image";
  return "";
}

// Best-effort name for data we do not accept, for the error message.
std::string Describe(std::string_view b, uint64_t file_size, std::string_view tail) {
  if (file_size == 0) return "empty file";
  std::string foreign = DetectForeignHeader(b);
  if (!foreign.empty()) return foreign;
  if (HasAt(tail, 0, "conectix")) return "fixed VHD image without an ext filesystem";
  if (HasAt(tail, 0, "koly")) return "DMG image";
  if (HasAt(b, 0x8001, "CD001")) return "ISO 9660 image";
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
  if (file_size < kExtSuperblockOffset + 1024) return "a " + std::to_string(file_size) + "-byte file, too small for a filesystem";
  return "unrecognized data";
}

// Keys qemu-img info emits when an image refers to other files.
bool JsonHasForbiddenKey(const nlohmann::json& j, std::string* which, int depth = 0) {
  if (depth > 16) return false;
  if (j.is_object()) {
    for (const auto& [key, value] : j.items()) {
      if (key == "backing-filename" || key == "full-backing-filename" || key == "backing-filename-format" ||
          key == "data-file" || key == "data-file-raw" || key == "backing-image") {
        *which = key;
        return true;
      }
      if (JsonHasForbiddenKey(value, which, depth + 1)) return true;
    }
  } else if (j.is_array()) {
    for (const auto& v : j) {
      if (JsonHasForbiddenKey(v, which, depth + 1)) return true;
    }
  }
  return false;
}

Result<ImageInfo> InspectQcow2(Env* env, const std::string& path, const ImageFile& file, std::string_view b) {
  constexpr size_t kV2HeaderLen = 72;
  constexpr size_t kV3MinHeaderLen = 104;
  if (b.size() < kV2HeaderLen) return Reject("truncated qcow2 header");
  uint32_t version = Be32(b, 4);
  if (version == 1) return Reject("qcow version 1 images are not supported; convert to qcow2");
  if (version != 2 && version != 3) return Reject("unsupported qcow2 version " + std::to_string(version));

  if (Be64(b, 8) != 0) return Reject("qcow2 image has a backing file; images must be self-contained");
  uint32_t cluster_bits = Be32(b, 20);
  if (cluster_bits < 9 || cluster_bits > 21) {
    return Reject("qcow2 cluster_bits " + std::to_string(cluster_bits) + " outside 9..21");
  }
  uint64_t cluster_size = uint64_t{1} << cluster_bits;
  uint64_t virtual_size = Be64(b, 24);
  if (virtual_size == 0) return Reject("qcow2 virtual size is 0");
  if (virtual_size > kMaxVirtualSizeBytes) {
    return Reject("qcow2 virtual size " + std::to_string(virtual_size) + " exceeds the 1 TiB limit");
  }
  if (Be32(b, 32) != 0) return Reject("qcow2 image is encrypted; encrypted images are not supported");

  size_t ext_start = kV2HeaderLen;
  if (version == 3) {
    if (b.size() < kV3MinHeaderLen) return Reject("truncated qcow2 v3 header");
    uint64_t incompatible = Be64(b, 72);
    constexpr uint64_t kDirty = 1u << 0, kCorrupt = 1u << 1, kExternalData = 1u << 2, kCompressionType = 1u << 3,
                       kExtendedL2 = 1u << 4;
    if (incompatible & kExternalData) {
      return Reject("qcow2 image uses an external data file; images must be self-contained");
    }
    if (incompatible & kCorrupt) return Reject("qcow2 image is marked corrupt");
    uint64_t unknown = incompatible & ~(kDirty | kCompressionType | kExtendedL2);
    if (unknown != 0) {
      char hex[32];
      std::snprintf(hex, sizeof hex, "0x%llx", static_cast<unsigned long long>(unknown));
      return Reject(std::string("qcow2 image has unknown incompatible features ") + hex);
    }
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
  size_t limit = static_cast<size_t>(std::min<uint64_t>(cluster_size, file.size()));
  std::string first_cluster;
  std::string_view area = b;
  if (limit > b.size()) {
    BERTH_ASSIGN_OR_RETURN(first_cluster, file.ReadAt(0, limit));
    area = first_cluster;
  }
  limit = std::min(limit, area.size());
  size_t off = ext_start;
  bool terminated = false;
  for (int n = 0; n < 4096 && off + 8 <= limit; ++n) {
    uint32_t type = Be32(area, off);
    uint64_t len = Be32(area, off + 4);
    if (type == 0) {
      terminated = true;
      break;
    }
    if (type == 0x44415441) {
      return Reject("qcow2 image names an external data file; images must be self-contained");
    }
    if (type == 0x0537be77) return Reject("qcow2 image has a full disk encryption header; encrypted images are not supported");
    off += 8 + ((len + 7) & ~uint64_t{7});
  }
  if (!terminated) return Reject("qcow2 header extensions are malformed (no end marker within the first cluster)");

  // Cross-check with QEMU's own parser: what qemu-img reports is what QEMU
  // will do with the file. -U: store images may be open in running guests.
  auto run = env->Run({"qemu-img", "info", "-U", "--output=json", "-f", "qcow2", SafePathArg(path)}, {},
                      kQemuImgTimeoutMs);
  if (!run.ok()) return run.status().WithContext("qemu-img is needed to validate qcow2 images");
  if (run->exit_code != 0) {
    return Reject("qemu-img cannot read the qcow2 image: " + FirstLine(run->err));
  }
  nlohmann::json j = nlohmann::json::parse(run->out, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Status::Internal("qemu-img info printed invalid JSON");
  if (j.value("format", std::string()) != "qcow2") return Reject("qemu-img does not see a qcow2 image");
  std::string key;
  if (JsonHasForbiddenKey(j, &key)) {
    if (key.find("backing") != std::string::npos) {
      return Reject("qcow2 image has a backing file; images must be self-contained");
    }
    return Reject("qcow2 image uses an external data file; images must be self-contained");
  }
  if (j.value("encrypted", false)) return Reject("qcow2 image is encrypted; encrypted images are not supported");
  auto vs = j.find("virtual-size");
  if (vs == j.end() || !vs->is_number_unsigned()) return Status::Internal("qemu-img info did not report virtual-size");
  uint64_t qemu_virtual_size = vs->get<uint64_t>();
  if (qemu_virtual_size != virtual_size) {
    return Reject("qcow2 header and qemu-img disagree about the virtual size");
  }
  ImageInfo info;
  info.format = "qcow2";
  info.size_bytes = file.size();
  info.virtual_size_bytes = qemu_virtual_size;
  return info;
}

Result<ImageInfo> InspectRawExt(const ImageFile& file, std::string_view b) {
  const size_t sb = kExtSuperblockOffset;
  uint64_t size = file.size();
  if (size % 512 != 0) {
    return Reject("raw image size " + std::to_string(size) + " is not a multiple of 512 bytes");
  }
  if (size > kMaxVirtualSizeBytes) return Reject("raw image size " + std::to_string(size) + " exceeds the 1 TiB limit");

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

}  // namespace

std::string SafePathArg(const std::string& path) {
  if (path.empty() || path[0] == '/') return path;
  return "./" + path;
}

Result<ImageInfo> InspectImage(Env* env, const std::string& path) {
  ImageFile file;
  BERTH_RETURN_IF_ERROR(file.Open(path));
  BERTH_ASSIGN_OR_RETURN(std::string prefix, file.ReadAt(0, kPrefixBytes));
  std::string_view b = prefix;

  if (file.size() == 0) return NotADiskImage("empty file");
  if (HasAt(b, 0, std::string_view(kQcowMagic, 4))) return InspectQcow2(env, path, file, b);

  std::string foreign = DetectForeignHeader(b);
  if (!foreign.empty()) return NotADiskImage(foreign);

  if (b.size() >= kExtSuperblockOffset + 1024 && Le16(b, kExtSuperblockOffset + 56) == kExtMagic) {
    return InspectRawExt(file, b);
  }
  std::string tail;
  if (file.size() >= 512) {
    BERTH_ASSIGN_OR_RETURN(tail, file.ReadAt(file.size() - 512, 512));
  }
  return NotADiskImage(Describe(b, file.size(), tail));
}

}  // namespace berth::images
