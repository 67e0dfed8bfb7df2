// A temporary folder for one test, removed with everything in it afterwards.
#pragma once

#include <cstdlib>
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

}  // namespace berth::testing
