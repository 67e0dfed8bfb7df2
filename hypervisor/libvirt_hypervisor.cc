// Hypervisor over the libvirt C API. One connection per node, reopened when
// libvirtd goes away (keepalive detects it); every libvirt failure is read
// from virGetLastError right away and mapped to a Status.
#include <fcntl.h>
#include <unistd.h>

#include <cctype>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <sstream>
#include <thread>

#include <algorithm>
#include <pugixml.hpp>
#include <vector>

#include "common/sha256.h"
#include "hypervisor/domain_xml.h"
#include "hypervisor/hypervisor.h"
#include "hypervisor/libvirt_util.h"
#include "hypervisor/network_xml.h"
#include "hypervisor/nwfilter_xml.h"
#include "hypervisor/storage_xml.h"

namespace berth::hv {
namespace {

using SharedConn = std::shared_ptr<virConnect>;

std::string HowToStart(const std::string& uri) {
  if (uri.rfind("qemu:///", 0) == 0) {
    return " (is libvirtd running? start it with: virtlogd -d && libvirtd -d)";
  }
  return " (is libvirtd on that host running and listening?)";
}

// ---------------------------------------------------------------------------
// Agent channel over a non-blocking virStream; the libvirt event loop thread
// drains readable data into a frame decoder, callers wait on a condvar.

struct ChannelState {
  std::mutex mu;
  std::condition_variable cv;
  agent::FrameDecoder decoder;
  bool closed = false;
  std::string close_reason;
};

void StreamEvent(virStreamPtr st, int events, void* opaque) {
  auto& state = **static_cast<std::shared_ptr<ChannelState>*>(opaque);
  bool closed = false;
  std::string reason;
  if (events & VIR_STREAM_EVENT_READABLE) {
    char buf[65536];
    for (;;) {
      int n = virStreamRecv(st, buf, sizeof buf);
      if (n > 0) {
        std::lock_guard lock(state.mu);
        state.decoder.Feed(std::string_view(buf, static_cast<size_t>(n)));
        continue;
      }
      if (n == -2) break;  // drained
      closed = true;
      reason = n == 0 ? "agent channel closed by the guest side" : LastLibvirtError("agent channel").message();
      break;
    }
  }
  if (events & (VIR_STREAM_EVENT_ERROR | VIR_STREAM_EVENT_HANGUP)) {
    closed = true;
    if (reason.empty()) reason = "agent channel hung up";
  }
  if (closed) virStreamEventUpdateCallback(st, 0);
  {
    std::lock_guard lock(state.mu);
    if (closed && !state.closed) {
      state.closed = true;
      state.close_reason = reason;
    }
  }
  state.cv.notify_all();
}

void FreeStreamOpaque(void* opaque) { delete static_cast<std::shared_ptr<ChannelState>*>(opaque); }

class LibvirtAgentChannel final : public AgentChannel {
 public:
  LibvirtAgentChannel(SharedConn conn, StreamHandle stream, std::shared_ptr<ChannelState> state)
      : conn_(std::move(conn)), stream_(std::move(stream)), state_(std::move(state)) {}
  ~LibvirtAgentChannel() override { Close(); }

  Status Send(agent::MsgType type, std::string_view payload) override {
    std::string bytes = agent::EncodeFrame(type, payload);
    std::lock_guard send_lock(send_mu_);
    if (!stream_) return Status::Unavailable("agent channel is closed");
    size_t off = 0;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (off < bytes.size()) {
      {
        std::lock_guard lock(state_->mu);
        if (state_->closed) return Status::Unavailable(state_->close_reason);
      }
      int n = virStreamSend(stream_.get(), bytes.data() + off, bytes.size() - off);
      if (n > 0) {
        off += static_cast<size_t>(n);
      } else if (n == -2) {
        if (std::chrono::steady_clock::now() > deadline) {
          return Status::DeadlineExceeded("agent channel did not accept data for 30 s");
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      } else {
        return LastLibvirtError("sending to agent").WithContext("agent channel");
      }
    }
    return Status::Ok();
  }

  Result<agent::Frame> Receive(int64_t timeout_ms) override {
    std::unique_lock lock(state_->mu);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      if (auto frame = state_->decoder.Next()) return std::move(*frame);
      if (!state_->decoder.error().empty()) {
        return Status::Internal("agent protocol error: " + state_->decoder.error());
      }
      if (state_->closed) return Status::Unavailable(state_->close_reason);
      if (state_->cv.wait_until(lock, deadline) == std::cv_status::timeout) {
        if (auto frame = state_->decoder.Next()) return std::move(*frame);
        return Status::DeadlineExceeded("no message from the agent within " + std::to_string(timeout_ms) + " ms");
      }
    }
  }

  void Close() override {
    std::lock_guard send_lock(send_mu_);
    if (!stream_) return;
    virStreamEventRemoveCallback(stream_.get());
    virStreamAbort(stream_.get());
    virResetLastError();
    stream_.reset();
    std::lock_guard lock(state_->mu);
    state_->closed = true;
    if (state_->close_reason.empty()) state_->close_reason = "agent channel closed";
    state_->cv.notify_all();
  }

 private:
  SharedConn conn_;  // keeps the connection alive as long as the stream
  std::mutex send_mu_;
  StreamHandle stream_;
  std::shared_ptr<ChannelState> state_;
};

// ---------------------------------------------------------------------------

// The local file of an upload as virStreamSparseSendAll reads it: data
// sections by read(2), holes found with SEEK_DATA/SEEK_HOLE (a file system
// without them reports one data section) and skipped with lseek. `error`
// keeps the errno of a failed read or seek for the caller's message.
struct UploadSource {
  static constexpr off_t kReadAhead = 16 << 20;  // asked of the kernel ahead of the sender
  int fd;
  off_t size;
  off_t advised = 0;  // WILLNEED given up to here
  int error = 0;

  static int Read(virStreamPtr, char* data, size_t nbytes, void* opaque) {
    auto* s = static_cast<UploadSource*>(opaque);
    const off_t pos = ::lseek(s->fd, 0, SEEK_CUR);
    if (pos >= 0 && pos + kReadAhead / 2 > s->advised) {
      (void)::posix_fadvise(s->fd, pos, kReadAhead, POSIX_FADV_WILLNEED);
      s->advised = pos + kReadAhead;
    }
    for (;;) {
      ssize_t n = ::read(s->fd, data, nbytes);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) s->error = errno;
      return static_cast<int>(n);
    }
  }
  static int Hole(virStreamPtr, int* in_data, long long* length, void* opaque) {
    auto* s = static_cast<UploadSource*>(opaque);
    const off_t cur = ::lseek(s->fd, 0, SEEK_CUR);
    if (cur < 0) return s->Fail();
    if (cur >= s->size) {  // the end: no more sections
      *in_data = 0;
      *length = 0;
      return 0;
    }
    off_t data = ::lseek(s->fd, cur, SEEK_DATA);
    if (data < 0 && errno == ENXIO) data = s->size;  // a hole up to the end
    if (data < 0) {                                  // no SEEK_DATA here: all data
      *in_data = 1;
      *length = s->size - cur;
    } else if (data > cur) {
      *in_data = 0;
      *length = std::min(data, s->size) - cur;
    } else {
      off_t hole = ::lseek(s->fd, cur, SEEK_HOLE);
      if (hole < 0 || hole > s->size) hole = s->size;
      *in_data = 1;
      *length = hole - cur;
    }
    return ::lseek(s->fd, cur, SEEK_SET) < 0 ? s->Fail() : 0;
  }
  static int Skip(virStreamPtr, long long length, void* opaque) {
    auto* s = static_cast<UploadSource*>(opaque);
    return ::lseek(s->fd, static_cast<off_t>(length), SEEK_CUR) < 0 ? s->Fail() : 0;
  }
  int Fail() {
    error = errno;
    return -1;
  }
};

// NodeInfo::cpu_model from the capabilities XML's <host><cpu>: what a saved
// guest depends on (vendor, model, signature and the feature set).
std::string HostCpuModel(const std::string& caps_xml) {
  pugi::xml_document doc;
  if (caps_xml.empty() || !doc.load_string(caps_xml.c_str())) return "";
  pugi::xml_node cpu = doc.child("capabilities").child("host").child("cpu");
  if (!cpu) return "";
  std::vector<std::string> features;
  for (pugi::xml_node f : cpu.children("feature")) features.emplace_back(f.attribute("name").as_string());
  std::sort(features.begin(), features.end());
  std::string joined;
  for (const auto& f : features) joined += f + ",";
  pugi::xml_node sig = cpu.child("signature");
  std::string out = std::string(cpu.child("vendor").text().get()) + " " + cpu.child("model").text().get() + " (" +
                    cpu.child("arch").text().get();
  if (sig) {
    out += ", family " + std::string(sig.attribute("family").as_string()) + " model " +
           sig.attribute("model").as_string() + " stepping " + sig.attribute("stepping").as_string();
  }
  return out + ", features " + Sha256::HexOf(joined).substr(0, 12) + ")";
}

class LibvirtHypervisor final : public Hypervisor {
 public:
  LibvirtHypervisor(std::string uri, SharedConn conn) : uri_(std::move(uri)), conn_(std::move(conn)) {}

  const std::string& uri() const override { return uri_; }

  Result<NodeInfo> GetNodeInfo() override {
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    NodeInfo info;
    info.uri = uri_;
    virNodeInfo ni;
    if (virNodeGetInfo(conn.get(), &ni) < 0) return LastLibvirtError("virNodeGetInfo");
    info.cpus = ni.cpus;
    info.memory_mib = ni.memory / 1024;
    info.hostname = TakeString(virConnectGetHostname(conn.get()));
    virResetLastError();
    const char* type = virConnectGetType(conn.get());
    info.hypervisor_type = type ? type : "";
    unsigned long hv_version = 0, lib_version = 0;
    if (virConnectGetVersion(conn.get(), &hv_version) == 0) info.hypervisor_version = hv_version;
    if (virConnectGetLibVersion(conn.get(), &lib_version) == 0) info.libvirt_version = lib_version;
    char* caps = virConnectGetDomainCapabilities(conn.get(), nullptr, "x86_64", nullptr, "kvm", 0);
    info.kvm_available = caps != nullptr;
    TakeString(caps);
    virResetLastError();
    info.cpu_model = HostCpuModel(TakeString(virConnectGetCapabilities(conn.get())));
    virResetLastError();
    return info;
  }

  Status EnsureDirPool(const std::string& pool_name, const std::string& dir) override {
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    PoolHandle pool(virStoragePoolLookupByName(conn.get(), pool_name.c_str()));
    if (!pool) {
      virResetLastError();
      pool.reset(virStoragePoolDefineXML(conn.get(), DirPoolXml(pool_name, dir).c_str(), 0));
      if (!pool) return LastLibvirtError("defining storage pool '" + pool_name + "'");
      if (virStoragePoolBuild(pool.get(), 0) < 0) return LastLibvirtError("building storage pool '" + pool_name + "'");
      virStoragePoolSetAutostart(pool.get(), 1);
    }
    int active = virStoragePoolIsActive(pool.get());
    if (active < 0) return LastLibvirtError("storage pool '" + pool_name + "'");
    if (active == 0 && virStoragePoolCreate(pool.get(), 0) < 0) {
      return LastLibvirtError("starting storage pool '" + pool_name + "'");
    }
    return Status::Ok();
  }

  Result<VolumeInfo> LookupVolume(const std::string& pool_name, const std::string& name) override {
    BERTH_ASSIGN_OR_RETURN(PoolHandle pool, Pool(pool_name));
    VolHandle vol(virStorageVolLookupByName(pool.get(), name.c_str()));
    if (!vol) return LastLibvirtError("volume '" + name + "' in pool '" + pool_name + "'");
    return Describe(pool_name, vol.get());
  }

  Result<VolumeInfo> UploadVolume(const std::string& pool_name, const std::string& name,
                                  const std::string& local_path, const std::string& format) override {
    int fd = ::open(local_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return Status::NotFound("cannot open " + local_path + ": " + std::strerror(errno));
    struct FdCloser {
      int fd;
      ~FdCloser() { ::close(fd); }
    } closer{fd};
    off_t size = ::lseek(fd, 0, SEEK_END);
    ::lseek(fd, 0, SEEK_SET);

    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    BERTH_ASSIGN_OR_RETURN(PoolHandle pool, Pool(pool_name));
    // A raw volume of the file's size: upload overwrites every byte, and the
    // format is recorded by berth, never probed from the content.
    VolHandle vol(virStorageVolCreateXML(
        pool.get(), VolumeXml(name, "raw", static_cast<uint64_t>(size)).c_str(), 0));
    if (!vol) return LastLibvirtError("creating volume '" + name + "'");
    auto fail = [&](Status s) {
      virStorageVolDelete(vol.get(), 0);
      virResetLastError();
      return s;
    };
    StreamHandle st(virStreamNew(conn.get(), 0));
    if (!st) return fail(LastLibvirtError("virStreamNew"));
    // A sparse stream: the file's holes travel as hole lengths, not zeros,
    // and the node's volume keeps them.
    if (virStorageVolUpload(vol.get(), st.get(), 0, static_cast<unsigned long long>(size),
                            VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM) < 0) {
      return fail(LastLibvirtError("uploading volume '" + name + "'"));
    }
    // The kernel reads ahead of the sender, so a file that is not in the page
    // cache (uploads are written around it) streams at the disk's pace.
    (void)::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    UploadSource source{fd, size};
    if (virStreamSparseSendAll(st.get(), &UploadSource::Read, &UploadSource::Hole, &UploadSource::Skip, &source) < 0) {
      Status s = source.error != 0 ? Status::Internal("reading " + local_path + ": " + std::strerror(source.error))
                                   : LastLibvirtError("streaming volume '" + name + "'");
      virStreamAbort(st.get());
      return fail(s);
    }
    if (virStreamFinish(st.get()) < 0) return fail(LastLibvirtError("finishing upload of '" + name + "'"));
    auto info = Describe(pool_name, vol.get());
    if (info.ok()) info->format = format;
    return info;
  }

  Result<VolumeInfo> CreateOverlay(const std::string& pool_name, const std::string& name,
                                   const VolumeInfo& backing, uint64_t capacity_bytes) override {
    BERTH_ASSIGN_OR_RETURN(PoolHandle pool, Pool(pool_name));
    uint64_t capacity = capacity_bytes ? capacity_bytes : backing.capacity_bytes;
    std::string xml = OverlayVolumeXml(name, capacity, backing.path, backing.format);
    VolHandle vol(virStorageVolCreateXML(pool.get(), xml.c_str(), 0));
    if (!vol) return LastLibvirtError("creating overlay volume '" + name + "'");
    auto info = Describe(pool_name, vol.get());
    if (info.ok()) info->format = "qcow2";
    return info;
  }

  Result<std::string> DownloadVolumeTail(const std::string& pool_name, const std::string& name,
                                         uint64_t max_bytes) override {
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    BERTH_ASSIGN_OR_RETURN(PoolHandle pool, Pool(pool_name));
    virStoragePoolRefresh(pool.get(), 0);
    VolHandle vol(virStorageVolLookupByName(pool.get(), name.c_str()));
    if (!vol) return LastLibvirtError("volume '" + name + "'");
    virStorageVolInfo vi;
    if (virStorageVolGetInfo(vol.get(), &vi) < 0) return LastLibvirtError("volume info");
    uint64_t size = vi.capacity;
    uint64_t offset = (max_bytes && size > max_bytes) ? size - max_bytes : 0;
    StreamHandle st(virStreamNew(conn.get(), 0));
    if (!st) return LastLibvirtError("virStreamNew");
    if (virStorageVolDownload(vol.get(), st.get(), offset, size - offset, 0) < 0) {
      return LastLibvirtError("downloading volume '" + name + "'");
    }
    std::string out;
    char buf[65536];
    for (;;) {
      int n = virStreamRecv(st.get(), buf, sizeof buf);
      if (n > 0) {
        out.append(buf, static_cast<size_t>(n));
        continue;
      }
      if (n == 0) break;
      Status s = LastLibvirtError("downloading volume '" + name + "'");
      virStreamAbort(st.get());
      return s;
    }
    virStreamFinish(st.get());
    virResetLastError();
    return out;
  }

  Status DeleteVolume(const std::string& pool_name, const std::string& name) override {
    auto pool = Pool(pool_name);
    if (!pool.ok()) return pool.status();
    VolHandle vol(virStorageVolLookupByName(pool->get(), name.c_str()));
    if (!vol) {
      // Files QEMU created (console logs) are unknown to libvirt until a refresh.
      virResetLastError();
      virStoragePoolRefresh(pool->get(), 0);
      vol.reset(virStorageVolLookupByName(pool->get(), name.c_str()));
      if (!vol) {
        Status s = LastLibvirtError("volume '" + name + "'");
        return s.code() == Code::kNotFound ? Status::Ok() : s;
      }
    }
    if (virStorageVolDelete(vol.get(), 0) < 0) return LastLibvirtError("deleting volume '" + name + "'");
    return Status::Ok();
  }

  Result<std::vector<VolumeInfo>> ListVolumes(const std::string& pool_name) override {
    BERTH_ASSIGN_OR_RETURN(PoolHandle pool, Pool(pool_name));
    virStorageVolPtr* vols = nullptr;
    int n = virStoragePoolListAllVolumes(pool.get(), &vols, 0);
    if (n < 0) return LastLibvirtError("listing volumes of '" + pool_name + "'");
    std::vector<VolumeInfo> out;
    for (int i = 0; i < n; ++i) {
      VolHandle vol(vols[i]);
      auto info = Describe(pool_name, vol.get());
      if (info.ok()) out.push_back(std::move(*info));
    }
    std::free(vols);
    return out;
  }

  Status RefreshPool(const std::string& pool_name) override {
    BERTH_ASSIGN_OR_RETURN(PoolHandle pool, Pool(pool_name));
    if (virStoragePoolRefresh(pool.get(), 0) < 0) return LastLibvirtError("refreshing pool '" + pool_name + "'");
    return Status::Ok();
  }

  Result<PoolInfo> GetPoolInfo(const std::string& pool_name) override {
    BERTH_ASSIGN_OR_RETURN(PoolHandle pool, Pool(pool_name));
    virStoragePoolInfo info{};
    if (virStoragePoolGetInfo(pool.get(), &info) < 0) {
      return LastLibvirtError("space of storage pool '" + pool_name + "'");
    }
    PoolInfo out;
    out.capacity_bytes = info.capacity;
    out.allocation_bytes = info.allocation;
    out.available_bytes = info.available;
    return out;
  }

  Status StartDomain(const DomainSpec& spec) override {
    BERTH_ASSIGN_OR_RETURN(std::string xml, WriteDomainXml(spec));
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    DomainHandle dom(virDomainCreateXML(conn.get(), xml.c_str(), 0));
    if (!dom) return LastLibvirtError("starting domain '" + spec.name + "'");
    return Status::Ok();
  }

  Status DestroyDomain(const std::string& name) override {
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    DomainHandle dom(virDomainLookupByName(conn.get(), name.c_str()));
    if (!dom) {
      Status s = LastLibvirtError("domain '" + name + "'");
      return s.code() == Code::kNotFound ? Status::Ok() : s;
    }
    if (virDomainDestroy(dom.get()) < 0) {
      Status s = LastLibvirtError("destroying domain '" + name + "'");
      // It may have powered off on its own between lookup and destroy.
      if (s.code() == Code::kFailedPrecondition || s.code() == Code::kNotFound) return Status::Ok();
      return s;
    }
    return Status::Ok();
  }

  Status ShutdownDomain(const std::string& name) override {
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    DomainHandle dom(virDomainLookupByName(conn.get(), name.c_str()));
    if (!dom) {
      Status s = LastLibvirtError("domain '" + name + "'");
      return s.code() == Code::kNotFound ? Status::Ok() : s;
    }
    if (virDomainShutdownFlags(dom.get(), VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN) < 0) {
      Status s = LastLibvirtError("shutting down domain '" + name + "'");
      if (s.code() == Code::kFailedPrecondition || s.code() == Code::kNotFound) return Status::Ok();
      return s;
    }
    return Status::Ok();
  }

  Result<std::vector<std::string>> ListDomains(const std::string& prefix) override {
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    virDomainPtr* doms = nullptr;
    int n = virConnectListAllDomains(conn.get(), &doms, VIR_CONNECT_LIST_DOMAINS_ACTIVE);
    if (n < 0) return LastLibvirtError("listing domains");
    return TakeNamesWithPrefix(doms, n, prefix, virDomainGetName, virDomainFree);
  }

  Result<std::string> GetDomainXml(const std::string& name) override {
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    DomainHandle dom(virDomainLookupByName(conn.get(), name.c_str()));
    if (!dom) return LastLibvirtError("domain '" + name + "'");
    char* xml = virDomainGetXMLDesc(dom.get(), 0);
    if (!xml) return LastLibvirtError("dumpxml '" + name + "'");
    return TakeString(xml);
  }

  Status SetDomainMetadata(const std::string& name, const DomainMetadata& metadata) override {
    BERTH_RETURN_IF_ERROR(ValidateDomainMetadata(metadata));
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    DomainHandle dom(virDomainLookupByName(conn.get(), name.c_str()));
    if (!dom) return LastLibvirtError("domain '" + name + "'");
    if (virDomainSetMetadata(dom.get(), VIR_DOMAIN_METADATA_ELEMENT, MetadataXml(metadata).c_str(), kMetadataKey,
                             kMetadataNamespace, VIR_DOMAIN_AFFECT_LIVE) < 0) {
      return LastLibvirtError("setting the metadata of domain '" + name + "'");
    }
    return Status::Ok();
  }

  Status SaveDomain(const std::string& name, const std::string& path) override {
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    DomainHandle dom(virDomainLookupByName(conn.get(), name.c_str()));
    if (!dom) return LastLibvirtError("domain '" + name + "'");
    if (virDomainSave(dom.get(), path.c_str()) < 0) return LastLibvirtError("saving domain '" + name + "'");
    return Status::Ok();
  }

  Status RestoreDomain(const std::string& path) override {
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    if (virDomainRestoreFlags(conn.get(), path.c_str(), nullptr, VIR_DOMAIN_SAVE_RUNNING) < 0) {
      return LastLibvirtError("restoring " + path);
    }
    return Status::Ok();
  }

  Status SuspendDomain(const std::string& name) override {
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    DomainHandle dom(virDomainLookupByName(conn.get(), name.c_str()));
    if (!dom) return LastLibvirtError("domain '" + name + "'");
    if (virDomainSuspend(dom.get()) < 0) return LastLibvirtError("pausing domain '" + name + "'");
    return Status::Ok();
  }

  Status ResumeDomain(const std::string& name) override {
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    DomainHandle dom(virDomainLookupByName(conn.get(), name.c_str()));
    if (!dom) return LastLibvirtError("domain '" + name + "'");
    if (virDomainResume(dom.get()) < 0) return LastLibvirtError("resuming domain '" + name + "'");
    return Status::Ok();
  }

  Status SaveDomainMemory(const std::string& name, const std::string& path) override {
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    DomainHandle dom(virDomainLookupByName(conn.get(), name.c_str()));
    if (!dom) return LastLibvirtError("domain '" + name + "'");
    // Every disk snapshot='no': only memory + device state go to `path`;
    // libvirt writes it in its save image format.
    char* raw = virDomainGetXMLDesc(dom.get(), 0);
    if (!raw) return LastLibvirtError("dumpxml '" + name + "'");
    pugi::xml_document dom_doc;
    if (!dom_doc.load_string(TakeString(raw).c_str())) return Status::Internal("unparsable XML of domain '" + name + "'");
    pugi::xml_document snap_doc;
    pugi::xml_node root = snap_doc.append_child("domainsnapshot");
    root.append_child("name").text().set("berth-memory");
    pugi::xml_node memory = root.append_child("memory");
    memory.append_attribute("snapshot") = "external";
    memory.append_attribute("file") = path.c_str();
    pugi::xml_node disks = root.append_child("disks");
    for (pugi::xml_node disk : dom_doc.child("domain").child("devices").children("disk")) {
      const char* dev = disk.child("target").attribute("dev").value();
      if (!*dev) continue;
      pugi::xml_node d = disks.append_child("disk");
      d.append_attribute("name") = dev;
      d.append_attribute("snapshot") = "no";
    }
    std::ostringstream xml_out;
    snap_doc.save(xml_out, "", pugi::format_raw | pugi::format_no_declaration);
    const std::string xml = xml_out.str();
    virDomainSnapshotPtr snap =
        virDomainSnapshotCreateXML(dom.get(), xml.c_str(), VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA);
    if (!snap) return LastLibvirtError("saving the memory of domain '" + name + "'");
    virDomainSnapshotFree(snap);
    return Status::Ok();
  }

  Result<DomainState> GetDomainState(const std::string& name) override {
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    DomainHandle dom(virDomainLookupByName(conn.get(), name.c_str()));
    if (!dom) return LastLibvirtError("domain '" + name + "'");
    int state = 0, reason = 0;
    if (virDomainGetState(dom.get(), &state, &reason, 0) < 0) return LastLibvirtError("state of '" + name + "'");
    DomainState out;
    switch (state) {
      case VIR_DOMAIN_RUNNING: out.state = DomainRunState::kRunning; break;
      case VIR_DOMAIN_PAUSED:
        out.state = DomainRunState::kPaused;
        out.reason = reason == VIR_DOMAIN_PAUSED_IOERROR ? "paused: io error"
                     : reason == VIR_DOMAIN_PAUSED_CRASHED ? "paused: guest crashed"
                     : "paused (reason " + std::to_string(reason) + ")";
        break;
      case VIR_DOMAIN_SHUTOFF: out.state = DomainRunState::kShutoff; out.reason = "shut off"; break;
      case VIR_DOMAIN_CRASHED: out.state = DomainRunState::kCrashed; out.reason = "crashed"; break;
      default: out.reason = "state " + std::to_string(state); break;
    }
    return out;
  }

  Result<std::unique_ptr<AgentChannel>> OpenAgentChannel(const std::string& domain,
                                                         const std::string& channel) override {
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    DomainHandle dom(virDomainLookupByName(conn.get(), domain.c_str()));
    if (!dom) return LastLibvirtError("domain '" + domain + "'");
    StreamHandle st(virStreamNew(conn.get(), VIR_STREAM_NONBLOCK));
    if (!st) return LastLibvirtError("virStreamNew");
    if (virDomainOpenChannel(dom.get(), channel.c_str(), st.get(), VIR_DOMAIN_CHANNEL_FORCE) < 0) {
      return LastLibvirtError("opening channel '" + channel + "' of '" + domain + "'");
    }
    auto state = std::make_shared<ChannelState>();
    auto* opaque = new std::shared_ptr<ChannelState>(state);
    int events = VIR_STREAM_EVENT_READABLE | VIR_STREAM_EVENT_ERROR | VIR_STREAM_EVENT_HANGUP;
    if (virStreamEventAddCallback(st.get(), events, StreamEvent, opaque, FreeStreamOpaque) < 0) {
      delete opaque;
      Status s = LastLibvirtError("watching agent channel");
      virStreamAbort(st.get());
      return s;
    }
    return std::unique_ptr<AgentChannel>(new LibvirtAgentChannel(conn, std::move(st), state));
  }

  // --- Volume helpers for snapshot templates and clones (manager/templates.h).

  Result<std::string> GetPoolPath(const std::string& pool_name) override {
    BERTH_ASSIGN_OR_RETURN(PoolHandle pool, Pool(pool_name));
    std::string xml = TakeString(virStoragePoolGetXMLDesc(pool.get(), 0));
    if (xml.empty()) return LastLibvirtError("XML of storage pool '" + pool_name + "'");
    pugi::xml_document doc;
    if (!doc.load_string(xml.c_str())) return Status::Internal("storage pool XML does not parse");
    std::string path = doc.child("pool").child("target").child("path").text().get();
    if (path.empty()) return Status::FailedPrecondition("storage pool '" + pool_name + "' has no target path");
    return path;
  }

  Result<VolumeInfo> CloneVolume(const std::string& pool_name, const std::string& src,
                                 const std::string& dst) override {
    BERTH_ASSIGN_OR_RETURN(PoolHandle pool, Pool(pool_name));
    VolHandle from(virStorageVolLookupByName(pool.get(), src.c_str()));
    if (!from) return LastLibvirtError("volume '" + src + "' in pool '" + pool_name + "'");
    virStorageVolInfo vi;
    if (virStorageVolGetInfo(from.get(), &vi) < 0) return LastLibvirtError("volume info of '" + src + "'");
    std::string xml = VolumeXml(dst, "raw", vi.capacity);
    // A reflink copy is instant where the filesystem has one (btrfs, xfs); else a plain copy.
    VolHandle vol(virStorageVolCreateXMLFrom(pool.get(), xml.c_str(), from.get(), VIR_STORAGE_VOL_CREATE_REFLINK));
    if (!vol) {
      virResetLastError();
      vol.reset(virStorageVolCreateXMLFrom(pool.get(), xml.c_str(), from.get(), 0));
    }
    if (!vol) return LastLibvirtError("copying volume '" + src + "' to '" + dst + "'");
    auto info = Describe(pool_name, vol.get());
    if (info.ok()) info->format = "raw";
    return info;
  }

  Result<std::string> DownloadVolumeRange(const std::string& pool_name, const std::string& name, uint64_t offset,
                                          uint64_t length) override {
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    BERTH_ASSIGN_OR_RETURN(PoolHandle pool, Pool(pool_name));
    VolHandle vol(virStorageVolLookupByName(pool.get(), name.c_str()));
    if (!vol) return LastLibvirtError("volume '" + name + "' in pool '" + pool_name + "'");
    virStorageVolInfo vi;
    if (virStorageVolGetInfo(vol.get(), &vi) < 0) return LastLibvirtError("volume info of '" + name + "'");
    if (offset >= vi.capacity || length == 0) return std::string();
    length = std::min<uint64_t>(length, vi.capacity - offset);
    StreamHandle st(virStreamNew(conn.get(), 0));
    if (!st) return LastLibvirtError("virStreamNew");
    if (virStorageVolDownload(vol.get(), st.get(), offset, length, 0) < 0) {
      return LastLibvirtError("downloading volume '" + name + "'");
    }
    std::string out;
    std::string buf(1 << 20, '\0');
    for (;;) {
      int n = virStreamRecv(st.get(), buf.data(), buf.size());
      if (n > 0) {
        out.append(buf.data(), static_cast<size_t>(n));
        continue;
      }
      if (n == 0) break;
      Status s = LastLibvirtError("downloading volume '" + name + "'");
      virStreamAbort(st.get());
      return s;
    }
    if (virStreamFinish(st.get()) < 0) return LastLibvirtError("finishing download of '" + name + "'");
    return out;
  }

  Status UploadVolumeRange(const std::string& pool_name, const std::string& name, uint64_t offset,
                           std::string_view bytes) override {
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    BERTH_ASSIGN_OR_RETURN(PoolHandle pool, Pool(pool_name));
    VolHandle vol(virStorageVolLookupByName(pool.get(), name.c_str()));
    if (!vol) return LastLibvirtError("volume '" + name + "' in pool '" + pool_name + "'");
    virStorageVolInfo vi;
    if (virStorageVolGetInfo(vol.get(), &vi) < 0) return LastLibvirtError("volume info of '" + name + "'");
    if (offset > vi.capacity || bytes.size() > vi.capacity - offset) {
      return Status::InvalidArgument("offset", "range runs past the end of volume '" + name + "'");
    }
    return SendToVolume(conn, vol.get(), name, offset, bytes);
  }

  Result<VolumeInfo> WriteVolume(const std::string& pool_name, const std::string& name,
                                 std::string_view bytes) override {
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    BERTH_RETURN_IF_ERROR(DeleteVolume(pool_name, name));
    BERTH_ASSIGN_OR_RETURN(PoolHandle pool, Pool(pool_name));
    VolHandle vol(virStorageVolCreateXML(pool.get(), VolumeXml(name, "raw", bytes.size()).c_str(), 0));
    if (!vol) return LastLibvirtError("creating volume '" + name + "'");
    if (Status s = SendToVolume(conn, vol.get(), name, 0, bytes); !s.ok()) {
      virStorageVolDelete(vol.get(), 0);
      virResetLastError();
      return s;
    }
    auto info = Describe(pool_name, vol.get());
    if (info.ok()) info->format = "raw";
    return info;
  }

  // --- Guest networks and nwfilters (issue 8) -------------------------------
  using NetworkHandle = std::unique_ptr<virNetwork, decltype(&virNetworkFree)>;
  using NwFilterHandle = std::unique_ptr<virNWFilter, decltype(&virNWFilterFree)>;

  // libvirt_util's mapping predates nwfilters: a missing filter is kNotFound here.
  static Status NwFilterError(const std::string& context) {
    const bool missing = virGetLastErrorCode() == VIR_ERR_NO_NWFILTER;
    Status s = LastLibvirtError(context);
    return missing ? Status::NotFound(s.message()) : s;
  }

  Status EnsureNetwork(const NetworkSpec& spec) override {
    BERTH_ASSIGN_OR_RETURN(std::string xml, WriteNetworkXml(spec));
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    const std::string what = "network '" + spec.name + "'";
    NetworkHandle net(virNetworkLookupByName(conn.get(), spec.name.c_str()), virNetworkFree);
    if (!net) {
      Status s = LastLibvirtError(what);
      if (s.code() != Code::kNotFound) return s;
      net.reset(virNetworkDefineXML(conn.get(), xml.c_str()));
      if (!net) {  // another caller may have defined it in between
        Status define = LastLibvirtError("defining " + what);
        net.reset(virNetworkLookupByName(conn.get(), spec.name.c_str()));
        if (!net) {
          virResetLastError();
          return define;
        }
      }
    }
    BERTH_ASSIGN_OR_RETURN(std::string current, NetworkXml(net.get(), what));
    auto existing = ParseNetworkXml(current);
    if (!existing.ok()) return existing.status().WithContext(what);
    if (existing->bridge != spec.bridge || existing->gateway_ip != spec.gateway_ip ||
        existing->prefix_length != spec.prefix_length || existing->forward != spec.forward) {
      return Status::FailedPrecondition(
          what + " already exists with bridge '" + existing->bridge + "', address " + existing->gateway_ip +
          "/" + std::to_string(existing->prefix_length) +
          (existing->forward == NetworkForward::kNat ? " (nat)" : " (isolated)") + "; wanted bridge '" +
          spec.bridge + "', " + spec.gateway_ip + "/" + std::to_string(spec.prefix_length) +
          (spec.forward == NetworkForward::kNat ? " (nat)" : " (isolated)"));
    }
    // berth re-creates what it needs; a host reboot must not bring up
    // bridges for tenants that may be gone.
    if (virNetworkSetAutostart(net.get(), 0) < 0) virResetLastError();
    const int active = virNetworkIsActive(net.get());
    if (active < 0) return LastLibvirtError(what);
    if (active == 0 && virNetworkCreate(net.get()) < 0) {
      Status s = LastLibvirtError("starting " + what);
      if (virNetworkIsActive(net.get()) == 1) return Status::Ok();  // started concurrently
      virResetLastError();
      return s;
    }
    return Status::Ok();
  }

  Status DestroyNetwork(const std::string& name) override {
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    NetworkHandle net(virNetworkLookupByName(conn.get(), name.c_str()), virNetworkFree);
    if (!net) {
      Status s = LastLibvirtError("network '" + name + "'");
      return s.code() == Code::kNotFound ? Status::Ok() : s;
    }
    if (virNetworkIsActive(net.get()) == 1 && virNetworkDestroy(net.get()) < 0) {
      Status s = LastLibvirtError("destroying network '" + name + "'");
      if (s.code() != Code::kFailedPrecondition && s.code() != Code::kNotFound) return s;
    }
    virResetLastError();
    if (virNetworkIsPersistent(net.get()) == 1 && virNetworkUndefine(net.get()) < 0) {
      Status s = LastLibvirtError("undefining network '" + name + "'");
      return s.code() == Code::kNotFound ? Status::Ok() : s;
    }
    virResetLastError();
    return Status::Ok();
  }

  Result<std::vector<std::string>> ListNetworks(const std::string& prefix) override {
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    virNetworkPtr* nets = nullptr;
    const int n = virConnectListAllNetworks(conn.get(), &nets, 0);
    if (n < 0) return LastLibvirtError("listing networks");
    return TakeNamesWithPrefix(nets, n, prefix, virNetworkGetName, virNetworkFree);
  }

  Result<NetworkSpec> GetNetwork(const std::string& name) override {
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    NetworkHandle net(virNetworkLookupByName(conn.get(), name.c_str()), virNetworkFree);
    if (!net) return LastLibvirtError("network '" + name + "'");
    BERTH_ASSIGN_OR_RETURN(std::string xml, NetworkXml(net.get(), "network '" + name + "'"));
    return ParseNetworkXml(xml);
  }

  // The persistent definition; drivers without VIR_NETWORK_XML_INACTIVE
  // (the test driver) give the live one.
  static Result<std::string> NetworkXml(virNetworkPtr net, const std::string& what) {
    char* xml = virNetworkGetXMLDesc(net, VIR_NETWORK_XML_INACTIVE);
    if (!xml) {
      virResetLastError();
      xml = virNetworkGetXMLDesc(net, 0);
    }
    if (!xml) return LastLibvirtError("XML of " + what);
    return TakeString(xml);
  }

  Status EnsureNwFilter(const std::string& xml) override {
    BERTH_ASSIGN_OR_RETURN(NwFilterIdentity id, ParseNwFilterIdentity(xml));
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    const std::string what = "nwfilter '" + id.name + "'";
    for (int attempt = 0;; ++attempt) {
      std::string to_define = xml;
      NwFilterHandle existing(virNWFilterLookupByName(conn.get(), id.name.c_str()), virNWFilterFree);
      if (existing && id.uuid.empty()) {
        char uuid[VIR_UUID_STRING_BUFLEN];
        if (virNWFilterGetUUIDString(existing.get(), uuid) < 0) return NwFilterError(what);
        BERTH_ASSIGN_OR_RETURN(to_define, SetNwFilterUuid(xml, uuid));
      }
      virResetLastError();
      NwFilterHandle filter(virNWFilterDefineXML(conn.get(), to_define.c_str()), virNWFilterFree);
      if (filter) return Status::Ok();
      Status s = NwFilterError("defining " + what);
      // A concurrent first definition got a different uuid: retry with it.
      if (attempt > 0 || existing) return s;
    }
  }

  Status DeleteNwFilter(const std::string& name) override {
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    NwFilterHandle filter(virNWFilterLookupByName(conn.get(), name.c_str()), virNWFilterFree);
    if (!filter) {
      Status s = NwFilterError("nwfilter '" + name + "'");
      return s.code() == Code::kNotFound ? Status::Ok() : s;
    }
    if (virNWFilterUndefine(filter.get()) < 0) {
      Status s = NwFilterError("undefining nwfilter '" + name + "'");
      return s.code() == Code::kNotFound ? Status::Ok() : s;
    }
    return Status::Ok();
  }

  Result<std::vector<std::string>> ListNwFilters(const std::string& prefix) override {
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    virNWFilterPtr* filters = nullptr;
    const int n = virConnectListAllNWFilters(conn.get(), &filters, 0);
    if (n < 0) return LastLibvirtError("listing nwfilters");
    return TakeNamesWithPrefix(filters, n, prefix, virNWFilterGetName, virNWFilterFree);
  }

  Result<std::vector<InterfaceAddress>> GetDomainInterfaceAddresses(const std::string& domain) override {
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    DomainHandle dom(virDomainLookupByName(conn.get(), domain.c_str()));
    if (!dom) return LastLibvirtError("domain '" + domain + "'");
    virDomainInterfacePtr* ifaces = nullptr;
    const int n = virDomainInterfaceAddresses(dom.get(), &ifaces, VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0);
    if (n < 0) return LastLibvirtError("interface addresses of '" + domain + "'");
    std::vector<InterfaceAddress> out;
    for (int i = 0; i < n; ++i) {
      const virDomainInterfacePtr iface = ifaces[i];
      for (unsigned k = 0; k < iface->naddrs; ++k) {
        const virDomainIPAddress& a = iface->addrs[k];
        if (a.type != VIR_IP_ADDR_TYPE_IPV4 || a.addr == nullptr) continue;
        out.push_back({iface->name ? iface->name : "", iface->hwaddr ? iface->hwaddr : "", a.addr,
                       static_cast<int>(a.prefix)});
      }
      virDomainInterfaceFree(iface);
    }
    std::free(ifaces);
    return out;
  }

  Result<std::vector<DhcpLease>> GetNetworkDhcpLeases(const std::string& network) override {
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    NetworkHandle net(virNetworkLookupByName(conn.get(), network.c_str()), virNetworkFree);
    if (!net) return LastLibvirtError("network '" + network + "'");
    virNetworkDHCPLeasePtr* leases = nullptr;
    const int n = virNetworkGetDHCPLeases(net.get(), nullptr, &leases, 0);
    if (n < 0) return LastLibvirtError("DHCP leases of network '" + network + "'");
    std::vector<DhcpLease> out;
    for (int i = 0; i < n; ++i) {
      const virNetworkDHCPLeasePtr l = leases[i];
      if (l->type == VIR_IP_ADDR_TYPE_IPV4 && l->mac && l->ipaddr) {
        DhcpLease lease{l->mac, l->ipaddr, static_cast<int>(l->prefix), l->expirytime, l->hostname ? l->hostname : ""};
        for (char& c : lease.mac) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        out.push_back(std::move(lease));
      }
      virNetworkDHCPLeaseFree(l);
    }
    std::free(leases);
    return out;
  }

  // Returns the live connection, reopening it when libvirtd restarted.
  Result<SharedConn> Conn() {
    std::lock_guard lock(mu_);
    if (conn_ && virConnectIsAlive(conn_.get()) == 1) return conn_;
    virResetLastError();
    virConnectPtr raw = virConnectOpen(uri_.c_str());
    if (!raw) return Status::Unavailable(LastLibvirtError("cannot reconnect to libvirt at " + uri_).message() + HowToStart(uri_));
    virConnectSetKeepAlive(raw, 5, 3);
    virResetLastError();
    conn_ = SharedConn(raw, [](virConnectPtr p) { virConnectClose(p); });
    return conn_;
  }

 private:
  Result<PoolHandle> Pool(const std::string& name) {
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    PoolHandle pool(virStoragePoolLookupByName(conn.get(), name.c_str()));
    if (!pool) return LastLibvirtError("storage pool '" + name + "'");
    return pool;
  }

  // virStorageVolUpload of `bytes` at `offset`; the rest of the volume stays.
  Status SendToVolume(const SharedConn& conn, virStorageVolPtr vol, const std::string& name, uint64_t offset,
                      std::string_view bytes) {
    if (bytes.empty()) return Status::Ok();
    StreamHandle st(virStreamNew(conn.get(), 0));
    if (!st) return LastLibvirtError("virStreamNew");
    if (virStorageVolUpload(vol, st.get(), offset, bytes.size(), 0) < 0) {
      return LastLibvirtError("uploading to volume '" + name + "'");
    }
    size_t off = 0;
    while (off < bytes.size()) {
      int sent = virStreamSend(st.get(), bytes.data() + off, std::min<size_t>(bytes.size() - off, 1 << 20));
      if (sent < 0) {
        Status s = LastLibvirtError("streaming to volume '" + name + "'");
        virStreamAbort(st.get());
        return s;
      }
      off += static_cast<size_t>(sent);
    }
    if (virStreamFinish(st.get()) < 0) return LastLibvirtError("finishing upload to '" + name + "'");
    return Status::Ok();
  }

  Result<VolumeInfo> Describe(const std::string& pool, virStorageVolPtr vol) {
    VolumeInfo info;
    info.pool = pool;
    info.name = virStorageVolGetName(vol);
    info.path = TakeString(virStorageVolGetPath(vol));
    virStorageVolInfo vi;
    if (virStorageVolGetInfo(vol, &vi) < 0) return LastLibvirtError("volume info of '" + info.name + "'");
    info.capacity_bytes = vi.capacity;
    info.allocation_bytes = vi.allocation;
    auto fmt = VolumeFormatFromXml(TakeString(virStorageVolGetXMLDesc(vol, 0)));
    if (fmt.ok()) info.format = *fmt;
    return info;
  }

  std::string uri_;
  std::mutex mu_;
  SharedConn conn_;
};

}  // namespace

Result<std::unique_ptr<Hypervisor>> ConnectLibvirt(const std::string& uri) {
  InitLibvirtOnce();
  virConnectPtr raw = virConnectOpen(uri.c_str());
  if (!raw) {
    Status s = LastLibvirtError("cannot connect to libvirt at " + uri);
    return Status::Unavailable(s.message() + HowToStart(uri));
  }
  virConnectSetKeepAlive(raw, 5, 3);  // fails harmlessly on drivers without keepalive
  virResetLastError();
  SharedConn conn(raw, [](virConnectPtr p) { virConnectClose(p); });
  return std::unique_ptr<Hypervisor>(new LibvirtHypervisor(uri, std::move(conn)));
}

}  // namespace berth::hv
