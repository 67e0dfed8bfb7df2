// hv::ConnectLibvirt against libvirt's in-memory test driver
// (test:///default), exercised only through the Hypervisor interface:
// node info, dir pools, overlays and volumes, transient domains with berth
// metadata, and the failure paths (bad URI, upload, agent channel).
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/temp_dir.h"
#include "common/env.h"
#include "hypervisor/domain_spec.h"
#include "hypervisor/domain_xml.h"
#include "hypervisor/hypervisor.h"

namespace berth::hv {
namespace {

constexpr const char* kTestUri = "test:///default";

std::string RandomHex(size_t n) {
  static std::mt19937_64 rng(std::random_device{}());
  static const char* kHex = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) s.push_back(kHex[rng() % 16]);
  return s;
}

using ::berth::testing::TempDir;

bool Contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

std::vector<std::string> VolumeNames(Hypervisor& hv, const std::string& pool) {
  std::vector<std::string> names;
  auto vols = hv.ListVolumes(pool);
  if (vols.ok()) {
    for (const auto& v : *vols) names.push_back(v.name);
  }
  return names;
}

// A domain spec built the way manager/executor.cc builds one.
DomainSpec ExecutorLikeSpec(const std::string& id, const std::string& overlay_path, const std::string& log_dir) {
  DomainSpec spec;
  spec.name = std::string(kDomainNamePrefix) + id;
  spec.title = "berth resize pid 42";
  spec.accel = Accel::kTcg;
  spec.vcpus = 2;
  spec.memory_mib = 256;
  spec.kernel_path = "/var/lib/berth/runtime/vmlinuz";  // the test driver boots nothing
  spec.initrd_path = "/var/lib/berth/runtime/initrd.img";
  spec.cmdline = "console=ttyS0 quiet panic=-1";
  spec.disks.push_back({overlay_path, "qcow2", "vda", false});
  spec.console_log_path = log_dir + "/" + spec.name + ".console.log";
  spec.metadata = {id, "resize", "acme", 42, 7, std::string(64, 'a'), 1'700'000'000'123};
  return spec;
}

class LibvirtTestDriverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(tmp_.path().empty());
    auto h = ConnectLibvirt(kTestUri);
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    hv_ = std::move(*h);
    pool_ = "berth-unit-" + RandomHex(8);
    pool_dir_ = tmp_.path() + "/pool";
  }

  TempDir tmp_;
  std::unique_ptr<Hypervisor> hv_;
  std::string pool_, pool_dir_;
};

TEST_F(LibvirtTestDriverTest, NodeInfo) {
  EXPECT_EQ(hv_->uri(), kTestUri);
  auto info = hv_->GetNodeInfo();
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(info->uri, kTestUri);
  EXPECT_GT(info->cpus, 0u);
  EXPECT_GT(info->memory_mib, 0u);
  EXPECT_EQ(info->hypervisor_type, "TEST");
  EXPECT_GT(info->libvirt_version, 9'000'000u - 1) << "Debian 12 ships libvirt 9.0";
  EXPECT_FALSE(info->hostname.empty());
}

TEST_F(LibvirtTestDriverTest, EnsureDirPoolIsIdempotent) {
  Status s = hv_->EnsureDirPool(pool_, pool_dir_);
  ASSERT_TRUE(s.ok()) << s.ToString();
  Status again = hv_->EnsureDirPool(pool_, pool_dir_);
  EXPECT_TRUE(again.ok()) << again.ToString();
  auto vols = hv_->ListVolumes(pool_);
  ASSERT_TRUE(vols.ok()) << vols.status().ToString();
  EXPECT_TRUE(vols->empty());
  EXPECT_TRUE(hv_->RefreshPool(pool_).ok());
}

TEST_F(LibvirtTestDriverTest, PoolInfoReportsSpace) {
  ASSERT_TRUE(hv_->EnsureDirPool(pool_, pool_dir_).ok());
  auto info = hv_->GetPoolInfo(pool_);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_GT(info->capacity_bytes, 0u) << "the test driver gives new pools a default capacity";
  EXPECT_LE(info->available_bytes, info->capacity_bytes);
  EXPECT_LE(info->allocation_bytes, info->capacity_bytes);

  auto missing = hv_->GetPoolInfo("berth-unit-missing-" + RandomHex(8));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Code::kNotFound) << missing.status().ToString();
}

TEST_F(LibvirtTestDriverTest, MissingPoolIsNotFound) {
  const std::string missing = "berth-unit-missing-" + RandomHex(8);
  auto l = hv_->ListVolumes(missing);
  ASSERT_FALSE(l.ok());
  EXPECT_EQ(l.status().code(), Code::kNotFound) << l.status().ToString();
  auto v = hv_->LookupVolume(missing, "x");
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), Code::kNotFound);
  EXPECT_EQ(hv_->RefreshPool(missing).code(), Code::kNotFound);
  EXPECT_FALSE(hv_->DeleteVolume(missing, "x").ok()) << "a missing pool is not a missing volume";
}

TEST_F(LibvirtTestDriverTest, OverlayLookupListDelete) {
  ASSERT_TRUE(hv_->EnsureDirPool(pool_, pool_dir_).ok());
  VolumeInfo base;
  base.pool = pool_;
  base.name = "base.raw";
  base.path = pool_dir_ + "/base.raw";  // the test driver never opens it
  base.format = "raw";
  base.capacity_bytes = 64ull << 20;

  auto ovl = hv_->CreateOverlay(pool_, "ovl-a.qcow2", base, 0);
  ASSERT_TRUE(ovl.ok()) << ovl.status().ToString();
  EXPECT_EQ(ovl->pool, pool_);
  EXPECT_EQ(ovl->name, "ovl-a.qcow2");
  EXPECT_EQ(ovl->format, "qcow2");
  EXPECT_EQ(ovl->capacity_bytes, 64ull << 20) << "capacity 0 means the backing's capacity";
  EXPECT_EQ(ovl->path, pool_dir_ + "/ovl-a.qcow2");

  auto bigger = hv_->CreateOverlay(pool_, "ovl-b.qcow2", base, 128ull << 20);
  ASSERT_TRUE(bigger.ok()) << bigger.status().ToString();
  EXPECT_EQ(bigger->capacity_bytes, 128ull << 20);

  auto dup = hv_->CreateOverlay(pool_, "ovl-a.qcow2", base, 0);
  EXPECT_FALSE(dup.ok()) << "a second volume with the same name";

  auto found = hv_->LookupVolume(pool_, "ovl-a.qcow2");
  ASSERT_TRUE(found.ok()) << found.status().ToString();
  EXPECT_EQ(found->path, ovl->path);
  EXPECT_EQ(found->format, "qcow2");
  EXPECT_EQ(found->capacity_bytes, 64ull << 20);

  auto names = VolumeNames(*hv_, pool_);
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"ovl-a.qcow2", "ovl-b.qcow2"}));

  ASSERT_TRUE(hv_->DeleteVolume(pool_, "ovl-a.qcow2").ok());
  auto gone = hv_->LookupVolume(pool_, "ovl-a.qcow2");
  ASSERT_FALSE(gone.ok());
  EXPECT_EQ(gone.status().code(), Code::kNotFound) << gone.status().ToString();
  EXPECT_EQ(VolumeNames(*hv_, pool_), std::vector<std::string>{"ovl-b.qcow2"});

  Status missing = hv_->DeleteVolume(pool_, "ovl-a.qcow2");
  EXPECT_TRUE(missing.ok()) << "deleting a missing volume succeeds: " << missing.ToString();
  EXPECT_TRUE(hv_->DeleteVolume(pool_, "never-existed.qcow2").ok());
}

TEST_F(LibvirtTestDriverTest, UploadUnsupportedLeavesNoVolume) {
  ASSERT_TRUE(hv_->EnsureDirPool(pool_, pool_dir_).ok());
  const std::string local = tmp_.path() + "/image.raw";
  ASSERT_TRUE(Env::Default()->WriteFileAtomic(local, std::string(100'000, 'x')).ok());
  auto up = hv_->UploadVolume(pool_, "img.raw", local, "raw");
  if (up.ok()) {
    // A driver that supports uploads must have stored it.
    auto v = hv_->LookupVolume(pool_, "img.raw");
    ASSERT_TRUE(v.ok());
    EXPECT_EQ(up->format, "raw");
    EXPECT_TRUE(hv_->DeleteVolume(pool_, "img.raw").ok());
  } else {
    EXPECT_NE(up.status().code(), Code::kOk);
    EXPECT_FALSE(Contains(VolumeNames(*hv_, pool_), "img.raw")) << "a failed upload left its volume behind";
    auto look = hv_->LookupVolume(pool_, "img.raw");
    EXPECT_EQ(look.status().code(), Code::kNotFound);
  }
  auto missing = hv_->UploadVolume(pool_, "none.raw", tmp_.path() + "/does-not-exist", "raw");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Code::kNotFound);
  EXPECT_FALSE(Contains(VolumeNames(*hv_, pool_), "none.raw"));
}

TEST_F(LibvirtTestDriverTest, DownloadTailFailsCleanlyOrReturnsData) {
  ASSERT_TRUE(hv_->EnsureDirPool(pool_, pool_dir_).ok());
  auto r = hv_->DownloadVolumeTail(pool_, "no-such.log", 2048);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kNotFound) << r.status().ToString();
}

TEST_F(LibvirtTestDriverTest, DomainLifecycle) {
  const std::string id = RandomHex(16);
  DomainSpec spec = ExecutorLikeSpec(id, pool_dir_ + "/ovl-" + id + ".qcow2", tmp_.path() + "/logs");
  Status start = hv_->StartDomain(spec);
  ASSERT_TRUE(start.ok()) << start.ToString();

  auto names = hv_->ListDomains(kDomainNamePrefix);
  ASSERT_TRUE(names.ok()) << names.status().ToString();
  EXPECT_TRUE(Contains(*names, spec.name));
  for (const auto& n : *names) EXPECT_EQ(n.rfind(kDomainNamePrefix, 0), 0u) << n;
  auto all = hv_->ListDomains("");
  ASSERT_TRUE(all.ok());
  EXPECT_TRUE(Contains(*all, "test")) << "the test driver's own domain is listed without a prefix";
  EXPECT_FALSE(Contains(*names, "test")) << "the prefix filters";
  auto other = hv_->ListDomains("berth-zz-no-such-prefix");
  ASSERT_TRUE(other.ok());
  EXPECT_TRUE(other->empty());

  auto xml = hv_->GetDomainXml(spec.name);
  ASSERT_TRUE(xml.ok()) << xml.status().ToString();
  EXPECT_NE(xml->find(kMetadataNamespace), std::string::npos) << *xml;
  EXPECT_NE(xml->find(id), std::string::npos);
  auto md = ParseDomainMetadata(*xml);
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  EXPECT_EQ(md->execution_id, id);
  EXPECT_EQ(md->function, "resize");
  EXPECT_EQ(md->tenant, "acme");
  EXPECT_EQ(md->pid, 42);
  EXPECT_EQ(md->ppid, 7);
  EXPECT_EQ(md->image, std::string(64, 'a'));
  EXPECT_EQ(md->created_unix_ms, 1'700'000'000'123);

  // Same name again: refused, and the first one keeps running.
  EXPECT_FALSE(hv_->StartDomain(spec).ok());

  ASSERT_TRUE(hv_->DestroyDomain(spec.name).ok());
  names = hv_->ListDomains(kDomainNamePrefix);
  ASSERT_TRUE(names.ok());
  EXPECT_FALSE(Contains(*names, spec.name)) << "destroyed transient domain still listed";
  auto gone = hv_->GetDomainXml(spec.name);
  ASSERT_FALSE(gone.ok());
  EXPECT_EQ(gone.status().code(), Code::kNotFound) << gone.status().ToString();
  Status again = hv_->DestroyDomain(spec.name);
  EXPECT_TRUE(again.ok()) << "destroying a missing domain succeeds: " << again.ToString();
  EXPECT_TRUE(hv_->DestroyDomain("berth-never-existed-" + RandomHex(6)).ok());
}

TEST_F(LibvirtTestDriverTest, InvalidSpecIsRefusedBeforeLibvirt) {
  DomainSpec spec = ExecutorLikeSpec(RandomHex(8), "/tmp/x.qcow2", "/tmp");
  spec.name = "not-berth-prefixed";
  Status s = hv_->StartDomain(spec);
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();
  EXPECT_EQ(s.field(), "name");
  auto all = hv_->ListDomains("");
  ASSERT_TRUE(all.ok());
  EXPECT_FALSE(Contains(*all, "not-berth-prefixed"));
}

TEST_F(LibvirtTestDriverTest, AgentChannelOnTestDriverFailsWithStatus) {
  const std::string id = RandomHex(12);
  DomainSpec spec = ExecutorLikeSpec(id, "/tmp/berth-ovl-" + id + ".qcow2", tmp_.path());
  ASSERT_TRUE(hv_->StartDomain(spec).ok());
  auto ch = hv_->OpenAgentChannel(spec.name, spec.agent_channel.name);
  EXPECT_FALSE(ch.ok()) << "the test driver has no guests, so no agent channel";
  EXPECT_FALSE(ch.status().message().empty());
  auto missing = hv_->OpenAgentChannel("berth-missing-" + id, spec.agent_channel.name);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Code::kNotFound) << missing.status().ToString();
  EXPECT_TRUE(hv_->DestroyDomain(spec.name).ok());
}

TEST_F(LibvirtTestDriverTest, ConcurrentStartsAndDestroysOnOneConnection) {
  constexpr int kThreads = 8;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  std::vector<std::string> ids(kThreads);
  for (auto& i : ids) i = RandomHex(12);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int k = 0; k < 5; ++k) {
        DomainSpec spec = ExecutorLikeSpec(ids[t] + "-" + std::to_string(k), "/tmp/c.qcow2", "/tmp");
        if (!hv_->StartDomain(spec).ok()) ++failures;
        if (!hv_->GetDomainXml(spec.name).ok()) ++failures;
        if (!hv_->DestroyDomain(spec.name).ok()) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  auto names = hv_->ListDomains(kDomainNamePrefix);
  ASSERT_TRUE(names.ok());
  for (const auto& id : ids) {
    for (const auto& n : *names) EXPECT_EQ(n.find(id), std::string::npos) << n << " left running";
  }
}

TEST(LibvirtConnectTest, UnreachableDaemonIsUnavailableWithHowToStart) {
  auto h = ConnectLibvirt("qemu:///system?socket=/nonexistent/berth-libvirt-sock");
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), Code::kUnavailable) << h.status().ToString();
  EXPECT_NE(h.status().message().find("libvirtd -d"), std::string::npos) << h.status().message();
  EXPECT_EQ(h.status().message().find('\n'), std::string::npos) << "one line: " << h.status().message();
}

TEST(LibvirtConnectTest, UnknownDriverIsAnError) {
  auto h = ConnectLibvirt("nosuchdriver:///system");
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), Code::kUnavailable) << h.status().ToString();
}

TEST(LibvirtConnectTest, TestDriverStateIsFreshPerConnection) {
  // Sequential (non-overlapping) connections to test:///default start from
  // the driver's default state: a domain from an earlier one is gone.
  std::string name;
  {
    auto h = ConnectLibvirt(kTestUri);
    ASSERT_TRUE(h.ok());
    DomainSpec spec = ExecutorLikeSpec(RandomHex(10), "/tmp/f.qcow2", "/tmp");
    name = spec.name;
    ASSERT_TRUE((*h)->StartDomain(spec).ok());
  }
  auto h2 = ConnectLibvirt(kTestUri);
  ASSERT_TRUE(h2.ok());
  auto names = (*h2)->ListDomains(kDomainNamePrefix);
  ASSERT_TRUE(names.ok());
  EXPECT_FALSE(Contains(*names, name));
}

}  // namespace
}  // namespace berth::hv
