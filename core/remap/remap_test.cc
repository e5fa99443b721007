#include "core/remap/remap.h"

#include "absl/strings/match.h"

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/consolidate/consolidate.h"
#include "core/example/example.h"
#include "core/format/filenames.h"
#include "core/format/index_json.h"
#include "core/io/atomic_file.h"
#include "core/testing/testing.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace safeshard {
namespace {

using ::testing::HasSubstr;

std::string TensorBytes(const CheckpointLayout& ck, const std::string& name) {
  const TensorLayout* t = ck.FindTensor(name);
  EXPECT_NE(t, nullptr) << name;
  std::string out;
  if (t == nullptr) return out;
  for (const Chunk& c : t->chunks) {
    std::string all = testing::ReadFile(JoinPath(ck.root(), ck.files()[c.file].name));
    out += all.substr(c.begin, c.end - c.begin);
  }
  return out;
}

TEST(RemapTest, RenamesShardedCheckpointKeepingBytesAndCoverage) {
  std::string in = testing::NewTempDir() + "/in";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), in,
                                 TransformerLikeModel({.layers = 2, .hidden = 16, .vocab = 32}),
                                 {.ranks = 4})
                  .ok());
  testing::WriteFile(in + "/config.json", "{\"model_type\": \"llama\"}");
  auto km = KeyMap::Create({{"^model\\.layers\\.(\\d+)\\.", "blocks.\\1."}});
  ASSERT_TRUE(km.ok());
  std::string out = testing::NewTempDir() + "/out";
  auto r = Remap(LocalFileSystem(), in, out, *km, {});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->plan.changed, 18);
  auto a = CheckpointLayout::Scan(LocalFileSystem(), in);
  auto b = CheckpointLayout::Scan(LocalFileSystem(), out);
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE(b->problems().empty());
  EXPECT_EQ(b->kind(), CheckpointKind::kDcpSharded);
  EXPECT_EQ(b->FindTensor("model.layers.1.mlp.up_proj.weight"), nullptr);
  const TensorLayout* t = b->FindTensor("blocks.1.mlp.up_proj.weight");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->chunks.size(), 4u);  // sharding info keys renamed too
  EXPECT_EQ(TensorBytes(*a, "model.layers.1.mlp.up_proj.weight"),
            TensorBytes(*b, "blocks.1.mlp.up_proj.weight"));
  EXPECT_EQ(TensorBytes(*a, "lm_head.weight"), TensorBytes(*b, "lm_head.weight"));
  EXPECT_EQ(testing::ReadFile(out + "/config.json"), "{\"model_type\": \"llama\"}");
}

TEST(RemapTest, RewritesIndexOfHfCheckpoint) {
  std::string in = testing::NewTempDir();
  testing::WriteFile(in + "/model-00001-of-00002.safetensors",
                     testing::BuildSafetensors({{"enc.a", DType::kF32, {2}}}));
  testing::WriteFile(in + "/model-00002-of-00002.safetensors",
                     testing::BuildSafetensors({{"enc.b", DType::kU8, {3}}}));
  IndexJson idx;
  idx.total_size = 11;
  idx.weight_map = {{"enc.a", "model-00001-of-00002.safetensors"},
                    {"enc.b", "model-00002-of-00002.safetensors"}};
  testing::WriteFile(in + "/model.safetensors.index.json", SerializeIndexJson(idx));
  auto km = KeyMap::Create({{"^enc\\.", "encoder."}});
  std::string out = testing::NewTempDir() + "/o";
  ASSERT_TRUE(Remap(LocalFileSystem(), in, out, *km, {}).ok());
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), out);
  EXPECT_TRUE(ck->problems().empty());
  EXPECT_EQ(ck->index()->weight_map.at("encoder.b"), "model-00002-of-00002.safetensors");
  EXPECT_EQ(ck->index()->total_size, 11u);
}

TEST(RemapTest, CollisionIsRefusedNamingBothKeysWritingNothing) {
  std::string in = testing::NewTempDir();
  testing::WriteFile(
      in + "/model.safetensors",
      testing::BuildSafetensors({{"a.w", DType::kF32, {2}}, {"b.w", DType::kF32, {2}}}));
  auto km = KeyMap::Create({{"^[ab]\\.", ""}});
  std::string out = testing::NewTempDir() + "/o";
  auto r = Remap(LocalFileSystem(), in, out, *km, {});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("\"a.w\" and \"b.w\""));
  EXPECT_FALSE(LocalFileSystem().Stat(out).ok());
}

TEST(RemapTest, ZeroTensorInputIsRefusedWritingNothing) {
  std::string in = testing::NewTempDir();
  testing::WriteFile(in + "/model.safetensors", testing::BuildSafetensors({}));
  auto km = KeyMap::Create({{"^a", "b"}});
  std::string out = testing::NewTempDir() + "/o";
  auto r = Remap(LocalFileSystem(), in, out, *km, {});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("no tensors"));
  EXPECT_FALSE(LocalFileSystem().Stat(out).ok());
}

TEST(RemapTest, AFailedOverwriteLeavesNoOldResultThatLooksFinished) {
  // An HF-layout input (two model files + index): its remap is an HF-layout output.
  std::string in = testing::NewTempDir() + "/in";
  ASSERT_TRUE(Consolidate(LocalFileSystem(),
                          [] {
                            std::string d = testing::NewTempDir() + "/dcp";
                            EXPECT_TRUE(
                                WriteDcpCheckpoint(LocalFileSystem(), d,
                                                   {{"a.w", DType::kF32, {8, 4}, Sharding::kRow},
                                                    {"a.b", DType::kF32, {8}, Sharding::kRow}},
                                                   {.ranks = 2})
                                    .ok());
                            return d;
                          }(),
                          in, {.max_shard_size = 100})
                  .ok());
  auto km = KeyMap::Create({{"^a", "b"}});
  std::string out = testing::NewTempDir() + "/out";
  ASSERT_TRUE(Remap(LocalFileSystem(), in, out, *km, {}).ok());
  // An earlier result in OUT, then an overwrite that is cancelled: nothing of the old result
  // (index, manifest, files) is left to pass for a finished checkpoint.
  RemapOptions ow;
  ow.overwrite = true;
  std::atomic<bool> cancel{true};
  ow.cancel = &cancel;
  auto r = Remap(LocalFileSystem(), in, out, *km, ow);
  ASSERT_EQ(r.status().code(), absl::StatusCode::kCancelled) << r.status();
  auto listed = LocalFileSystem().List(out);
  ASSERT_TRUE(listed.ok());
  for (const DirEntry& e : *listed) ADD_FAILURE() << "left in OUT: " << e.name;
}

TEST(RemapTest, OverwriteNeverDeletesPerRankShardsOrFilesNoResultClaims) {
  std::string in = testing::NewTempDir();
  testing::WriteFile(in + "/model.safetensors",
                     testing::BuildSafetensors({{"a.w", DType::kF32, {4}}}));
  auto km = KeyMap::Create({{"^a", "b"}});
  RemapOptions ow;
  ow.overwrite = true;
  // Training shards in OUT, under their own names and under any name (DCP_SHARDING_INFO).
  std::string shards = testing::NewTempDir() + "/shards";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), shards,
                                 {{"x", DType::kF32, {4}, Sharding::kRow}}, {.ranks = 2})
                  .ok());
  std::string renamed = testing::NewTempDir() + "/renamed";
  ASSERT_TRUE(LocalFileSystem().MakeDirs(renamed).ok());
  ASSERT_EQ(rename((shards + "/" + ShardFileName(0, 1, 1)).c_str(),
                   (renamed + "/rank0.safetensors").c_str()),
            0);
  for (const std::string& out : {shards, renamed}) {
    const size_t before = LocalFileSystem().List(out)->size();
    auto r = Remap(LocalFileSystem(), in, out, *km, ow);
    ASSERT_FALSE(r.ok()) << out;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("per-rank shard"));
    EXPECT_EQ(LocalFileSystem().List(out)->size(), before) << "something was deleted in " << out;
  }
  // An adapter beside an earlier result: not claimed by it, so nothing is replaced.
  std::string out = testing::NewTempDir() + "/out";
  ASSERT_TRUE(Remap(LocalFileSystem(), in, out, *km, {}).ok());
  testing::WriteFile(out + "/adapter_model.safetensors",
                     testing::BuildSafetensors({{"lora", DType::kF32, {2}}}));
  auto r = Remap(LocalFileSystem(), in, out, *km, ow);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("adapter_model.safetensors"));
  EXPECT_TRUE(LocalFileSystem().Stat(out + "/adapter_model.safetensors").ok());
  EXPECT_TRUE(LocalFileSystem().Stat(out + "/model.safetensors").ok());
}

TEST(RemapTest, FilesBesideTheWeightsNeverReplaceAUsersFileWithoutOverwrite) {
  std::string in = testing::NewTempDir();
  testing::WriteFile(in + "/model.safetensors",
                     testing::BuildSafetensors({{"a.w", DType::kF32, {4}}}));
  testing::WriteFile(in + "/config.json", "from IN");
  std::string out = testing::NewTempDir();
  testing::WriteFile(out + "/config.json", "the user's");
  auto km = KeyMap::Create({{"^a", "b"}});
  ASSERT_TRUE(Remap(LocalFileSystem(), in, out, *km, {}).ok());
  EXPECT_EQ(testing::ReadFile(out + "/config.json"), "the user's");
}

TEST(RemapTest, LargeFilesBesideTheWeightsAreStreamedNotLoaded) {
  std::string in = testing::NewTempDir();
  testing::WriteFile(in + "/model.safetensors",
                     testing::BuildSafetensors({{"a.w", DType::kF32, {4}}}));
  testing::WriteFile(in + "/optimizer.pt", "");
  ASSERT_EQ(truncate((in + "/optimizer.pt").c_str(), 128 << 20), 0);  // sparse: costs no disk
  std::string out = testing::NewTempDir() + "/out";
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto km = KeyMap::Create({{"^a", "b"}});
    auto r = Remap(LocalFileSystem(), in, out, *km, {});
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    if (!r.ok()) _exit(1);
    _exit(ru.ru_maxrss > 96 * 1024 ? 2 : 0);  // kB: well under the 128 MiB file
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: remap failed, 2: it held the extra file in memory";
  auto st = LocalFileSystem().Stat(out + "/optimizer.pt");
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->size, 128u << 20);
}

TEST(RemapTest, ThreeHundredRankFilesUnderASoftLimitOf64Descriptors) {
  std::string in = testing::NewTempDir() + "/in";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), in,
                                 {{"a.w", DType::kF32, {600, 2}, Sharding::kRow}}, {.ranks = 300})
                  .ok());
  std::string out = testing::NewTempDir() + "/out";
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    struct rlimit rl = {64, 64};
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) _exit(3);
    auto km = KeyMap::Create({{"^a", "b"}});
    auto r = Remap(LocalFileSystem(), in, out, *km, {});
    if (!r.ok()) std::fprintf(stderr, "%s\n", std::string(r.status().message()).c_str());
    _exit(r.ok() ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), out);
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_TRUE(ck->problems().empty());
  EXPECT_NE(ck->FindTensor("b.w"), nullptr);
}

TEST(RemapTest, RefusesAnInputReplacedAfterTheScan) {
  const std::string in = testing::NewTempDir();
  const std::string file = in + "/model.safetensors";
  testing::WriteFile(file, testing::BuildSafetensors(
                               {{"model.aa", DType::kF32, {64}}, {"model.bb", DType::kF32, {32}}}));
  const std::string replacement =
      testing::BuildSafetensors({{"model.ab", DType::kF32, {32}}, {"model.bb", DType::kF32, {64}}});
  testing::ReplaceOnOpenFileSystem fs(&LocalFileSystem(), file, 2, replacement);
  auto km = KeyMap::Create({{"^model\\.", "backbone."}});
  ASSERT_TRUE(km.ok());
  const std::string out = testing::NewTempDir() + "/out";
  auto r = Remap(fs, in, out, *km, {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kAborted) << r.status();
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr(file + ": changed since it was scanned"));
  auto left = LocalFileSystem().List(out);
  if (left.ok()) {
    for (const DirEntry& e : *left) ADD_FAILURE() << "left in the output: " << e.name;
  }
}

TEST(RemapTest, InPlaceNeedsTheFlag) {
  std::string in = testing::NewTempDir();
  testing::WriteFile(in + "/model.safetensors",
                     testing::BuildSafetensors({{"old.w", DType::kBF16, {3}}}));
  std::string before = testing::ReadFile(in + "/model.safetensors");
  auto km = KeyMap::Create({{"^old", "new"}});
  EXPECT_EQ(Remap(LocalFileSystem(), in, in, *km, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(testing::ReadFile(in + "/model.safetensors"), before);
  RemapOptions o;
  o.in_place = true;
  ASSERT_TRUE(Remap(LocalFileSystem(), in, in, *km, o).ok());
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), in);
  ASSERT_NE(ck->FindTensor("new.w"), nullptr);
  EXPECT_EQ(ck->files().size(), 1u);  // no temporary files left
  EXPECT_EQ(LocalFileSystem().List(in)->size(), 1u);
  EXPECT_EQ(TensorBytes(*ck, "new.w"), before.substr(before.size() - 6));
}

TEST(RemapTest, RenamesLogicalTensorsKeepingPhysicalKeysConsistentAndTheManifestTrue) {
  std::string in = testing::NewTempDir() + "/in";
  std::vector<ExampleTensor> model = {{"layers.0.w", DType::kBF16, {16, 8}, Sharding::kStrided},
                                      {"layers.0.m", DType::kF32, {8, 6}, Sharding::kStridedMesh},
                                      {"norm", DType::kF32, {8}, Sharding::kReplicated}};
  ASSERT_TRUE(
      WriteDcpCheckpoint(
          LocalFileSystem(), in, model,
          {.ranks = 4, .mesh_rows = 2, .logical_fqn = true, .global_shape = true, .manifest = true})
          .ok());
  auto km = KeyMap::Create({{"^layers\\.", "model.layers."}});
  ASSERT_TRUE(km.ok());
  std::string out = testing::NewTempDir() + "/out";
  auto r = Remap(LocalFileSystem(), in, out, *km, {});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->plan.changed, 2);
  auto a = CheckpointLayout::Scan(LocalFileSystem(), in);
  auto b = CheckpointLayout::Scan(LocalFileSystem(), out);
  ASSERT_TRUE(b.ok());
  std::string problems;
  for (const Problem& p : b->problems()) problems += p.ToString() + "\n";
  EXPECT_TRUE(b->problems().empty()) << problems;
  EXPECT_TRUE(b->completeness().proven);
  const TensorLayout* w = b->FindTensor("model.layers.0.w");
  ASSERT_NE(w, nullptr);
  for (const Chunk& c : w->chunks) {
    EXPECT_THAT(c.key, ::testing::StartsWith("model.layers.0.w.__dcp_shard_"));
  }
  EXPECT_EQ(TensorBytes(*a, "layers.0.w"), TensorBytes(*b, "model.layers.0.w"));
  auto sums = VerifyChecksums(LocalFileSystem(), *b);
  ASSERT_TRUE(sums.ok()) << sums.status();
  EXPECT_TRUE(sums->problems.empty());
}

TEST(RemapTest, RefusesRenamingATensorToMetadata) {
  std::string in = testing::NewTempDir() + "/in";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), in, {{"w", DType::kF32, {4}, Sharding::kRow}},
                                 {.ranks = 2})
                  .ok());
  auto km = KeyMap::Create({{"^w$", "__metadata__"}});
  ASSERT_TRUE(km.ok());
  std::string out = testing::NewTempDir() + "/out";
  auto r = Remap(LocalFileSystem(), in, out, *km, {});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("__metadata__"));
  EXPECT_FALSE(LocalFileSystem().Stat(out + "/" + ShardFileName(0, 1, 1)).ok());
}

TEST(RemapTest, TheInputUnderAnotherSpellingNeedsInPlace) {
  std::string in = testing::NewTempDir() + "/in";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), in, {{"w", DType::kF32, {4}, Sharding::kRow}},
                                 {.ranks = 2})
                  .ok());
  ASSERT_EQ(symlink(in.c_str(), (in + "-link").c_str()), 0);
  auto km = KeyMap::Create({{"^w$", "v"}});
  ASSERT_TRUE(km.ok());
  for (const std::string& out : {in + "/.", in + "-link", DirName(in) + "/./in"}) {
    RemapOptions o;
    o.overwrite = true;
    auto r = Remap(LocalFileSystem(), in, out, *km, o);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << out;
    auto ck = CheckpointLayout::Scan(LocalFileSystem(), in);
    ASSERT_TRUE(ck.ok());
    EXPECT_NE(ck->FindTensor("w"), nullptr) << "the input was rewritten through " << out;
  }
}

TEST(RemapTest, InPlaceKilledBetweenItsRenamesLeavesNoIndexAndARerunFinishes) {
  std::string shards = testing::NewTempDir() + "/shards";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), shards,
                                 TransformerLikeModel({.layers = 2, .hidden = 16, .vocab = 32}),
                                 {.ranks = 2})
                  .ok());
  std::string dir = testing::NewTempDir() + "/hf";
  ConsolidateOptions co;
  co.max_shard_size = 2048;  // several files and an index
  ASSERT_TRUE(Consolidate(LocalFileSystem(), shards, dir, co).ok());
  auto before = CheckpointLayout::Scan(LocalFileSystem(), dir);
  ASSERT_GE(before->files().size(), 3u);
  std::map<std::string, std::string> bytes_before;
  for (const TensorLayout& t : before->tensors())
    bytes_before[t.name] = TensorBytes(*before, t.name);
  // A rule that is not idempotent (x. -> x.x. on a second pass): a resumed run must not apply it
  // twice to the names already renamed.
  auto km = KeyMap::Create({{"^(.*)$", "x.\\1"}});
  ASSERT_TRUE(km.ok());
  RemapOptions o;
  o.in_place = true;
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    setenv("SAFESHARD_TEST_REMAP_CRASH_AFTER", "1", 1);
    (void)Remap(LocalFileSystem(), dir, dir, *km, o);
    _exit(0);  // not reached: the hook exits after the first rename
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 86);
  // Killed between renames: no index says "finished" beside the half-renamed files.
  EXPECT_FALSE(LocalFileSystem().Stat(dir + "/model.safetensors.index.json").ok());
  // The rerun finishes the job: every tensor renamed once, the index rewritten, bytes unchanged.
  auto r = Remap(LocalFileSystem(), dir, dir, *km, o);
  ASSERT_TRUE(r.ok()) << r.status();
  auto after = CheckpointLayout::Scan(LocalFileSystem(), dir);
  ASSERT_TRUE(after.ok());
  std::string problems;
  for (const Problem& p : after->problems()) problems += p.ToString() + "\n";
  EXPECT_TRUE(after->problems().empty()) << problems;
  ASSERT_TRUE(after->index().has_value());
  EXPECT_EQ(after->index()->weight_map.size(), before->tensors().size());
  EXPECT_EQ(after->index()->weight_map.count("x.model.layers.0.mlp.up_proj.weight"), 1u);
  for (const TensorLayout& t : after->tensors()) {
    EXPECT_FALSE(absl::StartsWith(t.name, "x.x.")) << t.name << " renamed twice";
  }
  EXPECT_EQ(after->tensors().size(), before->tensors().size());
  for (const TensorLayout& t : before->tensors()) {
    const std::string renamed = km->Apply(t.name);
    EXPECT_TRUE(bytes_before[t.name] == TensorBytes(*after, renamed)) << renamed;
  }
  auto entries = LocalFileSystem().List(dir);
  for (const DirEntry& e : *entries) {
    EXPECT_EQ(e.name.find("remap-journal"), std::string::npos) << e.name;
    EXPECT_FALSE(IsTempFileName(e.name)) << e.name << " left by the killed run";
  }
}

}  // namespace
}  // namespace safeshard
