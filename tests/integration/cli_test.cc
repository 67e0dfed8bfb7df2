// The `berth` CLI, run as a binary against a real berthd with real TCG
// guests: exec/ps/fork/kill/wait/logs, functions, images, nodes, tokens,
// exit statuses for bad input, unknown pids and bad tokens, and the bash
// completion script.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/integration/support/harness.h"

namespace berth::testing {
namespace {

using nlohmann::json;

struct CliRun {
  int code = -1;
  std::string out, err;
};

std::string Quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string BerthBinary() { return std::string(BERTH_BINARY_DIR) + "/cli/berth"; }

// An instance that prints a greeting, then idles; TERM makes it say so and
// exit 7 (the record says killed by SIGTERM all the same).
const char* kIdle = "trap 'echo got-term; exit 7' TERM; echo hello-from-$BERTH_PID; while true; do sleep 1; done";

class CliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    daemon_ = new BerthdProcess();
    ASSERT_TRUE(daemon_->running()) << "berthd did not start:\n" << daemon_->log();
    image_ = daemon_->UploadBusybox();  // named "busybox"
    char tmpl[] = "/tmp/berth-cli-it-XXXXXX";
    dir_ = mkdtemp(tmpl);
  }
  static void TearDownTestSuite() {
    delete daemon_;
    daemon_ = nullptr;
    Shell("rm -rf " + Quote(dir_));
  }

  // Runs `berth ARGS` (ARGS are shell words) with BERTH_URL/BERTH_TOKEN set.
  static CliRun Berth(const std::string& args, const std::string& token = "") {
    const std::string err_file = dir_ + "/stderr";
    std::string cmd = "BERTH_URL=" + daemon_->base_url() + " BERTH_TOKEN=" +
                      Quote(token.empty() ? daemon_->admin_token() : token) + " " + BerthBinary() + " " + args +
                      " 2>" + err_file;
    CliRun r;
    r.out = Shell(cmd, &r.code);
    r.err = ReadFile(err_file);
    return r;
  }
  static int64_t Pid(const CliRun& r) {
    EXPECT_EQ(r.code, 0) << r.err;
    try {
      return std::stoll(r.out);
    } catch (...) {
      ADD_FAILURE() << "not a pid: '" << r.out << "' " << r.err;
      return -1;
    }
  }
  static json PsJson(bool all = false) {
    CliRun r = Berth(std::string("ps --json") + (all ? " -a" : ""));
    EXPECT_EQ(r.code, 0) << r.err;
    return json::parse(r.out, nullptr, false);
  }
  static json Find(const json& procs, int64_t pid) {
    for (const auto& p : procs) {
      if (p.value("pid", int64_t{-1}) == pid) return p;
    }
    return json();
  }
  // Polls (through the CLI) until the process left pending/placing/starting.
  static std::string WaitRunning(int64_t pid, int timeout_ms = 120000) {
    std::string st;
    for (int waited = 0; waited < timeout_ms; waited += 250) {
      st = Find(PsJson(true), pid).value("status", "");
      if (st != "pending" && st != "placing" && st != "starting") return st;
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    return st;
  }
  static std::string LogsUntil(int64_t pid, const std::string& want, int timeout_ms = 30000) {
    std::string out;
    for (int waited = 0; waited < timeout_ms; waited += 250) {
      out = Berth("logs " + std::to_string(pid)).out;
      if (out.find(want) != std::string::npos) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    return out;
  }

  static BerthdProcess* daemon_;
  static std::string image_, dir_;
};

BerthdProcess* CliTest::daemon_ = nullptr;
std::string CliTest::image_, CliTest::dir_;

TEST_F(CliTest, ExecPsForkTreeKillWaitLogs) {
  const int64_t a = Pid(Berth("exec --image busybox --name cli-a -- /bin/sh -c " + Quote(kIdle)));
  ASSERT_GT(a, 1);
  const std::string sa = std::to_string(a);

  // The table: PID PPID STATE KIND NAME IMAGE AGE, roots first.
  CliRun table = Berth("ps");
  ASSERT_EQ(table.code, 0) << table.err;
  std::istringstream lines(table.out);
  std::string header, kernel, init, line, row_a;
  std::getline(lines, header);
  std::getline(lines, kernel);
  std::getline(lines, init);
  EXPECT_EQ(header.substr(0, 3), "PID");
  for (const char* col : {"PPID", "STATE", "KIND", "NAME", "IMAGE", "AGE"}) {
    EXPECT_NE(header.find(col), std::string::npos) << header;
  }
  EXPECT_NE(kernel.find("kernel"), std::string::npos) << table.out;
  EXPECT_NE(init.find("init"), std::string::npos) << table.out;
  while (std::getline(lines, line)) {
    if (line.rfind(sa + " ", 0) == 0) row_a = line;
  }
  EXPECT_NE(row_a.find("cli-a"), std::string::npos) << table.out;
  EXPECT_NE(row_a.find("instance"), std::string::npos) << table.out;
  EXPECT_NE(row_a.find(image_.substr(0, 12)), std::string::npos) << table.out;
  EXPECT_EQ(row_a.find(image_.substr(0, 13)), std::string::npos) << "the image id is shortened: " << row_a;

  // --json: the API's records.
  json ps = PsJson();
  ASSERT_TRUE(ps.is_array()) << ps;
  EXPECT_EQ(ps[0]["name"], "kernel");
  EXPECT_EQ(ps[1]["name"], "init");
  EXPECT_EQ(Find(ps, a)["name"], "cli-a");
  EXPECT_EQ(Find(ps, a)["ppid"], 1);
  EXPECT_EQ(Find(ps, a)["image"], image_);

  ASSERT_EQ(WaitRunning(a), "running");
  EXPECT_NE(LogsUntil(a, "hello-from-" + sa).find("hello-from-" + sa), std::string::npos);

  // wait --timeout on a live process: 124, like timeout(1).
  CliRun still = Berth("wait " + sa + " --timeout 1");
  EXPECT_EQ(still.code, 124) << still.err;
  EXPECT_NE(still.err.find("still running"), std::string::npos) << still.err;

  // fork: a child of a, same image and command.
  const int64_t b = Pid(Berth("fork " + sa + " --name cli-b"));
  ASSERT_GT(b, a);
  const std::string sb = std::to_string(b);
  json pb = Find(PsJson(), b);
  EXPECT_EQ(pb["ppid"], a);
  EXPECT_EQ(pb["name"], "cli-b");

  // --tree: init, then a under it, then b under a (deeper).
  CliRun tree = Berth("ps --tree");
  ASSERT_EQ(tree.code, 0) << tree.err;
  std::istringstream tl(tree.out);
  std::string first, line_a, line_b;
  std::getline(tl, first);
  EXPECT_EQ(first, "1 init") << tree.out;
  while (std::getline(tl, line)) {
    if (line.find(" " + sa + " cli-a") != std::string::npos) line_a = line;
    if (line.find(" " + sb + " cli-b") != std::string::npos) line_b = line;
  }
  ASSERT_FALSE(line_a.empty()) << tree.out;
  ASSERT_FALSE(line_b.empty()) << tree.out;
  EXPECT_TRUE(line_a.rfind("├─ ", 0) == 0 || line_a.rfind("└─ ", 0) == 0) << "a hangs under init:\n" << tree.out;
  EXPECT_LT(tree.out.find(line_a), tree.out.find(line_b)) << tree.out;
  EXPECT_GT(line_b.find(sb + " cli-b"), line_a.find(sa + " cli-a")) << "b is drawn deeper than a:\n" << tree.out;

  ASSERT_EQ(WaitRunning(b), "running");

  // kill --tree: both get TERM; wait reports 128+15.
  CliRun killed = Berth("kill --tree " + sa);
  ASSERT_EQ(killed.code, 0) << killed.err;
  EXPECT_NE(killed.out.find(sa), std::string::npos) << killed.out;
  EXPECT_NE(killed.out.find(sb), std::string::npos) << killed.out;
  CliRun wa = Berth("wait " + sa + " --timeout 60");
  EXPECT_EQ(wa.code, 128 + 15) << wa.out << wa.err;
  EXPECT_NE(wa.out.find("killed"), std::string::npos) << wa.out;
  CliRun wb = Berth("--json wait " + sb + " --timeout 60");
  EXPECT_EQ(wb.code, 128 + 15) << wb.err;
  json rec = json::parse(wb.out, nullptr, false);
  EXPECT_EQ(rec.value("status", ""), "killed") << wb.out;
  EXPECT_EQ(rec.value("signal", 0), 15) << wb.out;

  // Ended processes: only with -a; the tree still nests them.
  EXPECT_TRUE(Find(PsJson(), a).is_null());
  EXPECT_EQ(Find(PsJson(true), a)["status"], "killed");
  CliRun tree_all = Berth("ps --tree -a");
  EXPECT_NE(tree_all.out.find(sb + " cli-b  killed"), std::string::npos) << tree_all.out;

  // Forking an ended process is the server's 4xx: exit 2 with its message.
  CliRun fork_dead = Berth("fork " + sa);
  EXPECT_EQ(fork_dead.code, 2);
  EXPECT_NE(fork_dead.err.find("only a live process can fork"), std::string::npos) << fork_dead.err;
}

TEST_F(CliTest, WaitExitCodeAndFollowedLogs) {
  const int64_t d = Pid(Berth("exec --image busybox --name counter -e WORD=tick -- /bin/sh -c " +
                              Quote("for i in 1 2 3; do echo line$i $WORD; sleep 1; done; echo oops >&2; exit 5")));
  ASSERT_GT(d, 1);
  const std::string sd = std::to_string(d);
  // -f returns once the process ended, having printed everything once.
  CliRun follow = Berth("logs -f --interval 0.3 " + sd);
  EXPECT_EQ(follow.code, 0) << follow.err;
  EXPECT_EQ(follow.out, "line1 tick\nline2 tick\nline3 tick\n");
  EXPECT_EQ(follow.err, "oops\n");
  CliRun w = Berth("wait " + sd);
  EXPECT_EQ(w.code, 5) << w.out << w.err;
  EXPECT_NE(w.out.find("failed (exit 5)"), std::string::npos) << w.out;
  CliRun logs = Berth("logs " + sd);
  EXPECT_EQ(logs.out, "line1 tick\nline2 tick\nline3 tick\n");
  CliRun logs_json = Berth("logs --json " + sd);
  EXPECT_EQ(json::parse(logs_json.out, nullptr, false).value("stderr", ""), "oops\n") << logs_json.out;
}

TEST_F(CliTest, FunctionDeployInvokeAndList) {
  CliRun created = Berth("fn deploy cli-echo --image busybox -- echo");
  ASSERT_EQ(created.code, 0) << created.err;
  EXPECT_EQ(created.out, "created cli-echo version 1\n");
  // An update keeps what it does not change.
  CliRun updated = Berth("fn deploy cli-echo --memory-mib 192");
  ASSERT_EQ(updated.code, 0) << updated.err;
  EXPECT_EQ(updated.out, "updated cli-echo version 2\n");
  json fn = json::parse(Berth("fn get cli-echo").out, nullptr, false);
  EXPECT_EQ(fn["memory_mib"], 192);
  EXPECT_EQ(fn["entrypoint"], json::array({"echo"}));
  EXPECT_EQ(fn["image"], image_);

  // From a JSON file (the image by name).
  const std::string spec = dir_ + "/exit4.json";
  std::ofstream(spec) << json{{"name", "cli-exit4"}, {"image", "busybox"},
                              {"entrypoint", {"sh", "-c", "echo four; exit 4"}}, {"memory_mib", 128}}.dump();
  CliRun from_file = Berth("fn deploy -f " + spec);
  ASSERT_EQ(from_file.code, 0) << from_file.err;

  CliRun ls = Berth("fn ls");
  ASSERT_EQ(ls.code, 0) << ls.err;
  EXPECT_NE(ls.out.find("cli-echo"), std::string::npos) << ls.out;
  EXPECT_NE(ls.out.find("cli-exit4"), std::string::npos) << ls.out;

  CliRun hello = Berth("fn invoke cli-echo -- hello from the cli");
  EXPECT_EQ(hello.code, 0) << hello.err;
  EXPECT_EQ(hello.out, "hello from the cli\n");
  CliRun four = Berth("invoke cli-exit4");
  EXPECT_EQ(four.code, 4) << four.err;
  EXPECT_EQ(four.out, "four\n");
  CliRun four_json = Berth("--json invoke cli-exit4");
  EXPECT_EQ(four_json.code, 4) << four_json.err;
  EXPECT_EQ(json::parse(four_json.out, nullptr, false).value("exit_code", -1), 4) << four_json.out;

  // Bad input: berthd's 400 becomes exit 2 with its message and field.
  CliRun bad = Berth("fn deploy cli-bad --image busybox --memory-mib 1 -- echo");
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.err.find("must be between 64 and 65536"), std::string::npos) << bad.err;
  EXPECT_NE(bad.err.find("memory_mib"), std::string::npos) << bad.err;

  CliRun rm = Berth("fn rm cli-exit4");
  EXPECT_EQ(rm.code, 0) << rm.err;
  EXPECT_EQ(Berth("fn get cli-exit4").code, 3);
  EXPECT_EQ(Berth("fn rm cli-exit4").code, 3);
}

TEST_F(CliTest, ExitStatusesForBadInputUnknownPidsAndTokens) {
  // The server's 400, with its message: nothing starts.
  CliRun mem = Berth("exec --image busybox --memory 1");
  EXPECT_EQ(mem.code, 2);
  EXPECT_NE(mem.err.find("must be between 64 and 65536"), std::string::npos) << mem.err;
  EXPECT_NE(mem.err.find("memory_mib"), std::string::npos) << mem.err;
  CliRun noimg = Berth("exec --image no-such-image");
  EXPECT_EQ(noimg.code, 3) << noimg.err;
  EXPECT_NE(noimg.err.find("no-such-image"), std::string::npos) << noimg.err;
  CliRun init = Berth("kill 1");
  EXPECT_EQ(init.code, 2);
  EXPECT_NE(init.err.find("cannot be killed"), std::string::npos) << init.err;

  // Bad usage never reaches berthd.
  EXPECT_EQ(Berth("exec").code, 2);
  EXPECT_EQ(Berth("exec --image busybox --function f").code, 2);
  EXPECT_EQ(Berth("kill -s HUP 5").code, 2);
  EXPECT_EQ(Berth("no-such-command").code, 2);

  // Unknown pid: 3, for every process command.
  for (const char* cmd : {"wait 999999", "kill 999999", "logs 999999", "fork 999999"}) {
    CliRun r = Berth(cmd);
    EXPECT_EQ(r.code, 3) << cmd << ": " << r.err;
    EXPECT_NE(r.err.find("999999"), std::string::npos) << cmd << ": " << r.err;
  }

  // A bad token: 4; berthd unreachable: 5.
  EXPECT_EQ(Berth("ps", "brt_not_a_real_token").code, 4);
  CliRun down = Berth("--api http://127.0.0.1:1 ps");
  EXPECT_EQ(down.code, 5);
  EXPECT_NE(down.err.find("cannot reach berthd"), std::string::npos) << down.err;
}

TEST_F(CliTest, ImagesNodesAndTokens) {
  // push DIR builds a filesystem image first.
  const std::string tree = dir_ + "/tree";
  Shell("mkdir -p " + Quote(tree + "/etc") + " && echo hi > " + Quote(tree + "/etc/motd"));
  CliRun pushed = Berth("image push " + Quote(tree) + " --name cli-tree");
  ASSERT_EQ(pushed.code, 0) << pushed.err;
  const std::string id = pushed.out.substr(0, pushed.out.find('\n'));
  EXPECT_EQ(id.size(), 64u) << pushed.out;
  CliRun ls = Berth("image ls");
  EXPECT_NE(ls.out.find("cli-tree"), std::string::npos) << ls.out;
  EXPECT_NE(ls.out.find(id.substr(0, 12)), std::string::npos) << ls.out;
  json inspected = json::parse(Berth("image inspect cli-tree").out, nullptr, false);
  EXPECT_EQ(inspected.value("id", ""), id);
  EXPECT_EQ(json::parse(Berth("image inspect " + id.substr(0, 10)).out, nullptr, false).value("id", ""), id);
  // A local file is inspected locally.
  CliRun local = Berth("image inspect " + BusyboxImagePath());
  EXPECT_EQ(local.code, 0) << local.err;
  EXPECT_EQ(json::parse(local.out, nullptr, false).value("format", ""), "qcow2") << local.out;

  // The progress bar shows when stderr is a terminal (script(1) gives one).
  int code = -1;
  std::string tty = Shell("BERTH_URL=" + daemon_->base_url() + " BERTH_TOKEN=" + daemon_->admin_token() +
                              " script -qec " + Quote(BerthBinary() + " image push " + BusyboxImagePath()) + " /dev/null",
                          &code);
  EXPECT_EQ(code, 0) << tty;
  EXPECT_NE(tty.find("100%"), std::string::npos) << tty;
  // The rate is shown (its unit depends on how fast the upload was: "0 B/s" when instant).
  EXPECT_NE(tty.find("B/s"), std::string::npos) << tty;
  EXPECT_NE(tty.find("2.8 MiB"), std::string::npos) << tty;
  EXPECT_NE(tty.find(image_), std::string::npos) << tty;
  // ... and not when it is not.
  CliRun quiet = Berth("image push " + BusyboxImagePath());
  EXPECT_EQ(quiet.err.find("%"), std::string::npos) << quiet.err;

  CliRun rm = Berth("image rm cli-tree");
  EXPECT_EQ(rm.code, 0) << rm.err;
  EXPECT_EQ(Berth("image inspect cli-tree").code, 3);

  CliRun nodes = Berth("nodes");
  EXPECT_EQ(nodes.code, 0) << nodes.err;
  EXPECT_NE(nodes.out.find("tcg"), std::string::npos) << nodes.out;
  json nj = json::parse(Berth("nodes --json").out, nullptr, false);
  EXPECT_EQ(nj["nodes"].size(), 1u) << nj;
  const std::string local_node = nj["nodes"][0].value("name", "");
  EXPECT_EQ(Berth("nodes ls").code, 0);
  EXPECT_EQ(json::parse(Berth("nodes show " + local_node).out, nullptr, false).value("name", ""), local_node);
  EXPECT_EQ(Berth("nodes show no-such-node").code, 3);
  // Node subcommands: cordon / drain / uncordon the local node.
  CliRun cordoned = Berth("nodes cordon " + local_node);
  EXPECT_EQ(cordoned.code, 0) << cordoned.err;
  EXPECT_NE(cordoned.out.find("cordoned"), std::string::npos) << cordoned.out;
  EXPECT_NE(Berth("nodes").out.find("cordoned"), std::string::npos);
  // Draining waits for the node's work (earlier tests' VMs may still be in
  // teardown): draining, then cordoned once the last claim is released.
  CliRun drained = Berth("nodes drain " + local_node);
  EXPECT_EQ(drained.code, 0) << drained.err;
  EXPECT_TRUE(drained.out.find("cordoned") != std::string::npos || drained.out.find("draining") != std::string::npos)
      << drained.out << drained.err;
  std::string state;
  for (int i = 0; i < 120 && state != "cordoned"; ++i) {
    state = json::parse(Berth("nodes show " + local_node).out, nullptr, false).value("state", "");
    if (state != "cordoned") std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  EXPECT_EQ(state, "cordoned") << "a drained node with no work left is cordoned";
  CliRun uncordoned = Berth("nodes uncordon " + local_node);
  EXPECT_NE(uncordoned.out.find(": up"), std::string::npos) << uncordoned.out << uncordoned.err;
  // Bad input to `nodes add` gets a clear error and exit status 2.
  CliRun xen = Berth("nodes add xen:///system --name x1");
  EXPECT_EQ(xen.code, 2);
  EXPECT_NE(xen.err.find("unsupported libvirt URI"), std::string::npos) << xen.err;
  CliRun unreachable = Berth("nodes add qemu+tcp://127.0.0.1:1/system --name far --accel tcg --label zone=a");
  EXPECT_EQ(unreachable.code, 2);
  EXPECT_NE(unreachable.err.find("cannot reach libvirt"), std::string::npos) << unreachable.err;
  CliRun dup = Berth("nodes add " + nj["nodes"][0].value("uri", "") + " --name again");
  EXPECT_EQ(dup.code, 2);
  EXPECT_NE(dup.err.find("already"), std::string::npos) << dup.err;
  CliRun bad_label = Berth("nodes add qemu+tcp://10.0.0.5/system --label zone");
  EXPECT_EQ(bad_label.code, 2);
  EXPECT_NE(bad_label.err.find("not k=v"), std::string::npos) << bad_label.err;
  CliRun rm_local = Berth("nodes rm " + local_node);
  EXPECT_NE(rm_local.code, 0);
  EXPECT_NE(rm_local.err.find("cannot be removed"), std::string::npos) << rm_local.err;
  EXPECT_EQ(Berth("nodes rm no-such-node").code, 3);
  EXPECT_EQ(json::parse(Berth("nodes --json").out, nullptr, false)["nodes"].size(), 1u) << "nothing half-registered";

  CliRun created = Berth("token create cli-tenant --name cli");
  ASSERT_EQ(created.code, 0) << created.err;
  json tok = json::parse(created.out, nullptr, false);
  const std::string secret = tok.value("token", ""), tok_id = tok.value("id", "");
  EXPECT_EQ(Berth("ps", secret).code, 0);
  EXPECT_NE(Berth("token ls").out.find("cli-tenant"), std::string::npos);
  EXPECT_EQ(Berth("token rm " + tok_id).code, 0);
  EXPECT_EQ(Berth("ps", secret).code, 4) << "a revoked token is refused";
}

TEST_F(CliTest, HelpAndBashCompletion) {
  CliRun help = Berth("--help");
  EXPECT_EQ(help.code, 0);
  EXPECT_NE(help.out.find("Exit status"), std::string::npos) << help.out;
  for (const char* cmd : {"ps", "exec", "fork", "kill", "wait", "logs", "image push", "image ls", "image inspect",
                          "image rm", "fn deploy", "fn ls", "fn invoke", "fn rm", "nodes", "nodes add", "nodes rm",
                          "nodes drain", "token create", "completion"}) {
    CliRun r = Berth(std::string(cmd) + " --help");
    EXPECT_EQ(r.code, 0) << cmd;
    EXPECT_NE(r.out.find("Usage:"), std::string::npos) << cmd << ": " << r.out;
  }

  const std::string script = dir_ + "/berth.bash";
  int code = -1;
  Shell(BerthBinary() + " completion bash > " + script, &code);
  ASSERT_EQ(code, 0);
  Shell("bash -n " + script, &code);
  EXPECT_EQ(code, 0) << ReadFile(script);
  // Complete a few command lines with the script itself.
  auto complete = [&](const std::string& line) {
    std::string cmd = "bash -c " +
                      Quote("source " + script + "; read -ra COMP_WORDS <<< \"$1\"; [[ \"$1\" == *' ' ]] && " +
                            "COMP_WORDS+=(''); COMP_CWORD=$((${#COMP_WORDS[@]}-1)); _berth_complete; " +
                            "echo \"${COMPREPLY[*]}\"") +
                      " _ " + Quote(line);
    return Shell(cmd);
  };
  EXPECT_EQ(complete("berth image p"), "push\n");
  EXPECT_EQ(complete("berth ps --tr"), "--tree\n");
  EXPECT_EQ(complete("berth exec --boot "), "runtime disk\n");
  EXPECT_NE(complete("berth ").find("completion"), std::string::npos);
  EXPECT_NE(complete("berth fn ").find("deploy"), std::string::npos);
}

}  // namespace
}  // namespace berth::testing
