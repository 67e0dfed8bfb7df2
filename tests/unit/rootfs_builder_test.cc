// BuildRootfsImage: a directory tree becomes a bootable ext4 image, proven by
// reading the file back out of it with debugfs.
#include "tests/support/temp_dir.h"
#include "images/rootfs_builder.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "images/image_format.h"

namespace berth::images {
namespace {

namespace fs = std::filesystem;

using ::berth::testing::TempDir;

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

CommandResult MustRun(const std::vector<std::string>& argv) {
  auto r = Env::Default()->Run(argv);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  if (!r.ok()) return {};
  EXPECT_EQ(r->exit_code, 0) << argv[0] << ": " << r->err;
  return *r;
}

std::vector<std::string> Entries(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

class RootfsBuilderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(tmp_.path().empty());
    src_ = tmp_.path() + "/src";
    out_dir_ = tmp_.path() + "/out";
    fs::create_directories(src_ + "/etc");
    fs::create_directories(out_dir_);
    WriteFile(src_ + "/hello.txt", "hello from berth\n");
    WriteFile(src_ + "/etc/hostname", "guest\n");
    fs::create_symlink("hello.txt", src_ + "/greeting");
    // A link out of the tree must stay a link, never be followed.
    fs::create_symlink("/etc/passwd", src_ + "/passwd-link");
  }

  TempDir tmp_;
  std::string src_;
  std::string out_dir_;
};

TEST_F(RootfsBuilderTest, BuildsQcow2WhoseFilesystemHoldsTheTree) {
  RootfsBuildOptions opts;
  opts.source_dir = src_;
  opts.output_path = out_dir_ + "/root.qcow2";
  Status st = BuildRootfsImage(Env::Default(), opts);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(Entries(out_dir_), std::vector<std::string>{"root.qcow2"}) << "temporaries left behind";

  auto info = InspectImage(Env::Default(), opts.output_path);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(info->format, "qcow2");
  EXPECT_EQ(info->virtual_size_bytes, 32u << 20);  // auto size: the 32 MiB floor

  // Back to raw: it is an ext4 filesystem holding our files.
  std::string raw = tmp_.path() + "/back.raw";
  MustRun({"qemu-img", "convert", "-f", "qcow2", "-O", "raw", opts.output_path, raw});
  auto raw_info = InspectImage(Env::Default(), raw);
  ASSERT_TRUE(raw_info.ok()) << raw_info.status().ToString();
  EXPECT_EQ(raw_info->format, "raw");
  EXPECT_EQ(raw_info->filesystem, "ext4");

  EXPECT_EQ(MustRun({"debugfs", "-R", "cat /hello.txt", raw}).out, "hello from berth\n");
  EXPECT_EQ(MustRun({"debugfs", "-R", "cat /etc/hostname", raw}).out, "guest\n");
  std::string link = MustRun({"debugfs", "-R", "stat /greeting", raw}).out;
  EXPECT_NE(link.find("Type: symlink"), std::string::npos) << link;
  EXPECT_NE(link.find("hello.txt"), std::string::npos) << link;
  std::string out_link = MustRun({"debugfs", "-R", "stat /passwd-link", raw}).out;
  EXPECT_NE(out_link.find("Type: symlink"), std::string::npos) << out_link;
  EXPECT_NE(out_link.find("/etc/passwd"), std::string::npos) << out_link;

  std::string stats = MustRun({"debugfs", "-R", "stats", raw}).out;
  EXPECT_NE(stats.find("Filesystem volume name:   berth-root"), std::string::npos);
  std::string root = MustRun({"debugfs", "-R", "stat /", raw}).out;
  EXPECT_NE(root.find("User:     0   Group:     0"), std::string::npos) << root;
}

TEST_F(RootfsBuilderTest, BuildsRawWithExplicitSizeAndLabel) {
  RootfsBuildOptions opts;
  opts.source_dir = src_;
  opts.output_path = out_dir_ + "/root.raw";
  opts.format = "raw";
  opts.size_mib = 48;
  opts.label = "fn-root";
  // An existing output is replaced whole.
  WriteFile(opts.output_path, "old");
  Status st = BuildRootfsImage(Env::Default(), opts);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(Entries(out_dir_), std::vector<std::string>{"root.raw"});
  auto info = InspectImage(Env::Default(), opts.output_path);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(info->format, "raw");
  EXPECT_EQ(info->filesystem, "ext4");
  EXPECT_EQ(info->size_bytes, 48u << 20);
  EXPECT_NE(MustRun({"debugfs", "-R", "stats", opts.output_path}).out.find("Filesystem volume name:   fn-root"),
            std::string::npos);
}

TEST_F(RootfsBuilderTest, MissingSourceDirIsInvalidArgument) {
  RootfsBuildOptions opts;
  opts.source_dir = tmp_.path() + "/does-not-exist";
  opts.output_path = out_dir_ + "/root.qcow2";
  Status st = BuildRootfsImage(Env::Default(), opts);
  EXPECT_EQ(st.code(), Code::kInvalidArgument);
  EXPECT_EQ(st.field(), "source_dir");
  EXPECT_NE(st.message().find("does-not-exist"), std::string::npos) << st.ToString();
  EXPECT_TRUE(Entries(out_dir_).empty());

  // A file is not a directory either.
  opts.source_dir = src_ + "/hello.txt";
  EXPECT_EQ(BuildRootfsImage(Env::Default(), opts).field(), "source_dir");
}

TEST_F(RootfsBuilderTest, TreeTooBigForSizeSaysSo) {
  std::mt19937 rng(1);
  std::string big(6 << 20, '\0');
  for (auto& c : big) c = static_cast<char>(rng());
  WriteFile(src_ + "/big.bin", big);

  RootfsBuildOptions opts;
  opts.source_dir = src_;
  opts.output_path = out_dir_ + "/root.qcow2";
  for (uint64_t size : {2u, 7u}) {  // caught up front; caught from mke2fs's failure
    SCOPED_TRACE(size);
    opts.size_mib = size;
    Status st = BuildRootfsImage(Env::Default(), opts);
    EXPECT_EQ(st.code(), Code::kInvalidArgument) << st.ToString();
    EXPECT_EQ(st.field(), "size_mib");
    EXPECT_NE(st.message().find(std::to_string(size) + " MiB"), std::string::npos) << st.ToString();
    EXPECT_TRUE(Entries(out_dir_).empty()) << "temporaries left behind";
  }
  opts.size_mib = 0;  // auto fits
  Status st = BuildRootfsImage(Env::Default(), opts);
  EXPECT_TRUE(st.ok()) << st.ToString();
}

TEST_F(RootfsBuilderTest, BadOptions) {
  RootfsBuildOptions opts;
  opts.source_dir = src_;
  opts.output_path = out_dir_ + "/root.img";
  opts.format = "vmdk";
  EXPECT_EQ(BuildRootfsImage(Env::Default(), opts).field(), "format");
  opts.format = "qcow2";
  opts.label = "a-label-longer-than-16";
  EXPECT_EQ(BuildRootfsImage(Env::Default(), opts).field(), "label");
  opts.label = "ok";
  opts.output_path = tmp_.path() + "/no-such-dir/root.img";
  EXPECT_EQ(BuildRootfsImage(Env::Default(), opts).field(), "output_path");
  opts.output_path = out_dir_;
  EXPECT_EQ(BuildRootfsImage(Env::Default(), opts).field(), "output_path");
  EXPECT_TRUE(Entries(out_dir_).empty());
}

TEST_F(RootfsBuilderTest, MeasureTreeDoesNotFollowSymlinks) {
  std::string big_outside = tmp_.path() + "/outside.bin";
  WriteFile(big_outside, std::string(64 << 20, 'x'));
  fs::create_symlink(big_outside, src_ + "/big-link");
  fs::create_directory_symlink(tmp_.path(), src_ + "/loop");  // would recurse forever if followed
  auto usage = MeasureTree(src_);
  ASSERT_TRUE(usage.ok()) << usage.status().ToString();
  EXPECT_LT(usage->bytes, 1u << 20);
  EXPECT_EQ(usage->entries, 8u);  // /, etc, hello.txt, etc/hostname, greeting, passwd-link, big-link, loop
  EXPECT_EQ(AutoSizeMib(*usage), 32u);
  EXPECT_EQ(AutoSizeMib({100u << 20, 10}), 130u + 16u);
}

}  // namespace
}  // namespace berth::images
