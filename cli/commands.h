// Command groups of the `berth` CLI. Each Add*Commands registers its
// subcommands on the app; their callbacks store the process exit status in
// exit_code (0 on success), which main() returns after parsing.
// Add new command groups here and call them from berth_main.cc.
#pragma once

#include <CLI/CLI.hpp>

namespace berth::cli {

// `berth image build|inspect` (cli/image_commands.cc).
void AddImageCommands(CLI::App& app, int& exit_code);

// `berth image push|ls`, `berth fn ...`, `berth invoke`, `berth ps`, `berth token ...`: HTTP
// commands against berthd (cli/remote_commands.cc). Call after AddImageCommands.
void AddRemoteCommands(CLI::App& app, int& exit_code);

}  // namespace berth::cli
