#include "scheduler/scheduler.h"

#include <algorithm>

namespace berth::sched {

namespace {

__extension__ typedef unsigned __int128 Uint128;

}  // namespace

Scheduler::Scheduler(Policy policy, uint64_t seed) : policy_(policy), rng_state_(seed) {}

Scheduler::~Scheduler() = default;

uint64_t Scheduler::NextRandom() {  // splitmix64
  uint64_t z = (rng_state_ += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

std::string Scheduler::LabelKey(const std::string& key, const std::string& value) {
  std::string k;
  k.reserve(key.size() + 1 + value.size());
  k.append(key).push_back('\x1f');
  k.append(value);
  return k;
}

void Scheduler::Insert(CandidateIndex* index, Node* n) {
  n->memberships.emplace_back(index, index->nodes.size());
  index->nodes.push_back(n);
}

void Scheduler::Index(Node* n) {
  if (!n->memberships.empty()) return;
  Insert(&up_, n);
  for (const auto& [key, value] : n->spec.labels) Insert(&label_index_[LabelKey(key, value)], n);
}

void Scheduler::Unindex(Node* n) {
  for (const auto& [index, pos] : n->memberships) {
    Node* last = index->nodes.back();
    index->nodes[pos] = last;
    for (auto& m : last->memberships) {
      if (m.first == index) m.second = pos;
    }
    index->nodes.pop_back();
  }
  n->memberships.clear();
  for (const auto& [key, value] : n->spec.labels) {
    auto it = label_index_.find(LabelKey(key, value));
    if (it != label_index_.end() && it->second.nodes.empty()) label_index_.erase(it);
  }
}

Status Scheduler::UpsertNode(const NodeResources& spec) {
  BERTH_RETURN_IF_ERROR(ValidateNode(spec));
  std::lock_guard lock(mu_);
  Node* n;
  auto it = by_name_.find(spec.name);
  if (it == by_name_.end()) {
    auto owned = std::make_unique<Node>();
    n = owned.get();
    n->all_pos = nodes_.size();
    nodes_.push_back(std::move(owned));
    hot_.emplace_back();
    by_name_.emplace(spec.name, n);
  } else {
    n = it->second;
    Unindex(n);  // its labels may change
  }
  n->spec = spec;
  n->capacity = CapacityOf(spec);
  if (spec.state == NodeState::kUp) Index(n);
  Refresh(n);
  return Status::Ok();
}

Result<std::vector<std::string>> Scheduler::RemoveNode(const std::string& name) {
  std::lock_guard lock(mu_);
  auto it = by_name_.find(name);
  if (it == by_name_.end()) return Status::NotFound("node '" + name + "' is not known to the scheduler");
  Node* n = it->second;
  std::vector<std::string> dropped;
  if (n->claims > 0) {
    for (auto c = claims_.begin(); c != claims_.end();) {
      if (c->second.node == n) {
        dropped.push_back(c->first);
        c = claims_.erase(c);
      } else {
        ++c;
      }
    }
  }
  Unindex(n);
  by_name_.erase(it);
  size_t pos = n->all_pos;
  if (pos + 1 != nodes_.size()) {
    std::swap(nodes_[pos], nodes_.back());
    nodes_[pos]->all_pos = pos;
    hot_[pos] = hot_.back();
  }
  nodes_.pop_back();  // destroys n
  hot_.pop_back();
  std::sort(dropped.begin(), dropped.end());
  return dropped;
}

Status Scheduler::SetNodeState(const std::string& name, NodeState state) {
  std::lock_guard lock(mu_);
  auto it = by_name_.find(name);
  if (it == by_name_.end()) return Status::NotFound("node '" + name + "' is not known to the scheduler");
  Node* n = it->second;
  Unindex(n);
  n->spec.state = state;
  if (state == NodeState::kUp) Index(n);
  Refresh(n);
  return Status::Ok();
}

const Scheduler::CandidateIndex* Scheduler::CandidatesFor(const PlacementRequest& request) const {
  const CandidateIndex* best = &up_;
  for (const auto& [key, value] : request.label_selector) {
    auto it = label_index_.find(LabelKey(key, value));
    if (it == label_index_.end()) return nullptr;
    if (it->second.nodes.size() < best->nodes.size()) best = &it->second;
  }
  return best;
}

void Scheduler::Sample(const PlacementRequest& request, const CandidateIndex& candidates,
                       TopCandidates<Node*>& top) {
  const std::vector<Node*>& nodes = candidates.nodes;
  if (nodes.size() <= 2 * static_cast<size_t>(policy_.sample_k)) {
    for (Node* n : nodes) {  // few enough to look at all
      if (CheckFit(*n, request) == Rejection::kFits) top.Offer(Score(*n, request, policy_), n->spec.name, n);
    }
    return;
  }
  const size_t want = 1 + static_cast<size_t>(request.alternates);
  ++epoch_;
  for (uint32_t round = 0; round < policy_.sample_rounds; ++round) {
    for (uint32_t i = 0; i < policy_.sample_k; ++i) {
      // Lemire's multiply-shift: a uniform index without a division.
      size_t idx = static_cast<size_t>((static_cast<Uint128>(NextRandom()) * nodes.size()) >> 64);
      Node* n = nodes[idx];
      if (n->seen_epoch == epoch_) continue;
      n->seen_epoch = epoch_;
      if (CheckFit(*n, request) == Rejection::kFits) top.Offer(Score(*n, request, policy_), n->spec.name, n);
    }
    if (top.size() >= want) break;
  }
}

void Scheduler::Refresh(const Node* n) {
  HotNode& h = hot_[n->all_pos];
  h.free = FreeOf(*n);
  // Unknown disk space (total 0) limits nothing, as in CheckFit.
  if (n->spec.total_disk_bytes == 0) h.free.disk_bytes = UINT64_MAX;
  h.up = n->spec.state == NodeState::kUp;
}

void Scheduler::ScanFeasible(const PlacementRequest& request, TopCandidates<Node*>& top) {
  const Resources want = request.resources();
  for (size_t i = 0; i < hot_.size(); ++i) {
    const HotNode& h = hot_[i];
    if (!h.up || h.free.vcpus < want.vcpus || h.free.memory_mib < want.memory_mib ||
        h.free.disk_bytes < want.disk_bytes) {
      continue;
    }
    Node* n = nodes_[i].get();
    if (CheckFit(*n, request) == Rejection::kFits) top.Offer(Score(*n, request, policy_), n->spec.name, n);
  }
}

void Scheduler::CountRejections(const PlacementRequest& request, RejectionTally& tally) const {
  for (const auto& n : nodes_) tally.Add(CheckFit(*n, request));
}

Result<Placement> Scheduler::Place(const PlacementRequest& request) {
  BERTH_RETURN_IF_ERROR(ValidateRequest(request));
  std::lock_guard lock(mu_);
  // Reserve the id first (one hash lookup); undone below if nothing fits.
  auto [claim, inserted] = claims_.try_emplace(request.claim_id, Claim{nullptr, {}});
  if (!inserted) return Status::AlreadyExists("claim '" + request.claim_id + "' is already placed");
  TopCandidates<Node*> top(1 + static_cast<size_t>(request.alternates));
  if (policy_.sample_k > 0) {
    if (const CandidateIndex* candidates = CandidatesFor(request)) Sample(request, *candidates, top);
  }
  if (top.size() == 0) {
    ScanFeasible(request, top);
    ++stats_.full_scans;
    if (top.size() == 0) {
      RejectionTally tally;
      CountRejections(request, tally);
      claims_.erase(claim);
      ++stats_.failures;
      return tally.Error(request, nodes_.size());
    }
  } else {
    ++stats_.sampled;
  }
  Node* chosen = top.best()[0].item;
  Resources res = request.resources();
  AddTo(chosen->allocated, res);
  ++chosen->claims;
  Refresh(chosen);
  claim->second = Claim{chosen, res};
  ++stats_.placements;

  Placement placement;
  placement.node = chosen->spec.name;
  placement.alternates.reserve(top.size() - 1);
  for (size_t i = 1; i < top.size(); ++i) placement.alternates.push_back(*top.best()[i].name);
  return placement;
}

Status Scheduler::Release(const std::string& claim_id) {
  std::lock_guard lock(mu_);
  auto it = claims_.find(claim_id);
  if (it == claims_.end()) return Status::NotFound("claim '" + claim_id + "' is not known to the scheduler");
  Node* n = it->second.node;
  SubtractFrom(n->allocated, it->second.resources);
  --n->claims;
  Refresh(n);
  claims_.erase(it);
  return Status::Ok();
}

Status Scheduler::ClaimOn(const std::string& node, const std::string& claim_id, const Resources& resources) {
  if (claim_id.empty()) return Status::InvalidArgument("claim_id", "claim id is empty");
  std::lock_guard lock(mu_);
  auto it = by_name_.find(node);
  if (it == by_name_.end()) return Status::NotFound("node '" + node + "' is not known to the scheduler");
  if (claims_.count(claim_id)) return Status::AlreadyExists("claim '" + claim_id + "' is already placed");
  Node* n = it->second;
  AddTo(n->allocated, resources);
  ++n->claims;
  Refresh(n);
  claims_.emplace(claim_id, Claim{n, resources});
  return Status::Ok();
}

Result<ClaimInfo> Scheduler::FindClaim(const std::string& claim_id) const {
  std::lock_guard lock(mu_);
  auto it = claims_.find(claim_id);
  if (it == claims_.end()) return Status::NotFound("claim '" + claim_id + "' is not known to the scheduler");
  return ClaimInfo{claim_id, it->second.node->spec.name, it->second.resources};
}

Result<NodeReport> Scheduler::Report(const std::string& node) const {
  std::lock_guard lock(mu_);
  auto it = by_name_.find(node);
  if (it == by_name_.end()) return Status::NotFound("node '" + node + "' is not known to the scheduler");
  return MakeReport(*it->second);
}

std::vector<NodeReport> Scheduler::Reports() const {
  std::vector<NodeReport> out;
  {
    std::lock_guard lock(mu_);
    out.reserve(nodes_.size());
    for (const auto& n : nodes_) out.push_back(MakeReport(*n));
  }
  std::sort(out.begin(), out.end(), [](const NodeReport& a, const NodeReport& b) { return a.name < b.name; });
  return out;
}

size_t Scheduler::node_count() const {
  std::lock_guard lock(mu_);
  return nodes_.size();
}

size_t Scheduler::claim_count() const {
  std::lock_guard lock(mu_);
  return claims_.size();
}

Scheduler::Stats Scheduler::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

}  // namespace berth::sched
