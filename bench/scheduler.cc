// berth-bench-scheduler: placement throughput, latency and quality of
// sched::Scheduler (power-of-K-choices sampling) next to sched::NaiveScheduler
// (a full scan of every node per placement), measured in one run.
//
// The cluster: --nodes simulated nodes with mixed capacities (16/32/64 vCPUs,
// 64/128/256 GiB, 1-4 TB disk, 4x vCPU overcommit), zones and a few ssd/gpu
// labels, kvm or tcg, two cpu models, cached images and templates; about 2 %
// cordoned, 1 % down, 0.5 % draining. Both schedulers get the same nodes and,
// before anything is timed, the same claims: the cluster is pre-filled to
// about 78 % of its memory by a neutral random-fit (ClaimOn), so both start
// from one state and the naive side does not need 200k slow placements to
// reach steady state.
//
// The operations: one seeded stream of placements of mixed sizes (512 MiB to
// 64 GiB, 1-16 vCPUs, some with label selectors, accel, image and template
// hints) and releases of random live claims, chosen so the cluster's memory
// stays between 70 % and 85 % allocated. The scheduler runs --ops operations,
// the naive one --naive-ops (a full scan at 10k nodes is slow), interleaved
// in --rounds slices (A B A B ...) so drifts of the machine hit both alike;
// rates are per placement, so runs of different lengths compare.
//
// Quality (the standard deviation of per-node memory utilisation over up
// nodes, and the failed placements) is printed for both at the same point of
// that run, after --naive-ops operations. The RESULT lines take it from a
// second run from an empty cluster of --quality-nodes nodes, where both
// schedulers do the same --quality-ops operations, enough to replace every
// claim several times.
//
// Last lines, one per figure:
//   RESULT <name> value=<v> unit=<u> baseline=<b> ratio=<v/b> goal=<g>
#include <time.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "scheduler/fit.h"
#include "scheduler/naive_scheduler.h"
#include "scheduler/scheduler.h"

namespace {

using berth::sched::NaiveScheduler;
using berth::sched::NodeReport;
using berth::sched::NodeResources;
using berth::sched::NodeState;
using berth::sched::PlacementRequest;
using berth::sched::Policy;
using berth::sched::Resources;
using berth::sched::Scheduler;
using berth::sched::Strategy;
using Clock = std::chrono::steady_clock;

int64_t ThreadCpuNs() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

constexpr uint64_t kGiB = 1024;  // MiB
constexpr uint64_t kDiskGiB = 1ULL << 30;
constexpr int kImages = 100;
constexpr int kTemplates = 20;
constexpr int kZones = 4;

struct Options {
  int nodes = 10000;
  int64_t ops = 1000000;
  int64_t naive_ops = 50000;
  uint64_t seed = 1;
  uint32_t sample_k = 8;
  std::string policy = "spread";
  int rounds = 10;
  double low = 0.70;   // below: always place
  double high = 0.85;  // above: always release
  double prefill = 0.78;
  int quality_nodes = 1000;
  int64_t quality_ops = 200000;
};

std::vector<NodeResources> BuildCluster(int count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto pick = [&](uint64_t n) { return rng() % n; };
  std::vector<NodeResources> nodes;
  nodes.reserve(static_cast<size_t>(count));
  for (int i = 0; i < count; ++i) {
    NodeResources n;
    n.name = "node-" + std::to_string(i);
    n.total_vcpus = 16u << pick(3);
    n.total_memory_mib = (64 * kGiB) << pick(3);
    n.total_disk_bytes = (1 + pick(4)) * 1000 * kDiskGiB;
    n.reserved_vcpus = 1;
    n.reserved_memory_mib = 2 * kGiB;
    n.reserved_disk_bytes = 50 * kDiskGiB;
    n.cpu_overcommit = 4.0;
    n.memory_overcommit = pick(10) == 0 ? 1.2 : 1.0;
    n.accel = pick(10) == 0 ? "tcg" : "kvm";
    n.cpu_model = pick(3) == 0 ? "Skylake-Server" : "EPYC-Milan";
    n.labels["zone"] = "z" + std::to_string(pick(kZones));
    if (pick(10) == 0) n.labels["ssd"] = "true";
    if (pick(20) == 0) n.labels["gpu"] = "true";
    for (uint64_t k = pick(4); k > 0; --k) n.cached_images.insert("img-" + std::to_string(pick(kImages)));
    for (uint64_t k = pick(3); k > 0; --k) n.template_keys.insert("tmpl-" + std::to_string(pick(kTemplates)));
    uint64_t s = pick(1000);
    n.state = s < 20 ? NodeState::kCordoned : s < 30 ? NodeState::kDown : s < 35 ? NodeState::kDraining : NodeState::kUp;
    nodes.push_back(std::move(n));
  }
  return nodes;
}

// The request stream: the same seed gives the same sequence of requests.
class RequestStream {
 public:
  explicit RequestStream(uint64_t seed) : rng_(seed) {}

  PlacementRequest Next(const std::string& claim_id) {
    struct Shape {
      int percent;
      uint64_t vcpus, memory_mib;
    };
    static constexpr Shape kShapes[] = {{20, 1, 512},       {20, 1, kGiB},      {20, 2, 2 * kGiB},
                                        {15, 2, 4 * kGiB},  {12, 4, 8 * kGiB},  {8, 8, 16 * kGiB},
                                        {4, 16, 32 * kGiB}, {1, 16, 64 * kGiB}};
    PlacementRequest r;
    r.claim_id = claim_id;
    int roll = static_cast<int>(rng_() % 100);
    for (const Shape& s : kShapes) {
      if (roll < s.percent) {
        r.vcpus = s.vcpus;
        r.memory_mib = s.memory_mib;
        break;
      }
      roll -= s.percent;
    }
    r.disk_bytes = (1 + rng_() % 10) * 5 * kDiskGiB;
    uint64_t sel = rng_() % 100;
    if (sel < 20) r.label_selector["zone"] = "z" + std::to_string(rng_() % kZones);
    else if (sel < 23) r.label_selector["ssd"] = "true";
    else if (sel < 24) r.label_selector["gpu"] = "true";
    if (rng_() % 10 < 3) r.accel = "kvm";
    if (rng_() % 20 == 0) r.cpu_model = "EPYC-Milan";
    if (rng_() % 10 < 6) r.image_digest = "img-" + std::to_string(rng_() % kImages);
    if (rng_() % 10 < 2) r.template_key = "tmpl-" + std::to_string(rng_() % kTemplates);
    return r;
  }

 private:
  std::mt19937_64 rng_;
};

struct LiveClaim {
  std::string id;
  uint64_t memory_mib;
};

// The untimed starting state: claims spread by random-fit, identical for both.
struct Prefill {
  std::vector<std::pair<std::string, PlacementRequest>> claims;  // node, request
};

Prefill BuildPrefill(const std::vector<NodeResources>& nodes, double target, uint64_t seed) {
  std::vector<berth::sched::NodeLoad> loads;
  uint64_t capacity = 0;
  for (const auto& n : nodes) {
    if (n.state != NodeState::kUp) continue;
    berth::sched::NodeLoad l;
    l.spec = n;
    l.capacity = berth::sched::CapacityOf(n);
    capacity += l.capacity.memory_mib;
    loads.push_back(std::move(l));
  }
  Prefill p;
  RequestStream stream(seed ^ 0x5eedULL);
  std::mt19937_64 rng(seed ^ 0xfeedULL);
  uint64_t used = 0;
  for (int64_t i = 0; used < static_cast<uint64_t>(target * static_cast<double>(capacity)); ++i) {
    PlacementRequest r = stream.Next("p" + std::to_string(i));
    for (int attempt = 0; attempt < 64; ++attempt) {
      auto& l = loads[rng() % loads.size()];
      if (CheckFit(l, r) != berth::sched::Rejection::kFits) continue;
      berth::sched::AddTo(l.allocated, r.resources());
      used += r.memory_mib;
      p.claims.emplace_back(l.spec.name, std::move(r));
      break;
    }
  }
  return p;
}

struct Quality {
  int64_t ops = 0;
  int64_t placements = 0;
  int64_t failed = 0;
  double mean_util = 0;    // mean per-node memory utilisation over up nodes
  double stddev_util = 0;  // its standard deviation
  double cluster_util = 0; // allocated / capacity, memory, up nodes
};

template <typename S>
Quality Measure(const S& s, int64_t ops, int64_t placements, int64_t failed) {
  Quality q{ops, placements, failed};
  double sum = 0, sum2 = 0, alloc = 0, cap = 0;
  int n = 0;
  for (const NodeReport& r : s.Reports()) {
    if (r.state != NodeState::kUp || r.capacity.memory_mib == 0) continue;
    double u = static_cast<double>(r.allocated.memory_mib) / static_cast<double>(r.capacity.memory_mib);
    sum += u;
    sum2 += u * u;
    alloc += static_cast<double>(r.allocated.memory_mib);
    cap += static_cast<double>(r.capacity.memory_mib);
    ++n;
  }
  if (n > 0) {
    q.mean_util = sum / n;
    q.stddev_util = std::sqrt(std::max(0.0, sum2 / n - q.mean_util * q.mean_util));
    q.cluster_util = alloc / cap;
  }
  return q;
}

// One scheduler working through its share of the operation stream.
template <typename S>
class Runner {
 public:
  Runner(const Options& opts, const std::vector<NodeResources>& nodes, const Prefill& prefill, Policy policy,
         int64_t quality_at)
      : opts_(opts), s_(policy, opts.seed), stream_(opts.seed), decide_(opts.seed ^ 0xd1ceULL), quality_at_(quality_at) {
    for (const auto& n : nodes) Check(s_.UpsertNode(n));
    for (const auto& [node, r] : prefill.claims) {
      Check(s_.ClaimOn(node, r.claim_id, r.resources()));
      live_.push_back({r.claim_id, r.memory_mib});
      used_ += r.memory_mib;
    }
    for (const NodeReport& r : s_.Reports()) {
      if (r.state == NodeState::kUp) capacity_ += r.capacity.memory_mib;
    }
  }

  void Advance(int64_t count) {
    const int64_t place_ns_before = place_ns_;
    const int64_t cpu0 = ThreadCpuNs();
    const auto wall0 = Clock::now();
    for (int64_t end = ops_ + count; ops_ < end; ++ops_) {
      double util = static_cast<double>(used_) / static_cast<double>(capacity_);
      bool place = util < opts_.low ? true : util > opts_.high ? false : (decide_() & 1) == 0;
      if (place || live_.empty()) {
        PlacementRequest r = stream_.Next("c" + std::to_string(ops_));
        auto t0 = Clock::now();
        auto placed = s_.Place(r);
        auto t1 = Clock::now();
        latencies_ns_.push_back(static_cast<uint32_t>(std::min<int64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count(), UINT32_MAX)));
        place_ns_ += std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count();
        ++placements_;
        if (placed.ok()) {
          live_.push_back({r.claim_id, r.memory_mib});
          used_ += r.memory_mib;
        } else {
          ++failed_;
        }
      } else {
        size_t k = decide_() % live_.size();
        auto t0 = Clock::now();
        Check(s_.Release(live_[k].id));
        release_ns_ += std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count();
        ++releases_;
        used_ -= live_[k].memory_mib;
        live_[k] = std::move(live_.back());
        live_.pop_back();
      }
      if (ops_ + 1 == quality_at_) at_quality_point_ = Measure(s_, ops_ + 1, placements_, failed_);
    }
    // The share of this slice the thread really ran (others use the machine too).
    double wall = static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - wall0).count());
    double share = wall > 0 ? std::min(1.0, static_cast<double>(ThreadCpuNs() - cpu0) / wall) : 1.0;
    place_cpu_ns_ += static_cast<double>(place_ns_ - place_ns_before) * share;
    last_cpu_share_ = share;
  }

  // Per second of wall time inside Place, and per second of it the thread was running.
  double PlacementsPerSecond() const { return placements_ * 1e9 / static_cast<double>(place_ns_); }
  double PlacementsPerCpuSecond() const { return placements_ * 1e9 / place_cpu_ns_; }
  double last_cpu_share() const { return last_cpu_share_; }
  double ReleasesPerSecond() const { return releases_ * 1e9 / static_cast<double>(std::max<int64_t>(release_ns_, 1)); }
  double PercentileUs(double p) {
    if (latencies_ns_.empty()) return 0;
    auto nth = latencies_ns_.begin() + static_cast<ptrdiff_t>(p * static_cast<double>(latencies_ns_.size() - 1));
    std::nth_element(latencies_ns_.begin(), nth, latencies_ns_.end());
    return *nth / 1000.0;
  }
  Quality Final() const { return Measure(s_, ops_, placements_, failed_); }
  const Quality& AtQualityPoint() const { return at_quality_point_; }
  const S& scheduler() const { return s_; }
  int64_t placements() const { return placements_; }
  int64_t failed() const { return failed_; }
  int64_t ops() const { return ops_; }

 private:
  static void Check(const berth::Status& st) {
    if (!st.ok()) {
      std::fprintf(stderr, "berth-bench-scheduler: %s\n", st.ToString().c_str());
      std::exit(1);
    }
  }

  const Options& opts_;
  S s_;
  RequestStream stream_;
  std::mt19937_64 decide_;
  int64_t quality_at_;
  std::vector<LiveClaim> live_;
  uint64_t used_ = 0, capacity_ = 0;
  int64_t ops_ = 0, placements_ = 0, failed_ = 0, releases_ = 0;
  int64_t place_ns_ = 0, release_ns_ = 0;
  double place_cpu_ns_ = 0, last_cpu_share_ = 1;
  std::vector<uint32_t> latencies_ns_;
  Quality at_quality_point_;
};

std::string Fmt(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

// `goal` is printed as given: an absolute figure or a ratio (see bench/README.md).
void PrintResult(const std::string& name, double value, const std::string& unit, double baseline,
                 const std::string& goal, int decimals) {
  std::string ratio = baseline > 0 ? Fmt(value / baseline, 3) : "n/a";
  std::printf("RESULT %s value=%s unit=%s baseline=%s ratio=%s goal=%s\n", name.c_str(), Fmt(value, decimals).c_str(),
              unit.c_str(), Fmt(baseline, decimals).c_str(), ratio.c_str(), goal.c_str());
}

void PrintQuality(const char* who, const Quality& q) {
  std::printf("  %-28s ops %8lld  placements %8lld  failed %6lld (%.3f %%)  memory util: cluster %.3f, per node mean %.3f "
              "stddev %.4f\n",
              who, static_cast<long long>(q.ops), static_cast<long long>(q.placements), static_cast<long long>(q.failed),
              q.placements > 0 ? 100.0 * static_cast<double>(q.failed) / static_cast<double>(q.placements) : 0.0,
              q.cluster_util, q.mean_util, q.stddev_util);
}

int Run(const Options& opts) {
  Policy policy;
  policy.strategy = opts.policy == "binpack" ? Strategy::kBinpack : Strategy::kSpread;
  policy.sample_k = opts.sample_k;
  Policy naive_policy = policy;
  naive_policy.sample_k = 0;

  auto setup0 = Clock::now();
  std::vector<NodeResources> nodes = BuildCluster(opts.nodes, opts.seed);
  Prefill prefill = BuildPrefill(nodes, opts.prefill, opts.seed);
  int64_t naive_ops = std::min(opts.naive_ops, opts.ops);
  Runner<Scheduler> fast(opts, nodes, prefill, policy, naive_ops);
  Runner<NaiveScheduler> naive(opts, nodes, prefill, naive_policy, naive_ops);
  double setup_s = std::chrono::duration<double>(Clock::now() - setup0).count();
  std::printf("cluster: %d nodes, %zu pre-filled claims (random-fit to %.0f %% of memory), policy %s, sample_k %u; "
              "setup %.1f s\n",
              opts.nodes, prefill.claims.size(), 100 * opts.prefill, opts.policy.c_str(), opts.sample_k, setup_s);
  std::printf("operations: scheduler %lld, naive %lld, in %d interleaved rounds\n", static_cast<long long>(opts.ops),
              static_cast<long long>(naive_ops), opts.rounds);

  for (int round = 0; round < opts.rounds; ++round) {
    int64_t fast_end = opts.ops * (round + 1) / opts.rounds;
    int64_t naive_end = naive_ops * (round + 1) / opts.rounds;
    auto a0 = Clock::now();
    fast.Advance(fast_end - fast.ops());
    auto a1 = Clock::now();
    naive.Advance(naive_end - naive.ops());
    auto a2 = Clock::now();
    std::printf("round %d/%d  scheduler %lld ops in %.2f s (ran %.0f %% of it)  |  naive %lld ops in %.2f s (ran %.0f %%)\n",
                round + 1, opts.rounds, static_cast<long long>(fast.ops()), std::chrono::duration<double>(a1 - a0).count(),
                100 * fast.last_cpu_share(), static_cast<long long>(naive.ops()),
                std::chrono::duration<double>(a2 - a1).count(), 100 * naive.last_cpu_share());
    std::fflush(stdout);
  }

  double fast_rate = fast.PlacementsPerCpuSecond(), naive_rate = naive.PlacementsPerCpuSecond();
  double fast_p50 = fast.PercentileUs(0.50), fast_p99 = fast.PercentileUs(0.99), fast_p999 = fast.PercentileUs(0.999);
  double naive_p50 = naive.PercentileUs(0.50), naive_p99 = naive.PercentileUs(0.99);
  Scheduler::Stats st = fast.scheduler().stats();
  std::printf("\nthroughput (time inside Place; per CPU-second = wall time x the share the thread ran) and latency\n");
  std::printf("  scheduler (K=%u)  %10.0f placements/CPU-s  %10.0f /wall-s  p50 %7.2f us  p99 %7.2f us  p99.9 %7.2f us  "
              "releases %.0f/wall-s\n",
              opts.sample_k, fast_rate, fast.PlacementsPerSecond(), fast_p50, fast_p99, fast_p999,
              fast.ReleasesPerSecond());
  std::printf("  naive (full scan) %10.0f placements/CPU-s  %10.0f /wall-s  p50 %7.2f us  p99 %7.2f us\n", naive_rate,
              naive.PlacementsPerSecond(), naive_p50, naive_p99);
  std::printf("  scheduler decided %llu placements from samples, ran %llu full scans (%.2f %%), %llu failed\n",
              static_cast<unsigned long long>(st.sampled), static_cast<unsigned long long>(st.full_scans),
              100.0 * static_cast<double>(st.full_scans) / static_cast<double>(std::max<uint64_t>(1, st.sampled + st.full_scans)),
              static_cast<unsigned long long>(st.failures));
  std::printf("\nquality after %lld operations (same point for both)\n", static_cast<long long>(naive_ops));
  Quality fq = fast.AtQualityPoint(), nq = naive.AtQualityPoint();
  PrintQuality("scheduler", fq);
  PrintQuality("naive", nq);
  std::printf("quality at the end\n");
  PrintQuality("scheduler", fast.Final());
  std::printf("\n");

  auto pct = [](const Quality& q) {
    return q.placements > 0 ? 100.0 * static_cast<double>(q.failed) / static_cast<double>(q.placements) : 0.0;
  };

  // Quality from an empty cluster small enough that the full scan can churn
  // it several times: the mean of the utilisation stddev over the second half
  // of the rounds, and the failures over the whole run.
  if (opts.quality_nodes > 0 && opts.quality_ops > 0) {
    std::vector<NodeResources> qnodes = BuildCluster(opts.quality_nodes, opts.seed + 1);
    Prefill none;
    Runner<Scheduler> a(opts, qnodes, none, policy, opts.quality_ops);
    Runner<NaiveScheduler> b(opts, qnodes, none, naive_policy, opts.quality_ops);
    double sa = 0, sb = 0;
    int counted = 0;
    for (int round = 0; round < opts.rounds; ++round) {
      int64_t end = opts.quality_ops * (round + 1) / opts.rounds;
      a.Advance(end - a.ops());
      b.Advance(end - b.ops());
      if (2 * round >= opts.rounds) {
        sa += a.Final().stddev_util;
        sb += b.Final().stddev_util;
        ++counted;
      }
    }
    fq = a.Final();
    nq = b.Final();
    fq.stddev_util = sa / std::max(1, counted);
    nq.stddev_util = sb / std::max(1, counted);
    std::printf("quality from empty: %d nodes, %lld operations each, stddev averaged over the last %d rounds\n",
                opts.quality_nodes, static_cast<long long>(opts.quality_ops), counted);
    PrintQuality("scheduler", fq);
    PrintQuality("naive", nq);
    std::printf("\n");
  }
  // Absolute goals: at least 100k placements/s, p99 under 1 ms, p50 under 100 us.
  PrintResult("scheduler_placements_per_s", fast_rate, "placements/s", naive_rate, "100000", 0);
  PrintResult("scheduler_p99_us", fast_p99, "us", naive_p99, "1000", 2);
  PrintResult("scheduler_p50_us", fast_p50, "us", naive_p50, "100", 2);
  // Quality goals are ratios to the full scan: at most 10 % worse.
  PrintResult("scheduler_mem_util_stddev", fq.stddev_util, "fraction", nq.stddev_util, "1.10", 4);
  PrintResult("scheduler_failed_placements_pct", pct(fq), "%", pct(nq), "1.10", 3);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options opts;
  CLI::App app{"berth-bench-scheduler: sampling scheduler vs. full-scan scheduler on a simulated cluster"};
  app.add_option("--nodes", opts.nodes, "Simulated nodes")->check(CLI::Range(10, 1000000))->capture_default_str();
  app.add_option("--ops", opts.ops, "Operations (placements + releases) for the scheduler")
      ->check(CLI::Range(int64_t{1}, int64_t{100000000}))
      ->capture_default_str();
  app.add_option("--naive-ops", opts.naive_ops, "Operations for the naive baseline (the first ones of the same stream)")
      ->check(CLI::Range(int64_t{1}, int64_t{100000000}))
      ->capture_default_str();
  app.add_option("--seed", opts.seed, "Seed of the cluster, the pre-fill and the operation stream")->capture_default_str();
  app.add_option("--sample-k", opts.sample_k, "K of power-of-K-choices (0: Scheduler scans every node)")
      ->check(CLI::Range(0, 10000))
      ->capture_default_str();
  app.add_option("--policy", opts.policy, "spread or binpack")
      ->check(CLI::IsMember({"spread", "binpack"}))
      ->capture_default_str();
  app.add_option("--quality-nodes", opts.quality_nodes, "Nodes of the quality run from empty (0: skip it)")
      ->check(CLI::Range(0, 1000000))
      ->capture_default_str();
  app.add_option("--quality-ops", opts.quality_ops, "Operations of the quality run, for each scheduler")
      ->check(CLI::Range(int64_t{0}, int64_t{100000000}))
      ->capture_default_str();
  app.add_option("--rounds", opts.rounds, "Interleaved slices")->check(CLI::Range(1, 1000))->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  int rc = Run(opts);
  std::fflush(stdout);
  return rc;
}
