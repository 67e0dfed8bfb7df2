#include "guest/agent/process.h"

#include <elf.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <set>
#include <string_view>
#include <vector>

#include "guest/agent/system.h"

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

namespace berth::agent {
namespace {

constexpr int kWarmMaxFiles = 64;
constexpr uint64_t kWarmMaxBytes = 256ull << 20;

// `path` opened read-only with every component (symlinks and ".." too)
// resolved inside the directory `root_fd`, as a chroot would; -1 if not.
int OpenInRoot(int root_fd, const std::string& path) {
  open_how how{};
  how.flags = O_RDONLY | O_CLOEXEC;
  how.resolve = RESOLVE_IN_ROOT;
  return static_cast<int>(syscall(SYS_openat2, root_fd, path.c_str(), &how, sizeof(how)));
}

// The paths an ELF64 file or a "#!" script needs at exec: its interpreter
// and its DT_NEEDED libraries (names without '/', searched by the caller).
void NeededBy(std::string_view f, std::vector<std::string>* paths, std::vector<std::string>* libs) {
  if (f.size() > 2 && f[0] == '#' && f[1] == '!') {
    size_t b = f.find_first_not_of(" \t", 2);
    if (b == std::string_view::npos) return;
    size_t e = f.find_first_of(" \t\n", b);
    if (e == std::string_view::npos) return;
    paths->emplace_back(f.substr(b, e - b));
    return;
  }
  if (f.size() < sizeof(Elf64_Ehdr) || f.compare(0, 4, ELFMAG) != 0 || f[EI_CLASS] != ELFCLASS64) return;
  Elf64_Ehdr eh;
  std::memcpy(&eh, f.data(), sizeof(eh));
  if (eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phoff > f.size() ||
      uint64_t{eh.e_phnum} * sizeof(Elf64_Phdr) > f.size() - eh.e_phoff) {
    return;
  }
  std::vector<Elf64_Phdr> ph(eh.e_phnum);
  std::memcpy(ph.data(), f.data() + eh.e_phoff, ph.size() * sizeof(Elf64_Phdr));
  auto in_file = [&](uint64_t off, uint64_t len) { return off <= f.size() && len <= f.size() - off; };
  // File offset of a virtual address, through the PT_LOAD segments.
  auto offset_of = [&](uint64_t vaddr, uint64_t* off) {
    for (const auto& p : ph) {
      if (p.p_type == PT_LOAD && vaddr >= p.p_vaddr && vaddr - p.p_vaddr < p.p_filesz) {
        *off = p.p_offset + (vaddr - p.p_vaddr);
        return true;
      }
    }
    return false;
  };
  const Elf64_Phdr* dynamic = nullptr;
  for (const auto& p : ph) {
    if (p.p_type == PT_INTERP && in_file(p.p_offset, p.p_filesz) && p.p_filesz > 1) {
      std::string_view interp = f.substr(p.p_offset, p.p_filesz);
      paths->emplace_back(interp.substr(0, interp.find('\0')));
    }
    if (p.p_type == PT_DYNAMIC && in_file(p.p_offset, p.p_filesz)) dynamic = &p;
  }
  if (!dynamic) return;
  std::vector<uint64_t> needed;
  uint64_t strtab = 0, strsz = 0;
  for (uint64_t at = dynamic->p_offset; at + sizeof(Elf64_Dyn) <= dynamic->p_offset + dynamic->p_filesz;
       at += sizeof(Elf64_Dyn)) {
    Elf64_Dyn d;
    std::memcpy(&d, f.data() + at, sizeof(d));
    if (d.d_tag == DT_NULL) break;
    if (d.d_tag == DT_NEEDED) needed.push_back(d.d_un.d_val);
    if (d.d_tag == DT_STRTAB) strtab = d.d_un.d_ptr;
    if (d.d_tag == DT_STRSZ) strsz = d.d_un.d_val;
  }
  uint64_t str_off = 0;
  if (needed.empty() || !offset_of(strtab, &str_off) || !in_file(str_off, strsz)) return;
  std::string_view strings = f.substr(str_off, strsz);
  for (uint64_t n : needed) {
    if (n >= strings.size()) continue;
    std::string_view name = strings.substr(n);
    name = name.substr(0, name.find('\0'));
    if (!name.empty()) libs->emplace_back(name);
  }
}

}  // namespace

std::string WarmEntrypointFiles(const ExecMsg& exec, const std::string& root) {
  const int64_t t0 = MonotonicMs();
  if (exec.argv.empty() || exec.argv[0].empty()) return "warm: no entrypoint\n";
  int root_fd = open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (root_fd < 0) return std::string("warm: opening ") + root + ": " + strerror(errno) + "\n";
  std::string path_var = kDefaultPath;
  if (auto it = exec.env.find("PATH"); it != exec.env.end()) path_var = it->second;
  const std::string cwd = exec.cwd.empty() ? "/" : exec.cwd;

  // Candidates of one wanted file, tried in order; the first that opens counts.
  std::deque<std::vector<std::string>> wanted;
  const std::string& argv0 = exec.argv[0];
  if (argv0.find('/') != std::string::npos) {
    wanted.push_back({argv0[0] == '/' ? argv0 : cwd + "/" + argv0});
  } else {
    std::vector<std::string> in_path;
    size_t start = 0;
    for (;;) {
      size_t end = path_var.find(':', start);
      std::string dir = path_var.substr(start, end == std::string::npos ? std::string::npos : end - start);
      in_path.push_back((dir.empty() ? cwd : dir) + "/" + argv0);
      if (end == std::string::npos) break;
      start = end + 1;
    }
    wanted.push_back(std::move(in_path));
  }
  static const char* const kLibDirs[] = {"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64",
                                         "/lib", "/usr/lib", "/usr/local/lib"};
  std::set<std::pair<dev_t, ino_t>> seen;
  std::set<std::string> asked;
  int files = 0;
  uint64_t bytes = 0;
  volatile unsigned char sink = 0;
  while (!wanted.empty() && files < kWarmMaxFiles && bytes < kWarmMaxBytes) {
    std::vector<std::string> candidates = std::move(wanted.front());
    wanted.pop_front();
    for (const auto& candidate : candidates) {
      int fd = OpenInRoot(root_fd, candidate);
      if (fd < 0) continue;
      struct stat st{};
      if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || !seen.insert({st.st_dev, st.st_ino}).second) {
        close(fd);
        break;
      }
      const uint64_t size = static_cast<uint64_t>(st.st_size);
      void* map = size > 0 && size <= kWarmMaxBytes - bytes ? mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0)
                                                            : MAP_FAILED;
      close(fd);
      if (map == MAP_FAILED) break;
      // One touch per page reads the whole file (MAP_POPULATE would too, but
      // also maps it, which costs the same here).
      const auto* p = static_cast<const unsigned char*>(map);
      for (uint64_t off = 0; off < size; off += 4096) sink = sink + p[off];
      ++files;
      bytes += size;
      std::vector<std::string> paths, libs;
      NeededBy(std::string_view(static_cast<const char*>(map), size), &paths, &libs);
      munmap(map, size);
      for (auto& path : paths) {
        if (asked.insert(path).second) wanted.push_back({path});
      }
      for (auto& lib : libs) {
        if (!asked.insert(lib).second) continue;
        std::vector<std::string> in_dirs;
        for (const char* dir : kLibDirs) in_dirs.push_back(std::string(dir) + "/" + lib);
        wanted.push_back(std::move(in_dirs));
      }
      break;
    }
  }
  close(root_fd);
  return "warm: " + std::to_string(files) + " file(s), " + std::to_string(bytes >> 10) + " KiB in " +
         std::to_string(MonotonicMs() - t0) + " ms\n";
}

}  // namespace berth::agent
