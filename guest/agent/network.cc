#include "guest/agent/network.h"

#include <dirent.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "guest/agent/system.h"

namespace berth::agent {
namespace {

constexpr const char* kModuleDir = "/lib/modules";
// Dependency order (virtio_net needs net_failover needs failover; virtio_ring
// and virtio are loaded at boot). af_packet: udhcpc's raw socket.
constexpr const char* kNetModules[] = {"failover", "net_failover", "virtio_net", "af_packet"};
constexpr const char* kScriptPath = "/tmp/berth-udhcpc.sh";
constexpr const char* kLeasePath = "/tmp/berth-lease";

// udhcpc calls this with $1 = deconfig | bound | renew | leasefail | nak and
// the lease in the environment ($ip $subnet $router $dns $interface).
// udhcpc keeps running after the first lease (see StartDhcpClient) and calls
// `renew` at every renewal (T1 = half the lease): with the address and
// router unchanged that only refreshes the lease file, so the guest's
// address and default route never blink. udhcpc calls `deconfig` when it
// starts and when the lease is really lost (no answer until it expired, or a
// NAK); a failed renewal attempt before that calls nothing.
constexpr const char* kScript = R"sh(#!/bin/sh
B=/bin/busybox
L=/tmp/berth-lease
case "$1" in
  deconfig)
    $B ip addr flush dev "$interface"
    $B ip link set "$interface" up
    $B rm -f $L
    ;;
  bound|renew)
    gw="${router%% *}"
    if [ "$1" = bound ] || ! $B grep -qx "ip=$ip" $L 2>/dev/null || ! $B grep -qx "router=$gw" $L; then
      $B ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
      if [ -n "$gw" ]; then
        while $B route del default 2>/dev/null; do :; done
        $B route add default gw "$gw" dev "$interface"
      fi
    fi
    n=$($B sed -n 's/^renewals=//p' $L 2>/dev/null)
    [ "$1" = renew ] && n=$((${n:-0} + 1))
    echo "ip=$ip" > $L.new
    echo "subnet=$subnet" >> $L.new
    echo "router=$gw" >> $L.new
    echo "dns=${dns%% *}" >> $L.new
    echo "lease=$lease" >> $L.new
    echo "renewals=${n:-0}" >> $L.new
    $B mv $L.new $L
    ;;
esac
exit 0
)sh";

std::string ReadFile(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  close(fd);
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

bool WriteFile(const std::string& path, const std::string& body, mode_t mode) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return false;
  bool ok = write(fd, body.data(), body.size()) == static_cast<ssize_t>(body.size());
  close(fd);
  return ok && chmod(path.c_str(), mode) == 0;
}

void LoadNetModules() {
  for (const char* name : kNetModules) {
    const std::string path = std::string(kModuleDir) + "/" + name + ".ko";
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;  // built in, or not shipped
    long rc = syscall(SYS_finit_module, fd, "", 0);
    int err = errno;
    close(fd);
    if (rc != 0 && err != EEXIST) LogErrno(std::string("loading module ") + name, err);
  }
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// The interface with `mac` (any non-loopback one when empty), or "".
std::string FindInterface(const std::string& mac) {
  std::string found;
  if (DIR* d = opendir("/sys/class/net")) {
    while (dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      if (name.empty() || name[0] == '.' || name == "lo") continue;
      if (mac.empty() || Lower(ReadFile("/sys/class/net/" + name + "/address")) == Lower(mac)) {
        found = name;
        break;
      }
    }
    closedir(d);
  }
  return found;
}

// Gives `iface` the hardware address `mac` ("52:54:00:aa:bb:cc"): what a
// restored clone needs, whose virtio-net state came with another VM's MAC.
// virtio_net allows the change while the link is up and tells QEMU (its RX
// filter then accepts frames for the new MAC). Returns "" or the error.
std::string SetMac(const std::string& iface, const std::string& mac) {
  unsigned b[6];
  char tail = 0;
  if (sscanf(mac.c_str(), "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &tail) != 6) {
    return "malformed MAC " + mac;
  }
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return std::string("socket: ") + strerror(errno);
  struct ifreq ifr{};
  snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", iface.c_str());
  ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
  for (int i = 0; i < 6; ++i) ifr.ifr_hwaddr.sa_data[i] = static_cast<char>(b[i]);
  int rc = ioctl(fd, SIOCSIFHWADDR, &ifr);
  int err = errno;
  close(fd);
  if (rc != 0) return "setting the MAC of " + iface + " to " + mac + ": " + strerror(err);
  return "";
}

int PrefixOf(const std::string& netmask) {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (sscanf(netmask.c_str(), "%u.%u.%u.%u", &a, &b, &c, &d) != 4) return 0;
  uint32_t m = (a << 24) | (b << 16) | (c << 8) | d;
  int n = 0;
  while (m & 0x80000000u) {
    ++n;
    m <<= 1;
  }
  return n;
}

std::string LeaseField(const std::string& lease, const std::string& key) {
  size_t pos = 0;
  while (pos < lease.size()) {
    size_t end = lease.find('\n', pos);
    if (end == std::string::npos) end = lease.size();
    const std::string line = lease.substr(pos, end - pos);
    if (line.rfind(key + "=", 0) == 0) return line.substr(key.size() + 1);
    pos = end + 1;
  }
  return "";
}

// The udhcpc that holds this guest's lease (-1: none). Kept after
// BringUpNetwork returns so the lease is renewed for as long as the guest
// lives; a restored clone or live-forked child inherits the parent's one
// (with the parent's MAC) in memory, and BringUpNetwork replaces it.
pid_t dhcp_client = -1;

// Whether `pid` is our udhcpc child (not a recycled pid of something else).
// (Its comm is "busybox", the executable's name; argv[0] says "udhcpc".)
bool IsOurDhcpClient(pid_t pid) {
  const std::string proc = "/proc/" + std::to_string(pid);
  const std::string cmdline = ReadFile(proc + "/cmdline");
  if (cmdline.compare(0, 7, std::string("udhcpc\0", 7)) != 0) return false;
  // "<pid> (<comm>) <state> <ppid> ...", read from the last ')'.
  const std::string stat = ReadFile(proc + "/stat");
  const size_t close = stat.rfind(')');
  char state = 0;
  int ppid = 0;
  return close != std::string::npos && sscanf(stat.c_str() + close + 1, " %c %d", &state, &ppid) == 2 &&
         ppid == getpid();
}

void StopDhcpClient() {
  if (dhcp_client <= 0) return;
  if (IsOurDhcpClient(dhcp_client)) {
    kill(dhcp_client, SIGKILL);
    while (waitpid(dhcp_client, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
  dhcp_client = -1;
}

// Starts udhcpc on `iface` in the foreground of its own process, without -q:
// once bound it stays and renews the lease at T1 (busybox: half the lease
// time), rebinds at T2, and only deconfigures the address if the lease runs
// out unanswered. Waits until the first lease is in kLeasePath (returns 0;
// udhcpc keeps running as dhcp_client), udhcpc ended (its exit status) or
// the deadline passed (it is killed; -2).
int StartDhcpClient(const std::string& iface, int64_t deadline_ms) {
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    setsid();  // not in the process group of anything the host may signal
    int null_fd = open("/dev/null", O_RDWR);
    if (null_fd >= 0) {
      dup2(null_fd, 0);
      dup2(null_fd, 1);
    }
    // Discovers 1 s apart, 5 at a time; no -n: a guest whose lease is lost
    // much later keeps asking instead of ending up without a client.
    execl("/bin/busybox", "udhcpc", "-f", "-t", "5", "-T", "1", "-i", iface.c_str(), "-s", kScriptPath,
          static_cast<char*>(nullptr));
    _exit(127);
  }
  for (;;) {
    if (!ReadFile(kLeasePath).empty()) {
      dhcp_client = pid;
      return 0;
    }
    int status = 0;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (r < 0 && errno != EINTR) return -1;
    if (MonotonicMs() > deadline_ms) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -2;
    }
    usleep(20'000);
  }
}

}  // namespace

NetReadyMsg BringUpNetwork(const NetUpMsg& req) {
  const int64_t t0 = MonotonicMs();
  const int64_t deadline = t0 + (req.timeout_ms > 0 ? req.timeout_ms : 10'000);
  NetReadyMsg out;
  out.mac = req.mac;
  LoadNetModules();
  const int64_t t_modules = MonotonicMs();
  // The NIC with req.mac; else (a clone, see NetUpMsg) the one NIC there is,
  // which gets req.mac now.
  std::string iface;
  while ((iface = FindInterface(req.mac)).empty() && (iface = FindInterface("")).empty() &&
         MonotonicMs() < deadline) {
    usleep(5'000);
  }
  const int64_t t_iface = MonotonicMs();
  if (iface.empty()) {
    out.error_code = "no_interface";
    out.error = req.mac.empty() ? "no network interface appeared" : "no network interface for MAC " + req.mac;
    out.took_ms = MonotonicMs() - t0;
    return out;
  }
  out.interface = iface;
  if (const std::string had = Lower(ReadFile("/sys/class/net/" + iface + "/address"));
      !req.mac.empty() && had != Lower(req.mac)) {
    if (std::string err = SetMac(iface, req.mac); !err.empty()) {
      out.error_code = "mac_failed";
      out.error = err;
      out.took_ms = MonotonicMs() - t0;
      return out;
    }
    out.previous_mac = had;
    Log("network: " + iface + " had MAC " + had + ", now " + req.mac);
  }
  // A clone's or fork child's inherited client (the parent's MAC and lease) goes first.
  StopDhcpClient();
  unlink(kLeasePath);
  if (!WriteFile(kScriptPath, kScript, 0755)) {
    out.error_code = "dhcp_failed";
    out.error = std::string("cannot write ") + kScriptPath + ": " + strerror(errno);
    return out;
  }
  const int rc = StartDhcpClient(iface, deadline);
  const std::string lease = ReadFile(kLeasePath);
  out.took_ms = MonotonicMs() - t0;
  if (lease.empty()) {
    out.error_code = "dhcp_failed";
    out.error = rc == -2 ? "no DHCP lease on " + iface + " within " + std::to_string(req.timeout_ms) + " ms"
                         : "udhcpc on " + iface + " got no lease (exit " + std::to_string(rc) + ")";
    return out;
  }
  out.ip = LeaseField(lease, "ip");
  out.prefix_length = PrefixOf(LeaseField(lease, "subnet"));
  out.gateway = LeaseField(lease, "router");
  out.dns = LeaseField(lease, "dns");
  Log("network: " + iface + " " + out.ip + "/" + std::to_string(out.prefix_length) + " via " + out.gateway + " in " +
      std::to_string(out.took_ms) + " ms (modules " + std::to_string(t_modules - t0) + ", interface " +
      std::to_string(t_iface - t_modules) + ", dhcp " + std::to_string(MonotonicMs() - t_iface) + ")");
  // Name resolution inside the function's root filesystem (mounted at the
  // first Exec; its /etc may be missing in tiny images).
  if (!out.dns.empty()) {
    std::string err;
    if (EnsureRootfs(&err)) {
      struct stat st{};
      const std::string etc = std::string(kRootMount) + "/etc";
      if (stat(etc.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
        (void)WriteFile(etc + "/resolv.conf", "nameserver " + out.dns + "\n", 0644);
      }
    }
  }
  return out;
}

}  // namespace berth::agent
