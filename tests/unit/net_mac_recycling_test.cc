// MAC recycling in manager::Networks (issue 8, DHCP lease exhaustion): a
// released MAC is handed out again before a new one is made, never while a
// domain that holds it may still exist, adopted MACs count as held, the
// free list goes with its network, and after a restart it is seeded from
// the network's DHCP leases minus the MACs live domains hold. Against an
// in-memory fake hypervisor (networks, filters, DHCP leases, and domains
// that show NICs).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "manager/networks.h"
#include "tests/support/unimplemented_hypervisor.h"

namespace berth::manager {
namespace {

class FakeNetHypervisor : public hv::UnimplementedHypervisor {
 public:
  Status EnsureNetwork(const hv::NetworkSpec& spec) override {
    networks_[spec.name] = spec;
    return Status::Ok();
  }
  Status DestroyNetwork(const std::string& name) override {
    networks_.erase(name);
    ++destroyed_networks;
    return Status::Ok();
  }
  Result<std::vector<std::string>> ListNetworks(const std::string& prefix) override {
    std::vector<std::string> out;
    for (const auto& [name, _] : networks_) {
      if (name.rfind(prefix, 0) == 0) out.push_back(name);
    }
    return out;
  }
  Result<hv::NetworkSpec> GetNetwork(const std::string& name) override {
    auto it = networks_.find(name);
    if (it == networks_.end()) return Status::NotFound("network " + name);
    return it->second;
  }
  Status EnsureNwFilter(const std::string&) override { return Status::Ok(); }
  Status DeleteNwFilter(const std::string&) override { return Status::Ok(); }
  Result<std::vector<std::string>> ListNwFilters(const std::string&) override { return std::vector<std::string>{}; }
  Result<std::vector<std::string>> ListDomains(const std::string& prefix) override {
    if (!domains_ok) return Status::Unavailable("libvirt connection lost");
    std::vector<std::string> out;
    for (const auto& [name, _] : domains) {
      if (name.rfind(prefix, 0) == 0) out.push_back(name);
    }
    return out;
  }
  Result<std::string> GetDomainXml(const std::string& name) override {
    if (!domains_ok) return Status::Unavailable("libvirt connection lost");
    auto it = domains.find(name);
    if (it == domains.end()) return Status::NotFound("domain " + name);
    std::string xml = "<domain type='qemu'><name>" + name + "</name><devices>";
    for (const hv::NicSpec& nic : it->second) {
      xml += "<interface type='network'><mac address='" + nic.mac + "'/><source network='" + nic.network +
             "'/><filterref filter='" + nic.filter + "'/></interface>";
    }
    return xml + "</devices></domain>";
  }

  Result<std::vector<hv::DhcpLease>> GetNetworkDhcpLeases(const std::string& network) override {
    ++lease_calls;
    if (networks_.count(network) == 0) return Status::NotFound("network " + network);
    return leases[network];
  }

  // The running domains: name -> NICs. Tests add and remove them.
  std::map<std::string, std::vector<hv::NicSpec>> domains;
  // network -> the leases dnsmasq holds (tests fill them in).
  std::map<std::string, std::vector<hv::DhcpLease>> leases;
  int lease_calls = 0;
  bool domains_ok = true;
  int destroyed_networks = 0;

 private:
  std::map<std::string, hv::NetworkSpec> networks_;
};

net::NetworkPolicy Egress() {
  net::NetworkPolicy p;
  p.mode = net::NetworkMode::kEgress;
  return p;
}

class MacRecyclingTest : public ::testing::Test {
 protected:
  // A VM that got a NIC: its domain runs with it.
  NetAttachment Start(const std::string& domain, const std::string& tenant = "acme") {
    auto a = networks_.Acquire(hv_, "n1", tenant, Egress());
    EXPECT_TRUE(a.ok()) << a.status().ToString();
    hv_.domains[domain] = {a->nic};
    return *a;
  }
  // The VM's domain is gone, then its NIC is released (the teardown's order).
  void Stop(const std::string& domain, const NetAttachment& a) {
    hv_.domains.erase(domain);
    networks_.Release(hv_, a);
  }

  FakeNetHypervisor hv_;
  Networks networks_{NetworksConfig{{}, "/var/lib/berth-test"}};
};

TEST_F(MacRecyclingTest, SequentialRunsReuseOneMac) {
  // One VM stays up so the network (and its free list) stays.
  NetAttachment keeper = Start("berth-keeper");
  std::set<std::string> seen;
  for (int i = 0; i < 50; ++i) {
    const std::string d = "berth-run-" + std::to_string(i);
    NetAttachment a = Start(d);
    EXPECT_NE(a.nic.mac, keeper.nic.mac);
    seen.insert(a.nic.mac);
    Stop(d, a);
  }
  EXPECT_EQ(seen.size(), 1u) << "sequential runs must not need a new MAC (and lease) each";
  // The filter is pinned to the recycled MAC too (clean-traffic MAC=).
  NetAttachment again = Start("berth-again");
  bool pinned = false;
  for (const auto& [k, v] : again.nic.filter_parameters) pinned |= k == "MAC" && v == again.nic.mac;
  EXPECT_TRUE(pinned);
}

TEST_F(MacRecyclingTest, ConcurrentVmsGetDistinctMacsAndTheSameSetAgain) {
  std::vector<NetAttachment> first;
  std::set<std::string> macs;
  for (int i = 0; i < 6; ++i) {
    first.push_back(Start("berth-a" + std::to_string(i)));
    macs.insert(first.back().nic.mac);
  }
  EXPECT_EQ(macs.size(), 6u) << "live VMs on one network never share a MAC";
  const std::string network = first[0].network;
  EXPECT_EQ(networks_.MacsInUse("n1", network), macs);
  // Keep one up (the network stays), stop the rest, start five again.
  for (int i = 1; i < 6; ++i) Stop("berth-a" + std::to_string(i), first[i]);
  EXPECT_EQ(networks_.FreeMacs("n1", network).size(), 5u);
  std::set<std::string> second = {first[0].nic.mac};
  for (int i = 0; i < 5; ++i) second.insert(Start("berth-b" + std::to_string(i)).nic.mac);
  EXPECT_EQ(second, macs) << "the peak number of VMs bounds the MACs (and leases) used";
  EXPECT_TRUE(networks_.FreeMacs("n1", network).empty());
  // A sixth concurrent one needs a new MAC.
  EXPECT_EQ(macs.count(Start("berth-b5").nic.mac), 0u);
}

TEST_F(MacRecyclingTest, NotRecycledWhileItsDomainMayStillExist) {
  NetAttachment keeper = Start("berth-keeper");
  NetAttachment a = Start("berth-x");
  // The destroy failed: the domain still runs with the MAC when the teardown releases it.
  networks_.Release(hv_, a);
  EXPECT_TRUE(networks_.FreeMacs("n1", a.network).empty());
  NetAttachment b = Start("berth-y");
  EXPECT_NE(b.nic.mac, a.nic.mac);

  // Same with the domain named in the attachment (the cheap check).
  b.domain = "berth-y";
  networks_.Release(hv_, b);
  EXPECT_TRUE(networks_.FreeMacs("n1", b.network).empty());

  // libvirt cannot tell: not recycled either.
  NetAttachment c = Start("berth-z");
  hv_.domains.erase("berth-z");
  hv_.domains_ok = false;
  networks_.Release(hv_, c);
  hv_.domains_ok = true;
  EXPECT_TRUE(networks_.FreeMacs("n1", c.network).empty());

  // Gone for sure, with the domain named: recycled.
  NetAttachment d = Start("berth-w");
  d.domain = "berth-w";
  Stop("berth-w", d);
  EXPECT_EQ(networks_.FreeMacs("n1", d.network), std::vector<std::string>{d.nic.mac});
  // Released twice (a bug elsewhere): still on the free list once.
  networks_.Release(hv_, d);
  EXPECT_EQ(networks_.FreeMacs("n1", d.network), std::vector<std::string>{d.nic.mac});
  (void)keeper;
}

TEST_F(MacRecyclingTest, AdoptedMacIsInUseUntilReleased) {
  NetAttachment keeper = Start("berth-keeper");
  // A domain of the previous berthd, adopted after the restart.
  hv::NicSpec old_nic = keeper.nic;
  old_nic.mac = "52:54:00:AB:CD:EF";  // libvirt may show another case
  hv_.domains["berth-adopted"] = {old_nic};
  NetAttachment adopted = networks_.Adopt("n1", old_nic);
  EXPECT_EQ(networks_.MacsInUse("n1", keeper.network).count("52:54:00:ab:cd:ef"), 1u);
  EXPECT_EQ(networks_.NetworkRefs("n1").at(keeper.network), 2);
  // Its MAC is never handed out while it runs, even from the free list.
  for (int i = 0; i < 20; ++i) {
    NetAttachment a = Start("berth-r");
    EXPECT_NE(a.nic.mac, "52:54:00:ab:cd:ef");
    Stop("berth-r", a);
  }
  Stop("berth-adopted", adopted);
  auto free_macs = networks_.FreeMacs("n1", keeper.network);
  ASSERT_FALSE(free_macs.empty());
  EXPECT_EQ(free_macs.back(), "52:54:00:ab:cd:ef") << "released last, handed out next";
  EXPECT_EQ(Start("berth-next").nic.mac, "52:54:00:ab:cd:ef");
}

TEST_F(MacRecyclingTest, FreeListIsPerNetworkAndGoesWithIt) {
  NetAttachment a = Start("berth-a", "acme");
  NetAttachment g = Start("berth-g", "globex");
  ASSERT_NE(a.network, g.network);
  NetAttachment a2 = Start("berth-a2", "acme");
  Stop("berth-a2", a2);
  // Another tenant's network does not get acme's released MAC.
  NetAttachment g2 = Start("berth-g2", "globex");
  EXPECT_NE(g2.nic.mac, a2.nic.mac);
  EXPECT_EQ(networks_.FreeMacs("n1", a.network), std::vector<std::string>{a2.nic.mac});
  // acme's last VM goes: the network is removed, its free list with it.
  const int destroyed = hv_.destroyed_networks;
  Stop("berth-a", a);
  EXPECT_EQ(hv_.destroyed_networks, destroyed + 1);
  EXPECT_TRUE(networks_.FreeMacs("n1", a.network).empty());
  EXPECT_TRUE(networks_.MacsInUse("n1", a.network).empty());
  // Per node, too.
  auto other = networks_.Acquire(hv_, "n2", "globex", Egress());
  ASSERT_TRUE(other.ok());
  EXPECT_TRUE(networks_.FreeMacs("n2", other->network).empty());
  EXPECT_EQ(networks_.MacsInUse("n2", other->network).size(), 1u);
}

// What dnsmasq holds after the VMs in `atts` got their leases (expiry in
// the order given: the last one is the newest).
std::vector<hv::DhcpLease> LeasesOf(const std::vector<NetAttachment>& atts) {
  std::vector<hv::DhcpLease> out;
  int64_t expiry = 1'700'000'000;
  int host = 10;
  for (const NetAttachment& a : atts) {
    std::string mac = a.nic.mac;
    std::transform(mac.begin(), mac.end(), mac.begin(), ::toupper);  // libvirt's case may differ
    out.push_back({mac, "10.240.0." + std::to_string(host++), 24, expiry++, ""});
  }
  return out;
}

// berthd restarts while one VM runs on the tenant network: the MACs of the
// VMs the old process ran (their leases are still in dnsmasq) are handed out
// again, the running VM's is not, and no new MAC is made while old ones last.
TEST_F(MacRecyclingTest, RestartSeedsFreeListFromLeasesMinusLiveDomains) {
  NetAttachment keeper = Start("berth-keeper");
  std::vector<NetAttachment> gone;
  for (int i = 0; i < 3; ++i) gone.push_back(Start("berth-old" + std::to_string(i)));
  // One more VM of the old process still runs and is not adopted (e.g. the
  // reconcile has not removed it yet): its MAC is held all the same.
  NetAttachment orphan = Start("berth-orphan");
  for (int i = 0; i < 3; ++i) Stop("berth-old" + std::to_string(i), gone[i]);
  std::vector<NetAttachment> all = {keeper};
  all.insert(all.end(), gone.begin(), gone.end());
  all.push_back(orphan);
  hv_.leases[keeper.network] = LeasesOf(all);

  // The new process: empty lists; it adopts the keeper, then sweeps.
  Networks restarted{NetworksConfig{{}, "/var/lib/berth-test"}};
  NetAttachment adopted = restarted.Adopt("n1", keeper.nic);
  ASSERT_TRUE(restarted.FreeMacs("n1", keeper.network).empty());
  ASSERT_TRUE(restarted.Sweep(hv_, "n1").ok());
  std::vector<std::string> free_macs = restarted.FreeMacs("n1", keeper.network);
  std::set<std::string> expected;
  for (const NetAttachment& a : gone) expected.insert(a.nic.mac);
  EXPECT_EQ(std::set<std::string>(free_macs.begin(), free_macs.end()), expected)
      << "the leases of gone VMs, lowercase, without the adopted or the still running one";
  EXPECT_EQ(free_macs.size(), 3u) << "each once";
  EXPECT_EQ(free_macs.back(), gone.back().nic.mac) << "the newest lease goes next";

  // A second sweep (node reconcile) adds nothing twice, and never a MAC
  // handed out to a VM whose domain has not started yet.
  auto pending = restarted.Acquire(hv_, "n1", "acme", Egress());
  ASSERT_TRUE(pending.ok()) << pending.status().ToString();
  EXPECT_EQ(pending->nic.mac, gone.back().nic.mac);
  ASSERT_TRUE(restarted.Sweep(hv_, "n1").ok());
  free_macs = restarted.FreeMacs("n1", keeper.network);
  EXPECT_EQ(free_macs.size(), 2u);
  EXPECT_EQ(std::count(free_macs.begin(), free_macs.end(), pending->nic.mac), 0);

  // Three VMs at once: the two remaining old MACs, then one new one.
  hv_.domains["berth-new0"] = {pending->nic};
  std::set<std::string> next;
  for (int i = 1; i < 3; ++i) {
    auto a = restarted.Acquire(hv_, "n1", "acme", Egress());
    ASSERT_TRUE(a.ok());
    next.insert(a->nic.mac);
  }
  EXPECT_EQ(next, std::set<std::string>({gone[0].nic.mac, gone[1].nic.mac}));
  auto fresh = restarted.Acquire(hv_, "n1", "acme", Egress());
  ASSERT_TRUE(fresh.ok());
  for (const NetAttachment& a : all) EXPECT_NE(fresh->nic.mac, a.nic.mac);
  (void)adopted;
}

// Without a sweep (e.g. it failed at start), the first Acquire on a network
// an earlier process left seeds the list itself; a network made new costs
// one lease lookup and no domain scan.
TEST_F(MacRecyclingTest, FirstAcquireOnAnExistingNetworkSeedsToo) {
  NetAttachment keeper = Start("berth-keeper");
  NetAttachment old = Start("berth-old");
  Stop("berth-old", old);
  hv_.leases[keeper.network] = LeasesOf({keeper, old});

  Networks restarted{NetworksConfig{{}, "/var/lib/berth-test"}};
  const int calls = hv_.lease_calls;
  auto a = restarted.Acquire(hv_, "n1", "acme", Egress());
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(a->nic.mac, old.nic.mac) << "the old VM's MAC (and lease), not the running keeper's";
  auto b = restarted.Acquire(hv_, "n1", "acme", Egress());
  ASSERT_TRUE(b.ok());
  EXPECT_NE(b->nic.mac, keeper.nic.mac);
  EXPECT_NE(b->nic.mac, old.nic.mac);
  EXPECT_EQ(hv_.lease_calls, calls + 1) << "seeded once per network";

  // Another tenant's network, created now: its (empty) leases are read once.
  auto g = restarted.Acquire(hv_, "n1", "globex", Egress());
  ASSERT_TRUE(g.ok());
  auto g2 = restarted.Acquire(hv_, "n1", "globex", Egress());
  ASSERT_TRUE(g2.ok());
  EXPECT_EQ(hv_.lease_calls, calls + 2);
}

// The seeding needs the live domains: when libvirt cannot list them, nothing
// is seeded (a held MAC must never go on the list), and a later call does it.
TEST_F(MacRecyclingTest, NoSeedingWhileDomainsCannotBeListed) {
  NetAttachment keeper = Start("berth-keeper");
  NetAttachment old = Start("berth-old");
  Stop("berth-old", old);
  hv_.leases[keeper.network] = LeasesOf({keeper, old});

  Networks restarted{NetworksConfig{{}, "/var/lib/berth-test"}};
  hv_.domains_ok = false;
  EXPECT_FALSE(restarted.Sweep(hv_, "n1").ok());
  EXPECT_TRUE(restarted.FreeMacs("n1", keeper.network).empty());
  auto a = restarted.Acquire(hv_, "n1", "acme", Egress());
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_NE(a->nic.mac, keeper.nic.mac);
  EXPECT_NE(a->nic.mac, old.nic.mac);
  hv_.domains_ok = true;
  ASSERT_TRUE(restarted.Sweep(hv_, "n1").ok());
  EXPECT_EQ(restarted.FreeMacs("n1", keeper.network), std::vector<std::string>{old.nic.mac});
}

// Networks with an idle linger whose removals reach the fake through
// SetNodeAccess (node "n1" only). The fake is not thread-safe: the test and
// the linger thread reach it under hv_mu_.
class NetworkLingerTest : public ::testing::Test {
 protected:
  std::unique_ptr<Networks> MakeNetworks(int64_t linger_ms) {
    NetworksConfig cfg{{}, "/var/lib/berth-test"};
    cfg.idle_linger_ms = linger_ms;
    auto networks = std::make_unique<Networks>(cfg);
    networks->SetNodeAccess([this](const std::string& node, const std::function<void(hv::Hypervisor&)>& fn) -> Status {
      if (node != "n1") return Status::NotFound("node " + node);
      std::lock_guard lock(hv_mu_);
      fn(hv_);
      return Status::Ok();
    });
    return networks;
  }

  FakeNetHypervisor hv_;
  std::mutex hv_mu_;
};

// With an idle linger, a network that lost its last reference stays for a
// while: the next VM of the tenant (a warm pool's refill after the call that
// used the pooled VM) gets the same network and MAC back instead of a new
// network; once nothing takes it, it goes.
TEST_F(NetworkLingerTest, AReleasedNetworkLingersIsReusedAndThenRemoved) {
  auto networks = MakeNetworks(300);
  std::string network, mac;
  NetAttachment second;
  {
    std::lock_guard lock(hv_mu_);
    auto first = networks->Acquire(hv_, "n1", "acme", Egress());
    ASSERT_TRUE(first.ok()) << first.status().ToString();
    network = first->network;
    mac = first->nic.mac;
    networks->Release(hv_, *first);
    EXPECT_TRUE(hv_.GetNetwork(network).ok()) << "removed at once despite the linger";
    auto again = networks->Acquire(hv_, "n1", "acme", Egress());
    ASSERT_TRUE(again.ok()) << again.status().ToString();
    second = *again;
    EXPECT_EQ(second.network, network);
    EXPECT_EQ(second.nic.mac, mac) << "the lingering network's free MAC is handed out again";
    EXPECT_EQ(hv_.destroyed_networks, 0);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  {
    std::lock_guard lock(hv_mu_);
    EXPECT_TRUE(hv_.GetNetwork(network).ok()) << "a network in use was removed when its earlier linger ran out";
    networks->Release(hv_, second);
  }
  bool gone = false;
  for (int i = 0; i < 100 && !gone; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::lock_guard lock(hv_mu_);
    gone = !hv_.GetNetwork(network).ok();
  }
  EXPECT_TRUE(gone) << "the network stayed after its linger with no user";
  std::lock_guard lock(hv_mu_);
  EXPECT_EQ(hv_.destroyed_networks, 1);
}

// A berthd that stops removes what lingers: the next berthd may have another
// owner and would never sweep it.
TEST_F(NetworkLingerTest, StoppingRemovesWhatLingersAtOnce) {
  auto networks = MakeNetworks(60'000);
  std::string network;
  {
    std::lock_guard lock(hv_mu_);
    auto a = networks->Acquire(hv_, "n1", "acme", Egress());
    ASSERT_TRUE(a.ok()) << a.status().ToString();
    network = a->network;
    networks->Release(hv_, *a);
    EXPECT_TRUE(hv_.GetNetwork(network).ok());
  }
  networks->StopLinger();
  std::lock_guard lock(hv_mu_);
  EXPECT_FALSE(hv_.GetNetwork(network).ok()) << "a lingering network outlived the stop";
}

}  // namespace
}  // namespace berth::manager
