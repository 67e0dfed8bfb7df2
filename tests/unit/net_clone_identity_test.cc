// Networked clones (issue 8): a template clone or live-forked child gets its
// own MAC, network source and filter in the rewritten save-image XML, and a
// template's key says whether (and how) the function is networked.
#include <gtest/gtest.h>

#include <string>

#include "hypervisor/domain_xml.h"
#include "hypervisor/save_image.h"
#include "manager/templates.h"

namespace berth {
namespace {

// What libvirt writes into a save image of a running domain with a NIC on
// a berth network (trimmed): port id, bridge and tap name are the saved
// domain's own.
constexpr const char* kSavedXml = R"(<domain type='qemu'>
  <name>berth-tpl-0123456789abcdef</name>
  <uuid>8f7c2c6e-3d2a-4f7b-9a55-0f1e2d3c4b5a</uuid>
  <memory unit='KiB'>262144</memory>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/pool/tpl-0123456789abcdef.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:11:22:33'/>
      <source network='berth-net-aaaa-e-1' portid='4a1b2c3d-0000-4000-8000-000000000001' bridge='bne-1'/>
      <target dev='vnet7'/>
      <model type='virtio'/>
      <filterref filter='berth-fw-aaaa-old'>
        <parameter name='CTRL_IP_LEARNING' value='dhcp'/>
        <parameter name='DHCPSERVER' value='10.240.0.1'/>
        <parameter name='MAC' value='52:54:00:11:22:33'/>
      </filterref>
      <alias name='net0'/>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </interface>
    <serial type='file'>
      <source path='/logs/tpl.console.log'/>
    </serial>
  </devices>
</domain>
)";

hv::NicSpec Nic(const std::string& mac, const std::string& network, const std::string& filter,
                const std::string& dhcp_server) {
  hv::NicSpec nic;
  nic.mac = mac;
  nic.network = network;
  nic.filter = filter;
  nic.filter_parameters = {{"CTRL_IP_LEARNING", "dhcp"}, {"DHCPSERVER", dhcp_server}, {"MAC", mac}};
  return nic;
}

hv::CloneIdentity Identity(const std::string& name, const hv::NicSpec& nic) {
  hv::CloneIdentity id;
  id.name = name;
  id.metadata.execution_id = name;
  id.metadata.tenant = "acme";
  id.disks["vda"] = "/pool/ovl-" + name + ".qcow2";
  id.nics = {nic};
  return id;
}

TEST(NetClone, EachCloneGetsItsOwnMacSourceAndFilter) {
  const hv::NicSpec a = Nic("52:54:00:aa:00:01", "berth-net-aaaa-e-2", "berth-fw-aaaa-new", "10.240.3.1");
  const hv::NicSpec b = Nic("52:54:00:bb:00:02", "berth-net-aaaa-e-2", "berth-fw-aaaa-new", "10.240.3.1");
  auto xa = hv::RewriteDomainIdentity(kSavedXml, Identity("berth-acme-1-aaaaaa", a));
  auto xb = hv::RewriteDomainIdentity(kSavedXml, Identity("berth-acme-2-bbbbbb", b));
  ASSERT_TRUE(xa.ok()) << xa.status().ToString();
  ASSERT_TRUE(xb.ok()) << xb.status().ToString();

  for (const auto& [xml, nic] : {std::pair{*xa, a}, std::pair{*xb, b}}) {
    auto nics = hv::ParseDomainNics(xml);
    ASSERT_TRUE(nics.ok()) << nics.status().ToString();
    ASSERT_EQ(nics->size(), 1u);
    EXPECT_EQ((*nics)[0].mac, nic.mac);
    EXPECT_EQ((*nics)[0].network, nic.network);
    EXPECT_EQ((*nics)[0].filter, nic.filter);
    // The template's MAC is nowhere (nwfilter parameters included).
    EXPECT_EQ(xml.find("52:54:00:11:22:33"), std::string::npos) << xml;
    EXPECT_NE(xml.find("<parameter name=\"MAC\" value=\"" + nic.mac + "\""), std::string::npos) << xml;
    EXPECT_NE(xml.find("<parameter name=\"DHCPSERVER\" value=\"10.240.3.1\""), std::string::npos) << xml;
    // The saved domain's port, bridge, tap device and old filter are gone...
    EXPECT_EQ(xml.find("portid"), std::string::npos) << xml;
    EXPECT_EQ(xml.find("bne-1"), std::string::npos) << xml;
    EXPECT_EQ(xml.find("vnet7"), std::string::npos) << xml;
    EXPECT_EQ(xml.find("berth-fw-aaaa-old"), std::string::npos) << xml;
    // ...what the guest sees stays (model, PCI address).
    EXPECT_NE(xml.find("<model type=\"virtio\""), std::string::npos) << xml;
    EXPECT_NE(xml.find("slot=\"0x00\""), std::string::npos) << xml;
    EXPECT_NE(xml.find("<alias name=\"net0\""), std::string::npos) << xml;
  }
}

TEST(NetClone, NicCountMustMatchTheSavedInterfaces) {
  hv::CloneIdentity id = Identity("berth-acme-3-cccccc", Nic("52:54:00:cc:00:03", "n", "f", "10.0.0.1"));
  id.nics.push_back(id.nics[0]);
  auto two = hv::RewriteDomainIdentity(kSavedXml, id);
  ASSERT_FALSE(two.ok());
  EXPECT_EQ(two.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(two.status().field(), "nics");
  // No NICs given: the interfaces are kept as saved (domains without a NIC).
  id.nics.clear();
  auto kept = hv::RewriteDomainIdentity(kSavedXml, id);
  ASSERT_TRUE(kept.ok()) << kept.status().ToString();
  EXPECT_NE(kept->find("52:54:00:11:22:33"), std::string::npos);
}

TEST(NetClone, TemplateKeyCarriesTheNetworkMode) {
  manager::TemplateKeyInputs in;
  in.tenant = "acme";
  in.function = "f";
  in.function_version = 3;
  in.image = std::string(64, 'a');
  const std::string none = manager::ComputeTemplateKey(in);
  in.network = "egress";
  const std::string egress = manager::ComputeTemplateKey(in);
  in.network = "isolated";
  const std::string isolated = manager::ComputeTemplateKey(in);
  EXPECT_NE(none, egress);
  EXPECT_NE(none, isolated);
  EXPECT_NE(egress, isolated);
  in.network = "";
  EXPECT_EQ(manager::ComputeTemplateKey(in), none);  // functions without a network keep their keys
}

}  // namespace
}  // namespace berth
