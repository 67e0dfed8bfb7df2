// Starting the entrypoint of an Exec inside the function's root filesystem.
#pragma once

#include <sys/types.h>

#include <string>

#include "guest/protocol.h"

namespace berth::agent {

inline constexpr const char* kDefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
inline constexpr const char* kDefaultHome = "/root";

struct Spawned {
  pid_t pid = -1;       // also the process group id (the child calls setsid)
  int stdin_fd = -1;    // write end, nonblocking; -1 when !has_stdin
  int stdout_fd = -1;   // read end, nonblocking
  int stderr_fd = -1;   // read end, nonblocking
  std::string error_code;  // non-empty: nothing runs, fds are closed
  std::string error;
};

// Starts a child with clone(CLONE_VM | CLONE_VFORK) (no copy of the agent's
// memory; the agent waits until the child has exec'd or failed). The child
// becomes a session leader (so pid == its process group), gets the signals
// the agent ignores back at their defaults, an empty signal mask and
// SCHED_OTHER (the agent runs as SCHED_BATCH), chroots
// into `root`, changes to exec.cwd, resolves exec.argv[0] there (a name with
// '/' is a path, otherwise it is searched in the PATH of exec.env, default
// kDefaultPath) and execs it with exactly exec.env plus PATH/HOME defaults;
// stdin is a pipe when exec.has_stdin, else /dev/null. A failure before
// execve is mapped to kErrEntrypointNotFound, kErrEntrypointNotExecutable or
// kErrSpawn; the failed child is reaped here. One call at a time (the child
// runs on a static stack); the agent must not change signal dispositions
// after its first call.
Spawned SpawnInRoot(const ExecMsg& exec, const std::string& root);

// Reads into the page cache what starting exec.argv would read from the
// function's root filesystem at `root`, and runs nothing: the entrypoint
// (resolved as SpawnInRoot does, every path resolved inside `root`), the
// interpreter of a "#!" script, an ELF file's program interpreter and the
// shared libraries it names (DT_NEEDED, searched in the usual library
// folders), recursively, bounded in files and bytes. A template does this
// after dropping the guest's caches, so its clones' first call does not wait
// for the virtual disk. Returns a one-line report ("warm: ...\n").
std::string WarmEntrypointFiles(const ExecMsg& exec, const std::string& root);

}  // namespace berth::agent
