// Hypervisor: everything berth asks of one node, behind one interface.
//
// LibvirtHypervisor (libvirt_hypervisor.cc) implements it for any libvirt URI:
// qemu:///system, qemu+tcp://host/system, qemu+ssh://..., and libvirt's test
// driver (test:///path.xml), which has no real guests and thus no agent
// channel. Nothing outside hypervisor/ sees libvirt types.
//
// Thread-safety: all methods may be called concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "guest/protocol.h"
#include "hypervisor/domain_spec.h"
#include "hypervisor/network_xml.h"

namespace berth::hv {

struct NodeInfo {
  std::string hostname;
  std::string uri;
  uint32_t cpus = 0;
  uint64_t memory_mib = 0;
  std::string hypervisor_type;  // "QEMU", "TEST"
  uint64_t hypervisor_version = 0;
  uint64_t libvirt_version = 0;
  bool kvm_available = false;   // domain capabilities list type 'kvm'
  // The host CPU from libvirt's capabilities: "vendor model (arch, family F
  // model M stepping S, features <hash>)"; "" when the driver reports none.
  // Saved guests are only restored on a node with the same value.
  std::string cpu_model;
};

struct VolumeInfo {
  std::string pool;
  std::string name;
  std::string path;      // path on the node
  std::string format;    // "raw", "qcow2", ...
  uint64_t capacity_bytes = 0;
  uint64_t allocation_bytes = 0;
};

// A storage pool's space as libvirt reports it (virStoragePoolGetInfo), in
// bytes: capacity = allocation + available for a dir pool on its own
// filesystem; other writers on the filesystem show up as allocation.
struct PoolInfo {
  uint64_t capacity_bytes = 0;
  uint64_t allocation_bytes = 0;
  uint64_t available_bytes = 0;
};

// One address of a guest NIC, from GetDomainInterfaceAddresses.
struct InterfaceAddress {
  std::string interface;  // host-side device, e.g. "vnet3"
  std::string mac;        // the guest NIC's MAC
  std::string ip;         // "10.240.0.17"
  int prefix_length = 0;  // 24
};

// One lease dnsmasq holds on a libvirt network, from GetNetworkDhcpLeases.
struct DhcpLease {
  std::string mac;             // lowercase
  std::string ip;              // "10.240.0.17"
  int prefix_length = 0;
  int64_t expiry_unix_s = 0;   // when it runs out unless renewed; 0 = never
  std::string hostname;        // as the client sent it, may be ""
};

enum class DomainRunState { kRunning, kPaused, kShutoff, kCrashed, kOther };

struct DomainState {
  DomainRunState state = DomainRunState::kOther;
  std::string reason;  // libvirt's reason, e.g. "paused: io error", "crashed: panicked"
};

// A byte-stream connection to a guest agent, framed by guest/protocol.h.
class AgentChannel {
 public:
  virtual ~AgentChannel() = default;
  // Sends one encoded frame. Fails kUnavailable once the channel is closed.
  virtual Status Send(agent::MsgType type, std::string_view payload) = 0;
  // Returns the next frame, waiting at most timeout_ms. kDeadlineExceeded on
  // timeout (the channel stays usable), kUnavailable once the guest side is
  // gone (domain destroyed, agent dead) and kInternal on a protocol error.
  virtual Result<agent::Frame> Receive(int64_t timeout_ms) = 0;
  virtual void Close() = 0;
};

class Hypervisor {
 public:
  virtual ~Hypervisor() = default;

  virtual const std::string& uri() const = 0;
  virtual Result<NodeInfo> GetNodeInfo() = 0;

  // Storage. A pool is a libvirt 'dir' pool; EnsureDirPool defines, builds,
  // starts and autostarts it when missing and starts it when inactive.
  virtual Status EnsureDirPool(const std::string& pool, const std::string& dir) = 0;
  virtual Result<VolumeInfo> LookupVolume(const std::string& pool, const std::string& name) = 0;
  // Creates volume `name` and streams the local file into it (virStorageVolUpload),
  // so it works on remote nodes too. A failed upload deletes the volume.
  virtual Result<VolumeInfo> UploadVolume(const std::string& pool, const std::string& name,
                                          const std::string& local_path, const std::string& format) = 0;
  // Creates a qcow2 volume whose <backingStore> is `backing` with an explicit
  // backing format (never probed). capacity 0 = the backing's capacity.
  virtual Result<VolumeInfo> CreateOverlay(const std::string& pool, const std::string& name,
                                           const VolumeInfo& backing, uint64_t capacity_bytes) = 0;
  // Reads a volume's bytes (at most max_bytes from its end, 0 = all).
  virtual Result<std::string> DownloadVolumeTail(const std::string& pool, const std::string& name,
                                                 uint64_t max_bytes) = 0;
  // Deleting a volume that does not exist succeeds.
  virtual Status DeleteVolume(const std::string& pool, const std::string& name) = 0;
  virtual Result<std::vector<VolumeInfo>> ListVolumes(const std::string& pool) = 0;
  virtual Status RefreshPool(const std::string& pool) = 0;
  // The pool's capacity, allocation and free space. kNotFound if there is no
  // such pool. The default (for fakes) is Unimplemented: space unknown.
  virtual Result<PoolInfo> GetPoolInfo(const std::string& pool) {
    return Status::Unimplemented("GetPoolInfo of pool '" + pool + "' is not implemented");
  }

  // Domains. StartDomain creates a transient domain from the spec's XML.
  virtual Status StartDomain(const DomainSpec& spec) = 0;
  // Destroys (hard power-off) a domain; a missing domain succeeds.
  virtual Status DestroyDomain(const std::string& name) = 0;
  // Asks the guest to shut down (ACPI power button); returns at once. A
  // missing or already stopped domain succeeds.
  virtual Status ShutdownDomain(const std::string& name) = 0;
  // Names of running domains that start with `prefix`.
  virtual Result<std::vector<std::string>> ListDomains(const std::string& prefix) = 0;
  virtual Result<std::string> GetDomainXml(const std::string& name) = 0;
  // Replaces berth's <metadata> of a running domain (virDomainSetMetadata,
  // live only: berth's domains are transient), e.g. to add the guest's
  // addresses once it has a lease.
  virtual Status SetDomainMetadata(const std::string& name, const DomainMetadata& metadata) = 0;
  // Saves a running domain's memory and device state to `path` on the node
  // (virDomainSave); the domain stops. The file is a libvirt save image.
  virtual Status SaveDomain(const std::string& name, const std::string& path) = 0;
  // Starts a domain from a save image on the node (virDomainRestore), running.
  virtual Status RestoreDomain(const std::string& path) = 0;
  // Pauses / resumes a domain's vCPUs (virDomainSuspend / virDomainResume).
  // Pausing also drains and flushes QEMU's block I/O, so the disk files are
  // consistent with the paused memory state.
  virtual Status SuspendDomain(const std::string& name) = 0;
  virtual Status ResumeDomain(const std::string& name) = 0;
  // Writes a running or paused domain's memory and device state to `path` on
  // the node as a libvirt save image, and leaves the domain as it was
  // (an external memory snapshot without metadata; disks are not
  // snapshotted: pause the domain first and copy them while it is paused).
  // The image restores with RestoreDomain (the header says "not running";
  // RestoreDomain starts it running anyway).
  virtual Status SaveDomainMemory(const std::string& name, const std::string& path) = 0;
  // kNotFound once a transient domain is gone.
  virtual Result<DomainState> GetDomainState(const std::string& name) = 0;
  virtual Result<std::unique_ptr<AgentChannel>> OpenAgentChannel(const std::string& domain,
                                                                  const std::string& channel) = 0;

  // --- Volume helpers for snapshot templates and their clones (manager/templates.h).
  // All of them go through libvirt's storage API, so they work on remote nodes.
  // The pool's target directory on the node (e.g. where virDomainSave may write).
  virtual Result<std::string> GetPoolPath(const std::string& pool) = 0;
  // Creates raw volume `dst` as a full copy of `src` in the same pool
  // (virStorageVolCreateXMLFrom; a reflink copy where the filesystem has one).
  virtual Result<VolumeInfo> CloneVolume(const std::string& pool, const std::string& src, const std::string& dst) = 0;
  // Reads `length` bytes at `offset` (fewer when the volume ends first).
  virtual Result<std::string> DownloadVolumeRange(const std::string& pool, const std::string& name, uint64_t offset,
                                                  uint64_t length) = 0;
  // Overwrites bytes.size() bytes at `offset` of an existing volume; nothing
  // else of it changes. InvalidArgument if the range runs past its end.
  virtual Status UploadVolumeRange(const std::string& pool, const std::string& name, uint64_t offset,
                                   std::string_view bytes) = 0;
  // Creates raw volume `name` holding exactly `bytes`, replacing an existing one.
  virtual Result<VolumeInfo> WriteVolume(const std::string& pool, const std::string& name, std::string_view bytes) = 0;

  // --- Guest networks (net/ plans them; see hypervisor/network_xml.h, nwfilter_xml.h).
  // Defines, starts and leaves autostart off for a persistent network; a no-op
  // when one of that name exists with the same bridge, gateway and prefix (it
  // is started if inactive). FailedPrecondition when a same-named network has
  // a different bridge or subnet (it is left untouched).
  virtual Status EnsureNetwork(const NetworkSpec& spec) = 0;
  // Destroys and undefines a network; a missing one succeeds.
  virtual Status DestroyNetwork(const std::string& name) = 0;
  // Names of all networks (active or not) that start with `prefix`, sorted.
  virtual Result<std::vector<std::string>> ListNetworks(const std::string& prefix) = 0;
  // A defined network read back (ParseNetworkXml of its persistent XML), e.g.
  // to rebuild the tenant -> subnet map after a restart. kNotFound if missing.
  virtual Result<NetworkSpec> GetNetwork(const std::string& name) = 0;
  // Defines (or redefines, keeping its uuid) the nwfilter `xml` describes.
  // Redefining updates the rules of running guests that use it.
  virtual Status EnsureNwFilter(const std::string& xml) = 0;
  // Undefines a filter; a missing one succeeds. FailedPrecondition while a
  // running guest still uses it.
  virtual Status DeleteNwFilter(const std::string& name) = 0;
  // Names of all nwfilters that start with `prefix`, sorted.
  virtual Result<std::vector<std::string>> ListNwFilters(const std::string& prefix) = 0;
  // The guest's IPv4 addresses as dnsmasq leased them on libvirt networks
  // (virDomainInterfaceAddresses, lease source): one entry per address. Empty
  // until the guest got a lease; kNotFound when the domain does not exist.
  virtual Result<std::vector<InterfaceAddress>> GetDomainInterfaceAddresses(const std::string& domain) = 0;
  // The IPv4 leases dnsmasq holds on `network` now (virNetworkGetDHCPLeases),
  // of live guests and of gone ones whose lease has not expired. kNotFound
  // when there is no such network. The default (for fakes and drivers
  // without leases) is Unimplemented.
  virtual Result<std::vector<DhcpLease>> GetNetworkDhcpLeases(const std::string& network) {
    return Status::Unimplemented("DHCP leases of network '" + network + "' are not available");
  }
};

// Connects to a libvirt URI. A daemon that cannot be reached yields
// kUnavailable with a one-line message that says how to start it.
Result<std::unique_ptr<Hypervisor>> ConnectLibvirt(const std::string& uri);

}  // namespace berth::hv
