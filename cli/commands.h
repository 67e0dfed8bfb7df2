// Command groups of the `berth` CLI. Each Add*Commands registers its
// subcommands on the app; their callbacks store the process exit status in
// exit_code (0 on success; see cli/remote.h for the meaning of the others),
// which main() returns after parsing.
// Add new command groups here and call them from berth_main.cc.
#pragma once

#include <memory>

#include <CLI/CLI.hpp>

#include "cli/remote.h"

namespace berth::cli {

// `berth image build|inspect FILE` (cli/image_commands.cc): local, no daemon.
void AddImageCommands(CLI::App& app, int& exit_code);

// `berth image push|ls|inspect ID|rm|tag`, `berth fn ...`, `berth invoke`,
// `berth executions`, `berth nodes`, `berth token ...`: HTTP commands against
// berthd (cli/remote_commands.cc). Call after AddImageCommands.
void AddRemoteCommands(CLI::App& app, std::shared_ptr<Remote> remote, int& exit_code);

// `berth ps|exec|fork|kill|wait|logs`: VMs as processes (cli/proc_commands.cc).
void AddProcCommands(CLI::App& app, std::shared_ptr<Remote> remote, int& exit_code);

// `berth completion bash`: a completion script generated from the app's own
// definition (cli/completion.cc). Call last, once every command exists.
void AddCompletionCommand(CLI::App& app, int& exit_code);
// The bash completion script for `app` (every subcommand, option and
// IsMember choice it defines).
std::string BashCompletion(const CLI::App& app);

}  // namespace berth::cli
