// Builds berth's v1 route table on top of a manager::Service.
#pragma once

#include "api/router.h"
#include "manager/service.h"

namespace berth::api {

Router BuildRouter(manager::Service& service);

}  // namespace berth::api
