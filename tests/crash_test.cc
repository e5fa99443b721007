// kill -9 of a consolidating `safeshard` process at random points: a directory that has an index
// json always holds the complete, correct result, and a rerun recovers (stale temporary files
// are removed, the result is published).
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <random>
#include <thread>

#include "absl/strings/match.h"
#include "core/example/example.h"
#include "core/io/atomic_file.h"
#include "core/io/filesystem.h"
#include "core/layout/layout.h"
#include "core/testing/testing.h"
#include "gtest/gtest.h"

extern char** environ;

namespace safeshard {
namespace {

pid_t Spawn(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  EXPECT_EQ(rc, 0) << "cannot start " << args[0];
  return pid;
}

int Wait(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

const std::string& Expected(const ExampleTensor& t) {
  static auto* cache = new std::map<std::string, std::string>();
  auto it = cache->find(t.name);
  if (it == cache->end()) it = cache->emplace(t.name, ExpectedTensorBytes(t)).first;
  return it->second;
}

void ExpectCompleteAndCorrect(const std::string& out, const std::vector<ExampleTensor>& model) {
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), out);
  ASSERT_TRUE(ck.ok()) << ck.status();
  for (const Problem& p : ck->problems()) ADD_FAILURE() << p.ToString();
  ASSERT_EQ(ck->tensors().size(), model.size());
  for (const ExampleTensor& t : model) {
    const TensorLayout* tl = ck->FindTensor(t.name);
    ASSERT_NE(tl, nullptr) << t.name;
    const Chunk& c = tl->chunks[0];
    auto f = LocalFileSystem().OpenRead(JoinPath(out, ck->files()[c.file].name));
    std::string got(c.end - c.begin, '\0');
    ASSERT_TRUE((*f)->ReadAt(c.begin, got.size(), got.data()).ok());
    EXPECT_TRUE(got == Expected(t)) << t.name << " differs";
  }
}

TEST(CrashTest, KillNineNeverLeavesAnIndexNextToIncompleteFiles) {
  const std::string bin = "cli/safeshard";
  ASSERT_TRUE(LocalFileSystem().Stat(bin).ok()) << "run under bazel test (needs " << bin << ")";
  std::vector<ExampleTensor> model =
      TransformerLikeModel({.layers = 6, .hidden = 384, .vocab = 4096});
  std::string root = testing::NewTempDir();
  std::string in = root + "/in";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), in, model, {.ranks = 4}).ok());

  // Calibrate: one uninterrupted run.
  auto t0 = std::chrono::steady_clock::now();
  int st = Wait(Spawn(
      {bin, "consolidate", in, root + "/calib", "--threads", "2", "--max-shard-size", "20MB"}));
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  double full = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ExpectCompleteAndCorrect(root + "/calib", model);

  std::mt19937 rng(12345);
  int with_index = 0, without_index = 0;
  for (int i = 0; i < 12; ++i) {
    std::string out = root + "/out" + std::to_string(i);
    pid_t pid = Spawn({bin, "consolidate", in, out, "--threads", "2", "--max-shard-size", "20MB"});
    std::uniform_real_distribution<double> d(0.0, full * 1.1);
    std::this_thread::sleep_for(std::chrono::duration<double>(d(rng)));
    kill(pid, SIGKILL);
    Wait(pid);
    bool has_index = LocalFileSystem().Stat(out + "/model.safetensors.index.json").ok();
    if (has_index) {
      ++with_index;
      ExpectCompleteAndCorrect(out, model);
    } else {
      ++without_index;
    }
    // A rerun recovers whatever was left.
    int rc = Wait(Spawn({bin, "consolidate", in, out, "--overwrite", "--max-shard-size", "20MB"}));
    ASSERT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 0) << "rerun failed in " << out;
    ExpectCompleteAndCorrect(out, model);
    auto entries = LocalFileSystem().List(out);
    ASSERT_TRUE(entries.ok());
    for (const DirEntry& e : *entries) EXPECT_FALSE(IsTempFileName(e.name)) << e.name;
  }
  std::cout << "killed runs: " << with_index << " had published, " << without_index
            << " had not (full run " << full << " s)\n";
  EXPECT_GT(without_index, 0) << "no kill landed mid-run; the test proved nothing";
}

}  // namespace
}  // namespace safeshard
