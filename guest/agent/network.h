// Guest networking inside the agent: brings up the execution's NIC with a
// DHCP lease from libvirt's dnsmasq (busybox udhcpc), on the host's NetUp.
// An execution without a network never gets here: its VM has no NIC, and the
// network modules are not even loaded.
#pragma once

#include "guest/protocol.h"

namespace berth::agent {

// Loads the network modules (failover, net_failover, virtio_net, af_packet
// for udhcpc's raw socket) from /lib/modules, waits for the interface whose
// MAC is req.mac (any non-loopback one when empty; when none has it, the
// one NIC there is gets req.mac first: template clones and live-forked
// children restore another VM's MAC with the virtio-net state), starts
// `busybox udhcpc -f` on it with a script that configures address, netmask
// and default route, and reports the first lease. Blocks for at most
// req.timeout_ms; failures come back in NetReadyMsg::error_code.
//
// The lease is kept: udhcpc stays running after the first lease and renews
// it at T1 (half the lease time) for as long as the guest lives, touching
// the address and route only if the renewal changed them; it removes the
// address only once the lease is lost (expired unanswered, or NAKed), and
// then asks again. A call replaces the udhcpc an earlier call (or, in a
// clone or fork child, the parent's restored memory) left running.
NetReadyMsg BringUpNetwork(const NetUpMsg& req);

}  // namespace berth::agent
