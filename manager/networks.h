// Guest networking on the manager side (issue 8): per node, per tenant
// libvirt networks and per-policy nwfilters, created when the first
// networked execution of a tenant lands on a node and removed with the last.
//
//   Acquire   (before the domain starts)  network + filter ensured, one
//             reference taken on each; returns the NIC to put in the DomainSpec
//             (a recycled or fresh MAC, filterref with CTRL_IP_LEARNING=dhcp).
//   Release   (after the domain is gone)  the MAC goes back to the network's
//             free list; the last reference removes the filter and the
//             network, unless a running berth domain on the node still uses
//             them (another berthd on the same host). With an idle linger
//             (NetworksConfig::idle_linger_ms and SetNodeAccess) the removal
//             waits that long and is dropped if a new reference came
//             meanwhile: a warm pool's refill, or the next call of a tenant
//             whose calls come one after another, finds the network (and its
//             MACs and leases) still there instead of waiting for a new one.
//
// MAC recycling: every VM on a tenant network (boot, warm-pool VM, template
// clone, live-fork child) needs a MAC no other live VM there has, and each
// new MAC costs a DHCP lease that dnsmasq keeps for the lease time. So a
// released MAC is handed out again (last released first) before a new one
// is made: dnsmasq gives a MAC its old address back, and the leases a
// network uses stay bounded by its peak number of concurrent VMs, not by the
// starts per lease time. A MAC is recycled only after Release, and only when
// no berth domain on the node still shows it (a failed destroy keeps it out
// of the free list until a later Sweep sees it gone). Adopt marks the MAC
// of an adopted domain in use. The free list of a network goes with the
// network. After a berthd restart, the free list of a network that is kept
// is seeded from the network's DHCP leases (the MACs of earlier VMs whose
// leases dnsmasq still holds) minus the MACs of live domains and of NICs
// handed out: by Sweep, and by the first Acquire on a network this process
// has not seen yet, so a restart does not leak a new set of leases. The
// nwfilter pins each NIC to its own MAC (clean-traffic MAC=) and learns its
// IP from that NIC's DHCP exchange, so a recycled MAC on a new VM passes
// exactly like a fresh one, and a restored template or fork child cannot
// send with an old MAC it still holds in memory.
//   Sweep     (berthd start, node reconcile) removes this owner's networks
//             (berth-net-<tag>-*) and filters (berth-fw-<tag>-*) that no
//             reference and no running domain uses, so nothing leaks across restarts;
//             networks of running (adopted) domains are kept, and their free
//             MAC lists seeded from their leases (above).
//
// Subnets come from the configured pool (net::SubnetAllocator): the lowest
// block no berth network on the node uses yet; an existing network keeps its
// subnet. Filters are named by content (tenant, mode, allow-list, exposed
// port, subnet), so executions with the same policy share one.
//
// Thread-safe; one mutex serializes every change (allocation per node must
// be serial anyway).
#pragma once

#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "hypervisor/domain_spec.h"
#include "hypervisor/hypervisor.h"
#include "manager/types.h"
#include "net/network_policy.h"
#include "net/subnet_allocator.h"
#include "net/tenant_network.h"

namespace berth::manager {

// JSON forms of the policy, as the store keeps them and the API shows them:
// {"mode":"egress","allow":[{"cidr":"10.0.0.0/8","protocol":"tcp","ports":"443"}],"expose_port":8080}
nlohmann::json EgressRulesToJson(const std::vector<net::EgressRule>& rules);
std::vector<net::EgressRule> EgressRulesFromJson(const nlohmann::json& j);  // lenient: bad entries skipped
nlohmann::json NetworkPolicyToJson(const net::NetworkPolicy& policy);
net::NetworkPolicy NetworkPolicyFromJson(const nlohmann::json& j);           // lenient: defaults on bad input

// The policy of a function's runs. InvalidArgument naming "network",
// "network_allow[i].cidr", ..., "expose_port" (the API's field names).
Result<net::NetworkPolicy> FunctionNetworkPolicy(const FunctionSpec& spec);

// What one execution holds on its node.
struct NetAttachment {
  std::string node;
  std::string network;     // libvirt network name
  std::string filter;      // nwfilter name
  std::string gateway_ip;  // host address on the tenant bridge
  std::string subnet;      // "10.240.3.0/24"
  hv::NicSpec nic;         // what goes into DomainSpec::nics
  // Optional: the domain that holds the NIC. When set, Release checks only
  // that this domain is gone before recycling the MAC; otherwise it looks at
  // every berth domain on the node.
  std::string domain;
};

struct NetworksConfig {
  net::SubnetPoolConfig pool;  // default 10.240.0.0/16 in /24s
  // Who owns the networks and filters (berthd: its data dir). Stable across
  // restarts; names carry a tag of it, and Sweep only ever looks at names
  // with this berthd's tag, so several berthds on one libvirt host never
  // remove each other's networks.
  std::string owner;
  // Lease time of the tenant networks it creates (an existing network keeps
  // its own): at least net::kMinLeaseMinutes; the guest renews at half.
  int dhcp_lease_minutes = net::kTenantLeaseMinutes;
  // How long a network or filter that lost its last reference stays before
  // it is removed (0: at once). Needs SetNodeAccess; berthd sets both.
  int64_t idle_linger_ms = 3000;
};

// Names of one owner's objects: "berth-net-<tag8>-{e|i}-<10 hex of
// sha256(owner, tenant)>", its bridge "bn{e|i}-<10 hex>", and filters
// "berth-fw-<tag8>-<16 hex>"; <tag8> = 8 hex of sha256(owner).
std::string OwnerTag(const std::string& owner);
std::string OwnedNetworkName(const std::string& owner, const std::string& tenant, net::NetworkMode mode);
std::string OwnedNetworkPrefix(const std::string& owner);  // "berth-net-<tag8>-"
std::string OwnedFilterPrefix(const std::string& owner);   // "berth-fw-<tag8>-"

class Networks {
 public:
  explicit Networks(NetworksConfig config = {});
  // Stops the linger thread (StopLinger).
  ~Networks();

  // Runs `fn` with the hypervisor of node `node`, keeping the node alive
  // meanwhile; NotFound when the node is gone.
  using NodeAccess =
      std::function<Status(const std::string& node, const std::function<void(hv::Hypervisor&)>& fn)>;
  // Lets lingering removals reach their node later (see idle_linger_ms);
  // without it removals happen at once. Call before the first Acquire.
  void SetNodeAccess(NodeAccess access);
  // Removes what still lingers (unless a running domain uses it) and ends
  // the linger thread; later releases remove at once. Call before the nodes
  // go away; idempotent.
  void StopLinger();

  // Ensures the tenant's network for policy.mode and the policy's filter on
  // `hv` (node name `node`), takes a reference on both and returns the NIC.
  // InvalidArgument for mode none or a bad policy; ResourceExhausted when
  // the pool has no free subnet; libvirt errors as they come.
  Result<NetAttachment> Acquire(hv::Hypervisor& hv, const std::string& node, const std::string& tenant,
                                const net::NetworkPolicy& policy);
  // Drops the references Acquire took; call once the domain is gone. Errors
  // are logged (a later Sweep retries).
  void Release(hv::Hypervisor& hv, const NetAttachment& attachment);
  // Takes references on the network and filter of `nic`, a NIC of a running
  // domain that this berthd adopted after a restart (its references died
  // with the old process), and returns the attachment to Release when that
  // execution ends. No libvirt call.
  NetAttachment Adopt(const std::string& node, const hv::NicSpec& nic);
  // Removes unused berth networks and filters on the node (see above).
  Status Sweep(hv::Hypervisor& hv, const std::string& node);

  // References held now (tests, metrics): network name -> count on `node`.
  std::map<std::string, int> NetworkRefs(const std::string& node);
  // MACs of `network` on `node` (tests, metrics): held by VMs now, and
  // released ones waiting to be handed out again (next one last).
  std::set<std::string> MacsInUse(const std::string& node, const std::string& network);
  std::vector<std::string> FreeMacs(const std::string& node, const std::string& network);

 private:
  struct InUse {
    std::map<std::string, int> networks, filters;  // name -> running domains using it
    std::map<std::string, std::set<std::string>> macs;  // network -> MACs (lowercase) of running domains on it
  };
  // Networks and filters of running berth domains on the node.
  Result<InUse> ScanDomains(hv::Hypervisor& hv);
  // Whether a domain (a.domain, or any berth domain on the node) may still
  // hold a.nic.mac; true when libvirt cannot tell.
  bool MacMayBeHeld(hv::Hypervisor& hv, const NetAttachment& a);
  // The MAC for a new NIC on `network` (mu_ held): a released one, else a fresh one.
  std::string TakeMac(const std::string& node, const std::string& network);
  void ForgetMacs(const std::string& node, const std::string& network);  // the network is gone
  // Puts the MACs of `network`'s DHCP leases that no running domain (in
  // `in_use`, or scanned now when null) and no handed-out NIC holds on its
  // free list, oldest lease first (mu_ held). Errors are logged: the list
  // then just stays as it was.
  void SeedFreeMacs(hv::Hypervisor& hv, const std::string& node, const std::string& network, const InUse* in_use);
  Result<net::Cidr> SubnetFor(hv::Hypervisor& hv, const std::string& network);
  // Removes those of `filters` and `networks` on `node` that no running
  // domain uses, after one scan of the node's domains (mu_ held).
  void RemoveIfUnused(hv::Hypervisor& hv, const std::string& node, const std::vector<std::string>& filters,
                      const std::vector<std::string>& networks);
  void LingerLoop();

  NetworksConfig config_;
  std::mutex mu_;
  // node -> name -> references held by this berthd.
  std::map<std::string, std::map<std::string, int>> network_refs_, filter_refs_;
  struct MacPool {
    std::set<std::string> in_use;   // on a VM that is (or may be) alive
    std::vector<std::string> free;  // released, domain gone; back() goes next
  };
  // node -> network name -> its MACs.
  std::map<std::string, std::map<std::string, MacPool>> macs_;
  // node -> networks whose free list was seeded from their leases.
  std::map<std::string, std::set<std::string>> seeded_;

  // Lingering removals: (node, 'n'etwork or 'f'ilter, name) -> when (steady ms).
  NodeAccess node_access_;
  std::map<std::tuple<std::string, char, std::string>, int64_t> lingering_;
  std::condition_variable linger_cv_;
  bool linger_stop_ = false;
  std::thread linger_thread_;
};

}  // namespace berth::manager
