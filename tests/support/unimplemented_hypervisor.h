// UnimplementedHypervisor: a hv::Hypervisor whose every call fails with
// Unimplemented naming the call, so a test fake overrides only the calls its
// test is about and any other call shows up as an error, never as a silent
// success.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "hypervisor/hypervisor.h"

namespace berth::hv {

class UnimplementedHypervisor : public hv::Hypervisor {
public:
  explicit UnimplementedHypervisor(std::string uri = "fake:///")
      : uri_(std::move(uri)) {}
  const std::string &uri() const override { return uri_; }
  Result<NodeInfo> GetNodeInfo() override { return No("GetNodeInfo"); }
  Status EnsureDirPool(const std::string &, const std::string &) override {
    return No("EnsureDirPool");
  }
  Result<VolumeInfo> LookupVolume(const std::string &,
                                  const std::string &) override {
    return No("LookupVolume");
  }
  Result<VolumeInfo> UploadVolume(const std::string &, const std::string &,
                                  const std::string &,
                                  const std::string &) override {
    return No("UploadVolume");
  }
  Result<VolumeInfo> CreateOverlay(const std::string &, const std::string &,
                                   const VolumeInfo &, uint64_t) override {
    return No("CreateOverlay");
  }
  Result<std::string> DownloadVolumeTail(const std::string &,
                                         const std::string &,
                                         uint64_t) override {
    return No("DownloadVolumeTail");
  }
  Status DeleteVolume(const std::string &, const std::string &) override {
    return No("DeleteVolume");
  }
  Result<std::vector<VolumeInfo>> ListVolumes(const std::string &) override {
    return No("ListVolumes");
  }
  Status RefreshPool(const std::string &) override { return No("RefreshPool"); }
  Result<PoolInfo> GetPoolInfo(const std::string &) override {
    return No("GetPoolInfo");
  }
  Status StartDomain(const DomainSpec &) override { return No("StartDomain"); }
  Status DestroyDomain(const std::string &) override {
    return No("DestroyDomain");
  }
  Status ShutdownDomain(const std::string &) override {
    return No("ShutdownDomain");
  }
  Result<std::vector<std::string>> ListDomains(const std::string &) override {
    return No("ListDomains");
  }
  Result<std::string> GetDomainXml(const std::string &) override {
    return No("GetDomainXml");
  }
  Status SetDomainMetadata(const std::string &,
                           const DomainMetadata &) override {
    return No("SetDomainMetadata");
  }
  Status SaveDomain(const std::string &, const std::string &) override {
    return No("SaveDomain");
  }
  Status RestoreDomain(const std::string &) override {
    return No("RestoreDomain");
  }
  Status SuspendDomain(const std::string &) override {
    return No("SuspendDomain");
  }
  Status ResumeDomain(const std::string &) override {
    return No("ResumeDomain");
  }
  Status SaveDomainMemory(const std::string &, const std::string &) override {
    return No("SaveDomainMemory");
  }
  Result<DomainState> GetDomainState(const std::string &) override {
    return No("GetDomainState");
  }
  Result<std::unique_ptr<AgentChannel>>
  OpenAgentChannel(const std::string &, const std::string &) override {
    return No("OpenAgentChannel");
  }
  Result<std::string> GetPoolPath(const std::string &) override {
    return No("GetPoolPath");
  }
  Result<VolumeInfo> CloneVolume(const std::string &, const std::string &,
                                 const std::string &) override {
    return No("CloneVolume");
  }
  Result<std::string> DownloadVolumeRange(const std::string &,
                                          const std::string &, uint64_t,
                                          uint64_t) override {
    return No("DownloadVolumeRange");
  }
  Status UploadVolumeRange(const std::string &, const std::string &, uint64_t,
                           std::string_view) override {
    return No("UploadVolumeRange");
  }
  Result<VolumeInfo> WriteVolume(const std::string &, const std::string &,
                                 std::string_view) override {
    return No("WriteVolume");
  }
  Status EnsureNetwork(const NetworkSpec &) override {
    return No("EnsureNetwork");
  }
  Status DestroyNetwork(const std::string &) override {
    return No("DestroyNetwork");
  }
  Result<std::vector<std::string>> ListNetworks(const std::string &) override {
    return No("ListNetworks");
  }
  Result<NetworkSpec> GetNetwork(const std::string &) override {
    return No("GetNetwork");
  }
  Status EnsureNwFilter(const std::string &) override {
    return No("EnsureNwFilter");
  }
  Status DeleteNwFilter(const std::string &) override {
    return No("DeleteNwFilter");
  }
  Result<std::vector<std::string>> ListNwFilters(const std::string &) override {
    return No("ListNwFilters");
  }
  Result<std::vector<InterfaceAddress>>
  GetDomainInterfaceAddresses(const std::string &) override {
    return No("GetDomainInterfaceAddresses");
  }

protected:
  static Status No(const char *call) {
    return Status::Unimplemented(std::string(call) +
                                 " is not in this fake hypervisor");
  }
  std::string uri_;
};

} // namespace berth::hv
