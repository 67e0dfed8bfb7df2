// Hypervisor over the libvirt C API. One connection per node, reopened when
// libvirtd goes away (keepalive detects it); every libvirt failure is read
// from virGetLastError right away and mapped to a Status.
#include <fcntl.h>
#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

#include "hypervisor/domain_xml.h"
#include "hypervisor/hypervisor.h"
#include "hypervisor/libvirt_util.h"
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
    if (virStorageVolUpload(vol.get(), st.get(), 0, static_cast<unsigned long long>(size), 0) < 0) {
      return fail(LastLibvirtError("uploading volume '" + name + "'"));
    }
    std::string buf(1 << 20, '\0');
    for (;;) {
      ssize_t n = ::read(fd, buf.data(), buf.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        virStreamAbort(st.get());
        return fail(Status::Internal("reading " + local_path + ": " + std::strerror(errno)));
      }
      if (n == 0) break;
      size_t off = 0;
      while (off < static_cast<size_t>(n)) {
        int sent = virStreamSend(st.get(), buf.data() + off, static_cast<size_t>(n) - off);
        if (sent < 0) {
          Status s = LastLibvirtError("streaming volume '" + name + "'");
          virStreamAbort(st.get());
          return fail(s);
        }
        off += static_cast<size_t>(sent);
      }
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

  Result<std::vector<std::string>> ListDomains(const std::string& prefix) override {
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    virDomainPtr* doms = nullptr;
    int n = virConnectListAllDomains(conn.get(), &doms, VIR_CONNECT_LIST_DOMAINS_ACTIVE);
    if (n < 0) return LastLibvirtError("listing domains");
    std::vector<std::string> out;
    for (int i = 0; i < n; ++i) {
      DomainHandle dom(doms[i]);
      const char* name = virDomainGetName(dom.get());
      if (name && std::string_view(name).substr(0, prefix.size()) == prefix) out.emplace_back(name);
    }
    std::free(doms);
    return out;
  }

  Result<std::string> GetDomainXml(const std::string& name) override {
    BERTH_ASSIGN_OR_RETURN(SharedConn conn, Conn());
    DomainHandle dom(virDomainLookupByName(conn.get(), name.c_str()));
    if (!dom) return LastLibvirtError("domain '" + name + "'");
    char* xml = virDomainGetXMLDesc(dom.get(), 0);
    if (!xml) return LastLibvirtError("dumpxml '" + name + "'");
    return TakeString(xml);
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
