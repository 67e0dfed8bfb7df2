// DHCP lease renewal on a real TCG guest (issue 8): a guest that lives longer
// than half its lease renews it and keeps its address. berthd runs with the
// shortest lease dnsmasq gives (--dhcp-lease-minutes 2, so T1 = 60 s); a
// served instance stays up past T1, and then
//   - dnsmasq's lease of its MAC (virNetworkGetDHCPLeases through
//     hv::Hypervisor::GetNetworkDhcpLeases) expires later than the first one
//     did: the guest asked again. A guest that took one lease and stopped
//     asking (udhcpc -q) fails here;
//   - the guest still has the same address on eth0 (its own account, served
//     through /svc), and never lost it meanwhile (it checks every second).
#include <gtest/gtest.h>

#include <chrono>
#include <ctime>
#include <iostream>
#include <thread>

#include "common/ids.h"
#include "hypervisor/hypervisor.h"
#include "manager/networks.h"
#include "net/network_policy.h"
#include "tests/integration/support/harness.h"

namespace berth::testing {
namespace {

using nlohmann::json;

// The lease of `mac` on `network` ("" ip when there is none).
hv::DhcpLease LeaseOf(hv::Hypervisor& hv, const std::string& network, const std::string& mac) {
  auto leases = hv.GetNetworkDhcpLeases(network);
  EXPECT_TRUE(leases.ok()) << leases.status().ToString();
  if (!leases.ok()) return {};
  for (const hv::DhcpLease& l : *leases) {
    if (l.mac == mac) return l;
  }
  return {};
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

TEST(NetworkLeaseTest, LongLivedGuestRenewsItsLeaseAndKeepsItsAddress) {
  constexpr int kLeaseMinutes = 2;  // dnsmasq's minimum
  BerthdProcess daemon({"--dhcp-lease-minutes", std::to_string(kLeaseMinutes)});
  ASSERT_TRUE(daemon.running()) << "berthd did not start:\n" << daemon.log();
  auto hv = hv::ConnectLibvirt("qemu:///system");
  ASSERT_TRUE(hv.ok()) << hv.status().ToString();
  const std::string tenant = "lease" + RandomHex(6);
  const std::string token = daemon.CreateToken(tenant);
  const std::string image = daemon.UploadBusybox(token);
  ASSERT_FALSE(image.empty());

  // Every second the guest writes its eth0 address where httpd serves it,
  // and notes each second it had none.
  const std::string script =
      "mkdir -p /tmp/www; "
      "(while :; do a=$(ip -4 -o addr show dev eth0 | awk '{print $4}'); "
      "[ -n \"$a\" ] || date >> /tmp/www/gaps; echo \"$a\" > /tmp/www/addr; sleep 1; done) & "
      "exec httpd -f -p 8080 -h /tmp/www";
  auto started = daemon.CallAs(token, "POST", "/v1/procs",
                               json{{"image", image},
                                    {"name", "leaser"},
                                    {"memory_mib", 192},
                                    {"network", {{"mode", "egress"}, {"expose_port", 8080}}},
                                    {"command", {"/bin/sh", "-c", script}}}
                                   .dump());
  ASSERT_EQ(started.status, 201) << started.body;
  const int64_t pid = started.json().value("pid", int64_t{0});
  json proc;
  for (int waited = 0; waited < 120000; waited += 200) {
    proc = daemon.CallAs(token, "GET", "/v1/procs/" + std::to_string(pid)).json();
    const std::string st = proc.value("status", "");
    if (st != "pending" && st != "placing" && st != "starting") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  ASSERT_EQ(proc.value("status", ""), "running") << proc.dump();
  ASSERT_EQ(proc["addresses"].size(), 1u) << proc.dump();
  const std::string ip = proc["addresses"][0];
  const std::string mac = Lower(proc.value("mac", ""));
  ASSERT_FALSE(mac.empty()) << proc.dump();

  // The configured lease time reached libvirt, and dnsmasq holds the lease.
  const std::string network = manager::OwnedNetworkName(daemon.data_dir(), tenant, net::NetworkMode::kEgress);
  EXPECT_NE(Shell("virsh -c qemu:///system net-dumpxml " + network)
                .find("<lease expiry='" + std::to_string(kLeaseMinutes) + "' unit='minutes'/>"),
            std::string::npos);
  const hv::DhcpLease first = LeaseOf(**hv, network, mac);
  ASSERT_EQ(first.ip, ip) << "no lease of " << mac << " on " << network;
  const int64_t lease_s = kLeaseMinutes * 60;
  ASSERT_GT(first.expiry_unix_s, std::time(nullptr)) << "the lease ran out already";
  ASSERT_LE(first.expiry_unix_s, std::time(nullptr) + lease_s + 5);

  // Renewal at T1 = expiry - lease/2; allow the loaded machine 40 s more.
  const int64_t t1 = first.expiry_unix_s - lease_s / 2;
  hv::DhcpLease now = first;
  while (now.expiry_unix_s <= first.expiry_unix_s && std::time(nullptr) < t1 + 40) {
    std::this_thread::sleep_for(std::chrono::seconds(2));
    now = LeaseOf(**hv, network, mac);
  }
  std::cout << "lease of " << mac << ": " << ip << " until +" << first.expiry_unix_s - (t1 - lease_s / 2)
            << " s; after T1: " << now.ip << " until +" << now.expiry_unix_s - (t1 - lease_s / 2) << " s\n";
  EXPECT_GT(now.expiry_unix_s, first.expiry_unix_s) << "the guest did not renew its lease by T1 + 40 s";
  EXPECT_EQ(now.ip, ip);

  // The guest's own account: the same address, and no second without one.
  HttpResult addr;
  for (int i = 0; i < 25; ++i) {
    addr = daemon.CallAs(token, "GET", "/svc/" + std::to_string(pid) + "/addr");
    if (addr.status == 200) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_EQ(addr.status, 200) << addr.body;
  EXPECT_EQ(addr.body, ip + "/" + std::to_string(first.prefix_length > 0 ? first.prefix_length : 24) + "\n");
  auto gaps = daemon.CallAs(token, "GET", "/svc/" + std::to_string(pid) + "/gaps");
  EXPECT_EQ(gaps.status, 404) << "seconds without an address:\n" << gaps.body;

  auto killed = daemon.CallAs(token, "POST", "/v1/procs/" + std::to_string(pid) + "/kill",
                              json{{"signal", "KILL"}}.dump());
  EXPECT_EQ(killed.status, 202) << killed.body;
  EXPECT_EQ(WaitForTeardown(daemon, proc.value("execution_id", "")), "");
  // The agent's and udhcpc's own lines, for the record.
  const std::string console =
      daemon.CallAs(token, "GET", "/v1/procs/" + std::to_string(pid) + "/logs").json().value("console", "");
  for (const char* key : {"berth-agent: network:", "udhcpc"}) {
    for (size_t at = console.find(key); at != std::string::npos; at = console.find(key, at + 1)) {
      std::cout << console.substr(at, console.find('\n', at) - at) << "\n";
    }
  }
}

}  // namespace
}  // namespace berth::testing
