// The guest runtime (kernel + initramfs with the agent as /init), as built by
// scripts/build-runtime.sh into a directory with a manifest.json.
#pragma once

#include <string>

#include "common/env.h"
#include "common/status.h"

namespace berth::manager {

struct RuntimeArtifacts {
  std::string dir;
  std::string kernel_path;
  std::string initrd_path;
  std::string kernel_sha256;
  std::string initrd_sha256;
  std::string kernel_version;
  std::string agent_version;
};

// Reads dir/manifest.json and checks that the files it names exist with the
// recorded sha256. FailedPrecondition with a hint to build it otherwise.
Result<RuntimeArtifacts> LoadRuntime(Env* env, const std::string& dir);

}  // namespace berth::manager
