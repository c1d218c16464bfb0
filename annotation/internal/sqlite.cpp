#include "annotation/internal/sqlite.h"

#include "common/error.h"

namespace rlhf::annotation::internal {

void throw_sqlite(sqlite3* db, const std::string& what) {
  int code = db ? sqlite3_extended_errcode(db) : 0;
  std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
  throw Error(what + ": " + msg + " (sqlite code " + std::to_string(code) + ")");
}

void exec(sqlite3* db, const std::string& sql) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    throw Error("sqlite: " + msg + " in: " + sql.substr(0, 80));
  }
}

Statement::Statement(sqlite3* db, const std::string& sql) : db_(db), sql_(sql) {
  sqlite3_stmt* s = nullptr;
  if (sqlite3_prepare_v3(db, sql.c_str(), -1, SQLITE_PREPARE_PERSISTENT, &s, nullptr) != SQLITE_OK)
    throw_sqlite(db, "preparing '" + sql.substr(0, 80) + "'");
  stmt_.reset(s);
}

void Statement::prepare_for_bind() {
  if (dirty_) reset();
}

Statement& Statement::bind(int idx, int64_t v) {
  prepare_for_bind();
  if (sqlite3_bind_int64(stmt_.get(), idx, v) != SQLITE_OK) throw_sqlite(db_, "bind");
  return *this;
}

Statement& Statement::bind(int idx, double v) {
  prepare_for_bind();
  if (sqlite3_bind_double(stmt_.get(), idx, v) != SQLITE_OK) throw_sqlite(db_, "bind");
  return *this;
}

Statement& Statement::bind(int idx, const std::string& v) {
  prepare_for_bind();
  if (sqlite3_bind_text(stmt_.get(), idx, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT) !=
      SQLITE_OK)
    throw_sqlite(db_, "bind");
  return *this;
}

Statement& Statement::bind_null(int idx) {
  prepare_for_bind();
  if (sqlite3_bind_null(stmt_.get(), idx) != SQLITE_OK) throw_sqlite(db_, "bind");
  return *this;
}

bool Statement::step() {
  dirty_ = true;
  int rc = sqlite3_step(stmt_.get());
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  std::string what = "running '" + sql_.substr(0, 80) + "'";
  sqlite3_reset(stmt_.get());
  throw_sqlite(db_, what);
}

void Statement::run() {
  while (step()) {
  }
  reset();
}

void Statement::reset() {
  sqlite3_reset(stmt_.get());
  sqlite3_clear_bindings(stmt_.get());
  dirty_ = false;
}

std::string Statement::text(int col) const {
  const unsigned char* p = sqlite3_column_text(stmt_.get(), col);
  int n = sqlite3_column_bytes(stmt_.get(), col);
  return p ? std::string(reinterpret_cast<const char*>(p), n) : std::string();
}

}  // namespace rlhf::annotation::internal
