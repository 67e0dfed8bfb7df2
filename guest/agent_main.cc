// berth-agent: /init (PID 1) of the berth guest runtime.
//
// Boot: mount proc/sys/dev/tmp, load the virtio modules, find the
// virtio-serial port kPortName, then serve the host (guest/protocol.h) in a
// single-threaded poll() loop: Hello, Exec (one at a time, run chrooted in the
// function's root filesystem on /dev/vda), Stdin/Stdout/Stderr streaming,
// Kill, Ping, PowerOff. As PID 1 it reaps every orphan and never exits.
//
// virtio-serial from the guest side: while no host is connected, read()
// returns 0 and poll() reports POLLHUP|POLLIN at once (so the port is left
// out of poll() then; a SIGIO from the driver, or a 200 ms tick, prompts a
// re-check), and a nonblocking write() fails with EAGAIN. A host that
// (re)connects must send Hello first: on a new connection the agent sends
// nothing before its Hello reply. Output of a running execution (and its
// Exit) is kept across a disconnect and delivered after that reply; replies
// to the old connection (Pong, Error, Hello) are dropped, as is the unsent
// rest of a frame cut by the disconnect.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <optional>
#include <string>
#include <vector>

#include "guest/agent/network.h"
#include "guest/agent/process.h"
#include "guest/agent/system.h"
#include "guest/protocol.h"

namespace berth::agent {
namespace {

// Every frame the agent sends fits in one write() to the port, which the
// virtio_console driver turns into exactly one virtqueue buffer (it takes at
// most 32 KiB per write). QEMU drops a buffer it could not finish when the host
// socket closes, so a new connection always starts at a frame boundary.
constexpr size_t kMaxPortWrite = 32 * 1024;
constexpr size_t kChunk = kMaxPortWrite - kHeaderSize;  // max Stdout/Stderr payload
constexpr size_t kOutLimit = 4 * 1024 * 1024;    // stop reading children beyond this backlog
constexpr int64_t kDrainMs = 100;                // child gone, pipes still open: wait this long
constexpr int64_t kHostRecheckMs = 200;          // re-check a disconnected port this often
constexpr int64_t kPortWaitMs = 10000;

std::string Dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

struct Running {
  pid_t pid = -1;  // == process group id
  int stdin_fd = -1;
  int stdout_fd = -1;
  int stderr_fd = -1;
  bool has_stdin = false;
  std::string stdin_buf;
  bool stdin_eof = false;  // host sent the empty Stdin frame
  int64_t start_ms = 0;
  int64_t deadline_ms = 0;  // 0: none
  bool timed_out = false;
  bool reaped = false;
  int status = 0;
  int64_t drain_since_ms = 0;  // reaped, waiting for the pipes to close
  int64_t group_killed_ms = 0;  // drain took too long: group killed at
};

void CloseFd(int& fd) {
  if (fd >= 0) close(fd);
  fd = -1;
}

class Agent {
 public:
  Agent(std::string port_path, int sig_fd) : port_path_(std::move(port_path)), sig_fd_(sig_fd) {}

  void Step();  // one poll round; exceptions propagate to the caller

 private:
  struct OutFrame {
    std::string bytes;
    bool stream;  // Stdout/Stderr/Exit of an execution: survives a reconnect
  };

  void OpenPort();
  void CheckHost();
  void OnDisconnect();
  void ReadPort();
  void Flush();
  bool CanSend() const { return port_fd_ >= 0 && host_up_ && !awaiting_hello_ && !outq_.empty(); }
  void Enqueue(std::string bytes, bool stream);
  void HandleFrame(const Frame& f);
  void HandleExec(const std::string& payload);
  void SendExitError(const std::string& code, const std::string& message);
  // A live-forked child (Hello.forked_from_pid): records the parent's pid
  // for the processes inside (/run/berth/forked, BERTH_FORKED_FROM).
  void MarkForked(int64_t parent_pid, const std::string& execution_id);
  void DrainSignals();
  void Reap();
  void ReadChild(int& fd, MsgType type);
  void WriteStdin();
  void Advance(int64_t now);
  void Finish();

  std::string port_path_;
  int sig_fd_;
  int port_fd_ = -1;
  bool host_up_ = false;
  bool awaiting_hello_ = true;
  bool discard_until_hangup_ = false;
  FrameDecoder decoder_;
  std::deque<OutFrame> outq_;
  size_t out_off_ = 0;    // bytes of outq_.front() already written
  size_t out_bytes_ = 0;  // total queued bytes
  std::optional<Running> run_;
  int64_t forked_from_pid_ = 0;
};

void WriteForkMarker(const std::string& root, int64_t parent_pid, const std::string& execution_id) {
  const std::string run = root + "/run";
  if (access(run.c_str(), F_OK) != 0) mkdir(run.c_str(), 0755);
  const std::string dir = run + "/berth";
  mkdir(dir.c_str(), 0755);
  const std::string path = dir + "/forked";
  const std::string body = std::to_string(parent_pid) + "\n";
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    LogErrno("writing " + path, errno);
    return;
  }
  if (write(fd, body.data(), body.size()) != static_cast<ssize_t>(body.size())) LogErrno("writing " + path, errno);
  close(fd);
  if (!execution_id.empty()) {
    const std::string id_path = dir + "/execution_id";
    int id_fd = open(id_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (id_fd >= 0) {
      std::string id = execution_id + "\n";
      (void)!write(id_fd, id.data(), id.size());
      close(id_fd);
    }
  }
}

// The function's root filesystem is mounted at kRootMount (another device than its parent folder).
bool RootfsMounted() {
  struct stat root {}, parent {};
  if (stat(kRootMount, &root) != 0 || stat("/mnt", &parent) != 0) return false;
  return root.st_dev != parent.st_dev;
}

// One "Field:  N kB" value of /proc/meminfo in KiB; -1 if absent.
long MemInfoKb(const char* field) {
  FILE* f = std::fopen("/proc/meminfo", "re");
  if (!f) return -1;
  char line[256];
  long kb = -1;
  const size_t n = std::strlen(field);
  while (std::fgets(line, sizeof(line), f)) {
    if (std::strncmp(line, field, n) == 0) {
      kb = std::strtol(line + n, nullptr, 10);
      break;
    }
  }
  std::fclose(f);
  return kb;
}

long ReadProcLong(const char* path) {
  FILE* f = std::fopen(path, "re");
  if (!f) return -1;
  long v = -1;
  if (std::fscanf(f, "%ld", &v) != 1) v = -1;
  std::fclose(f);
  return v;
}

void WriteProcFile(const char* path, const char* value) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return;
  (void)!write(fd, value, std::strlen(value));
  close(fd);
}

// ExecMsg::release_memory: freed guest pages keep their old bytes (the
// decompressed initramfs, boot-time buffers, dropped caches), and a save
// writes every non-zero page. A child touches all free memory but a reserve
// once (the kernel hands out zeroed pages) and exits, which gives the pages
// back zeroed. A child, so an out-of-memory kill can only hit it, never PID 1.
std::string ReleaseGuestMemory() {
  const int64_t t0 = MonotonicMs();
  sync();
  WriteProcFile("/proc/sys/vm/drop_caches", "3");
  WriteProcFile("/proc/sys/vm/compact_memory", "1");
  const long free_kb = MemInfoKb("MemFree:");
  const long min_free_kb = ReadProcLong("/proc/sys/vm/min_free_kbytes");
  const long reserve_kb = std::max<long>(8 * 1024, 3 * std::max<long>(min_free_kb, 0));
  long zero_kb = free_kb > reserve_kb ? free_kb - reserve_kb : 0;
  std::string result = "ok";
  if (zero_kb > 0) {
    pid_t pid = fork();
    if (pid == 0) {
      WriteProcFile("/proc/self/oom_score_adj", "1000");
      const size_t len = static_cast<size_t>(zero_kb) * 1024;
      void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) _exit(1);
      volatile char* bytes = static_cast<volatile char*>(p);
      for (size_t off = 0; off < len; off += 4096) bytes[off] = 0;
      _exit(0);
    }
    int status = 0;
    if (pid < 0) {
      result = std::string("fork: ") + std::strerror(errno);
      zero_kb = 0;
    } else {
      while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        result = "zero-fill child ended with status " + std::to_string(status);
      }
    }
  }
  return "release_memory: " + result + "; MemFree " + std::to_string(free_kb / 1024) + " MiB, zero-filled " +
         std::to_string(zero_kb / 1024) + " MiB, MemFree after " + std::to_string(MemInfoKb("MemFree:") / 1024) +
         " MiB, " + std::to_string(MonotonicMs() - t0) + " ms\n";
}

void Agent::MarkForked(int64_t parent_pid, const std::string& execution_id) {
  forked_from_pid_ = parent_pid;
  WriteForkMarker("", parent_pid, execution_id);
  if (RootfsMounted()) WriteForkMarker(kRootMount, parent_pid, execution_id);
}

void Agent::OpenPort() {
  port_fd_ = open(port_path_.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (port_fd_ < 0) {
    LogErrno("opening " + port_path_, errno);
    return;
  }
  // The driver sends SIGIO when the host (dis)connects and when data arrives;
  // it is blocked and read through the signalfd, so it only wakes poll().
  fcntl(port_fd_, F_SETOWN, getpid());
  fcntl(port_fd_, F_SETFL, fcntl(port_fd_, F_GETFL) | O_ASYNC);
  host_up_ = false;
  awaiting_hello_ = true;
}

void Agent::CheckHost() {
  pollfd p{port_fd_, POLLIN, 0};
  if (poll(&p, 1, 0) < 0) return;
  if (p.revents & POLLNVAL) {
    CloseFd(port_fd_);
    return;
  }
  if (!(p.revents & (POLLHUP | POLLERR))) {
    host_up_ = true;  // a host is connected; it speaks first (Hello)
  }
}

void Agent::OnDisconnect() {
  host_up_ = false;
  awaiting_hello_ = true;
  discard_until_hangup_ = false;
  decoder_ = FrameDecoder();
  if (out_off_ > 0 && !outq_.empty()) {  // the cut frame is useless to the next host
    out_bytes_ -= outq_.front().bytes.size() - out_off_;
    outq_.pop_front();
  }
  out_off_ = 0;
  std::deque<OutFrame> keep;
  for (auto& f : outq_) {
    if (f.stream) {
      keep.push_back(std::move(f));
    } else {
      out_bytes_ -= f.bytes.size();
    }
  }
  outq_.swap(keep);
}

void Agent::Enqueue(std::string bytes, bool stream) {
  out_bytes_ += bytes.size();
  outq_.push_back({std::move(bytes), stream});
}

void Agent::Flush() {
  while (CanSend()) {
    OutFrame& f = outq_.front();
    ssize_t n = write(port_fd_, f.bytes.data() + out_off_, f.bytes.size() - out_off_);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN) {
        LogErrno("writing to the host", errno);
        // Treat as a hang-up; re-checked on the next round.
        OnDisconnect();
      }
      return;
    }
    out_off_ += static_cast<size_t>(n);
    if (out_off_ == f.bytes.size()) {
      out_bytes_ -= f.bytes.size();
      out_off_ = 0;
      outq_.pop_front();
    }
  }
}

void Agent::ReadPort() {
  char buf[65536];
  for (int rounds = 0; rounds < 64; ++rounds) {
    ssize_t n = read(port_fd_, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return;
      LogErrno("reading from the host", errno);
      OnDisconnect();
      return;
    }
    if (n == 0) {  // no host connected (any more)
      OnDisconnect();
      return;
    }
    if (discard_until_hangup_) continue;
    decoder_.Feed(std::string_view(buf, static_cast<size_t>(n)));
    while (auto f = decoder_.Next()) {
      HandleFrame(*f);
      if (!host_up_) return;
    }
    if (!decoder_.error().empty()) {
      Log("protocol error from the host: " + decoder_.error() + "; ignoring input until it reconnects");
      if (!awaiting_hello_) {
        Enqueue(EncodeFrame(MsgType::kError, Dump(nlohmann::json(ErrorMsg{"protocol_error", decoder_.error()}))),
                false);
      }
      discard_until_hangup_ = true;
      decoder_ = FrameDecoder();
    }
  }
}

void Agent::HandleFrame(const Frame& f) {
  switch (f.type) {
    case MsgType::kHello: {
      // A restored clone must not share random streams or a stale clock with
      // its siblings: take the host's entropy and time with every hello.
      HelloMsg reply;
      if (auto host = ParseBody<HelloMsg>(f.payload)) {
        if (!host->entropy_hex.empty()) {
          reply.entropy_mixed = MixHostEntropy(host->entropy_hex);
          if (!reply.entropy_mixed) Log("host entropy not mixed in");
        }
        if (host->host_time_ms > 0) SetClockMs(host->host_time_ms);
        if (host->forked_from_pid > 0) MarkForked(host->forked_from_pid, host->execution_id);
      }
      reply.agent_version = AgentVersion();
      reply.boot_ms = BootTimeMs();
      reply.kernel = KernelRelease();
      reply.exec_pending = run_.has_value();
      for (const auto& queued : outq_) reply.exec_pending = reply.exec_pending || queued.stream;
      std::string bytes = EncodeFrame(MsgType::kHello, Dump(nlohmann::json(reply)));
      // The reply goes first (after a frame already partly written).
      auto pos = outq_.begin() + (out_off_ > 0 ? 1 : 0);
      out_bytes_ += bytes.size();
      outq_.insert(pos, OutFrame{std::move(bytes), false});
      awaiting_hello_ = false;
      break;
    }
    case MsgType::kNetUp: {  // blocks the loop for at most timeout_ms; nothing runs yet
      NetUpMsg req = ParseBody<NetUpMsg>(f.payload).value_or(NetUpMsg{});
      Enqueue(EncodeFrame(MsgType::kNetReady, Dump(nlohmann::json(BringUpNetwork(req)))), false);
      break;
    }
    case MsgType::kExec:
      HandleExec(f.payload);
      break;
    case MsgType::kStdin:
      if (run_ && run_->has_stdin && run_->stdin_fd >= 0 && !run_->stdin_eof) {
        if (f.payload.empty()) {
          run_->stdin_eof = true;
        } else {
          run_->stdin_buf.append(f.payload);
        }
        WriteStdin();
      }
      break;
    case MsgType::kKill:
      if (run_) {
        auto k = ParseBody<KillMsg>(f.payload);
        int sig = k ? k->signal : SIGKILL;
        if (sig <= 0 || sig >= NSIG) sig = SIGKILL;
        kill(-run_->pid, sig);
      }
      break;
    case MsgType::kPing:
      Enqueue(EncodeFrame(MsgType::kPong, "{}"), false);
      break;
    case MsgType::kPowerOff:
      PowerOff("requested by the host");
    default:
      break;  // unknown or agent->host types: ignored
  }
}

void Agent::SendExitError(const std::string& code, const std::string& message) {
  ExitMsg m;
  m.exit_code = -1;
  m.error_code = code;
  m.error = message.size() > 4096 ? message.substr(0, 4096) + "..." : message;  // one frame, one write
  Enqueue(EncodeFrame(MsgType::kExit, Dump(nlohmann::json(m))), true);
}

void Agent::HandleExec(const std::string& payload) {
  if (run_) {
    Enqueue(EncodeFrame(MsgType::kError,
                        Dump(nlohmann::json(ErrorMsg{kErrBusy, "an execution is already running (pid " +
                                                                   std::to_string(run_->pid) + ")"}))),
            false);
    return;
  }
  auto exec = ParseBody<ExecMsg>(payload);
  if (!exec) {
    SendExitError("bad_request", "malformed Exec message");
    return;
  }
  std::string error;
  if (!EnsureRootfs(&error)) {
    Log(error);
    SendExitError(kErrRootfs, error);
    return;
  }
  if (exec->prepare_only) {
    if (exec->release_memory) {
      std::string report = ReleaseGuestMemory();
      Log(report.substr(0, report.size() - 1));
      Enqueue(EncodeFrame(MsgType::kStdout, report), true);
    }
    if (!exec->argv.empty()) {  // after the drop of the caches, so what it reads stays
      std::string report = WarmEntrypointFiles(*exec, kRootMount);
      Log(report.substr(0, report.size() - 1));
      Enqueue(EncodeFrame(MsgType::kStdout, report), true);
    }
    ExitMsg m;
    m.exit_code = 0;
    Enqueue(EncodeFrame(MsgType::kExit, Dump(nlohmann::json(m))), true);
    return;
  }
  const int64_t start = MonotonicMs();
  if (forked_from_pid_ > 0) {
    exec->env["BERTH_FORKED_FROM"] = std::to_string(forked_from_pid_);
    WriteForkMarker(kRootMount, forked_from_pid_, "");  // EnsureRootfs mounted it
  }
  Spawned s = SpawnInRoot(*exec, kRootMount);
  if (!s.error_code.empty()) {
    SendExitError(s.error_code, s.error);
    return;
  }
  Running r;
  r.pid = s.pid;
  r.stdin_fd = s.stdin_fd;
  r.stdout_fd = s.stdout_fd;
  r.stderr_fd = s.stderr_fd;
  r.has_stdin = exec->has_stdin;
  r.start_ms = start;
  r.deadline_ms = exec->timeout_ms > 0 ? start + exec->timeout_ms : 0;
  run_ = std::move(r);
}

void Agent::DrainSignals() {
  signalfd_siginfo si;
  while (read(sig_fd_, &si, sizeof(si)) == static_cast<ssize_t>(sizeof(si))) {
  }
}

void Agent::Reap() {
  for (;;) {
    int status = 0;
    pid_t p = waitpid(-1, &status, WNOHANG);
    if (p <= 0) return;
    if (run_ && !run_->reaped && p == run_->pid) {
      run_->reaped = true;
      run_->status = status;
      run_->drain_since_ms = MonotonicMs();
    }
  }
}

void Agent::ReadChild(int& fd, MsgType type) {
  static char buf[kChunk];
  for (int rounds = 0; rounds < 16 && fd >= 0 && out_bytes_ < kOutLimit; ++rounds) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return;
      CloseFd(fd);
      return;
    }
    if (n == 0) {
      CloseFd(fd);
      return;
    }
    Enqueue(EncodeFrame(type, std::string_view(buf, static_cast<size_t>(n))), true);
  }
}

void Agent::WriteStdin() {
  Running& r = *run_;
  while (r.stdin_fd >= 0 && !r.stdin_buf.empty()) {
    ssize_t n = write(r.stdin_fd, r.stdin_buf.data(), r.stdin_buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return;
      // EPIPE: the child closed its stdin; the rest is dropped.
      r.stdin_buf.clear();
      CloseFd(r.stdin_fd);
      return;
    }
    r.stdin_buf.erase(0, static_cast<size_t>(n));
  }
  if (r.stdin_fd >= 0 && r.stdin_eof && r.stdin_buf.empty()) CloseFd(r.stdin_fd);
}

void Agent::Advance(int64_t now) {
  if (!run_) return;
  Running& r = *run_;
  if (!r.reaped) {
    if (r.deadline_ms > 0 && now >= r.deadline_ms && !r.timed_out) {
      r.timed_out = true;
      kill(-r.pid, SIGKILL);
    }
    return;
  }
  if (r.stdout_fd < 0 && r.stderr_fd < 0) {
    Finish();
    return;
  }
  // The child is gone but something still holds its pipes open. Time spent
  // blocked on our own output backlog does not count.
  if (out_bytes_ >= kOutLimit) {
    r.drain_since_ms = now;
    if (r.group_killed_ms) r.group_killed_ms = now;
    return;
  }
  if (!r.group_killed_ms && now - r.drain_since_ms >= kDrainMs) {
    kill(-r.pid, SIGKILL);
    r.group_killed_ms = now;
  } else if (r.group_killed_ms && now - r.group_killed_ms >= kDrainMs) {
    Finish();  // a process outside the group keeps them open; give up on it
  }
}

void Agent::Finish() {
  Running& r = *run_;
  ExitMsg m;
  m.duration_ms = MonotonicMs() - r.start_ms;
  m.timed_out = r.timed_out;
  if (WIFEXITED(r.status)) {
    m.exit_code = WEXITSTATUS(r.status);
    m.signal = 0;
  } else if (WIFSIGNALED(r.status)) {
    m.signal = WTERMSIG(r.status);
    m.exit_code = 128 + m.signal;
  }
  CloseFd(r.stdin_fd);
  CloseFd(r.stdout_fd);
  CloseFd(r.stderr_fd);
  // An execution owns the VM: whatever it left behind (its group, daemons
  // that escaped with setsid) does not survive into the next one.
  kill(-r.pid, SIGKILL);
  kill(-1, SIGKILL);
  run_.reset();
  Enqueue(EncodeFrame(MsgType::kExit, Dump(nlohmann::json(m))), true);
}

void Agent::Step() {
  if (port_fd_ < 0) {
    OpenPort();
    if (port_fd_ < 0) {
      usleep(1000 * 1000);
      return;
    }
  }
  if (!host_up_) CheckHost();

  std::vector<pollfd> fds;
  fds.push_back({sig_fd_, POLLIN, 0});
  int port_idx = -1, out_idx = -1, err_idx = -1, in_idx = -1;
  if (port_fd_ >= 0 && host_up_) {
    port_idx = static_cast<int>(fds.size());
    fds.push_back({port_fd_, static_cast<short>(POLLIN | (CanSend() ? POLLOUT : 0)), 0});
  }
  if (run_) {
    const bool room = out_bytes_ < kOutLimit;
    if (run_->stdout_fd >= 0 && room) {
      out_idx = static_cast<int>(fds.size());
      fds.push_back({run_->stdout_fd, POLLIN, 0});
    }
    if (run_->stderr_fd >= 0 && room) {
      err_idx = static_cast<int>(fds.size());
      fds.push_back({run_->stderr_fd, POLLIN, 0});
    }
    if (run_->stdin_fd >= 0 && !run_->stdin_buf.empty()) {
      in_idx = static_cast<int>(fds.size());
      fds.push_back({run_->stdin_fd, POLLOUT, 0});
    }
  }

  const int64_t now = MonotonicMs();
  int64_t timeout = -1;
  auto at_most = [&](int64_t ms) {
    if (ms < 0) ms = 0;
    if (timeout < 0 || ms < timeout) timeout = ms;
  };
  if (!host_up_) at_most(kHostRecheckMs);
  if (run_) {
    if (!run_->reaped && run_->deadline_ms > 0 && !run_->timed_out) at_most(run_->deadline_ms - now);
    if (run_->reaped) {
      at_most(run_->group_killed_ms ? run_->group_killed_ms + kDrainMs - now : run_->drain_since_ms + kDrainMs - now);
    }
  }

  int n = poll(fds.data(), fds.size(), static_cast<int>(timeout));
  if (n < 0 && errno != EINTR) {
    LogErrno("poll", errno);
    usleep(20 * 1000);
    return;
  }

  if (fds[0].revents) DrainSignals();
  Reap();

  if (port_idx >= 0 && fds[port_idx].revents) {
    const short re = fds[port_idx].revents;
    if (re & POLLNVAL) {
      CloseFd(port_fd_);
      host_up_ = false;
    } else {
      if (re & (POLLIN | POLLHUP | POLLERR)) ReadPort();
    }
  }
  if (run_) {
    // A child's output is read before its Exit is produced (Advance).
    if (out_idx >= 0 && fds[out_idx].revents) ReadChild(run_->stdout_fd, MsgType::kStdout);
    if (err_idx >= 0 && fds[err_idx].revents) ReadChild(run_->stderr_fd, MsgType::kStderr);
    if (in_idx >= 0 && fds[in_idx].revents) {
      if (fds[in_idx].revents & (POLLERR | POLLHUP)) {
        run_->stdin_buf.clear();
        CloseFd(run_->stdin_fd);
      } else {
        WriteStdin();
      }
    }
  }
  if (run_) Reap();
  Advance(MonotonicMs());
  Flush();
}

int Serve() {
  const int64_t init_started = BootTimeMs();
  EarlySetup();
  Log("boot (kernel " + KernelRelease() + ", agent " + AgentVersion() + ")");
  signal(SIGPIPE, SIG_IGN);
  PreferRunningChildren();
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigaddset(&mask, SIGIO);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  int sig_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  if (sig_fd < 0) {
    LogErrno("signalfd", errno);
    PowerOff("no signalfd");
  }

  const int64_t modules_started = BootTimeMs();
  if (int failed = LoadModules("/lib/modules"); failed > 0) {
    Log(std::to_string(failed) + " required module(s) failed to load");
  }
  LoopbackUp();
  const int64_t port_wait_started = BootTimeMs();
  std::string port = FindVirtioPort(kPortName, kPortWaitMs);
  if (port.empty()) {
    Log(std::string("virtio-serial port ") + kPortName + " did not appear within " +
        std::to_string(kPortWaitMs / 1000) + " s");
    PowerOff("no host channel");
  }
  const int64_t ready = BootTimeMs();
  Log("ready in " + std::to_string(ready) + " ms (init at " + std::to_string(init_started) + " ms, modules " +
      std::to_string(port_wait_started - modules_started) + " ms, port " + std::to_string(ready - port_wait_started) +
      " ms)");

  Agent agent(port, sig_fd);
  for (;;) {
    try {
      agent.Step();
    } catch (const std::exception& e) {
      Log(std::string("internal error: ") + e.what());
      usleep(20 * 1000);
    } catch (...) {
      Log("internal error");
      usleep(20 * 1000);
    }
  }
}

}  // namespace
}  // namespace berth::agent

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--version") == 0) {
    std::printf("berth-agent %s\n", berth::agent::AgentVersion().c_str());
    return 0;
  }
  if (getpid() != 1) {
    std::fprintf(stderr,
                 "berth-agent is the init (PID 1) of the berth guest runtime; it mounts filesystems,\n"
                 "loads modules and powers the machine off, so it refuses to run as PID %d.\n",
                 static_cast<int>(getpid()));
    return 2;
  }
  for (;;) {
    try {
      berth::agent::Serve();
    } catch (...) {
      berth::agent::Log("fatal error during boot; retrying in 1 s");
      sleep(1);
    }
  }
}
