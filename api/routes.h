// Builds berth's v1 route table on top of a manager::Service.
#pragma once

#include <optional>

#include "api/router.h"
#include "manager/service.h"

namespace berth::manager {
class EventService;
}  // namespace berth::manager

namespace berth::api {

// With `events`, POST /v1/functions/{name}/invoke?async=1 queues the
// invocation (202 + delivery id); without, it answers 503.
Router BuildRouter(manager::Service& service, manager::EventService* events = nullptr);

// Parts of the table, in their own files: processes, executions, nodes and
// docs (proc_routes.cc); seed 001's DCK API under /dck/api/v1.0 (dck_routes.cc).
void AddProcRoutes(Router& router, manager::Service& service);
void AddDckRoutes(Router& router, manager::Service& service);
// /v1/images: uploads, resumable upload sessions, tags, inspect, delete (image_routes.cc).
void AddImageRoutes(Router& router, manager::Service& service);
// The event engine (event_routes.cc): /v1/events, /v1/triggers,
// /v1/cron-triggers, /v1/deliveries, /v1/dead-letters, /v1/webhooks and the
// public POST /hooks/{name}.
void AddEventRoutes(Router& router, manager::EventService& events);
// The ?async= branch of the invoke route: nullopt when the request is not
// asynchronous, else the answer (202 {delivery_id, ...} or an error).
std::optional<HttpResponse> MaybeInvokeAsync(manager::EventService* events, const HttpRequest& req,
                                             const manager::InvokeRequest& invoke);
// GET /metrics (metrics_routes.cc).
void AddMetricsRoutes(Router& router, manager::Service& service);
// ANY /gw/{tenant}/{function}/{path...}: the synchronous CGI gateway with its
// default limits (gateway.cc; see api/gateway.h for the options).
void AddGatewayRoutes(Router& router, manager::Service& service);

}  // namespace berth::api
