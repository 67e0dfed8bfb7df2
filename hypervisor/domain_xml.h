// Domain spec -> libvirt domain XML, and berth's <metadata> back out of it.
//
// The only place in berth that produces or reads domain XML. pugixml is used
// in domain_xml.cc only; callers see strings and the typed DomainSpec.
//
// Output format (what the golden files in tests/golden/domain/ pin down): the
// layout of `virsh dumpxml` -- 2-space indentation, single-quoted attributes,
// `<empty/>` tags, elements and devices in libvirt's own order, no XML
// declaration, one trailing newline; & < > ' " escaped everywhere except
// quotes in metadata text, which libvirt prints via libxml2 unescaped. So
// the <metadata> block is byte-identical to what libvirt 9.0 prints back;
// the rest differs only by what libvirt adds (uuid, KiB units, default
// controllers, machine alias expansion, ...).
//
// berth's metadata inside a domain, as written by WriteDomainXml and exactly
// as libvirt prints it back after virDomainSetMetadata with key "berth":
//
//   <metadata>
//     <berth:execution xmlns:berth="https://berth.dev/xmlns/domain/1">
//       <berth:id>...</berth:id>            DomainMetadata::execution_id
//       <berth:function>...</berth:function>  (empty element when no function)
//       <berth:tenant>...</berth:tenant>
//       <berth:pid>42</berth:pid>
//       <berth:ppid>1</berth:ppid>
//       <berth:image>...</berth:image>
//       <berth:created>1700000000000</berth:created>  (unix ms)
//       <berth:network>egress</berth:network>      (only with a NIC)
//       <berth:address>10.240.0.17</berth:address> (one per guest IPv4 address, once known)
//     </berth:execution>
//   </metadata>
//
// Children carry the prefix too: virDomainSetMetadata puts every element of
// the fragment into the namespace, so both paths give identical dumpxml.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "hypervisor/domain_spec.h"

namespace berth::hv {

// Key (namespace prefix) berth passes to virDomainSetMetadata.
inline constexpr const char* kMetadataKey = kMetadataPrefix;  // "berth"

// Validates `spec` (ValidateDomainSpec) and returns the complete domain XML
// for virDomainDefineXML / virDomainCreateXML. Deterministic: the same spec
// always gives the same bytes. Fails with ValidateDomainSpec's Status.
Result<std::string> WriteDomainXml(const DomainSpec& spec);

// Reads berth's metadata from a full domain XML document (`virsh dumpxml`,
// virDomainGetXMLDesc, or WriteDomainXml output). The <execution> element
// under <metadata> is found by namespace URI (kMetadataNamespace), whatever
// prefix libvirt or a tool chose; its children are matched by local name
// (prefixed in that namespace or unqualified), unknown children are ignored.
// Errors: kNotFound when the domain has no berth metadata; kInvalidArgument
// (field "domain_xml") when the XML is not well-formed, the root is not
// <domain>, <id> is missing/empty, or a number does not parse.
Result<DomainMetadata> ParseDomainMetadata(const std::string& domain_xml);

// The metadata element in the form virDomainSetMetadata wants: NO prefix and
// NO xmlns declaration, because libvirt injects the namespace itself from
// the key and uri arguments; and on one line with no whitespace between
// elements, because libvirt keeps such whitespace and dumpxml would then be
// indented differently from WriteDomainXml's output:
//
//   <execution><id>ex-1</id><function>f</function><tenant>t</tenant><pid>42</pid>
//   <ppid>1</ppid><image>sha256:...</image><created>1700000000000</created></execution>
//   (one line in reality; empty strings give e.g. <function/>)
//
// Call it as
//   virDomainSetMetadata(dom, VIR_DOMAIN_METADATA_ELEMENT,
//                        MetadataXml(md).c_str(), kMetadataKey /* "berth" */,
//                        kMetadataNamespace, VIR_DOMAIN_AFFECT_LIVE |
//                        VIR_DOMAIN_AFFECT_CONFIG /* as applicable */);
// libvirt then stores and prints <berth:execution xmlns:berth="..."> with
// <berth:...> children, i.e. the same text WriteDomainXml emits, replacing
// any earlier element in that namespace. (Verified with libvirt 9.0: a
// fragment that already has the berth: prefix and its xmlns is refused with
// "failed to create a new XML namespace", and one with a bare berth: prefix
// comes back as <berth:berth:execution>.)
//
// `metadata` must pass ValidateDomainMetadata; otherwise the text may not
// be well-formed XML.
std::string MetadataXml(const DomainMetadata& metadata);

// Reads the element virDomainGetMetadata(dom, VIR_DOMAIN_METADATA_ELEMENT,
// kMetadataNamespace, flags) returns (libvirt strips the namespace there:
// <execution><id>...</id>...</execution>); also accepts the namespaced form.
// The network NICs of a domain (<interface type='network'>, as WriteDomainXml
// or libvirt writes them): network, MAC and <filterref> filter; filter
// parameters are not read back. InvalidArgument (field "domain_xml") when
// the XML is not a <domain>.
Result<std::vector<NicSpec>> ParseDomainNics(const std::string& domain_xml);

// Errors as ParseDomainMetadata, with field "metadata_xml".
Result<DomainMetadata> ParseMetadataXml(const std::string& element_xml);

}  // namespace berth::hv
