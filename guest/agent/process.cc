#include "guest/agent/process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

namespace berth::agent {
namespace {

// What a child that failed before execve writes to the error pipe.
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

[[noreturn]] void ChildFail(int fd, Stage stage, int err, const char* path) {
  ChildError e;
  e.stage = stage;
  e.err = err;
  if (path) {
    std::strncpy(e.path, path, sizeof(e.path) - 1);
  }
  ssize_t n = write(fd, &e, sizeof(e));
  (void)n;
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

}  // namespace

Spawned SpawnInRoot(const ExecMsg& exec, const std::string& root) {
  Spawned out;
  if (exec.argv.empty() || exec.argv[0].empty()) {
    out.error_code = kErrEntrypointNotFound;
    out.error = "empty argv: no entrypoint to run";
    return out;
  }

  // Everything the child needs is prepared before fork.
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
  std::vector<std::string> candidates;  // paths to try, in order
  if (argv0.find('/') != std::string::npos) {
    candidates.push_back(argv0);
  } else {
    size_t start = 0;
    for (;;) {
      size_t end = path_var.find(':', start);
      std::string dir = path_var.substr(start, end == std::string::npos ? std::string::npos : end - start);
      if (dir.empty()) dir = ".";
      candidates.push_back(dir + "/" + argv0);
      if (end == std::string::npos) break;
      start = end + 1;
    }
  }
  const std::string cwd = exec.cwd.empty() ? "/" : exec.cwd;

  int in_pipe[2] = {-1, -1}, out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1}, status_pipe[2] = {-1, -1};
  int devnull = -1;
  auto fail = [&](const char* what) {
    int err = errno;
    for (int* p : {in_pipe, out_pipe, err_pipe, status_pipe}) {
      CloseIf(p[0]);
      CloseIf(p[1]);
    }
    CloseIf(devnull);
    out.error_code = kErrSpawn;
    out.error = std::string(what) + ": " + strerror(err);
    return out;
  };
  if (exec.has_stdin) {
    if (pipe2(in_pipe, O_CLOEXEC) != 0) return fail("pipe");
  } else {
    devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull < 0) return fail("open /dev/null");
  }
  if (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0 || pipe2(status_pipe, O_CLOEXEC) != 0) {
    return fail("pipe");
  }

  pid_t pid = fork();
  if (pid < 0) return fail("fork");
  if (pid == 0) {
    // Child. The agent is single-threaded, so this is safe; still keep it lean.
    const int st = status_pipe[1];
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, nullptr);
    for (int s = 1; s < NSIG; ++s) {
      if (s != SIGKILL && s != SIGSTOP) signal(s, SIG_DFL);
    }
    setsid();
    const int in_fd = exec.has_stdin ? in_pipe[0] : devnull;
    if (dup2(in_fd, 0) < 0 || dup2(out_pipe[1], 1) < 0 || dup2(err_pipe[1], 2) < 0) {
      ChildFail(st, kStageSetup, errno, nullptr);
    }
    if (chroot(root.c_str()) != 0) ChildFail(st, kStageChroot, errno, nullptr);
    if (chdir("/") != 0) ChildFail(st, kStageChroot, errno, nullptr);
    if (chdir(cwd.c_str()) != 0) ChildFail(st, kStageCwd, errno, nullptr);
    const char* chosen = nullptr;
    const char* not_exec = nullptr;
    int not_exec_err = 0;
    for (const auto& c : candidates) {
      int r = CheckExecutable(c.c_str());
      if (r == 0) {
        chosen = c.c_str();
        break;
      }
      if (r != ENOENT && !not_exec) {
        not_exec = c.c_str();
        not_exec_err = r;
      }
    }
    if (!chosen) {
      if (not_exec) ChildFail(st, kStageNotExecutable, not_exec_err, not_exec);
      ChildFail(st, kStageNotFound, ENOENT, nullptr);
    }
    execve(chosen, argv.data(), envp.data());
    ChildFail(st, kStageExec, errno, chosen);
  }

  // Parent.
  CloseIf(in_pipe[0]);
  CloseIf(devnull);
  CloseIf(out_pipe[1]);
  CloseIf(err_pipe[1]);
  CloseIf(status_pipe[1]);
  ChildError e;
  size_t got = 0;
  while (got < sizeof(e)) {
    ssize_t n = read(status_pipe[0], reinterpret_cast<char*>(&e) + got, sizeof(e) - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  CloseIf(status_pipe[0]);
  if (got == 0) {  // EOF: execve succeeded
    out.pid = pid;
    out.stdin_fd = in_pipe[1];
    out.stdout_fd = out_pipe[0];
    out.stderr_fd = err_pipe[0];
    for (int fd : {out.stdin_fd, out.stdout_fd, out.stderr_fd}) {
      if (fd >= 0) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    }
    return out;
  }
  CloseIf(in_pipe[1]);
  CloseIf(out_pipe[0]);
  CloseIf(err_pipe[0]);
  while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
  }
  if (got < sizeof(e)) {
    out.error_code = kErrSpawn;
    out.error = "the child process failed before execve (short status record)";
    return out;
  }
  e.path[sizeof(e.path) - 1] = '\0';
  out.error = Describe(e, exec, path_var, &out.error_code);
  return out;
}

}  // namespace berth::agent
