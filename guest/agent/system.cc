#include "guest/agent/system.h"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <net/if.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <linux/random.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "guest/protocol.h"

namespace berth::agent {
namespace {

int64_t ClockMs(clockid_t id) {
  timespec ts{};
  clock_gettime(id, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

bool IsDir(const std::string& path) {
  struct stat st{};
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool Exists(const std::string& path) {
  struct stat st{};
  return stat(path.c_str(), &st) == 0;
}

std::string ReadSmallFile(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  char buf[256];
  ssize_t n = read(fd, buf, sizeof(buf));
  close(fd);
  if (n <= 0) return "";
  std::string s(buf, static_cast<size_t>(n));
  while (!s.empty() && (s.back() == '\n' || s.back() == '\0')) s.pop_back();
  return s;
}

// mount(2) with logging; EBUSY (already mounted) counts as success.
bool Mount(const char* source, const std::string& target, const char* fstype, unsigned long flags,
           const char* data) {
  if (mount(source, target.c_str(), fstype, flags, data) == 0 || errno == EBUSY) return true;
  LogErrno(std::string("mount ") + fstype + " on " + target, errno);
  return false;
}

// Dependency order. Optional modules may be absent (or built in).
struct ModuleSpec {
  const char* name;
  bool required;
};
constexpr ModuleSpec kModules[] = {
    {"virtio_ring", true},           {"virtio", true},     {"virtio_pci_modern_dev", false},
    {"virtio_pci_legacy_dev", false}, {"virtio_pci", true}, {"virtio_blk", true},
    {"virtio_console", true},        {"virtio_rng", false},
};

bool rootfs_mounted = false;
std::vector<std::string> rootfs_submounts;  // in mount order

}  // namespace

std::string AgentVersion() {
  return std::string(kAgentBaseVersion) + "+proto" + std::to_string(kProtocolVersion);
}

void Log(const std::string& msg) {
  std::string line = "berth-agent: " + msg + "\n";
  ssize_t n = write(2, line.data(), line.size());
  (void)n;
}

void LogErrno(const std::string& msg, int err) { Log(msg + ": " + strerror(err)); }

int64_t MonotonicMs() { return ClockMs(CLOCK_MONOTONIC); }
int64_t BootTimeMs() { return ClockMs(CLOCK_BOOTTIME); }

std::string KernelRelease() {
  utsname u{};
  if (uname(&u) != 0) return "";
  return u.release;
}

void EarlySetup() {
  umask(022);
  mkdir("/proc", 0555);
  mkdir("/sys", 0555);
  mkdir("/dev", 0755);
  mkdir("/tmp", 01777);
  Mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr);
  Mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr);
  Mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
  Mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
  // The kernel opens /dev/console as fds 0-2 for init when the initramfs has
  // the node; if it did not, fill the holes so that later fds never land on
  // 0-2 (a child's dup2 would otherwise clobber them).
  for (int fd = 0; fd <= 2; ++fd) {
    if (fcntl(fd, F_GETFD) >= 0) continue;
    int c = open("/dev/console", O_RDWR | O_NOCTTY);
    if (c < 0) c = open("/dev/null", O_RDWR);
    if (c >= 0 && c != fd) {
      dup2(c, fd);
      close(c);
    }
  }
  mkdir(kRootMount, 0755);
}

void PreferRunningChildren() {
  sched_param param{};
  param.sched_priority = 0;
  if (sched_setscheduler(0, SCHED_BATCH, &param) != 0) LogErrno("sched_setscheduler", errno);
}

void LoopbackUp() {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return;
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
    ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP | IFF_RUNNING);
    if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0) LogErrno("bringing lo up", errno);
  }
  close(s);
}

int LoadModules(const std::string& dir) {
  int failures = 0;
  for (const auto& m : kModules) {
    std::string path = dir + "/" + m.name + ".ko";
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      if (m.required) {
        LogErrno("module " + path, errno);
        ++failures;
      }
      continue;
    }
    long rc = syscall(SYS_finit_module, fd, "", 0);
    int err = errno;
    close(fd);
    if (rc != 0 && err != EEXIST) {
      LogErrno(std::string("loading module ") + m.name, err);
      if (m.required) ++failures;
    }
  }
  return failures;
}

std::string FindVirtioPort(const std::string& name, int64_t timeout_ms) {
  const int64_t deadline = MonotonicMs() + timeout_ms;
  for (;;) {
    if (DIR* d = opendir("/sys/class/virtio-ports")) {
      std::string found;
      while (dirent* e = readdir(d)) {
        if (e->d_name[0] == '.') continue;
        std::string port = e->d_name;
        if (ReadSmallFile("/sys/class/virtio-ports/" + port + "/name") == name) {
          found = "/dev/" + port;
          break;
        }
      }
      closedir(d);
      if (!found.empty() && Exists(found)) return found;
    }
    if (MonotonicMs() >= deadline) return "";
    usleep(10 * 1000);
  }
}

bool EnsureRootfs(std::string* error) {
  if (rootfs_mounted) return true;
  // The block device normally exists long before the first Exec; give a
  // slow probe a moment anyway.
  for (int i = 0; i < 50 && !Exists(kRootDevice); ++i) usleep(20 * 1000);
  if (!Exists(kRootDevice)) {
    *error = std::string("no root filesystem disk: ") + kRootDevice + " does not exist";
    return false;
  }
  mkdir(kRootMount, 0755);
  if (mount(kRootDevice, kRootMount, "ext4", 0, "") != 0) {
    int err = errno;
    *error = std::string("mounting ") + kRootDevice + " (ext4) on " + kRootMount + ": " + strerror(err);
    return false;
  }
  rootfs_mounted = true;
  rootfs_submounts.clear();
  const std::string root = kRootMount;
  struct Sub {
    const char* dir;
    const char* source;
    const char* fstype;
    unsigned long flags;
    const char* data;
    bool create;  // create the directory (only below an existing /dev)
  };
  const Sub subs[] = {
      {"/proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr, false},
      {"/sys", "sysfs", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr, false},
      {"/dev", "devtmpfs", "devtmpfs", MS_NOSUID, "mode=0755", false},
      {"/dev/pts", "devpts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620", true},
      {"/dev/shm", "tmpfs", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", true},
      {"/tmp", "tmpfs", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", false},
  };
  bool dev_mounted = false;
  for (const auto& s : subs) {
    std::string target = root + s.dir;
    if (s.create) {
      if (!dev_mounted) continue;  // only inside a /dev we mounted ourselves
      mkdir(target.c_str(), 0755);
    }
    if (!IsDir(target)) continue;
    if (mount(s.source, target.c_str(), s.fstype, s.flags, s.data) == 0) {
      rootfs_submounts.push_back(target);
      if (std::strcmp(s.dir, "/dev") == 0) dev_mounted = true;
    } else {
      LogErrno(std::string("mount ") + s.fstype + " on " + target, errno);
    }
  }
  return true;
}

void UnmountRootfs() {
  if (!rootfs_mounted) return;
  for (auto it = rootfs_submounts.rbegin(); it != rootfs_submounts.rend(); ++it) {
    umount2(it->c_str(), MNT_DETACH);
  }
  rootfs_submounts.clear();
  if (umount2(kRootMount, 0) != 0) {
    LogErrno(std::string("unmounting ") + kRootMount, errno);
    umount2(kRootMount, MNT_DETACH);
  }
  rootfs_mounted = false;
}

void PowerOff(const std::string& why) {
  Log("powering off (" + why + ")");
  kill(-1, SIGKILL);  // every process but init
  const int64_t deadline = MonotonicMs() + 2000;
  while (MonotonicMs() < deadline) {
    pid_t p = waitpid(-1, nullptr, WNOHANG);
    if (p < 0 && errno == ECHILD) break;
    if (p <= 0) usleep(5 * 1000);
  }
  sync();
  UnmountRootfs();
  sync();
  reboot(RB_POWER_OFF);
  LogErrno("reboot(RB_POWER_OFF)", errno);
  for (;;) pause();
}

bool MixHostEntropy(const std::string& hex) {
  if (hex.size() < 32 || hex.size() > 512 || hex.size() % 2) return false;
  std::string bytes;
  for (size_t i = 0; i < hex.size(); i += 2) {
    auto nibble = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      return -1;
    };
    int hi = nibble(hex[i]), lo = nibble(hex[i + 1]);
    if (hi < 0 || lo < 0) return false;
    bytes.push_back(static_cast<char>(hi << 4 | lo));
  }
  int fd = ::open("/dev/urandom", O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    LogErrno("open /dev/urandom", errno);
    return false;
  }
  // rand_pool_info ends in a flexible array: lay it out in a plain buffer.
  alignas(rand_pool_info) unsigned char raw[sizeof(rand_pool_info) + 256] = {};
  auto* info = reinterpret_cast<rand_pool_info*>(raw);
  info->entropy_count = static_cast<int>(bytes.size() * 8);
  info->buf_size = static_cast<int>(bytes.size());
  std::memcpy(raw + sizeof(rand_pool_info), bytes.data(), bytes.size());
  bool ok = true;
  if (::ioctl(fd, RNDADDENTROPY, info) != 0) {
    LogErrno("RNDADDENTROPY", errno);
    ok = false;
  }
  if (::ioctl(fd, RNDRESEEDCRNG) != 0) {
    LogErrno("RNDRESEEDCRNG", errno);
    ok = false;
  }
  ::close(fd);
  return ok;
}

void SetClockMs(int64_t unix_ms) {
  timespec ts{static_cast<time_t>(unix_ms / 1000), static_cast<long>((unix_ms % 1000) * 1000000)};
  if (::clock_settime(CLOCK_REALTIME, &ts) != 0) LogErrno("clock_settime", errno);
}

}  // namespace berth::agent
