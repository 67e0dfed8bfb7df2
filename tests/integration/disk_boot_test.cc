// Long-lived instances from full OS images: an image with its own bootloader
// and kernel boots from disk (no berth runtime, no agent); its user-data
// reaches it as a cloud-init NoCloud seed (an ISO labelled cidata, built by
// berthd and attached as the second disk). The image is built by the test
// (tests/integration/disk_boot/make-bootable-image.sh): its init prints the
// user-data to the console, which berthd keeps.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/integration/support/harness.h"

namespace berth::testing {
namespace {

using nlohmann::json;

class DiskBootTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    daemon_ = new BerthdProcess({"--kill-grace-ms", "3000"});
    ASSERT_TRUE(daemon_->running()) << daemon_->log();
    char tmpl[] = "/tmp/berth-diskboot-XXXXXX";
    dir_ = mkdtemp(tmpl);
    int code = 0;
    std::string out = Shell(std::string(BERTH_SOURCE_DIR) + "/tests/integration/disk_boot/make-bootable-image.sh " +
                                RuntimeDir() + " " + dir_ + "/os.qcow2 2>&1",
                            &code);
    ASSERT_EQ(code, 0) << out;
    std::ifstream in(dir_ + "/os.qcow2", std::ios::binary);
    std::stringstream bytes;
    bytes << in.rdbuf();
    auto r = daemon_->Call("POST", "/v1/images?name=tiny-os", bytes.str(), "application/octet-stream");
    ASSERT_EQ(r.status, 201) << r.body;
  }
  static void TearDownTestSuite() {
    delete daemon_;
    daemon_ = nullptr;
    Shell("rm -rf " + dir_);
  }
  static json Wait(int64_t pid, int64_t timeout_ms = 120000) {
    auto r = daemon_->Get("/v1/procs/" + std::to_string(pid) + "/wait?timeout_ms=" + std::to_string(timeout_ms));
    EXPECT_EQ(r.status, 200) << r.body;
    return r.json();
  }

  static BerthdProcess* daemon_;
  static std::string dir_;
};

BerthdProcess* DiskBootTest::daemon_ = nullptr;
std::string DiskBootTest::dir_;

TEST_F(DiskBootTest, UserDataReachesTheGuestThroughTheCloudInitSeed) {
  auto r = daemon_->Post("/v1/procs", json{{"name", "os1"},
                                           {"image", "tiny-os"},
                                           {"boot", "disk"},
                                           {"userdata", "#cloud-config\n#berth-test hello-from-userdata-42\n"}}
                                          .dump());
  ASSERT_EQ(r.status, 201) << r.body;
  json p = r.json();
  EXPECT_EQ(p["boot"], "disk");
  json w = Wait(p["pid"]);
  EXPECT_EQ(w["status"], "succeeded") << "the guest powered itself off: " << w.dump();
  auto logs = daemon_->Get("/v1/procs/" + std::to_string(p["pid"].get<int64_t>()) + "/logs").json();
  const std::string console = logs.value("console", "");
  EXPECT_NE(console.find("disk-boot: own init running"), std::string::npos) << console;
  EXPECT_NE(console.find("disk-boot: user-data line: #berth-test hello-from-userdata-42"), std::string::npos)
      << console;
  EXPECT_EQ(WaitForTeardown(*daemon_, w["execution_id"]), "");
  // The seed volume went with it.
  for (const auto& v : PoolVolumes(daemon_->pool())) EXPECT_EQ(v.rfind("seed-", 0), std::string::npos) << v;
}

TEST_F(DiskBootTest, AnInstanceThatStaysUpShowsItsConsoleLiveAndIsKilled) {
  auto r = daemon_->Post(
      "/v1/procs", json{{"name", "os2"}, {"image", "tiny-os"}, {"boot", "disk"}, {"userdata", "#berth-test stay\n"}}.dump());
  ASSERT_EQ(r.status, 201) << r.body;
  const int64_t pid = r.json()["pid"];
  std::string console;
  for (int i = 0; i < 400 && console.find("staying up") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    console = daemon_->Get("/v1/procs/" + std::to_string(pid) + "/logs").json().value("console", "");
  }
  ASSERT_NE(console.find("disk-boot: staying up"), std::string::npos) << console;
  json live = daemon_->Get("/v1/procs/" + std::to_string(pid)).json();
  EXPECT_EQ(live["status"], "running");
  EXPECT_TRUE(DomainRunning(live["domain"]));
  // TERM: an ACPI power-button press this init ignores, then destroy after the grace period.
  ASSERT_EQ(daemon_->Post("/v1/procs/" + std::to_string(pid) + "/kill", "{}").status, 202);
  json w = Wait(pid, 60000);
  EXPECT_EQ(w["status"], "killed");
  EXPECT_EQ(WaitForTeardown(*daemon_, w["execution_id"]), "");
  // The console was kept with the record.
  auto logs = daemon_->Get("/v1/procs/" + std::to_string(pid) + "/logs").json();
  EXPECT_FALSE(logs.value("live", true));
  EXPECT_NE(logs.value("console", "").find("disk-boot: staying up"), std::string::npos);
}

TEST_F(DiskBootTest, DiskBootTakesNoCommand) {
  auto r = daemon_->Post("/v1/procs", json{{"image", "tiny-os"}, {"boot", "disk"}, {"command", {"/bin/true"}}}.dump());
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_EQ(r.json()["error"]["field"], "command");
}

}  // namespace
}  // namespace berth::testing
