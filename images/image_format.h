// Disk image inspection: decides whether a file is a disk image berth will
// hand to QEMU, treating every file as hostile. Nothing else may read an
// uploaded image (no qemu-img, no libvirt, no mount) before it has passed
// InspectImage.
//
// Two stages, the second only after the first has passed:
//   1. InspectImageHeader: berth's own parser reads the first bytes (and the
//      last 512) of the file and nothing else. It recognizes
//        - qcow2 v2/v3, accepted only if self-contained: no backing file, no
//          external data file (incompatible bit 2 or a data-file header
//          extension), no encryption (crypt_method or a full-disk-encryption
//          header extension), no unknown incompatible features, not marked
//          corrupt, virtual size within the limit, sane cluster_bits,
//          refcount_order, header_length and extensions, complete header;
//        - raw images that are a bare ext2/3/4 filesystem (superblock magic
//          0xEF53 at byte 1080), size a multiple of 512, within the limit,
//          not truncated;
//        - ISO 9660 ("CD001" at 0x8001), accepted only when the caller sets
//          allow_iso (cloud-init seeds), as format "raw", filesystem "iso9660";
//        - and refuses: VMDK (sparse "KDMV"/"COWD" and text descriptors),
//          VHD ("conectix" footer at the end, or its copy at the start of a
//          dynamic disk), VHDX, VDI, QED, qcow v1, LUKS, Parallels, cloop,
//          Bochs, plus archives, partitioned disks and unrecognized data.
//      A raw image that also carries a refused format's signature (a
//      polyglot: ext4 with a VHD footer, a VMDK descriptor over an ext4
//      superblock, ext4 with an ISO volume descriptor) is refused. qcow2 is
//      recognized by its magic and is only ever opened as qcow2.
//   2. CrossCheckWithQemuImg: `qemu-img info -f <format> --output=json` (and
//      for qcow2 `qemu-img check -f qcow2 --output=json`), always with an
//      explicit format and run through Env::RunLimited under a timeout and
//      resource limits (address space, CPU time). QEMU's own reading must
//      agree with stage 1: same format, same virtual size, no backing file,
//      no data file, not encrypted, and a clean check.
//
// Every rejection is FailedPrecondition (HTTP 422) with field "image" and a
// message that says in words what was found and why it is refused.
#pragma once

#include <cstdint>
#include <string>

#include "common/env.h"
#include "common/status.h"

namespace berth::images {

struct ImageInfo {
  std::string format;               // "raw" | "qcow2": what QEMU must be told (-f / <driver type>)
  uint64_t size_bytes = 0;          // size of the file on disk (apparent)
  uint64_t virtual_size_bytes = 0;  // size of the disk the guest sees
  std::string filesystem;           // "ext4" / "ext3" / "ext2" / "iso9660" for raw; "" for qcow2
};

// Largest disk (virtual size) berth accepts by default.
inline constexpr uint64_t kMaxVirtualSizeBytes = uint64_t{1} << 40;  // 1 TiB

struct InspectOptions {
  // The format the uploader declared, if any: "raw", "qcow2" or "iso" ("" =
  // none). When set it must match what the content is (an ISO may also be
  // declared "raw"); a mismatch is a rejection that names both.
  std::string claimed_format;
  // ISO 9660 images are refused unless this is set.
  bool allow_iso = false;
  // Virtual sizes above this are refused.
  uint64_t max_virtual_size_bytes = kMaxVirtualSizeBytes;
  // Each qemu-img run: wall-clock timeout and resource limits.
  int64_t qemu_img_timeout_ms = 30'000;
  RunLimits qemu_img_limits{uint64_t{1} << 30, 30};  // 1 GiB address space, 30 s CPU
};

// Stage 1 only: berth's own header checks (reads the first 128 KiB, or the
// first cluster of a qcow2 if larger, a qcow2's backing file name, and the
// last 512 bytes; runs nothing).
// Errors: FailedPrecondition (field "image") when refused; NotFound when
// the file does not exist.
Result<ImageInfo> InspectImageHeader(const std::string& path, const InspectOptions& options = {});

// Stage 2 only: qemu-img's reading of the file must agree with `header`.
// Precondition: `header` is what InspectImageHeader returned for this very
// file. Never call it on a file stage 1 refused: `qemu-img check` follows
// backing files and qcow2 opens external data files.
// Errors: FailedPrecondition (field "image") on disagreement or an unclean
// check; Unavailable when qemu-img is missing; DeadlineExceeded when it
// hangs; Internal when it prints something that is not the expected JSON.
Result<ImageInfo> CrossCheckWithQemuImg(Env* env, const std::string& path, const ImageInfo& header,
                                        const InspectOptions& options = {});

// Both stages. This is the gate every uploaded or imported image passes.
Result<ImageInfo> InspectImage(Env* env, const std::string& path, const InspectOptions& options = {});

// Returns `path` in a form that command-line tools (qemu-img, mke2fs, ...)
// cannot mistake for an option ("-x") or for a QEMU protocol prefix
// ("nbd:...", "json:{...}"): relative paths get a "./" prefix.
std::string SafePathArg(const std::string& path);

}  // namespace berth::images
