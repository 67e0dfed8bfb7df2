#include "guest/agent/process.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

namespace berth::agent {
namespace {

// Where a child failed before execve (ChildError::stage; 0: it did not).
enum Stage : int32_t {
  kStageNotFound = 1,
  kStageNotExecutable = 2,
  kStageCwd = 3,
  kStageChroot = 4,
  kStageSetup = 5,
  kStageExec = 6,
};

struct ChildError {
  int32_t stage = 0;
  int32_t err = 0;
  char path[480] = {};  // the resolved path, when there is one
};

[[noreturn]] void ChildFail(ChildError* e, Stage stage, int err, const char* path) {
  // The child shares the agent's memory (CLONE_VM): the record is read by the
  // agent once it resumes after our _exit.
  e->stage = stage;
  e->err = err;
  if (path) {
    std::strncpy(e->path, path, sizeof(e->path) - 1);
  }
  _exit(127);
}

// 0: a regular file we may execute; otherwise an errno-like reason, with
// ENOENT meaning "does not exist".
int CheckExecutable(const char* path) {
  struct stat st{};
  if (stat(path, &st) != 0) return (errno == ENOTDIR) ? ENOENT : errno;
  if (S_ISDIR(st.st_mode)) return EISDIR;
  if (!S_ISREG(st.st_mode)) return EACCES;
  if (access(path, X_OK) != 0) return errno;
  return 0;
}

std::string Describe(const ChildError& e, const ExecMsg& exec, const std::string& path_var, std::string* code) {
  const std::string argv0 = exec.argv.empty() ? "" : exec.argv[0];
  const std::string resolved = e.path;
  switch (e.stage) {
    case kStageNotFound:
      *code = kErrEntrypointNotFound;
      if (argv0.find('/') != std::string::npos) return "entrypoint '" + argv0 + "' not found in the image";
      return "entrypoint '" + argv0 + "' not found in the image (PATH=" + path_var + ")";
    case kStageNotExecutable:
      *code = kErrEntrypointNotExecutable;
      return "entrypoint '" + argv0 + "'" + (resolved != argv0 ? " (" + resolved + ")" : "") +
             " is not executable: " + strerror(e.err);
    case kStageCwd:
      *code = kErrSpawn;
      return "working directory '" + exec.cwd + "' is not usable in the image: " + strerror(e.err);
    case kStageChroot:
      *code = kErrSpawn;
      return std::string("chroot into the root filesystem: ") + strerror(e.err);
    case kStageExec:
      if (e.err == ENOEXEC || e.err == EACCES) {
        *code = kErrEntrypointNotExecutable;
        return "entrypoint '" + argv0 + "' (" + resolved + ") cannot be executed: " + strerror(e.err);
      }
      *code = kErrSpawn;
      if (e.err == ENOENT) {
        return "execve '" + resolved + "': " + strerror(e.err) +
               " (its interpreter or dynamic loader is missing from the image)";
      }
      return "execve '" + resolved + "': " + strerror(e.err);
    default:
      *code = kErrSpawn;
      return std::string("preparing the child process: ") + strerror(e.err);
  }
}

void CloseIf(int& fd) {
  if (fd >= 0) close(fd);
  fd = -1;
}

// /dev/null of the initramfs, opened once (close-on-exec) for every Exec
// without stdin.
int DevNull() {
  static int fd = -1;
  if (fd < 0) fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  return fd;
}

// The signals the agent ignores (SIG_IGN survives execve; handlers do not),
// terminated by 0. Read once: the agent sets its dispositions at boot, before
// the first Exec, and never changes them.
const int* IgnoredSignals() {
  static int list[NSIG] = {};
  static bool done = false;
  if (!done) {
    int n = 0;
    for (int s = 1; s < NSIG; ++s) {
      struct sigaction sa{};
      if (s != SIGKILL && s != SIGSTOP && sigaction(s, nullptr, &sa) == 0 && sa.sa_handler == SIG_IGN) list[n++] = s;
    }
    done = true;
  }
  return list;
}

// The child's own stack. One Exec at a time, and the agent sleeps while the
// child uses it (CLONE_VFORK), so one static stack is enough.
constexpr size_t kChildStackSize = 64 * 1024;
alignas(64) char child_stack[kChildStackSize];
void* ChildStackTop() { return child_stack + kChildStackSize; }

struct ChildArgs {
  const char* root = nullptr;
  const char* cwd = nullptr;
  int stdin_fd = -1, stdout_fd = -1, stderr_fd = -1;
  char* const* argv = nullptr;
  char* const* envp = nullptr;
  const char* const* candidates = nullptr;  // null-terminated
  const int* ignored = nullptr;             // 0-terminated
  ChildError* error = nullptr;
};

// Runs in the clone()d child, in the agent's memory: no allocation, no
// writes to agent state but *error.
int ChildMain(void* p) {
  const ChildArgs& a = *static_cast<const ChildArgs*>(p);
  ChildError* e = a.error;
  for (const int* s = a.ignored; *s != 0; ++s) signal(*s, SIG_DFL);
  sched_param normal{};
  sched_setscheduler(0, SCHED_OTHER, &normal);  // the agent itself is SCHED_BATCH
  setsid();
  if (dup2(a.stdin_fd, 0) < 0 || dup2(a.stdout_fd, 1) < 0 || dup2(a.stderr_fd, 2) < 0) {
    ChildFail(e, kStageSetup, errno, nullptr);
  }
  if (chroot(a.root) != 0) ChildFail(e, kStageChroot, errno, nullptr);
  if (chdir("/") != 0) ChildFail(e, kStageChroot, errno, nullptr);
  if (chdir(a.cwd) != 0) ChildFail(e, kStageCwd, errno, nullptr);
  const char* chosen = nullptr;
  const char* not_exec = nullptr;
  int not_exec_err = 0;
  for (const char* const* c = a.candidates; *c != nullptr; ++c) {
    int r = CheckExecutable(*c);
    if (r == 0) {
      chosen = *c;
      break;
    }
    if (r != ENOENT && !not_exec) {
      not_exec = *c;
      not_exec_err = r;
    }
  }
  if (!chosen) {
    if (not_exec) ChildFail(e, kStageNotExecutable, not_exec_err, not_exec);
    ChildFail(e, kStageNotFound, ENOENT, nullptr);
  }
  // Signals blocked in the agent (SIGCHLD, SIGIO for its signalfd) are
  // unblocked last: nothing of ours may run a default action before execve.
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  execve(chosen, a.argv, a.envp);
  ChildFail(e, kStageExec, errno, chosen);
}

}  // namespace

Spawned SpawnInRoot(const ExecMsg& exec, const std::string& root) {
  Spawned out;
  if (exec.argv.empty() || exec.argv[0].empty()) {
    out.error_code = kErrEntrypointNotFound;
    out.error = "empty argv: no entrypoint to run";
    return out;
  }

  // Everything the child needs is prepared before the clone: the child shares
  // the agent's memory and must not allocate.
  std::vector<std::string> env_strings;
  std::string path_var = kDefaultPath;
  bool has_path = false, has_home = false;
  for (const auto& [k, v] : exec.env) {
    if (k.empty() || k.find('=') != std::string::npos) continue;
    if (k == "PATH") {
      has_path = true;
      path_var = v;
    }
    if (k == "HOME") has_home = true;
    env_strings.push_back(k + "=" + v);
  }
  if (!has_path) env_strings.push_back(std::string("PATH=") + kDefaultPath);
  if (!has_home) env_strings.push_back(std::string("HOME=") + kDefaultHome);
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv_strings = exec.argv;
  std::vector<char*> argv;
  for (auto& s : argv_strings) argv.push_back(s.data());
  argv.push_back(nullptr);

  const std::string argv0 = exec.argv[0];
  std::vector<std::string> candidate_strings;  // paths to try, in order
  if (argv0.find('/') != std::string::npos) {
    candidate_strings.push_back(argv0);
  } else {
    size_t start = 0;
    for (;;) {
      size_t end = path_var.find(':', start);
      std::string dir = path_var.substr(start, end == std::string::npos ? std::string::npos : end - start);
      if (dir.empty()) dir = ".";
      candidate_strings.push_back(dir + "/" + argv0);
      if (end == std::string::npos) break;
      start = end + 1;
    }
  }
  std::vector<const char*> candidates;
  for (const auto& c : candidate_strings) candidates.push_back(c.c_str());
  candidates.push_back(nullptr);
  const std::string cwd = exec.cwd.empty() ? "/" : exec.cwd;

  int in_pipe[2] = {-1, -1}, out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1};
  auto fail = [&](const char* what) {
    int err = errno;
    for (int* p : {in_pipe, out_pipe, err_pipe}) {
      CloseIf(p[0]);
      CloseIf(p[1]);
    }
    out.error_code = kErrSpawn;
    out.error = std::string(what) + ": " + strerror(err);
    return out;
  };
  int stdin_source = -1;
  if (exec.has_stdin) {
    if (pipe2(in_pipe, O_CLOEXEC) != 0) return fail("pipe");
    stdin_source = in_pipe[0];
  } else {
    stdin_source = DevNull();
    if (stdin_source < 0) return fail("open /dev/null");
  }
  if (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0) return fail("pipe");

  ChildError error;  // written by the child only when it fails before execve
  ChildArgs args;
  args.root = root.c_str();
  args.cwd = cwd.c_str();
  args.stdin_fd = stdin_source;
  args.stdout_fd = out_pipe[1];
  args.stderr_fd = err_pipe[1];
  args.argv = argv.data();
  args.envp = envp.data();
  args.candidates = candidates.data();
  args.ignored = IgnoredSignals();
  args.error = &error;

  // CLONE_VM | CLONE_VFORK (what posix_spawn does): the child runs on its own
  // stack in the agent's memory and the agent sleeps until it has exec'd or
  // exited. Unlike fork(), nothing of the agent is copied or write-protected,
  // which under TCG costs a page-table copy and a fault per touched page.
  const pid_t pid = clone(ChildMain, ChildStackTop(), CLONE_VM | CLONE_VFORK | SIGCHLD, &args);
  if (pid < 0) return fail("clone");

  // Parent, resumed once the child has exec'd or exited.
  CloseIf(in_pipe[0]);
  CloseIf(out_pipe[1]);
  CloseIf(err_pipe[1]);
  if (error.stage == 0) {  // execve succeeded
    out.pid = pid;
    out.stdin_fd = in_pipe[1];
    out.stdout_fd = out_pipe[0];
    out.stderr_fd = err_pipe[0];
    // Only the agent's ends are nonblocking (the child's are its stdio).
    for (int fd : {out.stdin_fd, out.stdout_fd, out.stderr_fd}) {
      if (fd >= 0) fcntl(fd, F_SETFL, O_NONBLOCK);
    }
    return out;
  }
  CloseIf(in_pipe[1]);
  CloseIf(out_pipe[0]);
  CloseIf(err_pipe[0]);
  while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
  }
  error.path[sizeof(error.path) - 1] = '\0';
  out.error = Describe(error, exec, path_var, &out.error_code);
  return out;
}

}  // namespace berth::agent
