#include "images/rootfs_builder.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <system_error>
#include <vector>

#include "images/image_format.h"

namespace berth::images {
namespace {

namespace fs = std::filesystem;

constexpr uint64_t kMiB = 1024 * 1024;
constexpr uint64_t kBlock = 4096;
constexpr uint64_t kMaxSizeMib = kMaxVirtualSizeBytes / kMiB;
constexpr int64_t kToolTimeoutMs = 3'600'000;  // a multi-GiB tree takes a while under mke2fs -d

uint64_t RoundUp(uint64_t n, uint64_t to) { return (n + to - 1) / to * to; }

// First non-empty line of a tool's stderr (its actual complaint).
std::string ToolError(const CommandResult& r) {
  std::string_view s = r.err.empty() ? std::string_view(r.out) : std::string_view(r.err);
  while (!s.empty() && (s.front() == '\n' || s.front() == ' ')) s.remove_prefix(1);
  std::string line = FirstLine(s);
  if (line.empty()) line = "exit status " + std::to_string(r.exit_code);
  return line;
}

bool OutOfSpace(const CommandResult& r) {
  const std::string& e = r.err;
  return e.find("Could not allocate") != std::string::npos || e.find("No space left") != std::string::npos ||
         e.find("Not enough space") != std::string::npos;
}

// Removes the listed temporary files unless released.
class TempFiles {
 public:
  explicit TempFiles(Env* env) : env_(env) {}
  ~TempFiles() {
    for (const auto& p : paths_) (void)env_->RemoveFile(p);
  }
  void Add(const std::string& p) { paths_.push_back(p); }
  void Release(const std::string& p) { std::erase(paths_, p); }

 private:
  Env* env_;
  std::vector<std::string> paths_;
};

Status RunTool(Env* env, const std::vector<std::string>& argv, CommandResult* out) {
  auto r = env->Run(argv, {}, kToolTimeoutMs);
  if (!r.ok()) return r.status().WithContext(argv[0]);
  *out = std::move(r).value();
  return Status::Ok();
}

}  // namespace

Result<TreeUsage> MeasureTree(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return Status::InvalidArgument("source_dir", "source directory " + dir + " does not exist or is not a directory");
  }
  TreeUsage usage;
  usage.bytes = kBlock;  // the root directory itself
  usage.entries = 1;
  // The default options do not follow directory symlinks, and symlink_status
  // never follows a link: a symlink costs its own inode, not its target's.
  fs::recursive_directory_iterator it(dir, fs::directory_options::none, ec), end;
  if (ec) return Status::InvalidArgument("source_dir", "cannot read " + dir + ": " + ec.message());
  for (; it != end; it.increment(ec)) {
    if (ec) break;
    fs::file_status st = it->symlink_status(ec);
    if (ec) break;
    ++usage.entries;
    switch (st.type()) {
      case fs::file_type::regular: {
        uint64_t size = it->file_size(ec);
        if (ec) return Status::Internal("cannot stat " + it->path().string() + ": " + ec.message());
        usage.bytes += RoundUp(size, kBlock);
        break;
      }
      case fs::file_type::directory:
        usage.bytes += kBlock;
        break;
      case fs::file_type::symlink: {
        // ext4 keeps targets shorter than 60 bytes inside the inode.
        fs::path target = fs::read_symlink(it->path(), ec);
        if (!ec && target.native().size() >= 60) usage.bytes += kBlock;
        ec.clear();
        break;
      }
      default:
        break;  // devices, fifos, sockets: an inode only
    }
  }
  if (ec) return Status::InvalidArgument("source_dir", "cannot read " + dir + ": " + ec.message());
  return usage;
}

uint64_t AutoSizeMib(const TreeUsage& usage) {
  uint64_t padded = usage.bytes / 10 * 13 + (usage.bytes % 10) * 13 / 10;
  uint64_t mib = (padded + kMiB - 1) / kMiB + 16;
  return std::max<uint64_t>(mib, 32);
}

Status BuildRootfsImage(Env* env, const RootfsBuildOptions& opts) {
  if (opts.format != "qcow2" && opts.format != "raw") {
    return Status::InvalidArgument("format", "format must be \"qcow2\" or \"raw\", not \"" + opts.format + "\"");
  }
  if (opts.label.size() > 16) {
    return Status::InvalidArgument("label", "ext4 labels are at most 16 bytes; \"" + opts.label + "\" is longer");
  }
  if (opts.size_mib > kMaxSizeMib) {
    return Status::InvalidArgument("size_mib", "size_mib must be at most " + std::to_string(kMaxSizeMib) + " (1 TiB)");
  }
  if (opts.output_path.empty()) return Status::InvalidArgument("output_path", "output path is empty");
  std::error_code ec;
  if (fs::is_directory(opts.output_path, ec)) {
    return Status::InvalidArgument("output_path", opts.output_path + " is a directory");
  }
  fs::path out_dir = fs::path(opts.output_path).parent_path();
  if (out_dir.empty()) out_dir = ".";
  if (!fs::is_directory(out_dir, ec)) {
    return Status::InvalidArgument("output_path", "directory " + out_dir.string() + " does not exist");
  }
  if (opts.source_dir.empty()) return Status::InvalidArgument("source_dir", "source directory is empty");

  BERTH_ASSIGN_OR_RETURN(TreeUsage usage, MeasureTree(opts.source_dir));
  uint64_t size_mib = opts.size_mib != 0 ? opts.size_mib : AutoSizeMib(usage);
  uint64_t size_bytes = size_mib * kMiB;
  if (usage.bytes > size_bytes) {
    return Status::InvalidArgument(
        "size_mib", "the source tree needs about " + std::to_string((usage.bytes + kMiB - 1) / kMiB) +
                        " MiB but the image size is " + std::to_string(size_mib) +
                        " MiB; raise size_mib or use 0 for automatic sizing");
  }

  // Temporaries sit next to the output so the final rename is atomic.
  std::string stem = opts.output_path + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(env->MonotonicMs());
  std::string tmp_raw = stem + ".raw";
  std::string tmp_out = opts.format == "raw" ? tmp_raw : stem + "." + opts.format;
  TempFiles temps(env);
  temps.Add(tmp_raw);
  temps.Add(tmp_out);

  std::vector<std::string> mke2fs = {"mke2fs", "-q", "-t", "ext4", "-d", SafePathArg(opts.source_dir),
                                     "-L", opts.label, "-E", "root_owner=0:0", "-F"};
  // mke2fs derives the inode count from the size (one per 4 KiB below
  // 512 MiB, one per 16 KiB above, on Debian's mke2fs.conf); a tree of many
  // small files can need more.
  uint64_t inodes_needed = usage.entries + std::max<uint64_t>(1024, usage.entries / 4);
  uint64_t inodes_default = size_bytes / (size_bytes < 512 * kMiB ? 4096 : 16384);
  if (inodes_needed > inodes_default) {
    mke2fs.push_back("-N");
    mke2fs.push_back(std::to_string(inodes_needed));
  }
  mke2fs.push_back(SafePathArg(tmp_raw));
  mke2fs.push_back(std::to_string(size_mib) + "M");

  CommandResult r;
  BERTH_RETURN_IF_ERROR(RunTool(env, mke2fs, &r));
  if (r.exit_code != 0) {
    if (OutOfSpace(r)) {
      return Status::InvalidArgument("size_mib", "the source tree does not fit into " + std::to_string(size_mib) +
                                                     " MiB (mke2fs: " + ToolError(r) +
                                                     "); raise size_mib or use 0 for automatic sizing");
    }
    return Status::Internal("mke2fs failed: " + ToolError(r));
  }

  if (opts.format == "qcow2") {
    BERTH_RETURN_IF_ERROR(
        RunTool(env, {"qemu-img", "convert", "-f", "raw", "-O", "qcow2", SafePathArg(tmp_raw), SafePathArg(tmp_out)},
                &r));
    if (r.exit_code != 0) return Status::Internal("qemu-img convert failed: " + ToolError(r));
    (void)env->RemoveFile(tmp_raw);
  }
  // QEMU runs as libvirt-qemu and must be able to read the image (Env has no
  // chmod, hence the direct call).
  (void)::chmod(tmp_out.c_str(), 0644);
  BERTH_RETURN_IF_ERROR(env->Rename(tmp_out, opts.output_path));
  temps.Release(tmp_out);
  return Status::Ok();
}

}  // namespace berth::images
