// File writing shared by ImageUpload and the upload sessions (internal to
// images/): both stream request bodies into files of the image store.
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"

namespace berth::images {

// An errno from writing into the image store as a Status: a full disk is
// RESOURCE_EXHAUSTED naming "image", anything else INTERNAL.
Status StoreWriteError(const std::string& what, int err);

// Writes all of `data` to `fd`, retrying short writes and EINTR. On failure
// part of `data` may be on disk.
Status WriteAll(int fd, std::string_view data, const std::string& what);

}  // namespace berth::images
