// A Cluster for unit tests: fake runtime artifacts, nodes connected through
// `connect` (a fake hv::Hypervisor), and the local node registered (tcg,
// pools under `dir`).
#pragma once

#include <functional>
#include <memory>
#include <string>

#include <gtest/gtest.h>

#include "manager/cluster.h"

namespace berth::testing {

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
