#include "manager/reconcile.h"

#include <spdlog/spdlog.h>

#include <map>
#include <set>

#include "hypervisor/domain_xml.h"
#include "manager/templates.h"
#include "manager/warm_pool.h"

namespace berth::manager {
namespace {

// A berth domain seen on a node: ours, with the execution id from its metadata.
struct SeenDomain {
  std::string execution_id;
};

bool StartsWith(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }
bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Warm-pool VMs and template builds are swept by Node::Prepare, not here.
bool IsExecutionDomainName(const std::string& domain) {
  return StartsWith(domain, hv::kDomainNamePrefix) && !StartsWith(domain, kPoolDomainPrefix) &&
         !StartsWith(domain, TemplateDomainName(""));
}

// Step 1 for one node: berth execution domains whose disks sit in this
// berthd's pool there (another berthd's domains on a shared host are left alone).
std::map<std::string, SeenDomain> Inventory(Node& node) {
  std::map<std::string, SeenDomain> seen;
  auto& hv = node.hypervisor();
  std::string pool_dir = node.config().pool_dir;
  if (auto p = hv.GetPoolPath(node.config().pool); p.ok()) pool_dir = *p;
  while (pool_dir.size() > 1 && pool_dir.back() == '/') pool_dir.pop_back();
  auto domains = hv.ListDomains(hv::kDomainNamePrefix);
  if (!domains.ok()) {
    spdlog::warn("reconcile: listing domains on node {}: {}", node.name(), domains.status().ToString());
    return seen;
  }
  for (const auto& domain : *domains) {
    if (!IsExecutionDomainName(domain)) continue;
    auto xml = hv.GetDomainXml(domain);
    if (!xml.ok()) continue;
    if (xml->find(pool_dir + "/") == std::string::npos) continue;  // not ours
    auto md = hv::ParseDomainMetadata(*xml);
    if (!md.ok() || md->execution_id.empty()) continue;
    seen[domain] = SeenDomain{md->execution_id};
  }
  return seen;
}

void RemoveExecutionLeftovers(Node& node, const std::string& id, const std::string& domain) {
  auto& hv = node.hypervisor();
  if (!domain.empty()) {
    if (Status s = hv.DestroyDomain(domain); !s.ok()) spdlog::warn("reconcile: {}", s.ToString());
    (void)hv.DeleteVolume(node.config().log_pool, ConsoleLogVolumeName(domain));
  }
  (void)hv.DeleteVolume(node.config().pool, OverlayVolumeName(id));
  (void)hv.DeleteVolume(node.config().pool, SeedVolumeName(id));
}

// The execution id in an ovl-<id>.qcow2 / seed-<id>.iso name, "" otherwise.
std::string VolumeExecutionId(const std::string& name) {
  if (StartsWith(name, "ovl-") && EndsWith(name, ".qcow2")) return name.substr(4, name.size() - 4 - 6);
  if (StartsWith(name, "seed-") && EndsWith(name, ".iso")) return name.substr(5, name.size() - 5 - 4);
  return "";
}

}  // namespace

int ReleaseEndedClaimsOn(Store& store, Cluster& cluster, const std::string& node,
                         const std::function<bool(const std::string&)>& is_live) {
  return cluster.ReleaseClaimsOn(node, [&](const std::string& id) {
    if (is_live(id)) return true;
    // Read after is_live: a start registered meanwhile has an unfinished record by now.
    auto rec = store.GetExecution(id);
    return !(rec.ok() && IsTerminal(rec->state));
  });
}

Result<ReconcileReport> ReconcileAfterRestart(Env* env, Store& store, Cluster& cluster, Executor& executor,
                                              const std::function<void(const ExecutionRecord&)>& on_lost) {
  ReconcileReport report;

  // 1. Inventory of every reachable node.
  std::map<std::string, std::map<std::string, SeenDomain>> seen;  // node -> domain -> what
  std::vector<Node*> reachable;
  for (Node* n : cluster.All()) {
    if (cluster.IsDown(n->name())) continue;
    reachable.push_back(n);
    seen[n->name()] = Inventory(*n);
  }

  // 2 + 3. Unfinished records: adopt what still runs, end the rest lost.
  BERTH_ASSIGN_OR_RETURN(auto unfinished, store.ListUnfinishedExecutions());
  std::set<std::string> keep_claims;
  std::set<std::string> accounted;  // execution ids whose domain is handled here
  std::vector<ExecutionRecord> lost_records;  // for on_lost, once the routine is done
  for (auto& ex : unfinished) {
    if (executor.IsLive(ex.id)) {  // started by this berthd already
      keep_claims.insert(ex.id);
      accounted.insert(ex.id);
      continue;
    }
    Node* node = cluster.Get(ex.node);
    const bool reachable_node = node && !cluster.IsDown(ex.node);
    bool domain_runs = false;
    if (reachable_node) {
      auto it = seen[ex.node].find(ex.domain);
      domain_runs = it != seen[ex.node].end() && it->second.execution_id == ex.id;
    }
    if (domain_runs && ex.state == ExecState::kRunning) {
      Status claimed = cluster.ClaimOn(ex.id, ex.node, ex.spec.vcpus, ex.spec.memory_mib);
      Status adopted = claimed.ok() ? executor.Adopt(*node, ex) : claimed;
      if (adopted.ok()) {
        keep_claims.insert(ex.id);
        accounted.insert(ex.id);
        report.adopted.push_back(ex.id);
        continue;
      }
      spdlog::warn("reconcile: adopting execution {} failed: {}", ex.id, adopted.ToString());
    }
    std::string why;
    if (!reachable_node) {
      why = "its node " + ex.node + " was unreachable when berthd restarted";
    } else if (ex.state != ExecState::kRunning) {
      why = std::string("berthd stopped while this execution was ") + ExecStateName(ex.state);
    } else if (!domain_runs) {
      why = "its domain " + ex.domain + " was gone when berthd restarted";
    } else {
      why = "berthd restarted and could not adopt it";
    }
    spdlog::warn("reconcile: execution {} (pid {}) ends lost: {}", ex.id, ex.pid, why);
    if (reachable_node) RemoveExecutionLeftovers(*node, ex.id, ex.domain);
    ex.state = ExecState::kLost;
    ex.error_code = "manager_restarted";
    ex.error = why;
    ex.finished_ms = env->NowUnixMs();
    BERTH_RETURN_IF_ERROR(store.UpdateExecution(ex));
    report.lost.push_back(ex.id);
    lost_records.push_back(ex);
  }

  // 4. Orphans: our domains that belong to no running record.
  for (Node* n : reachable) {
    for (const auto& [domain, what] : seen[n->name()]) {
      if (accounted.count(what.execution_id) || executor.IsLive(what.execution_id)) continue;
      auto rec = store.GetExecution(what.execution_id);
      if (rec.ok() && !IsTerminal(rec->state)) continue;  // ended lost above, already removed
      spdlog::warn("reconcile: destroying orphan domain {} on node {} ({})", domain, n->name(),
                   rec.ok() ? std::string("its execution ended ") + ExecStateName(rec->state) : "no record");
      RemoveExecutionLeftovers(*n, what.execution_id, domain);
      ++report.orphans_destroyed;
    }
  }

  // 5. Claims: only adopted (or already live) executions hold one.
  report.claims_released = cluster.ReleaseClaimsExcept(keep_claims);

  // 6. Volumes that belong to nothing live.
  for (Node* n : reachable) {
    auto& hv = n->hypervisor();
    std::set<std::string> live_domains;
    if (auto running = hv.ListDomains(hv::kDomainNamePrefix); running.ok()) {
      live_domains.insert(running->begin(), running->end());
    }
    if (auto vols = hv.ListVolumes(n->config().pool); vols.ok()) {
      for (const auto& vol : *vols) {
        const std::string id = VolumeExecutionId(vol.name);
        if (id.empty() || accounted.count(id) || executor.IsLive(id)) continue;
        auto rec = store.GetExecution(id);
        if (rec.ok() && !IsTerminal(rec->state)) continue;  // started meanwhile by this berthd
        spdlog::warn("reconcile: deleting volume {} on node {} (it belongs to no live execution)", vol.name, n->name());
        if (hv.DeleteVolume(n->config().pool, vol.name).ok()) ++report.volumes_deleted;
      }
    }
    if (auto logs = hv.ListVolumes(n->config().log_pool); logs.ok()) {
      for (const auto& vol : *logs) {
        const std::string suffix = ".console.log";
        if (!EndsWith(vol.name, suffix)) continue;
        const std::string domain = vol.name.substr(0, vol.name.size() - suffix.size());
        if (!IsExecutionDomainName(domain) || live_domains.count(domain)) continue;
        spdlog::warn("reconcile: deleting console log {} on node {} (its domain is gone)", vol.name, n->name());
        if (hv.DeleteVolume(n->config().log_pool, vol.name).ok()) ++report.volumes_deleted;
      }
    }
  }
  spdlog::info("reconcile: {} adopted, {} lost, {} orphan domain(s) destroyed, {} stale claim(s) released, {} volume(s) deleted",
               report.adopted.size(), report.lost.size(), report.orphans_destroyed, report.claims_released,
               report.volumes_deleted);
  // 7. Retries: last, so that the claims and volumes of work started again
  // are not taken for stale ones above.
  if (on_lost) {
    for (const auto& ex : lost_records) on_lost(ex);
  }
  return report;
}

}  // namespace berth::manager
