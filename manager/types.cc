#include "manager/types.h"

namespace berth::manager {

const std::vector<ExecState>& AllExecStates() {
  static const std::vector<ExecState> kAll = {
      ExecState::kPending, ExecState::kPlacing, ExecState::kStarting, ExecState::kRunning, ExecState::kSucceeded,
      ExecState::kFailed,  ExecState::kTimedOut, ExecState::kKilled,  ExecState::kLost,    ExecState::kError};
  return kAll;
}

const char* ExecStateName(ExecState s) {
  switch (s) {
    case ExecState::kPending: return "pending";
    case ExecState::kPlacing: return "placing";
    case ExecState::kStarting: return "starting";
    case ExecState::kRunning: return "running";
    case ExecState::kSucceeded: return "succeeded";
    case ExecState::kFailed: return "failed";
    case ExecState::kTimedOut: return "timed_out";
    case ExecState::kKilled: return "killed";
    case ExecState::kLost: return "lost";
    case ExecState::kError: return "error";
  }
  return "unknown";
}

Result<ExecState> ParseExecState(const std::string& s) {
  for (ExecState st : AllExecStates()) {
    if (s == ExecStateName(st)) return st;
  }
  return Status::InvalidArgument("state", "unknown execution state '" + s + "'");
}

bool IsTerminal(ExecState s) {
  return s == ExecState::kSucceeded || s == ExecState::kFailed || s == ExecState::kTimedOut ||
         s == ExecState::kKilled || s == ExecState::kLost || s == ExecState::kError;
}

bool CanTransition(ExecState from, ExecState to) {
  if (IsTerminal(from)) return false;  // terminal states are final
  // Whatever has not ended can be killed, lost with its node, or fail on the platform side.
  if (to == ExecState::kKilled || to == ExecState::kLost || to == ExecState::kError) return true;
  switch (from) {
    case ExecState::kPending: return to == ExecState::kPlacing;
    case ExecState::kPlacing: return to == ExecState::kStarting;
    // Back to placing: a failed start moves to another node (same record).
    case ExecState::kStarting: return to == ExecState::kRunning || to == ExecState::kPlacing;
    case ExecState::kRunning:
      return to == ExecState::kSucceeded || to == ExecState::kFailed || to == ExecState::kTimedOut;
    default: return false;
  }
}

const char* ProcKindName(ProcKind k) { return k == ProcKind::kInstance ? "instance" : "run"; }

Result<ProcKind> ParseProcKind(const std::string& s) {
  if (s == "run") return ProcKind::kRun;
  if (s == "instance") return ProcKind::kInstance;
  return Status::InvalidArgument("kind", "must be 'run' or 'instance'");
}

}  // namespace berth::manager
