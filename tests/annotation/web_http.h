// A minimal blocking HTTP/1.1 client for the `rlhf annotate web` tests: one request per TCP
// connection ("Connection: close"), optionally from a chosen loopback source address (any of
// 127.0.0.0/8 works on Linux), with a deadline. No parsing beyond the status line, headers and
// body.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>

namespace rlhf::annotation::testing {

struct HttpAnswer {
  int status = 0;       // 0: no answer (refused, closed, timed out: see error)
  std::string headers;  // the header block, "Name: value\r\n..."
  std::string body;
  std::string error;
  double seconds = 0;  // from connect to the end of the answer
};

struct HttpCall {
  std::string method = "GET";
  std::string path = "/";
  std::string host;  // Host header; "" = 127.0.0.1:PORT
  std::string body;
  std::string cookie;
  std::string csrf;
  std::string source = "127.0.0.1";  // the client's own address
  std::string dest = "127.0.0.1";
  double timeout_seconds = 5;
};

// A TCP socket bound to `source` and connected to dest:port; -1 on failure.
inline int tcp_connect(const std::string& source, const std::string& dest, uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in from{};
  from.sin_family = AF_INET;
  ::inet_pton(AF_INET, source.c_str(), &from.sin_addr);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(port);
  ::inet_pton(AF_INET, dest.c_str(), &to.sin_addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof from) != 0 ||
      ::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

inline std::string http_request_text(const HttpCall& c, uint16_t port) {
  std::string host = c.host.empty() ? c.dest + ":" + std::to_string(port) : c.host;
  std::string r =
      c.method + " " + c.path + " HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n";
  if (c.method == "POST")
    r += "Content-Type: application/json\r\nContent-Length: " + std::to_string(c.body.size()) +
         "\r\n";
  if (!c.cookie.empty()) r += "Cookie: " + c.cookie + "\r\n";
  if (!c.csrf.empty()) r += "X-CSRF-Token: " + c.csrf + "\r\n";
  return r + "\r\n" + c.body;
}

// Sends one request and reads the answer until the server closes, within c.timeout_seconds.
inline HttpAnswer http_call(uint16_t port, const HttpCall& c) {
  using Clock = std::chrono::steady_clock;
  auto start = Clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(Clock::now() - start).count(); };
  HttpAnswer a;
  int fd = tcp_connect(c.source, c.dest, port);
  if (fd < 0) {
    a.error = std::string("connect: ") + std::strerror(errno);
    a.seconds = elapsed();
    return a;
  }
  std::string text = http_request_text(c, port);
  if (::send(fd, text.data(), text.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(text.size()))
    a.error = "send failed";
  std::string in;
  char buf[16384];
  while (a.error.empty()) {
    double left = c.timeout_seconds - elapsed();
    if (left <= 0) {
      a.error = "timed out";
      break;
    }
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left * 1000) + 1) <= 0) continue;
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    in.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  a.seconds = elapsed();
  size_t end = in.find("\r\n\r\n");
  if (in.rfind("HTTP/1.", 0) != 0 || end == std::string::npos) {
    if (a.error.empty()) a.error = in.empty() ? "closed without an answer" : "not HTTP: " + in;
    return a;
  }
  a.status = std::atoi(in.c_str() + in.find(' ') + 1);
  a.headers = in.substr(in.find("\r\n") + 2, end - in.find("\r\n"));
  a.body = in.substr(end + 4);
  return a;
}

// The value of header `name` (case as sent by the server), or "".
inline std::string header_value(const HttpAnswer& a, const std::string& name) {
  size_t p = a.headers.find(name + ": ");
  if (p == std::string::npos) return "";
  size_t b = p + name.size() + 2;
  return a.headers.substr(b, a.headers.find("\r\n", b) - b);
}

}  // namespace rlhf::annotation::testing
