#include "manager/runtime.h"

#include <nlohmann/json.hpp>

#include "common/sha256.h"

namespace berth::manager {

Result<RuntimeArtifacts> LoadRuntime(Env* env, const std::string& dir) {
  const std::string hint = " (build it with: scripts/build-runtime.sh build/guest/berth-agent " + dir + ")";
  auto text = env->ReadFile(dir + "/manifest.json");
  if (!text.ok()) return Status::FailedPrecondition("no guest runtime in " + dir + hint);
  auto j = nlohmann::json::parse(*text, nullptr, false);
  if (!j.is_object() || !j.contains("files")) {
    return Status::FailedPrecondition("malformed runtime manifest " + dir + "/manifest.json" + hint);
  }
  RuntimeArtifacts rt;
  rt.dir = dir;
  rt.kernel_path = dir + "/vmlinuz";
  rt.initrd_path = dir + "/initramfs.cpio.gz";
  rt.kernel_version = j.value("kernel_version", "");
  rt.agent_version = j.value("agent_version", "");
  try {
    rt.kernel_sha256 = j["files"]["vmlinuz"].at("sha256").get<std::string>();
    rt.initrd_sha256 = j["files"]["initramfs.cpio.gz"].at("sha256").get<std::string>();
  } catch (const std::exception&) {
    return Status::FailedPrecondition("runtime manifest lacks file digests" + hint);
  }
  for (auto [path, want] : {std::pair{rt.kernel_path, rt.kernel_sha256}, std::pair{rt.initrd_path, rt.initrd_sha256}}) {
    auto got = Sha256::HexOfFile(path);
    if (!got.ok()) return Status::FailedPrecondition("runtime file missing: " + path + hint);
    if (*got != want) return Status::FailedPrecondition("runtime file " + path + " does not match its manifest" + hint);
  }
  return rt;
}

}  // namespace berth::manager
