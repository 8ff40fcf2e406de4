// core/error.h: the error type every Switchyard library throws, and the check macros.
// Library code reports (throws); only main() decides to end the process (DESIGN decision 9).
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace switchyard {

// What kind of failure: decides the exit code main() returns.
enum class ErrorKind {
  usage = 2,     // bad command line, config, data file or checkpoint: the user can fix it
  internal = 1,  // a bug or a failing library call
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, std::string message) : std::runtime_error(std::move(message)), kind_(kind) {}
  ErrorKind kind() const { return kind_; }
  int exit_code() const { return static_cast<int>(kind_); }

 private:
  ErrorKind kind_;
};

// A user-fixable error (config, data, command line): exit code 2.
template <typename... Args>
[[noreturn]] void throw_usage(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(ErrorKind::usage, fmt::format(f, std::forward<Args>(args)...));
}

// An internal error (failed invariant, failing library call): exit code 1.
template <typename... Args>
[[noreturn]] void throw_internal(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(ErrorKind::internal, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace switchyard

// SY_CHECK(cond, "fmt", args...): internal invariant; the message gets file and line.
#define SY_CHECK(cond, ...)                                                                       \
  do {                                                                                            \
    if (!(cond)) {                                                                                \
      ::switchyard::throw_internal("{}:{}: check failed: {}: {}", __FILE__, __LINE__, #cond,      \
                                   ::fmt::format(__VA_ARGS__));                                   \
    }                                                                                             \
  } while (0)
