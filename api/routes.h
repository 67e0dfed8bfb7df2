// Builds berth's v1 route table on top of a manager::Service.
#pragma once

#include "api/router.h"
#include "manager/service.h"

namespace berth::api {

Router BuildRouter(manager::Service& service);

// Parts of the table, in their own files: processes, executions, nodes and
// docs (proc_routes.cc); seed 001's DCK API under /dck/api/v1.0 (dck_routes.cc).
void AddProcRoutes(Router& router, manager::Service& service);
void AddDckRoutes(Router& router, manager::Service& service);

}  // namespace berth::api
