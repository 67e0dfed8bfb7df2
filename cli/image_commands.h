// `berth image ...`: local image operations (no daemon needed). `image
// inspect` runs RunImageInspect when its argument is a local file
// (cli/remote_commands.cc registers it).
//
//   berth image build DIR -o OUT [--size-mib N] [--format qcow2|raw] [--label L]
//       Builds an ext4 root-filesystem image from DIR and prints one JSON
//       object: {"path","format","size_bytes","virtual_size_bytes",
//       "filesystem","sha256"}. Exit 0, or 1 with the error on stderr.
//   berth image inspect FILE
//       Prints InspectImage's verdict as JSON. Exit 0 if the file is an
//       acceptable image, 2 if it is rejected (reason on stderr), 1 for other
//       errors (missing file, qemu-img missing).
// The Run* functions are what the subcommands call; they write to the given
// streams and return the exit status, so they can be tested directly.
#pragma once

#include <iosfwd>
#include <string>

#include "cli/commands.h"
#include "common/env.h"
#include "images/rootfs_builder.h"

namespace berth::cli {

int RunImageBuild(Env* env, const images::RootfsBuildOptions& opts, std::ostream& out, std::ostream& err);
int RunImageInspect(Env* env, const std::string& path, std::ostream& out, std::ostream& err);

}  // namespace berth::cli
