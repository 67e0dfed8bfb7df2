#include "scheduler/naive_scheduler.h"

#include <algorithm>

namespace berth::sched {

namespace {

Status UnknownNode(const std::string& name) {
  return Status::NotFound("node '" + name + "' is not known to the scheduler");
}

Status UnknownClaim(const std::string& claim_id) {
  return Status::NotFound("claim '" + claim_id + "' is not known to the scheduler");
}

}  // namespace

NaiveScheduler::NaiveScheduler(Policy policy, uint64_t /*seed*/) : policy_(policy) {}

Status NaiveScheduler::UpsertNode(const NodeResources& node) {
  BERTH_RETURN_IF_ERROR(ValidateNode(node));
  std::lock_guard lock(mu_);
  NodeLoad& n = nodes_[node.name];
  n.spec = node;
  n.capacity = CapacityOf(node);
  return Status::Ok();
}

Result<std::vector<std::string>> NaiveScheduler::RemoveNode(const std::string& name) {
  std::lock_guard lock(mu_);
  if (!nodes_.erase(name)) return UnknownNode(name);
  std::vector<std::string> dropped;
  for (auto c = claims_.begin(); c != claims_.end();) {
    if (c->second.node == name) {
      dropped.push_back(c->first);
      c = claims_.erase(c);
    } else {
      ++c;
    }
  }
  std::sort(dropped.begin(), dropped.end());
  return dropped;
}

Status NaiveScheduler::SetNodeState(const std::string& name, NodeState state) {
  std::lock_guard lock(mu_);
  auto it = nodes_.find(name);
  if (it == nodes_.end()) return UnknownNode(name);
  it->second.spec.state = state;
  return Status::Ok();
}

Result<Placement> NaiveScheduler::Place(const PlacementRequest& request) {
  BERTH_RETURN_IF_ERROR(ValidateRequest(request));
  std::lock_guard lock(mu_);
  if (claims_.count(request.claim_id)) {
    return Status::AlreadyExists("claim '" + request.claim_id + "' is already placed");
  }
  TopCandidates<NodeLoad*> top(1 + static_cast<size_t>(request.alternates));
  RejectionTally tally;
  for (auto& [name, node] : nodes_) {
    Rejection r = CheckFit(node, request);
    if (r == Rejection::kFits) {
      top.Offer(Score(node, request, policy_), name, &node);
    } else {
      tally.Add(r);
    }
  }
  if (top.size() == 0) return tally.Error(request, nodes_.size());
  NodeLoad* chosen = top.best()[0].item;
  AddTo(chosen->allocated, request.resources());
  ++chosen->claims;
  claims_.emplace(request.claim_id, ClaimInfo{request.claim_id, chosen->spec.name, request.resources()});
  Placement placement;
  placement.node = chosen->spec.name;
  for (size_t i = 1; i < top.size(); ++i) placement.alternates.push_back(*top.best()[i].name);
  return placement;
}

Status NaiveScheduler::Release(const std::string& claim_id) {
  std::lock_guard lock(mu_);
  auto it = claims_.find(claim_id);
  if (it == claims_.end()) return UnknownClaim(claim_id);
  auto node = nodes_.find(it->second.node);
  if (node != nodes_.end()) {
    SubtractFrom(node->second.allocated, it->second.resources);
    --node->second.claims;
  }
  claims_.erase(it);
  return Status::Ok();
}

Status NaiveScheduler::ClaimOn(const std::string& node, const std::string& claim_id,
                               const Resources& resources) {
  if (claim_id.empty()) return Status::InvalidArgument("claim_id", "claim id is empty");
  std::lock_guard lock(mu_);
  auto it = nodes_.find(node);
  if (it == nodes_.end()) return UnknownNode(node);
  if (claims_.count(claim_id)) return Status::AlreadyExists("claim '" + claim_id + "' is already placed");
  AddTo(it->second.allocated, resources);
  ++it->second.claims;
  claims_.emplace(claim_id, ClaimInfo{claim_id, node, resources});
  return Status::Ok();
}

Result<ClaimInfo> NaiveScheduler::FindClaim(const std::string& claim_id) const {
  std::lock_guard lock(mu_);
  auto it = claims_.find(claim_id);
  if (it == claims_.end()) return UnknownClaim(claim_id);
  return it->second;
}

Result<NodeReport> NaiveScheduler::Report(const std::string& node) const {
  std::lock_guard lock(mu_);
  auto it = nodes_.find(node);
  if (it == nodes_.end()) return UnknownNode(node);
  return MakeReport(it->second);
}

std::vector<NodeReport> NaiveScheduler::Reports() const {
  std::lock_guard lock(mu_);
  std::vector<NodeReport> out;
  out.reserve(nodes_.size());
  for (const auto& [name, node] : nodes_) out.push_back(MakeReport(node));
  return out;
}

size_t NaiveScheduler::node_count() const {
  std::lock_guard lock(mu_);
  return nodes_.size();
}

size_t NaiveScheduler::claim_count() const {
  std::lock_guard lock(mu_);
  return claims_.size();
}

}  // namespace berth::sched
