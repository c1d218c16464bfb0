#include "annotation/server.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <boost/asio.hpp>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <unordered_set>

#include "common/error.h"

namespace rlhf::annotation {

namespace asio = boost::asio;
using asio::local::stream_protocol;

namespace {

// True when something accepts connections on the Unix socket at `path`.
bool socket_is_live(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  bool live = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return live;
}

class Session;

}  // namespace

class Server::Impl {
 public:
  explicit Impl(ServerOptions o);
  ~Impl();
  void run();
  void stop();
  void do_stop();
  void accept();
  void remove(Session* s);

  ServerOptions opts;
  Store store;
  RequestHandler handler;
  GroupCommitter committer;
  asio::io_context io{1};
  stream_protocol::acceptor acceptor{io};
  asio::signal_set signals{io};
  std::unordered_set<std::shared_ptr<Session>> sessions;
  std::atomic<size_t> session_count{0};
  bool stopping = false;
  bool socket_removed = false;
};

namespace {

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(Server::Impl& server, stream_protocol::socket socket)
      : server_(server),
        socket_(std::move(socket)),
        decoder_(server.opts.max_frame_bytes),
        state_(std::make_shared<SessionState>()) {}

  void start() { process(); }

  // Called on the I/O thread during shutdown.
  void stop() {
    closing_ = true;
    if (!busy_) close();
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    boost::system::error_code ec;
    socket_.shutdown(stream_protocol::socket::shutdown_both, ec);
    socket_.close(ec);
    server_.remove(this);
  }

 private:
  void read() {
    if (closing_) return close();
    auto self = shared_from_this();
    socket_.async_read_some(asio::buffer(buf_),
                            [this, self](boost::system::error_code ec, size_t n) {
                              if (ec)
                                return close();  // EOF (a truncated frame is dropped) or error
                              decoder_.feed(buf_.data(), n);
                              process();
                            });
  }

  // Takes the next complete frame, if any, and handles it; otherwise reads more.
  void process() {
    if (closed_) return;
    std::string payload;
    switch (decoder_.next(&payload)) {
      case FrameDecoder::Status::kNeedMore:
        return read();
      case FrameDecoder::Status::kTooLarge:
        return write(error_response(proto::Error::BAD_FRAME,
                                    "frame length " + std::to_string(decoder_.declared_length()) +
                                        " exceeds the limit of " +
                                        std::to_string(server_.opts.max_frame_bytes) +
                                        " bytes; closing the connection"),
                     /*close_after=*/true);
      case FrameDecoder::Status::kFrame:
        break;
    }
    proto::Request request;
    std::string why;
    if (!decode_request(payload, &request, &why))
      return write(error_response(proto::Error::BAD_MESSAGE, why), false);
    if (auto early = answer_without_store(request, *state_))  // e.g. no Hello yet
      return write(*early, false);
    busy_ = true;
    auto self = shared_from_this();
    server_.committer.submit(std::move(request), state_, [this, self](proto::Response r) {
      asio::post(server_.io, [this, self, r = std::move(r)]() mutable { write(r, false); });
    });
  }

  void write(const proto::Response& response, bool close_after) {
    if (closed_) return;
    busy_ = true;
    try {
      out_ = encode_frame(response);
    } catch (const std::exception& e) {
      out_ = encode_frame(error_response(proto::Error::INTERNAL, e.what(), response.request_id()));
    }
    auto self = shared_from_this();
    asio::async_write(socket_, asio::buffer(out_),
                      [this, self, close_after](boost::system::error_code ec, size_t) {
                        busy_ = false;
                        if (ec || close_after || closing_) return close();
                        process();
                      });
  }

  Server::Impl& server_;
  stream_protocol::socket socket_;
  FrameDecoder decoder_;
  std::shared_ptr<SessionState> state_;
  std::array<char, 16384> buf_;
  std::string out_;
  bool busy_ = false;     // a request is with the store thread or a response is being written
  bool closing_ = false;  // shutting down: close after the in-flight response
  bool closed_ = false;
};

StoreOptions store_options(const ServerOptions& o) {
  StoreOptions s;
  s.synchronous_full = o.synchronous_full;
  s.create = true;
  return s;
}

}  // namespace

Server::Impl::Impl(ServerOptions o)
    : opts(std::move(o)),
      store(opts.db_path, store_options(opts)),
      handler(store, HandlerOptions{opts.lease_seconds}),
      committer(handler, opts.max_batch) {
  std::signal(SIGPIPE, SIG_IGN);
  const std::string& path = opts.socket_path;
  if (path.empty()) throw Error("--socket: a path is required");
  if (path.size() >= sizeof(sockaddr_un::sun_path))
    throw Error("socket path " + path + " is longer than " +
                std::to_string(sizeof(sockaddr_un::sun_path) - 1) + " bytes");
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      throw Error("socket path " + path + " exists and is not a socket; refusing to replace it");
    if (socket_is_live(path)) throw Error("another server is already listening on " + path);
    if (::unlink(path.c_str()) != 0)
      throw Error("cannot remove the stale socket " + path + ": " + std::strerror(errno));
  }
  boost::system::error_code ec;
  acceptor.open(stream_protocol(), ec);
  if (!ec) {
    mode_t old = ::umask(0177);  // the file is created 0600, never briefly wider
    acceptor.bind(stream_protocol::endpoint(path), ec);
    ::umask(old);
  }
  if (!ec && ::chmod(path.c_str(), static_cast<mode_t>(opts.socket_mode)) != 0)
    ec = boost::system::error_code(errno, boost::system::system_category());
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) throw Error("cannot listen on " + path + ": " + ec.message());
}

Server::Impl::~Impl() {
  committer.stop();
  if (!socket_removed) ::unlink(opts.socket_path.c_str());
}

void Server::Impl::accept() {
  acceptor.async_accept([this](boost::system::error_code ec, stream_protocol::socket socket) {
    if (stopping) return;
    if (!ec) {
      if (sessions.size() >= opts.max_connections) {
        boost::system::error_code ignored;
        socket.close(ignored);
      } else {
        auto s = std::make_shared<Session>(*this, std::move(socket));
        sessions.insert(s);
        session_count = sessions.size();
        s->start();
      }
    } else if (ec == asio::error::operation_aborted) {
      return;
    } else if (opts.verbose) {
      std::fprintf(stderr, "annotation server: accept: %s\n", ec.message().c_str());
    }
    accept();
  });
}

void Server::Impl::remove(Session* s) {
  for (auto it = sessions.begin(); it != sessions.end(); ++it) {
    if (it->get() == s) {
      sessions.erase(it);
      break;
    }
  }
  session_count = sessions.size();
}

void Server::Impl::run() {
  if (opts.handle_signals) {
    signals.add(SIGINT);
    signals.add(SIGTERM);
    signals.async_wait([this](boost::system::error_code ec, int) {
      if (!ec) do_stop();
    });
  }
  accept();
  io.run();
}

void Server::Impl::stop() {
  asio::post(io, [this] { do_stop(); });
}

void Server::Impl::do_stop() {
  if (stopping) return;
  stopping = true;
  boost::system::error_code ec;
  acceptor.close(ec);
  signals.cancel(ec);
  ::unlink(opts.socket_path.c_str());
  socket_removed = true;
  committer.stop();  // commits and answers everything queued (responses are posted to io)
  auto copy = sessions;
  for (auto& s : copy) s->stop();
}

Server::Server(ServerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Server::~Server() = default;
void Server::run() { impl_->run(); }
void Server::stop() { impl_->stop(); }
GroupCommitStats Server::stats() const { return impl_->committer.stats(); }
size_t Server::connections() const { return impl_->session_count; }

}  // namespace rlhf::annotation
