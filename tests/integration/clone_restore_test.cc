// Fast-start groundwork: boot a template once, save it with libvirt, then
// restore two independent clones of it at the same time, each with its own
// name, UUID, overlay disk, console log and agent channel (the save image's
// XML rewritten, since `virsh restore --xml` refuses another UUID).
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <iostream>

#include "common/ids.h"
#include "hypervisor/agent_client.h"
#include "hypervisor/domain_xml.h"
#include "hypervisor/hypervisor.h"
#include "hypervisor/save_image.h"
#include "manager/runtime.h"
#include "tests/integration/support/harness.h"

namespace berth::testing {
namespace {

using Clock = std::chrono::steady_clock;

int64_t MsSince(Clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
}

class CloneRestoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    id_ = RandomHex(8);
    pool_ = "berth-clone-" + id_;
    dir_ = "/var/lib/berth/clonetest-" + id_;
    auto hv = hv::ConnectLibvirt("qemu:///system");
    ASSERT_TRUE(hv.ok()) << hv.status().ToString();
    hv_ = std::move(*hv);
    ASSERT_TRUE(hv_->EnsureDirPool(pool_, dir_).ok());
  }
  void TearDown() override {
    for (const auto& d : domains_) (void)hv_->DestroyDomain(d);
    Shell("virsh -q -c qemu:///system pool-destroy " + pool_ + " >/dev/null 2>&1; virsh -q -c qemu:///system "
          "pool-undefine " + pool_ + " >/dev/null 2>&1; rm -rf " + dir_);
  }

  hv::DomainSpec Spec(const std::string& name, const std::string& disk) {
    hv::DomainSpec spec;
    spec.name = name;
    spec.accel = hv::Accel::kTcg;
    spec.memory_mib = 256;
    spec.kernel_path = kernel_.path;
    spec.initrd_path = initrd_.path;
    spec.disks.push_back({disk, "qcow2", "vda", false});
    spec.console_log_path = dir_ + "/" + name + ".console.log";
    spec.metadata.execution_id = name.substr(6);
    return spec;
  }

  std::unique_ptr<hv::Hypervisor> hv_;
  std::string id_, pool_, dir_;
  std::vector<std::string> domains_;
  hv::VolumeInfo kernel_, initrd_;
};

TEST_F(CloneRestoreTest, TwoClonesOfOneTemplateRunAtOnceWithTheirOwnDisks) {
  auto rt = manager::LoadRuntime(Env::Default(), RuntimeDir());
  ASSERT_TRUE(rt.ok()) << rt.status().ToString();
  kernel_ = *hv_->UploadVolume(pool_, "vmlinuz", rt->kernel_path, "raw");
  initrd_ = *hv_->UploadVolume(pool_, "initramfs", rt->initrd_path, "raw");
  auto base = hv_->UploadVolume(pool_, "base.qcow2", BusyboxImagePath(), "qcow2");
  ASSERT_TRUE(base.ok()) << base.status().ToString();
  base->capacity_bytes = 1ull << 30;
  auto tpl_disk = hv_->CreateOverlay(pool_, "template.qcow2", *base, 0);
  ASSERT_TRUE(tpl_disk.ok()) << tpl_disk.status().ToString();

  // The template: boot until the agent says hello (its disk is not mounted
  // yet: the agent mounts /dev/vda at the first exec), then save it.
  const std::string tpl = "berth-tpl-" + id_;
  domains_.push_back(tpl);
  auto t_boot = Clock::now();
  ASSERT_TRUE(hv_->StartDomain(Spec(tpl, tpl_disk->path)).ok());
  {
    auto ch = hv_->OpenAgentChannel(tpl, "org.berth.agent.0");
    ASSERT_TRUE(ch.ok());
    hv::AgentClient agent(std::move(*ch));
    ASSERT_TRUE(agent.Hello(120'000).ok());
  }
  int64_t boot_ms = MsSince(t_boot);
  const std::string save = dir_ + "/template.save";
  ASSERT_TRUE(hv_->SaveDomain(tpl, save).ok());
  EXPECT_FALSE(DomainRunning(tpl));
  auto header = hv::ReadSaveImageHeader(save);
  ASSERT_TRUE(header.ok()) << header.status().ToString();

  // Two clones, restored side by side.
  std::vector<std::unique_ptr<hv::AgentClient>> agents;
  std::vector<std::string> uuids;
  for (int i = 0; i < 2; ++i) {
    auto t0 = Clock::now();
    std::string name = "berth-clone-" + id_ + "-" + std::to_string(i);
    auto disk = hv_->CreateOverlay(pool_, name + ".qcow2", *tpl_disk, 0);
    ASSERT_TRUE(disk.ok()) << disk.status().ToString();
    hv::CloneIdentity ident;
    ident.name = name;
    ident.title = "clone " + std::to_string(i);
    ident.metadata.execution_id = "clone" + std::to_string(i);
    ident.disks["vda"] = disk->path;
    ident.console_log_path = dir_ + "/" + name + ".console.log";
    auto xml = hv::RewriteDomainIdentity(header->xml, ident);
    ASSERT_TRUE(xml.ok()) << xml.status().ToString();
    std::string clone_save = dir_ + "/" + name + ".save";
    ASSERT_TRUE(hv::WriteCloneSaveImage(save, clone_save, *xml).ok());
    domains_.push_back(name);
    Status restored = hv_->RestoreDomain(clone_save);
    ASSERT_TRUE(restored.ok()) << restored.ToString();
    // As TemplateCache::StartClone does: a Hello not answered within a few
    // seconds is retried on a fresh connection.
    auto hello = hv::ConnectRestoredAgent(*hv_, name, "org.berth.agent.0", 30'000);
    ASSERT_TRUE(hello.ok()) << hello.status().ToString() << "\nclone console:\n"
                            << Shell("tail -c 4000 " + ident.console_log_path) << "\ntemplate console:\n"
                            << Shell("tail -c 4000 " + dir_ + "/" + tpl + ".console.log");
    if (hello->reconnects > 0) {  // the product's fallback worked; show why it was needed
      std::cout << "clone " << i << ": the agent answered only after " << hello->reconnects
                << " reconnect(s); console:\n" << Shell("tail -c 4000 " + ident.console_log_path) << "\n";
      RecordProperty("reconnects", hello->reconnects);
    }
    agents.push_back(std::move(hello->client));
    // The resumed RNG state is shared by all clones; the agent mixed in the
    // host's entropy and reseeded (RNDADDENTROPY + RNDRESEEDCRNG).
    EXPECT_TRUE(hello->hello.entropy_mixed);
    std::cout << "clone " << i << " restored to agent hello in " << MsSince(t0) << " ms (template boot: " << boot_ms
              << " ms)\n";
    std::string dumped = *hv_->GetDomainXml(name);
    auto md = hv::ParseDomainMetadata(dumped);
    ASSERT_TRUE(md.ok());
    EXPECT_EQ(md->execution_id, "clone" + std::to_string(i));
    EXPECT_NE(dumped.find(disk->path), std::string::npos);
    uuids.push_back(dumped.substr(dumped.find("<uuid>"), 44));
  }
  EXPECT_NE(uuids[0], uuids[1]);
  EXPECT_TRUE(DomainRunning("berth-clone-" + id_ + "-0"));
  EXPECT_TRUE(DomainRunning("berth-clone-" + id_ + "-1"));

  // Each clone writes to its own overlay: clone 0's file is invisible to clone 1.
  agent::ExecMsg write;
  write.argv = {"sh", "-c", "echo from-clone-0 > /marker && cat /marker"};
  auto w = agents[0]->Exec(write, "", 1 << 16, 60'000);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ(w->stdout_data, "from-clone-0\n") << w->exit.error;
  agent::ExecMsg read;
  read.argv = {"sh", "-c", "cat /marker 2>/dev/null || echo absent"};
  auto r = agents[1]->Exec(read, "", 1 << 16, 60'000);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->stdout_data, "absent\n");

  // Both clones resumed the same saved RNG state; the agent's hello mixed in
  // fresh host entropy, so their random streams differ. Their clocks follow
  // the host's, not the template's save time.
  agent::ExecMsg rnd;
  rnd.argv = {"sh", "-c", "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s"};
  auto r0 = agents[0]->Exec(rnd, "", 1 << 16, 60'000);
  auto r1 = agents[1]->Exec(rnd, "", 1 << 16, 60'000);
  ASSERT_TRUE(r0.ok() && r1.ok());
  std::string rand0 = r0->stdout_data.substr(0, r0->stdout_data.find('\n'));
  std::string rand1 = r1->stdout_data.substr(0, r1->stdout_data.find('\n'));
  EXPECT_EQ(rand0.size(), 32u) << r0->stdout_data << r0->stderr_data;
  EXPECT_NE(rand0, rand1);
  int64_t guest_now = std::stoll(r0->stdout_data.substr(r0->stdout_data.find('\n') + 1));
  int64_t host_now = std::chrono::duration_cast<std::chrono::seconds>(
                         std::chrono::system_clock::now().time_since_epoch()).count();
  EXPECT_LE(std::abs(guest_now - host_now), 5);
}

}  // namespace
}  // namespace berth::testing
