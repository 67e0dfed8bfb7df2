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
#include "cli/http_client.h"
#include "common/env.h"
#include "images/rootfs_builder.h"

namespace berth::cli {

int RunImageBuild(Env* env, const images::RootfsBuildOptions& opts, std::ostream& out, std::ostream& err);
int RunImageInspect(Env* env, const std::string& path, std::ostream& out, std::ostream& err);

// Uploads `file` through a resumable upload session (POST/PATCH/PUT
// /v1/images/uploads, see api/image_routes.cc). The session's id is kept in
// `state_dir`/<sha256 of the file>.json (default: $XDG_CACHE_HOME or
// ~/.cache, then berth/uploads) until the upload finished, so running the
// same push again after an interruption (network, Ctrl-C, berthd restart)
// continues from berthd's offset instead of starting over; within one run a
// dropped connection is retried `attempts` times from the offset berthd has.
// Returns berthd's final reply (201 + the image) or the failing one; a
// transport failure is status 0 with `error` set.
struct ResumablePush {
  std::string api, token, file, name, format;
  std::string state_dir;  // "" = the default
  int attempts = 3;
  UploadProgress progress;  // (bytes of the file berthd has, file size)
  std::ostream* notes = nullptr;  // "resuming at ..." lines, when set
};
HttpReply PushResumable(const ResumablePush& push);

// `berth image tag SRC NAME[:TAG]` (registered by AddRemoteCommands).
void AddImageTagCommand(CLI::App& image, std::shared_ptr<Remote> remote, int& exit_code);

}  // namespace berth::cli
