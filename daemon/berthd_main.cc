// berthd: the berth daemon. Thin: parse flags into a ServiceConfig, start the
// Service and the HTTP server, wait for SIGINT/SIGTERM.
#include <signal.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <spdlog/spdlog.h>

#include "api/http_server.h"
#include "api/routes.h"
#include "manager/event_service.h"
#include "manager/service.h"

int main(int argc, char** argv) {
  berth::manager::ServiceConfig cfg;
  berth::api::HttpServerOptions http;
  berth::manager::EventServiceConfig events_cfg;
  std::string port_file, log_level = "info";
  CLI::App app{"berthd: runs functions and instances in libvirt VMs"};
  app.add_option("--data-dir", cfg.data_dir, "State folder (SQLite database, images)")->capture_default_str();
  app.add_option("--runtime-dir", cfg.runtime_dir, "Guest runtime folder (default: <data-dir>/runtime)");
  app.add_option("--listen", http.bind_address, "IPv4 address to listen on")->capture_default_str();
  app.add_option("--port", http.port, "TCP port (0: any free port)")->capture_default_str();
  app.add_option("--port-file", port_file, "Write the bound port here once listening");
  app.add_option("--node-uri", cfg.node.uri, "libvirt URI of the node")->capture_default_str();
  app.add_option("--node-name", cfg.node.name, "Name of the node")->capture_default_str();
  app.add_option("--accel", cfg.node.accel, "kvm, tcg or auto (probe)")->capture_default_str();
  app.add_option("--pool", cfg.node.pool, "libvirt storage pool for images and overlays")->capture_default_str();
  app.add_option("--pool-dir", cfg.node.pool_dir, "Folder of that pool")->capture_default_str();
  app.add_option("--log-pool", cfg.node.log_pool, "libvirt storage pool for console logs")->capture_default_str();
  app.add_option("--log-dir", cfg.node.log_dir, "Folder of that pool")->capture_default_str();
  app.add_option("--boot-timeout-ms", cfg.executor.boot_timeout_ms, "Domain start to agent hello")->capture_default_str();
  app.add_option("--subnet-pool", cfg.executor.networks.pool.pool,
                 "Guest networks: the block tenant subnets are taken from")
      ->capture_default_str();
  app.add_option("--subnet-prefix", cfg.executor.networks.pool.prefix_length, "Guest networks: size of a tenant subnet")
      ->capture_default_str();
  app.add_option("--dhcp-lease-minutes", cfg.executor.networks.dhcp_lease_minutes,
                 "Guest networks: DHCP lease time of new tenant networks (>= 2; guests renew at half)")
      ->capture_default_str();
  app.add_option("--network-linger-ms", cfg.executor.networks.idle_linger_ms,
                 "Guest networks: how long a tenant network with no VM left stays before it is removed (0: at once)")
      ->capture_default_str();
  app.add_option("--dhcp-timeout-ms", cfg.executor.dhcp_timeout_ms,
                 "Guest networks: agent hello to the guest's DHCP lease")
      ->capture_default_str();
  app.add_option("--node-down-after-ms", cfg.node_down_after_ms,
                 "A node whose libvirtd does not answer for this long is marked down")->capture_default_str();
  app.add_option("--node-monitor-ms", cfg.node_monitor_interval_ms, "How often each node is checked")
      ->capture_default_str();
  app.add_option("--image-gc-interval-ms", cfg.image_gc_interval_ms, "Image GC: how often it runs (0: never)")
      ->capture_default_str();
  app.add_option("--image-gc-grace-ms", cfg.image_gc_grace_ms,
                 "Image GC: unreferenced images (no tag, function or live execution) older than this go")
      ->capture_default_str();
  app.add_option("--upload-session-grace-ms", cfg.upload_session_grace_ms,
                 "Image GC: upload sessions idle this long are removed with their bytes")
      ->capture_default_str();
  app.add_option("--image-cache-bytes", cfg.image_cache_bytes,
                 "Disk budget of each node's image cache; LRU images nothing needs are evicted (0: none)")
      ->capture_default_str();
  app.add_option("--kill-grace-ms", cfg.kill_grace_ms, "TERM: destroy a VM this long after asking it to stop")
      ->capture_default_str();
  app.add_option("--retention-records", cfg.retention_max_records,
                 "Finished execution records always kept (newest first)")->capture_default_str();
  app.add_option("--retention-age-ms", cfg.retention_max_age_ms,
                 "Finished records beyond --retention-records are removed after this age")->capture_default_str();
  app.add_option("--dispatch-workers", events_cfg.dispatcher.workers,
                 "Event delivery workers (0: deliveries are queued but not run)")->capture_default_str();
  app.add_option("--dispatch-per-function-limit", events_cfg.dispatcher.per_function_limit,
                 "Concurrent deliveries per function (0: unlimited)")->capture_default_str();
  app.add_option("--dispatch-per-tenant-limit", events_cfg.dispatcher.per_tenant_limit,
                 "Concurrent deliveries per tenant (0: unlimited)")->capture_default_str();
  app.add_option("--event-max-payload-bytes", events_cfg.log.max_payload_bytes, "Largest event payload (413 above)")
      ->capture_default_str();
  app.add_option("--cron-poll-ms", events_cfg.ticker.poll_interval_ms, "How often cron triggers are checked")
      ->capture_default_str();
  app.add_flag("--cron-fire-creation-minute", events_cfg.ticker.fire_creation_minute,
               "A cron trigger also fires for the minute it was created in, if its schedule matches (tests)");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::from_str(log_level));

  // Block the stop signals in every thread; main waits for them below.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto service = berth::manager::Service::Start(berth::Env::Default(), cfg);
  if (!service.ok()) {
    std::fprintf(stderr, "berthd: %s\n", service.status().message().c_str());
    return 1;
  }
  auto created = (*service)->EnsureAdminToken();
  if (!created.ok()) {
    std::fprintf(stderr, "berthd: creating the admin token: %s\n", created.status().message().c_str());
    return 1;
  }
  if (*created) {
    spdlog::info("admin token created; it is in {} (mode 0600)", (*service)->admin_token_path());
  } else {
    spdlog::info("API tokens exist; the first admin token was written to {}", (*service)->admin_token_path());
  }
  events_cfg.log.db_path = cfg.data_dir + "/events.db";
  auto events = berth::manager::EventService::Open(berth::Env::Default(), service->get(), events_cfg);
  if (!events.ok()) {
    std::fprintf(stderr, "berthd: opening the event log: %s\n", events.status().message().c_str());
    return 1;
  }
  (*events)->Start();
  berth::api::Router router = berth::api::BuildRouter(**service, events->get());
  berth::api::AddEventRoutes(router, **events);
  berth::api::HttpServer server(std::move(router), http);
  if (auto s = server.Start(); !s.ok()) {
    std::fprintf(stderr, "berthd: %s\n", s.message().c_str());
    return 1;
  }
  spdlog::info("berthd listening on http://{}:{}", http.bind_address, server.port());
  if (!port_file.empty()) {
    std::ofstream(port_file) << server.port() << "\n";
  }
  int sig = 0;
  sigwait(&stop, &sig);
  spdlog::info("berthd stopping (signal {})", sig);
  // Running executions go on without us (the next start adopts them): no
  // handler or event delivery waits for one to end.
  (*events)->BeginStop();
  (*service)->Detach();
  server.Stop();
  (*events)->Stop();  // waits for deliveries in flight, before the Service goes
  return 0;
}
