#include "hypervisor/libvirt_util.h"

#include <cstdlib>
#include <mutex>
#include <thread>

namespace berth::hv {

namespace {
void SilentErrorHandler(void*, virErrorPtr) {}
}  // namespace

void InitLibvirtOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    virInitialize();
    virSetErrorFunc(nullptr, SilentErrorHandler);
    // Streams (agent channels) and keepalive need a running event loop.
    virEventRegisterDefaultImpl();
    std::thread([] {
      for (;;) {
        if (virEventRunDefaultImpl() < 0) std::this_thread::yield();
      }
    }).detach();
  });
}

Status LastLibvirtError(const std::string& context) {
  virErrorPtr err = virGetLastError();
  if (err == nullptr) return Status::Internal(context + ": unknown libvirt error");
  std::string msg = context + ": " + (err->message ? err->message : "libvirt error");
  Code code = Code::kInternal;
  switch (err->code) {
    case VIR_ERR_NO_DOMAIN:
    case VIR_ERR_NO_STORAGE_POOL:
    case VIR_ERR_NO_STORAGE_VOL:
    case VIR_ERR_NO_NETWORK:
      code = Code::kNotFound;
      break;
    case VIR_ERR_NO_CONNECT:
    case VIR_ERR_SYSTEM_ERROR:
    case VIR_ERR_RPC:
    case VIR_ERR_AUTH_FAILED:
    case VIR_ERR_AUTH_UNAVAILABLE:
      code = Code::kUnavailable;
      break;
    case VIR_ERR_OPERATION_INVALID:
    case VIR_ERR_OPERATION_UNSUPPORTED:
    case VIR_ERR_NO_SUPPORT:
      code = Code::kFailedPrecondition;
      break;
    case VIR_ERR_INVALID_ARG:
    case VIR_ERR_XML_ERROR:
    case VIR_ERR_XML_DETAIL:
    case VIR_ERR_CONFIG_UNSUPPORTED:
      code = Code::kInvalidArgument;
      break;
    case VIR_ERR_OPERATION_TIMEOUT:
      code = Code::kDeadlineExceeded;
      break;
    case VIR_ERR_DOM_EXIST:
    case VIR_ERR_STORAGE_VOL_EXIST:
    case VIR_ERR_STORAGE_POOL_BUILT:
      code = Code::kAlreadyExists;
      break;
    default:
      break;
  }
  virResetLastError();
  return {code, msg};
}

std::string TakeString(char* s) {
  if (s == nullptr) return {};
  std::string out(s);
  std::free(s);
  return out;
}

}  // namespace berth::hv
