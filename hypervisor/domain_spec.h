// The typed model of one berth domain. DomainXmlWriter turns it into libvirt
// domain XML; nothing else in berth builds domain XML by hand.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"

namespace berth::hv {

// XML namespace of berth's <metadata> element. Stable: external tools match it.
inline constexpr const char* kMetadataNamespace = "https://berth.dev/xmlns/domain/1";
inline constexpr const char* kMetadataPrefix = "berth";
// Every berth domain name starts with this, so `virsh list | grep berth-` works.
inline constexpr const char* kDomainNamePrefix = "berth-";
// Kernel command line of every direct-kernel boot (executions, templates,
// warm pools). no_timer_check: under TCG on a loaded host the kernel's
// IO-APIC timer check can fail and panic the boot ("8254 timer not connected").
inline constexpr const char* kDefaultKernelCmdline = "console=ttyS0 quiet panic=-1 no_timer_check";

enum class Accel { kKvm, kTcg };

struct DiskSpec {
  std::string path;            // host path of the volume on the node
  std::string format = "qcow2";  // "qcow2" or "raw"
  std::string target = "vda";  // guest device name
  bool read_only = false;
};

struct ChannelSpec {
  std::string name = "org.berth.agent.0";  // virtio-serial port name
  // Empty: libvirt picks a path (mode='bind'), which virDomainOpenChannel needs.
  std::string socket_path;
};

struct NicSpec {
  std::string network;  // libvirt network name
  std::string mac;      // empty: libvirt assigns
  // libvirt nwfilter applied to this NIC (<filterref>); empty: none. The
  // parameters (e.g. IP, MAC, CTRL_IP_LEARNING, DHCPSERVER) are written in
  // this order; names are [A-Za-z0-9_], values plain text.
  std::string filter;
  std::vector<std::pair<std::string, std::string>> filter_parameters;
};

// What berth records about a domain inside it, so `virsh dumpxml` alone tells
// which execution, function and tenant a domain belongs to.
struct DomainMetadata {
  std::string execution_id;
  std::string function;  // empty for plain instances
  std::string tenant;
  int64_t pid = 0;
  int64_t ppid = 0;
  std::string image;     // sha256 of the root filesystem image
  int64_t created_unix_ms = 0;
  // Guest networking (both written only when set, so domains without a NIC
  // look as before): the network mode ("egress" | "isolated") and the
  // guest's IPv4 addresses once it has a lease (virDomainSetMetadata).
  std::string network;
  std::vector<std::string> addresses;
};

struct DomainSpec {
  std::string name;       // berth-<execution id>
  std::string uuid;       // empty: libvirt assigns
  std::string title;      // one line shown by `virsh list --title`
  Accel accel = Accel::kTcg;
  std::string emulator;   // empty: libvirt default
  std::string machine = "q35";
  uint32_t vcpus = 1;
  uint64_t memory_mib = 256;
  // TCG only: QEMU's translation block cache (<features><tcg><tb-cache>).
  // QEMU's own default is far larger than a small guest needs, and it is
  // resident memory of every idle VM. 0: QEMU's default.
  uint32_t tcg_tb_cache_mib = 32;

  // Direct kernel boot. Both empty: boot from the first disk (the image's
  // own bootloader and kernel).
  std::string kernel_path;
  std::string initrd_path;
  std::string cmdline = kDefaultKernelCmdline;

  std::vector<DiskSpec> disks;
  ChannelSpec agent_channel;
  std::string console_log_path;  // serial console is written here (empty: no serial)
  std::vector<NicSpec> nics;     // empty: the guest has no network device at all
  DomainMetadata metadata;
};

// Checks the spec before any XML is produced: names, sizes, paths, and that
// every string is valid single-line UTF-8 text XML can carry. Returns
// InvalidArgument naming the first offending field ("name", "memory_mib",
// "disks[1].target", "metadata.execution_id", ...).
Status ValidateDomainSpec(const DomainSpec& spec);

// The metadata part of ValidateDomainSpec, for callers that update only the
// metadata of a running domain (virDomainSetMetadata): execution_id required,
// text fields single-line UTF-8 without control characters, numbers >= 0.
// Fields are named "metadata.<member>".
Status ValidateDomainMetadata(const DomainMetadata& metadata);

}  // namespace berth::hv
