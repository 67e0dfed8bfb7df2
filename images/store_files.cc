#include "images/store_files.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace berth::images {

Status StoreWriteError(const std::string& what, int err) {
  if (err == ENOSPC || err == EDQUOT) {
    return Status(Code::kResourceExhausted, what + ": no space left in the image store", "image");
  }
  return Status::Internal(what + ": " + std::strerror(err));
}

Status WriteAll(int fd, std::string_view data, const std::string& what) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return StoreWriteError(what, errno);
    }
    off += static_cast<size_t>(n);
  }
  return Status::Ok();
}

}  // namespace berth::images
