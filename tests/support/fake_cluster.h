// A Cluster for unit tests: fake runtime artifacts, nodes connected through
// `connect` (a fake hv::Hypervisor), and the local node registered (tcg,
// pools under `dir`).
#pragma once

#include <functional>
#include <memory>
#include <string>

#include <gtest/gtest.h>

#include "manager/cluster.h"
#include "tests/support/unimplemented_hypervisor.h"

namespace berth::testing {

// Enough of a libvirt host for Node::Prepare (accel tcg, runtime volumes
// already there) and the cluster's reads: `cpus` and `memory_mib`, an empty
// pool with no known size, no domains; everything else is Unimplemented.
// Tests override what their case is about (the pool, a gate on a call).
class FakeNodeHypervisor : public hv::UnimplementedHypervisor {
 public:
  FakeNodeHypervisor(std::string uri, int cpus, uint64_t memory_mib)
      : hv::UnimplementedHypervisor(std::move(uri)), cpus_(cpus), memory_mib_(memory_mib) {}
  Result<hv::NodeInfo> GetNodeInfo() override {
    hv::NodeInfo info;
    info.hostname = "fake";
    info.uri = uri_;
    info.cpus = cpus_;
    info.memory_mib = memory_mib_;
    return info;
  }
  Status EnsureDirPool(const std::string&, const std::string&) override { return Status::Ok(); }
  Result<hv::VolumeInfo> LookupVolume(const std::string& pool, const std::string& name) override {
    hv::VolumeInfo v;
    v.pool = pool;
    v.name = name;
    v.path = "/fake/" + name;
    return v;
  }
  Result<std::vector<hv::VolumeInfo>> ListVolumes(const std::string&) override {
    return std::vector<hv::VolumeInfo>{};
  }
  Status RefreshPool(const std::string&) override { return Status::Ok(); }
  Result<std::vector<std::string>> ListDomains(const std::string&) override { return std::vector<std::string>{}; }

 private:
  int cpus_;
  uint64_t memory_mib_;
};

inline std::unique_ptr<manager::Cluster> MakeClusterWithLocalNode(manager::Store* store, const std::string& dir,
                                                                  decltype(manager::ClusterOptions::connect) connect,
                                                                  int64_t monitor_interval_ms = 60'000,
                                                                  const std::function<void(manager::ClusterOptions&)>&
                                                                      configure = {}) {
  manager::ClusterOptions options;
  options.state_dir = dir + "/nodes";
  options.monitor_interval_ms = monitor_interval_ms;
  options.connect = std::move(connect);
  if (configure) configure(options);
  manager::RuntimeArtifacts runtime;
  runtime.kernel_path = "/fake/vmlinuz";
  runtime.initrd_path = "/fake/initramfs.cpio.gz";
  runtime.kernel_sha256 = std::string(64, 'a');
  runtime.initrd_sha256 = std::string(64, 'b');
  auto cluster = std::make_unique<manager::Cluster>(Env::Default(), store, runtime, options);
  manager::NodeConfig local;
  local.name = "local";
  local.uri = "qemu:///system";
  local.accel = "tcg";
  local.pool_dir = dir + "/pool";
  local.log_dir = dir + "/logs";
  auto added = cluster->AddLocal(local);
  EXPECT_TRUE(added.ok()) << added.status().ToString();
  return cluster;
}

}  // namespace berth::testing
