// Guest networking (issue 8) on real TCG guests through berthd's HTTP API:
//   - a `none` function sees no interface but lo;
//   - an `egress` function reaches an HTTP server that this test runs in a
//     network namespace of its own (veth to the host, 10.250.x.x; never any
//     outside address), because its allow-list names it;
//   - that guest cannot reach another tenant's guest, even with the other
//     tenant's subnet allow-listed, and a spoofed source address is dropped;
//   - a served instance answers through /svc/<pid>/..., its address is in
//     the record, in `ps` JSON and in the domain's berth metadata;
//   - the tenant networks and filters are gone once their last user is;
//   - two template clones of a networked function, restored at once, and a
//     live-forked child of a networked instance each get their own MAC
//     (domain XML, nwfilter MAC parameter, inside the guest) and lease;
//   - a networked warm pool serves calls that reach the server, and its
//     network recycles MACs (a few MACs and leases, not one per call).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <iostream>
#include <random>
#include <thread>

#include "common/ids.h"
#include "hypervisor/hypervisor.h"
#include "hypervisor/nwfilter_xml.h"
#include "manager/networks.h"
#include "net/ipv4.h"
#include "net/names.h"
#include "net/tenant_network.h"
#include "tests/integration/support/harness.h"

namespace berth::testing {
namespace {

using nlohmann::json;

// A network namespace with a veth pair to the host and a busybox httpd in
// it; everything it made is removed on destruction.
class TestNetns {
 public:
  TestNetns() {
    std::random_device rd;
    octet_ = 1 + static_cast<int>(rd() % 250);
    const std::string id = RandomHex(6);
    ns_ = "berth-nt-" + id;
    host_if_ = "bnt" + id + "h";
    ns_if_ = "bnt" + id + "n";
    host_ip_ = "10.250." + std::to_string(octet_) + ".1";
    server_ip_ = "10.250." + std::to_string(octet_) + ".2";
    dir_ = "/tmp/berth-nt-" + id;
    int code = 0;
    Shell("mkdir -p " + dir_ + "/www && echo hello-from-netns-" + id + " > " + dir_ + "/www/index.html && " +
              "ip netns add " + ns_ + " && ip link add " + host_if_ + " type veth peer name " + ns_if_ + " && " +
              "ip link set " + ns_if_ + " netns " + ns_ + " && ip addr add " + host_ip_ + "/30 dev " + host_if_ +
              " && ip link set " + host_if_ + " up && ip netns exec " + ns_ + " ip addr add " + server_ip_ +
              "/30 dev " + ns_if_ + " && ip netns exec " + ns_ + " ip link set " + ns_if_ + " up && ip netns exec " +
              ns_ + " ip link set lo up 2>&1",
          &code);
    ok_ = code == 0;
    if (!ok_) return;
    greeting_ = "hello-from-netns-" + id;
    // busybox httpd in the foreground, in the namespace; its pid is ours to end.
    server_pid_ = fork();
    if (server_pid_ == 0) {
      execlp("ip", "ip", "netns", "exec", ns_.c_str(), "busybox", "httpd", "-f", "-p", (server_ip_ + ":8080").c_str(),
             "-h", (dir_ + "/www").c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    for (int i = 0; i < 50; ++i) {
      if (Shell("curl -s -m 1 http://" + server_ip_ + ":8080/index.html 2>/dev/null").find(greeting_) !=
          std::string::npos) {
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ok_ = false;
  }
  ~TestNetns() {
    if (server_pid_ > 0) {
      kill(server_pid_, SIGTERM);
      Shell("sleep 0.2; ip netns pids " + ns_ + " 2>/dev/null | xargs -r kill 2>/dev/null");
      int status = 0;
      waitpid(server_pid_, &status, 0);
    }
    Shell("ip link del " + host_if_ + " 2>/dev/null; ip netns del " + ns_ + " 2>/dev/null; rm -rf " + dir_);
  }
  bool ok() const { return ok_; }
  const std::string& server_ip() const { return server_ip_; }
  const std::string& greeting() const { return greeting_; }

 private:
  bool ok_ = false;
  int octet_ = 0;
  pid_t server_pid_ = -1;
  std::string ns_, host_if_, ns_if_, host_ip_, server_ip_, dir_, greeting_;
};

class NetworkTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    daemon_ = new BerthdProcess();
    ASSERT_TRUE(daemon_->running()) << "berthd did not start:\n" << daemon_->log();
    // Own tenants, so networks of parallel test runs never mix.
    const std::string suffix = RandomHex(6);
    tenant_a_ = "neta" + suffix;
    tenant_b_ = "netb" + suffix;
    token_a_ = daemon_->CreateToken(tenant_a_);
    token_b_ = daemon_->CreateToken(tenant_b_);
    image_a_ = UploadRawBusybox(token_a_);
    image_b_ = UploadRawBusybox(token_b_);
  }
  static void TearDownTestSuite() {
    delete daemon_;
    daemon_ = nullptr;
  }

  // The busybox image as raw (independent of qcow2 handling elsewhere).
  static std::string UploadRawBusybox(const std::string& token) {
    static const std::string raw = [] {
      const std::string path = BusyboxImagePath() + ".raw";
      Shell("qemu-img convert -O raw " + BusyboxImagePath() + " " + path);
      return path;
    }();
    std::ifstream in(raw, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto r = daemon_->CallAs(token, "POST", "/v1/images?name=busybox-raw", bytes, "application/octet-stream");
    EXPECT_EQ(r.status, 201) << r.body;
    return r.json().value("id", "");
  }

  static json Invoke(const std::string& token, const std::string& fn, const json& body = json::object()) {
    auto r = daemon_->CallAs(token, "POST", "/v1/functions/" + fn + "/invoke", body.dump());
    EXPECT_TRUE(r.status == 200 || r.status == 502 || r.status == 503) << r.body;
    json j = r.json();
    return j.contains("execution") ? j["execution"] : j;
  }
  static json Proc(const std::string& token, int64_t pid) {
    return daemon_->CallAs(token, "GET", "/v1/procs/" + std::to_string(pid)).json();
  }
  static json WaitRunning(const std::string& token, int64_t pid, int timeout_ms = 120000) {
    json p;
    for (int waited = 0; waited < timeout_ms; waited += 200) {
      p = Proc(token, pid);
      std::string st = p.value("status", "");
      if (st != "pending" && st != "placing" && st != "starting") return p;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return p;
  }
  static bool NetworkExists(const std::string& name) {
    return Shell("virsh -c qemu:///system net-list --all --name").find(name) != std::string::npos;
  }

  static BerthdProcess* daemon_;
  static std::string tenant_a_, tenant_b_, token_a_, token_b_, image_a_, image_b_;
};

BerthdProcess* NetworkTest::daemon_ = nullptr;
std::string NetworkTest::tenant_a_, NetworkTest::tenant_b_, NetworkTest::token_a_, NetworkTest::token_b_,
    NetworkTest::image_a_, NetworkTest::image_b_;

TEST_F(NetworkTest, BadNetworkFieldsAreRejectedByName) {
  struct Case {
    json network;
    std::string field;
  };
  const std::vector<Case> cases = {
      {"bridge", "network"},
      {{{"mode", "egress"}, {"allow", {{{"cidr", "10.0.0.1/8"}}}}}, "network.allow[0].cidr"},
      {{{"mode", "egress"}, {"allow", {{{"cidr", "10.0.0.0/8"}, {"ports", "90-80"}}}}}, "network.allow[0].ports"},
      {{{"mode", "egress"}, {"allow", {{{"cidr", "10.0.0.0/8"}, {"protocol", "icmp"}}}}},
       "network.allow[0].protocol"},
      {{{"mode", "none"}, {"allow", {{{"cidr", "10.0.0.0/8"}}}}}, "network.allow"},
      {{{"mode", "egress"}, {"expose_port", 70000}}, "network.expose_port"},
      {{{"mode", "egress"}, {"colour", "blue"}}, "network.colour"},
  };
  for (const Case& c : cases) {
    auto r = daemon_->CreateFunctionAs(token_a_, "badnet", image_a_, {{"network", c.network}});
    EXPECT_EQ(r.status, 400) << c.network.dump() << " -> " << r.body;
    EXPECT_EQ(r.json()["error"].value("field", ""), c.field) << c.network.dump() << " -> " << r.body;
    auto p = daemon_->CallAs(token_a_, "POST", "/v1/procs", json{{"image", image_a_}, {"network", c.network}}.dump());
    EXPECT_EQ(p.status, 400) << c.network.dump() << " -> " << p.body;
    EXPECT_EQ(p.json()["error"].value("field", ""), c.field) << c.network.dump() << " -> " << p.body;
  }
}

TEST_F(NetworkTest, NoneFunctionSeesOnlyLoopback) {
  auto r = daemon_->CreateFunctionAs(token_a_, "nonet", image_a_,
                                     {{"entrypoint", {"/bin/sh", "-c", "ls /sys/class/net; ip -o link | wc -l"}},
                                      {"network", "none"},
                                      {"snapshot", false}});
  ASSERT_EQ(r.status, 201) << r.body;
  EXPECT_EQ(r.json().value("network", ""), "none");
  json ex = Invoke(token_a_, "nonet");
  ASSERT_EQ(ex.value("status", ""), "succeeded") << ex.dump();
  EXPECT_EQ(ex.value("stdout", ""), "lo\n1\n");
  EXPECT_TRUE(ex["addresses"].empty()) << ex.dump();
  EXPECT_EQ(ex["network"].value("mode", ""), "none");
}

TEST_F(NetworkTest, EgressServeIsolationSpoofingAndCleanup) {
  TestNetns netns;
  ASSERT_TRUE(netns.ok()) << "could not set up the test network namespace";

  // Tenant A: an instance serving HTTP on 8080, exposed to the gateway.
  auto started = daemon_->CallAs(
      token_a_, "POST", "/v1/procs",
      json{{"image", image_a_},
           {"name", "web"},
           {"memory_mib", 192},
           {"network", {{"mode", "egress"}, {"expose_port", 8080}}},
           {"command",
            {"/bin/sh", "-c",
             "mkdir -p /tmp/www && echo svc-ok-$BERTH_PID > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"}}}
          .dump());
  ASSERT_EQ(started.status, 201) << started.body;
  const int64_t web_pid = started.json().value("pid", int64_t{0});
  json web = WaitRunning(token_a_, web_pid);
  ASSERT_EQ(web.value("status", ""), "running") << web.dump();
  ASSERT_EQ(web["addresses"].size(), 1u) << web.dump();
  const std::string web_ip = web["addresses"][0];
  EXPECT_EQ(web_ip.rfind("10.240.", 0), 0u) << web_ip;
  EXPECT_EQ(web["network"].value("mode", ""), "egress");
  EXPECT_EQ(web["network"].value("expose_port", 0), 8080);
  // ps shows it too, and the domain's berth metadata carries it.
  auto ps = daemon_->CallAs(token_a_, "GET", "/v1/procs").json();
  bool in_ps = false;
  for (const auto& p : ps["procs"]) in_ps = in_ps || (p.value("pid", int64_t{0}) == web_pid && p["addresses"] == web["addresses"]);
  EXPECT_TRUE(in_ps) << ps.dump();
  const std::string md = Shell("virsh -c qemu:///system metadata " + web.value("domain", "") +
                               " https://berth.dev/xmlns/domain/1 2>&1");
  EXPECT_NE(md.find("<address>" + web_ip + "</address>"), std::string::npos) << md;
  EXPECT_NE(md.find("<network>egress</network>"), std::string::npos) << md;

  // Served through the gateway's /svc route (by pid and by name); another
  // tenant does not see it.
  HttpResult svc;
  for (int i = 0; i < 50; ++i) {  // httpd may take a moment after running
    svc = daemon_->CallAs(token_a_, "GET", "/svc/" + std::to_string(web_pid) + "/index.html");
    if (svc.status == 200) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_EQ(svc.status, 200) << svc.body;
  EXPECT_EQ(svc.body, "svc-ok-" + std::to_string(web_pid) + "\n");
  auto by_name = daemon_->CallAs(token_a_, "GET", "/svc/web/index.html");
  EXPECT_EQ(by_name.status, 200) << by_name.body;
  EXPECT_EQ(daemon_->CallAs(token_b_, "GET", "/svc/" + std::to_string(web_pid) + "/index.html").status, 404);

  // Tenant B: an egress function allowed to reach the test server and (to
  // show the tenant boundary holds even then) every tenant subnet on 8080.
  const std::string script =
      "probe() { if timeout 6 wget -q -O - \"$1\" > /tmp/out 2>/dev/null; then echo \"$2=ok:$(cat /tmp/out)\"; "
      "else echo \"$2=blocked\"; fi; }\n"
      "probe http://$SERVER:8080/index.html egress\n"
      "probe http://$OTHER:8080/index.html cross\n"
      "me=$(ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1); gw=$(ip route | awk '/default/ {print $3}')\n"
      "spoof=${me%.*}.250; [ \"$spoof\" = \"$me\" ] && spoof=${me%.*}.251\n"
      // Control: the same reconfiguration with its own address still works.
      "ip addr flush dev eth0 && ip addr add $me/24 dev eth0 && ip route add default via $gw\n"
      "probe http://$SERVER:8080/index.html readdressed\n"
      "ip addr flush dev eth0 && ip addr add $spoof/24 dev eth0 && ip route add default via $gw\n"
      "probe http://$SERVER:8080/index.html spoofed\n";
  auto fn = daemon_->CreateFunctionAs(
      token_b_, "fetch", image_b_,
      {{"entrypoint", {"/bin/sh", "-c", script}},
       {"timeout_ms", 60000},
       {"network",
        {{"mode", "egress"},
         {"allow",
          {{{"cidr", netns.server_ip()}, {"protocol", "tcp"}, {"ports", "8080"}},
           {{"cidr", "10.240.0.0/16"}, {"protocol", "tcp"}, {"ports", "8080"}}}}}}});
  ASSERT_EQ(fn.status, 201) << fn.body;
  EXPECT_EQ(fn.json().value("network", ""), "egress");
  EXPECT_EQ(fn.json()["network_allow"].size(), 2u) << fn.body;
  json ex = Invoke(token_b_, "fetch", {{"env", {{"SERVER", netns.server_ip()}, {"OTHER", web_ip}}}});
  ASSERT_EQ(ex.value("status", ""), "succeeded") << ex.dump();
  const std::string out = ex.value("stdout", "");
  EXPECT_NE(out.find("egress=ok:" + netns.greeting()), std::string::npos) << out;
  EXPECT_NE(out.find("cross=blocked"), std::string::npos) << out;
  EXPECT_NE(out.find("readdressed=ok:" + netns.greeting()), std::string::npos) << out;
  EXPECT_NE(out.find("spoofed=blocked"), std::string::npos) << out;
  std::cout << "guest probes:\n" << out;
  ASSERT_EQ(ex["addresses"].size(), 1u) << ex.dump();
  EXPECT_NE(ex["addresses"][0], web_ip);
  EXPECT_FALSE(ex.value("mac", "").empty());

  // Cleanup: B's network went with its only execution; A's with the instance.
  const std::string net_a = manager::OwnedNetworkName(daemon_->data_dir(), tenant_a_, net::NetworkMode::kEgress);
  const std::string net_b = manager::OwnedNetworkName(daemon_->data_dir(), tenant_b_, net::NetworkMode::kEgress);
  EXPECT_TRUE(NetworkExists(net_a));
  EXPECT_EQ(WaitForTeardown(*daemon_, ex.value("execution_id", "")), "");
  for (int i = 0; i < 40 && NetworkExists(net_b); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(250));
  EXPECT_FALSE(NetworkExists(net_b));
  auto killed = daemon_->CallAs(token_a_, "POST", "/v1/procs/" + std::to_string(web_pid) + "/kill",
                                json{{"signal", "KILL"}}.dump());
  EXPECT_EQ(killed.status, 202) << killed.body;
  EXPECT_EQ(WaitForTeardown(*daemon_, web.value("execution_id", "")), "");
  // The agent's own account of the lease (modules, interface, DHCP), for the record.
  const std::string console =
      daemon_->CallAs(token_a_, "GET", "/v1/procs/" + std::to_string(web_pid) + "/logs").json().value("console", "");
  for (size_t at = console.find("berth-agent: network:"); at != std::string::npos;
       at = console.find("berth-agent: network:", at + 1)) {
    std::cout << console.substr(at, console.find('\n', at) - at) << "\n";
  }
  for (int i = 0; i < 40 && NetworkExists(net_a); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(250));
  EXPECT_FALSE(NetworkExists(net_a));
  const std::string filters = Shell("virsh -c qemu:///system nwfilter-list");
  EXPECT_EQ(filters.find(manager::OwnedFilterPrefix(daemon_->data_dir())), std::string::npos)
      << "berth filters left: " << filters;
}

// Templates of networked functions (issue 8, item 5): the template is built
// with a NIC on the tenant network; two clones restored from it at once get
// MACs of their own (in their domain XML and nwfilter parameters, and set by
// the agent inside the guest), each its own lease, and both reach the test
// server. A mode change replaces the template.
TEST_F(NetworkTest, TemplateClonesGetTheirOwnMacAndLease) {
  TestNetns netns;
  ASSERT_TRUE(netns.ok()) << "could not set up the test network namespace";
  auto template_records = [] {
    std::vector<std::string> out;
    std::istringstream lines(Shell("virsh -q -c qemu:///system vol-list " + daemon_->pool()));
    for (std::string line; std::getline(lines, line);) {
      std::istringstream in(line);
      std::string name;
      in >> name;
      if (name.size() == 4 + 64 + 5 && name.rfind("tpl-", 0) == 0 && name.ends_with(".json")) out.push_back(name);
    }
    return out;
  };
  const std::string script =
      "mac=$(cat /sys/class/net/eth0/address); ip=$(ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)\n"
      // Tries: two guests under TCG at once can be slow to answer.
      "r=blocked; n=0; while [ $n -lt 3 ] && [ \"$r\" = blocked ]; do n=$((n+1)); "
      "if timeout 6 wget -q -O - http://$SERVER:8080/index.html > /tmp/out 2>/dev/null; then r=ok:$(cat /tmp/out); "
      "fi; done\n"
      "echo \"mac=$mac ip=$ip egress=$r\"; echo \"tries=$n\"; sleep ${HOLD:-0}\n";
  auto fn = daemon_->CreateFunctionAs(
      token_a_, "tplnet", image_a_,
      {{"entrypoint", {"/bin/sh", "-c", script}},
       {"timeout_ms", 60000},
       {"snapshot", true},
       {"network",
        {{"mode", "egress"}, {"allow", {{{"cidr", netns.server_ip()}, {"protocol", "tcp"}, {"ports", "8080"}}}}}}});
  ASSERT_EQ(fn.status, 201) << fn.body;
  // Built ahead of demand, on deploy.
  const auto before = template_records();
  std::vector<std::string> built;
  for (int i = 0; i < 720 && built.empty(); ++i) {
    for (const auto& t : template_records()) {
      if (std::find(before.begin(), before.end(), t) == before.end()) built.push_back(t);
    }
    if (built.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  ASSERT_EQ(built.size(), 1u) << "no template built:\n" << daemon_->log();

  // Two clones at once; while they hold, read their domain XML.
  json results[2];
  std::thread calls[2];
  for (int i = 0; i < 2; ++i) {
    calls[i] = std::thread([&, i] {
      results[i] = Invoke(token_a_, "tplnet", {{"env", {{"SERVER", netns.server_ip()}, {"HOLD", "8"}}}});
    });
  }
  std::map<std::string, std::string> xml_by_domain;
  std::string last_ps;
  for (int i = 0; i < 600 && xml_by_domain.size() < 2; ++i) {
    last_ps = daemon_->CallAs(token_a_, "GET", "/v1/procs").body;
    const json ps = json::parse(last_ps, nullptr, false);
    if (ps.is_object() && ps.contains("procs")) {
      for (const auto& p : ps["procs"]) {
        if (p.value("name", "") != "tplnet" || !p.contains("addresses") || p["addresses"].empty()) continue;
        const std::string domain = p.value("domain", "");
        if (xml_by_domain.count(domain)) continue;
        const std::string xml = Shell("virsh -c qemu:///system dumpxml " + domain + " 2>&1");
        if (xml.find("<domain") != std::string::npos) xml_by_domain[domain] = xml;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  for (auto& t : calls) t.join();

  std::set<std::string> macs, ips;
  for (const json& ex : results) {
    ASSERT_EQ(ex.value("status", ""), "succeeded") << ex.dump() << "\n" << daemon_->log();
    EXPECT_EQ(ex["timings"].value("start", ""), "template") << ex.dump();
    const std::string mac = ex.value("mac", "");
    ASSERT_EQ(ex["addresses"].size(), 1u) << ex.dump();
    const std::string ip = ex["addresses"][0];
    const std::string out = ex.value("stdout", "");
    std::cout << "clone " << ex.value("domain", "") << ": " << out;
    // Inside the guest: the MAC the host chose, the leased address, the server reached.
    EXPECT_NE(out.find("mac=" + mac + " ip=" + ip + " egress=ok:" + netns.greeting()), std::string::npos)
        << out << " (record: mac " << mac << ", ip " << ip << ")";
    // In the domain XML: the same MAC on the NIC and in the filter's parameters.
    auto xml = xml_by_domain.find(ex.value("domain", ""));
    ASSERT_NE(xml, xml_by_domain.end()) << "domain XML of " << ex.value("domain", "") << " not seen while it ran; "
                                         << "last ps: " << last_ps;
    EXPECT_NE(xml->second.find("<mac address='" + mac + "'/>"), std::string::npos) << xml->second;
    EXPECT_NE(xml->second.find("<parameter name='MAC' value='" + mac + "'/>"), std::string::npos) << xml->second;
    EXPECT_NE(xml->second.find("<berth:address>" + ip + "</berth:address>"), std::string::npos) << xml->second;
    macs.insert(mac);
    ips.insert(ip);
  }
  EXPECT_EQ(macs.size(), 2u) << "clones share a MAC";
  EXPECT_EQ(ips.size(), 2u) << "clones share an address";

  // A mode change: the old template goes (the new one is built for isolated).
  auto updated = daemon_->CallAs(token_a_, "PUT", "/v1/functions/tplnet",
                                 json{{"image", image_a_},
                                      {"entrypoint", {"/bin/sh", "-c", script}},
                                      {"snapshot", true},
                                      {"network", "isolated"}}
                                     .dump());
  ASSERT_EQ(updated.status, 200) << updated.body;
  bool gone = false;
  for (int i = 0; i < 120 && !gone; ++i) {
    const auto now = template_records();
    gone = std::find(now.begin(), now.end(), built[0]) == now.end();
    if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  EXPECT_TRUE(gone) << "the egress template is still there after the change to isolated";
  EXPECT_EQ(daemon_->CallAs(token_a_, "DELETE", "/v1/functions/tplnet").status, 200);
}

// A live fork of a networked process (issue 8): the child gets a NIC of its
// own (fresh MAC, set by the agent) and its own lease, not the parent's.
TEST_F(NetworkTest, LiveForkedChildGetsItsOwnMacAndLease) {
  TestNetns netns;
  ASSERT_TRUE(netns.ok()) << "could not set up the test network namespace";
  const std::string cmd =
      "while [ ! -f /run/berth/forked ]; do sleep 0.2; done; "
      "mac=$(cat /sys/class/net/eth0/address); ip=$(ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1); "
      "r=blocked; n=0; while [ $n -lt 3 ] && [ \"$r\" = blocked ]; do n=$((n+1)); "
      "if timeout 6 wget -q -O - http://" + netns.server_ip() + ":8080/index.html > /tmp/out 2>/dev/null; "
      "then r=ok:$(cat /tmp/out); fi; done; echo \"mac=$mac ip=$ip egress=$r\"";
  auto started = daemon_->CallAs(
      token_a_, "POST", "/v1/procs",
      json{{"image", image_a_},
           {"name", "netparent"},
           {"memory_mib", 192},
           {"network",
            {{"mode", "egress"}, {"allow", {{{"cidr", netns.server_ip()}, {"protocol", "tcp"}, {"ports", "8080"}}}}}},
           {"command", {"/bin/sh", "-c", cmd}}}
          .dump());
  ASSERT_EQ(started.status, 201) << started.body;
  const int64_t parent_pid = started.json().value("pid", int64_t{0});
  json parent = WaitRunning(token_a_, parent_pid);
  ASSERT_EQ(parent.value("status", ""), "running") << parent.dump();
  ASSERT_EQ(parent["addresses"].size(), 1u) << parent.dump();
  auto f = daemon_->CallAs(token_a_, "POST", "/v1/procs/" + std::to_string(parent_pid) + "/fork",
                           json{{"live", true}, {"name", "netkid"}}.dump());
  ASSERT_EQ(f.status, 201) << f.body;
  const int64_t kid_pid = f.json().value("pid", int64_t{0});
  json kid;
  for (int i = 0; i < 900; ++i) {
    kid = Proc(token_a_, kid_pid);
    const std::string st = kid.value("status", "");
    if (st == "succeeded" || st == "failed" || st == "error" || st == "killed" || st == "timed_out") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  ASSERT_EQ(kid.value("status", ""), "succeeded") << kid.dump() << "\n" << daemon_->log();
  const auto logs = daemon_->CallAs(token_a_, "GET", "/v1/procs/" + std::to_string(kid_pid) + "/logs").json();
  const std::string out = logs.value("stdout", "");
  std::cout << "parent mac " << parent.value("mac", "") << " ip " << parent["addresses"][0] << "; child: " << out;
  ASSERT_EQ(kid["addresses"].size(), 1u) << kid.dump();
  EXPECT_NE(kid.value("mac", ""), parent.value("mac", ""));
  EXPECT_NE(kid["addresses"][0], parent["addresses"][0]);
  EXPECT_NE(out.find("mac=" + kid.value("mac", std::string()) + " ip=" + kid["addresses"][0].get<std::string>() +
                     " egress=ok:" + netns.greeting()),
            std::string::npos)
      << out << "\n" << kid.dump();
  daemon_->CallAs(token_a_, "POST", "/v1/procs/" + std::to_string(parent_pid) + "/kill", json{{"signal", "KILL"}}.dump());
  EXPECT_EQ(WaitForTeardown(*daemon_, parent.value("execution_id", "")), "");
  EXPECT_EQ(WaitForTeardown(*daemon_, kid.value("execution_id", "")), "");
}

// What a crashed berthd left (a tenant network and a filter nobody uses) is
// gone after the next start; another berthd's (another owner) is untouched.
// A networked function's warm pool (issue 8): pooled VMs get their NIC and
// lease when they are made; every call is served by a pooled VM and reaches
// the test server. Since every pooled VM (and every call) is a new VM, the
// tenant network recycles the MACs of destroyed VMs: sequential calls use
// the MACs of the peak number of VMs at once (the running one and its
// refill), and dnsmasq holds that many leases, not one per call.
TEST_F(NetworkTest, WarmPoolServesNetworkedCallsWithRecycledMacs) {
  TestNetns netns;
  ASSERT_TRUE(netns.ok()) << "could not set up the test network namespace";
  const std::string tenant = "netp" + RandomHex(6);  // a network of its own
  const std::string token = daemon_->CreateToken(tenant);
  const std::string image = UploadRawBusybox(token);
  const std::string network = manager::OwnedNetworkName(daemon_->data_dir(), tenant, net::NetworkMode::kEgress);
  const std::string script =
      "mac=$(cat /sys/class/net/eth0/address); ip=$(ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)\n"
      "r=blocked; n=0; while [ $n -lt 3 ] && [ \"$r\" = blocked ]; do n=$((n+1)); "
      "if timeout 6 wget -q -O - http://$SERVER:8080/index.html > /tmp/out 2>/dev/null; then r=ok:$(cat /tmp/out); "
      "fi; done\n"
      "echo \"mac=$mac ip=$ip egress=$r\"\n";
  auto fn = daemon_->CreateFunctionAs(
      token, "poolnet", image,
      {{"entrypoint", {"/bin/sh", "-c", script}},
       {"timeout_ms", 60000},
       {"snapshot", false},
       {"min_warm", 1},
       {"max_warm", 1},
       {"idle_timeout_ms", 300000},
       {"network",
        {{"mode", "egress"}, {"allow", {{{"cidr", netns.server_ip()}, {"protocol", "tcp"}, {"ports", "8080"}}}}}}});
  ASSERT_EQ(fn.status, 201) << fn.body;
  auto pool_size = [&] {
    const std::string body = daemon_->CallAs(token, "GET", "/metrics").body;
    const std::string key = "berth_pool_vms{tenant=\"" + tenant + "\",function=\"poolnet\"} ";
    const size_t at = body.find(key);
    return at == std::string::npos ? -1 : std::atoi(body.c_str() + at + key.size());
  };
  auto wait_pooled = [&] {
    for (int i = 0; i < 900; ++i) {
      if (pool_size() >= 1) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return false;
  };
  auto leased_macs = [&] {
    std::set<std::string> out;
    std::istringstream lines(Shell("virsh -q -c qemu:///system net-dhcp-leases " + network + " 2>&1"));
    for (std::string line; std::getline(lines, line);) {
      std::istringstream in(line);
      std::string date, time, mac;
      if (in >> date >> time >> mac && mac.rfind("52:54:00:", 0) == 0) out.insert(mac);
    }
    return out;
  };

  constexpr int kCalls = 3;
  std::set<std::string> macs;
  std::map<std::string, std::string> ip_of_mac;
  for (int i = 0; i < kCalls; ++i) {
    ASSERT_TRUE(wait_pooled()) << "the pool did not fill (call " << i << "):\n" << daemon_->log();
    json ex = Invoke(token, "poolnet", {{"env", {{"SERVER", netns.server_ip()}}}});
    ASSERT_EQ(ex.value("status", ""), "succeeded") << ex.dump() << "\n" << daemon_->log();
    EXPECT_EQ(ex["timings"].value("start", ""), "warm") << ex.dump();
    const std::string mac = ex.value("mac", "");
    ASSERT_EQ(ex["addresses"].size(), 1u) << ex.dump();
    const std::string ip = ex["addresses"][0];
    const std::string out = ex.value("stdout", "");
    std::cout << "call " << i << " on " << ex.value("domain", "") << ": " << out;
    EXPECT_NE(out.find("mac=" + mac + " ip=" + ip + " egress=ok:" + netns.greeting()), std::string::npos)
        << out << " (record: mac " << mac << ", ip " << ip << ")";
    // dnsmasq gives a recycled MAC its address back.
    if (auto seen = ip_of_mac.find(mac); seen != ip_of_mac.end()) {
      EXPECT_EQ(seen->second, ip) << mac;
    }
    ip_of_mac[mac] = ip;
    macs.insert(mac);
  }
  const std::set<std::string> leases = leased_macs();
  // The explicit lease time (net::kTenantLeaseMinutes) reached libvirt.
  EXPECT_NE(Shell("virsh -c qemu:///system net-dumpxml " + network + " 2>&1")
                .find("<lease expiry='" + std::to_string(net::kTenantLeaseMinutes) + "' unit='minutes'/>"),
            std::string::npos);
  std::cout << kCalls << " warm calls used " << macs.size() << " MACs; the network holds " << leases.size()
            << " leases\n";
  // Without recycling: kCalls MACs, kCalls + 1 leases (the refill after the last call).
  EXPECT_LE(macs.size(), 2u) << "sequential calls each took a new MAC";
  EXPECT_LE(leases.size(), 3u) << "leases grow with the calls";
  EXPECT_GE(leases.size(), 1u) << "no leases read from virsh net-dhcp-leases " << network;
  for (const std::string& mac : macs) EXPECT_EQ(leases.count(mac), 1u) << mac << " has no lease";

  // Deleting the function empties its pool; the network goes with the last VM.
  EXPECT_EQ(daemon_->CallAs(token, "DELETE", "/v1/functions/poolnet").status, 200);
  for (int i = 0; i < 120 && NetworkExists(network); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(250));
  EXPECT_FALSE(NetworkExists(network)) << "the pool's network is left after the function is gone";
}

TEST_F(NetworkTest, UnusedNetworksAreSweptAtStart) {
  auto hv = hv::ConnectLibvirt("qemu:///system");
  ASSERT_TRUE(hv.ok()) << hv.status().ToString();
  const std::string id = RandomHex(6);
  const std::string tenant = "netc" + id;
  auto make = [&](const std::string& owner, const char* cidr) {
    auto subnet = net::ParseCidr("subnet", cidr);
    auto network = net::MakeTenantNetworkSpec(owner + tenant, net::NetworkMode::kIsolated, *subnet);
    EXPECT_TRUE(network.ok()) << network.status().ToString();
    network->name = manager::OwnedNetworkName(owner, tenant, net::NetworkMode::kIsolated);
    EXPECT_TRUE((*hv)->EnsureNetwork(*network).ok());
    net::NetworkPolicy policy;
    policy.mode = net::NetworkMode::kIsolated;
    auto filter = net::MakeFunctionFilterSpec(tenant, owner, policy, *subnet);
    EXPECT_TRUE(filter.ok()) << filter.status().ToString();
    filter->name = manager::OwnedFilterPrefix(owner) + id + "leftover";
    EXPECT_TRUE((*hv)->EnsureNwFilter(*hv::WriteNwFilterXml(*filter)).ok());
    return std::make_pair(network->name, filter->name);
  };
  const auto [mine_net, mine_filter] = make(daemon_->data_dir(), "10.240.250.0/24");
  const auto [other_net, other_filter] = make("/someone/else/" + id, "10.240.251.0/24");
  ASSERT_TRUE(NetworkExists(mine_net));

  daemon_->Kill();  // a crash: nothing cleans up
  ASSERT_TRUE(daemon_->Start()) << daemon_->log();
  EXPECT_FALSE(NetworkExists(mine_net)) << daemon_->log();
  const std::string filters = Shell("virsh -c qemu:///system nwfilter-list");
  EXPECT_EQ(filters.find(mine_filter), std::string::npos);
  EXPECT_TRUE(NetworkExists(other_net)) << "another owner's network was removed";
  EXPECT_NE(filters.find(other_filter), std::string::npos) << "another owner's filter was removed";
  for (const auto& f : {mine_filter, other_filter}) (void)(*hv)->DeleteNwFilter(f);
  for (const auto& n : {mine_net, other_net}) (void)(*hv)->DestroyNetwork(n);
}

}  // namespace
}  // namespace berth::testing
