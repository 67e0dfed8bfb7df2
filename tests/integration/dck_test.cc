// Seed 001's DCK shell functions, unchanged (tests/integration/dck/
// seed001_session.sh), against a real berthd: dck-ls, dck-exec (exec and
// fork), dck-ps and dck-ps-ppid, with real TCG guests behind them. The
// functions call http://localhost:5000, so berthd runs in a private network
// namespace where that address is its own.
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "common/ids.h"
#include "tests/integration/support/harness.h"

namespace berth::testing {
namespace {

using nlohmann::json;

class DckTest : public ::testing::Test {
 protected:
  void SetUp() override {
    id_ = RandomHex(6);
    ns_ = "bdck-" + id_;
    dir_ = "/var/lib/berth/it/dck-" + id_;
    Shell("mkdir -p " + dir_ + "/home " + dir_ + "/pool " + dir_ + "/logs");
    int code = 0;
    Shell("ip netns add " + ns_ + " && ip netns exec " + ns_ + " ip link set lo up", &code);
    ASSERT_EQ(code, 0) << "cannot create network namespace " << ns_;
    const std::string berthd = std::string(BERTH_BINARY_DIR) + "/daemon/berthd";
    Shell("ip netns exec " + ns_ + " " + berthd + " --data-dir " + dir_ + "/data --runtime-dir " + RuntimeDir() +
          " --listen 127.0.0.1 --port 5000 --accel tcg --pool berth-dck-" + id_ + " --pool-dir " + dir_ +
          "/pool --log-pool berth-dck-logs-" + id_ + " --log-dir " + dir_ + "/logs > " + dir_ +
          "/berthd.log 2>&1 & echo $! > " + dir_ + "/berthd.pid");
    for (int i = 0; i < 120; ++i) {
      Shell(In("curl -sf -o /dev/null http://localhost:5000/v1/health"), &code);
      if (code == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    ASSERT_EQ(code, 0) << "berthd did not come up:\n" << Shell("cat " + dir_ + "/berthd.log");
    token_ = Shell("tr -d '\\n' < " + dir_ + "/data/admin.token");
    ASSERT_FALSE(token_.empty());
    // The token reaches the seed's curl calls through ~/.curlrc.
    std::ofstream(dir_ + "/home/.curlrc") << "header = \"Authorization: Bearer " << token_ << "\"\n";
    std::string up = Shell(In("curl -s -H 'Authorization: Bearer " + token_ + "' --data-binary @" + BusyboxImagePath() +
                              " 'http://localhost:5000/v1/images?name=busybox'"));
    json img = json::parse(up, nullptr, false);
    ASSERT_TRUE(img.is_object() && img.contains("id")) << up << "\n" << Shell("tail -5 " + dir_ + "/berthd.log");
    image_ = img["id"];
  }

  void TearDown() override {
    // Kill the whole tree (the instances), then berthd, then its pools.
    Shell(In("curl -s -o /dev/null -H 'Authorization: Bearer " + token_ +
             "' -d '{\"signal\":\"KILL\",\"tree\":true}' http://localhost:5000/v1/procs/2/kill"));
    for (int pid = 2; pid <= 4; ++pid) {
      Shell(In("curl -s -o /dev/null -H 'Authorization: Bearer " + token_ + "' 'http://localhost:5000/v1/procs/" +
               std::to_string(pid) + "/wait?timeout_ms=30000'"));
    }
    Shell("kill $(cat " + dir_ + "/berthd.pid) 2>/dev/null; sleep 3");
    for (const std::string& pool : {"berth-dck-" + id_, "berth-dck-logs-" + id_}) {
      Shell("virsh -q -c qemu:///system pool-destroy " + pool + " >/dev/null 2>&1; virsh -q -c qemu:///system "
            "pool-undefine " + pool + " >/dev/null 2>&1");
    }
    Shell("ip netns delete " + ns_ + " 2>/dev/null; rm -rf " + dir_);
  }

  std::string In(const std::string& cmd) { return "ip netns exec " + ns_ + " " + cmd; }

  std::string id_, ns_, dir_, token_, image_;
};

// Splits the session's output into "== name" sections, each parsed as JSON.
std::map<std::string, json> Sections(const std::string& out) {
  std::map<std::string, json> sections;
  std::istringstream in(out);
  std::string line, name, body;
  auto flush = [&] {
    if (!name.empty()) sections[name] = json::parse(body, nullptr, false);
    body.clear();
  };
  while (std::getline(in, line)) {
    if (line.rfind("== ", 0) == 0) {
      flush();
      name = line.substr(3);
    } else {
      body += line + "\n";
    }
  }
  flush();
  return sections;
}

TEST_F(DckTest, SeedShellFunctionsWorkAsWritten) {
  int code = 0;
  std::string script = std::string(BERTH_SOURCE_DIR) + "/tests/integration/dck/seed001_session.sh";
  std::string out = Shell(In("env HOME=" + dir_ + "/home bash " + script + " " + image_ + " 2>/dev/null"), &code);
  ASSERT_EQ(code, 0) << out;
  auto s = Sections(out);
  const std::string base = "http://localhost:5000/dck/api/v1.0";

  // dck-ls
  ASSERT_EQ(s["ls"]["images"].size(), 1u) << out;
  EXPECT_EQ(s["ls"]["images"][0]["id"], image_);
  EXPECT_EQ(s["ls"]["images"][0]["name"], "busybox");
  EXPECT_EQ(s["ls"]["images"][0]["url"], base + "/image/" + image_);
  json image = s["ls-image"]["image"];
  EXPECT_EQ(image["id"], image_);
  EXPECT_EQ(image["status"], "active");
  EXPECT_EQ(image["disk_format"], "qcow2");
  EXPECT_EQ(image["container_format"], "bare");
  EXPECT_EQ(image["deleted"], "False");
  EXPECT_TRUE(image["size"].is_string());

  // dck-ps before anything runs: the two roots, exactly as the seed shows.
  EXPECT_EQ(s["ps-empty"], json::parse(R"({"instances": [
      {"url": "http://localhost:5000/dck/api/v1.0/proc/0", "ppid": 0, "pid": 0, "name": "kernel"},
      {"url": "http://localhost:5000/dck/api/v1.0/proc/1", "ppid": 0, "pid": 1, "name": "init"}]})"));

  // dck-exec 1 exec ...; dck-exec 2 fork ... (twice): pids 2, 3, 4 as in the seed.
  EXPECT_EQ(s["exec"], json({{"instance",
                              {{"userdata", "#User-data for the initialization"},
                               {"ppid", 1},
                               {"pid", 2},
                               {"name", "webserver01"},
                               {"imageid", image_}}}}))
      << out;
  EXPECT_EQ(s["fork1"]["instance"]["pid"], 3);
  EXPECT_EQ(s["fork1"]["instance"]["ppid"], 2);
  EXPECT_EQ(s["fork1"]["instance"]["name"], "webserver02");
  EXPECT_EQ(s["fork1"]["instance"]["userdata"], "#User-data for the initialization") << "a fork keeps the user-data";
  EXPECT_EQ(s["fork1"]["instance"]["imageid"], image_) << "a fork keeps the image";
  EXPECT_EQ(s["fork2"]["instance"]["pid"], 4);

  // dck-ps: roots then the three instances, with urls.
  json ps = s["ps"]["instances"];
  ASSERT_EQ(ps.size(), 5u) << out;
  for (int pid = 0; pid < 5; ++pid) {
    EXPECT_EQ(ps[pid]["pid"], pid);
    EXPECT_EQ(ps[pid]["url"], base + "/proc/" + std::to_string(pid));
  }
  EXPECT_EQ(ps[2]["name"], "webserver01");
  EXPECT_EQ(ps[3]["ppid"], 2);
  EXPECT_EQ(ps[4]["ppid"], 2);
  // dck-ps 2
  EXPECT_EQ(s["ps-2"]["instance"]["name"], "webserver01");
  EXPECT_EQ(s["ps-2"]["instance"]["url"], base + "/proc/2");
  // dck-ps-ppid 2
  json kids = s["ps-ppid-2"]["instances"];
  ASSERT_EQ(kids.size(), 2u) << out;
  EXPECT_EQ(kids[0]["name"], "webserver02");
  EXPECT_EQ(kids[1]["name"], "webserver03");

  // They are real VMs: each becomes a running domain.
  for (int pid = 2; pid <= 4; ++pid) {
    json p;
    for (int i = 0; i < 600; ++i) {
      p = json::parse(Shell(In("curl -s -H 'Authorization: Bearer " + token_ + "' http://localhost:5000/v1/procs/" +
                               std::to_string(pid))),
                      nullptr, false);
      if (p.value("status", "") == "running") break;
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    EXPECT_EQ(p.value("status", ""), "running") << p.dump();
    EXPECT_TRUE(DomainRunning(p.value("domain", "?"))) << p.dump();
  }
}

}  // namespace
}  // namespace berth::testing
