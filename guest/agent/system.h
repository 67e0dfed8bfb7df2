// System chores of the guest agent as PID 1: console logging, clocks, the
// early mounts, kernel modules, finding the virtio-serial port, the
// function's root filesystem and power-off. Linux only; no allocation-heavy
// dependencies so that the agent links statically.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace berth::agent {

// The agent's own version; Hello replies carry AgentVersion().
inline constexpr const char* kAgentBaseVersion = "0.1.0";
std::string AgentVersion();  // "0.1.0+proto<N>"

// Writes "berth-agent: <msg>\n" to the console (fd 2) in one write().
void Log(const std::string& msg);
// Log(msg + ": " + strerror(err)).
void LogErrno(const std::string& msg, int err);

int64_t MonotonicMs();
int64_t BootTimeMs();  // CLOCK_BOOTTIME: guest uptime
std::string KernelRelease();
// Credits host-provided randomness to the kernel pool (RNDADDENTROPY) and
// forces a CRNG reseed (RNDRESEEDCRNG). Returns false on malformed input.
bool MixHostEntropy(const std::string& hex);
// Sets CLOCK_REALTIME to the host's time (Unix ms).
void SetClockMs(int64_t unix_ms);

// Mounts /proc, /sys, /dev (devtmpfs), /tmp (tmpfs) and makes sure fds 0-2
// are open. Errors are logged; nothing here is fatal.
void EarlySetup();

// Makes the agent SCHED_BATCH. A woken batch task does not preempt the
// running one, so a child that writes its output line by line runs on until
// it blocks or its slice ends, and the agent reads the lines in one go: fewer
// context switches (each one flushes QEMU's whole soft TLB under TCG) and
// fewer frames to the host. The agent still gets its fair share of the CPU
// (same nice level) within a scheduler tick or so. SCHED_RESET_ON_FORK does
// not undo SCHED_BATCH, so SpawnInRoot sets its children back to SCHED_OTHER.
// Errors are logged.
void PreferRunningChildren();

// Brings the loopback interface up (programs expect 127.0.0.1 to work).
void LoopbackUp();

// Loads the virtio modules from dir in dependency order with finit_module.
// Missing files are logged only for required modules; EEXIST is success.
// Returns the number of modules that failed to load (0 = all fine).
int LoadModules(const std::string& dir);

// Scans /sys/class/virtio-ports/*/name for `name` and returns "/dev/<port>"
// once both the sysfs entry and the device node exist; waits up to
// timeout_ms. Empty string when it never appeared.
std::string FindVirtioPort(const std::string& name, int64_t timeout_ms);

// The function's root filesystem, mounted lazily at kRootMount.
inline constexpr const char* kRootMount = "/mnt/root";
inline constexpr const char* kRootDevice = "/dev/vda";
// Mounts kRootDevice (ext4, read-write) at kRootMount plus proc/sys/dev/tmp
// inside it. Idempotent. On failure returns false and sets *error.
bool EnsureRootfs(std::string* error);
// Unmounts everything below and at kRootMount (best effort).
void UnmountRootfs();

// Kills every other process, syncs, unmounts and powers the VM off. Never
// returns.
[[noreturn]] void PowerOff(const std::string& why);

}  // namespace berth::agent
