// Node: one libvirt host as the manager sees it: its hypervisor connection,
// storage pools, the guest runtime uploaded to it, its acceleration mode and
// its free capacity.
#pragma once

#include <functional>
#include <map>
#include <set>
#include <utility>
#include <vector>
#include <memory>
#include <mutex>
#include <string>

#include "common/env.h"
#include "hypervisor/hypervisor.h"
#include "images/image_store.h"
#include "manager/runtime.h"

namespace berth::manager {

class TemplateCache;

struct NodeConfig {
  std::string name = "local";
  std::string uri = "qemu:///system";
  std::string accel = "auto";  // kvm | tcg | auto (probe by booting a tiny guest)
  std::string pool = "berth";  // images and overlays
  std::string pool_dir = "/var/lib/berth/pool";
  std::string log_pool = "berth-logs";  // serial console logs
  std::string log_dir = "/var/lib/berth/logs";
  uint64_t reserved_memory_mib = 512;   // kept free for the host
};

// Parses "kvm" / "tcg" / "auto".
Status ValidateAccel(const std::string& accel);

class Node;

// Destroys the domains named `prefix`... that an earlier berthd left running
// on `node` outside any execution (pooled VMs, template builds), and their
// volumes. `volumes_of(domain)` names a domain's (pool, volume) pairs, its
// overlay in the node's pool first; only domains whose overlay is among
// `pool_volumes` (this node's pool) are touched, so another berthd's are not.
void RemoveStaleDomains(Node& node, const std::string& prefix, const std::set<std::string>& pool_volumes,
                        const std::function<std::vector<std::pair<std::string, std::string>>(const std::string&)>&
                            volumes_of);

class Node {
 public:
  Node(Env* env, NodeConfig config, std::unique_ptr<hv::Hypervisor> hypervisor);
  ~Node();

  // Makes the node ready: pools exist, the runtime is on it, accel resolved,
  // its template cache exists and warm-pool VMs an earlier berthd left are gone.
  Status Prepare(const RuntimeArtifacts& runtime);
  // The node's snapshot templates (null before Prepare).
  TemplateCache* templates() { return templates_.get(); }

  const NodeConfig& config() const { return config_; }
  const std::string& name() const { return config_.name; }
  hv::Hypervisor& hypervisor() { return *hv_; }
  hv::Accel accel() const { return accel_; }
  const std::string& kernel_path() const { return kernel_path_; }
  const std::string& initrd_path() const { return initrd_path_; }
  const hv::NodeInfo& info() const { return info_; }

  // Makes sure the image is a volume on this node (uploading it once).
  // Concurrent calls for one image share one transfer; different images
  // upload in parallel. An uploaded volume must have the image's size; a
  // volume this process did not upload or check (an earlier berthd may have
  // been cut short mid-transfer) is read back and must have the image's
  // sha256, else it is replaced. Marks the image as used now (LRU).
  Result<hv::VolumeInfo> EnsureImage(const images::ImageRecord& image);

  // Image cache (img-* volumes of the node's pool). Evicts least-recently-
  // used images, except those in_use(id) says something needs, until their
  // allocation is at most budget_bytes. Returns how many it evicted.
  size_t TrimImageCache(uint64_t budget_bytes, const std::function<bool(const std::string& id)>& in_use);
  // Removes the image's volume (any format) if cached here.
  Status EvictImage(const std::string& sha256);
  // sha256 -> allocation bytes of the images cached on this node.
  std::map<std::string, uint64_t> CachedImages();

  // Capacity accounting: Reserve fails kResourceExhausted when the node lacks
  // the memory or vCPUs (vCPUs may be overcommitted 4x).
  Status Reserve(uint32_t vcpus, uint64_t memory_mib);
  void Release(uint32_t vcpus, uint64_t memory_mib);

  static std::string ImageVolumeName(const std::string& sha256, const std::string& format);

 private:
  Result<hv::Accel> ProbeAccel();
  Result<hv::VolumeInfo> EnsureFileVolume(const std::string& name, const std::string& path,
                                          const std::string& format);

  Env* env_;
  NodeConfig config_;
  std::unique_ptr<hv::Hypervisor> hv_;
  hv::NodeInfo info_;
  hv::Accel accel_ = hv::Accel::kTcg;
  std::string kernel_path_, initrd_path_;
  std::unique_ptr<TemplateCache> templates_;

  struct ImageTransfer;
  Result<hv::VolumeInfo> TransferImage(const images::ImageRecord& image);
  std::mutex upload_mu_;  // guards the three below
  std::map<std::string, std::shared_ptr<ImageTransfer>> transfers_;  // volume name -> transfer in flight
  std::set<std::string> verified_volumes_;        // uploaded or checked by this process
  std::map<std::string, int64_t> image_last_used_;  // sha256 -> monotonic ms
  std::mutex capacity_mu_;
  uint64_t used_memory_mib_ = 0;
  uint32_t used_vcpus_ = 0;
};

}  // namespace berth::manager
