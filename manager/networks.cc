#include "manager/networks.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <climits>

#include "common/sha256.h"
#include "hypervisor/domain_xml.h"
#include "hypervisor/nwfilter_xml.h"
#include "net/ipv4.h"
#include "net/names.h"
#include "net/tenant_network.h"

namespace berth::manager {
namespace {
int64_t SteadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

using json = nlohmann::json;

json EgressRulesToJson(const std::vector<net::EgressRule>& rules) {
  json out = json::array();
  for (const net::EgressRule& r : rules) {
    out.push_back({{"cidr", r.cidr}, {"protocol", net::ProtocolName(r.protocol)}, {"ports", net::FormatPortRange(r)}});
  }
  return out;
}

std::vector<net::EgressRule> EgressRulesFromJson(const json& j) {
  std::vector<net::EgressRule> out;
  if (!j.is_array()) return out;
  for (const json& e : j) {
    if (!e.is_object()) continue;
    net::EgressRule r;
    r.cidr = e.value("cidr", std::string());
    if (auto p = net::ParseProtocol("protocol", e.value("protocol", std::string())); p.ok()) r.protocol = *p;
    (void)net::ParsePortRange("ports", e.value("ports", std::string()), &r);
    out.push_back(std::move(r));
  }
  return out;
}

json NetworkPolicyToJson(const net::NetworkPolicy& p) {
  json j = {{"mode", net::NetworkModeName(p.mode)}};
  if (!p.allow.empty()) j["allow"] = EgressRulesToJson(p.allow);
  if (p.expose_port != 0) j["expose_port"] = p.expose_port;
  return j;
}

net::NetworkPolicy NetworkPolicyFromJson(const json& j) {
  net::NetworkPolicy p;
  if (j.is_string()) {
    if (auto m = net::ParseNetworkMode(j.get<std::string>()); m.ok()) p.mode = *m;
    return p;
  }
  if (!j.is_object()) return p;
  if (auto m = net::ParseNetworkMode(j.value("mode", std::string())); m.ok()) p.mode = *m;
  if (auto a = j.find("allow"); a != j.end()) p.allow = EgressRulesFromJson(*a);
  p.expose_port = j.value("expose_port", uint16_t{0});
  return p;
}

Result<net::NetworkPolicy> FunctionNetworkPolicy(const FunctionSpec& spec) {
  net::NetworkPolicy p;
  // "" is not "none" here: a function states its mode (or keeps the default).
  auto mode = spec.network.empty() ? Result<net::NetworkMode>(Status::InvalidArgument("network", "empty"))
                                   : net::ParseNetworkMode(spec.network);
  if (!mode.ok()) {
    return Status::InvalidArgument("network", "network '" + spec.network +
                                                  "' is not one of none, egress, isolated");
  }
  p.mode = *mode;
  p.allow = spec.network_allow;
  p.expose_port = spec.expose_port;
  BERTH_RETURN_IF_ERROR(net::ValidateNetworkPolicy(p, "network"));
  return p;
}

std::string OwnerTag(const std::string& owner) { return Sha256::HexOf(owner).substr(0, 8); }

namespace {
std::string LowerMac(std::string mac) {
  for (char& c : mac) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return mac;
}

std::string OwnerKey(const std::string& owner, const std::string& tenant) {
  std::string key = owner;
  key += '\0';  // ("a", "bc") and ("ab", "c") must differ
  key += tenant;
  return key;
}
}  // namespace

std::string OwnedNetworkPrefix(const std::string& owner) {
  return std::string(net::kNetworkNamePrefix) + OwnerTag(owner) + "-";
}
std::string OwnedFilterPrefix(const std::string& owner) {
  return std::string(net::kNwFilterNamePrefix) + OwnerTag(owner) + "-";
}
std::string OwnedNetworkName(const std::string& owner, const std::string& tenant, net::NetworkMode mode) {
  // TenantNetworkName is "berth-net-{e|i}-<hash>": keep what follows the prefix.
  const std::string plain = net::TenantNetworkName(OwnerKey(owner, tenant), mode);
  if (plain.empty()) return plain;
  return OwnedNetworkPrefix(owner) + plain.substr(std::string(net::kNetworkNamePrefix).size());
}

Networks::Networks(NetworksConfig config) : config_(std::move(config)) {}

Result<Networks::InUse> Networks::ScanDomains(hv::Hypervisor& hv) {
  InUse in_use;
  BERTH_ASSIGN_OR_RETURN(auto domains, hv.ListDomains(hv::kDomainNamePrefix));
  for (const std::string& d : domains) {
    auto xml = hv.GetDomainXml(d);
    if (!xml.ok()) continue;  // gone meanwhile
    auto nics = hv::ParseDomainNics(*xml);
    if (!nics.ok()) continue;
    for (const hv::NicSpec& nic : *nics) {
      if (nic.network.rfind(net::kNetworkNamePrefix, 0) == 0) {
        ++in_use.networks[nic.network];
        if (!nic.mac.empty()) in_use.macs[nic.network].insert(LowerMac(nic.mac));
      }
      if (nic.filter.rfind(net::kNwFilterNamePrefix, 0) == 0) ++in_use.filters[nic.filter];
    }
  }
  return in_use;
}

Result<net::Cidr> Networks::SubnetFor(hv::Hypervisor& hv, const std::string& network) {
  auto existing = hv.GetNetwork(network);
  if (existing.ok()) {
    BERTH_ASSIGN_OR_RETURN(uint32_t gw, net::ParseIpv4Address("gateway_ip", existing->gateway_ip));
    net::Cidr c{0, existing->prefix_length};
    c.network = gw & c.mask();
    return c;
  }
  if (existing.status().code() != Code::kNotFound) return existing.status();
  BERTH_ASSIGN_OR_RETURN(auto allocator, net::SubnetAllocator::Create(config_.pool));
  std::vector<net::Cidr> used;
  BERTH_ASSIGN_OR_RETURN(auto names, hv.ListNetworks(""));
  for (const std::string& n : names) {
    auto spec = hv.GetNetwork(n);
    if (!spec.ok() || spec->gateway_ip.empty()) continue;
    auto gw = net::ParseIpv4Address("gateway_ip", spec->gateway_ip);
    if (!gw.ok()) continue;
    net::Cidr c{0, spec->prefix_length};
    c.network = *gw & c.mask();
    used.push_back(c);
  }
  return allocator.Allocate(used);
}

Result<NetAttachment> Networks::Acquire(hv::Hypervisor& hv, const std::string& node, const std::string& tenant,
                                        const net::NetworkPolicy& policy) {
  BERTH_RETURN_IF_ERROR(net::ValidateNetworkPolicy(policy, "network"));
  if (policy.mode == net::NetworkMode::kNone) {
    return Status::InvalidArgument("network.mode", "mode 'none' has no network to attach");
  }
  std::lock_guard lock(mu_);
  const std::string name = OwnedNetworkName(config_.owner, tenant, policy.mode);
  hv::NetworkSpec network;
  net::Cidr subnet;
  // Another libvirt user (e.g. a second berthd on the host) may take the
  // subnet between our look and our start: try the next one then.
  Status last = Status::Ok();
  for (int attempt = 0; attempt < 3; ++attempt) {
    BERTH_ASSIGN_OR_RETURN(subnet, SubnetFor(hv, name));
    BERTH_ASSIGN_OR_RETURN(network,
                           net::MakeTenantNetworkSpec(tenant, policy.mode, subnet, config_.dhcp_lease_minutes));
    network.name = name;
    network.bridge = net::TenantBridgeName(OwnerKey(config_.owner, tenant), policy.mode);
    last = hv.EnsureNetwork(network);
    if (last.ok()) break;
    spdlog::warn("network {} on {} ({}): {}", name, node, subnet.ToString(), last.ToString());
    // A definition left behind by the failed start would pin the same subnet.
    if (network_refs_[node][name] == 0) {
      auto in_use = ScanDomains(hv);
      if (in_use.ok() && in_use->networks.count(name) == 0 && hv.DestroyNetwork(name).ok()) ForgetMacs(node, name);
    }
  }
  BERTH_RETURN_IF_ERROR(last.WithContext("creating network " + name + " on node " + node));

  // The filter, named by everything that goes into it.
  std::string key = "policy";
  key += '\0' + json{{"policy", NetworkPolicyToJson(policy)}, {"subnet", subnet.ToString()}}.dump();
  BERTH_ASSIGN_OR_RETURN(hv::NwFilterSpec filter, net::MakeFunctionFilterSpec(tenant, key, policy, subnet));
  filter.name = OwnedFilterPrefix(config_.owner) +
                net::FunctionFilterName(OwnerKey(config_.owner, tenant), key).substr(std::string(net::kNwFilterNamePrefix).size());
  BERTH_ASSIGN_OR_RETURN(std::string filter_xml, hv::WriteNwFilterXml(filter));
  if (Status s = hv.EnsureNwFilter(filter_xml); !s.ok()) {
    if (network_refs_[node][name] == 0) {
      auto in_use = ScanDomains(hv);
      if (in_use.ok() && in_use->networks.count(name) == 0 && hv.DestroyNetwork(name).ok()) ForgetMacs(node, name);
    }
    return s.WithContext("defining nwfilter " + filter.name + " on node " + node);
  }
  ++network_refs_[node][name];
  ++filter_refs_[node][filter.name];
  // A network an earlier berthd left (kept for its running domains): its
  // leases name the MACs to hand out first.
  if (seeded_[node].count(name) == 0) SeedFreeMacs(hv, node, name, nullptr);

  NetAttachment a;
  a.node = node;
  a.network = name;
  a.filter = filter.name;
  a.gateway_ip = network.gateway_ip;
  a.subnet = subnet.ToString();
  a.nic = net::MakeNic(network, TakeMac(node, name), filter.name);
  return a;
}

std::string Networks::TakeMac(const std::string& node, const std::string& network) {
  MacPool& pool = macs_[node][network];
  while (!pool.free.empty()) {
    std::string mac = std::move(pool.free.back());
    pool.free.pop_back();
    if (pool.in_use.insert(mac).second) return mac;  // (an adopted VM may have taken it meanwhile)
  }
  // 24 random bits: a repeat is rare, but two live VMs must never share one.
  std::string mac = LowerMac(net::RandomMac());
  for (int i = 0; i < 16 && pool.in_use.count(mac); ++i) mac = LowerMac(net::RandomMac());
  pool.in_use.insert(mac);
  return mac;
}

void Networks::ForgetMacs(const std::string& node, const std::string& network) {
  auto n = macs_.find(node);
  if (n == macs_.end()) return;
  auto it = n->second.find(network);
  if (it == n->second.end()) return;
  // Held MACs stay known (their VMs may still be around); released ones lose
  // their meaning with the network's leases.
  seeded_[node].erase(network);
  it->second.free.clear();
  if (it->second.in_use.empty()) n->second.erase(it);
}

void Networks::SeedFreeMacs(hv::Hypervisor& hv, const std::string& node, const std::string& network,
                            const InUse* in_use) {
  auto leases = hv.GetNetworkDhcpLeases(network);
  if (!leases.ok()) {
    const Code code = leases.status().code();
    // No leases to read here (a driver without them, e.g. libvirt's test
    // driver, or an inactive network): nothing to seed, nor to ask again.
    if (code == Code::kUnimplemented || code == Code::kFailedPrecondition || code == Code::kNotFound) {
      seeded_[node].insert(network);
    } else {
      spdlog::warn("node {}: DHCP leases of {}: {} (tried again later)", node, network, leases.status().ToString());
    }
    return;
  }
  seeded_[node].insert(network);
  if (leases->empty()) return;  // a new network: nothing to scan for
  InUse scanned;
  if (!in_use) {
    auto got = ScanDomains(hv);
    if (!got.ok()) {
      seeded_[node].erase(network);  // next time
      spdlog::warn("node {}: seeding the free MACs of {}: {}", node, network, got.status().ToString());
      return;
    }
    scanned = std::move(*got);
    in_use = &scanned;
  }
  std::stable_sort(leases->begin(), leases->end(),
                   [](const hv::DhcpLease& a, const hv::DhcpLease& b) { return a.expiry_unix_s < b.expiry_unix_s; });
  static const std::set<std::string> kNone;
  auto live = in_use->macs.find(network);
  const std::set<std::string>& live_macs = live == in_use->macs.end() ? kNone : live->second;
  MacPool& pool = macs_[node][network];
  std::vector<std::string> seeded;
  for (const hv::DhcpLease& lease : *leases) {
    const std::string mac = LowerMac(lease.mac);
    if (mac.empty() || live_macs.count(mac) || pool.in_use.count(mac) ||
        std::find(pool.free.begin(), pool.free.end(), mac) != pool.free.end() ||
        std::find(seeded.begin(), seeded.end(), mac) != seeded.end()) {
      continue;
    }
    seeded.push_back(mac);
  }
  if (seeded.empty()) return;
  // Below the MACs released since the start: those go first.
  pool.free.insert(pool.free.begin(), seeded.begin(), seeded.end());
  spdlog::info("node {}: {} MAC(s) of earlier VMs on {} will be handed out again", node, seeded.size(), network);
}

bool Networks::MacMayBeHeld(hv::Hypervisor& hv, const NetAttachment& a) {
  const std::string mac = LowerMac(a.nic.mac);
  auto holds = [&](const std::string& domain) {
    auto xml = hv.GetDomainXml(domain);
    if (!xml.ok()) return xml.status().code() != Code::kNotFound;
    auto nics = hv::ParseDomainNics(*xml);
    if (!nics.ok()) return true;
    for (const hv::NicSpec& nic : *nics) {
      if (LowerMac(nic.mac) == mac) return true;
    }
    return false;
  };
  if (!a.domain.empty()) return holds(a.domain);
  auto domains = hv.ListDomains(hv::kDomainNamePrefix);
  if (!domains.ok()) return true;
  for (const std::string& d : *domains) {
    if (holds(d)) return true;
  }
  return false;
}

void Networks::Release(hv::Hypervisor& hv, const NetAttachment& a) {
  // Looked up before the lock: the MAC is still marked in use, so nobody
  // can be handed it meanwhile.
  const bool recyclable = !a.nic.mac.empty() && !a.network.empty() && !MacMayBeHeld(hv, a);
  std::lock_guard lock(mu_);
  if (!a.nic.mac.empty() && !a.network.empty()) {
    MacPool& pool = macs_[a.node][a.network];
    const bool was_held = pool.in_use.erase(LowerMac(a.nic.mac)) > 0;
    if (was_held && recyclable) {
      pool.free.push_back(LowerMac(a.nic.mac));
    } else if (was_held) {
      spdlog::warn("node {}: MAC {} on {} is not handed out again (its domain may still exist)", a.node,
                   a.nic.mac, a.network);
    }
  }
  auto drop = [](std::map<std::string, int>& refs, const std::string& name) {
    if (name.empty()) return false;  // an adopted NIC without a filter
    auto it = refs.find(name);
    if (it == refs.end()) return true;
    if (--it->second > 0) return false;
    refs.erase(it);
    return true;
  };
  const bool filter_unused = drop(filter_refs_[a.node], a.filter);
  const bool network_unused = drop(network_refs_[a.node], a.network);
  if (!filter_unused && !network_unused) return;
  if (config_.idle_linger_ms > 0 && linger_thread_.joinable()) {
    const int64_t due = SteadyMs() + config_.idle_linger_ms;
    if (filter_unused) lingering_[{a.node, 'f', a.filter}] = due;
    if (network_unused) lingering_[{a.node, 'n', a.network}] = due;
    linger_cv_.notify_all();
    return;
  }
  std::vector<std::string> filters, networks;
  if (filter_unused) filters.push_back(a.filter);
  if (network_unused) networks.push_back(a.network);
  RemoveIfUnused(hv, a.node, filters, networks);
}

void Networks::RemoveIfUnused(hv::Hypervisor& hv, const std::string& node, const std::vector<std::string>& filters,
                              const std::vector<std::string>& networks) {
  if (filters.empty() && networks.empty()) return;
  auto in_use = ScanDomains(hv);
  if (!in_use.ok()) {
    spdlog::warn("network cleanup on {}: {} (left for the next sweep)", node, in_use.status().ToString());
    return;
  }
  for (const std::string& filter : filters) {
    if (in_use->filters.count(filter)) continue;
    if (Status s = hv.DeleteNwFilter(filter); !s.ok()) {
      spdlog::warn("deleting nwfilter {} on {}: {}", filter, node, s.ToString());
    }
  }
  for (const std::string& network : networks) {
    if (in_use->networks.count(network)) continue;
    if (Status s = hv.DestroyNetwork(network); !s.ok()) {
      spdlog::warn("removing network {} on {}: {}", network, node, s.ToString());
    } else {
      ForgetMacs(node, network);
    }
  }
}

Networks::~Networks() { StopLinger(); }

void Networks::SetNodeAccess(NodeAccess access) {
  std::lock_guard lock(mu_);
  node_access_ = std::move(access);
  if (config_.idle_linger_ms > 0 && !linger_thread_.joinable() && !linger_stop_) {
    linger_thread_ = std::thread([this] { LingerLoop(); });
  }
}

void Networks::StopLinger() {
  {
    std::lock_guard lock(mu_);
    linger_stop_ = true;
  }
  linger_cv_.notify_all();
  if (linger_thread_.joinable()) linger_thread_.join();
}

void Networks::LingerLoop() {
  std::unique_lock lock(mu_);
  for (;;) {
    // At the stop every lingering removal is due at once: a berthd that ends
    // leaves no unused network behind (the next one may have another owner).
    const bool stopping = linger_stop_;
    if (!stopping && lingering_.empty()) {
      linger_cv_.wait(lock);
      continue;
    }
    int64_t next = INT64_MAX;
    for (const auto& [key, due] : lingering_) next = std::min(next, due);
    const int64_t now = stopping ? INT64_MAX : SteadyMs();
    if (next > now) {
      linger_cv_.wait_for(lock, std::chrono::milliseconds(next - now));
      continue;
    }
    // Due removals grouped by node: node -> (filters, networks).
    std::map<std::string, std::pair<std::vector<std::string>, std::vector<std::string>>> due;
    for (auto it = lingering_.begin(); it != lingering_.end();) {
      const auto& [node, kind, name] = it->first;
      if (it->second > now) {
        ++it;
        continue;
      }
      (kind == 'n' ? due[node].second : due[node].first).push_back(name);
      it = lingering_.erase(it);
    }
    NodeAccess access = node_access_;
    for (const auto& [node, names] : due) {
      // The node's hypervisor outside mu_ (node_access takes the cluster's
      // lock); under mu_ again, what got a reference meanwhile stays.
      lock.unlock();
      Status st = access(node, [&](hv::Hypervisor& hv) {
        std::lock_guard again(mu_);
        auto unreferenced = [](const std::vector<std::string>& names, std::map<std::string, int>& refs) {
          std::vector<std::string> out;
          for (const std::string& n : names) {
            if (refs.count(n) == 0) out.push_back(n);
          }
          return out;
        };
        RemoveIfUnused(hv, node, unreferenced(names.first, filter_refs_[node]),
                       unreferenced(names.second, network_refs_[node]));
      });
      lock.lock();
      if (!st.ok()) spdlog::info("lingering network cleanup on {}: {} (left for the next sweep)", node, st.ToString());
    }
    if (stopping) return;
  }
}

NetAttachment Networks::Adopt(const std::string& node, const hv::NicSpec& nic) {
  std::lock_guard lock(mu_);
  NetAttachment a;
  a.node = node;
  a.network = nic.network;
  a.filter = nic.filter;
  a.nic = nic;
  if (!a.network.empty()) ++network_refs_[node][a.network];
  if (!a.filter.empty()) ++filter_refs_[node][a.filter];
  if (!a.network.empty() && !nic.mac.empty()) {
    MacPool& pool = macs_[node][a.network];
    const std::string mac = LowerMac(nic.mac);
    pool.in_use.insert(mac);
    std::erase(pool.free, mac);
  }
  return a;
}

Status Networks::Sweep(hv::Hypervisor& hv, const std::string& node) {
  std::lock_guard lock(mu_);
  BERTH_ASSIGN_OR_RETURN(InUse in_use, ScanDomains(hv));
  auto& net_refs = network_refs_[node];
  auto& fil_refs = filter_refs_[node];
  Status first = Status::Ok();
  // Filters first: a network's guests are gone, but libvirt keeps a filter
  // while any (other) guest refers to it.
  BERTH_ASSIGN_OR_RETURN(auto filters, hv.ListNwFilters(OwnedFilterPrefix(config_.owner)));
  for (const std::string& f : filters) {
    if (fil_refs.count(f) || in_use.filters.count(f)) continue;
    Status s = hv.DeleteNwFilter(f);
    if (!s.ok() && s.code() != Code::kFailedPrecondition && first.ok()) first = s;
    if (s.ok()) spdlog::info("node {}: removed unused nwfilter {}", node, f);
  }
  BERTH_ASSIGN_OR_RETURN(auto networks, hv.ListNetworks(OwnedNetworkPrefix(config_.owner)));
  for (const std::string& n : networks) {
    if (net_refs.count(n) || in_use.networks.count(n)) {
      SeedFreeMacs(hv, node, n, &in_use);  // kept: its leases' MACs are free again
      continue;
    }
    Status s = hv.DestroyNetwork(n);
    if (!s.ok() && first.ok()) first = s;
    if (s.ok()) {
      spdlog::info("node {}: removed unused network {}", node, n);
      ForgetMacs(node, n);
    }
  }
  return first;
}

std::map<std::string, int> Networks::NetworkRefs(const std::string& node) {
  std::lock_guard lock(mu_);
  return network_refs_[node];
}

std::set<std::string> Networks::MacsInUse(const std::string& node, const std::string& network) {
  std::lock_guard lock(mu_);
  auto n = macs_.find(node);
  if (n == macs_.end()) return {};
  auto it = n->second.find(network);
  return it == n->second.end() ? std::set<std::string>{} : it->second.in_use;
}

std::vector<std::string> Networks::FreeMacs(const std::string& node, const std::string& network) {
  std::lock_guard lock(mu_);
  auto n = macs_.find(node);
  if (n == macs_.end()) return {};
  auto it = n->second.find(network);
  return it == n->second.end() ? std::vector<std::string>{} : it->second.free;
}

}  // namespace berth::manager
