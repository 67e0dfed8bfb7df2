// Status and Result<T>: the error currency at every module boundary.
//
// A Status is a code, a human-readable message and, for bad input, the name
// of the offending field. Modules never throw across their boundary; they
// return Status/Result. The API layer maps Code -> HTTP status in one place.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace berth {

enum class Code {
  kOk = 0,
  kInvalidArgument,     // caller sent something malformed (field names it)
  kNotFound,            // the named thing does not exist
  kAlreadyExists,       // create of something that exists
  kFailedPrecondition,  // legal request, wrong state (e.g. entrypoint missing in image)
  kResourceExhausted,   // no capacity, payload too large
  kDeadlineExceeded,    // a timeout fired
  kUnavailable,         // a dependency (libvirtd, a node) cannot be reached
  kPermissionDenied,   // authenticated, but not allowed to do this
  kUnauthenticated,    // no, malformed, unknown or revoked credentials
  kAborted,
  kUnimplemented,
  kInternal,            // a bug or an unexpected failure of the OS/libvirt
};

const char* CodeName(Code code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string message, std::string field = {})
      : code_(code), message_(std::move(message)), field_(std::move(field)) {}

  static Status Ok() { return {}; }
  static Status InvalidArgument(std::string field, std::string message) {
    return {Code::kInvalidArgument, std::move(message), std::move(field)};
  }
  static Status NotFound(std::string message, std::string field = {}) {
    return {Code::kNotFound, std::move(message), std::move(field)};
  }
  static Status AlreadyExists(std::string message) { return {Code::kAlreadyExists, std::move(message)}; }
  static Status FailedPrecondition(std::string message, std::string field = {}) {
    return {Code::kFailedPrecondition, std::move(message), std::move(field)};
  }
  static Status Unavailable(std::string message) { return {Code::kUnavailable, std::move(message)}; }
  static Status DeadlineExceeded(std::string message) { return {Code::kDeadlineExceeded, std::move(message)}; }
  static Status ResourceExhausted(std::string message) { return {Code::kResourceExhausted, std::move(message)}; }
  static Status Internal(std::string message) { return {Code::kInternal, std::move(message)}; }
  static Status Unimplemented(std::string message) { return {Code::kUnimplemented, std::move(message)}; }
  static Status PermissionDenied(std::string message) { return {Code::kPermissionDenied, std::move(message)}; }
  static Status Unauthenticated(std::string message) { return {Code::kUnauthenticated, std::move(message)}; }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  const std::string& field() const { return field_; }
  // "NOT_FOUND: function 'x' does not exist" (field appended when set).
  std::string ToString() const;

  // Prefixes the message with context, keeping code and field.
  Status WithContext(const std::string& context) const {
    if (ok()) return *this;
    return {code_, context + ": " + message_, field_};
  }

 private:
  Code code_ = Code::kOk;
  std::string message_;
  std::string field_;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Status status) : v_(std::move(status)) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace berth

#define BERTH_CONCAT_INNER(a, b) a##b
#define BERTH_CONCAT(a, b) BERTH_CONCAT_INNER(a, b)

#define BERTH_RETURN_IF_ERROR(expr)               \
  do {                                            \
    ::berth::Status berth_status_ = (expr);       \
    if (!berth_status_.ok()) return berth_status_; \
  } while (0)

#define BERTH_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return tmp.status();               \
  lhs = std::move(tmp).value()

#define BERTH_ASSIGN_OR_RETURN(lhs, expr) \
  BERTH_ASSIGN_OR_RETURN_IMPL(BERTH_CONCAT(berth_result_, __LINE__), lhs, expr)
