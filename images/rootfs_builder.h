// Builds a bootable root-filesystem disk image (ext4) from a directory tree,
// without loop mounts or root privileges: `mke2fs -d` copies the tree into a
// raw image, and for qcow2 `qemu-img convert` compresses the sparse raw file.
#pragma once

#include <cstdint>
#include <string>

#include "common/env.h"
#include "common/status.h"

namespace berth::images {

struct RootfsBuildOptions {
  std::string source_dir;      // directory whose contents become "/"
  std::string output_path;     // file to create (replaced atomically)
  std::string format = "qcow2";  // "qcow2" | "raw"
  // Filesystem size. 0 = auto: the tree's size (each file rounded up to 4 KiB
  // blocks, symlinks not followed) * 1.3 + 16 MiB, at least 32 MiB.
  uint64_t size_mib = 0;
  std::string label = "berth-root";  // ext4 volume label, at most 16 bytes
};

// Writes the image to a temporary file next to output_path and renames it
// into place, so output_path is either the old file or the complete new one.
// The root directory is owned by 0:0; files keep their owners and modes.
// Errors: InvalidArgument with field "source_dir" / "output_path" /
// "format" / "label" / "size_mib" (the last when the tree does not fit);
// Internal with mke2fs's or qemu-img's first stderr line when they fail;
// Unavailable when a tool is missing.
Status BuildRootfsImage(Env* env, const RootfsBuildOptions& opts);

// The size BuildRootfsImage picks for size_mib = 0, and the measured tree
// (exposed for tests and for callers that want to report it).
struct TreeUsage {
  uint64_t bytes = 0;    // sum of block-rounded sizes of all entries
  uint64_t entries = 0;  // files, directories, symlinks, ... (each needs an inode)
};
Result<TreeUsage> MeasureTree(const std::string& dir);
uint64_t AutoSizeMib(const TreeUsage& usage);

}  // namespace berth::images
