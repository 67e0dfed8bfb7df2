#include "common/env.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

namespace berth {
namespace {

namespace fs = std::filesystem;

Status ErrnoStatus(const std::string& what, int err) {
  Code code = err == ENOENT ? Code::kNotFound : Code::kInternal;
  return {code, what + ": " + std::strerror(err)};
}

class PosixEnv final : public Env {
 public:
  int64_t NowUnixMs() override {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
  int64_t MonotonicMs() override {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  void SleepMs(int64_t ms) override { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

  Result<CommandResult> Run(const std::vector<std::string>& argv, std::string_view input,
                            int64_t timeout_ms) override {
    return RunLimited(argv, input, timeout_ms, RunLimits{});
  }
  Result<CommandResult> RunLimited(const std::vector<std::string>& argv, std::string_view input,
                                   int64_t timeout_ms, const RunLimits& limits) override;

  Result<std::string> ReadFile(const std::string& path) override {
    std::ifstream in(path, std::ios::binary);
    if (!in) return ErrnoStatus("cannot open " + path, errno);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  Status WriteFileAtomic(const std::string& path, std::string_view data, int mode) override {
    // Unique per call: concurrent writers of one path must not share a temp file.
    static std::atomic<uint64_t> counter{0};
    std::string tmp = path + ".tmp." + std::to_string(getpid()) + "." + std::to_string(counter.fetch_add(1));
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) return ErrnoStatus("cannot create " + tmp, errno);
    size_t off = 0;
    while (off < data.size()) {
      ssize_t n = ::write(fd, data.data() + off, data.size() - off);
      if (n < 0) {
        if (errno == EINTR) continue;
        int e = errno;
        ::close(fd);
        ::unlink(tmp.c_str());
        return ErrnoStatus("cannot write " + tmp, e);
      }
      off += static_cast<size_t>(n);
    }
    ::fchmod(fd, static_cast<mode_t>(mode));
    if (::fsync(fd) != 0 || ::close(fd) != 0) {
      ::unlink(tmp.c_str());
      return ErrnoStatus("cannot flush " + tmp, errno);
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      int e = errno;
      ::unlink(tmp.c_str());
      return ErrnoStatus("cannot rename to " + path, e);
    }
    return Status::Ok();
  }

  bool Exists(const std::string& path) override {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0;
  }
  Status RemoveFile(const std::string& path) override {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) return ErrnoStatus("cannot remove " + path, errno);
    return Status::Ok();
  }
  Status RemoveTree(const std::string& path) override {
    std::error_code ec;
    fs::remove_all(path, ec);
    if (ec) return Status::Internal("cannot remove " + path + ": " + ec.message());
    return Status::Ok();
  }
  Status CreateDirs(const std::string& path, int mode) override {
    std::error_code ec;
    fs::create_directories(path, ec);
    if (ec) return Status::Internal("cannot create directory " + path + ": " + ec.message());
    ::chmod(path.c_str(), static_cast<mode_t>(mode));
    return Status::Ok();
  }
  Status Rename(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) return ErrnoStatus("cannot rename " + from + " to " + to, errno);
    return Status::Ok();
  }
  Result<uint64_t> FileSize(const std::string& path) override {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) return ErrnoStatus("cannot stat " + path, errno);
    return static_cast<uint64_t>(st.st_size);
  }
};

// Lowers one resource limit of the calling process (the forked child). Only
// async-signal-safe calls: it runs between fork and exec.
bool LowerLimit(int resource, uint64_t soft, uint64_t hard) {
  struct rlimit cur;
  if (getrlimit(resource, &cur) != 0) return false;
  struct rlimit next;
  next.rlim_max = cur.rlim_max == RLIM_INFINITY ? hard : std::min<rlim_t>(cur.rlim_max, hard);
  next.rlim_cur = std::min<rlim_t>(soft, next.rlim_max);
  return setrlimit(resource, &next) == 0;
}

Result<CommandResult> PosixEnv::RunLimited(const std::vector<std::string>& argv, std::string_view input,
                                           int64_t timeout_ms, const RunLimits& limits) {
  if (argv.empty()) return Status::InvalidArgument("argv", "empty command");
  int in_pipe[2], out_pipe[2], err_pipe[2], exec_pipe[2];
  if (pipe2(in_pipe, O_CLOEXEC) || pipe2(out_pipe, O_CLOEXEC) || pipe2(err_pipe, O_CLOEXEC) ||
      pipe2(exec_pipe, O_CLOEXEC)) {
    return ErrnoStatus("pipe", errno);
  }
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);

  pid_t pid = fork();
  if (pid < 0) return ErrnoStatus("fork", errno);
  if (pid == 0) {
    dup2(in_pipe[0], 0);
    dup2(out_pipe[1], 1);
    dup2(err_pipe[1], 2);
    setpgid(0, 0);
    bool limited = true;
    if (limits.address_space_bytes > 0) {
      limited = LowerLimit(RLIMIT_AS, limits.address_space_bytes, limits.address_space_bytes);
    }
    // The soft limit sends SIGXCPU; the hard limit, a second later, SIGKILL.
    if (limited && limits.cpu_seconds > 0) {
      limited = LowerLimit(RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1);
    }
    if (limited) execvp(cargv[0], cargv.data());
    int e = errno;
    (void)!write(exec_pipe[1], &e, sizeof e);
    _exit(127);
  }
  setpgid(pid, pid);
  ::close(in_pipe[0]);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  ::close(exec_pipe[1]);

  int exec_errno = 0;
  bool exec_failed = ::read(exec_pipe[0], &exec_errno, sizeof exec_errno) == sizeof exec_errno;
  ::close(exec_pipe[0]);

  CommandResult result;
  size_t in_off = 0;
  int in_fd = in_pipe[1];
  if (input.empty() || exec_failed) {
    ::close(in_fd);
    in_fd = -1;
  } else {
    fcntl(in_fd, F_SETFL, O_NONBLOCK);
  }
  int out_fd = out_pipe[0], err_fd = err_pipe[0];
  int64_t deadline = MonotonicMs() + timeout_ms;
  bool timed_out = false;
  signal(SIGPIPE, SIG_IGN);
  while (out_fd >= 0 || err_fd >= 0) {
    pollfd fds[3];
    int n = 0;
    if (out_fd >= 0) fds[n++] = {out_fd, POLLIN, 0};
    if (err_fd >= 0) fds[n++] = {err_fd, POLLIN, 0};
    if (in_fd >= 0) fds[n++] = {in_fd, POLLOUT, 0};
    int64_t left = deadline - MonotonicMs();
    if (left <= 0) {
      timed_out = true;
      kill(-pid, SIGKILL);
      break;
    }
    int r = poll(fds, static_cast<nfds_t>(n), static_cast<int>(std::min<int64_t>(left, 1000)));
    if (r < 0 && errno != EINTR) break;
    for (int i = 0; i < n; ++i) {
      if (!fds[i].revents) continue;
      if (fds[i].fd == in_fd) {
        ssize_t w = ::write(in_fd, input.data() + in_off, input.size() - in_off);
        if (w > 0) in_off += static_cast<size_t>(w);
        if (w < 0 && errno != EAGAIN) in_off = input.size();
        if (in_off >= input.size()) {
          ::close(in_fd);
          in_fd = -1;
        }
        continue;
      }
      char buf[65536];
      ssize_t got = ::read(fds[i].fd, buf, sizeof buf);
      std::string& sink = fds[i].fd == out_fd ? result.out : result.err;
      if (got > 0) {
        sink.append(buf, static_cast<size_t>(got));
      } else if (got == 0 || errno != EINTR) {
        ::close(fds[i].fd);
        (fds[i].fd == out_fd ? out_fd : err_fd) = -1;
      }
    }
  }
  for (int fd : {in_fd, out_fd, err_fd}) {
    if (fd >= 0) ::close(fd);
  }
  // The child may have closed its output and still be running: the deadline
  // covers the whole run, not just the reading.
  int wstatus = 0;
  for (;;) {
    pid_t r = waitpid(pid, &wstatus, timed_out ? 0 : WNOHANG);
    if (r == pid || (r < 0 && errno != EINTR)) break;
    if (r == 0) {
      if (MonotonicMs() >= deadline) {
        timed_out = true;
        kill(-pid, SIGKILL);
      } else {
        SleepMs(5);
      }
    }
  }
  if (exec_failed) {
    return Status(exec_errno == ENOENT ? Code::kUnavailable : Code::kInternal,
                  "cannot run '" + argv[0] + "': " + std::strerror(exec_errno));
  }
  if (timed_out) {
    return Status::DeadlineExceeded("'" + argv[0] + "' did not finish within " + std::to_string(timeout_ms) + " ms");
  }
  result.exit_code = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
  return result;
}

}  // namespace

Result<CommandResult> Env::RunLimited(const std::vector<std::string>& argv, std::string_view input,
                                      int64_t timeout_ms, const RunLimits& /*limits*/) {
  return Run(argv, input, timeout_ms);
}

Env* Env::Default() {
  static PosixEnv env;
  return &env;
}

std::string FirstLine(std::string_view s) {
  auto nl = s.find('\n');
  return std::string(s.substr(0, nl));
}

}  // namespace berth
