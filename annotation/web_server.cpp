#include "annotation/web_server.h"

#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cstdio>
#include <optional>

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

// The Host headers a browser sends for this server when it listens on loopback.
std::vector<std::string> loopback_hosts(uint16_t port) {
  std::string p = ":" + std::to_string(port);
  return {"127.0.0.1" + p, "localhost" + p, "[::1]" + p};
}

class HttpConnection;

}  // namespace

class WebServer::Impl {
 public:
  explicit Impl(WebServerOptions o) : opts(std::move(o)), pool(std::max(1, opts.worker_threads)) {}
  void accept();

  // Declaration order is destruction order reversed: the pool joins first, then the I/O objects
  // go (and with them the connections, which count themselves down), then the relay.
  WebServerOptions opts;
  std::atomic<size_t> connections{0};
  std::atomic<bool> stopped{false};
  std::unique_ptr<WebRelay> relay;
  asio::io_context io{1};
  tcp::acceptor acceptor{io};
  asio::signal_set signals{io};
  asio::thread_pool pool;
};

namespace {

class HttpConnection : public std::enable_shared_from_this<HttpConnection> {
 public:
  HttpConnection(WebServer::Impl& server, tcp::socket socket)
      : server_(server), stream_(std::move(socket)) {
    ++server_.connections;
  }
  ~HttpConnection() { --server_.connections; }

  void read() {
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(server_.opts.max_header_bytes));
    parser_->body_limit(server_.opts.max_body_bytes);
    stream_.expires_after(
        std::chrono::milliseconds(static_cast<int64_t>(server_.opts.read_timeout_seconds * 1000)));
    http::async_read(
        stream_, buffer_, *parser_,
        [self = shared_from_this()](beast::error_code ec, size_t) { self->on_read(ec); });
  }

 private:
  void on_read(beast::error_code ec) {
    if (ec == http::error::body_limit) return refuse(413, "request body too large");
    if (ec == http::error::header_limit) return refuse(431, "request headers too large");
    if (ec) return close();
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
    keep_alive_ = m.keep_alive();
    version_ = m.version();
    asio::post(server_.pool, [self = shared_from_this(), r = std::move(r)] {
      WebResponse res = self->server_.relay->handle(r);
      asio::post(self->stream_.get_executor(),
                 [self, res = std::move(res)]() mutable { self->write(std::move(res)); });
    });
  }

  void refuse(int status, const std::string& why) {
    keep_alive_ = false;
    WebResponse r;
    r.status = status;
    r.body = "{\"error\":\"LIMIT\",\"message\":\"" + why + "\"}";
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
    http::async_write(stream_, *msg,
                      [self = shared_from_this(), msg](beast::error_code ec, size_t) {
                        if (ec || !msg->keep_alive() || self->server_.stopped) return self->close();
                        self->read();
                      });
  }

  void close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
  }

  WebServer::Impl& server_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  bool keep_alive_ = false;
  unsigned version_ = 11;
};

}  // namespace

void WebServer::Impl::accept() {
  acceptor.async_accept([this](beast::error_code ec, tcp::socket socket) {
    if (ec) {
      if (ec != asio::error::operation_aborted && !stopped) accept();
      return;
    }
    if (connections >= opts.max_connections) {
      beast::error_code ignored;
      socket.close(ignored);
    } else {
      std::make_shared<HttpConnection>(*this, std::move(socket))->read();
    }
    accept();
  });
}

WebServer::WebServer(WebServerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {
  auto& o = impl_->opts;
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
  if (!o.allow_remote)
    o.relay.allowed_hosts = loopback_hosts(impl_->acceptor.local_endpoint().port());
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
    s->signals.cancel(ignored);
    s->io.stop();
  });
}

}  // namespace rlhf::annotation
