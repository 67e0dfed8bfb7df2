// berth: the command-line client. Each command group lives in its own file
// and is registered here (see cli/commands.h).
#include <CLI/CLI.hpp>

#include "cli/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"berth: run code in libvirt/QEMU VMs across a cluster", "berth"};
  app.require_subcommand(1);
  int exit_code = 0;

  // Command groups. Add new ones here (declared in cli/commands.h).
  berth::cli::AddImageCommands(app, exit_code);
  berth::cli::AddRemoteCommands(app, exit_code);

  CLI11_PARSE(app, argc, argv);
  return exit_code;
}
