// Multi-process consolidation over c10d/Gloo (separate processes, FileStore rendezvous on this
// machine): byte-exact results equal to a single-process run, balanced work, a failing rank's
// error on every rank with nothing published, and a missing rank failing in bounded time.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/consolidate/consolidate.h"
#include "core/example/example.h"
#include "core/io/filesystem.h"
#include "core/layout/layout.h"
#include "core/testing/nginx.h"
#include "core/testing/testing.h"
#include "gtest/gtest.h"

extern char** environ;

namespace safeshard {
namespace {

const char kBin[] = "core/dcp/safeshard-torch";

pid_t Spawn(std::vector<std::string> args, const std::string& log) {
  std::vector<char*> av;
  for (auto& a : args) av.push_back(a.data());
  av.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, (log + ".err").c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0644);
  pid_t pid = -1;
  EXPECT_EQ(posix_spawn(&pid, av[0], &fa, nullptr, av.data(), environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  return pid;
}

int Wait(pid_t pid) {
  int st = 0;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

std::map<std::string, std::string> TensorBytes(const std::string& dir) {
  std::map<std::string, std::string> out;
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  EXPECT_TRUE(ck.ok() && ck->problems().empty());
  for (const TensorLayout& t : ck->tensors()) {
    const Chunk& c = t.chunks[0];
    std::string all = testing::ReadFile(JoinPath(dir, ck->files()[c.file].name));
    out[t.name] = all.substr(c.begin, c.end - c.begin);
  }
  return out;
}

TEST(DistConsolidateTest, TwoAndFourProcessesMatchTheNaiveReassembly) {
  std::vector<ExampleTensor> model =
      TransformerLikeModel({.layers = 2, .hidden = 128, .vocab = 1000});
  std::string in = testing::NewTempDir() + "/in";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), in, model, {.ranks = 4}).ok());
  std::string files_single;
  for (int ranks : {2, 4}) {
    std::string out = testing::NewTempDir() + "/out";
    std::string log = testing::NewTempDir() + "/log";
    int rc = Wait(Spawn({kBin, "dist-consolidate", in, out, "--ranks", std::to_string(ranks),
                         "--max-shard-size", "200KB", "--timeout", "60"},
                        log));
    ASSERT_EQ(rc, 0) << testing::ReadFile(log + ".err");
    std::string stdout_text = testing::ReadFile(log);
    for (int r = 0; r < ranks; ++r) {
      EXPECT_TRUE(absl::StrContains(stdout_text, absl::StrCat("rank ", r, ": copied ")))
          << stdout_text;
    }
    auto got = TensorBytes(out);
    ASSERT_EQ(got.size(), model.size());
    for (const ExampleTensor& t : model)
      EXPECT_TRUE(got[t.name] == ExpectedTensorBytes(t)) << t.name;
  }
}

TEST(DistConsolidateTest, AFailingRankFailsEveryRankAndPublishesNothing) {
  std::string in = testing::NewTempDir() + "/in";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), in,
                                 TransformerLikeModel({.layers = 1, .hidden = 64, .vocab = 100}),
                                 {.ranks = 2})
                  .ok());
  std::string out = testing::NewTempDir() + "/out";
  std::string store = testing::NewTempDir() + "/rdzv";
  std::string log0 = testing::NewTempDir() + "/r0", log1 = testing::NewTempDir() + "/r1";
  pid_t p0 = Spawn({kBin, "dist-consolidate-rank", in, out, "--rank", "0", "--world-size", "2",
                    "--store", store, "--timeout", "60"},
                   log0);
  pid_t p1 = Spawn({kBin, "dist-consolidate-rank", in + "/does-not-exist", out, "--rank", "1",
                    "--world-size", "2", "--store", store, "--timeout", "60"},
                   log1);
  EXPECT_EQ(Wait(p0), 1);
  EXPECT_EQ(Wait(p1), 1);
  std::string e0 = testing::ReadFile(log0 + ".err");
  EXPECT_TRUE(absl::StrContains(e0, "rank 1: ")) << e0;
  EXPECT_TRUE(absl::StrContains(e0, "does-not-exist")) << e0;
  EXPECT_FALSE(LocalFileSystem().Stat(out + "/model.safetensors.index.json").ok());
}

TEST(DistConsolidateTest, AMissingRankFailsInBoundedTime) {
  std::string in = testing::NewTempDir() + "/in";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), in,
                                 {{"w", DType::kF32, {4, 4}, Sharding::kRow}}, {.ranks = 2})
                  .ok());
  std::string log = testing::NewTempDir() + "/r0";
  auto t0 = std::chrono::steady_clock::now();
  pid_t p0 =
      Spawn({kBin, "dist-consolidate-rank", in, testing::NewTempDir() + "/out", "--rank", "0",
             "--world-size", "2", "--store", testing::NewTempDir() + "/rdzv", "--timeout", "3"},
            log);
  EXPECT_NE(Wait(p0), 0);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(secs, 60) << "rank 0 waited far beyond its timeout";
  EXPECT_FALSE(testing::ReadFile(log + ".err").empty());
}

TEST(DistConsolidateTest, SafeshardRunsTheTorchCompanion) {
  std::string in = testing::NewTempDir() + "/in";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), in,
                                 {{"w", DType::kBF16, {6, 4}, Sharding::kColumn}}, {.ranks = 2})
                  .ok());
  std::string out = testing::NewTempDir() + "/out";
  std::string log = testing::NewTempDir() + "/log";
  int rc = Wait(Spawn({"cli/safeshard", "dist-consolidate", in, out, "--ranks", "2"}, log));
  ASSERT_EQ(rc, 0) << testing::ReadFile(log + ".err");
  EXPECT_EQ(TensorBytes(out).at("w"),
            ExpectedTensorBytes({"w", DType::kBF16, {6, 4}, Sharding::kColumn}));
}

TEST(DistSaveTest, RanksSaveShardsAndTheManifestLast) {
  for (int ranks : {2, 4}) {
    std::string out = testing::NewTempDir() + "/ckpt";
    std::string log = testing::NewTempDir() + "/log";
    int rc = Wait(Spawn({kBin, "save-example", out, "--ranks", std::to_string(ranks), "--layers",
                         "2", "--hidden", "64", "--vocab", "300", "--timeout", "60"},
                        log));
    ASSERT_EQ(rc, 0) << testing::ReadFile(log + ".err");
    auto ck = CheckpointLayout::Scan(LocalFileSystem(), out);
    ASSERT_TRUE(ck.ok());
    EXPECT_TRUE(ck->problems().empty());
    EXPECT_EQ(ck->rank_count(), ranks);
    EXPECT_EQ(ck->kind(), CheckpointKind::kDcpSharded);
    std::string manifest = testing::ReadFile(out + "/safeshard.complete.json");
    EXPECT_TRUE(absl::StrContains(manifest, absl::StrCat("\"ranks\": ", ranks))) << manifest;
    for (const FileInfo& f : ck->files()) {
      EXPECT_TRUE(absl::StrContains(manifest, absl::StrCat("\"size\": ", f.size))) << f.name;
    }
    // Replicated tensors are saved once.
    EXPECT_EQ(ck->FindTensor("model.norm.weight")->chunks.size(), 1u);
    // The shards consolidate byte-exactly (the generator defines every byte).
    std::string hf = testing::NewTempDir() + "/hf";
    int rc2 = Wait(Spawn({kBin, "dist-consolidate", out, hf, "--ranks", "2"}, log));
    ASSERT_EQ(rc2, 0) << testing::ReadFile(log + ".err");
    auto got = TensorBytes(hf);
    for (const ExampleTensor& t : TransformerLikeModel({.layers = 2, .hidden = 64, .vocab = 300})) {
      EXPECT_TRUE(got[t.name] == ExpectedTensorBytes(t)) << t.name;
    }
  }
}

TEST(DistSaveTest, ConsolidatedOutputPathEqualsSafeshardConsolidate) {
  std::string out = testing::NewTempDir() + "/ckpt";
  std::string hf = testing::NewTempDir() + "/hf";
  std::string log = testing::NewTempDir() + "/log";
  ASSERT_EQ(Wait(Spawn({kBin, "save-example", out, "--ranks", "4", "--layers", "1", "--hidden",
                        "64", "--vocab", "200", "--consolidated-output", hf},
                       log)),
            0)
      << testing::ReadFile(log + ".err");
  std::string again = testing::NewTempDir() + "/again";
  ASSERT_EQ(Wait(Spawn({"cli/safeshard", "consolidate", out, again}, log)), 0)
      << testing::ReadFile(log + ".err");
  auto a = LocalFileSystem().List(hf), b = LocalFileSystem().List(again);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->size(), b->size());
  for (size_t i = 0; i < a->size(); ++i) {
    EXPECT_EQ((*a)[i].name, (*b)[i].name);
    EXPECT_TRUE(testing::ReadFile(hf + "/" + (*a)[i].name) ==
                testing::ReadFile(again + "/" + (*b)[i].name))
        << (*a)[i].name << " differs";
  }
}

TEST(DistSaveTest, FullSaveWithAMappingWritesTheHfLayout) {
  std::string out = testing::NewTempDir() + "/full";
  std::string log = testing::NewTempDir() + "/log";
  ASSERT_EQ(Wait(Spawn({kBin, "save-example", out, "--ranks", "2", "--full", "--layers", "2",
                        "--hidden", "64", "--vocab", "200"},
                       log)),
            0)
      << testing::ReadFile(log + ".err");
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), out);
  ASSERT_TRUE(ck.ok());
  EXPECT_TRUE(ck->problems().empty());
  EXPECT_EQ(ck->kind(), CheckpointKind::kHfSharded);
  ASSERT_TRUE(ck->index().has_value());
  EXPECT_EQ(ck->index()->weight_map.at("model.layers.1.mlp.up_proj.weight"),
            "model-00002-of-00002.safetensors");
  EXPECT_EQ(ck->index()->weight_map.at("lm_head.weight"), "model-00001-of-00002.safetensors");
  EXPECT_EQ(*ck->index()->total_size, ck->total_tensor_bytes());
  auto got = TensorBytes(out);
  for (const ExampleTensor& t : TransformerLikeModel({.layers = 2, .hidden = 64, .vocab = 200})) {
    EXPECT_TRUE(got[t.name] == ExpectedTensorBytes(t)) << t.name;
  }
}

TEST(DistConsolidateTest, TorchrunEnvironmentWithATcpStore) {
  std::string in = testing::NewTempDir() + "/in";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), in,
                                 TransformerLikeModel({.layers = 1, .hidden = 32, .vocab = 64}),
                                 {.ranks = 2})
                  .ok());
  std::string out = testing::NewTempDir() + "/out";
  // A port the kernel just handed out as free (sandboxed runs share the network but all have
  // small, equal pids, so no pid-derived port); the ranks meet through TCP.
  std::string port = std::to_string(testing::FreePort());
  std::vector<pid_t> pids;
  std::vector<std::string> logs;
  for (int r = 0; r < 2; ++r) {
    setenv("RANK", std::to_string(r).c_str(), 1);
    setenv("WORLD_SIZE", "2", 1);
    setenv("MASTER_ADDR", "127.0.0.1", 1);
    setenv("MASTER_PORT", port.c_str(), 1);
    logs.push_back(testing::NewTempDir() + "/log");
    pids.push_back(Spawn({kBin, "dist-consolidate-rank", in, out, "--from-env", "--timeout", "60"},
                         logs.back()));
  }
  for (const char* k : {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}) unsetenv(k);
  for (int r = 0; r < 2; ++r) EXPECT_EQ(Wait(pids[r]), 0) << testing::ReadFile(logs[r] + ".err");
  auto got = TensorBytes(out);
  for (const ExampleTensor& t : TransformerLikeModel({.layers = 1, .hidden = 32, .vocab = 64})) {
    EXPECT_TRUE(got[t.name] == ExpectedTensorBytes(t)) << t.name;
  }
}

TEST(DistLoadTest, LoadsConsolidatedOutputsIntoShards) {
  std::string out = testing::NewTempDir() + "/ckpt";
  std::string hf = testing::NewTempDir() + "/hf";
  std::string log = testing::NewTempDir() + "/log";
  ASSERT_EQ(Wait(Spawn({kBin, "save-example", out, "--ranks", "2", "--layers", "1", "--hidden",
                        "64", "--vocab", "100", "--consolidated-output", hf},
                       log)),
            0);
  int rc = Wait(Spawn({kBin, "load-check", hf, "--ranks", "4", "--layout", "mesh"}, log));
  EXPECT_EQ(rc, 0) << testing::ReadFile(log + ".err");
}

TEST(DistRemoteTest, SaveLoadAndConsolidateThroughAUrl) {
  // Separate processes against nginx (WebDAV): save to http://, load it column-sharded, and
  // consolidate it into a local directory; the token comes from $HF_TOKEN.
  const std::string root = testing::NewTempDir() + "/www";
  ASSERT_TRUE(LocalFileSystem().MakeDirs(root).ok());
  auto server = testing::NginxServer::Start(root, "proc-token");
  ASSERT_TRUE(server.ok()) << server.status();
  setenv("HF_TOKEN", "proc-token", 1);
  const std::string url = (*server)->url() + "/run";
  const std::string hf = testing::NewTempDir() + "/hf";
  std::string log = testing::NewTempDir() + "/log";
  ASSERT_EQ(Wait(Spawn({kBin, "save-example", url, "--ranks", "2", "--layers", "1", "--hidden",
                        "64", "--vocab", "100"},
                       log)),
            0)
      << testing::ReadFile(log + ".err");
  EXPECT_TRUE(testing::ReadFile(root + "/run/safeshard.complete.json").find("\"ranks\": 2") !=
              std::string::npos);
  EXPECT_EQ(Wait(Spawn({kBin, "load-check", url, "--ranks", "2", "--layout", "col"}, log)), 0)
      << testing::ReadFile(log + ".err");
  EXPECT_EQ(Wait(Spawn({kBin, "dist-consolidate", url, hf, "--ranks", "2"}, log)), 0)
      << testing::ReadFile(log + ".err");
  // The same bytes as consolidating the served files locally.
  const std::string local = testing::NewTempDir() + "/local";
  ASSERT_TRUE(Consolidate(LocalFileSystem(), root + "/run", local, {}).ok());
  EXPECT_TRUE(testing::ReadFile(hf + "/model.safetensors") ==
              testing::ReadFile(local + "/model.safetensors"));
  unsetenv("HF_TOKEN");
}

TEST(DistLoadTest, FourWayRowSaveLoadsIntoOtherShardingsAndCatchesCorruption) {
  std::string out = testing::NewTempDir() + "/ckpt";
  std::string log = testing::NewTempDir() + "/log";
  ASSERT_EQ(Wait(Spawn({kBin, "save-example", out, "--ranks", "4", "--layers", "1", "--hidden",
                        "64", "--vocab", "200"},
                       log)),
            0);
  for (const auto& [ranks, layout] : std::vector<std::pair<std::string, std::string>>{
           {"2", "col"}, {"2", "mesh"}, {"4", "row"}, {"4", "col"}}) {
    int rc = Wait(Spawn({kBin, "load-check", out, "--ranks", ranks, "--layout", layout}, log));
    EXPECT_EQ(rc, 0) << layout << ": " << testing::ReadFile(log + ".err");
    EXPECT_TRUE(absl::StrContains(testing::ReadFile(log), "every value matches"));
  }
  std::string f = out + "/shard-00003-model-00001-of-00001.safetensors";
  std::string bytes = testing::ReadFile(f);
  bytes[bytes.size() - 10] ^= 0x5a;
  testing::WriteFile(f, bytes);
  EXPECT_EQ(Wait(Spawn({kBin, "load-check", out, "--ranks", "2", "--layout", "row"}, log)), 1);
  EXPECT_TRUE(absl::StrContains(testing::ReadFile(log + ".err"), "differ from the saved ones"));
}

TEST(DistSaveTest, ARankThatFailsMidSaveFailsEveryRankAndLeavesNoManifest) {
  std::string out = testing::NewTempDir() + "/ckpt";
  std::string log = testing::NewTempDir() + "/log";
  setenv("SAFESHARD_TEST_FAIL_RANK", "1", 1);
  int rc = Wait(Spawn({kBin, "save-example", out, "--ranks", "3", "--layers", "1", "--hidden", "32",
                       "--vocab", "64", "--timeout", "60"},
                      log));
  unsetenv("SAFESHARD_TEST_FAIL_RANK");
  EXPECT_NE(rc, 0);
  std::string err = testing::ReadFile(log + ".err");
  for (int r = 0; r < 3; ++r) {
    EXPECT_TRUE(absl::StrContains(err, absl::StrCat("rank ", r, ": rank 1: injected failure")))
        << err;
  }
  EXPECT_FALSE(LocalFileSystem().Stat(out + "/safeshard.complete.json").ok());
  auto entries = LocalFileSystem().List(out);
  if (entries.ok()) {
    EXPECT_TRUE(entries->empty());
  }
}

// Issue 14: `load-check --dequantize` loads FP8 block-quantized and MXFP4 weights, decoded, into
// other shardings over Gloo, from HF files (a scale in another file) and from per-rank shards.
TEST(DistLoadTest, DequantizedLoadsIntoOtherShardings) {
  const std::string hf = testing::NewTempDir() + "/hf";
  ASSERT_TRUE(LocalFileSystem().MakeDirs(hf).ok());
  testing::WriteFile(hf + "/model-00001-of-00002.safetensors",
                     testing::BuildSafetensors({{"a.weight", DType::kF8_E4M3, {300, 200}},
                                                {"e_blocks", DType::kU8, {4, 3, 16}},
                                                {"norm", DType::kF32, {8}}}));
  std::string scales(6 * 4, '\0');
  for (int i = 0; i < 6; ++i) {
    const float v = 0.25f * static_cast<float>(i + 1);
    std::memcpy(&scales[4 * i], &v, 4);
  }
  testing::WriteFile(
      hf + "/model-00002-of-00002.safetensors",
      testing::RawSafetensors(
          R"({"a.weight_scale_inv":{"dtype":"F32","shape":[3,2],"data_offsets":[0,24]},)"
          R"("e_scales":{"dtype":"U8","shape":[4,3],"data_offsets":[24,36]}})",
          scales + std::string("\x78\x79\x7a\x7b\x7c\x7d\x7e\x7f\x80\x81\x82\x83")));
  const std::string ranks = testing::NewTempDir() + "/ranks";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), ranks,
                                 {{"m.weight", DType::kF8_E4M3, {256, 384}, Sharding::kRow},
                                  {"m.weight_scale_inv", DType::kF32, {2, 3}, Sharding::kRow}},
                                 {.ranks = 4})
                  .ok());
  const std::string log = testing::NewTempDir() + "/log";
  for (const auto& [dir, want] : std::vector<std::pair<std::string, std::string>>{
           {hf, "2 quantized weights"}, {ranks, "1 quantized weights"}}) {
    for (const std::string layout : {"col", "row", "mesh"}) {
      int rc = Wait(Spawn(
          {kBin, "load-check", dir, "--ranks", "2", "--layout", layout, "--dequantize", "bf16"},
          log));
      EXPECT_EQ(rc, 0) << layout << ": " << testing::ReadFile(log + ".err");
      EXPECT_TRUE(absl::StrContains(testing::ReadFile(log), want + " dequantized to BF16"))
          << testing::ReadFile(log);
    }
  }
  EXPECT_EQ(Wait(Spawn({kBin, "load-check", hf, "--ranks", "2", "--dequantize", "f8"}, log)), 2);
  EXPECT_EQ(Wait(Spawn({kBin, "load-check", hf, "--ranks", "2", "--bogus"}, log)), 2);
  // Two processes consolidating with --dequantize write what one does, byte for byte.
  const std::string two = testing::NewTempDir() + "/two", one = testing::NewTempDir() + "/one";
  ASSERT_EQ(Wait(Spawn({kBin, "dist-consolidate", ranks, two, "--ranks", "2", "--dequantize",
                        "bf16", "--block-size", "128"},
                       log)),
            0)
      << testing::ReadFile(log + ".err");
  ConsolidateOptions o;
  o.dequantize = DType::kBF16;
  ASSERT_TRUE(Consolidate(LocalFileSystem(), ranks, one, o).ok());
  EXPECT_TRUE(testing::ReadFile(two + "/model-00001-of-00001.safetensors") ==
              testing::ReadFile(one + "/model-00001-of-00001.safetensors"));
}

}  // namespace
}  // namespace safeshard
