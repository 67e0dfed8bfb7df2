// The multi-host harness (tests/multinode/hosts.sh) from C++: libvirtds in
// their own network and mount namespaces on this machine.
#pragma once

#include <sstream>
#include <string>
#include <vector>

#include "common/ids.h"
#include "tests/integration/support/harness.h"

namespace berth::testing {

inline std::string HostsScript() { return std::string(BERTH_SOURCE_DIR) + "/tests/multinode/hosts.sh"; }

struct HostSet {
  std::string state;              // hosts.sh state folder: pass it to "down", "kill", "restart"
  std::vector<std::string> uris;  // qemu+tcp:// URI of each host, in order; empty when "up" failed
  std::string output;             // what hosts.sh printed (the reason when it failed)
};

// `hosts.sh up N` under a fresh state folder /var/lib/berth/<prefix>-<random>.
// The caller runs `hosts.sh down <state>` (StopHosts) whatever happened.
inline HostSet StartHosts(int n, const std::string& prefix = "multinode") {
  HostSet hosts;
  hosts.state = "/var/lib/berth/" + prefix + "-" + RandomHex(6);
  int code = 0;
  hosts.output = Shell(HostsScript() + " up " + std::to_string(n) + " " + hosts.state, &code);
  if (code != 0) return hosts;
  std::istringstream in(hosts.output);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("qemu+tcp://", 0) == 0) hosts.uris.push_back(line);
  }
  return hosts;
}

inline void StopHosts(const std::string& state) {
  if (!state.empty()) Shell(HostsScript() + " down " + state);
}

}  // namespace berth::testing
