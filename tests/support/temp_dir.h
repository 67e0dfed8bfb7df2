// Small helpers shared by unit tests: a temporary folder removed with
// everything in it afterwards, and deterministic pseudo-random bytes.
#pragma once

#include <cstdlib>
#include <random>
#include <string>

#include "common/env.h"

namespace berth::testing {

class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "berth-test") {
    std::string tmpl = "/tmp/" + prefix + "-XXXXXX";
    if (::mkdtemp(tmpl.data()) != nullptr) path_ = tmpl;
  }
  ~TempDir() {
    if (!path_.empty()) (void)Env::Default()->RemoveTree(path_);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// n bytes from a seeded generator: the same seed gives the same bytes.
inline std::string RandomBytes(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng() & 0xff);
  return s;
}

}  // namespace berth::testing
