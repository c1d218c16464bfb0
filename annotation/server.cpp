#include "annotation/server.h"

#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio.hpp>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <unordered_map>

#include "annotation/local_socket.h"
#include "common/error.h"

namespace rlhf::annotation {

namespace asio = boost::asio;
using asio::local::stream_protocol;
using Clock = std::chrono::steady_clock;

namespace {

constexpr Clock::time_point kNever = Clock::time_point::max();

Clock::duration seconds(double s) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

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

// Raises the RLIMIT_NOFILE soft limit to the hard limit (or as far as the kernel allows);
// returns the soft limit in force afterwards.
size_t raise_descriptor_limit() {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) return 1024;
  if (lim.rlim_cur < lim.rlim_max) {
    rlimit want = lim;
    want.rlim_cur = lim.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &want) == 0) {
      lim = want;
    } else {
      // An unlimited hard limit is refused above fs.nr_open; settle for 2^20.
      want.rlim_cur = std::max<rlim_t>(lim.rlim_cur, std::min<rlim_t>(lim.rlim_max, 1 << 20));
      if (::setrlimit(RLIMIT_NOFILE, &want) == 0) lim = want;
    }
  }
  return lim.rlim_cur == RLIM_INFINITY ? (1u << 20) : static_cast<size_t>(lim.rlim_cur);
}

void check_options(const ServerOptions& o) {
  auto positive = [](double v, const char* name) {
    if (!(v > 0))
      throw Error(std::string("server option ") + name +
                  ": expected a number of seconds > 0, got " + std::to_string(v));
  };
  positive(o.lease_seconds, "lease_seconds");
  positive(o.hello_timeout_seconds, "hello_timeout_seconds");
  positive(o.frame_timeout_seconds, "frame_timeout_seconds");
  positive(o.idle_timeout_seconds, "idle_timeout_seconds");
  positive(o.write_timeout_seconds, "write_timeout_seconds");
  positive(o.stop_timeout_seconds, "stop_timeout_seconds");
  if (o.max_connections < 1) throw Error("server option max_connections: expected >= 1, got 0");
  if (o.max_unauthenticated < 1)
    throw Error("server option max_unauthenticated: expected >= 1, got 0");
  if (o.socket_mode != 0600 && o.socket_mode != 0660)
    throw Error("server option socket_mode: expected 0600 or 0660");
}

// How often the deadline sweep runs: a quarter of the shortest timeout, 10 ms to 1 s.
Clock::duration sweep_interval(const ServerOptions& o) {
  double shortest =
      std::min({o.hello_timeout_seconds, o.frame_timeout_seconds, o.idle_timeout_seconds,
                o.write_timeout_seconds, o.stop_timeout_seconds});
  return seconds(std::clamp(shortest / 4, 0.01, 1.0));
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
  void accept_later();
  bool connection_queued();
  void admit(stream_protocol::socket socket);
  bool peer_allowed(int fd);
  bool shed_idle_unauthenticated(const char* why);
  void sweep();
  void remove(Session* s);
  void authenticated(Session* s);
  void log(const std::string& line) const;

  ServerOptions opts;
  size_t descriptor_limit = raise_descriptor_limit();
  size_t max_connections = 0;      // opts.max_connections lowered to the descriptor limit
  size_t max_unauthenticated = 0;  // opts.max_unauthenticated, at most max_connections
  Store store;
  RequestHandler handler;
  GroupCommitter committer;
  asio::io_context io{1};
  std::unique_ptr<ServerLock> lock;
  stream_protocol::acceptor acceptor{io};
  asio::signal_set signals{io};
  asio::steady_timer sweep_timer{io};
  asio::steady_timer accept_timer{io};
  Clock::duration accept_backoff{};  // zero while accept works
  bool accept_paused = false;        // accept_timer is waiting (descriptors exhausted)
  Clock::time_point last_descriptor_warning{};
  std::unordered_map<Session*, std::shared_ptr<Session>> sessions;
  size_t unauthenticated = 0;
  std::atomic<size_t> session_count{0};
  bool stopping = false;
  Clock::time_point stop_deadline = kNever;
  bool socket_removed = false;
};

namespace {

// One connection. Lives on the I/O thread; its deadline is enforced by Server::Impl::sweep().
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(Server::Impl& server, stream_protocol::socket socket)
      : server_(server),
        socket_(std::move(socket)),
        decoder_(server.opts.max_frame_bytes),
        state_(std::make_shared<SessionState>()),
        hello_deadline_(Clock::now() + seconds(server.opts.hello_timeout_seconds)),
        last_active_(Clock::now()) {}

  void start() { process(); }

  // Called on the I/O thread during shutdown.
  void stop() {
    closing_ = true;
    if (!busy_) return close();
    deadline_ = std::min(deadline_, server_.stop_deadline);
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    boost::system::error_code ec;
    socket_.shutdown(stream_protocol::socket::shutdown_both, ec);
    socket_.close(ec);
    server_.remove(this);
  }

  bool authenticated() const { return authenticated_; }
  // Not waiting for the store or for the client to take a response.
  bool idle() const { return !busy_; }
  Clock::time_point last_active() const { return last_active_; }
  Clock::time_point deadline() const { return deadline_; }
  const char* waiting_for() const { return waiting_for_; }

 private:
  void read() {
    if (closing_) return close();
    set_read_deadline();
    auto self = shared_from_this();
    socket_.async_read_some(asio::buffer(buf_),
                            [this, self](boost::system::error_code ec, size_t n) {
                              if (ec)
                                return close();  // EOF (a truncated frame is dropped) or error
                              last_active_ = Clock::now();
                              decoder_.feed(buf_.data(), n);
                              process();
                            });
  }

  // Idle between frames: the idle timeout (or the Hello deadline); inside a frame: the frame
  // timeout from the read that brought its first byte.
  void set_read_deadline() {
    auto now = Clock::now();
    if (decoder_.buffered() == 0) {
      deadline_ = authenticated_ ? now + seconds(server_.opts.idle_timeout_seconds) : kNever;
      waiting_for_ = "a request (idle timeout)";
    } else {
      if (frame_started_ == kNever) frame_started_ = now;
      deadline_ = frame_started_ + seconds(server_.opts.frame_timeout_seconds);
      waiting_for_ = "the rest of a frame (frame timeout)";
    }
    if (!authenticated_ && hello_deadline_ < deadline_) {
      deadline_ = hello_deadline_;
      waiting_for_ = "a successful Hello (hello timeout)";
    }
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
        frame_started_ = kNever;
        break;
    }
    proto::Request request;
    std::string why;
    if (!decode_request(payload, &request, &why))
      return write(error_response(proto::Error::BAD_MESSAGE, why), false);
    if (auto early = answer_without_store(request, *state_))  // e.g. no Hello yet
      return write(*early, false);
    busy_ = true;
    deadline_ = kNever;  // the store's turn
    auto self = shared_from_this();
    server_.committer.submit(std::move(request), state_, [this, self](proto::Response r) {
      asio::post(server_.io, [this, self, r = std::move(r)]() mutable {
        if (r.has_hello() && !authenticated_ && !closed_) {
          authenticated_ = true;
          server_.authenticated(this);
        }
        write(r, false);
      });
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
    deadline_ =
        std::min(Clock::now() + seconds(server_.opts.write_timeout_seconds), server_.stop_deadline);
    waiting_for_ = "the client to read a response (write timeout)";
    auto self = shared_from_this();
    asio::async_write(socket_, asio::buffer(out_),
                      [this, self, close_after](boost::system::error_code ec, size_t) {
                        busy_ = false;
                        if (ec || close_after || closing_) return close();
                        last_active_ = Clock::now();
                        process();
                      });
  }

  Server::Impl& server_;
  stream_protocol::socket socket_;
  FrameDecoder decoder_;
  std::shared_ptr<SessionState> state_;
  std::array<char, 16384> buf_;
  std::string out_;
  Clock::time_point hello_deadline_;
  Clock::time_point last_active_;             // last bytes in or response out
  Clock::time_point frame_started_ = kNever;  // first read of the buffered partial frame
  Clock::time_point deadline_ = kNever;       // closed by the sweep when passed
  const char* waiting_for_ = "";              // what the deadline is for (for the log)
  bool authenticated_ = false;                // a Hello was answered HelloOk
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

ServerOptions with_defaults(ServerOptions o) {
  check_options(o);
  if (o.socket_path.empty()) {
    o.socket_path = default_socket_path();
    ensure_private_directory(socket_directory(o.socket_path));
  }
  return o;
}

}  // namespace

Server::Impl::Impl(ServerOptions o)
    : opts(with_defaults(std::move(o))),
      store(opts.db_path, store_options(opts)),
      handler(store, HandlerOptions{opts.lease_seconds}),
      committer(handler, opts.max_batch) {
  std::signal(SIGPIPE, SIG_IGN);
  if (descriptor_limit <= kReservedDescriptors + 1)
    throw Error("the descriptor limit (ulimit -n) is " + std::to_string(descriptor_limit) +
                "; the server needs more than " + std::to_string(kReservedDescriptors + 1));
  max_connections = std::min(opts.max_connections, descriptor_limit - kReservedDescriptors);
  max_unauthenticated = std::min(opts.max_unauthenticated, max_connections);

  const std::string& path = opts.socket_path;
  lock = std::make_unique<ServerLock>(path);  // with it held, a socket file at path is stale
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      throw Error("socket path " + path + " exists and is not a socket; refusing to replace it");
    if (socket_is_live(path))
      throw Error("another program is already listening on " + path + "; refusing to replace it");
  }
  int fd = listen_on_path(path, opts.socket_mode, asio::socket_base::max_listen_connections);
  boost::system::error_code ec;
  acceptor.assign(stream_protocol(), fd, ec);
  if (ec) {
    ::close(fd);
    ::unlink(path.c_str());
    throw Error("cannot listen on " + path + ": " + ec.message());
  }
}

Server::Impl::~Impl() {
  committer.stop();
  if (!socket_removed) ::unlink(opts.socket_path.c_str());
}

void Server::Impl::log(const std::string& line) const {
  std::fprintf(stderr, "annotation server: %s\n", line.c_str());
}

void Server::Impl::accept() {
  acceptor.async_accept([this](boost::system::error_code ec, stream_protocol::socket socket) {
    if (stopping || ec == asio::error::operation_aborted) return;
    if (!ec) {
      accept_backoff = {};
      admit(std::move(socket));
      return accept();
    }
    bool no_descriptors = ec == asio::error::no_descriptors || ec.value() == ENFILE ||
                          ec == asio::error::no_buffer_space || ec == asio::error::no_memory;
    if (no_descriptors) {
      // Linux reports EMFILE before it looks at the queue, so Asio's speculative accept right
      // after the connection that took the last descriptor fails too, with nobody waiting. That
      // is no reason to shed anyone (the connection just admitted, whose Hello may not have
      // arrived yet, would be the first to go): wait until a connection is actually queued.
      if (!connection_queued()) return accept_later();
      auto now = Clock::now();
      if (now - last_descriptor_warning > std::chrono::seconds(10)) {
        last_descriptor_warning = now;
        log("accept: " + ec.message() + " (descriptor limit " + std::to_string(descriptor_limit) +
            ", " + std::to_string(sessions.size()) +
            " connections); shedding idle unauthenticated connections, then backing off");
      }
      if (shed_idle_unauthenticated("descriptors exhausted")) return accept();
    } else if (ec == asio::error::connection_aborted) {
      return accept();  // the client gave up while queued
    } else if (opts.verbose) {
      log("accept: " + ec.message());
    }
    accept_later();
  });
}

// Whether a connection waits in the listening socket's queue.
bool Server::Impl::connection_queued() {
  pollfd p{acceptor.native_handle(), POLLIN, 0};
  return ::poll(&p, 1, 0) > 0 && (p.revents & POLLIN);
}

// Retries accept after a back-off instead of spinning on a listening socket that stays readable.
void Server::Impl::accept_later() {
  accept_backoff = accept_backoff == Clock::duration{}
                       ? Clock::duration(std::chrono::milliseconds(10))
                       : std::min<Clock::duration>(accept_backoff * 2, std::chrono::seconds(1));
  accept_paused = true;
  accept_timer.expires_after(accept_backoff);
  accept_timer.async_wait([this](boost::system::error_code) {
    accept_paused = false;  // timer expired or a connection closed (remove() cancels it)
    if (!stopping) accept();
  });
}

bool Server::Impl::peer_allowed(int fd) {
  PeerCredentials peer;
  try {
    peer = peer_credentials(fd);
  } catch (const Error& e) {
    if (opts.verbose) log(std::string("refusing a connection: ") + e.what());
    return false;
  }
  if (peer.uid == ::geteuid() || peer.uid == 0 || (opts.socket_mode & 0060)) return true;
  if (opts.verbose)
    log("refusing a connection from pid " + std::to_string(peer.pid) + ", " +
        describe_uid(peer.uid) + ": not the server's user (--socket-mode 0660 admits the group)");
  return false;
}

void Server::Impl::admit(stream_protocol::socket socket) {
  boost::system::error_code ignored;
  if (!peer_allowed(socket.native_handle())) return void(socket.close(ignored));
  bool room = true;
  if (unauthenticated >= max_unauthenticated)
    room = shed_idle_unauthenticated("too many unauthenticated connections");
  if (room && sessions.size() >= max_connections)
    room = shed_idle_unauthenticated("connection limit reached");
  if (!room) {
    if (opts.verbose) log("connection limit reached; closing a new connection");
    return void(socket.close(ignored));
  }
  auto s = std::make_shared<Session>(*this, std::move(socket));
  sessions.emplace(s.get(), s);
  ++unauthenticated;
  session_count = sessions.size();
  s->start();
}

// Closes the unauthenticated connection that has been idle the longest; false when none is idle.
bool Server::Impl::shed_idle_unauthenticated(const char* why) {
  std::shared_ptr<Session> oldest;
  for (auto& [raw, s] : sessions)
    if (!s->authenticated() && s->idle() && (!oldest || s->last_active() < oldest->last_active()))
      oldest = s;
  if (!oldest) return false;
  if (opts.verbose) log(std::string("shedding an idle unauthenticated connection: ") + why);
  oldest->close();
  return true;
}

// Closes every connection whose deadline passed; runs every sweep_interval() until stopped.
void Server::Impl::sweep() {
  auto now = Clock::now();
  std::vector<std::shared_ptr<Session>> expired;
  for (auto& [raw, s] : sessions)
    if (s->deadline() <= now) expired.push_back(s);
  for (auto& s : expired) {
    if (opts.verbose)
      log(std::string("closing a connection: timed out waiting for ") + s->waiting_for());
    s->close();
  }
  if (stopping && sessions.empty()) return;
  sweep_timer.expires_after(sweep_interval(opts));
  sweep_timer.async_wait([this](boost::system::error_code ec) {
    if (!ec) sweep();
  });
}

void Server::Impl::remove(Session* s) {
  auto it = sessions.find(s);
  if (it == sessions.end()) return;
  if (!s->authenticated()) --unauthenticated;
  auto keep_alive = std::move(it->second);  // s may be running one of its handlers
  sessions.erase(it);
  session_count = sessions.size();
  if (accept_paused) accept_timer.cancel();  // a descriptor is free again
  if (stopping && sessions.empty()) sweep_timer.cancel();
}

void Server::Impl::authenticated(Session*) { --unauthenticated; }

void Server::Impl::run() {
  if (opts.handle_signals) {
    signals.add(SIGINT);
    signals.add(SIGTERM);
    signals.async_wait([this](boost::system::error_code ec, int) {
      if (!ec) do_stop();
    });
  }
  accept();
  sweep();
  io.run();
}

void Server::Impl::stop() {
  asio::post(io, [this] { do_stop(); });
}

void Server::Impl::do_stop() {
  if (stopping) return;
  stopping = true;
  stop_deadline = Clock::now() + seconds(opts.stop_timeout_seconds);
  boost::system::error_code ec;
  acceptor.close(ec);
  accept_timer.cancel();
  signals.cancel(ec);
  ::unlink(opts.socket_path.c_str());
  socket_removed = true;
  committer.stop();  // commits and answers everything queued (responses are posted to io)
  std::vector<std::shared_ptr<Session>> copy;
  for (auto& [raw, s] : sessions) copy.push_back(s);
  for (auto& s : copy) s->stop();
  if (sessions.empty()) sweep_timer.cancel();
}

Server::Server(ServerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Server::~Server() = default;
void Server::run() { impl_->run(); }
void Server::stop() { impl_->stop(); }
GroupCommitStats Server::stats() const { return impl_->committer.stats(); }
size_t Server::connections() const { return impl_->session_count; }
const std::string& Server::socket_path() const { return impl_->opts.socket_path; }
size_t Server::max_connections() const { return impl_->max_connections; }
size_t Server::descriptor_limit() const { return impl_->descriptor_limit; }

}  // namespace rlhf::annotation
