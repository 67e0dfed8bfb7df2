// Streaming SHA-256 (OpenSSL EVP), for content-addressed images and runtime
// manifests. Hex digests are lowercase, 64 characters.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"

namespace berth {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(std::string_view data);
  // Returns the hex digest; the hasher must not be updated afterwards.
  std::string FinishHex();

  static std::string HexOf(std::string_view data);
  static Result<std::string> HexOfFile(const std::string& path);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// True if s is 64 lowercase hex characters.
bool IsSha256Hex(std::string_view s);

}  // namespace berth
