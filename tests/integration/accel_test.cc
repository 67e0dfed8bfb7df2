// --accel auto really boots a probe guest with KVM and falls back to TCG when
// it cannot reach the agent. Whatever it picks must run guests, and the probe
// domain must be gone afterwards.
#include <gtest/gtest.h>

#include "tests/integration/support/harness.h"

namespace berth::testing {
namespace {

TEST(AccelTest, AutoPicksAWorkingAccelerationAndCleansUpItsProbe) {
  BerthdProcess daemon({"--accel", "auto"});
  ASSERT_TRUE(daemon.running()) << daemon.log();
  auto health = daemon.Get("/v1/health").json();
  std::string accel = health["accel"];
  EXPECT_TRUE(accel == "kvm" || accel == "tcg") << accel;
  EXPECT_EQ(Shell("virsh -q -c qemu:///system list --name | grep -c '^berth-probe-' || true"), "0\n");
  // This machine's paravirtual /dev/kvm cannot run stock guests (DESIGN.md).
  if (const char* want = std::getenv("BERTH_EXPECT_ACCEL")) {
    EXPECT_EQ(accel, want);
  }

  std::string image = daemon.UploadBusybox();
  ASSERT_EQ(daemon.CreateFunction("accel", image, {{"entrypoint", {"echo", "ok"}}}).status, 201);
  auto r = daemon.Post("/v1/functions/accel/invoke", "{}");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.json()["stdout"], "ok\n");
}

}  // namespace
}  // namespace berth::testing
