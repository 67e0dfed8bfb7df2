// RAII handles for libvirt objects and the libvirt error -> Status mapping.
// Private to hypervisor/.
#pragma once

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include <memory>
#include <string>

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

}  // namespace berth::hv
