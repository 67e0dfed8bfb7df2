// Snapshot templates and clone restores (fast start).
//
// A template is one function's guest booted to the agent's hello, with the
// function's root filesystem mounted (a prepare-only Exec: under TCG the
// ext4 mount is a large part of a first call), saved with virDomainSave.
// Since the guest's memory then holds a mounted filesystem, the disk must be
// the one of that instant: the template keeps a copy of its overlay as it
// was at the save (tpl-<key>.disk), and every clone's overlay is replaced by
// a copy of it before the restore. A clone is the save image with a header
// whose domain XML carries the clone's own name, UUID, title, metadata,
// overlay disk and console log, restored as an independent running domain.
// One clone at a time per template restores from the template's own file,
// its header rewritten for the restore and put back right after (libvirt has
// read it by then): no copy of the image. Clones that start while one does
// restore from a spare copy (tpl-<key>.spare<N>) in the same way; a clone
// that finds none free copies the image, and the copy stays as a spare
// (up to TemplateOptions::spare_images), so a burst of N concurrent starts
// copies at most N-1 times and the next burst not at all. Clones whose
// header does not fit restore from a copy of their own (tplclone-*.save).
// Before the save the guest drops its caches and zero-fills its free memory
// (ExecMsg::release_memory), so the image holds little more than used pages;
// then it reads the entrypoint's files back into the page cache (ExecMsg::argv
// with prepare_only), so a clone's first call does not read them from disk.
//
// Storage, all in the node's pool and all through libvirt, so templates work
// on remote nodes and are found again after a berthd restart:
//   tpl-<key>.save           the save image (virDomainSave writes it into the pool's directory)
//   tpl-<key>.disk           the template's qcow2 overlay (over the function's image) at the save
//   tpl-<key>.json           the record (TemplateInfo as JSON); written last, so a template
//                            counts only once both exist and the save image is complete
//   tpl-<key>.spare<N>       spare copies of the save image for concurrent clones (N from 1);
//                            their header is whichever clone used them last, and only
//                            spares this process made are used (older ones are replaced)
//   tplclone-<domain>.save   a clone's copy of the save image, only while its restore runs
// While a template builds: domain berth-tpl-<key16>, overlay tpl-<key16>.qcow2
// (pool) and console log tpl-<key16>.console.log (pool); all removed
// when the build ends, whatever its outcome.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/env.h"
#include "common/status.h"
#include "guest/protocol.h"
#include "hypervisor/agent_client.h"
#include "hypervisor/domain_spec.h"
#include "hypervisor/save_image.h"
#include "images/image_store.h"
#include "manager/node.h"
#include "manager/runtime.h"
#include "manager/types.h"

namespace berth::manager {

// Bumped whenever what a template holds, or how it is built, changes: old
// templates then stop matching any key and Prune removes them.
// 2: the root filesystem is mounted before the save, and the template keeps
// its disk state (tpl-<key>.disk) for its clones.
// 3: the guest drops its caches and zero-fills its free memory before the
// save (ExecMsg::release_memory), so the save image holds only used pages.
// 4: then the entrypoint's files (executable, interpreter, libraries) are
// read back into the page cache (ExecMsg::argv with prepare_only).
inline constexpr uint32_t kTemplateFormatVersion = 4;

// Everything a saved guest depends on. Two guests with equal inputs are
// interchangeable; any difference gives another key.
struct TemplateKeyInputs {
  std::string tenant;
  std::string function;
  int64_t function_version = 0;
  std::string image;             // sha256 of the root filesystem image
  std::string kernel_sha256;     // the runtime (manager/runtime.h)
  std::string initrd_sha256;
  std::string accel;             // "kvm" | "tcg"
  std::string cpu_model;         // hv::NodeInfo::cpu_model of the node
  uint64_t hypervisor_version = 0;  // QEMU version: a save stream is read by the QEMU that wrote it
  std::string machine;           // e.g. "q35"
  uint32_t vcpus = 0;
  uint64_t memory_mib = 0;
  std::string cmdline;           // kernel command line
  uint32_t format_version = kTemplateFormatVersion;
  // Networked functions (issue 8): the mode ("egress" | "isolated"); the
  // template then has one NIC on the tenant's network, which every clone
  // gets with its own MAC and filter (CloneRequest::nics) and brings up with
  // a lease of its own after the restore (the agent's NetUp). "" for none,
  // and then left out of the key's encoding, so keys of functions without a
  // network are as before.
  std::string network;
};

// 64 lowercase hex characters: sha256 over a canonical encoding of every field.
std::string ComputeTemplateKey(const TemplateKeyInputs& inputs);

std::string TemplateSaveVolumeName(const std::string& key);    // tpl-<key>.save
std::string TemplateRecordVolumeName(const std::string& key);  // tpl-<key>.json
std::string TemplateDomainName(const std::string& key);        // berth-tpl-<key16>
std::string CloneSaveVolumeName(const std::string& domain);    // tplclone-<domain>.save
std::string TemplateSpareVolumeName(const std::string& key, int n);  // tpl-<key>.spare<n>, n >= 1

// The Exec that prepares a guest for `spec`'s calls without running anything:
// the root filesystem mounted, the entrypoint's files read into the page
// cache (prepare_only with argv, env and cwd). Template builds and warm-pool
// VMs send it.
agent::ExecMsg PrepareRootfsMsg(const FunctionSpec& spec);
std::string TemplateDiskVolumeName(const std::string& key);    // tpl-<key>.disk

// Destroys template-build domains (and their build volumes) that a crashed
// berthd left on this node's pool; runs when the node is prepared.
void RemoveStaleTemplateBuilds(Node& node);

// A built template, as recorded in tpl-<key>.json.
struct TemplateInfo {
  std::string key;
  TemplateKeyInputs inputs;   // includes the accel and CPU model it was built for
  std::string save_volume;    // tpl-<key>.save in the node's pool
  std::string save_path;      // its path on the node
  uint64_t save_bytes = 0;    // size of the complete save image
  std::string disk_volume;    // tpl-<key>.disk in the node's pool
  uint64_t disk_bytes = 0;
  int64_t built_unix_ms = 0;
  int64_t build_ms = 0;       // boot -> hello -> saved
};

// The identity of one clone. The caller creates the overlay (a qcow2 volume
// backed by the function's image, as for a cold boot) and owns it, the
// console log and the running domain afterwards.
struct CloneRequest {
  std::string domain;            // new domain name, e.g. berth-<execution id>
  std::string uuid;              // new UUID; "" lets libvirt choose
  std::string title;
  hv::DomainMetadata metadata;
  // Path on the node of the clone's overlay attached as vda: a volume of the
  // node's pool, whose content StartClone replaces with the template's disk
  // state (a qcow2 overlay over the same image).
  std::string overlay_path;
  std::string console_log_path;  // path on the node of the serial console log
  // The clone's NICs, required for a networked template: one, with a fresh
  // MAC and its filter (Networks::Acquire). The clone's guest still has the
  // template's MAC until the host's NetUp gives it this one.
  std::vector<hv::NicSpec> nics;
};

// The NIC of a networked function's template build guest, and how to give
// it back once the build domain is gone (see TemplateCache::Ensure).
struct BuildNic {
  hv::NicSpec nic;
  std::function<void()> release;
};
using BuildNicSource = std::function<Result<BuildNic>()>;

// A started clone: running, and its agent answered Hello (so it has mixed
// fresh host entropy into its RNG and set its clock).
struct CloneStart {
  std::unique_ptr<hv::AgentClient> agent;
  agent::HelloMsg hello;
  int64_t copy_ms = 0;     // clone's overlay written, save image (copied or not) given the clone's header
  bool in_place = false;   // restored from the template's own save image or a spare copy (no copy now)
  int spare = 0;           // the spare copy restored from or made (tpl-<key>.spare<N>); 0: none
  int64_t restore_ms = 0;  // virDomainRestore
  int64_t hello_ms = 0;    // restore done -> agent hello
};

struct TemplateOptions {
  std::string kernel_cmdline = hv::kDefaultKernelCmdline;  // keep equal to the executor's
  std::string machine = "q35";
  int64_t boot_timeout_ms = 120'000;    // template domain start -> agent hello
  int64_t save_timeout_ms = 120'000;    // virDomainSave
  int64_t restore_timeout_ms = 60'000;  // virDomainRestore of a clone
  int64_t hello_timeout_ms = 30'000;    // restored clone -> agent hello
  // Spare copies of each template's save image kept for clones that start
  // while another restores (disk: this many times the save image per
  // template; 0: every concurrent clone copies and deletes its copy).
  int spare_images = 3;
};

// The templates of one node. Thread-safe.
class TemplateCache {
 public:
  // `node` must be prepared (Node::Prepare) with `runtime` and outlive the cache.
  TemplateCache(Env* env, Node& node, RuntimeArtifacts runtime, TemplateOptions options = {});
  ~TemplateCache();
  TemplateCache(const TemplateCache&) = delete;
  TemplateCache& operator=(const TemplateCache&) = delete;

  // The key of `fn` with `image` on this node.
  TemplateKeyInputs KeyInputsFor(const FunctionRecord& fn, const images::ImageRecord& image) const;
  std::string KeyFor(const FunctionRecord& fn, const images::ImageRecord& image) const;

  // Returns the template of `fn`, building it when the node has none. Calls
  // for the same key share one build; a failed build returns its error
  // (ResourceExhausted when the node lacks the memory for the build guest,
  // DeadlineExceeded when it did not reach hello in time, ...) and leaves
  // nothing behind, and a later call tries again. Every wait is bounded.
  // A networked function's build guest gets its NIC from `nic` (called only
  // when this call builds; FailedPrecondition without one).
  Result<TemplateInfo> Ensure(const FunctionRecord& fn, const images::ImageRecord& image, BuildNicSource nic = {});

  // The template of `key` (from memory, else from the pool). NotFound if the
  // node has none or only an incomplete one (no record: its build did not
  // finish); FailedPrecondition if the pool holds a damaged one (size or
  // header not as recorded), which the next Ensure replaces.
  Result<TemplateInfo> Lookup(const std::string& key);

  // Forgets the template and deletes its volumes; the next Ensure rebuilds it.
  // A template that is building is left to its build.
  Status Invalidate(const std::string& key);

  // Deletes every template whose key is not in `live_keys` (e.g. the old
  // version's after a function update), leftovers of interrupted builds, and
  // clone save volumes no StartClone is using. Returns the removed keys.
  Result<std::vector<std::string>> Prune(const std::set<std::string>& live_keys);

  // Keys of the complete templates in the node's pool.
  Result<std::vector<std::string>> ListKeys();

  // Restores a clone of template `key` as domain `request.domain` and waits
  // for its agent's hello. NotFound without such a template;
  // FailedPrecondition when the template was built for another accel or CPU
  // model than this node's (it is left alone; the key differs anyway). A
  // corrupt or truncated save image fails within the bounded timeouts
  // (TemplateOptions), and the template is invalidated; so is it when the
  // restore or the clone's hello fails for any other reason, since the
  // template cannot be told apart from the cause. On failure nothing of the clone is left
  // (no domain, no clone save volume); the caller's overlay and console log
  // remain the caller's.
  Result<CloneStart> StartClone(const std::string& key, const CloneRequest& request);

 private:
  struct Entry {
    TemplateInfo info;
    hv::SaveImageHeader header;  // of the save image, parsed once
    // The save image's first header.stream_offset() bytes as built: put back
    // after a clone restored from the template's own file (StartClone).
    std::shared_ptr<const std::string> header_bytes;
    std::shared_ptr<const std::string> disk;  // tpl-<key>.disk, read once
  };

  Result<Entry> LoadFromPool(const std::string& key);
  Result<Entry> Build(const TemplateKeyInputs& inputs, const std::string& key, const FunctionRecord& fn,
                      const images::ImageRecord& image, const BuildNicSource& nic);
  Result<Entry> BuildAndSave(const TemplateKeyInputs& inputs, const std::string& key, const FunctionRecord& fn,
                             const images::ImageRecord& image, int64_t t0, const hv::NicSpec* nic);
  Status RemoveVolumes(const std::string& key);
  // Writes `bytes` at the start of the save volume, retrying for up to 30 s
  // while libvirt refuses (a copy of the volume runs).
  Status WriteSaveHeader(const std::string& save_volume, const std::string& bytes);
  // Puts a template's header back after an in-place clone (`bytes` into its
  // save volume) and frees the in-place slot; false if the write failed.
  bool PutHeaderBack(const std::string& key, const std::string& save_volume, const std::string& bytes);
  // PutHeaderBack in a background thread (the destructor waits for it), then
  // invalidates the template if the header could not be written.
  void PutHeaderBackLater(const std::string& key, const std::string& save_volume,
                          std::shared_ptr<const std::string> bytes);
  Status RefreshPool();
  Status CheckNodeMatches(const Entry& entry) const;
  std::string AccelName() const;

  Env* env_;
  Node& node_;
  RuntimeArtifacts runtime_;
  TemplateOptions options_;

  std::mutex mu_;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::shared_future<Result<TemplateInfo>>> building_;
  std::set<std::string> invalidated_while_building_;  // keys Invalidate named during their build
  std::set<std::string> clones_in_flight_;  // clone save volume names
  std::set<std::string> in_place_;          // keys whose own save image a clone is restoring from
  std::set<std::string> in_place_writing_;  // ... and is writing its header into (copies wait)
  std::condition_variable in_place_cv_;
  int background_ = 0;  // PutHeaderBackLater threads still running
  std::condition_variable background_cv_;
  std::map<std::string, int> copying_;      // key -> clones copying its save image now
  // Spare copies of each template's save image (index N-1: tpl-<key>.spareN).
  // A new generation whenever the key's spares are forgotten (Invalidate), so
  // that a clone finishing late does not mark a spare of the next template.
  enum class SpareState { kAbsent, kFree, kBusy };  // kBusy: a clone fills or restores from it
  struct Spares {
    uint64_t generation = 0;
    std::vector<SpareState> states;
  };
  std::map<std::string, Spares> spares_;
  uint64_t next_spare_generation_ = 1;
};

// --- Live fork (issue 6, item 5): a running guest's current memory and disk
// state cloned into a new, independent child domain.
//
// The parent is paused; its memory and device state are written to
// lfork-<child domain>.save in the node's pool (Hypervisor::SaveDomainMemory:
// the parent keeps its QEMU process, its agent connection and the command it
// runs); its overlay is copied to the child's overlay; then the parent is
// resumed (on every path, also when a step failed). The child restores from
// the save image with a rewritten header (RewriteDomainIdentity: new name,
// UUID, title, metadata, overlay, console log; the agent channel socket is
// libvirt's own per domain) and its agent gets a Hello with fresh entropy and
// clock plus the parent's pid, which it tells the processes inside
// (/run/berth/forked, BERTH_FORKED_FROM).
//
// Disk: the parent's overlay keeps changing after resume, so the child needs
// the state of the instant of the pause. Copying the overlay while paused
// (QEMU drained and flushed the disk on pause, so the qcow2 file is
// consistent) was chosen over an external disk snapshot (parent continues on
// a new overlay backed by the frozen one): the copy keeps every execution's
// disk a single ovl-<id>.qcow2 over the image, so teardown, restart sweeps
// and further forks of either side need no shared, reference-counted frozen
// layers whose lifetime spans several executions. The cost is the overlay's
// size (only what the guest wrote: small for these guests) while paused;
// kMaxLiveForkOverlayBytes bounds it.
inline constexpr uint64_t kMaxLiveForkOverlayBytes = 1ull << 30;

std::string LiveForkSaveVolumeName(const std::string& child_domain);  // lfork-<domain>.save

struct LiveForkRequest {
  std::string parent_domain;
  std::string parent_overlay_volume;  // the parent's vda, a qcow2 volume in the node's pool
  int64_t parent_pid = 0;
  std::string child_execution_id;
  // The child's identity; overlay_path is filled in from child_overlay_volume.
  CloneRequest child;
  // Created here as a copy of the parent's overlay; the caller owns it
  // afterwards, also on failure (it may exist then).
  std::string child_overlay_volume;
  // A networked parent: the child's own MAC (child.nics), applied with a
  // fresh lease (agent NetUp) before the Hello that tells the child's
  // processes they were forked, so they never see the parent's address.
  std::string net_up_mac;
  int64_t net_up_timeout_ms = 15'000;
};

struct LiveForkStart {
  std::unique_ptr<hv::AgentClient> agent;  // hello done: the child knows it is a child
  agent::HelloMsg hello;
  int64_t paused_ms = 0;   // parent paused -> resumed
  int64_t save_ms = 0;     // memory + device state written
  int64_t disk_ms = 0;     // overlay copied
  int64_t restore_ms = 0;  // header rewritten, child restored
  int64_t hello_ms = 0;    // child restored -> agent hello
  std::optional<agent::NetReadyMsg> lease;  // with net_up_mac: the child's lease
};

// Forks the running domain `request.parent_domain` on `node` (see above).
// On failure the parent runs on as before and nothing of the child is left
// but its overlay volume (the caller's). Bounded by options' save, restore
// and hello timeouts.
Result<LiveForkStart> LiveFork(Env* env, Node& node, const LiveForkRequest& request,
                               const TemplateOptions& options = {});

}  // namespace berth::manager
