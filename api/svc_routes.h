// Guest networking in the API (issue 8): the "network" field of function
// definitions and exec requests, and the /svc/<instance>/<path> proxy.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "api/router.h"
#include "common/status.h"
#include "manager/service.h"
#include "net/network_policy.h"

namespace berth::api {

// "network": "egress"  or
// "network": {"mode": "egress", "allow": [{"cidr": "203.0.113.0/24",
//             "protocol": "tcp", "ports": "443" | "8000-8080"}], "expose_port": 8080}
// Strict: unknown keys, wrong types and bad values are InvalidArgument naming
// the field ("network.mode", "network.allow[1].cidr", "network.expose_port").
Result<net::NetworkPolicy> ParseNetworkPolicy(const nlohmann::json& value, const std::string& field = "network");

// For function definitions: when `obj` has an object-valued "network", it
// is parsed into spec->network / network_allow / expose_port and removed
// from `obj` (a string value is left for the FieldReader). The rendered
// shape (top-level "network_allow"/"expose_port" beside a mode string) is
// accepted too, so GET -> PUT of a function round-trips.
Status TakeFunctionNetwork(nlohmann::json& obj, manager::FunctionSpec* spec);

// ANY /svc/{instance}/{path...}: proxies the request over the tenant network
// to the instance's exposed port (network.expose_port) and returns its
// answer. {instance} is a pid or the name of a running process of the
// caller's tenant. 404 when there is none, 409 when it exposes no port or has
// no address yet, 502 when it does not answer.
void AddSvcRoutes(Router& router, manager::Service& service);

}  // namespace berth::api
