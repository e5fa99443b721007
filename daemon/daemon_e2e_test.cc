// End-to-end tests of safeshardd as a real process: runs written the way PyTorch's writer lays
// them out (no marker) and with safeshard's completion manifest, half-written runs, many runs at
// once, kill -9 and SIGTERM, a full disk, and the API's token and path checks.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <map>

#include <chrono>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "cli/cli.h"
#include "core/example/example.h"
#include "core/format/filenames.h"
#include "core/io/atomic_file.h"
#include "core/io/filesystem.h"
#include "core/layout/layout.h"
#include "core/testing/testing.h"
#include "daemon/daemon.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "sqlite3.h"

extern char** environ;

namespace safeshard::daemon {
namespace {

using nlohmann::json;

class DaemonProcess {
 public:
  DaemonProcess(std::string root, std::string state, std::vector<std::string> extra = {})
      : root_(std::move(root)), state_(std::move(state)), extra_(std::move(extra)) {}
  ~DaemonProcess() {
    if (pid_ > 0) Signal(SIGKILL);
  }

  void Start() {
    (void)LocalFileSystem().Remove(state_ + "/port");
    std::vector<std::string> args = {"daemon/safeshardd",
                                     "--watch",
                                     root_,
                                     "--state-db",
                                     state_ + "/state.db",
                                     "--token-file",
                                     state_ + "/token",
                                     "--port",
                                     "0",
                                     "--port-file",
                                     state_ + "/port",
                                     "--quiet-period",
                                     "1",
                                     "--rescan-interval",
                                     "1"};
    args.insert(args.end(), extra_.begin(), extra_.end());
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 2, (state_ + "/log").c_str(),
                                     O_WRONLY | O_CREAT | O_APPEND, 0644);
    ASSERT_EQ(posix_spawn(&pid_, argv[0], &fa, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    for (int i = 0; i < 200; ++i) {
      absl::StatusOr<std::string> p = LocalFileSystem().ReadAll(state_ + "/port");
      if (p.ok() && !p->empty()) {
        port_ = std::stoi(*p);
        token_ = *LocalFileSystem().ReadAll(state_ + "/token");
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    FAIL() << "daemon did not start: " << LocalFileSystem().ReadAll(state_ + "/log").value_or("");
  }

  int Signal(int sig) {
    kill(pid_, sig);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return status;
  }

  json Get(const std::string& path) {
    httplib::Client c("127.0.0.1", port_);
    auto r = c.Get(path.c_str());
    if (!r) return json();
    return json::parse(r->body, nullptr, false);
  }
  int Post(const std::string& path, const std::string& body, const std::string& token) {
    httplib::Client c("127.0.0.1", port_);
    httplib::Headers h;
    if (!token.empty()) h.emplace("Authorization", "Bearer " + token);
    auto r = c.Post(path.c_str(), h, body, "application/json");
    return r ? r->status : -1;
  }
  const std::string& token() const { return token_; }
  pid_t pid() const { return pid_; }
  std::string log() const { return LocalFileSystem().ReadAll(state_ + "/log").value_or(""); }

  // Polls /v1/jobs until `pred` holds (or the deadline).
  json WaitJobs(const std::function<bool(const json&)>& pred, double seconds = 60) {
    auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    json j;
    while (std::chrono::steady_clock::now() < end) {
      j = Get("/v1/jobs");
      if (j.is_object() && pred(j["jobs"])) return j;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ADD_FAILURE() << "timed out; jobs: " << j.dump() << "\nlog:\n" << log();
    return j;
  }

 private:
  std::string root_, state_;
  std::vector<std::string> extra_;
  pid_t pid_ = -1;
  int port_ = 0;
  std::string token_;
};

int CountState(const json& jobs, const std::string& state) {
  int n = 0;
  for (const auto& j : jobs) n += j["state"] == state;
  return n;
}

// Writes a run elsewhere and moves it into place at once, as a finished save appears.
void PlaceRun(const std::string& dest, const std::vector<ExampleTensor>& model, int ranks = 4) {
  std::string staging = testing::NewTempDir() + "/run";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), staging, model, {.ranks = ranks}).ok());
  ASSERT_TRUE(LocalFileSystem().MakeDirs(DirName(dest)).ok());
  ASSERT_EQ(std::rename(staging.c_str(), dest.c_str()), 0);
}

void ExpectOutputMatches(const std::string& out, const std::vector<ExampleTensor>& model) {
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), out);
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_TRUE(ck->problems().empty());
  ASSERT_EQ(ck->tensors().size(), model.size());
  for (const ExampleTensor& t : model) {
    const TensorLayout* tl = ck->FindTensor(t.name);
    ASSERT_NE(tl, nullptr);
    const Chunk& c = tl->chunks[0];
    auto f = LocalFileSystem().OpenRead(JoinPath(out, ck->files()[c.file].name));
    std::string got(c.end - c.begin, '\0');
    ASSERT_TRUE((*f)->ReadAt(c.begin, got.size(), got.data()).ok());
    EXPECT_TRUE(got == ExpectedTensorBytes(t)) << t.name;
  }
  auto entries = LocalFileSystem().List(out);
  for (const DirEntry& e : *entries) EXPECT_FALSE(IsTempFileName(e.name)) << e.name;
}

std::vector<ExampleTensor> SmallModel() {
  return TransformerLikeModel({.layers = 2, .hidden = 64, .vocab = 256});
}

// Row-sharded and replicated tensors only: losing the highest rank leaves no gap.
std::vector<ExampleTensor> RowAndReplicatedModel() {
  return {{"w", DType::kF32, {8, 4}, Sharding::kRow},
          {"b", DType::kF32, {4}, Sharding::kReplicated}};
}

// `model` saved as `ranks` per-rank shards in a new directory outside any root.
std::string Staged(const std::vector<ExampleTensor>& model, int ranks) {
  std::string staging = testing::NewTempDir() + "/run";
  EXPECT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), staging, model, {.ranks = ranks}).ok());
  return staging;
}

struct Dirs {
  std::string root, state;
  Dirs() : root(testing::NewTempDir()), state(testing::NewTempDir()) {}
};

TEST(DaemonE2E, MarkerlessRunIsConsolidatedByteExactlyExactlyOnce) {
  Dirs d;
  DaemonProcess p(d.root, d.state);
  p.Start();
  auto model = SmallModel();
  PlaceRun(d.root + "/exp/step-100", model);
  p.WaitJobs([](const json& j) { return CountState(j, "published") == 1; });
  ExpectOutputMatches(d.root + "/exp/step-100-hf", model);
  json runs = p.Get("/v1/runs");
  ASSERT_EQ(runs["runs"].size(), 1u);
  EXPECT_EQ(runs["runs"][0]["detection"], "inferred");
  json run = p.Get("/v1/runs/" + runs["runs"][0]["id"].get<std::string>());
  EXPECT_EQ(run["tensors"].size(), model.size());
  EXPECT_TRUE(run["verification"]["ok"].get<bool>());
  // More rescans, and a restart: never redone.
  EXPECT_EQ(p.Post("/v1/rescan", "", p.token()), 202);
  std::this_thread::sleep_for(std::chrono::seconds(3));
  p.Signal(SIGTERM);
  p.Start();
  std::this_thread::sleep_for(std::chrono::seconds(3));
  json jobs = p.Get("/v1/jobs");
  EXPECT_EQ(jobs["jobs"].size(), 1u) << jobs.dump();
}

TEST(DaemonE2E, ManifestRunIsTakenAtOnceAndAWrongManifestIsNot) {
  Dirs d;
  DaemonProcess p(d.root, d.state, {"--quiet-period", "3600"});  // inferred detection off
  p.Start();
  auto model = SmallModel();
  std::string staging = testing::NewTempDir() + "/run";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), staging, model, {.ranks = 2}).ok());
  json files = json::array();
  auto staged = LocalFileSystem().List(staging);
  ASSERT_TRUE(staged.ok());
  for (const DirEntry& e : *staged) {
    files.push_back(
        {{"name", e.name}, {"size", LocalFileSystem().Stat(staging + "/" + e.name)->size}});
  }
  json bad = {{"ranks", 2}, {"files", files}};
  bad["files"][0]["size"] = 1;
  testing::WriteFile(staging + "/" + kCompletionManifest, bad.dump());
  ASSERT_EQ(std::rename(staging.c_str(), (d.root + "/m").c_str()), 0);
  std::this_thread::sleep_for(std::chrono::seconds(3));
  EXPECT_EQ(p.Get("/v1/jobs")["jobs"].size(), 0u);
  EXPECT_EQ(p.Get("/v1/runs")["runs"][0]["state"], "incomplete");
  json good = {{"ranks", 2}, {"files", files}};
  ASSERT_TRUE(
      WriteFileAtomically(LocalFileSystem(), d.root + "/m/" + kCompletionManifest, good.dump())
          .ok());
  p.WaitJobs([](const json& j) { return CountState(j, "published") == 1; });
  EXPECT_EQ(p.Get("/v1/runs")["runs"][0]["detection"], "manifest");
  ExpectOutputMatches(d.root + "/m-hf", model);
}

TEST(DaemonE2E, RunFromSafeshardsWriterIsTakenByItsManifest) {
  Dirs d;
  DaemonProcess p(d.root, d.state, {"--quiet-period", "3600"});  // only the manifest can tell
  p.Start();
  std::vector<std::string> args = {"core/dcp/safeshard-torch",
                                   "save-example",
                                   d.root + "/w/step-5",
                                   "--ranks",
                                   "4",
                                   "--layers",
                                   "2",
                                   "--hidden",
                                   "64",
                                   "--vocab",
                                   "256"};
  std::vector<char*> av;
  for (auto& a : args) av.push_back(a.data());
  av.push_back(nullptr);
  pid_t pid;
  ASSERT_EQ(posix_spawn(&pid, av[0], nullptr, nullptr, av.data(), environ), 0);
  int st = 0;
  waitpid(pid, &st, 0);
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  p.WaitJobs([](const json& j) { return CountState(j, "published") == 1; });
  EXPECT_EQ(p.Get("/v1/runs")["runs"][0]["detection"], "manifest");
  ExpectOutputMatches(d.root + "/w/step-5-hf", SmallModel());
  std::this_thread::sleep_for(std::chrono::seconds(2));
  EXPECT_EQ(p.Get("/v1/jobs")["jobs"].size(), 1u);  // exactly once
}

TEST(DaemonE2E, HalfWrittenRunIsLeftAloneUntilComplete) {
  Dirs d;
  DaemonProcess p(d.root, d.state, {"--expected-ranks", "4"});
  p.Start();
  const std::vector<ExampleTensor> model = SmallModel();
  const std::string staging = Staged(model, 4);
  std::string run = d.root + "/half";
  ASSERT_TRUE(LocalFileSystem().MakeDirs(run).ok());
  for (int r = 0; r < 3; ++r) {
    std::string n = absl::StrCat("shard-0000", r + 1, "-model-00001-of-00001.safetensors");
    ASSERT_EQ(std::rename((staging + "/" + n).c_str(), (run + "/" + n).c_str()), 0);
  }
  // A fourth file still being written: a truncated header.
  std::string last = "shard-00004-model-00001-of-00001.safetensors";
  std::string full = testing::ReadFile(staging + "/" + last);
  testing::WriteFile(run + "/" + last, full.substr(0, 40));
  std::this_thread::sleep_for(std::chrono::seconds(4));
  EXPECT_EQ(p.Get("/v1/jobs")["jobs"].size(), 0u);
  EXPECT_FALSE(LocalFileSystem().Stat(run + "-hf").ok());
  testing::WriteFile(run + "/" + last, full);
  p.WaitJobs([](const json& j) { return CountState(j, "published") == 1; });
  ExpectOutputMatches(run + "-hf", model);
}

TEST(DaemonE2E, TwentyRunsTogetherRespectTheConcurrencyBound) {
  Dirs d;
  DaemonProcess p(d.root, d.state, {"--max-jobs", "2"});
  p.Start();
  auto model = SmallModel();
  std::string staging = testing::NewTempDir();
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), absl::StrCat(staging, "/all/run", i), model,
                                   {.ranks = 2})
                    .ok());
  }
  ASSERT_EQ(std::rename((staging + "/all").c_str(), (d.root + "/all").c_str()), 0);
  json j = p.WaitJobs([](const json& j) { return CountState(j, "published") == 20; }, 120);
  EXPECT_LE(j["max_running_seen"].get<int>(), 2);
  EXPECT_EQ(j["jobs"].size(), 20u);
  for (int i = 0; i < 20; i += 7)
    ExpectOutputMatches(absl::StrCat(d.root, "/all/run", i, "-hf"), model);
}

std::vector<ExampleTensor> BigModel() {
  return TransformerLikeModel({.layers = 12, .hidden = 768, .vocab = 16000});  // ~190 MB
}

TEST(DaemonE2E, KillNineMidConsolidationThenRestartPublishesComplete) {
  Dirs d;
  DaemonProcess p(d.root, d.state, {"--threads-per-job", "1"});
  p.Start();
  auto model = BigModel();
  PlaceRun(d.root + "/big", model);
  p.WaitJobs([](const json& j) {
    return CountState(j, "running") == 1 && j[0]["bytes_done"].get<int64_t>() > 0;
  });
  p.Signal(SIGKILL);
  EXPECT_FALSE(LocalFileSystem().Stat(d.root + "/big-hf/model.safetensors.index.json").ok());
  p.Start();
  p.WaitJobs([](const json& j) { return CountState(j, "published") == 1; }, 120);
  ExpectOutputMatches(d.root + "/big-hf", model);
  EXPECT_TRUE(absl::StrContains(p.log(), "interrupted by a restart"));
}

TEST(DaemonE2E, SigtermLeavesNoPartialOutput) {
  Dirs d;
  DaemonProcess p(d.root, d.state, {"--threads-per-job", "1"});
  p.Start();
  PlaceRun(d.root + "/big", BigModel());
  p.WaitJobs([](const json& j) {
    return CountState(j, "running") == 1 && j[0]["bytes_done"].get<int64_t>() > 0;
  });
  int status = p.Signal(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  auto entries = LocalFileSystem().List(d.root + "/big-hf");
  if (LocalFileSystem().Stat(d.root + "/big-hf/model.safetensors.index.json").ok()) {
    ExpectOutputMatches(d.root + "/big-hf", BigModel());  // it was nearly done and finished
  } else if (entries.ok()) {
    for (const DirEntry& e : *entries) ADD_FAILURE() << "left behind: " << e.name;
  }
}

TEST(DaemonE2E, FullDiskFailsCleanlyAndSucceedsOnceSpaceIsFreed) {
  Dirs d;
  std::string out_fs = testing::NewTempDir();
  if (mount("tmpfs", out_fs.c_str(), "tmpfs", 0, "size=1m") != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs here (needs root): " << std::strerror(errno);
  }
  // Outputs go to a configured output root (the daemon writes nowhere but there and its roots).
  DaemonProcess p(d.root, d.state,
                  {"--output-template", out_fs + "/{name}-hf", "--output-root", out_fs});
  p.Start();
  auto model = TransformerLikeModel({.layers = 2, .hidden = 256, .vocab = 1024});  // ~3 MB
  PlaceRun(d.root + "/r", model);
  json j = p.WaitJobs([](const json& j) { return CountState(j, "failed") == 1; });
  EXPECT_TRUE(j["jobs"][0]["retryable"].get<bool>());
  EXPECT_TRUE(absl::StrContains(j["jobs"][0]["error"].get<std::string>(), "No space left"))
      << j.dump();
  auto entries = LocalFileSystem().List(out_fs + "/r-hf");
  if (entries.ok()) {
    EXPECT_TRUE(entries->empty()) << "partial output left on the full disk";
  }
  ASSERT_EQ(mount("tmpfs", out_fs.c_str(), "tmpfs", MS_REMOUNT, "size=64m"), 0);
  p.WaitJobs([](const json& j) { return CountState(j, "published") == 1; }, 60);
  ExpectOutputMatches(out_fs + "/r-hf", model);
  p.Signal(SIGTERM);
  umount(out_fs.c_str());
}

TEST(DaemonE2E, ApiRefusesMissingTokensAndPathsOutsideTheRoots) {
  Dirs d;
  DaemonProcess p(d.root, d.state);
  p.Start();
  PlaceRun(d.root + "/run", SmallModel(), 2);
  p.WaitJobs([](const json& j) { return CountState(j, "published") == 1; });
  std::string id = p.Get("/v1/runs")["runs"][0]["id"];
  EXPECT_EQ(p.Post("/v1/rescan", "", ""), 401);
  EXPECT_EQ(p.Post("/v1/rescan", "", "wrong"), 401);
  EXPECT_EQ(p.Post("/v1/runs/" + id + "/consolidate", "", ""), 401);
  json rules = {{"rules", {{"^model\\.", ""}}}, {"output", "/tmp/outside-the-roots"}};
  EXPECT_EQ(p.Post("/v1/runs/" + id + "/remap", rules.dump(), p.token()), 403);
  rules["output"] = d.root + "/../escape";
  EXPECT_EQ(p.Post("/v1/runs/" + id + "/remap", rules.dump(), p.token()), 403);
  std::string outside = testing::NewTempDir();
  ASSERT_EQ(symlink(outside.c_str(), (d.root + "/link").c_str()), 0);
  rules["output"] = d.root + "/link/renamed";
  EXPECT_EQ(p.Post("/v1/runs/" + id + "/remap", rules.dump(), p.token()), 403);
  // Never the root itself, a run's source, or a published output (its own or another run's).
  PlaceRun(d.root + "/other", SmallModel(), 2);
  p.WaitJobs([](const json& j) { return CountState(j, "published") == 2; });
  for (const std::string& taken : {d.root, d.root + "/run", d.root + "/run-hf", d.root + "/other",
                                   d.root + "/other-hf", d.root + "/other/sub"}) {
    rules["output"] = taken;
    EXPECT_EQ(p.Post("/v1/runs/" + id + "/remap", rules.dump(), p.token()), 403) << taken;
  }
  EXPECT_EQ(CheckpointLayout::Scan(LocalFileSystem(), d.root + "/other")->files().size(), 2u);
  rules["output"] = d.root + "/renamed";
  EXPECT_EQ(p.Post("/v1/runs/" + id + "/remap", rules.dump(), p.token()), 202);
  p.WaitJobs([](const json& j) { return CountState(j, "published") == 3; });
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), d.root + "/renamed");
  ASSERT_TRUE(ck.ok());
  EXPECT_NE(ck->FindTensor("norm.weight"), nullptr);
  EXPECT_EQ(p.Post("/v1/runs/" + id + "/consolidate", "", p.token()), 202);
  EXPECT_TRUE(p.Get("/v1/health")["status"] == "ok");
  httplib::Client c("127.0.0.1",
                    std::stoi(LocalFileSystem().ReadAll(d.state + "/port").value_or("0")));
  auto m = c.Get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_TRUE(absl::StrContains(m->body, "safeshard_jobs{state=\"published\"}")) << m->body;
  EXPECT_TRUE(absl::StrContains(m->body, "safeshard_bytes_consolidated_total"));
}

TEST(DaemonE2E, RemapOutputsAreNotRunsAndNeverAnAncestorOrAnOccupiedDirectory) {
  Dirs d;
  DaemonProcess p(d.root, d.state);
  p.Start();
  PlaceRun(d.root + "/parent/run", SmallModel(), 2);
  p.WaitJobs([](const json& j) { return CountState(j, "published") == 1; });
  std::string id = p.Get("/v1/runs")["runs"][0]["id"];
  json rules = {{"rules", {{"^model\\.", ""}}}, {"output", d.root + "/parent"}};
  // An ancestor of a run (its files would land beside the run and replace what is there).
  EXPECT_EQ(p.Post("/v1/runs/" + id + "/remap", rules.dump(), p.token()), 403);
  // A directory that already holds anything.
  ASSERT_TRUE(LocalFileSystem().MakeDirs(d.root + "/occupied").ok());
  testing::WriteFile(d.root + "/occupied/notes.txt", "mine");
  rules["output"] = d.root + "/occupied";
  EXPECT_EQ(p.Post("/v1/runs/" + id + "/remap", rules.dump(), p.token()), 403);
  EXPECT_EQ(testing::ReadFile(d.root + "/occupied/notes.txt"), "mine");
  // Through a symlink (even one that stays under the root), or with a NUL that would cut the path.
  ASSERT_EQ(symlink((d.root + "/parent").c_str(), (d.root + "/link").c_str()), 0);
  rules["output"] = d.root + "/link/new-out";
  EXPECT_EQ(p.Post("/v1/runs/" + id + "/remap", rules.dump(), p.token()), 403);
  EXPECT_FALSE(LocalFileSystem().Stat(d.root + "/parent/new-out").ok());
  EXPECT_EQ(
      p.Post("/v1/runs/" + id + "/remap",
             R"({"rules": [["a", "b"]], "output": ")" + d.root + R"(/nul\u0000x"})", p.token()),
      400);
  // Unknown members and repeated keys in the body are refused, not ignored.
  EXPECT_EQ(p.Post("/v1/runs/" + id + "/remap",
                   R"({"rules": [["a", "b"]], "output": "/x", "overwrite": true})", p.token()),
            400);
  EXPECT_EQ(p.Post("/v1/runs/" + id + "/remap",
                   R"({"rules": [["a", "b"]], "output": "/x", "output": "/y"})", p.token()),
            400);
  // A remap's output holds per-rank shards, but it is the remap's result, not a new run.
  rules["output"] = d.root + "/renamed";
  ASSERT_EQ(p.Post("/v1/runs/" + id + "/remap", rules.dump(), p.token()), 202);
  p.WaitJobs([](const json& j) { return CountState(j, "published") == 2; });
  ASSERT_EQ(p.Post("/v1/rescan", "", p.token()), 202);
  std::this_thread::sleep_for(std::chrono::seconds(3));  // quiet period and rescans pass
  const json runs = p.Get("/v1/runs");
  ASSERT_EQ(runs["runs"].size(), 1u) << runs.dump();
  EXPECT_EQ(p.Get("/v1/jobs")["jobs"].size(), 2u);
  EXPECT_FALSE(LocalFileSystem().Stat(d.root + "/renamed-hf").ok());
}

TEST(DaemonE2E, RunsAppearingTogetherThatWouldShareAnOutputEndOnePublishedOneParked) {
  Dirs d;
  DaemonProcess p(d.root, d.state, {"--output-template", "{parent}/consolidated"});
  // Both finished before the daemon looks: whichever it takes first keeps the output.
  PlaceRun(d.root + "/exp/a", SmallModel(), 2);
  PlaceRun(d.root + "/exp/b", SmallModel(), 2);
  p.Start();
  p.WaitJobs([](const json& j) { return CountState(j, "published") == 1; });
  json runs;
  for (int k = 0; k < 100; ++k) {
    runs = p.Get("/v1/runs");
    int published = 0, parked = 0;
    for (const auto& r : runs["runs"]) {
      published += r["state"] == "published";
      parked += r["state"] == "parked";
    }
    if (published == 1 && parked == 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  int published = 0, parked = 0, queued = 0;
  for (const auto& r : runs["runs"]) {
    published += r["state"] == "published";
    parked += r["state"] == "parked";
    queued += r["state"] == "queued";
  }
  EXPECT_EQ(published, 1) << runs.dump();
  EXPECT_EQ(parked, 1) << runs.dump();
  EXPECT_EQ(queued, 0) << "a run left queued forever: " << runs.dump();
}

TEST(DaemonE2E, RunsThatWouldShareOneOutputAreParkedNotOverwritten) {
  Dirs d;
  // A template without {name}: every run under a parent maps to the same output.
  DaemonProcess p(d.root, d.state, {"--output-template", "{parent}/consolidated"});
  p.Start();
  PlaceRun(d.root + "/exp/a", SmallModel(), 2);
  p.WaitJobs([](const json& j) { return CountState(j, "published") == 1; });
  const std::string index = d.root + "/exp/consolidated/model.safetensors.index.json";
  struct stat before;
  ASSERT_EQ(stat(index.c_str(), &before), 0);
  PlaceRun(d.root + "/exp/b", SmallModel(), 2);
  json runs;
  for (int k = 0; k < 100; ++k) {
    runs = p.Get("/v1/runs");
    bool parked = false;
    for (const auto& r : runs["runs"]) {
      parked |= r["path"] == d.root + "/exp/b" && r["state"] == "parked" &&
                absl::StrContains(r["detail"].get<std::string>(), "also the output of");
    }
    if (parked) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  bool parked = false;
  for (const auto& r : runs["runs"])
    parked |= r["path"] == d.root + "/exp/b" && r["state"] == "parked";
  EXPECT_TRUE(parked) << runs.dump();
  EXPECT_EQ(p.Get("/v1/jobs")["jobs"].size(), 1u);
  struct stat after;
  ASSERT_EQ(stat(index.c_str(), &after), 0);
  EXPECT_EQ(after.st_mtim.tv_nsec, before.st_mtim.tv_nsec) << "a's output was rewritten";
}

TEST(DaemonE2E, CliTalksToTheDaemon) {
  Dirs d;
  DaemonProcess p(d.root, d.state);
  p.Start();
  PlaceRun(d.root + "/run", SmallModel(), 2);
  p.WaitJobs([](const json& j) { return CountState(j, "published") == 1; });
  std::string addr = absl::StrCat("127.0.0.1:", *LocalFileSystem().ReadAll(d.state + "/port"));
  std::ostringstream out, err;
  ASSERT_EQ(RunSafeshard({"safeshard", "runs", "--daemon", addr}, out, err), kExitOk) << err.str();
  EXPECT_TRUE(absl::StrContains(out.str(), "published")) << out.str();
  EXPECT_TRUE(absl::StrContains(out.str(), d.root + "/run-hf"));
  std::ostringstream out2, err2;
  ASSERT_EQ(RunSafeshard({"safeshard", "jobs", "--daemon", addr}, out2, err2), kExitOk);
  EXPECT_TRUE(absl::StrContains(out2.str(), "100% of"));
  std::ostringstream out3, err3;
  EXPECT_EQ(RunSafeshard({"safeshard", "daemon-consolidate", d.root + "/run", "--daemon", addr,
                          "--token-file", d.state + "/token"},
                         out3, err3),
            kExitOk)
      << err3.str();
  p.WaitJobs([](const json& j) { return CountState(j, "published") == 2; });
  std::ostringstream out4, err4;
  EXPECT_EQ(RunSafeshard({"safeshard", "daemon-consolidate", d.root + "/run", "--daemon", addr,
                          "--token-file", d.state + "/nope"},
                         out4, err4),
            kExitUsage);
  std::ostringstream out5, err5;
  EXPECT_EQ(RunSafeshard({"safeshard", "runs", "--daemon", "127.0.0.1:1"}, out5, err5),
            kExitProblems);
  EXPECT_TRUE(absl::StrContains(err5.str(), "cannot reach safeshardd"));
}

TEST(DaemonE2E, HostileManifestsLeaveTheDaemonAliveAndTheRunIncomplete) {
  Dirs d;
  DaemonProcess p(d.root, d.state, {"--quiet-period", "3600"});
  p.Start();
  const std::vector<std::string> hostile = {
      R"({"ranks": 2, "files": [{"name": "a.safetensors", "size": "big"}]})",
      R"({"ranks": "2", "files": 7})",
      R"({"files": [{"name": 12, "size": -1}]})",
      std::string(100000, '[') + std::string(100000, ']'),
      R"({"files": [{"name": "../../etc/passwd", "size": 1}]})",
      std::string("{\"files\": []}\0junk", 17)};
  for (size_t i = 0; i < hostile.size(); ++i) {
    std::string staging = testing::NewTempDir() + "/run";
    ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), staging, SmallModel(), {.ranks = 2}).ok());
    testing::WriteFile(staging + "/" + kCompletionManifest, hostile[i]);
    ASSERT_EQ(std::rename(staging.c_str(), absl::StrCat(d.root, "/h", i).c_str()), 0);
  }
  std::this_thread::sleep_for(std::chrono::seconds(3));
  EXPECT_EQ(p.Get("/v1/health")["status"], "ok") << p.log();
  json runs = p.Get("/v1/runs")["runs"];
  ASSERT_EQ(runs.size(), hostile.size()) << runs.dump();
  for (const auto& r : runs) {
    EXPECT_EQ(r["state"], "incomplete") << r.dump();
    EXPECT_THAT(r["detail"].get<std::string>(), ::testing::HasSubstr("manifest")) << r.dump();
  }
  EXPECT_EQ(p.Get("/v1/jobs")["jobs"].size(), 0u);
}

class ExpectedRanksE2E : public ::testing::TestWithParam<bool> {};

TEST_P(ExpectedRanksE2E, CatchALostHighestRank) {
  Dirs d;
  // The global setting (--expected-ranks), or the per-root one in the config file.
  std::vector<std::string> flags = {"--expected-ranks", "4"};
  if (GetParam()) {
    testing::WriteFile(d.state + "/config.json", absl::StrCat(R"({"expected_ranks_by_root": {)",
                                                              testing::Quoted(d.root), ": 4}}"));
    flags = {"--config", d.state + "/config.json"};
  }
  DaemonProcess p(d.root, d.state, flags);
  p.Start();
  const std::vector<ExampleTensor> model = RowAndReplicatedModel();
  const std::string staging = Staged(model, 4);
  ASSERT_TRUE(LocalFileSystem().Remove(JoinPath(staging, ShardFileName(3, 1, 1))).ok());
  ASSERT_EQ(std::rename(staging.c_str(), (d.root + "/lost").c_str()), 0);
  std::this_thread::sleep_for(std::chrono::seconds(4));
  json runs = p.Get("/v1/runs")["runs"];
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0]["state"], "incomplete");
  EXPECT_THAT(runs[0]["detail"].get<std::string>(), ::testing::HasSubstr("missing rank 3"));
  EXPECT_FALSE(LocalFileSystem().Stat(d.root + "/lost-hf/model.safetensors.index.json").ok());
}
INSTANTIATE_TEST_SUITE_P(GlobalOrPerRoot, ExpectedRanksE2E, ::testing::Bool());

TEST(DaemonE2E, PyTorchShardedSubdirectoryIsConsolidatedIntoItsRunUnlessAlreadyDone) {
  Dirs d;
  DaemonProcess p(d.root, d.state);
  p.Start();
  auto model = SmallModel();
  // RUN/sharded/ without a consolidation: the output goes to RUN.
  PlaceRun(d.root + "/job/step-1/sharded", model);
  p.WaitJobs([](const json& j) { return CountState(j, "published") == 1; });
  ExpectOutputMatches(d.root + "/job/step-1", model);
  EXPECT_FALSE(LocalFileSystem().Stat(d.root + "/job/step-1/sharded-hf").ok());
  // RUN/sharded/ that its writer already consolidated into RUN: nothing to do.
  std::string staging = testing::NewTempDir() + "/step-2";
  ASSERT_TRUE(
      WriteDcpCheckpoint(LocalFileSystem(), staging + "/sharded", model, {.ranks = 2}).ok());
  testing::WriteFile(staging + "/model.safetensors.index.json",
                     R"({"metadata": {}, "weight_map": {}})");
  ASSERT_EQ(std::rename(staging.c_str(), (d.root + "/job/step-2").c_str()), 0);
  std::this_thread::sleep_for(std::chrono::seconds(4));
  EXPECT_EQ(p.Get("/v1/jobs")["jobs"].size(), 1u);
  bool seen = false;
  const json all = p.Get("/v1/runs");
  for (const auto& r : all["runs"]) {
    if (r["path"].get<std::string>().find("step-2") == std::string::npos) continue;
    seen = true;
    EXPECT_EQ(r["state"], "published");
    EXPECT_THAT(r["detail"].get<std::string>(), ::testing::HasSubstr("consolidated by its writer"));
  }
  EXPECT_TRUE(seen) << p.Get("/v1/runs").dump() << p.log();
}

// Everything under `dir` (names, sizes, contents), to see that nothing changed there.
std::map<std::string, std::string> Snapshot(const std::string& dir) {
  std::map<std::string, std::string> out;
  std::vector<std::string> stack = {dir};
  while (!stack.empty()) {
    std::string d = stack.back();
    stack.pop_back();
    auto entries = LocalFileSystem().List(d);
    if (!entries.ok()) continue;
    for (const DirEntry& e : *entries) {
      const std::string p = JoinPath(d, e.name);
      if (e.is_dir && !e.is_symlink) {
        stack.push_back(p);
        out[p] = "<dir>";
      } else {
        out[p] = e.is_symlink ? "<link>" : testing::ReadFile(p);
      }
    }
  }
  return out;
}

TEST(DaemonE2E, HostileTreeLeavesTheDaemonAliveAndWritesOnlyInsideItsRoots) {
  Dirs d;
  const std::string outside = testing::NewTempDir();
  auto model = SmallModel();
  // Outside the root: a victim file, a private shard, a whole run.
  testing::WriteFile(outside + "/victim", "do not touch");
  PlaceRun(outside + "/run", model, 2);
  ASSERT_EQ(chmod((outside + "/run/" + ShardFileName(0, 1, 1)).c_str(), 0600), 0);
  const auto before = Snapshot(outside);
  // 1. A newline in a run's name, beside a symlink named like the part before the newline.
  ASSERT_EQ(symlink((outside + "/victim").c_str(), (d.root + "/evil").c_str()), 0);
  PlaceRun(d.root + "/evil\nz", model, 2);
  // 2. Symlinked directories (out of the root, and cycles) and a symlinked shard file.
  ASSERT_EQ(symlink((outside + "/run").c_str(), (d.root + "/linked-run").c_str()), 0);
  ASSERT_EQ(symlink("..", (d.root + "/up").c_str()), 0);
  ASSERT_TRUE(LocalFileSystem().MakeDirs(d.root + "/loop").ok());
  ASSERT_EQ(symlink("../loop", (d.root + "/loop/again").c_str()), 0);
  PlaceRun(d.root + "/symshard", model, 2);
  ASSERT_EQ(std::remove((d.root + "/symshard/" + ShardFileName(0, 1, 1)).c_str()), 0);
  ASSERT_EQ(symlink((outside + "/run/" + ShardFileName(0, 1, 1)).c_str(),
                    (d.root + "/symshard/" + ShardFileName(0, 1, 1)).c_str()),
            0);
  // 3. A FIFO named like a shard, a zero-tensor shard, a corrupt manifest.
  PlaceRun(d.root + "/fifo", model, 2);
  ASSERT_EQ(mkfifo((d.root + "/fifo/" + ShardFileName(2, 1, 1)).c_str(), 0644), 0);
  ASSERT_TRUE(LocalFileSystem().MakeDirs(d.root + "/zero").ok());
  testing::WriteFile(
      d.root + "/zero/" + ShardFileName(0, 1, 1),
      testing::RawSafetensors(R"({"__metadata__":{"DCP_SHARDING_INFO":"{}","format":"pt"}})", ""));
  PlaceRun(d.root + "/badmanifest", model, 2);
  testing::WriteFile(d.root + "/badmanifest/" + kCompletionManifest,
                     R"({"files": [{"name": 1, "size": "x"}]})");
  // 4. Shards directly in the root: their default output would be the sibling ROOT-hf.
  {
    std::string staging = testing::NewTempDir() + "/r";
    ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), staging, model, {.ranks = 2}).ok());
    for (int r = 0; r < 2; ++r) {
      ASSERT_EQ(std::rename((staging + "/" + ShardFileName(r, 1, 1)).c_str(),
                            (d.root + "/" + ShardFileName(r, 1, 1)).c_str()),
                0);
    }
  }
  DaemonProcess p(d.root, d.state);
  p.Start();
  // The one good run (with the newline) is published inside the root.
  p.WaitJobs([](const json& j) { return CountState(j, "published") >= 1; });
  std::this_thread::sleep_for(std::chrono::seconds(4));  // rescans over the whole hostile tree
  EXPECT_EQ(p.Get("/v1/health")["status"], "ok") << p.log();
  ExpectOutputMatches(d.root + "/evil\nz-hf", model);
  EXPECT_EQ(testing::ReadFile(outside + "/victim"), "do not touch");
  EXPECT_EQ(Snapshot(outside), before) << "something was written outside the root";
  EXPECT_FALSE(LocalFileSystem().Stat(d.root + "-hf").ok()) << "output placed beside the root";
  EXPECT_FALSE(LocalFileSystem().Stat(d.root + "/symshard-hf/model.safetensors.index.json").ok());
  const json all = p.Get("/v1/runs");
  std::map<std::string, json> by_name;
  for (const auto& r : all["runs"]) by_name[BaseName(r["path"].get<std::string>())] = r;
  EXPECT_EQ(by_name.count("linked-run"), 0u) << all.dump();
  EXPECT_EQ(by_name["symshard"]["state"], "parked") << all.dump();
  EXPECT_THAT(by_name["symshard"]["detail"].get<std::string>(),
              ::testing::HasSubstr("symbolic link"));
  EXPECT_EQ(by_name[BaseName(d.root)]["state"], "parked") << all.dump();
  EXPECT_THAT(by_name[BaseName(d.root)]["detail"].get<std::string>(),
              ::testing::HasSubstr("outside the watch roots"));
  EXPECT_NE(by_name["fifo"]["state"], "published");
  EXPECT_NE(by_name["zero"]["state"], "published");
  EXPECT_EQ(by_name["badmanifest"]["state"], "incomplete");
  // Cycles (up -> .., loop/again -> ../loop) never multiply a run: one job, for the one good run.
  EXPECT_EQ(p.Get("/v1/jobs")["jobs"].size(), 1u) << p.Get("/v1/jobs").dump();
  // Stops promptly.
  const auto t0 = std::chrono::steady_clock::now();
  p.Signal(SIGTERM);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10));
}

TEST(DaemonE2E, ApiBoundsBodiesIdleClientsAndHostNames) {
  Dirs d;
  DaemonProcess p(d.root, d.state);
  p.Start();
  const int port = std::stoi(testing::ReadFile(d.state + "/port"));
  httplib::Client c("127.0.0.1", port);
  // DNS rebinding: another name for this address is refused.
  httplib::Headers evil = {{"Host", "attacker.example:" + std::to_string(port)}};
  auto r = c.Get("/v1/health", evil);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 403);
  httplib::Headers ok = {{"Host", "localhost:" + std::to_string(port)}};
  r = c.Get("/v1/health", ok);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  // A huge body is refused, not buffered.
  r = c.Post("/v1/rescan", std::string(8 << 20, 'x'), "application/json");
  EXPECT_TRUE(!r || r->status == 413) << (r ? r->status : -1);
  // Idle connections do not lock the API out for long.
  std::vector<int> idle;
  for (int k = 0; k < 500; ++k) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0)
      idle.push_back(fd);
    else
      close(fd);
  }
  const auto t0 = std::chrono::steady_clock::now();
  bool answered = false;
  while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(20) && !answered) {
    httplib::Client c2("127.0.0.1", port);
    c2.set_connection_timeout(1);
    c2.set_read_timeout(20);
    auto h = c2.Get("/v1/health");
    answered = h && h->status == 200;
  }
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_TRUE(answered);
  // A liveness bound, not a performance one: served newest first, a new client waits about one
  // idle timeout (2 s); first come, first served it waited for all 500 (20-30 s).
  EXPECT_LT(waited, 10.0);
  std::fprintf(stderr, "health answered %.1f s after %zu idle connections\n", waited, idle.size());
  EXPECT_GE(idle.size(), 400u);
  for (int fd : idle) close(fd);
  EXPECT_EQ(p.Get("/v1/health")["status"], "ok");
}

TEST(DaemonE2E, ACorruptJournalIsMovedAsideAndTheStateRebuiltWithoutRedoingWork) {
  Dirs d;
  auto model = SmallModel();
  {
    DaemonProcess p(d.root, d.state);
    p.Start();
    PlaceRun(d.root + "/done", model);
    p.WaitJobs([](const json& j) { return CountState(j, "published") == 1; });
    p.Signal(SIGTERM);
  }
  const std::string index = d.root + "/done-hf/model.safetensors.index.json";
  struct stat before;
  ASSERT_EQ(stat(index.c_str(), &before), 0);
  // Garbage over the journal's second page onwards.
  {
    std::string db = testing::ReadFile(d.state + "/state.db");
    ASSERT_GT(db.size(), 4096u);
    for (size_t k = 4096; k < db.size(); ++k) db[k] = static_cast<char>(0xA5 ^ (k * 7));
    testing::WriteFile(d.state + "/state.db", db);
  }
  DaemonProcess p(d.root, d.state);
  p.Start();
  std::this_thread::sleep_for(std::chrono::seconds(3));
  EXPECT_EQ(p.Get("/v1/health")["status"], "ok");
  EXPECT_THAT(p.log(), ::testing::HasSubstr("journal corrupt: rebuilt"));
  bool aside = false;
  const auto state_files = LocalFileSystem().List(d.state);
  ASSERT_TRUE(state_files.ok());
  for (const DirEntry& e : *state_files) aside |= absl::StrContains(e.name, "state.db.corrupt-");
  EXPECT_TRUE(aside);
  // The published run is recognised from the file system, not consolidated again.
  const json runs = p.Get("/v1/runs");
  ASSERT_EQ(runs["runs"].size(), 1u) << runs.dump();
  EXPECT_EQ(runs["runs"][0]["state"], "published");
  EXPECT_EQ(p.Get("/v1/jobs")["jobs"].size(), 0u);
  struct stat after;
  ASSERT_EQ(stat(index.c_str(), &after), 0);
  EXPECT_EQ(after.st_mtim.tv_nsec, before.st_mtim.tv_nsec);
  // And new runs are taken as usual.
  PlaceRun(d.root + "/next", model);
  p.WaitJobs([](const json& j) { return CountState(j, "published") == 1; });
  ExpectOutputMatches(d.root + "/next-hf", model);
}

TEST(DaemonE2E, AnIntactDatabaseThatIsNotOurJournalIsMovedAsideNotFatal) {
  const char* kOurRuns =
      "CREATE TABLE runs (id TEXT PRIMARY KEY, path TEXT UNIQUE, detection TEXT, state TEXT, "
      "fingerprint TEXT, last_change_ms INTEGER, first_seen_ms INTEGER, output TEXT, detail TEXT);";
  const std::vector<std::string> foreign = {
      // Another program's table of the same name.
      "CREATE TABLE runs (id TEXT, something_else INTEGER); INSERT INTO runs VALUES ('x', 1);",
      // Our columns, a state this version does not know.
      std::string(kOurRuns) +
          "INSERT INTO runs VALUES ('1', '/r', 'inferred', 'exploded', '', 0, 0, '', '');",
  };
  for (const std::string& sql : foreign) {
    SCOPED_TRACE(sql);
    Dirs d;
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open((d.state + "/state.db").c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(db);
    DaemonProcess p(d.root, d.state);
    p.Start();
    EXPECT_EQ(p.Get("/v1/health")["status"], "ok");
    EXPECT_THAT(p.log(), ::testing::HasSubstr("journal corrupt: rebuilt"));
    PlaceRun(d.root + "/run", SmallModel(), 2);
    p.WaitJobs([](const json& j) { return CountState(j, "published") == 1; });
  }
}

// The packaged service: token_group_readable gives a token 0640 (group safeshard may read it),
// and a world-readable one is tightened to that, not to 0600.
TEST(DaemonE2E, AGroupReadableTokenForTheService) {
  Dirs d;
  const std::string config = d.state + "/config.json";
  testing::WriteFile(config, absl::StrCat(R"({"watch_roots": [")", d.root,
                                          R"("], "api": {"token_group_readable": true}})"));
  testing::WriteFile(d.state + "/token", "0123456789abcdef0123456789abcdef\n");
  ASSERT_EQ(chmod((d.state + "/token").c_str(), 0644), 0);
  DaemonProcess p(d.root, d.state, {"--config", config});
  p.Start();
  struct stat st;
  ASSERT_EQ(stat((d.state + "/token").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u);
  EXPECT_THAT(p.log(), ::testing::HasSubstr("its mode is now 0640"));
}

TEST(DaemonE2E, ReloadRefusesAMissingRootAndAReadableTokenIsTightened) {
  Dirs d;
  const std::string extra = testing::NewTempDir();
  const std::string config = d.state + "/config.json";
  testing::WriteFile(config, absl::StrCat(R"({"watch_roots": [")", extra, R"("]})"));
  testing::WriteFile(d.state + "/token", "0123456789abcdef0123456789abcdef\n");
  ASSERT_EQ(chmod((d.state + "/token").c_str(), 0644), 0);
  DaemonProcess p(d.root, d.state, {"--config", config});
  p.Start();
  struct stat st;
  ASSERT_EQ(stat((d.state + "/token").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 077, 0u) << "token file left readable by others";
  EXPECT_THAT(p.log(), ::testing::HasSubstr("readable by others"));
  testing::WriteFile(config, R"({"watch_roots": ["/does/not/exist"]})");
  const int port = std::stoi(testing::ReadFile(d.state + "/port"));
  (void)port;
  json before = p.Get("/v1/health");
  ASSERT_EQ(kill(p.pid(), SIGHUP), 0);
  std::this_thread::sleep_for(std::chrono::seconds(1));
  EXPECT_THAT(p.log(), ::testing::HasSubstr("a watch root does not exist"));
  EXPECT_EQ(p.Get("/v1/health")["roots"], before["roots"]);
  EXPECT_EQ(p.Get("/v1/health")["status"], "ok");
}

TEST(DaemonE2E, NonUtf8NamesChunkedBodiesAndOutputsOnOtherRunsAreHandled) {
  Dirs d;
  auto model = SmallModel();
  PlaceRun(d.root + "/b\xff", model, 2);  // a run name that is not UTF-8
  PlaceRun(d.root + "/runA", model, 2);
  PlaceRun(d.root + "/runA-hf", model, 2);  // runA's default output is another run's source
  DaemonProcess p(d.root, d.state);
  p.Start();
  std::this_thread::sleep_for(std::chrono::seconds(5));
  const json runs = p.Get("/v1/runs");
  ASSERT_TRUE(runs.is_object()) << p.log();
  EXPECT_EQ(p.Get("/v1/health")["status"], "ok");
  EXPECT_EQ(CheckpointLayout::Scan(LocalFileSystem(), d.root + "/runA-hf")->files().size(), 2u)
      << "another run's shards were replaced";
  // A chunked body is refused before it is read.
  const int port = std::stoi(testing::ReadFile(d.state + "/port"));
  httplib::Client c("127.0.0.1", port);
  auto r = c.Post(
      "/v1/rescan", 64 << 20,
      [](size_t, size_t, httplib::DataSink& sink) {
        static const std::string block(1 << 20, 'x');
        sink.write(block.data(), block.size());
        return true;
      },
      "application/json");
  EXPECT_TRUE(!r || r->status == 400 || r->status == 413) << (r ? r->status : -1);
  EXPECT_EQ(p.Get("/v1/health")["status"], "ok");
}

}  // namespace
}  // namespace safeshard::daemon
