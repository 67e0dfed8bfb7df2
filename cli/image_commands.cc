#include "cli/image_commands.h"

#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <ostream>
#include <system_error>

#include "common/sha256.h"
#include "images/image_format.h"

namespace berth::cli {
namespace {

// Paths may hold bytes that are not UTF-8; replace them instead of throwing.
std::string Dump(const nlohmann::json& j) {
  return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string AbsolutePath(const std::string& p) {
  std::error_code ec;
  auto abs = std::filesystem::absolute(p, ec);
  return ec ? p : abs.lexically_normal().string();
}

nlohmann::json InfoJson(const std::string& path, const images::ImageInfo& info) {
  return {{"path", path},
          {"format", info.format},
          {"size_bytes", info.size_bytes},
          {"virtual_size_bytes", info.virtual_size_bytes},
          {"filesystem", info.filesystem}};
}

}  // namespace

int RunImageBuild(Env* env, const images::RootfsBuildOptions& opts, std::ostream& out, std::ostream& err) {
  Status st = images::BuildRootfsImage(env, opts);
  if (!st.ok()) {
    err << "berth: image build: " << st.ToString() << "\n";
    return 1;
  }
  // Inspect what was written: the same gate an upload would pass.
  auto info = images::InspectImage(env, opts.output_path);
  if (!info.ok()) {
    err << "berth: image build: built image fails inspection: " << info.status().ToString() << "\n";
    return 1;
  }
  auto sha = Sha256::HexOfFile(opts.output_path);
  if (!sha.ok()) {
    err << "berth: image build: " << sha.status().ToString() << "\n";
    return 1;
  }
  nlohmann::json j = InfoJson(AbsolutePath(opts.output_path), *info);
  j["sha256"] = *sha;
  out << Dump(j) << "\n";
  return 0;
}

int RunImageInspect(Env* env, const std::string& path, std::ostream& out, std::ostream& err) {
  auto info = images::InspectImage(env, path);
  if (!info.ok()) {
    err << "berth: image inspect: " << info.status().ToString() << "\n";
    return info.status().code() == Code::kFailedPrecondition ? 2 : 1;
  }
  out << Dump(InfoJson(AbsolutePath(path), *info)) << "\n";
  return 0;
}

void AddImageCommands(CLI::App& app, int& exit_code) {
  CLI::App* image = app.add_subcommand("image", "Disk images: build locally, push to berthd, list, inspect, remove");
  image->require_subcommand(1);

  auto build_opts = std::make_shared<images::RootfsBuildOptions>();
  CLI::App* build = image->add_subcommand("build", "Build an ext4 root filesystem image from a directory");
  build->add_option("dir", build_opts->source_dir, "Directory whose contents become the image's /")
      ->required();
  build->add_option("-o,--output", build_opts->output_path, "Image file to write")->required();
  build->add_option("--size-mib", build_opts->size_mib, "Filesystem size in MiB (0 = automatic)");
  build->add_option("--format", build_opts->format, "Output format")
      ->check(CLI::IsMember({"qcow2", "raw"}))
      ->capture_default_str();
  build->add_option("--label", build_opts->label, "ext4 volume label (max 16 bytes)")->capture_default_str();
  build->callback([build_opts, &exit_code] {
    exit_code = RunImageBuild(Env::Default(), *build_opts, std::cout, std::cerr);
  });
  // `image inspect` (local file or berthd's record) is registered with the remote commands.
}

}  // namespace berth::cli
