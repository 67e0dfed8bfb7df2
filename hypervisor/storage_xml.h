// libvirt storage pool / volume XML, built and read with pugixml. Private to hypervisor/.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"

namespace berth::hv {

std::string DirPoolXml(const std::string& name, const std::string& dir);
// A plain volume of `format` and `capacity_bytes` (mode 0644: QEMU reads it as libvirt-qemu).
std::string VolumeXml(const std::string& name, const std::string& format, uint64_t capacity_bytes);
// A qcow2 volume backed by `backing_path` of `backing_format`, never probed.
std::string OverlayVolumeXml(const std::string& name, uint64_t capacity_bytes,
                             const std::string& backing_path, const std::string& backing_format);
// <target><format type='...'/> of a volume's XML ("" when absent).
Result<std::string> VolumeFormatFromXml(const std::string& volume_xml);

}  // namespace berth::hv
