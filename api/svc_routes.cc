#include "api/svc_routes.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "api/errors.h"
#include "api/render.h"
#include "common/env.h"

namespace berth::api {
namespace {

using json = nlohmann::json;

constexpr int kConnectTimeoutMs = 3000;
constexpr int kAnswerTimeoutMs = 30'000;
constexpr size_t kMaxAnswerBytes = 16 << 20;

HttpResponse Error(int status, const std::string& code, const std::string& message) {
  HttpResponse r;
  r.status = status;
  r.body = json{{"error", {{"code", code}, {"message", message}}}}.dump();
  return r;
}

// A file descriptor closed on scope exit.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

bool WaitFor(int fd, short events, int64_t deadline_ms) {
  for (;;) {
    const int64_t left = deadline_ms - Env::Default()->MonotonicMs();
    if (left <= 0) return false;
    pollfd p{fd, events, 0};
    int n = poll(&p, 1, static_cast<int>(left));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return false;
  }
}

// One HTTP/1.0 exchange with ip:port (Connection: close; the answer ends at
// EOF). Returns the raw answer bytes.
Result<std::string> Exchange(const std::string& ip, uint16_t port, const std::string& request) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  if (inet_pton(AF_INET, ip.c_str(), &addr.sin_addr) != 1) return Status::Internal("bad instance address " + ip);
  Fd s{socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)};
  if (s.fd < 0) return Status::Unavailable(std::string("socket: ") + strerror(errno));
  const int64_t now = Env::Default()->MonotonicMs();
  if (connect(s.fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    if (errno != EINPROGRESS) return Status::Unavailable("connecting to " + ip + ": " + strerror(errno));
    if (!WaitFor(s.fd, POLLOUT, now + kConnectTimeoutMs)) {
      return Status::Unavailable("connecting to " + ip + ":" + std::to_string(port) + " timed out");
    }
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) return Status::Unavailable("connecting to " + ip + ":" + std::to_string(port) + ": " + strerror(err));
  }
  const int64_t deadline = now + kAnswerTimeoutMs;
  size_t sent = 0;
  while (sent < request.size()) {
    ssize_t n = send(s.fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (!WaitFor(s.fd, POLLOUT, deadline)) return Status::Unavailable("sending to the instance timed out");
    } else {
      return Status::Unavailable(std::string("sending to the instance: ") + strerror(errno));
    }
  }
  std::string answer;
  char buf[65536];
  for (;;) {
    ssize_t n = recv(s.fd, buf, sizeof(buf), 0);
    if (n > 0) {
      answer.append(buf, static_cast<size_t>(n));
      if (answer.size() > kMaxAnswerBytes) return Status::Unavailable("the instance's answer is too large");
    } else if (n == 0) {
      return answer;
    } else if (errno == EAGAIN || errno == EINTR) {
      if (!WaitFor(s.fd, POLLIN, deadline)) return Status::Unavailable("the instance did not answer in time");
    } else {
      return Status::Unavailable(std::string("reading from the instance: ") + strerror(errno));
    }
  }
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Parses "HTTP/1.x NNN reason\r\nheaders\r\n\r\nbody".
Result<HttpResponse> ParseAnswer(const std::string& raw) {
  const size_t head_end = raw.find("\r\n\r\n");
  if (raw.compare(0, 5, "HTTP/") != 0 || head_end == std::string::npos) {
    return Status::Unavailable("the instance's answer is not HTTP");
  }
  HttpResponse r;
  r.content_type = "";
  const size_t sp = raw.find(' ');
  if (sp == std::string::npos || sp + 4 > head_end) return Status::Unavailable("the instance's status line is malformed");
  r.status = std::atoi(raw.c_str() + sp + 1);
  if (r.status < 100 || r.status > 599) return Status::Unavailable("the instance's status code is out of range");
  size_t pos = raw.find("\r\n") + 2;
  while (pos < head_end) {
    size_t eol = raw.find("\r\n", pos);
    const std::string line = raw.substr(pos, eol - pos);
    pos = eol + 2;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    const std::string name = line.substr(0, colon);
    std::string value = line.substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.erase(0, 1);
    const std::string lname = Lower(name);
    if (lname == "content-type") {
      r.content_type = value;
    } else if (lname != "content-length" && lname != "connection" && lname != "transfer-encoding" &&
               lname != "keep-alive") {
      r.headers.emplace_back(name, value);
    }
  }
  r.body = raw.substr(head_end + 4);
  return r;
}

// Request headers passed on (hop-by-hop ones and credentials are not).
bool Forwarded(const std::string& lname) {
  return lname != "host" && lname != "connection" && lname != "content-length" && lname != "transfer-encoding" &&
         lname != "authorization" && lname != "keep-alive" && lname != "upgrade" && lname != "expect";
}

Result<manager::ExecutionRecord> FindInstance(manager::Service& svc, const manager::Principal& who,
                                              const std::string& instance) {
  if (!instance.empty() && instance.size() <= 15 && instance.find_first_not_of("0123456789") == std::string::npos) {
    return svc.GetProc(who, std::stoll(instance));
  }
  BERTH_ASSIGN_OR_RETURN(auto procs, svc.ListProcs(who, false, 10'000));
  for (const auto& p : procs) {
    if (p.name == instance && !manager::IsTerminal(p.state)) return p;
  }
  return Status::NotFound("no running process named '" + instance + "'");
}

HttpResponse Proxy(manager::Service& svc, const HttpRequest& req) {
  auto ex = FindInstance(svc, Who(req), req.params.at("instance"));
  if (!ex.ok()) return ErrorResponse(ex.status());
  if (ex->state != manager::ExecState::kRunning) {
    return Error(409, "FAILED_PRECONDITION", "process " + std::to_string(ex->pid) + " is " +
                                                 manager::ExecStateName(ex->state) + ", not running");
  }
  const uint16_t port = ex->spec.network.expose_port;
  if (ex->spec.network.mode == net::NetworkMode::kNone || port == 0) {
    return Error(409, "FAILED_PRECONDITION",
                 "process " + std::to_string(ex->pid) + " exposes no port (network.expose_port)");
  }
  if (ex->addresses.empty()) {
    return Error(409, "FAILED_PRECONDITION", "process " + std::to_string(ex->pid) + " has no address yet");
  }
  std::string target = "/" + req.params.at("path");
  if (!req.raw_query.empty()) target += "?" + req.raw_query;
  std::string request = req.method + " " + target + " HTTP/1.0\r\n";
  request += "Host: " + ex->addresses.front() + ":" + std::to_string(port) + "\r\n";
  for (const auto& [name, value] : req.headers) {
    if (Forwarded(name)) request += name + ": " + value + "\r\n";
  }
  if (!req.remote_addr.empty()) request += "X-Forwarded-For: " + req.remote_addr + "\r\n";
  request += "Content-Length: " + std::to_string(req.body.size()) + "\r\nConnection: close\r\n\r\n";
  request += req.body;
  auto raw = Exchange(ex->addresses.front(), port, request);
  if (!raw.ok()) return Error(502, "BAD_GATEWAY", raw.status().message());
  auto answer = ParseAnswer(*raw);
  if (!answer.ok()) return Error(502, "BAD_GATEWAY", answer.status().message());
  return *answer;
}

Status CheckKeys(const json& obj, const std::string& field, std::initializer_list<const char*> known) {
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    bool ok = false;
    for (const char* k : known) ok = ok || it.key() == k;
    if (!ok) return Status::InvalidArgument(field + "." + it.key(), "unknown field " + field + "." + it.key());
  }
  return Status::Ok();
}

}  // namespace

Result<net::NetworkPolicy> ParseNetworkPolicy(const json& value, const std::string& field) {
  net::NetworkPolicy p;
  if (value.is_string()) {
    auto mode = net::ParseNetworkMode(value.get<std::string>());
    if (!mode.ok()) {
      return Status::InvalidArgument(field, field + " must be none, egress or isolated, not '" +
                                                value.get<std::string>() + "'");
    }
    p.mode = *mode;
    return p;
  }
  if (!value.is_object()) {
    return Status::InvalidArgument(field, field + " must be a string (the mode) or an object {mode, allow, expose_port}");
  }
  BERTH_RETURN_IF_ERROR(CheckKeys(value, field, {"mode", "allow", "expose_port"}));
  if (auto m = value.find("mode"); m != value.end()) {
    if (!m->is_string()) return Status::InvalidArgument(field + ".mode", field + ".mode must be a string");
    auto mode = net::ParseNetworkMode(m->get<std::string>());
    if (!mode.ok()) {
      return Status::InvalidArgument(field + ".mode", field + ".mode must be none, egress or isolated, not '" +
                                                          m->get<std::string>() + "'");
    }
    p.mode = *mode;
  }
  if (auto a = value.find("allow"); a != value.end()) {
    if (!a->is_array()) return Status::InvalidArgument(field + ".allow", field + ".allow must be an array");
    for (size_t i = 0; i < a->size(); ++i) {
      const json& e = (*a)[i];
      const std::string base = field + ".allow[" + std::to_string(i) + "]";
      if (!e.is_object()) return Status::InvalidArgument(base, base + " must be an object {cidr, protocol, ports}");
      BERTH_RETURN_IF_ERROR(CheckKeys(e, base, {"cidr", "protocol", "ports"}));
      net::EgressRule r;
      auto str = [&](const char* key, std::string* out) -> Status {
        auto it = e.find(key);
        if (it == e.end()) return Status::Ok();
        if (it->is_number_integer() && std::string(key) == "ports") {  // "ports": 443
          *out = std::to_string(it->get<int64_t>());
          return Status::Ok();
        }
        if (!it->is_string()) return Status::InvalidArgument(base + "." + key, base + "." + key + " must be a string");
        *out = it->get<std::string>();
        return Status::Ok();
      };
      std::string protocol, ports;
      BERTH_RETURN_IF_ERROR(str("cidr", &r.cidr));
      if (r.cidr.empty()) return Status::InvalidArgument(base + ".cidr", base + ".cidr is required");
      BERTH_RETURN_IF_ERROR(str("protocol", &protocol));
      BERTH_RETURN_IF_ERROR(str("ports", &ports));
      BERTH_ASSIGN_OR_RETURN(r.protocol, net::ParseProtocol(base + ".protocol", protocol));
      BERTH_RETURN_IF_ERROR(net::ParsePortRange(base + ".ports", ports, &r));
      p.allow.push_back(std::move(r));
    }
  }
  if (auto e = value.find("expose_port"); e != value.end()) {
    if (!e->is_number_integer() || e->get<int64_t>() < 1 || e->get<int64_t>() > 65535) {
      return Status::InvalidArgument(field + ".expose_port", field + ".expose_port must be a port number 1..65535");
    }
    p.expose_port = static_cast<uint16_t>(e->get<int64_t>());
  }
  BERTH_RETURN_IF_ERROR(net::ValidateNetworkPolicy(p, field));
  return p;
}

Status TakeFunctionNetwork(json& obj, manager::FunctionSpec* spec) {
  auto it = obj.find("network");
  const bool flat = obj.contains("network_allow") || obj.contains("expose_port");
  if (flat) {
    // The shape a function record is rendered in ("network" a mode string,
    // "network_allow" and "expose_port" beside it), so a record read with
    // GET can be sent back as it is.
    if (it != obj.end() && !it->is_string()) {
      return Status::InvalidArgument("network_allow",
                                     "give the allow-list and port inside network{...} or beside a network mode string, not both");
    }
    json policy = {{"mode", it != obj.end() ? *it : json("none")}};
    if (auto a = obj.find("network_allow"); a != obj.end()) policy["allow"] = *a;
    if (auto e = obj.find("expose_port"); e != obj.end() && !(e->is_number_integer() && e->get<int64_t>() == 0)) {
      policy["expose_port"] = *e;
    }
    auto parsed = ParseNetworkPolicy(policy, "network");
    if (!parsed.ok()) return parsed.status();
    spec->network = net::NetworkModeName(parsed->mode);
    spec->network_allow = std::move(parsed->allow);
    spec->expose_port = parsed->expose_port;
    obj.erase("network_allow");
    obj.erase("expose_port");
    obj.erase("network");
    return Status::Ok();
  }
  if (it == obj.end() || it->is_string()) return Status::Ok();
  BERTH_ASSIGN_OR_RETURN(net::NetworkPolicy p, ParseNetworkPolicy(*it, "network"));
  spec->network = net::NetworkModeName(p.mode);
  spec->network_allow = std::move(p.allow);
  spec->expose_port = p.expose_port;
  obj.erase(it);
  return Status::Ok();
}

void AddSvcRoutes(Router& router, manager::Service& service) {
  Route route{"*", "/svc/{instance}/{path...}",
              "Proxy an HTTP request to a running instance's exposed port over its tenant network "
              "({instance}: pid or process name)"};
  route.handler = [&service](const HttpRequest& req) { return Proxy(service, req); };
  route.response_content_type = "";
  router.Add(std::move(route));
}

}  // namespace berth::api
