// berth's hypervisor layer against remote libvirt hosts (qemu+tcp://), each a
// libvirtd in its own network and mount namespace on this machine
// (tests/multinode/hosts.sh): storage pools, volume uploads over the libvirt
// stream, overlays, a real TCG guest and its agent channel, all remote.
#include <gtest/gtest.h>

#include <sstream>

#include "common/ids.h"
#include "hypervisor/agent_client.h"
#include "hypervisor/hypervisor.h"
#include "manager/runtime.h"
#include "tests/integration/support/harness.h"

namespace berth::testing {
namespace {

class RemoteNodeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    state_ = "/var/lib/berth/multinode-" + RandomHex(6);
    int code = 0;
    std::string out = Shell(std::string(BERTH_SOURCE_DIR) + "/tests/multinode/hosts.sh up 2 " + state_, &code);
    ASSERT_EQ(code, 0) << out;
    std::istringstream in(out);
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("qemu+tcp://", 0) == 0) uris_.push_back(line);
    }
    ASSERT_EQ(uris_.size(), 2u) << out;
  }
  static void TearDownTestSuite() {
    Shell(std::string(BERTH_SOURCE_DIR) + "/tests/multinode/hosts.sh down " + state_);
  }
  static std::string state_;
  static std::vector<std::string> uris_;
};

std::string RemoteNodeTest::state_;
std::vector<std::string> RemoteNodeTest::uris_;

TEST_F(RemoteNodeTest, GuestRunsOnEachRemoteHostThroughLibvirtOnly) {
  auto rt = manager::LoadRuntime(Env::Default(), RuntimeDir());
  ASSERT_TRUE(rt.ok()) << rt.status().ToString();
  std::vector<std::unique_ptr<hv::Hypervisor>> hosts;
  for (const auto& uri : uris_) {
    auto hv = hv::ConnectLibvirt(uri);
    ASSERT_TRUE(hv.ok()) << uri << ": " << hv.status().ToString();
    auto info = (*hv)->GetNodeInfo();
    ASSERT_TRUE(info.ok());
    EXPECT_EQ(info->uri, uri);
    hosts.push_back(std::move(*hv));
  }
  // Distinct hosts: each has its own hostname.
  EXPECT_NE(hosts[0]->GetNodeInfo()->hostname, hosts[1]->GetNodeInfo()->hostname);

  for (size_t i = 0; i < hosts.size(); ++i) {
    auto& hv = *hosts[i];
    SCOPED_TRACE(uris_[i]);
    // Paths are the remote host's own (its /var/lib/libvirt is private to it).
    ASSERT_TRUE(hv.EnsureDirPool("berth", "/var/lib/libvirt/images/berth").ok());
    auto kernel = hv.UploadVolume("berth", "vmlinuz", rt->kernel_path, "raw");
    auto initrd = hv.UploadVolume("berth", "initramfs", rt->initrd_path, "raw");
    auto base = hv.UploadVolume("berth", "base.qcow2", BusyboxImagePath(), "qcow2");
    ASSERT_TRUE(kernel.ok() && initrd.ok() && base.ok()) << base.status().ToString();
    base->capacity_bytes = 1ull << 30;
    auto overlay = hv.CreateOverlay("berth", "ovl.qcow2", *base, 0);
    ASSERT_TRUE(overlay.ok()) << overlay.status().ToString();

    hv::DomainSpec spec;
    spec.name = "berth-remote-" + RandomHex(8);
    spec.memory_mib = 192;
    spec.kernel_path = kernel->path;
    spec.initrd_path = initrd->path;
    spec.disks.push_back({overlay->path, "qcow2", "vda", false});
    spec.console_log_path = "/var/lib/libvirt/images/berth/" + spec.name + ".console.log";
    spec.metadata.execution_id = spec.name.substr(6);
    Status started = hv.StartDomain(spec);
    ASSERT_TRUE(started.ok()) << started.ToString();
    auto mine = hv.ListDomains("berth-");
    ASSERT_TRUE(mine.ok());
    EXPECT_EQ(*mine, std::vector<std::string>{spec.name});
    // The other host does not see it.
    auto other = hosts[1 - i]->ListDomains("berth-");
    ASSERT_TRUE(other.ok());
    EXPECT_TRUE(other->empty());

    auto ch = hv.OpenAgentChannel(spec.name, "org.berth.agent.0");
    ASSERT_TRUE(ch.ok()) << ch.status().ToString();
    hv::AgentClient agent(std::move(*ch));
    auto hello = agent.Hello(120'000);
    ASSERT_TRUE(hello.ok()) << hello.status().ToString();
    agent::ExecMsg msg;
    msg.argv = {"sh", "-c", "echo hello from host $(hostname 2>/dev/null || true) $(cat /proc/sys/kernel/hostname)"};
    auto out = agent.Exec(msg, "", 1 << 16, 60'000);
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    EXPECT_EQ(out->exit.exit_code, 0) << out->stderr_data;
    EXPECT_EQ(out->stdout_data.rfind("hello from host", 0), 0u) << out->stdout_data;
    agent.Close();

    ASSERT_TRUE(hv.DestroyDomain(spec.name).ok());
    EXPECT_TRUE(hv.ListDomains("berth-")->empty());
    EXPECT_TRUE(hv.DeleteVolume("berth", "ovl.qcow2").ok());
    auto log = hv.DownloadVolumeTail("berth", spec.name + ".console.log", 4096);
    EXPECT_TRUE(log.ok()) << log.status().ToString();  // console logs are readable remotely
  }
}

}  // namespace
}  // namespace berth::testing
