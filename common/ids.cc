#include "common/ids.h"

#include <sys/random.h>

#include <vector>

namespace berth {

std::string RandomHex(size_t chars) {
  std::vector<unsigned char> bytes((chars + 1) / 2);
  size_t got = 0;
  while (got < bytes.size()) {
    ssize_t n = getrandom(bytes.data() + got, bytes.size() - got, 0);
    if (n > 0) got += static_cast<size_t>(n);
  }
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (unsigned char b : bytes) {
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 0xf]);
  }
  out.resize(chars);
  return out;
}

}  // namespace berth
