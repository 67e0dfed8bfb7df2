// GET /metrics: the manager's metrics (manager/metrics.h) in the Prometheus
// text format 0.0.4. It needs a token like every other route except
// /v1/health (Prometheus sends one with `authorization: {credentials: ...}`
// or bearer_token_file): phase timings and pool sizes tell about every tenant.
#include "api/routes.h"
#include "manager/metrics.h"

namespace berth::api {

void AddMetricsRoutes(Router& router, manager::Service& /*service*/) {
  router.Add({"GET", "/metrics", "Prometheus metrics (text format 0.0.4): phase histograms, start and pool counts",
              [](const HttpRequest&) {
                HttpResponse r;
                r.status = 200;
                r.body = manager::Metrics::Global().RenderPrometheus();
                r.content_type = "text/plain; version=0.0.4; charset=utf-8";
                return r;
              }});
}

}  // namespace berth::api
