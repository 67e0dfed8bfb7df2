// Any root filesystem works: a debootstrap'd Debian 12 with python3, built
// into an image by berth's own builder, uploaded over HTTP and run as a
// function that reads JSON on stdin and answers on stdout.
#include <gtest/gtest.h>

#include <cstdlib>

#include "common/env.h"
#include "images/rootfs_builder.h"
#include "tests/integration/support/harness.h"

namespace berth::testing {
namespace {

using nlohmann::json;

TEST(DebianRootfsTest, Python3FunctionRunsInADebianImage) {
  const char* rootfs = std::getenv("BERTH_DEBIAN_ROOTFS");
  std::string dir = rootfs ? rootfs : std::string(BERTH_BINARY_DIR) + "/rootfs-debian";
  ASSERT_EQ(Shell("test -f " + dir + "/.complete && echo yes"), "yes\n")
      << "no Debian rootfs at " << dir << "; build it with scripts/build-debian-rootfs.sh " << dir;

  char tmpl[] = "/tmp/berth-debian-XXXXXX";
  std::string tmp = mkdtemp(tmpl);
  images::RootfsBuildOptions opts;
  opts.source_dir = dir;
  opts.output_path = tmp + "/debian.qcow2";
  ASSERT_TRUE(images::BuildRootfsImage(Env::Default(), opts).ok());

  BerthdProcess daemon;
  ASSERT_TRUE(daemon.running()) << daemon.log();
  std::string bytes = Shell("cat " + opts.output_path);
  auto up = daemon.Call("POST", "/v1/images?name=debian", bytes, "application/octet-stream");
  Shell("rm -rf " + tmp);
  ASSERT_EQ(up.status, 201) << up.body;
  EXPECT_EQ(up.json()["format"], "qcow2");

  const char* program =
      "import json, sys, platform\n"
      "req = json.load(sys.stdin)\n"
      "print(json.dumps({'sum': sum(req['numbers']), 'python': platform.python_version()}))\n";
  auto fn = daemon.CreateFunction("py-sum", up.json()["id"],
                                  {{"entrypoint", {"python3", "-c", program}}, {"memory_mib", 384}});
  ASSERT_EQ(fn.status, 201) << fn.body;
  auto r = daemon.Post("/v1/functions/py-sum/invoke", json{{"stdin", R"({"numbers": [1, 2, 39]})"}}.dump());
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.json()["status"], "succeeded") << r.body;
  json out = json::parse(r.json()["stdout"].get<std::string>(), nullptr, false);
  ASSERT_TRUE(out.is_object()) << r.body;
  EXPECT_EQ(out["sum"], 42);
  EXPECT_EQ(out["python"].get<std::string>().substr(0, 2), "3.");
}

}  // namespace
}  // namespace berth::testing
