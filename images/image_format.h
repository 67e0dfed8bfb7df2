// Disk image inspection: decides whether a file is a disk image berth will
// hand to QEMU, treating every file as hostile.
//
// Accepted:
//   - qcow2 (version 2 or 3) that is self-contained: no backing file, no
//     external data file, not encrypted, no unknown incompatible features,
//     virtual size <= 1 TiB, cluster_bits in 9..21. The header is parsed here
//     and then cross-checked with `qemu-img info` (run through Env::Run).
//   - raw images that are a bare ext2/3/4 filesystem (superblock magic 0xEF53
//     at byte 1080), non-empty, size a multiple of 512, <= 1 TiB.
// Everything else (VMDK, VHD, VDI, ISO, archives, partitioned disks, random
// bytes, empty files, ...) is rejected with InvalidArgument, field "image",
// and a message naming what was found. Formats that can make QEMU open other
// host files (qcow2 backing/data files, VMDK descriptors) are refused because
// an uploaded image must never be able to read the host's files.
#pragma once

#include <cstdint>
#include <string>

#include "common/env.h"
#include "common/status.h"

namespace berth::images {

struct ImageInfo {
  std::string format;               // "raw" | "qcow2"
  uint64_t size_bytes = 0;          // size of the file on disk (apparent)
  uint64_t virtual_size_bytes = 0;  // size of the disk the guest sees
  std::string filesystem;           // "ext4" / "ext3" / "ext2" for raw; "" for qcow2
};

// Largest disk (virtual size) berth accepts.
inline constexpr uint64_t kMaxVirtualSizeBytes = uint64_t{1} << 40;  // 1 TiB

// Inspects the file at `path`. Reads only the first few hundred KiB of the
// file (never the whole image); for qcow2 also runs
// `qemu-img info -U --output=json -f qcow2 PATH` through env->Run with a
// timeout. Errors: InvalidArgument (field "image") when the file is not an
// acceptable image; NotFound when it cannot be opened; Unavailable when
// qemu-img is missing; DeadlineExceeded when qemu-img hangs.
Result<ImageInfo> InspectImage(Env* env, const std::string& path);

// Returns `path` in a form that command-line tools (qemu-img, mke2fs, ...)
// cannot mistake for an option ("-x") or for a QEMU protocol prefix
// ("nbd:...", "json:{...}"): relative paths get a "./" prefix.
std::string SafePathArg(const std::string& path);

}  // namespace berth::images
