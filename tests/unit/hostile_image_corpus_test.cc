// A corpus of hostile disk images, generated here (qemu-img where it can
// make them, hand-written headers otherwise; nothing is downloaded), run
// through the full inspection (berth's header checks, then qemu-img under
// resource limits). Each must be refused with its reason in words, and no
// host file an image refers to (backing file, data file, VMDK extent) may be
// opened or read while it is inspected: inotify watches prove it.
#include "tests/support/temp_dir.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "images/image_format.h"
#include "images/image_store.h"

namespace berth::images {
namespace {

using ::berth::testing::RandomBytes;
using ::berth::testing::TempDir;

bool Sh(const std::vector<std::string>& argv) {
  auto r = Env::Default()->Run(argv);
  return r.ok() && r->exit_code == 0;
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

// Overwrites 8 bytes at `offset` with a big-endian value.
void PatchBe64(const std::string& path, size_t offset, uint64_t v) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  char b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<char>((v >> (56 - 8 * i)) & 0xff);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(b, 8);
}

// Reports every open or read of the watched files.
class OpenWatcher {
 public:
  OpenWatcher() : fd_(inotify_init1(IN_NONBLOCK | IN_CLOEXEC)) {}
  ~OpenWatcher() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool ok() const { return fd_ >= 0; }
  bool Watch(const std::string& path) {
    int wd = inotify_add_watch(fd_, path.c_str(), IN_OPEN | IN_ACCESS);
    if (wd < 0) return false;
    paths_[wd] = path;
    return true;
  }
  // Events queued so far ("open /path", "access /path"); the kernel queues
  // them synchronously, so whatever a finished child did is already here.
  std::vector<std::string> Drain() {
    std::vector<std::string> out;
    alignas(struct inotify_event) char buf[4096];
    for (;;) {
      ssize_t n = ::read(fd_, buf, sizeof buf);
      if (n <= 0) break;
      for (char* p = buf; p < buf + n;) {
        auto* e = reinterpret_cast<struct inotify_event*>(p);
        std::string what = (e->mask & IN_OPEN) ? "open " : (e->mask & IN_ACCESS) ? "access " : "other ";
        out.push_back(what + paths_[e->wd]);
        p += sizeof(struct inotify_event) + e->len;
      }
    }
    return out;
  }

 private:
  int fd_;
  std::map<int, std::string> paths_;
};

// The real Env, recording which qemu-img subcommands ran and their limits.
class RecordingEnv : public Env {
 public:
  int64_t NowUnixMs() override { return real_->NowUnixMs(); }
  int64_t MonotonicMs() override { return real_->MonotonicMs(); }
  void SleepMs(int64_t ms) override { real_->SleepMs(ms); }
  Result<CommandResult> Run(const std::vector<std::string>& argv, std::string_view input,
                            int64_t timeout_ms) override {
    return real_->Run(argv, input, timeout_ms);
  }
  Result<CommandResult> RunLimited(const std::vector<std::string>& argv, std::string_view input, int64_t timeout_ms,
                                   const RunLimits& limits) override {
    if (!argv.empty() && argv[0] == "qemu-img") {
      qemu_img.push_back(argv.at(1));
      limits_seen.push_back(limits);
    }
    return real_->RunLimited(argv, input, timeout_ms, limits);
  }
  Result<std::string> ReadFile(const std::string& path) override { return real_->ReadFile(path); }
  Status WriteFileAtomic(const std::string& path, std::string_view data, int mode) override {
    return real_->WriteFileAtomic(path, data, mode);
  }
  bool Exists(const std::string& path) override { return real_->Exists(path); }
  Status RemoveFile(const std::string& path) override { return real_->RemoveFile(path); }
  Status RemoveTree(const std::string& path) override { return real_->RemoveTree(path); }
  Status CreateDirs(const std::string& path, int mode) override { return real_->CreateDirs(path, mode); }
  Status Rename(const std::string& from, const std::string& to) override { return real_->Rename(from, to); }
  Result<uint64_t> FileSize(const std::string& path) override { return real_->FileSize(path); }

  std::vector<std::string> qemu_img;
  std::vector<RunLimits> limits_seen;

 private:
  Env* real_ = Env::Default();
};

struct HostileCase {
  std::string name;
  std::string path;
  InspectOptions options;
  std::vector<std::string> needles;     // words the rejection must contain
  std::vector<std::string> references;  // host files the image points at
};

std::string Quoted(const std::string& s) { return "\"" + s + "\""; }

class HostileImageCorpusTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_FALSE(dir_.path().empty()); }

  // A host file an image will point at: it exists, so an open would succeed
  // (and be seen).
  std::string Secret(const std::string& name) {
    std::string p = dir_.File(name);
    WriteFile(p, std::string(1 << 20, 's'));
    return p;
  }

  std::vector<HostileCase> BuildCorpus() {
    std::vector<HostileCase> c;
    auto qemu_img = [](std::vector<std::string> args) {
      args.insert(args.begin(), {"qemu-img", "create", "-q"});
      return Sh(args);
    };

    // qcow2 whose backing file is a host file.
    std::string backing = Secret("secret-backing.raw");
    for (const char* compat : {"1.1", "0.10"}) {
      std::string p = dir_.File(std::string("backed-") + compat + ".qcow2");
      EXPECT_TRUE(qemu_img({"-f", "qcow2", "-o", std::string("compat=") + compat, "-b", backing, "-F", "raw", p}));
      c.push_back({std::string("qcow2 (compat ") + compat + ") with a backing file", p, {},
                   {"qcow2 image names a backing file (" + Quoted(backing) + ")",
                    "images with backing files are refused"},
                   {backing}});
    }

    // qcow2 with an external data file.
    std::string data = dir_.File("secret-data.raw");
    std::string with_data = dir_.File("datafile.qcow2");
    EXPECT_TRUE(qemu_img({"-f", "qcow2", "-o", "data_file=" + data, with_data, "1M"}));
    c.push_back({"qcow2 with an external data file", with_data, {},
                 {"qcow2 image uses an external data file (" + Quoted(data) + ")",
                  "images with external data files are refused"},
                 {data}});

    // A clean qcow2, declared as raw.
    std::string clean = dir_.File("clean.qcow2");
    EXPECT_TRUE(qemu_img({"-f", "qcow2", clean, "16M"}));
    InspectOptions as_raw;
    as_raw.claimed_format = "raw";
    c.push_back({"qcow2 declared as raw", clean, as_raw, {"image was uploaded as raw but is a qcow2 image"}, {}});

    // qcow2 claiming a 1 EiB disk.
    std::string huge = dir_.File("huge.qcow2");
    EXPECT_TRUE(qemu_img({"-f", "qcow2", huge, "16M"}));
    PatchBe64(huge, 24, uint64_t{1} << 60);
    c.push_back({"qcow2 with a 1 EiB virtual size", huge, {},
                 {"qcow2 virtual size 1152921504606846976 bytes (1 EiB) exceeds the limit of 1099511627776 bytes "
                  "(1 TiB)"},
                 {}});

    // qcow2 cut inside its header.
    std::string truncated = dir_.File("truncated.qcow2");
    EXPECT_TRUE(qemu_img({"-f", "qcow2", truncated, "16M"}));
    std::filesystem::resize_file(truncated, 48);
    c.push_back({"truncated qcow2 header", truncated, {}, {"truncated qcow2 header"}, {}});

    // VMDK text descriptor whose extent is a host file (hand-written).
    std::string extent = Secret("secret-extent.raw");
    std::string desc = dir_.File("hostpath.vmdk");
    WriteFile(desc, "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
                    "createType=\"monolithicFlat\"\n\n# Extent description\nRW 2048 FLAT " +
                        Quoted(extent) + " 0\n\n# The Disk Data Base\nddb.virtualHWVersion = \"4\"\n");
    c.push_back({"VMDK descriptor naming a host path", desc, {},
                 {"refused image format: VMDK descriptor", "(it names " + Quoted(extent) + ")"},
                 {extent}});

    // VMDK descriptor made by qemu-img: its flat extent is a separate file.
    std::string flat_desc = dir_.File("flat.vmdk");
    EXPECT_TRUE(qemu_img({"-f", "vmdk", "-o", "subformat=monolithicFlat", flat_desc, "1M"}));
    c.push_back({"VMDK monolithicFlat descriptor", flat_desc, {},
                 {"VMDK descriptor", "flat-flat.vmdk"}, {dir_.File("flat-flat.vmdk")}});

    // VMDK sparse extent with a parent (backing) file.
    std::string vmdk_parent = dir_.File("secret-vmdk-parent.vmdk");  // a VMDK's parent must be a VMDK
    EXPECT_TRUE(qemu_img({"-f", "vmdk", vmdk_parent, "1M"}));
    std::string vmdk_sparse = dir_.File("sparse.vmdk");
    EXPECT_TRUE(qemu_img({"-f", "vmdk", "-b", vmdk_parent, "-F", "vmdk", vmdk_sparse}));
    c.push_back({"VMDK sparse with a parent", vmdk_sparse, {}, {"refused image format: VMDK sparse image"},
                 {vmdk_parent}});

    // LUKS: hand-written (qemu-img would spend seconds deriving keys).
    std::string luks(4096, '\0');
    std::memcpy(luks.data(), "LUKS\xba\xbe\x00\x01" "aes", 11);
    WriteFile(dir_.File("disk.luks"), luks);
    c.push_back({"LUKS header", dir_.File("disk.luks"), {}, {"refused image format: LUKS encrypted volume"}, {}});

    // VHD: dynamic ("conectix" at the start and the end) and fixed (only a
    // footer, after what is otherwise a valid ext4 filesystem).
    std::string vhd = dir_.File("dynamic.vhd");
    EXPECT_TRUE(qemu_img({"-f", "vpc", vhd, "16M"}));
    c.push_back({"dynamic VHD", vhd, {}, {"refused image format: VHD (VirtualPC) image"}, {}});
    std::string fs = dir_.File("inner.ext4");
    EXPECT_TRUE(Sh({"mke2fs", "-q", "-t", "ext4", "-F", fs, "8M"}));
    std::string fixed = dir_.File("fixed.vhd");
    EXPECT_TRUE(Sh({"qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed", fs, fixed}));
    c.push_back({"fixed VHD around ext4", fixed, {}, {"VHD (VirtualPC) image (footer at the end of the file)"}, {}});

    std::string vhdx = dir_.File("disk.vhdx");
    EXPECT_TRUE(qemu_img({"-f", "vhdx", vhdx, "16M"}));
    c.push_back({"VHDX", vhdx, {}, {"refused image format: VHDX image"}, {}});

    std::string vdi = dir_.File("disk.vdi");
    EXPECT_TRUE(qemu_img({"-f", "vdi", vdi, "16M"}));
    c.push_back({"VDI", vdi, {}, {"refused image format: VirtualBox VDI image"}, {}});

    // QED with a backing file.
    std::string qed_backing = Secret("secret-qed-backing.raw");
    std::string qed = dir_.File("disk.qed");
    EXPECT_TRUE(qemu_img({"-f", "qed", "-b", qed_backing, "-F", "raw", qed}));
    c.push_back({"QED with a backing file", qed, {}, {"refused image format: QED image"}, {qed_backing}});

    // ISO 9660, refused unless allowed (that case is accepted, below).
    WriteFile(dir_.File("seed.iso"), Iso());
    c.push_back({"ISO 9660 by default", dir_.File("seed.iso"), {},
                 {"ISO 9660 image", "accepted only where explicitly allowed"}, {}});

    // Random bytes declared as qcow2.
    WriteFile(dir_.File("random.qcow2"), RandomBytes(1 << 20, 99));
    InspectOptions as_qcow2;
    as_qcow2.claimed_format = "qcow2";
    c.push_back({"random bytes declared as qcow2", dir_.File("random.qcow2"), as_qcow2,
                 {"image was uploaded as qcow2 but is not a disk image (found: unrecognized data)"}, {}});
    return c;
  }

  // A minimal ISO 9660 image: a primary volume descriptor at sector 16 and
  // a terminator at 17.
  static std::string Iso() {
    std::string iso(64 * 1024, '\0');
    iso[0x8000] = 1;
    std::memcpy(iso.data() + 0x8001, "CD001\x01", 6);
    std::memcpy(iso.data() + 0x8028, "cidata", 6);
    iso[0x8800] = static_cast<char>(0xff);
    std::memcpy(iso.data() + 0x8801, "CD001\x01", 6);
    return iso;
  }

  TempDir dir_;
};

TEST_F(HostileImageCorpusTest, EveryHostileImageIsRefusedWithoutTouchingWhatItReferences) {
  std::vector<HostileCase> corpus = BuildCorpus();
  ASSERT_FALSE(::testing::Test::HasFailure()) << "could not build the corpus";

  // Watches go on after the corpus exists (making it touched those files).
  OpenWatcher watcher;
  ASSERT_TRUE(watcher.ok());
  size_t watched = 0;
  for (const auto& c : corpus) {
    for (const auto& ref : c.references) {
      ASSERT_TRUE(std::filesystem::exists(ref)) << c.name << " refers to " << ref << ", which must exist";
      ASSERT_TRUE(watcher.Watch(ref)) << ref;
      ++watched;
    }
  }
  EXPECT_GE(watched, 6u);

  RecordingEnv env;
  ImageStore store(&env, dir_.File("store"));
  ASSERT_TRUE(store.init_status().ok());
  for (const auto& c : corpus) {
    SCOPED_TRACE(c.name);
    auto r = InspectImage(&env, c.path, c.options);
    ASSERT_FALSE(r.ok()) << "accepted: " << c.name;
    EXPECT_EQ(r.status().code(), Code::kFailedPrecondition) << r.status().ToString();
    EXPECT_EQ(r.status().field(), "image");
    for (const auto& needle : c.needles) {
      EXPECT_NE(r.status().message().find(needle), std::string::npos)
          << "reason '" << r.status().message() << "' does not say '" << needle << "'";
    }
    // The store's commit path gives the same verdict and keeps nothing.
    auto stored = store.ImportFile(c.path, c.options);
    ASSERT_FALSE(stored.ok());
    EXPECT_EQ(stored.status().message(), r.status().message());
    EXPECT_EQ(watcher.Drain(), std::vector<std::string>{}) << "a referenced host file was opened or read";
  }
  EXPECT_TRUE(store.List().empty());
  // Every one was refused by the header stage: qemu-img never saw them.
  EXPECT_EQ(env.qemu_img, std::vector<std::string>{});
}

TEST_F(HostileImageCorpusTest, TheWatchWouldSeeAFollowedReference) {
  // Control for the test above: letting qemu-img follow a backing file is
  // seen by the same watch.
  std::string backing = Secret("secret-backing.raw");
  std::string top = dir_.File("top.qcow2");
  ASSERT_TRUE(Sh({"qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", "raw", top}));
  OpenWatcher watcher;
  ASSERT_TRUE(watcher.ok());
  ASSERT_TRUE(watcher.Watch(backing));
  ASSERT_TRUE(Sh({"qemu-img", "info", "-f", "qcow2", "--backing-chain", top}));
  auto events = watcher.Drain();
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.front(), "open " + backing);
}

TEST_F(HostileImageCorpusTest, ValidImagesPassBothStages) {
  std::string fs = dir_.File("root.ext4");
  ASSERT_TRUE(Sh({"mke2fs", "-q", "-t", "ext4", "-F", fs, "8M"}));
  std::string q = dir_.File("root.qcow2");
  ASSERT_TRUE(Sh({"qemu-img", "convert", "-f", "raw", "-O", "qcow2", fs, q}));

  RecordingEnv env;
  auto raw = InspectImage(&env, fs);
  ASSERT_TRUE(raw.ok()) << raw.status().ToString();
  EXPECT_EQ(raw->format, "raw");
  EXPECT_EQ(raw->filesystem, "ext4");
  EXPECT_EQ(env.qemu_img, (std::vector<std::string>{"info"}));

  env.qemu_img.clear();
  InspectOptions declared;
  declared.claimed_format = "qcow2";
  auto qcow2 = InspectImage(&env, q, declared);
  ASSERT_TRUE(qcow2.ok()) << qcow2.status().ToString();
  EXPECT_EQ(qcow2->format, "qcow2");
  EXPECT_EQ(qcow2->virtual_size_bytes, 8u << 20);
  EXPECT_EQ(env.qemu_img, (std::vector<std::string>{"info", "check"}));
  for (const auto& l : env.limits_seen) {
    EXPECT_EQ(l.address_space_bytes, uint64_t{1} << 30);
    EXPECT_EQ(l.cpu_seconds, 30u);
  }

  // An ISO passes too, where the caller allows it (cloud-init seeds).
  WriteFile(dir_.File("seed.iso"), Iso());
  env.qemu_img.clear();
  InspectOptions allow_iso;
  allow_iso.allow_iso = true;
  auto iso = InspectImage(&env, dir_.File("seed.iso"), allow_iso);
  ASSERT_TRUE(iso.ok()) << iso.status().ToString();
  EXPECT_EQ(iso->format, "raw");
  EXPECT_EQ(iso->filesystem, "iso9660");
  EXPECT_EQ(env.qemu_img, (std::vector<std::string>{"info"}));
}

TEST(RunLimitsTest, LimitsReachTheCommand) {
  RunLimits limits{uint64_t{1} << 30, 30};
  auto r = Env::Default()->RunLimited({"sh", "-c", "ulimit -v; ulimit -t"}, {}, 10'000, limits);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->out, "1048576\n30\n");  // ulimit -v is in KiB
}

TEST(RunLimitsTest, CpuLimitStopsABusyCommand) {
  auto r = Env::Default()->RunLimited({"sh", "-c", "while :; do :; done"}, {}, 20'000, RunLimits{0, 1});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->exit_code == 128 + SIGXCPU || r->exit_code == 128 + SIGKILL) << r->exit_code;
}

TEST(RunLimitsTest, AddressSpaceLimitFailsLargeAllocations) {
  // qemu-img cannot even map itself in 16 MiB: it fails instead of growing.
  auto r = Env::Default()->RunLimited({"qemu-img", "--version"}, {}, 10'000, RunLimits{16 << 20, 0});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_NE(r->exit_code, 0);
  // Unlimited, the same command works: Run keeps its old behaviour.
  auto plain = Env::Default()->Run({"qemu-img", "--version"});
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->exit_code, 0);
}

}  // namespace
}  // namespace berth::images
