// Reconciliation after a berthd restart: one ordered routine that makes the
// store, the claims and what really runs on the nodes agree again.
//
//   1. inventory  list berth domains on every reachable node, identified by
//                 their <metadata> (execution id); only domains whose disks
//                 live in this berthd's pool on that node count as ours
//   2. adopt      a record that says running whose domain still runs is
//                 handed to Executor::Adopt (its exit is observed and
//                 recorded) and its claim is re-installed (Cluster::ClaimOn)
//   3. lost       any other unfinished record ends `lost`: its domain
//                 vanished, it never got to running, or its node is down;
//                 whatever of it is still on a reachable node is removed
//   4. orphans    our domains with no record, or a finished one, are destroyed
//   5. claims     every claim not re-installed in 2 is released
//   6. volumes    overlays, seeds and console logs in our pools that belong to
//                 no live execution are deleted
//   7. retries    on_lost sees each record ended lost in 3 (and may start
//                 retryable work again, with its own claim)
// It never starts or resumes a guest. Warm-pool VMs and template builds are
// not executions: Node::Prepare already swept those (so a run that had taken
// a warm-pool VM is not adopted; it ends lost).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "common/env.h"
#include "manager/cluster.h"
#include "manager/executor.h"
#include "manager/store.h"
#include "manager/types.h"

namespace berth::manager {

struct ReconcileReport {
  std::vector<std::string> adopted;  // execution ids
  std::vector<std::string> lost;     // execution ids ended lost
  int orphans_destroyed = 0;
  int claims_released = 0;
  int volumes_deleted = 0;
};

// A node that answers again (Cluster::SetReconcileHook), once its leftovers
// are gone: releases the claims held on `node` by executions that ended,
// i.e. that are not live (`is_live`) and whose record is final. A claim with
// no record yet, or an unfinished one, is a placement in flight (claimed,
// not yet registered live; the executor registers live before it writes the
// record, and `is_live` is asked first): it stays, however the release and
// the start interleave, and the start releases it itself if it fails.
// Returns how many claims went.
int ReleaseEndedClaimsOn(Store& store, Cluster& cluster, const std::string& node,
                         const std::function<bool(const std::string& execution_id)>& is_live);

// `on_lost` (may be empty) sees each record ended lost, after the whole
// routine ran (step 7), so that retryable work can be re-run elsewhere.
Result<ReconcileReport> ReconcileAfterRestart(Env* env, Store& store, Cluster& cluster, Executor& executor,
                                              const std::function<void(const ExecutionRecord&)>& on_lost = {});

}  // namespace berth::manager
