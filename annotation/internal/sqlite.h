// Thin RAII wrappers over the SQLite C API: a connection and prepared statements.
// Owners are non-copyable; a Statement is used from the thread that owns its connection.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <string>

namespace rlhf::annotation::internal {

struct SqliteCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
struct StmtFinalizer {
  void operator()(sqlite3_stmt* s) const { sqlite3_finalize(s); }
};
using DbHandle = std::unique_ptr<sqlite3, SqliteCloser>;

// Throws rlhf::Error "<what>: <sqlite message> (code N)".
[[noreturn]] void throw_sqlite(sqlite3* db, const std::string& what);

// Runs SQL without results (may hold several statements); throws on failure.
void exec(sqlite3* db, const std::string& sql);

// A prepared statement. Bind indices start at 1, column indices at 0. step() returns true while
// there is a row; reset() clears bindings too. Statements are reset automatically when a new
// binding starts after a completed step, so a cached statement can be reused freely.
class Statement {
 public:
  Statement(sqlite3* db, const std::string& sql);
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  Statement& bind(int idx, int64_t v);
  Statement& bind(int idx, int v) { return bind(idx, static_cast<int64_t>(v)); }
  Statement& bind(int idx, double v);
  Statement& bind(int idx, const std::string& v);
  Statement& bind_null(int idx);

  bool step();  // true: a row is available
  void run();   // step() expecting no row (INSERT/UPDATE/DELETE), then reset()
  void reset();

  int64_t int64(int col) const { return sqlite3_column_int64(stmt_.get(), col); }
  double real(int col) const { return sqlite3_column_double(stmt_.get(), col); }
  std::string text(int col) const;
  bool is_null(int col) const { return sqlite3_column_type(stmt_.get(), col) == SQLITE_NULL; }

 private:
  sqlite3* db_;
  std::string sql_;
  std::unique_ptr<sqlite3_stmt, StmtFinalizer> stmt_;
  bool dirty_ = false;  // stepped since the last reset
  void prepare_for_bind();
};

}  // namespace rlhf::annotation::internal
