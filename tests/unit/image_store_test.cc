// ImageStore: content addressing, streaming uploads, abort paths, id hygiene.
#include "tests/support/temp_dir.h"
#include "images/image_store.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "common/sha256.h"

namespace berth::images {
namespace {

namespace fs = std::filesystem;

using ::berth::testing::TempDir;

bool Sh(const std::vector<std::string>& argv) {
  auto r = Env::Default()->Run(argv);
  return r.ok() && r->exit_code == 0;
}

std::vector<std::string> Entries(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

int Mode(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return -1;
  return static_cast<int>(st.st_mode & 07777);
}

class ImageStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(tmp_.path().empty());
    store_dir_ = tmp_.path() + "/store";
    src_ = tmp_.path() + "/root.ext4";
    ASSERT_TRUE(Sh({"mke2fs", "-q", "-t", "ext4", "-F", src_, "4M"}));
    auto content = Env::Default()->ReadFile(src_);
    ASSERT_TRUE(content.ok());
    content_ = *content;
  }

  // Store files other than tmp/.
  std::vector<std::string> StoredFiles() {
    auto names = Entries(store_dir_);
    std::erase(names, "tmp");
    return names;
  }
  std::vector<std::string> TmpFiles() { return Entries(store_dir_ + "/tmp"); }

  TempDir tmp_;
  std::string store_dir_;
  std::string src_;
  std::string content_;
};

TEST_F(ImageStoreTest, ImportTwiceGivesSameIdAndOneFile) {
  ImageStore store(Env::Default(), store_dir_);
  ASSERT_TRUE(store.init_status().ok()) << store.init_status().ToString();
  auto a = store.ImportFile(src_);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  auto b = store.ImportFile(src_);
  ASSERT_TRUE(b.ok()) << b.status().ToString();

  EXPECT_EQ(a->id, Sha256::HexOf(content_));
  EXPECT_EQ(a->id, b->id);
  EXPECT_EQ(a->path, b->path);
  EXPECT_EQ(a->format, "raw");
  EXPECT_EQ(a->filesystem, "ext4");
  EXPECT_EQ(a->size_bytes, content_.size());
  EXPECT_EQ(a->virtual_size_bytes, content_.size());
  EXPECT_EQ(a->path, store_dir_ + "/" + a->id + ".raw");
  EXPECT_EQ(StoredFiles(), std::vector<std::string>{a->id + ".raw"});
  EXPECT_TRUE(TmpFiles().empty());

  // QEMU runs as another user: the dir and files must be readable by it.
  EXPECT_EQ(Mode(store_dir_), 0755);
  EXPECT_EQ(Mode(a->path), 0644);
}

TEST_F(ImageStoreTest, ImportQcow2) {
  std::string q = tmp_.path() + "/disk.qcow2";
  ASSERT_TRUE(Sh({"qemu-img", "convert", "-f", "raw", "-O", "qcow2", src_, q}));
  ImageStore store(Env::Default(), store_dir_);
  auto r = store.ImportFile(q);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->format, "qcow2");
  EXPECT_EQ(r->virtual_size_bytes, content_.size());
  EXPECT_EQ(r->path, store_dir_ + "/" + r->id + ".qcow2");
  auto id = Sha256::HexOfFile(q);
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(r->id, *id);
}

TEST_F(ImageStoreTest, ImportMissingFile) {
  ImageStore store(Env::Default(), store_dir_);
  EXPECT_EQ(store.ImportFile(tmp_.path() + "/nope").status().code(), Code::kNotFound);
  EXPECT_TRUE(TmpFiles().empty());
}

TEST_F(ImageStoreTest, StreamingUploadInChunksHashesWholeContent) {
  ImageStore store(Env::Default(), store_dir_);
  auto up = store.BeginUpload(content_.size());
  ASSERT_TRUE(up.ok()) << up.status().ToString();
  for (size_t off = 0; off < content_.size(); off += 4097) {
    ASSERT_TRUE((*up)->Append(std::string_view(content_).substr(off, 4097)).ok());
  }
  EXPECT_EQ((*up)->bytes_written(), content_.size());
  auto rec = (*up)->Commit();
  ASSERT_TRUE(rec.ok()) << rec.status().ToString();
  EXPECT_EQ(rec->id, Sha256::HexOf(content_));
  EXPECT_TRUE(TmpFiles().empty());

  auto got = store.Get(rec->id);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->path, rec->path);
  EXPECT_EQ(got->format, "raw");
  EXPECT_EQ(got->filesystem, "ext4");
  EXPECT_EQ(got->size_bytes, content_.size());

  // The stored bytes are exactly the uploaded bytes.
  auto stored = Env::Default()->ReadFile(rec->path);
  ASSERT_TRUE(stored.ok());
  EXPECT_TRUE(*stored == content_);

  // Committing twice is refused.
  EXPECT_EQ((*up)->Commit().status().code(), Code::kFailedPrecondition);
}

TEST_F(ImageStoreTest, UploadBeyondMaxIsResourceExhaustedAndLeavesNothing) {
  ImageStore store(Env::Default(), store_dir_);
  auto up = store.BeginUpload(content_.size() - 1);
  ASSERT_TRUE(up.ok());
  Status st;
  for (size_t off = 0; off < content_.size() && st.ok(); off += 65536) {
    st = (*up)->Append(std::string_view(content_).substr(off, 65536));
  }
  EXPECT_EQ(st.code(), Code::kResourceExhausted) << st.ToString();
  EXPECT_EQ(st.field(), "image");
  EXPECT_TRUE(TmpFiles().empty());
  EXPECT_EQ((*up)->Append("x").code(), Code::kFailedPrecondition);
  EXPECT_EQ((*up)->Commit().status().code(), Code::kFailedPrecondition);
  EXPECT_TRUE(StoredFiles().empty());
}

TEST_F(ImageStoreTest, DroppingUncommittedUploadLeavesNothing) {
  ImageStore store(Env::Default(), store_dir_);
  {
    auto up = store.BeginUpload(1 << 30);
    ASSERT_TRUE(up.ok());
    ASSERT_TRUE((*up)->Append(std::string_view(content_).substr(0, 100000)).ok());
    EXPECT_EQ(TmpFiles().size(), 1u);
  }
  EXPECT_TRUE(TmpFiles().empty());
  EXPECT_TRUE(StoredFiles().empty());
}

TEST_F(ImageStoreTest, InvalidUploadRejectedOnCommitAndLeavesNothing) {
  ImageStore store(Env::Default(), store_dir_);
  std::mt19937 rng(7);
  std::string junk(256 * 1024, '\0');
  for (auto& c : junk) c = static_cast<char>(rng());
  junk[510] = 0;
  std::string vmdk = "# Disk DescriptorFile\nversion=1\nRW 2048 FLAT \"/etc/shadow\" 0\n";
  for (const std::string& data : {junk, vmdk, std::string()}) {
    auto up = store.BeginUpload(1 << 30);
    ASSERT_TRUE(up.ok());
    ASSERT_TRUE((*up)->Append(data).ok());
    auto rec = (*up)->Commit();
    ASSERT_FALSE(rec.ok());
    EXPECT_EQ(rec.status().code(), Code::kFailedPrecondition);
    EXPECT_EQ(rec.status().field(), "image");
    EXPECT_TRUE(rec.status().message().find("not a disk image") != std::string::npos ||
                rec.status().message().find("refused image format") != std::string::npos)
        << rec.status().ToString();
    EXPECT_TRUE(TmpFiles().empty());
    EXPECT_TRUE(StoredFiles().empty());
  }
  // ImportFile goes through the same gate.
  std::string bad = tmp_.path() + "/bad.vmdk";
  ASSERT_TRUE(Env::Default()->WriteFileAtomic(bad, vmdk).ok());
  EXPECT_EQ(store.ImportFile(bad).status().code(), Code::kFailedPrecondition);
  EXPECT_TRUE(StoredFiles().empty());
  EXPECT_TRUE(TmpFiles().empty());
}

// The real Env, recording each qemu-img run and what the store held then.
class WatchingEnv : public Env {
 public:
  explicit WatchingEnv(std::function<std::vector<std::string>()> stored) : stored_(std::move(stored)) {}
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
      qemu_img_runs.push_back(argv.at(1));
      stored_during_qemu_img.push_back(stored_().size());
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

  std::vector<std::string> qemu_img_runs;
  std::vector<size_t> stored_during_qemu_img;
  std::vector<RunLimits> limits_seen;

 private:
  Env* real_ = Env::Default();
  std::function<std::vector<std::string>()> stored_;
};

TEST_F(ImageStoreTest, BothInspectionStagesRunBeforeTheImageIsVisible) {
  WatchingEnv env([this] { return StoredFiles(); });
  ImageStore store(&env, store_dir_);
  std::string q = tmp_.path() + "/disk.qcow2";
  ASSERT_TRUE(Sh({"qemu-img", "convert", "-f", "raw", "-O", "qcow2", src_, q}));
  auto content = Env::Default()->ReadFile(q);
  ASSERT_TRUE(content.ok());
  auto up = store.BeginUpload(1 << 30);
  ASSERT_TRUE(up.ok());
  ASSERT_TRUE((*up)->Append(*content).ok());
  auto rec = (*up)->Commit();
  ASSERT_TRUE(rec.ok()) << rec.status().ToString();
  EXPECT_EQ(env.qemu_img_runs, (std::vector<std::string>{"info", "check"}));
  EXPECT_EQ(env.stored_during_qemu_img, (std::vector<size_t>{0, 0}));
  for (const auto& l : env.limits_seen) {
    EXPECT_GT(l.address_space_bytes, 0u);
    EXPECT_GT(l.cpu_seconds, 0u);
  }
  EXPECT_EQ(StoredFiles().size(), 1u);

  // Raw images are cross-checked too (qemu-img info -f raw).
  env.qemu_img_runs.clear();
  ASSERT_TRUE(store.ImportFile(src_).ok());
  EXPECT_EQ(env.qemu_img_runs, (std::vector<std::string>{"info"}));

  // Looking images up re-reads headers only: no qemu-img on the invoke path.
  env.qemu_img_runs.clear();
  EXPECT_TRUE(store.Get(rec->id).ok());
  EXPECT_EQ(store.List().size(), 2u);
  EXPECT_TRUE(env.qemu_img_runs.empty());
}

TEST_F(ImageStoreTest, DeclaredFormatIsEnforcedAtCommit) {
  ImageStore store(Env::Default(), store_dir_);
  std::string q = tmp_.path() + "/disk.qcow2";
  ASSERT_TRUE(Sh({"qemu-img", "create", "-q", "-f", "qcow2", q, "16M"}));
  auto content = Env::Default()->ReadFile(q);
  ASSERT_TRUE(content.ok());

  auto up = store.BeginUpload(1 << 30);
  ASSERT_TRUE(up.ok());
  (*up)->ClaimFormat("raw");
  ASSERT_TRUE((*up)->Append(*content).ok());
  auto rec = (*up)->Commit();
  ASSERT_FALSE(rec.ok());
  EXPECT_EQ(rec.status().code(), Code::kFailedPrecondition);
  EXPECT_EQ(rec.status().field(), "image");
  EXPECT_NE(rec.status().message().find("uploaded as raw but is a qcow2 image"), std::string::npos)
      << rec.status().ToString();
  EXPECT_TRUE(StoredFiles().empty());
  EXPECT_TRUE(TmpFiles().empty());

  InspectOptions claim;
  claim.claimed_format = "qcow2";
  auto ok = store.ImportFile(q, claim);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->format, "qcow2");
}

TEST_F(ImageStoreTest, HostileQcow2NeverEntersTheStore) {
  ImageStore store(Env::Default(), store_dir_);
  std::string base = tmp_.path() + "/host-secret.raw";
  std::string top = tmp_.path() + "/top.qcow2";
  ASSERT_TRUE(Sh({"qemu-img", "create", "-q", "-f", "raw", base, "1M"}));
  ASSERT_TRUE(Sh({"qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", top}));
  auto rec = store.ImportFile(top);
  ASSERT_FALSE(rec.ok());
  EXPECT_EQ(rec.status().code(), Code::kFailedPrecondition);
  EXPECT_NE(rec.status().message().find("names a backing file (\"" + base + "\")"), std::string::npos)
      << rec.status().ToString();
  EXPECT_TRUE(StoredFiles().empty());
  EXPECT_TRUE(TmpFiles().empty());
}

TEST_F(ImageStoreTest, IsoOnlyWhenTheCallerAllowsIt) {
  ImageStore store(Env::Default(), store_dir_);
  std::string iso(64 * 1024, '\0');
  iso[0x8000] = 1;
  std::memcpy(iso.data() + 0x8001, "CD001", 5);
  std::string path = tmp_.path() + "/seed.iso";
  ASSERT_TRUE(Env::Default()->WriteFileAtomic(path, iso).ok());
  auto refused = store.ImportFile(path);
  EXPECT_EQ(refused.status().code(), Code::kFailedPrecondition);
  EXPECT_TRUE(StoredFiles().empty());
  InspectOptions allow;
  allow.allow_iso = true;
  auto rec = store.ImportFile(path, allow);
  ASSERT_TRUE(rec.ok()) << rec.status().ToString();
  EXPECT_EQ(rec->format, "raw");
  EXPECT_EQ(rec->filesystem, "iso9660");
  auto got = store.Get(rec->id);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->filesystem, "iso9660");
}

TEST_F(ImageStoreTest, HostileIdsRejected) {
  ImageStore store(Env::Default(), store_dir_);
  auto rec = store.ImportFile(src_);
  ASSERT_TRUE(rec.ok());
  std::string upper = rec->id;
  for (auto& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  for (const std::string& id :
       {std::string("../etc/passwd"), upper, rec->id.substr(1), rec->id + "0", std::string(""),
        "../" + rec->id.substr(3), rec->id.substr(0, 63) + "/", std::string(64, '.'), rec->id + ".raw"}) {
    SCOPED_TRACE(id);
    auto got = store.Get(id);
    EXPECT_EQ(got.status().code(), Code::kInvalidArgument);
    EXPECT_EQ(got.status().field(), "image");
    Status st = store.Remove(id);
    EXPECT_EQ(st.code(), Code::kInvalidArgument);
    EXPECT_EQ(st.field(), "image");
  }
  EXPECT_TRUE(store.Get(rec->id).ok());
}

TEST_F(ImageStoreTest, RemoveThenGetIsNotFound) {
  ImageStore store(Env::Default(), store_dir_);
  auto rec = store.ImportFile(src_);
  ASSERT_TRUE(rec.ok());
  ASSERT_TRUE(store.Remove(rec->id).ok());
  EXPECT_EQ(store.Get(rec->id).status().code(), Code::kNotFound);
  EXPECT_EQ(store.Remove(rec->id).code(), Code::kNotFound);
  EXPECT_TRUE(StoredFiles().empty());
  EXPECT_EQ(store.Get(std::string(64, 'a')).status().code(), Code::kNotFound);
}

TEST_F(ImageStoreTest, ListAndStaleTmpCleanup) {
  {
    ImageStore store(Env::Default(), store_dir_);
    ASSERT_TRUE(store.ImportFile(src_).ok());
    std::string q = tmp_.path() + "/disk.qcow2";
    ASSERT_TRUE(Sh({"qemu-img", "create", "-q", "-f", "qcow2", q, "16M"}));
    ASSERT_TRUE(store.ImportFile(q).ok());
    // Simulate a crash mid-upload: a file left behind in tmp/.
    ASSERT_TRUE(Env::Default()->WriteFileAtomic(store_dir_ + "/tmp/upload-1-1.part", "partial").ok());
    // Junk in the store dir is ignored by List.
    ASSERT_TRUE(Env::Default()->WriteFileAtomic(store_dir_ + "/README", "x").ok());
  }
  ImageStore store(Env::Default(), store_dir_);
  ASSERT_TRUE(store.init_status().ok());
  EXPECT_TRUE(TmpFiles().empty());
  auto list = store.List();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_LT(list[0].id, list[1].id);
  std::vector<std::string> formats = {list[0].format, list[1].format};
  std::sort(formats.begin(), formats.end());
  EXPECT_EQ(formats, (std::vector<std::string>{"qcow2", "raw"}));
}

}  // namespace
}  // namespace berth::images
