// berth: the command-line client. Each command group lives in its own file
// and is registered here (see cli/commands.h); exit statuses are in
// cli/remote.h.
#include <iostream>

#include <CLI/CLI.hpp>

#include "cli/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"berth: run code in libvirt/QEMU VMs across a cluster", "berth"};
  app.require_subcommand(1);
  // Global options (--api, --token, --json) may follow any subcommand;
  // subcommands made after this inherit it.
  app.fallthrough();
  app.footer(berth::cli::kExitCodesHelp);
  int exit_code = 0;

  // Command groups. Add new ones here (declared in cli/commands.h).
  auto remote = berth::cli::AddRemoteOptions(app);
  berth::cli::AddImageCommands(app, exit_code);
  berth::cli::AddRemoteCommands(app, remote, exit_code);
  berth::cli::AddProcCommands(app, remote, exit_code);
  berth::cli::AddCompletionCommand(app, exit_code);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help prints and exits 0; every other parse error is bad usage (2).
    int rc = app.exit(e);
    return rc == 0 ? 0 : berth::cli::kExitUsage;
  }
  return exit_code;
}
