// RAII handles for libvirt objects and the libvirt error -> Status mapping.
// Private to hypervisor/.
#pragma once

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace berth::hv {

struct ConnectCloser { void operator()(virConnectPtr p) const { virConnectClose(p); } };
struct DomainFreer { void operator()(virDomainPtr p) const { virDomainFree(p); } };
struct StreamFreer { void operator()(virStreamPtr p) const { virStreamFree(p); } };
struct PoolFreer { void operator()(virStoragePoolPtr p) const { virStoragePoolFree(p); } };
struct VolFreer { void operator()(virStorageVolPtr p) const { virStorageVolFree(p); } };

using ConnectHandle = std::unique_ptr<virConnect, ConnectCloser>;
using DomainHandle = std::unique_ptr<virDomain, DomainFreer>;
using StreamHandle = std::unique_ptr<virStream, StreamFreer>;
using PoolHandle = std::unique_ptr<virStoragePool, PoolFreer>;
using VolHandle = std::unique_ptr<virStorageVol, VolFreer>;

// Installs a silent libvirt error handler (libvirt must print nothing on its
// own) and the default event loop in a background thread. Idempotent; must
// run before the first connection is opened (ConnectLibvirt calls it).
void InitLibvirtOnce();

// Reads virGetLastError() for the calling thread and maps it to a Status.
// Call it right after the failing libvirt call.
Status LastLibvirtError(const std::string& context);

// libvirt returns malloc'd strings; this takes ownership.
std::string TakeString(char* s);

// Takes ownership of the `n` objects (and the array) a virConnectListAll*
// call returned: frees them all and returns the sorted names that start
// with `prefix`.
template <typename Obj, typename GetName, typename Free>
std::vector<std::string> TakeNamesWithPrefix(Obj** objs, int n, const std::string& prefix, GetName get_name,
                                             Free free_obj) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) {
    const char* name = get_name(objs[i]);
    if (name && std::string_view(name).substr(0, prefix.size()) == prefix) out.emplace_back(name);
    free_obj(objs[i]);
  }
  std::free(objs);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace berth::hv
