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
};

struct VolumeInfo {
  std::string pool;
  std::string name;
  std::string path;      // path on the node
  std::string format;    // "raw", "qcow2", ...
  uint64_t capacity_bytes = 0;
  uint64_t allocation_bytes = 0;
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

  // Domains. StartDomain creates a transient domain from the spec's XML.
  virtual Status StartDomain(const DomainSpec& spec) = 0;
  // Destroys (hard power-off) a domain; a missing domain succeeds.
  virtual Status DestroyDomain(const std::string& name) = 0;
  // Names of running domains that start with `prefix`.
  virtual Result<std::vector<std::string>> ListDomains(const std::string& prefix) = 0;
  virtual Result<std::string> GetDomainXml(const std::string& name) = 0;
  // Saves a running domain's memory and device state to `path` on the node
  // (virDomainSave); the domain stops. The file is a libvirt save image.
  virtual Status SaveDomain(const std::string& name, const std::string& path) = 0;
  // Starts a domain from a save image on the node (virDomainRestore), running.
  virtual Status RestoreDomain(const std::string& path) = 0;
  // kNotFound once a transient domain is gone.
  virtual Result<DomainState> GetDomainState(const std::string& name) = 0;
  virtual Result<std::unique_ptr<AgentChannel>> OpenAgentChannel(const std::string& domain,
                                                                  const std::string& channel) = 0;
};

// Connects to a libvirt URI. A daemon that cannot be reached yields
// kUnavailable with a one-line message that says how to start it.
Result<std::unique_ptr<Hypervisor>> ConnectLibvirt(const std::string& uri);

}  // namespace berth::hv
