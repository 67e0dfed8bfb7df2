#include "manager/types.h"

namespace berth::manager {

const char* ExecStateName(ExecState s) {
  switch (s) {
    case ExecState::kPending: return "pending";
    case ExecState::kBooting: return "booting";
    case ExecState::kRunning: return "running";
    case ExecState::kSucceeded: return "succeeded";
    case ExecState::kFailed: return "failed";
    case ExecState::kTimedOut: return "timed_out";
    case ExecState::kError: return "error";
  }
  return "unknown";
}

Result<ExecState> ParseExecState(const std::string& s) {
  for (ExecState st : {ExecState::kPending, ExecState::kBooting, ExecState::kRunning, ExecState::kSucceeded,
                       ExecState::kFailed, ExecState::kTimedOut, ExecState::kError}) {
    if (s == ExecStateName(st)) return st;
  }
  return Status::InvalidArgument("status", "unknown execution status '" + s + "'");
}

bool IsTerminal(ExecState s) {
  return s == ExecState::kSucceeded || s == ExecState::kFailed || s == ExecState::kTimedOut || s == ExecState::kError;
}

bool CanTransition(ExecState from, ExecState to) {
  switch (from) {
    case ExecState::kPending: return to == ExecState::kBooting || to == ExecState::kError;
    case ExecState::kBooting: return to == ExecState::kRunning || to == ExecState::kError;
    case ExecState::kRunning:
      return to == ExecState::kSucceeded || to == ExecState::kFailed || to == ExecState::kTimedOut ||
             to == ExecState::kError;
    default: return false;  // terminal states are final
  }
}

}  // namespace berth::manager
