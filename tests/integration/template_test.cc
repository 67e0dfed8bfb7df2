// Snapshot templates and clone restores through manager::TemplateCache, with
// real TCG guests on qemu:///system. One template (a tiny busybox function)
// is built once and shared by the cases; the cases that change or break it
// run last and rebuild it.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <future>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/env.h"
#include "common/ids.h"
#include "common/sha256.h"
#include "hypervisor/agent_client.h"
#include "hypervisor/hypervisor.h"
#include "hypervisor/save_image.h"
#include "images/image_format.h"
#include "manager/node.h"
#include "manager/runtime.h"
#include "manager/templates.h"
#include "tests/integration/support/harness.h"

namespace berth::testing {
namespace {

using Clock = std::chrono::steady_clock;
using manager::CloneRequest;
using manager::CloneStart;
using manager::TemplateCache;
using manager::TemplateInfo;

int64_t MsSince(Clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
}

bool Contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

bool AnyStartsWith(const std::vector<std::string>& v, const std::string& prefix) {
  for (const auto& s : v) {
    if (s.rfind(prefix, 0) == 0) return true;
  }
  return false;
}

// Everything the cases share: one node on two fresh pools, the busybox image
// and the function's first template.
struct Shared {
  std::string id, dir, pool, log_pool, pool_path, log_path;
  manager::RuntimeArtifacts runtime;
  std::unique_ptr<manager::Node> node;
  std::unique_ptr<TemplateCache> cache;
  images::ImageRecord image;
  hv::VolumeInfo base;
  manager::FunctionRecord fn;
  TemplateInfo tpl;
  std::vector<std::string> domains;  // to destroy at the end
  int clones = 0;
};
Shared* g = nullptr;

manager::TemplateOptions Options() {
  manager::TemplateOptions o;
  o.restore_timeout_ms = 30'000;
  o.hello_timeout_ms = 20'000;
  return o;
}

class TemplateTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    g = new Shared;
    g->id = RandomHex(8);
    g->dir = "/var/lib/berth/it-tpl-" + g->id;
    g->pool = "it-tpl-" + g->id;
    g->log_pool = "it-tpl-" + g->id + "-logs";
    auto rt = manager::LoadRuntime(Env::Default(), RuntimeDir());
    ASSERT_TRUE(rt.ok()) << rt.status().ToString();
    g->runtime = *rt;
    auto hv = hv::ConnectLibvirt("qemu:///system");
    ASSERT_TRUE(hv.ok()) << hv.status().ToString();
    manager::NodeConfig cfg;
    cfg.name = "tpl-test";
    cfg.accel = "tcg";
    cfg.pool = g->pool;
    cfg.pool_dir = g->dir + "/pool";
    cfg.log_pool = g->log_pool;
    cfg.log_dir = g->dir + "/logs";
    g->node = std::make_unique<manager::Node>(Env::Default(), cfg, std::move(*hv));
    Status prepared = g->node->Prepare(g->runtime);
    ASSERT_TRUE(prepared.ok()) << prepared.ToString();
    g->pool_path = *g->node->hypervisor().GetPoolPath(g->pool);
    g->log_path = *g->node->hypervisor().GetPoolPath(g->log_pool);
    EXPECT_EQ(g->pool_path, cfg.pool_dir);
    EXPECT_FALSE(g->node->info().cpu_model.empty());
    std::cout << "node cpu model: " << g->node->info().cpu_model << "\n";

    const std::string path = BusyboxImagePath();
    auto info = images::InspectImage(Env::Default(), path);
    ASSERT_TRUE(info.ok()) << info.status().ToString();
    g->image.id = *Sha256::HexOfFile(path);
    g->image.format = info->format;
    g->image.size_bytes = info->size_bytes;
    g->image.virtual_size_bytes = info->virtual_size_bytes;
    g->image.path = path;
    auto base = g->node->EnsureImage(g->image);
    ASSERT_TRUE(base.ok()) << base.status().ToString();
    g->base = *base;

    g->fn.tenant = "default";
    g->fn.spec.name = "tplfn";
    g->fn.spec.image = g->image.id;
    g->fn.spec.entrypoint = {"/bin/true"};
    g->fn.spec.memory_mib = 192;
    g->fn.version = 1;
    g->cache = std::make_unique<TemplateCache>(Env::Default(), *g->node, g->runtime, Options());

    // Two concurrent Ensure calls share one build.
    auto t0 = Clock::now();
    auto other = std::async(std::launch::async, [] { return g->cache->Ensure(g->fn, g->image); });
    auto mine = g->cache->Ensure(g->fn, g->image);
    auto theirs = other.get();
    ASSERT_TRUE(mine.ok()) << mine.status().ToString();
    ASSERT_TRUE(theirs.ok()) << theirs.status().ToString();
    EXPECT_EQ(mine->built_unix_ms, theirs->built_unix_ms);
    g->tpl = *mine;
    std::cout << "template build (boot -> hello -> save): " << g->tpl.build_ms << " ms (Ensure " << MsSince(t0)
              << " ms), save image " << (g->tpl.save_bytes >> 20) << " MiB\n";
    g->domains.push_back(manager::TemplateDomainName(g->tpl.key));
  }

  static void TearDownTestSuite() {
    if (!g) return;
    if (g->node) {
      for (const auto& d : g->domains) (void)g->node->hypervisor().DestroyDomain(d);
    }
    g->cache.reset();
    g->node.reset();
    for (const auto& p : {g->pool, g->log_pool}) {
      Shell("virsh -q -c qemu:///system pool-destroy " + p + " >/dev/null 2>&1; virsh -q -c qemu:///system "
            "pool-undefine " + p + " >/dev/null 2>&1");
    }
    Shell("rm -rf " + g->dir);
    delete g;
    g = nullptr;
  }

  void SetUp() override {
    if (!g || !g->cache || g->tpl.key.empty()) GTEST_SKIP() << "no template (set-up failed)";
  }

  // A clone request with its own overlay (backed by the function's image, as
  // the executor makes it) and console log.
  static CloneRequest Request(const std::string& tag) {
    CloneRequest req;
    req.domain = "berth-tplt-" + g->id + "-" + tag + std::to_string(g->clones++);
    auto ovl = g->node->hypervisor().CreateOverlay(g->pool, "ovl-" + req.domain + ".qcow2", g->base, 0);
    EXPECT_TRUE(ovl.ok()) << ovl.status().ToString();
    req.overlay_path = ovl.ok() ? ovl->path : "";
    req.title = "template test clone " + tag;
    req.metadata.execution_id = req.domain.substr(6);
    req.metadata.function = g->fn.spec.name;
    req.metadata.tenant = g->fn.tenant;
    req.metadata.image = g->image.id;
    req.console_log_path = g->log_path + "/" + req.domain + ".console.log";
    g->domains.push_back(req.domain);
    return req;
  }

  static Result<std::string> Run(hv::AgentClient& agent, const std::string& script,
                                 std::map<std::string, std::string> env = {}) {
    agent::ExecMsg msg;
    msg.argv = {"sh", "-c", script};
    msg.env = std::move(env);
    BERTH_ASSIGN_OR_RETURN(auto out, agent.Exec(msg, "", 1 << 16, 60'000));
    if (out.exit.exit_code != 0 || !out.exit.error_code.empty()) {
      return Status::Internal("exit " + std::to_string(out.exit.exit_code) + " " + out.exit.error_code + ": " +
                              out.stderr_data);
    }
    return out.stdout_data;
  }

  static void PrintTiming(const std::string& what, const CloneStart& c, int64_t total_ms) {
    std::cout << what << ": restore -> hello " << total_ms << " ms (copy+header " << c.copy_ms << ", restore "
              << c.restore_ms << ", hello " << c.hello_ms << ") vs template build " << g->tpl.build_ms << " ms\n";
  }
};

// (a) Two clones started at the same time both answer hello and have their
// own random streams; the env var passed in Exec reaches each.
TEST_F(TemplateTest, ConcurrentClonesAnswerHelloWithTheirOwnRandomness) {
  CloneRequest r0 = Request("a"), r1 = Request("a");
  auto start = [](const CloneRequest& r) {
    auto t0 = Clock::now();
    auto c = g->cache->StartClone(g->tpl.key, r);
    return std::make_pair(std::move(c), MsSince(t0));
  };
  auto f0 = std::async(std::launch::async, start, r0);
  auto f1 = std::async(std::launch::async, start, r1);
  auto [c0, ms0] = f0.get();
  auto [c1, ms1] = f1.get();
  ASSERT_TRUE(c0.ok()) << c0.status().ToString();
  ASSERT_TRUE(c1.ok()) << c1.status().ToString();
  PrintTiming("clone 0 (concurrent)", *c0, ms0);
  PrintTiming("clone 1 (concurrent)", *c1, ms1);
  EXPECT_TRUE(c0->hello.entropy_mixed);
  EXPECT_TRUE(c1->hello.entropy_mixed);
  EXPECT_TRUE(DomainRunning(r0.domain));
  EXPECT_TRUE(DomainRunning(r1.domain));

  const std::string script = "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; echo $BERTH_EXECUTION_ID";
  auto o0 = Run(*c0->agent, script, {{"BERTH_EXECUTION_ID", r0.metadata.execution_id}});
  auto o1 = Run(*c1->agent, script, {{"BERTH_EXECUTION_ID", r1.metadata.execution_id}});
  ASSERT_TRUE(o0.ok()) << o0.status().ToString();
  ASSERT_TRUE(o1.ok()) << o1.status().ToString();
  std::string rand0 = o0->substr(0, o0->find('\n')), rand1 = o1->substr(0, o1->find('\n'));
  EXPECT_EQ(rand0.size(), 32u) << *o0;
  EXPECT_NE(rand0, rand1);
  EXPECT_EQ(o0->substr(o0->find('\n') + 1), r0.metadata.execution_id + "\n");
  EXPECT_EQ(o1->substr(o1->find('\n') + 1), r1.metadata.execution_id + "\n");

  // Each is its own domain: name, UUID, overlay, console log, metadata.
  auto x0 = g->node->hypervisor().GetDomainXml(r0.domain);
  auto x1 = g->node->hypervisor().GetDomainXml(r1.domain);
  ASSERT_TRUE(x0.ok() && x1.ok());
  EXPECT_NE(x0->find(r0.overlay_path), std::string::npos);
  EXPECT_NE(x0->find(r0.console_log_path), std::string::npos);
  EXPECT_NE(x1->find(r1.overlay_path), std::string::npos);
  EXPECT_NE(x0->substr(x0->find("<uuid>"), 44), x1->substr(x1->find("<uuid>"), 44));
  // A clone that had to copy the save image kept the copy as a spare, not as
  // a clone volume of its own.
  auto vols = PoolVolumes(g->pool);
  EXPECT_FALSE(AnyStartsWith(vols, "tplclone-"));
  for (const auto& r : {r0, r1}) (void)g->node->hypervisor().DestroyDomain(r.domain);
}

// (a2) Clones that start while another restores copy the save image once
// and keep the copies as spares (at most spare_images): a second burst of as
// many concurrent clones restores from the template's file and the spares
// without copying.
TEST_F(TemplateTest, ConcurrentClonesKeepTheirCopiesAsSparesForTheNextBurst) {
  const int n = 3;
  const std::string spare_prefix = "tpl-" + g->tpl.key + ".spare";
  auto count_spares = [&] {
    int count = 0;
    for (const auto& v : PoolVolumes(g->pool)) count += v.rfind(spare_prefix, 0) == 0 ? 1 : 0;
    return count;
  };
  auto burst = [&](const std::string& tag) {
    std::vector<CloneRequest> reqs;
    for (int i = 0; i < n; ++i) reqs.push_back(Request(tag));
    std::vector<std::future<Result<CloneStart>>> futures;
    for (const auto& r : reqs) {
      futures.push_back(std::async(std::launch::async, [r] { return g->cache->StartClone(g->tpl.key, r); }));
    }
    int copies = 0;
    for (int i = 0; i < n; ++i) {
      auto c = futures[i].get();
      EXPECT_TRUE(c.ok()) << c.status().ToString();
      if (!c.ok()) continue;
      std::cout << tag << " clone " << i << ": " << (c->in_place ? "no copy" : "copied") << ", spare " << c->spare
                << ", copy+header " << c->copy_ms << " ms, restore " << c->restore_ms << " ms\n";
      EXPECT_LE(c->spare, Options().spare_images);
      if (!c->in_place) ++copies;
      // A clone restored from a spare runs like any other.
      auto out = Run(*c->agent, "echo $((6 * 7))");
      EXPECT_TRUE(out.ok() && *out == "42\n") << (out.ok() ? *out : out.status().ToString());
    }
    for (const auto& r : reqs) (void)g->node->hypervisor().DestroyDomain(r.domain);
    return copies;
  };
  const int spares_before = count_spares();
  const int copies1 = burst("s");
  const int spares1 = count_spares();
  std::cout << "first burst: " << copies1 << " copies, spares " << spares_before << " -> " << spares1 << "\n";
  EXPECT_GE(spares1, spares_before);
  EXPECT_LE(spares1, Options().spare_images);
  EXPECT_GE(spares1, 1) << "three clones started at once, and none kept a copy";
  // Every copy became a spare (no clone copies of their own were left).
  EXPECT_FALSE(AnyStartsWith(PoolVolumes(g->pool), "tplclone-"));

  const int copies2 = burst("t");
  std::cout << "second burst: " << copies2 << " copies, spares " << count_spares() << "\n";
  // The template's own file and the free spares serve the burst; only
  // clones beyond them copy (none once the first burst made n - 1 spares).
  EXPECT_LE(copies2, std::max(0, n - 1 - spares1));
  EXPECT_LE(count_spares(), Options().spare_images);
}

// (b) A clone's writes stay in its own overlay.
TEST_F(TemplateTest, CloneWritesStayInItsOwnOverlay) {
  CloneRequest r0 = Request("b"), r1 = Request("b");
  auto t0 = Clock::now();
  auto c0 = g->cache->StartClone(g->tpl.key, r0);
  int64_t ms = MsSince(t0);
  ASSERT_TRUE(c0.ok()) << c0.status().ToString();
  PrintTiming("clone (alone)", *c0, ms);
  auto w = Run(*c0->agent, "echo from-clone-0 > /marker && sync && cat /marker");
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ(*w, "from-clone-0\n");

  // This clone's XML outgrows libvirt's padding (a very long title): its
  // save image is rewritten whole, with the stream moved behind the header.
  r1.title = "long title " + std::string(80 * 1024, 'x');
  t0 = Clock::now();
  auto c1 = g->cache->StartClone(g->tpl.key, r1);
  ms = MsSince(t0);
  ASSERT_TRUE(c1.ok()) << c1.status().ToString();
  PrintTiming("clone with an XML beyond the padding", *c1, ms);
  EXPECT_NE(g->node->hypervisor().GetDomainXml(r1.domain)->find(r1.title), std::string::npos);
  auto r = Run(*c1->agent, "cat /marker 2>/dev/null || echo absent");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, "absent\n");
  // The function's base image on the node is untouched (same content hash).
  EXPECT_EQ(*Sha256::HexOfFile(g->base.path), g->image.id);
  for (const auto& req : {r0, r1}) (void)g->node->hypervisor().DestroyDomain(req.domain);
}

// (e) A template recorded for another accel (or CPU) is refused, also by a
// cache that finds it in the pool after a restart.
TEST_F(TemplateTest, MismatchedAccelOrCpuIsRefused) {
  auto& hv = g->node->hypervisor();
  const std::string record_volume = manager::TemplateRecordVolumeName(g->tpl.key);
  auto original = hv.DownloadVolumeRange(g->pool, record_volume, 0, 1 << 20);
  ASSERT_TRUE(original.ok()) << original.status().ToString();

  // A fresh cache (as after a berthd restart) finds the template in the pool.
  {
    TemplateCache restarted(Env::Default(), *g->node, g->runtime, Options());
    auto keys = restarted.ListKeys();
    ASSERT_TRUE(keys.ok());
    EXPECT_TRUE(Contains(*keys, g->tpl.key));
    auto again = restarted.Ensure(g->fn, g->image);
    ASSERT_TRUE(again.ok()) << again.status().ToString();
    EXPECT_EQ(again->built_unix_ms, g->tpl.built_unix_ms);  // found, not rebuilt
  }

  for (const char* field : {"accel", "cpu_model"}) {
    auto record = nlohmann::json::parse(*original);
    record["inputs"][field] = std::string(field) == "accel" ? "kvm" : "AuthenticAMD Zen 9 (x86_64)";
    ASSERT_TRUE(hv.WriteVolume(g->pool, record_volume, record.dump()).ok());
    TemplateCache restarted(Env::Default(), *g->node, g->runtime, Options());
    auto found = restarted.Lookup(g->tpl.key);
    ASSERT_TRUE(found.ok()) << found.status().ToString();
    CloneRequest req = Request("e");
    auto clone = restarted.StartClone(g->tpl.key, req);
    ASSERT_FALSE(clone.ok());
    EXPECT_EQ(clone.status().code(), Code::kFailedPrecondition) << clone.status().ToString();
    std::cout << "refused: " << clone.status().message() << "\n";
    EXPECT_FALSE(DomainRunning(req.domain));
    (void)hv.DeleteVolume(g->pool, "ovl-" + req.domain + ".qcow2");
  }
  ASSERT_TRUE(hv.WriteVolume(g->pool, record_volume, *original).ok());
  EXPECT_FALSE(AnyStartsWith(PoolVolumes(g->pool), "tplclone-"));
}

// (c) A new function version has a new key; Prune removes the old template.
TEST_F(TemplateTest, NewVersionGetsNewKeyAndPruneRemovesTheOld) {
  manager::FunctionRecord v2 = g->fn;
  v2.version = 2;
  const std::string new_key = g->cache->KeyFor(v2, g->image);
  EXPECT_NE(new_key, g->tpl.key);
  EXPECT_EQ(g->cache->KeyFor(g->fn, g->image), g->tpl.key);  // stable
  auto built = g->cache->Ensure(v2, g->image);
  ASSERT_TRUE(built.ok()) << built.status().ToString();
  g->domains.push_back(manager::TemplateDomainName(new_key));
  std::cout << "template build of v2: " << built->build_ms << " ms\n";
  auto vols = PoolVolumes(g->pool);
  EXPECT_TRUE(Contains(vols, manager::TemplateSaveVolumeName(g->tpl.key)));
  EXPECT_TRUE(Contains(vols, manager::TemplateSaveVolumeName(new_key)));
  // Nothing of the builds is left: no build overlay, no build domain.
  EXPECT_FALSE(AnyStartsWith(vols, "tpl-" + new_key.substr(0, 16) + ".qcow2"));
  EXPECT_FALSE(DomainRunning(manager::TemplateDomainName(new_key)));

  auto removed = g->cache->Prune({new_key});
  ASSERT_TRUE(removed.ok()) << removed.status().ToString();
  EXPECT_EQ(*removed, std::vector<std::string>{g->tpl.key});
  vols = PoolVolumes(g->pool);
  EXPECT_FALSE(Contains(vols, manager::TemplateSaveVolumeName(g->tpl.key)));
  EXPECT_FALSE(Contains(vols, manager::TemplateRecordVolumeName(g->tpl.key)));
  EXPECT_FALSE(AnyStartsWith(vols, "tpl-" + g->tpl.key + ".spare")) << "the old template's spares stay";
  EXPECT_TRUE(Contains(vols, manager::TemplateSaveVolumeName(new_key)));
  EXPECT_EQ(g->cache->Lookup(g->tpl.key).status().code(), Code::kNotFound);
  g->fn = v2;
  g->tpl = *built;
}

// (d) A damaged save image: StartClone fails within its bounds, leaves no
// domain and no clone volume, invalidates the template; Ensure rebuilds.
TEST_F(TemplateTest, CorruptOrTruncatedSaveImageFailsCleanlyAndIsRebuilt) {
  auto& hv = g->node->hypervisor();
  auto check_failure = [&](const std::string& what, TemplateCache& cache) {
    CloneRequest req = Request("d");
    auto t0 = Clock::now();
    auto clone = cache.StartClone(g->tpl.key, req);
    int64_t ms = MsSince(t0);
    EXPECT_FALSE(clone.ok());
    std::cout << what << ": StartClone failed in " << ms << " ms: " << clone.status().ToString() << "\n";
    EXPECT_LT(ms, 30'000 + 20'000 + 15'000);  // the restore + hello bounds (not a performance figure)
    EXPECT_FALSE(DomainRunning(req.domain));
    EXPECT_EQ(hv.GetDomainState(req.domain).status().code(), Code::kNotFound);
    auto vols = PoolVolumes(g->pool);
    EXPECT_FALSE(AnyStartsWith(vols, "tplclone-"));
    EXPECT_FALSE(Contains(vols, manager::TemplateSaveVolumeName(g->tpl.key))) << "template not invalidated";
    EXPECT_FALSE(AnyStartsWith(vols, "tpl-" + g->tpl.key + ".spare")) << "spares of an invalidated template stay";
    EXPECT_FALSE(Contains(vols, manager::TemplateRecordVolumeName(g->tpl.key)));
    EXPECT_EQ(cache.Lookup(g->tpl.key).status().code(), Code::kNotFound);
    (void)hv.DeleteVolume(g->pool, "ovl-" + req.domain + ".qcow2");
  };

  // 1. Garbage over the start of QEMU's migration stream.
  auto head = hv.DownloadVolumeRange(g->pool, g->tpl.save_volume, 0, 1 << 20);
  ASSERT_TRUE(head.ok()) << head.status().ToString();
  auto header = hv::ParseSaveImageHeader(*head);
  ASSERT_TRUE(header.ok()) << header.status().ToString();
  EXPECT_EQ(head->substr(header->stream_offset(), 4), "QEVM");
  ASSERT_TRUE(hv.UploadVolumeRange(g->pool, g->tpl.save_volume, header->stream_offset(), std::string(4096, '\xa5')).ok());
  check_failure("corrupt stream", *g->cache);

  auto rebuilt = g->cache->Ensure(g->fn, g->image);
  ASSERT_TRUE(rebuilt.ok()) << rebuilt.status().ToString();
  EXPECT_GT(rebuilt->built_unix_ms, g->tpl.built_unix_ms);
  EXPECT_EQ(rebuilt->key, g->tpl.key);
  std::cout << "template rebuild: " << rebuilt->build_ms << " ms\n";
  g->tpl = *rebuilt;

  // 2. The save image cut short (rewritten through the pool with its first MiB only).
  head = hv.DownloadVolumeRange(g->pool, g->tpl.save_volume, 0, 1 << 20);
  ASSERT_TRUE(head.ok());
  ASSERT_TRUE(hv.WriteVolume(g->pool, g->tpl.save_volume, *head).ok());
  check_failure("truncated save image", *g->cache);

  // And the rebuilt template clones fine.
  rebuilt = g->cache->Ensure(g->fn, g->image);
  ASSERT_TRUE(rebuilt.ok()) << rebuilt.status().ToString();
  g->tpl = *rebuilt;
  CloneRequest req = Request("d");
  auto t0 = Clock::now();
  auto clone = g->cache->StartClone(g->tpl.key, req);
  int64_t ms = MsSince(t0);
  ASSERT_TRUE(clone.ok()) << clone.status().ToString();
  PrintTiming("clone of the rebuilt template", *clone, ms);
  auto out = Run(*clone->agent, "echo ok");
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(*out, "ok\n");
  (void)hv.DestroyDomain(req.domain);

  // 3. Truncated, and found so by a cache that reads it from the pool (as after a restart).
  head = hv.DownloadVolumeRange(g->pool, g->tpl.save_volume, 0, 1 << 20);
  ASSERT_TRUE(head.ok());
  ASSERT_TRUE(hv.WriteVolume(g->pool, g->tpl.save_volume, *head).ok());
  TemplateCache restarted(Env::Default(), *g->node, g->runtime, Options());
  EXPECT_EQ(restarted.Lookup(g->tpl.key).status().code(), Code::kFailedPrecondition);
  check_failure("truncated save image, found after a restart", restarted);
  (void)g->cache->Invalidate(g->tpl.key);
}

// A build that cannot run fails with its error, and the key is not poisoned.
TEST_F(TemplateTest, FailedBuildReturnsErrorAndIsRetried) {
  manager::FunctionRecord huge = g->fn;
  huge.spec.memory_mib = 1 << 22;  // 4 TiB: no node has it
  auto r = g->cache->Ensure(huge, g->image);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kResourceExhausted) << r.status().ToString();
  auto again = g->cache->Ensure(huge, g->image);
  EXPECT_EQ(again.status().code(), Code::kResourceExhausted);
  auto keys = g->cache->ListKeys();
  ASSERT_TRUE(keys.ok());
  EXPECT_FALSE(Contains(*keys, g->cache->KeyFor(huge, g->image)));
}

}  // namespace
}  // namespace berth::testing
