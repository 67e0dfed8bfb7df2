// InspectImage against crafted hostile headers and against real images made
// by qemu-img and mke2fs.
#include "tests/support/temp_dir.h"
#include "images/image_format.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace berth::images {
namespace {

using ::berth::testing::TempDir;

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

void PutBe32(std::string& b, size_t off, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[off + i] = static_cast<char>((v >> (24 - 8 * i)) & 0xff);
}
void PutBe64(std::string& b, size_t off, uint64_t v) {
  PutBe32(b, off, static_cast<uint32_t>(v >> 32));
  PutBe32(b, off + 4, static_cast<uint32_t>(v));
}

struct Qcow2Header {
  uint32_t version = 3;
  uint64_t backing_file_offset = 0;
  uint32_t cluster_bits = 16;
  uint64_t virtual_size = uint64_t{1} << 30;
  uint32_t crypt_method = 0;
  uint64_t incompatible = 0;
  // Extra header extensions (type, payload) placed after the header.
  std::vector<std::pair<uint32_t, std::string>> extensions;
};

// One cluster (64 KiB) holding a qcow2 header: enough for the header parser,
// not a usable image (qemu-img is faked for the crafted cases).
std::string MakeQcow2(const Qcow2Header& h) {
  std::string b(65536, '\0');
  std::memcpy(b.data(), "QFI\xfb", 4);
  PutBe32(b, 4, h.version);
  PutBe64(b, 8, h.backing_file_offset);
  if (h.backing_file_offset) {
    PutBe32(b, 16, 11);
    std::memcpy(b.data() + h.backing_file_offset, "/etc/passwd", 11);
  }
  PutBe32(b, 20, h.cluster_bits);
  PutBe64(b, 24, h.virtual_size);
  PutBe32(b, 32, h.crypt_method);
  size_t ext = 72;
  if (h.version == 3) {
    PutBe64(b, 72, h.incompatible);
    PutBe32(b, 96, 4);    // refcount_order
    PutBe32(b, 100, 104);  // header_length
    ext = 104;
  }
  for (const auto& [type, payload] : h.extensions) {
    PutBe32(b, ext, type);
    PutBe32(b, ext + 4, static_cast<uint32_t>(payload.size()));
    std::memcpy(b.data() + ext + 8, payload.data(), payload.size());
    ext += 8 + (payload.size() + 7) / 8 * 8;
  }
  return b;
}

// The real Env, except that qemu-img answers with canned results: `result`
// for `qemu-img info`, `check_result` for `qemu-img check`.
class FakeQemuImgEnv : public Env {
 public:
  int64_t NowUnixMs() override { return real_->NowUnixMs(); }
  int64_t MonotonicMs() override { return real_->MonotonicMs(); }
  void SleepMs(int64_t ms) override { real_->SleepMs(ms); }
  Result<CommandResult> Run(const std::vector<std::string>& argv, std::string_view input,
                            int64_t timeout_ms) override {
    if (!argv.empty() && argv[0] == "qemu-img") {
      calls.push_back(argv);
      last_timeout_ms = timeout_ms;
      if (!run_status.ok()) return run_status;
      return argv.size() > 1 && argv[1] == "check" ? check_result : result;
    }
    return real_->Run(argv, input, timeout_ms);
  }
  Result<CommandResult> RunLimited(const std::vector<std::string>& argv, std::string_view input, int64_t timeout_ms,
                                   const RunLimits& limits) override {
    last_limits = limits;
    return Run(argv, input, timeout_ms);
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

  void SayQcow2(uint64_t virtual_size, const std::string& extra = "") {
    result.exit_code = 0;
    result.out = "{\"virtual-size\": " + std::to_string(virtual_size) +
                 ", \"filename\": \"x\", \"format\": \"qcow2\"" + extra + "}";
  }

  std::vector<std::vector<std::string>> calls;
  int64_t last_timeout_ms = 0;
  RunLimits last_limits;
  CommandResult result;
  CommandResult check_result{0, "{\"check-errors\": 0, \"format\": \"qcow2\"}", ""};
  Status run_status;

 private:
  Env* real_ = Env::Default();
};

void ExpectRejected(const Result<ImageInfo>& r, const std::string& needle) {
  ASSERT_FALSE(r.ok()) << "accepted, expected rejection mentioning: " << needle;
  EXPECT_EQ(r.status().code(), Code::kFailedPrecondition) << r.status().ToString();
  EXPECT_EQ(r.status().field(), "image");
  EXPECT_NE(r.status().message().find(needle), std::string::npos)
      << "message '" << r.status().message() << "' does not mention '" << needle << "'";
}

bool Sh(const std::vector<std::string>& argv) {
  auto r = Env::Default()->Run(argv);
  return r.ok() && r->exit_code == 0;
}

class ImageFormatTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_FALSE(dir_.path().empty()); }
  std::string Crafted(const std::string& name, const Qcow2Header& h) {
    std::string p = dir_.File(name);
    WriteFile(p, MakeQcow2(h));
    return p;
  }
  TempDir dir_;
  FakeQemuImgEnv env_;
};

// ---------------------------------------------------------------- crafted qcow2

TEST_F(ImageFormatTest, CraftedV2HeaderAcceptedAfterQemuImgCrossCheck) {
  Qcow2Header h;
  h.version = 2;
  std::string p = Crafted("v2.qcow2", h);
  env_.SayQcow2(h.virtual_size);
  auto r = InspectImage(&env_, p);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->format, "qcow2");
  EXPECT_EQ(r->virtual_size_bytes, h.virtual_size);
  EXPECT_EQ(r->size_bytes, 65536u);
  EXPECT_EQ(r->filesystem, "");
  // qemu-img info, then qemu-img check; both with an explicit format.
  ASSERT_EQ(env_.calls.size(), 2u);
  EXPECT_EQ(env_.calls[0][1], "info");
  EXPECT_EQ(env_.calls[1][1], "check");
  for (const auto& argv : env_.calls) {
    EXPECT_NE(std::find(argv.begin(), argv.end(), "--output=json"), argv.end());
    auto f = std::find(argv.begin(), argv.end(), "-f");
    ASSERT_NE(f, argv.end());
    EXPECT_EQ(*(f + 1), "qcow2");
    EXPECT_EQ(argv.back(), p);
    EXPECT_EQ(std::find(argv.begin(), argv.end(), "-U"), argv.end());
  }
  EXPECT_GT(env_.last_timeout_ms, 0);
  EXPECT_LE(env_.last_timeout_ms, 120'000);
  // Run under resource limits.
  EXPECT_EQ(env_.last_limits.address_space_bytes, uint64_t{1} << 30);
  EXPECT_EQ(env_.last_limits.cpu_seconds, 30u);
}

TEST_F(ImageFormatTest, CraftedV3HeaderAccepted) {
  Qcow2Header h;
  h.incompatible = 1;  // dirty bit: known, harmless
  h.extensions.push_back({0x6803f857, std::string(48, 'x')});  // feature name table
  std::string p = Crafted("v3.qcow2", h);
  env_.SayQcow2(h.virtual_size);
  auto r = InspectImage(&env_, p);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->virtual_size_bytes, h.virtual_size);
}

TEST_F(ImageFormatTest, BackingFileRejectedBeforeRunningQemuImg) {
  for (uint32_t version : {2u, 3u}) {
    Qcow2Header h;
    h.version = version;
    h.backing_file_offset = 512;
    std::string p = Crafted("backed" + std::to_string(version), h);
    env_.SayQcow2(h.virtual_size);
    ExpectRejected(InspectImage(&env_, p), "qcow2 image names a backing file (\"/etc/passwd\")");
    ExpectRejected(InspectImage(&env_, p), "images with backing files are refused");
  }
  EXPECT_TRUE(env_.calls.empty()) << "qemu-img must never see an image with a backing file";
}

TEST_F(ImageFormatTest, ExternalDataFileBitRejected) {
  Qcow2Header h;
  h.incompatible = 1u << 2;
  env_.SayQcow2(h.virtual_size);
  ExpectRejected(InspectImage(&env_, Crafted("datafile.qcow2", h)), "external data file");
  EXPECT_TRUE(env_.calls.empty());
}

TEST_F(ImageFormatTest, ExternalDataFileNameExtensionRejected) {
  Qcow2Header h;
  h.extensions.push_back({0x44415441, "/etc/shadow"});
  env_.SayQcow2(h.virtual_size);
  ExpectRejected(InspectImage(&env_, Crafted("dataext.qcow2", h)), "external data file (\"/etc/shadow\")");
  // With the incompatible bit too, the name is still reported.
  h.incompatible = 1u << 2;
  ExpectRejected(InspectImage(&env_, Crafted("dataext2.qcow2", h)), "external data file (\"/etc/shadow\")");
  EXPECT_TRUE(env_.calls.empty());
}

TEST_F(ImageFormatTest, UnknownIncompatibleBitRejected) {
  for (int bit : {5, 17, 63}) {
    Qcow2Header h;
    h.incompatible = uint64_t{1} << bit;
    env_.SayQcow2(h.virtual_size);
    ExpectRejected(InspectImage(&env_, Crafted("unknown" + std::to_string(bit), h)), "unknown incompatible");
  }
}

TEST_F(ImageFormatTest, CorruptBitRejected) {
  Qcow2Header h;
  h.incompatible = 1u << 1;
  env_.SayQcow2(h.virtual_size);
  ExpectRejected(InspectImage(&env_, Crafted("corrupt.qcow2", h)), "corrupt");
}

TEST_F(ImageFormatTest, EncryptedRejected) {
  for (uint32_t version : {2u, 3u}) {
    Qcow2Header h;
    h.version = version;
    h.crypt_method = version == 2 ? 1 : 2;  // AES, LUKS
    env_.SayQcow2(h.virtual_size);
    ExpectRejected(InspectImage(&env_, Crafted("enc" + std::to_string(version), h)), "encrypted");
  }
  Qcow2Header h;
  h.extensions.push_back({0x0537be77, std::string(16, '\0')});
  ExpectRejected(InspectImage(&env_, Crafted("fde.qcow2", h)), "encryption");
  EXPECT_TRUE(env_.calls.empty());
}

TEST_F(ImageFormatTest, SanityLimitsEnforced) {
  Qcow2Header h;
  h.virtual_size = (uint64_t{1} << 40) + 512;
  ExpectRejected(InspectImage(&env_, Crafted("huge.qcow2", h)), "exceeds the limit of 1099511627776 bytes (1 TiB)");
  // The limit is the caller's.
  InspectOptions small;
  small.max_virtual_size_bytes = uint64_t{1} << 29;
  h.virtual_size = uint64_t{1} << 30;
  ExpectRejected(InspectImage(&env_, Crafted("1g.qcow2", h), small), "exceeds the limit of 536870912 bytes (512 MiB)");
  h = {};
  h.cluster_bits = 22;
  ExpectRejected(InspectImage(&env_, Crafted("cb22.qcow2", h)), "cluster_bits");
  h.cluster_bits = 8;
  ExpectRejected(InspectImage(&env_, Crafted("cb8.qcow2", h)), "cluster_bits");
  h = {};
  h.version = 1;
  ExpectRejected(InspectImage(&env_, Crafted("v1.qcow", h)), "version 1");
  h.version = 4;
  ExpectRejected(InspectImage(&env_, Crafted("v4.qcow2", h)), "version 4");
  WriteFile(dir_.File("short.qcow2"), std::string("QFI\xfb\0\0\0\3", 8));
  ExpectRejected(InspectImage(&env_, dir_.File("short.qcow2")), "truncated");
  EXPECT_TRUE(env_.calls.empty());
}

TEST_F(ImageFormatTest, UnterminatedExtensionsRejected) {
  Qcow2Header h;
  std::string b = MakeQcow2(h);
  // An extension whose length runs past the first cluster.
  PutBe32(b, 104, 0x12345678);
  PutBe32(b, 108, 0xfffffff0);
  WriteFile(dir_.File("ext.qcow2"), b);
  ExpectRejected(InspectImage(&env_, dir_.File("ext.qcow2")), "header extensions");
}

TEST_F(ImageFormatTest, QemuImgVerdictIsCrossChecked) {
  Qcow2Header h;
  std::string p = Crafted("x.qcow2", h);

  env_.SayQcow2(h.virtual_size, ", \"backing-filename\": \"/etc/passwd\"");
  ExpectRejected(InspectImage(&env_, p), "backing file");

  env_.SayQcow2(h.virtual_size,
                ", \"format-specific\": {\"type\": \"qcow2\", \"data\": {\"data-file\": \"/dev/sda\"}}");
  ExpectRejected(InspectImage(&env_, p), "external data file");

  env_.SayQcow2(h.virtual_size + 512);
  ExpectRejected(InspectImage(&env_, p), "virtual size");

  env_.result.out = "{\"virtual-size\": " + std::to_string(h.virtual_size) + ", \"format\": \"raw\"}";
  ExpectRejected(InspectImage(&env_, p), "qemu-img reads the image as 'raw'");

  env_.SayQcow2(h.virtual_size, ", \"encrypted\": true");
  ExpectRejected(InspectImage(&env_, p), "encrypted");

  // A clean info, then an unclean check.
  env_.SayQcow2(h.virtual_size);
  env_.check_result = {2, "{\"corruptions\": 3, \"check-errors\": 0}", ""};
  ExpectRejected(InspectImage(&env_, p), "qemu-img check found 3 corruptions");
  env_.check_result = {3, "{\"leaks\": 7, \"check-errors\": 0}", ""};
  ExpectRejected(InspectImage(&env_, p), "7 leaked clusters");
  env_.check_result = {128 + SIGXCPU, "", ""};
  ExpectRejected(InspectImage(&env_, p), "CPU time limit");
  env_.check_result = {0, "{}", ""};

  env_.result = {1, "", "qemu-img: Could not open 'x': Image is not in qcow2 format\n"};
  ExpectRejected(InspectImage(&env_, p), "Image is not in qcow2 format");

  env_.result = {0, "not json", ""};
  EXPECT_EQ(InspectImage(&env_, p).status().code(), Code::kInternal);

  env_.run_status = Status::Unavailable("cannot run 'qemu-img': No such file or directory");
  EXPECT_EQ(InspectImage(&env_, p).status().code(), Code::kUnavailable);
  env_.run_status = Status::DeadlineExceeded("'qemu-img' did not finish");
  EXPECT_EQ(InspectImage(&env_, p).status().code(), Code::kDeadlineExceeded);
}

// ------------------------------------------------------------- real qcow2 files

TEST_F(ImageFormatTest, QemuImgCreatedV3AndV2Accepted) {
  std::string v3 = dir_.File("clean.qcow2");
  std::string v2 = dir_.File("clean-v2.qcow2");
  ASSERT_TRUE(Sh({"qemu-img", "create", "-q", "-f", "qcow2", v3, "64M"}));
  ASSERT_TRUE(Sh({"qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", v2, "3G"}));
  auto r = InspectImage(Env::Default(), v3);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->format, "qcow2");
  EXPECT_EQ(r->virtual_size_bytes, 64u * 1024 * 1024);
  EXPECT_GT(r->size_bytes, 0u);
  r = InspectImage(Env::Default(), v2);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->virtual_size_bytes, uint64_t{3} << 30);
}

TEST_F(ImageFormatTest, QemuImgCreatedWithBackingFileRejected) {
  std::string base = dir_.File("base.raw");
  std::string top = dir_.File("top.qcow2");
  ASSERT_TRUE(Sh({"qemu-img", "create", "-q", "-f", "raw", base, "16M"}));
  ASSERT_TRUE(Sh({"qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", top}));
  ExpectRejected(InspectImage(Env::Default(), top), "backing file");
}

TEST_F(ImageFormatTest, QemuImgCreatedWithDataFileRejected) {
  std::string img = dir_.File("img.qcow2");
  ASSERT_TRUE(Sh({"qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file=" + dir_.File("data.raw"), img, "16M"}));
  ExpectRejected(InspectImage(Env::Default(), img), "external data file");
}

TEST_F(ImageFormatTest, RelativePathsCannotBecomeQemuProtocols) {
  Qcow2Header h;
  std::string p = Crafted("nbd:localhost:10809", h);
  env_.SayQcow2(h.virtual_size);
  std::string cwd = std::filesystem::current_path().string();
  std::filesystem::current_path(dir_.path());
  auto r = InspectImage(&env_, "nbd:localhost:10809");
  std::filesystem::current_path(cwd);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(env_.calls.at(0).back(), "./nbd:localhost:10809");
  EXPECT_EQ(SafePathArg("/abs/x"), "/abs/x");
  EXPECT_EQ(SafePathArg("-rf"), "./-rf");
}

// ---------------------------------------------------------------------- raw

TEST_F(ImageFormatTest, RawExtFilesystemsAccepted) {
  for (const char* type : {"ext4", "ext3", "ext2"}) {
    std::string p = dir_.File(std::string("fs.") + type);
    ASSERT_TRUE(Sh({"mke2fs", "-q", "-t", type, "-F", p, "8M"})) << type;
    auto r = InspectImage(Env::Default(), p);
    ASSERT_TRUE(r.ok()) << type << ": " << r.status().ToString();
    EXPECT_EQ(r->format, "raw");
    EXPECT_EQ(r->filesystem, type);
    EXPECT_EQ(r->size_bytes, 8u << 20);
    EXPECT_EQ(r->virtual_size_bytes, 8u << 20);
  }
}

TEST_F(ImageFormatTest, RawExtWithOddSizeOrTruncationRejected) {
  std::string p = dir_.File("fs.ext4");
  ASSERT_TRUE(Sh({"mke2fs", "-q", "-t", "ext4", "-F", p, "8M"}));
  std::filesystem::resize_file(p, (8u << 20) + 100);
  ExpectRejected(InspectImage(Env::Default(), p), "multiple of 512");
  std::filesystem::resize_file(p, 4u << 20);
  ExpectRejected(InspectImage(Env::Default(), p), "truncated");
}

// ----------------------------------------------------------- everything else

TEST_F(ImageFormatTest, NonImagesRejectedNamingWhatWasFound) {
  std::mt19937 rng(42);
  std::string random(1 << 20, '\0');
  for (auto& c : random) c = static_cast<char>(rng());
  random[510] = 0;  // no accidental MBR signature

  std::string vmdk =
      "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n"
      "RW 2048 FLAT \"/etc/shadow\" 0\n";
  std::string vhd = "conectix" + std::string(4096, '\0');
  std::string vmdk_sparse = "KDMV" + std::string(4096, '\0');
  std::string iso(64 * 1024, '\0');
  std::memcpy(iso.data() + 0x8001, "CD001", 5);
  std::string tar(10240, '\0');
  std::memcpy(tar.data(), "hello.txt", 9);
  std::memcpy(tar.data() + 257, "ustar", 5);
  std::string vdi(4096, '\0');
  std::memcpy(vdi.data(), "<<< Oracle VM VirtualBox Disk Image >>>\n", 40);
  std::string mbr(1 << 20, '\0');
  mbr[510] = '\x55';
  mbr[511] = '\xaa';

  // A descriptor without the customary comment line: QEMU's own probe rule.
  std::string bare_vmdk = "\n# made by hand\nversion=1\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"/root/x\" 0\n";
  std::string qed = std::string("QED\0", 4) + std::string(4096, '\0');
  std::string vhdx = "vhdxfile" + std::string(4096, '\0');
  std::string luks = "LUKS\xba\xbe" + std::string(4096, '\0');

  struct Case {
    std::string name, data, kind, needle;
  };
  const std::string kNotImage = "not a disk image";
  const std::string kRefused = "refused image format";
  std::vector<Case> cases = {
      {"random.bin", random, kNotImage, "unrecognized data"},
      {"empty.img", "", kNotImage, "empty file"},
      {"desc.vmdk", vmdk, kRefused, "VMDK descriptor, which can reference host files (it names \"/etc/shadow\")"},
      {"bare.vmdk", bare_vmdk, kRefused, "VMDK descriptor"},
      {"sparse.vmdk", vmdk_sparse, kRefused, "VMDK"},
      {"disk.vhd", vhd, kRefused, "VHD"},
      {"disk.vhdx", vhdx, kRefused, "VHDX"},
      {"disk.qed", qed, kRefused, "QED"},
      {"disk.luks", luks, kRefused, "LUKS"},
      {"disk.iso", iso, kRefused, "ISO 9660"},
      {"root.tar", tar, kNotImage, "tar archive"},
      {"disk.vdi", vdi, kRefused, "VDI"},
      {"disk.mbr", mbr, kNotImage, "MBR"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    WriteFile(dir_.File(c.name), c.data);
    auto r = InspectImage(&env_, dir_.File(c.name));
    ExpectRejected(r, c.kind);
    ExpectRejected(r, c.needle);
  }
  EXPECT_TRUE(env_.calls.empty());
}

TEST_F(ImageFormatTest, IsoOnlyWhenAllowed) {
  std::string iso(64 * 1024, '\0');
  iso[0x8000] = 1;
  std::memcpy(iso.data() + 0x8001, "CD001", 5);
  WriteFile(dir_.File("seed.iso"), iso);
  ExpectRejected(InspectImageHeader(dir_.File("seed.iso")), "accepted only where explicitly allowed");
  InspectOptions allow;
  allow.allow_iso = true;
  auto r = InspectImageHeader(dir_.File("seed.iso"), allow);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->format, "raw");
  EXPECT_EQ(r->filesystem, "iso9660");
  EXPECT_EQ(r->virtual_size_bytes, iso.size());
  // An allowed ISO may be declared as iso or raw, not as qcow2.
  allow.claimed_format = "iso";
  EXPECT_TRUE(InspectImageHeader(dir_.File("seed.iso"), allow).ok());
  allow.claimed_format = "raw";
  EXPECT_TRUE(InspectImageHeader(dir_.File("seed.iso"), allow).ok());
  allow.claimed_format = "qcow2";
  ExpectRejected(InspectImageHeader(dir_.File("seed.iso"), allow), "uploaded as qcow2 but is an ISO 9660 image");
}

TEST_F(ImageFormatTest, DeclaredFormatMustMatchContent) {
  Qcow2Header h;
  std::string q = Crafted("claimed.qcow2", h);
  env_.SayQcow2(h.virtual_size);
  InspectOptions o;
  o.claimed_format = "raw";
  ExpectRejected(InspectImage(&env_, q, o), "image was uploaded as raw but is a qcow2 image");
  o.claimed_format = "qcow2";
  EXPECT_TRUE(InspectImage(&env_, q, o).ok());
  o.claimed_format = "vmdk";
  ExpectRejected(InspectImage(&env_, q, o), "declared format 'vmdk' is not one berth accepts");

  std::string fs = dir_.File("fs.ext4");
  ASSERT_TRUE(Sh({"mke2fs", "-q", "-t", "ext4", "-F", fs, "8M"}));
  o.claimed_format = "qcow2";
  ExpectRejected(InspectImageHeader(fs, o), "uploaded as qcow2 but is a raw ext2/3/4 filesystem image");
  o.claimed_format = "raw";
  EXPECT_TRUE(InspectImageHeader(fs, o).ok());

  WriteFile(dir_.File("junk"), ::berth::testing::RandomBytes(1 << 16, 3));
  o.claimed_format = "qcow2";
  ExpectRejected(InspectImage(&env_, dir_.File("junk"), o), "uploaded as qcow2 but is not a disk image");
}

TEST_F(ImageFormatTest, Ext4WithVhdFooterIsRefusedAsPolyglot) {
  // A fixed VHD is raw data plus a 512-byte "conectix" footer: an ext4
  // filesystem with a footer appended is both. Refuse it.
  std::string p = dir_.File("fs.ext4");
  ASSERT_TRUE(Sh({"mke2fs", "-q", "-t", "ext4", "-F", p, "8M"}));
  std::ofstream(p, std::ios::binary | std::ios::app) << "conectix" << std::string(504, '\0');
  ExpectRejected(InspectImageHeader(p), "VHD (VirtualPC) image (footer at the end of the file)");
}

TEST_F(ImageFormatTest, VmdkDescriptorWithExtSuperblockStillRejected) {
  // A polyglot: descriptor text up front, ext magic at 1080.
  std::string p = dir_.File("fs.ext4");
  ASSERT_TRUE(Sh({"mke2fs", "-q", "-t", "ext4", "-F", p, "8M"}));
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  std::string desc = "# Disk DescriptorFile\nRW 2048 FLAT \"/etc/shadow\" 0\n";
  f.write(desc.data(), static_cast<std::streamsize>(desc.size()));
  f.close();
  ExpectRejected(InspectImage(Env::Default(), p), "VMDK descriptor");
}

TEST_F(ImageFormatTest, MissingFileAndDirectory) {
  EXPECT_EQ(InspectImage(&env_, dir_.File("nope")).status().code(), Code::kNotFound);
  ExpectRejected(InspectImage(&env_, dir_.path()), "not a regular file");
}

}  // namespace
}  // namespace berth::images
