#include "annotation/web_server.h"

#include <poll.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/error.h"

namespace rlhf::annotation {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

std::pair<std::string, uint16_t> split_listen_address(const std::string& listen) {
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == listen.size())
    throw UsageError("--listen " + listen + ": expected HOST:PORT, e.g. 127.0.0.1:8080");
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  const std::string port_text = listen.substr(colon + 1);
  if (port_text.find_first_not_of("0123456789") != std::string::npos || port_text.size() > 5 ||
      std::stoi(port_text) > 65535)
    throw UsageError("--listen " + listen + ": the port must be a number 0..65535");
  return {host, static_cast<uint16_t>(std::stoi(port_text))};
}

namespace {

asio::ip::address listen_ip(const std::string& host, const std::string& listen) {
  if (host == "localhost") return asio::ip::make_address("127.0.0.1");
  boost::system::error_code ec;
  auto ip = asio::ip::make_address(host, ec);
  if (ec)
    throw UsageError("--listen " + listen + ": " + host +
                     " is not an IP address (use e.g. 127.0.0.1 or localhost)");
  return ip;
}

// The Host headers a browser sends for this server when it listens on loopback at `bound`.
std::vector<std::string> loopback_hosts(const tcp::endpoint& bound) {
  std::string p = ":" + std::to_string(bound.port());
  std::vector<std::string> hosts = {"127.0.0.1" + p, "localhost" + p, "[::1]" + p};
  std::string own = bound.address().is_v6() ? "[" + bound.address().to_string() + "]"
                                            : bound.address().to_string();
  if (std::find(hosts.begin(), hosts.end(), own + p) == hosts.end()) hosts.push_back(own + p);
  return hosts;
}

// Half the descriptors this process has left (RLIMIT_NOFILE less those open now): the cap on HTTP
// connections, so that the other half stays for the sessions' upstream connections.
size_t half_the_free_descriptors() {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) return 512;
  size_t limit = lim.rlim_cur == RLIM_INFINITY ? (size_t{1} << 20) : lim.rlim_cur;
  size_t open = 0;
  std::error_code ec;
  for (std::filesystem::directory_iterator it("/proc/self/fd", ec), end; !ec && it != end;
       it.increment(ec))
    ++open;
  if (ec || open == 0) open = 16;
  return limit > open ? (limit - open) / 2 : 0;
}

std::chrono::milliseconds millis(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(std::ceil(seconds * 1000)));
}

class HttpConnection;

}  // namespace

void check_web_server_options(const WebServerOptions& o) {
  auto timeout = [](double v, const char* name) {
    if (!std::isfinite(v) || v <= 0 || v > 86400)
      throw UsageError(std::string(name) + ": expected seconds in (0, 86400], got " +
                       std::to_string(v));
  };
  timeout(o.header_timeout_seconds, "header_timeout_seconds");
  timeout(o.read_timeout_seconds, "read_timeout_seconds");
  timeout(o.write_timeout_seconds, "write_timeout_seconds");
  timeout(o.idle_timeout_seconds, "idle_timeout_seconds");
  auto count = [](size_t v, const char* name) {
    if (v < 1) throw UsageError(std::string(name) + ": expected >= 1, got 0");
  };
  count(o.max_connections, "max_connections");
  count(o.max_connections_per_address, "max_connections_per_address");
  count(o.max_queued_per_lane, "max_queued_per_lane");
  if (o.worker_threads < 1 || o.worker_threads > 256)
    throw UsageError("worker_threads: expected 1..256, got " + std::to_string(o.worker_threads));
  check_web_relay_options(o.relay);
}

class WebServer::Impl {
 public:
  explicit Impl(WebServerOptions o) : opts(std::move(o)), pool(std::max(1, opts.worker_threads)) {}
  ~Impl() {
    destroying = true;
    pool.join();
  }
  void accept();
  void accept_later();
  bool connection_queued();
  bool shed_longest_waiting();
  void admit(tcp::socket socket);
  // Runs `job` on the pool after the lane's earlier jobs; false when the lane is full.
  bool enqueue(const std::string& lane, std::function<void()> job);
  void start_job(std::string lane, std::function<void()> job);
  // Called by a connection's destructor (any thread).
  void connection_closed(HttpConnection* c, const std::string& address);

  struct Lane {
    bool running = false;
    std::deque<std::function<void()>> waiting;
  };

  // Declaration order is destruction order reversed: the pool joins first, then the I/O objects
  // go (and with them the connections, which count themselves down), then the relay.
  WebServerOptions opts;
  size_t max_connections = 0;  // opts.max_connections, at most half the free descriptors
  std::atomic<size_t> connections{0};
  std::atomic<bool> stopped{false};
  std::atomic<bool> destroying{false};
  std::unique_ptr<WebRelay> relay;
  std::mutex mutex;  // guards the three below (connections end on any thread)
  std::unordered_map<std::string, size_t> per_address;
  std::unordered_set<HttpConnection*> live;
  std::unordered_map<std::string, Lane> lanes;
  asio::io_context io{1};
  tcp::acceptor acceptor{io};
  asio::signal_set signals{io};
  asio::steady_timer accept_timer{io};
  std::chrono::steady_clock::duration accept_backoff{};  // zero while accept works
  bool accept_paused = false;                            // accept_timer waits (EMFILE)
  std::chrono::steady_clock::time_point last_descriptor_warning{};
  asio::thread_pool pool;
};

namespace {

class HttpConnection : public std::enable_shared_from_this<HttpConnection> {
 public:
  HttpConnection(WebServer::Impl& server, tcp::socket socket, std::string address)
      : server_(server), stream_(std::move(socket)), address_(std::move(address)) {
    ++server_.connections;
  }
  ~HttpConnection() { server_.connection_closed(this, address_); }

  // Reads the next request: the first one, or (after an answer) a kept-alive one.
  void start(bool first) {
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(server_.opts.max_header_bytes));
    parser_->body_limit(server_.opts.max_body_bytes);
    waiting_ = true;
    waiting_since_ = std::chrono::steady_clock::now();
    if (first || buffer_.size() > 0) return read_header();
    // Idle until the next request's first byte, then the header timeout applies.
    stream_.expires_after(millis(server_.opts.idle_timeout_seconds));
    stream_.async_read_some(buffer_.prepare(4096),
                            [self = shared_from_this()](beast::error_code ec, size_t n) {
                              if (ec) return self->close();
                              self->buffer_.commit(n);
                              self->read_header();
                            });
  }

  // Waiting for a request (not being answered): the connection EMFILE shedding may close.
  bool waiting() const { return waiting_ && !closed_; }
  std::chrono::steady_clock::time_point waiting_since() const { return waiting_since_; }

  void close() {
    closed_ = true;
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
  }

 private:
  void read_header() {
    request_start_ = std::chrono::steady_clock::now();
    stream_.expires_after(millis(server_.opts.header_timeout_seconds));
    http::async_read_header(
        stream_, buffer_, *parser_,
        [self = shared_from_this()](beast::error_code ec, size_t) { self->on_header(ec); });
  }

  void on_header(beast::error_code ec) {
    if (ec == http::error::header_limit) return refuse(431, "request headers too large");
    if (ec == http::error::body_limit) return refuse(413, "request body too large");  // by length
    if (ec) return close();
    if (parser_->is_done()) return on_request();
    auto left = millis(server_.opts.read_timeout_seconds) -
                (std::chrono::steady_clock::now() - request_start_);
    stream_.expires_after(std::chrono::duration_cast<std::chrono::milliseconds>(left));
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       if (ec == http::error::body_limit)
                         return self->refuse(413, "request body too large");
                       if (ec) return self->close();
                       self->on_request();
                     });
  }

  void on_request() {
    waiting_ = false;
    const auto& m = parser_->get();
    WebRequest r;
    r.method = std::string(m.method_string());
    r.target = std::string(m.target());
    r.host = std::string(m[http::field::host]);
    r.origin = std::string(m[http::field::origin]);
    r.content_type = std::string(m[http::field::content_type]);
    r.cookie = std::string(m[http::field::cookie]);
    r.csrf = std::string(m["X-CSRF-Token"]);
    r.body = m.body();
    r.peer = address_;
    keep_alive_ = m.keep_alive();
    version_ = m.version();
    std::string lane;
    if (auto now = server_.relay->answer_locally(r, &lane)) return write(std::move(*now));
    bool queued = server_.enqueue(lane, [self = shared_from_this(), r = std::move(r)] {
      WebResponse res = self->server_.relay->handle(r);
      asio::post(self->stream_.get_executor(),
                 [self, res = std::move(res)]() mutable { self->write(std::move(res)); });
    });
    if (!queued) refuse(429, "too many requests of this session are waiting; try again");
  }

  void refuse(int status, const std::string& why) {
    keep_alive_ = false;
    WebResponse r;
    r.status = status;
    r.body = "{\"error\":\"" + std::string(status == 429 ? "BUSY" : "LIMIT") + "\",\"message\":\"" +
             why + "\"}";
    write(std::move(r));
  }

  void write(WebResponse res) {
    auto msg = std::make_shared<http::response<http::string_body>>(
        static_cast<http::status>(res.status), version_);
    msg->set(http::field::server, "rlhf-annotate-web");
    msg->set(http::field::content_type, res.content_type);
    for (const auto& [name, value] : res.headers) msg->insert(name, value);
    msg->body() = std::move(res.body);
    msg->keep_alive(keep_alive_);
    msg->prepare_payload();
    stream_.expires_after(millis(server_.opts.write_timeout_seconds));
    http::async_write(stream_, *msg,
                      [self = shared_from_this(), msg](beast::error_code ec, size_t) {
                        if (ec || !msg->keep_alive() || self->server_.stopped) return self->close();
                        self->start(false);
                      });
  }

  WebServer::Impl& server_;
  beast::tcp_stream stream_;
  std::string address_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  bool keep_alive_ = false;
  unsigned version_ = 11;
  bool waiting_ = true;  // I/O thread only
  bool closed_ = false;  // I/O thread only
  std::chrono::steady_clock::time_point waiting_since_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point request_start_;
};

}  // namespace

void WebServer::Impl::connection_closed(HttpConnection* c, const std::string& address) {
  {
    std::lock_guard<std::mutex> lock(mutex);
    live.erase(c);
    auto it = per_address.find(address);
    if (it != per_address.end() && --it->second == 0) per_address.erase(it);
  }
  --connections;
  if (!destroying)  // a descriptor is free again: end an EMFILE back-off now
    asio::post(io, [this] {
      if (accept_paused) accept_timer.cancel();
    });
}

bool WebServer::Impl::enqueue(const std::string& key, std::function<void()> job) {
  {
    std::lock_guard<std::mutex> lock(mutex);
    Lane& lane = lanes[key];
    if (lane.running) {
      if (lane.waiting.size() >= opts.max_queued_per_lane) return false;
      lane.waiting.push_back(std::move(job));
      return true;
    }
    lane.running = true;
  }
  start_job(key, std::move(job));
  return true;
}

void WebServer::Impl::start_job(std::string key, std::function<void()> job) {
  asio::post(pool, [this, key = std::move(key), job = std::move(job)]() mutable {
    job();
    job = nullptr;
    std::function<void()> next;
    {
      std::lock_guard<std::mutex> lock(mutex);
      auto it = lanes.find(key);
      if (it->second.waiting.empty()) {
        lanes.erase(it);
        return;
      }
      next = std::move(it->second.waiting.front());
      it->second.waiting.pop_front();
    }
    start_job(std::move(key), std::move(next));  // behind the other lanes' jobs: round robin
  });
}

void WebServer::Impl::admit(tcp::socket socket) {
  beast::error_code ec;
  auto peer = socket.remote_endpoint(ec);
  if (ec) return void(socket.close(ec));
  std::string address = peer.address().to_string();
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = per_address.find(address);
    if (it != per_address.end() && it->second >= opts.max_connections_per_address)
      return void(socket.close(ec));
  }
  // At the cap, the connection that has waited longest for a request makes room (browsers
  // reconnect); when every connection is being answered, the new one is closed.
  if (connections >= max_connections && !shed_longest_waiting()) return void(socket.close(ec));
  auto c = std::make_shared<HttpConnection>(*this, std::move(socket), address);
  {
    std::lock_guard<std::mutex> lock(mutex);
    ++per_address[address];  // counted down by the connection's destructor
    live.insert(c.get());
  }
  c->start(true);
}

void WebServer::Impl::accept() {
  acceptor.async_accept([this](beast::error_code ec, tcp::socket socket) {
    if (stopped || ec == asio::error::operation_aborted) return;
    if (!ec) {
      accept_backoff = {};
      admit(std::move(socket));
      return accept();
    }
    bool no_descriptors = ec == asio::error::no_descriptors || ec.value() == ENFILE ||
                          ec == asio::error::no_buffer_space || ec == asio::error::no_memory;
    if (no_descriptors) {
      // As the annotation server does: no reason to shed anyone unless someone is waiting.
      if (!connection_queued()) return accept_later();
      auto now = std::chrono::steady_clock::now();
      if (now - last_descriptor_warning > std::chrono::seconds(10)) {
        last_descriptor_warning = now;
        std::fprintf(stderr,
                     "annotate web: accept: %s (%zu connections); closing the connection that "
                     "waited longest for a request, then backing off\n",
                     ec.message().c_str(), connections.load());
      }
      if (shed_longest_waiting()) {
        shed_longest_waiting();  // one more: a sign-in needs a descriptor for the upstream too
        return accept();
      }
    } else if (ec == asio::error::connection_aborted) {
      return accept();
    }
    accept_later();
  });
}

bool WebServer::Impl::connection_queued() {
  pollfd p{acceptor.native_handle(), POLLIN, 0};
  return ::poll(&p, 1, 0) > 0 && (p.revents & POLLIN);
}

// Closes the connection that has waited longest for its next request; false when none waits.
bool WebServer::Impl::shed_longest_waiting() {
  std::vector<std::weak_ptr<HttpConnection>> all;
  {
    std::lock_guard<std::mutex> lock(mutex);
    for (HttpConnection* raw : live) all.push_back(raw->weak_from_this());  // empty while dying
  }
  std::shared_ptr<HttpConnection> oldest;
  for (auto& weak : all) {
    auto c = weak.lock();
    if (c && c->waiting() && (!oldest || c->waiting_since() < oldest->waiting_since())) oldest = c;
  }
  if (!oldest) return false;
  oldest->close();
  return true;
}

// Retries accept after a back-off instead of spinning on a listening socket that stays readable.
void WebServer::Impl::accept_later() {
  using std::chrono::milliseconds;
  accept_backoff =
      accept_backoff == std::chrono::steady_clock::duration{}
          ? std::chrono::steady_clock::duration(milliseconds(10))
          : std::min<std::chrono::steady_clock::duration>(accept_backoff * 2, milliseconds(250));
  accept_paused = true;
  accept_timer.expires_after(accept_backoff);
  accept_timer.async_wait([this](beast::error_code) {
    accept_paused = false;  // expired, or a connection closed (connection_closed cancels it)
    if (!stopped) accept();
  });
}

WebServer::WebServer(WebServerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {
  auto& o = impl_->opts;
  check_web_server_options(o);
  impl_->max_connections =
      std::max<size_t>(1, std::min(o.max_connections, half_the_free_descriptors()));
  auto [host, port] = split_listen_address(o.listen);
  auto ip = listen_ip(host, o.listen);
  if (!ip.is_loopback() && !o.allow_remote)
    throw UsageError("--listen " + o.listen +
                     " is not a loopback address: anyone on the network could reach the page. "
                     "Pass --allow-remote to mean it (and put TLS in front)");
  tcp::endpoint endpoint(ip, port);
  beast::error_code ec;
  impl_->acceptor.open(endpoint.protocol(), ec);
  if (!ec) impl_->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) impl_->acceptor.bind(endpoint, ec);
  if (!ec) impl_->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) throw Error("cannot listen on " + o.listen + ": " + ec.message());
  if (!o.allow_remote) o.relay.allowed_hosts = loopback_hosts(impl_->acceptor.local_endpoint());
  impl_->relay = std::make_unique<WebRelay>(o.relay);
}

WebServer::~WebServer() = default;

uint16_t WebServer::port() const { return impl_->acceptor.local_endpoint().port(); }

void WebServer::run() {
  auto& s = *impl_;
  if (s.opts.handle_signals) {
    s.signals.add(SIGINT);
    s.signals.add(SIGTERM);
    s.signals.async_wait([this](beast::error_code ec, int) {
      if (!ec) stop();
    });
  }
  s.accept();
  s.io.run();
}

void WebServer::stop() {
  asio::post(impl_->io, [s = impl_.get()] {
    s->stopped = true;
    beast::error_code ignored;
    s->acceptor.close(ignored);
    s->accept_timer.cancel();
    s->signals.cancel(ignored);
    s->io.stop();
  });
}

}  // namespace rlhf::annotation
