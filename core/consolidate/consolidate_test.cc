#include "core/consolidate/consolidate.h"

#include <linux/magic.h>
#include <sys/resource.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/consolidate/dtype_cast.h"
#include "core/example/example.h"
#include "core/format/filenames.h"
#include "core/format/index_json.h"
#include "core/format/sharding.h"
#include "core/io/atomic_file.h"
#include "core/testing/testing.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace safeshard {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// Every tensor of a consolidated directory, as bytes, read independently of the engine.
std::map<std::string, std::pair<DType, std::string>> ReadAllTensors(const std::string& dir) {
  std::map<std::string, std::pair<DType, std::string>> out;
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  EXPECT_TRUE(ck.ok()) << ck.status();
  if (!ck.ok()) return out;
  for (const Problem& p : ck->problems()) ADD_FAILURE() << p.ToString();
  for (const TensorLayout& t : ck->tensors()) {
    EXPECT_EQ(t.chunks.size(), 1u) << t.name;
    const Chunk& c = t.chunks[0];
    std::string all = testing::ReadFile(JoinPath(dir, ck->files()[c.file].name));
    out[t.name] = {t.dtype, all.substr(c.begin, c.end - c.begin)};
  }
  return out;
}

// The model of the acceptance list: row, column, 2-D mesh, 3-D expert sharding, uneven and
// empty shards, replicated tensors, 0-d scalars, I64/BOOL/BF16/F16/F8.
std::vector<ExampleTensor> AcceptanceModel() {
  return {
      {"row.bf16", DType::kBF16, {16, 12}, Sharding::kRow},
      {"col.f16", DType::kF16, {6, 20}, Sharding::kColumn},
      {"mesh.f32", DType::kF32, {8, 10}, Sharding::kMesh},
      {"experts.f8", DType::kF8_E4M3, {8, 3, 5}, Sharding::kRow},       // 3-D, dim 0 = experts
      {"experts.mesh.bf16", DType::kBF16, {4, 6, 3}, Sharding::kMesh},  // 3-D on a 2-D mesh
      {"uneven.i64", DType::kI64, {10, 3}, Sharding::kRow},             // 3,3,3,1
      {"empty_shard.f32", DType::kF32, {3, 4}, Sharding::kRow},         // 1,1,1,0
      {"uneven_col.bool", DType::kBOOL, {3, 7}, Sharding::kColumn},     // 2,2,2,1
      {"replicated.f32", DType::kF32, {5}, Sharding::kReplicated},
      {"scalar.i64", DType::kI64, {}, Sharding::kReplicated},
      {"empty_tensor.f32", DType::kF32, {0, 4}, Sharding::kRow},
      {"vec.bool", DType::kBOOL, {9}, Sharding::kRow},
      {"f8e5.row", DType::kF8_E5M2, {12, 2}, Sharding::kRow},
  };
}

void ExpectEqualsNaiveReassembly(const std::vector<ExampleTensor>& model, const std::string& out) {
  auto got = ReadAllTensors(out);
  ASSERT_EQ(got.size(), model.size());
  for (const ExampleTensor& t : model) {
    SCOPED_TRACE(t.name);
    ASSERT_TRUE(got.count(t.name));
    EXPECT_EQ(got[t.name].first, t.dtype);
    EXPECT_TRUE(got[t.name].second == ExpectedTensorBytes(t)) << "bytes differ";
  }
}

std::string WriteModel(const std::vector<ExampleTensor>& model, WriteOptions o = {.ranks = 4}) {
  std::string dir = testing::NewTempDir() + "/in";
  absl::Status s = WriteDcpCheckpoint(LocalFileSystem(), dir, model, o);
  EXPECT_TRUE(s.ok()) << s;
  return dir;
}

TEST(ConsolidateTest, EqualsNaiveReassemblyForEveryShardingAndDType) {
  std::vector<ExampleTensor> model = AcceptanceModel();
  for (int threads : {1, 3}) {
    std::string in = WriteModel(model);
    std::string out = testing::NewTempDir() + "/out";
    ConsolidateOptions o;
    o.threads = threads;
    o.verify = true;
    auto r = Consolidate(LocalFileSystem(), in, out, o);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->files, (std::vector<std::string>{"model-00001-of-00001.safetensors",
                                                  "safeshard.complete.json",
                                                  "model.safetensors.index.json"}));
    ASSERT_TRUE(r->verify.has_value());
    EXPECT_TRUE(r->verify->mismatches.empty());
    ExpectEqualsNaiveReassembly(model, out);
  }
}

TEST(ConsolidateTest, OutputFileIsCanonicalAndIndexed) {
  std::vector<ExampleTensor> model = {{"b", DType::kF32, {4, 2}, Sharding::kRow},
                                      {"a", DType::kBF16, {2}, Sharding::kReplicated}};
  std::string out = testing::NewTempDir() + "/out";
  ConsolidateOptions o;
  o.metadata["producer"] = "test";
  ASSERT_TRUE(Consolidate(LocalFileSystem(), WriteModel(model), out, o).ok());
  std::string file = testing::ReadFile(out + "/model-00001-of-00001.safetensors");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(file[i]);
  EXPECT_EQ(n % 8, 0u);  // padded
  auto h = ParseHeader(absl::string_view(file).substr(8, n), file.size(), "f");
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->metadata.at("format"), "pt");
  EXPECT_EQ(h->metadata.at("producer"), "test");
  EXPECT_EQ(h->tensors[0].name, "b");  // F32 (alignment 4) before BF16
  auto idx = ParseIndexJson(testing::ReadFile(out + "/model.safetensors.index.json"), "i");
  ASSERT_TRUE(idx.ok());
  EXPECT_EQ(idx->total_size, 4 * 2 * 4 + 2 * 2u);
  EXPECT_EQ(idx->weight_map.at("a"), "model-00001-of-00001.safetensors");
}

TEST(ConsolidateTest, MultiRankEqualsSingleRankAndSplitsWork) {
  std::vector<ExampleTensor> model = AcceptanceModel();
  std::string in = WriteModel(model);
  std::string out = testing::NewTempDir() + "/out";
  auto group = NewInProcessGroup(3, absl::Seconds(60));
  std::vector<absl::StatusOr<ConsolidateResult>> results(3, absl::UnknownError("not run"));
  std::vector<uint64_t> rank_bytes(3, 0);
  std::vector<std::thread> threads;
  for (int r = 0; r < 3; ++r) {
    threads.emplace_back([&, r] {
      ConsolidateOptions o;
      o.threads = 2;
      o.verify = true;
      o.progress = [&, r](uint64_t, uint64_t total) { rank_bytes[r] = total; };
      results[r] = Consolidate(LocalFileSystem(), in, out, o, group[r].get());
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < 3; ++r) {
    ASSERT_TRUE(results[r].ok()) << "rank " << r << ": " << results[r].status();
    EXPECT_GT(rank_bytes[r], 0u) << "rank " << r << " did no work";
  }
  ExpectEqualsNaiveReassembly(model, out);
}

// Fails OpenForWrite: stands in for a rank whose disk or mount breaks mid-run.
class BrokenWriteFs : public testing::ForwardingFileSystem {
 public:
  using ForwardingFileSystem::ForwardingFileSystem;
  absl::StatusOr<std::unique_ptr<WritableFile>> OpenForWrite(const std::string& p) override {
    return absl::ResourceExhaustedError(p + ": open for writing: No space left on device");
  }
};

TEST(ConsolidateTest, FailureOnOneRankReachesEveryRankAndPublishesNothing) {
  std::string in = WriteModel(AcceptanceModel());
  std::string out = testing::NewTempDir() + "/out";
  auto group = NewInProcessGroup(3, absl::Seconds(60));
  BrokenWriteFs broken(&LocalFileSystem());
  std::vector<absl::Status> st(3);
  std::vector<std::thread> threads;
  for (int r = 0; r < 3; ++r) {
    threads.emplace_back([&, r] {
      FileSystem& fs = r == 2 ? static_cast<FileSystem&>(broken) : LocalFileSystem();
      st[r] = Consolidate(fs, in, out, {}, group[r].get()).status();
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(st[r].code(), absl::StatusCode::kResourceExhausted) << r << ": " << st[r];
    EXPECT_THAT(std::string(st[r].message()), HasSubstr("rank 2: "));
  }
  EXPECT_TRUE(LocalFileSystem().List(out)->empty());  // no index, no temporary files
}

TEST(ConsolidateTest, MissingRankTimesOutInsteadOfHanging) {
  std::string in = WriteModel({{"w", DType::kF32, {4}, Sharding::kRow}});
  auto group = NewInProcessGroup(2, absl::Milliseconds(300));
  auto r = Consolidate(LocalFileSystem(), in, testing::NewTempDir() + "/out", {}, group[0].get());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
}

TEST(ConsolidateTest, RefusesGapsOverlapsAndMissingRanksWritingNothing) {
  std::vector<ExampleTensor> model = {{"w", DType::kF32, {8, 4}, Sharding::kRow}};
  WriteOptions gap{.ranks = 4};
  gap.drop_chunk = std::make_pair(std::string("w"), 1);
  std::string missing = WriteModel(model);
  ASSERT_TRUE(LocalFileSystem().Remove(JoinPath(missing, ShardFileName(2, 1, 1))).ok());
  std::string overlap = testing::NewTempDir();
  for (int r = 0; r < 2; ++r) {
    ShardingInfo info;
    info.saved_offsets["w"] = {static_cast<uint64_t>(r)};
    testing::WriteFile(
        JoinPath(overlap, ShardFileName(r, 1, 1)),
        testing::BuildSafetensors({{"w", DType::kF32, {2}}}, ShardedFileMetadata(info)));
  }
  for (const std::string& in : {WriteModel(model, gap), missing, overlap}) {
    std::string out = testing::NewTempDir() + "/out";
    auto r = Consolidate(LocalFileSystem(), in, out, {});
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("nothing was written"));
    EXPECT_FALSE(LocalFileSystem().Stat(out).ok()) << "output directory was created";
  }
}

TEST(ConsolidateTest, CancellationLeavesNoPartialOutput) {
  std::vector<ExampleTensor> model;
  for (int i = 0; i < 40; ++i) {
    model.push_back({absl::StrCat("w", i), DType::kF32, {512, 1024}, Sharding::kColumn});
  }
  std::string in = WriteModel(model);
  std::string out = testing::NewTempDir() + "/out";
  std::atomic<bool> cancel{false};
  ConsolidateOptions o;
  o.threads = 2;
  o.cancel = &cancel;
  o.progress = [&](uint64_t, uint64_t) { cancel = true; };
  auto r = Consolidate(LocalFileSystem(), in, out, o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled) << r.status();
  EXPECT_TRUE(LocalFileSystem().List(out)->empty());
}

TEST(ConsolidateTest, OutputDirectorySwappedForASymlinkMidRunWritesOnlyIntoTheOriginal) {
  std::vector<ExampleTensor> model;
  for (int i = 0; i < 8; ++i) {
    model.push_back({absl::StrCat("w", i), DType::kF32, {256, 256}, Sharding::kColumn});
  }
  std::string in = WriteModel(model);
  const std::string base = testing::NewTempDir();
  const std::string out = base + "/out", moved = base + "/moved", elsewhere = base + "/elsewhere";
  ASSERT_TRUE(LocalFileSystem().MakeDirs(elsewhere).ok());
  ConsolidateOptions o;
  o.threads = 1;
  bool swapped = false;
  o.progress = [&](uint64_t, uint64_t) {
    if (swapped) return;
    swapped = true;
    // Someone with write access to OUT's parent moves OUT away and plants a symlink.
    ASSERT_EQ(rename(out.c_str(), moved.c_str()), 0);
    ASSERT_EQ(symlink(elsewhere.c_str(), out.c_str()), 0);
  };
  auto r = Consolidate(LocalFileSystem(), in, out, o);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(swapped);
  EXPECT_TRUE(LocalFileSystem().List(elsewhere)->empty()) << "a write followed the planted symlink";
  std::vector<std::string> names;
  auto listed = LocalFileSystem().List(moved);
  ASSERT_TRUE(listed.ok()) << listed.status();
  for (const DirEntry& e : *listed) names.push_back(e.name);
  EXPECT_EQ(names,
            (std::vector<std::string>{"model-00001-of-00001.safetensors",
                                      "model.safetensors.index.json", "safeshard.complete.json"}));
  ExpectEqualsNaiveReassembly(model, moved);
}

TEST(ConsolidateTest, AFailedOverwriteLeavesNoOldResultThatLooksFinished) {
  std::string out = testing::NewTempDir() + "/out";
  ConsolidateOptions first;
  first.max_shard_size = 40;  // two files, so "-of-00002" names could prove the old result
  ASSERT_TRUE(Consolidate(LocalFileSystem(),
                          WriteModel({{"a", DType::kF32, {8}, Sharding::kRow},
                                      {"b", DType::kF32, {8}, Sharding::kRow}}),
                          out, first)
                  .ok());
  ASSERT_GE(LocalFileSystem().List(out)->size(), 3u);
  std::vector<ExampleTensor> model;
  for (int i = 0; i < 8; ++i) {
    model.push_back({absl::StrCat("w", i), DType::kF32, {256, 256}, Sharding::kColumn});
  }
  std::atomic<bool> cancel{false};
  ConsolidateOptions o;
  o.overwrite = true;
  o.threads = 1;
  o.cancel = &cancel;
  o.progress = [&](uint64_t, uint64_t) { cancel = true; };
  auto r = Consolidate(LocalFileSystem(), WriteModel(model), out, o);
  ASSERT_EQ(r.status().code(), absl::StatusCode::kCancelled) << r.status();
  // Neither the old index, nor its manifest, nor its files: nothing a user or verify could take
  // for a finished checkpoint.
  std::vector<std::string> names;
  auto listed = LocalFileSystem().List(out);
  ASSERT_TRUE(listed.ok()) << listed.status();
  for (const DirEntry& e : *listed) names.push_back(e.name);
  EXPECT_THAT(names, ::testing::IsEmpty());
  auto layout = CheckpointLayout::Scan(LocalFileSystem(), out);
  EXPECT_TRUE(!layout.ok() || layout->tensors().empty());
}

TEST(ConsolidateTest, MoreRanksThanOpenInputsAllowedStillConsolidatesExactly) {
  std::vector<ExampleTensor> model = AcceptanceModel();
  std::string in = WriteModel(model, {.ranks = 8});
  for (int bound : {1, 3}) {
    std::string out = testing::NewTempDir() + "/out";
    ConsolidateOptions o;
    o.max_open_inputs = bound;
    o.threads = 2;
    auto r = Consolidate(LocalFileSystem(), in, out, o);
    ASSERT_TRUE(r.ok()) << r.status();
    ExpectEqualsNaiveReassembly(model, out);
  }
}

TEST(ConsolidateTest, ThreeHundredRankFilesUnderASoftLimitOf64Descriptors) {
  // 300 rank files, a process allowed 64 descriptors (the default limit for services is often
  // 1,024 for far more ranks): the bound comes from RLIMIT_NOFILE, no EMFILE.
  std::vector<ExampleTensor> model = {{"w", DType::kF32, {600, 4}, Sharding::kRow},
                                      {"b", DType::kBF16, {300, 2}, Sharding::kRow}};
  std::string in = WriteModel(model, {.ranks = 300});
  std::string out = testing::NewTempDir() + "/out";
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    struct rlimit rl = {64, 64};
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) _exit(3);
    auto r = Consolidate(LocalFileSystem(), in, out, {});
    if (!r.ok()) std::fprintf(stderr, "%s\n", std::string(r.status().message()).c_str());
    _exit(r.ok() ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  ExpectEqualsNaiveReassembly(model, out);
}

TEST(ConsolidateTest, OverwriteNeverDeletesShardsUnderAnyNameOrFilesNoResultClaims) {
  std::string in = WriteModel({{"w", DType::kF32, {8, 2}, Sharding::kRow}});
  ConsolidateOptions ow;
  ow.overwrite = true;
  // Per-rank shards under names that do not say so: their headers do (DCP_SHARDING_INFO).
  std::string odd = testing::NewTempDir() + "/odd";
  ASSERT_TRUE(LocalFileSystem().MakeDirs(odd).ok());
  for (int r = 0; r < 4; ++r) {
    testing::WriteFile(odd + "/rank" + std::to_string(r) + ".safetensors",
                       testing::ReadFile(JoinPath(in, ShardFileName(r, 1, 1))));
  }
  auto r1 = Consolidate(LocalFileSystem(), in, odd, ow);
  ASSERT_FALSE(r1.ok());
  EXPECT_THAT(std::string(r1.status().message()), HasSubstr("per-rank shard"));
  EXPECT_EQ(LocalFileSystem().List(odd)->size(), 4u);
  // An earlier result plus a file it does not claim: refused, nothing removed.
  std::string out = testing::NewTempDir() + "/out";
  ASSERT_TRUE(Consolidate(LocalFileSystem(), in, out, {}).ok());
  testing::WriteFile(out + "/adapter_model.safetensors",
                     testing::BuildSafetensors({{"lora", DType::kF32, {2}}}));
  auto r2 = Consolidate(LocalFileSystem(), in, out, ow);
  ASSERT_FALSE(r2.ok());
  EXPECT_THAT(std::string(r2.status().message()), HasSubstr("adapter_model.safetensors"));
  EXPECT_EQ(LocalFileSystem().List(out)->size(), 4u);  // index, manifest, model, adapter
  // Without it, the earlier result is replaced.
  ASSERT_EQ(unlink((out + "/adapter_model.safetensors").c_str()), 0);
  auto r3 = Consolidate(LocalFileSystem(), in, out, ow);
  ASSERT_TRUE(r3.ok()) << r3.status();
}

TEST(ConsolidateTest, CopiesTheModelsConfigAndTokenizerButNeverOverAFileInOut) {
  std::string in = WriteModel({{"w", DType::kF32, {8, 2}, Sharding::kRow}});
  testing::WriteFile(in + "/config.json", R"({"model_type": "llama"})");
  testing::WriteFile(in + "/tokenizer.json", "{}");
  testing::WriteFile(in + "/optimizer.pt", "not for the HF output");
  std::string out = testing::NewTempDir() + "/out";
  ASSERT_TRUE(LocalFileSystem().MakeDirs(out).ok());
  testing::WriteFile(out + "/tokenizer.json", "mine");
  auto r = Consolidate(LocalFileSystem(), in, out, {});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(testing::ReadFile(out + "/config.json"), R"({"model_type": "llama"})");
  EXPECT_EQ(testing::ReadFile(out + "/tokenizer.json"), "mine");  // kept
  EXPECT_FALSE(LocalFileSystem().Stat(out + "/optimizer.pt").ok());
  EXPECT_THAT(r->files, ::testing::Contains("config.json"));
  EXPECT_EQ(r->files.back(), "model.safetensors.index.json");  // still last
  // --overwrite replaces the earlier result, its config with it: never A's config beside B's
  // weights.
  ConsolidateOptions ow;
  ow.overwrite = true;
  ASSERT_TRUE(Consolidate(LocalFileSystem(), in, out, ow).ok());
  EXPECT_EQ(testing::ReadFile(out + "/tokenizer.json"), "{}");
  ConsolidateOptions no;
  no.copy_model_files = false;
  std::string out2 = testing::NewTempDir() + "/out2";
  ASSERT_TRUE(Consolidate(LocalFileSystem(), in, out2, no).ok());
  EXPECT_FALSE(LocalFileSystem().Stat(out2 + "/config.json").ok());
}

TEST(ConsolidateTest, RefusesAnInputReplacedBetweenTheScanAndTheCopy) {
  // A file rewritten after the scan (same size, other tensor names and so other offsets) or
  // replaced by one of another size: the plan's offsets no longer describe it, so nothing is
  // copied from it and nothing is published.
  const std::string in = testing::NewTempDir();
  const std::string file = in + "/model.safetensors";
  const std::string before =
      testing::BuildSafetensors({{"aa", DType::kF32, {64}}, {"bb", DType::kF32, {32}}});
  const std::string same_size =
      testing::BuildSafetensors({{"ab", DType::kF32, {32}}, {"bb", DType::kF32, {64}}});
  ASSERT_EQ(before.size(), same_size.size());
  const std::string bigger =
      testing::BuildSafetensors({{"aa", DType::kF32, {64}}, {"bb", DType::kF32, {48}}});
  for (const std::string& replacement : {same_size, bigger}) {
    testing::WriteFile(file, before);
    // Open 1 is the scan's; open 2 is the copy's.
    testing::ReplaceOnOpenFileSystem fs(&LocalFileSystem(), file, 2, replacement);
    const std::string out = testing::NewTempDir() + "/out";
    auto r = Consolidate(fs, in, out, {});
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(fs.opened(), 2);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kAborted) << r.status();
    EXPECT_THAT(std::string(r.status().message()),
                HasSubstr(file + ": changed since it was scanned"));
    auto left = LocalFileSystem().List(out);
    if (left.ok()) {
      for (const DirEntry& e : *left) ADD_FAILURE() << "left in the output: " << e.name;
    }
  }
  // Unchanged, the same checkpoint consolidates.
  testing::WriteFile(file, before);
  EXPECT_TRUE(Consolidate(LocalFileSystem(), in, testing::NewTempDir() + "/ok", {}).ok());
}

TEST(ConsolidateTest, MaxShardSizeFollowsSavePretrained) {
  // 3 tensors of 400 B, one of 1000 B (over the limit: alone), limit 900 B.
  std::vector<ExampleTensor> model = {{"a", DType::kF32, {100}, Sharding::kRow},
                                      {"b", DType::kF32, {100}, Sharding::kRow},
                                      {"c", DType::kF32, {250}, Sharding::kRow},
                                      {"d", DType::kF32, {100}, Sharding::kRow}};
  std::string out = testing::NewTempDir() + "/out";
  ConsolidateOptions o;
  o.max_shard_size = 900;
  auto r = Consolidate(LocalFileSystem(), WriteModel(model), out, o);
  ASSERT_TRUE(r.ok()) << r.status();
  auto idx = ParseIndexJson(testing::ReadFile(out + "/model.safetensors.index.json"), "i");
  // As huggingface_hub: the oversized tensor is a shard at once, before the open one.
  EXPECT_EQ(idx->weight_map.at("c"), "model-00001-of-00003.safetensors");
  EXPECT_EQ(idx->weight_map.at("a"), "model-00002-of-00003.safetensors");
  EXPECT_EQ(idx->weight_map.at("b"), "model-00002-of-00003.safetensors");
  EXPECT_EQ(idx->weight_map.at("d"), "model-00003-of-00003.safetensors");
  ExpectEqualsNaiveReassembly(model, out);
}

TEST(ConsolidateTest, ExplicitMappingWithUnmappedPoliciesAndDroppedEntries) {
  std::vector<ExampleTensor> model = {{"a", DType::kF32, {4}, Sharding::kRow},
                                      {"b", DType::kF32, {4}, Sharding::kRow},
                                      {"c", DType::kF32, {4}, Sharding::kRow}};
  std::string in = WriteModel(model);
  ConsolidateOptions o;
  o.fqn_to_index = std::map<std::string, int>{{"a", 1}, {"b", 2}, {"tied.weight", 2}};
  auto err = Consolidate(LocalFileSystem(), in, testing::NewTempDir() + "/o", o);
  ASSERT_FALSE(err.ok());
  EXPECT_THAT(std::string(err.status().message()), HasSubstr("--unmapped"));
  o.unmapped = UnmappedPolicy::kOwnFile;
  std::string out = testing::NewTempDir() + "/out";
  auto r = Consolidate(LocalFileSystem(), in, out, o);
  ASSERT_TRUE(r.ok()) << r.status();
  auto idx = ParseIndexJson(testing::ReadFile(out + "/model.safetensors.index.json"), "i");
  EXPECT_EQ(idx->weight_map.at("c"), "model-00003-of-00003.safetensors");
  EXPECT_EQ(idx->weight_map.count("tied.weight"), 0u);
  bool warned = false;
  for (const std::string& w : r->warnings) warned |= absl::StrContains(w, "tied.weight");
  EXPECT_TRUE(warned);
  o.unmapped = UnmappedPolicy::kFirst;
  std::string out2 = testing::NewTempDir() + "/out";
  ASSERT_TRUE(Consolidate(LocalFileSystem(), in, out2, o).ok());
  auto idx2 = ParseIndexJson(testing::ReadFile(out2 + "/model.safetensors.index.json"), "i");
  EXPECT_EQ(idx2->weight_map.at("c"), "model-00001-of-00002.safetensors");
}

TEST(ConsolidateTest, CastsFloatingPointOnlyToBF16) {
  std::vector<ExampleTensor> model = {{"w", DType::kF32, {6, 4}, Sharding::kColumn},
                                      {"n", DType::kI64, {3}, Sharding::kRow},
                                      {"q", DType::kF8_E4M3, {4}, Sharding::kRow}};
  std::string out = testing::NewTempDir() + "/out";
  ConsolidateOptions o;
  o.cast_dtype = DType::kBF16;
  o.verify = true;
  auto r = Consolidate(LocalFileSystem(), WriteModel(model), out, o);
  ASSERT_TRUE(r.ok()) << r.status();
  auto got = ReadAllTensors(out);
  EXPECT_EQ(got["w"].first, DType::kBF16);
  EXPECT_EQ(got["n"].first, DType::kI64);
  EXPECT_EQ(got["q"].first, DType::kF8_E4M3);
  std::string f32 = ExpectedTensorBytes(model[0]);
  std::string want(f32.size() / 2, '\0');
  CastElements(DType::kF32, f32.data(), DType::kBF16, want.data(), f32.size() / 4);
  EXPECT_TRUE(got["w"].second == want);
  EXPECT_TRUE(got["n"].second == ExpectedTensorBytes(model[1]));
}

TEST(ConsolidateTest, AppliesKeyMapAndDiffusersIndexName) {
  std::vector<ExampleTensor> model = {{"model.layers.0.w", DType::kF32, {4}, Sharding::kRow}};
  auto km = KeyMap::Create({{"^model\\.", ""}});
  ConsolidateOptions o;
  o.key_map = &*km;
  o.diffusers_index = true;
  std::string out = testing::NewTempDir() + "/out";
  ASSERT_TRUE(Consolidate(LocalFileSystem(), WriteModel(model), out, o).ok());
  auto idx = ParseIndexJson(
      testing::ReadFile(out + "/diffusion_pytorch_model.safetensors.index.json"), "i");
  ASSERT_TRUE(idx.ok()) << idx.status();
  EXPECT_EQ(idx->weight_map.at("layers.0.w"), "diffusion_pytorch_model-00001-of-00001.safetensors");
}

TEST(ConsolidateTest, RefusesExistingResultUnlessOverwriting) {
  std::vector<ExampleTensor> model = {{"w", DType::kF32, {4}, Sharding::kRow}};
  std::string in = WriteModel(model);
  std::string out = testing::NewTempDir() + "/out";
  ASSERT_TRUE(LocalFileSystem().MakeDirs(out).ok());
  testing::WriteFile(out + "/model-00001-of-00002.safetensors", "old");
  testing::WriteFile(out + "/.model.safetensors.safeshard-tmp-4194305-0a", "stale temp");
  auto r = Consolidate(LocalFileSystem(), in, out, {});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kAlreadyExists);
  ConsolidateOptions o;
  o.overwrite = true;
  auto r2 = Consolidate(LocalFileSystem(), in, out, o);
  ASSERT_TRUE(r2.ok()) << r2.status();
  std::vector<std::string> names;
  auto entries = LocalFileSystem().List(out);
  ASSERT_TRUE(entries.ok());
  for (const DirEntry& e : *entries) names.push_back(e.name);
  EXPECT_EQ(names,
            (std::vector<std::string>{"model-00001-of-00001.safetensors",
                                      "model.safetensors.index.json", "safeshard.complete.json"}));
}

TEST(ConsolidateTest, RefusesImpossibleCastsAndSameDirectory) {
  std::string in = WriteModel({{"w", DType::kI64, {4}, Sharding::kRow}});
  ConsolidateOptions o;
  o.fqn_to_dtype["w"] = DType::kBF16;
  EXPECT_EQ(Consolidate(LocalFileSystem(), in, testing::NewTempDir() + "/o", o).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Consolidate(LocalFileSystem(), in, in, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ConsolidateTest, ParsesSizesAndMappings) {
  EXPECT_EQ(*ParseByteSize("5GB"), 5000000000u);
  EXPECT_EQ(*ParseByteSize("500MiB"), 500u << 20);
  EXPECT_EQ(*ParseByteSize("123"), 123u);
  EXPECT_EQ(*ParseByteSize("1.5kb"), 1500u);
  EXPECT_FALSE(ParseByteSize("-1GB").ok());
  EXPECT_FALSE(ParseByteSize("lots").ok());
  auto m = ParseMappingJson(R"({"a": 1, "b": 2})", "m.json");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->at("b"), 2);
  EXPECT_FALSE(ParseMappingJson(R"({"a": 0})", "m.json").ok());
  EXPECT_FALSE(ParseMappingJson(R"({"a": 1, "a": 2})", "m.json").ok());
}

TEST(ConsolidateTest, MappingAndDTypesFromReferenceModel) {
  std::string ref = testing::NewTempDir();
  testing::WriteFile(ref + "/model-00001-of-00002.safetensors",
                     testing::BuildSafetensors({{"a", DType::kBF16, {4}}}));
  testing::WriteFile(ref + "/model-00002-of-00002.safetensors",
                     testing::BuildSafetensors({{"b", DType::kF16, {4}}}));
  std::vector<std::string> warnings;
  auto m = MappingFromReference(LocalFileSystem(), ref, &warnings);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->at("b"), 2);
  auto d = DTypesFromReference(LocalFileSystem(), ref);
  EXPECT_EQ(d->at("a"), DType::kBF16);
  // Restoring dtypes: saved as F32, original BF16 / F16.
  std::vector<ExampleTensor> model = {{"a", DType::kF32, {4}, Sharding::kRow},
                                      {"b", DType::kF32, {4}, Sharding::kRow}};
  ConsolidateOptions o;
  o.fqn_to_index = *m;
  o.fqn_to_dtype = *d;
  std::string out = testing::NewTempDir() + "/out";
  ASSERT_TRUE(Consolidate(LocalFileSystem(), WriteModel(model), out, o).ok());
  auto got = ReadAllTensors(out);
  EXPECT_EQ(got["a"].first, DType::kBF16);
  EXPECT_EQ(got["b"].first, DType::kF16);
}

TEST(ConsolidateTest, RefusesTheInputDirectoryUnderAnySpelling) {
  std::string in = WriteModel({{"w", DType::kF32, {8, 2}, Sharding::kRow}});
  const std::string parent = DirName(in);
  ASSERT_EQ(symlink(in.c_str(), (parent + "/link").c_str()), 0);
  for (const std::string& out : {in + "/.", in + "/", parent + "/./in",
                                 parent + "/../" + BaseName(parent) + "/in", parent + "/link"}) {
    SCOPED_TRACE(out);
    ConsolidateOptions o;
    o.overwrite = true;
    auto r = Consolidate(LocalFileSystem(), in, out, o);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
    // Every input shard is still there.
    auto ck = CheckpointLayout::Scan(LocalFileSystem(), in);
    ASSERT_TRUE(ck.ok());
    EXPECT_EQ(ck->files().size(), 4u);
    EXPECT_TRUE(ck->problems().empty());
  }
}

TEST(ConsolidateTest, ANewlineInTheOutputPathIsJustAName) {
  std::string in = WriteModel({{"w", DType::kF32, {8, 2}, Sharding::kRow}});
  const std::string base = testing::NewTempDir();
  // A file named like the part of the path before the newline must stay untouched.
  testing::WriteFile(base + "/out", "x");
  const std::string out = base + "/out\nline\xff";  // a newline, and a byte that is not UTF-8
  ConsolidateOptions o;
  o.verify = true;
  auto r = Consolidate(LocalFileSystem(), in, out, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(testing::ReadFile(base + "/out"), "x");
  ExpectEqualsNaiveReassembly({{"w", DType::kF32, {8, 2}, Sharding::kRow}}, out);
}

TEST(ConsolidateTest, PublishesAChecksummedManifestOfItsOutputs) {
  std::vector<ExampleTensor> model = AcceptanceModel();
  std::string out = testing::NewTempDir() + "/out";
  ConsolidateOptions o;
  o.max_shard_size = 4096;
  auto r = Consolidate(LocalFileSystem(), WriteModel(model), out, o);
  ASSERT_TRUE(r.ok()) << r.status();
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), out);
  ASSERT_TRUE(ck.ok());
  EXPECT_TRUE(ck->problems().empty());
  ASSERT_TRUE(ck->manifest().has_value());
  EXPECT_EQ(ck->manifest()->kind, "consolidated");
  EXPECT_EQ(ck->manifest()->files.size(), ck->files().size());
  EXPECT_TRUE(ck->completeness().proven);
  auto sums = VerifyChecksums(LocalFileSystem(), *ck);
  ASSERT_TRUE(sums.ok()) << sums.status();
  EXPECT_TRUE(sums->problems.empty());
  EXPECT_TRUE(sums->unchecked.empty());
  testing::FlipTensorByte(out, "mesh.f32", 1);
  auto after = VerifyChecksums(LocalFileSystem(), *CheckpointLayout::Scan(LocalFileSystem(), out));
  ASSERT_EQ(after->problems.size(), 1u);
  EXPECT_EQ(after->problems[0].tensor, "mesh.f32");
}

TEST(ConsolidateTest, RefusesALostHighestRankWhenItCanBeProven) {
  std::vector<ExampleTensor> model = {{"w", DType::kF32, {8, 2}, Sharding::kRow}};
  // By the manifest.
  std::string in = WriteModel(model, {.ranks = 2, .manifest = true});
  ASSERT_TRUE(LocalFileSystem().Remove(JoinPath(in, ShardFileName(1, 1, 1))).ok());
  std::string out = testing::NewTempDir() + "/out";
  auto r = Consolidate(LocalFileSystem(), in, out, {});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(r.status().message()), ::testing::HasSubstr("manifest_missing_file"));
  EXPECT_FALSE(LocalFileSystem().Stat(out + "/model.safetensors.index.json").ok());
  // By --expect-ranks, and by --strict when nothing proves it.
  std::string bare = WriteModel(model, {.ranks = 2});
  ASSERT_TRUE(LocalFileSystem().Remove(JoinPath(bare, ShardFileName(1, 1, 1))).ok());
  ConsolidateOptions o;
  o.expect_ranks = 2;
  EXPECT_THAT(std::string(Consolidate(LocalFileSystem(), bare, out, o).status().message()),
              ::testing::HasSubstr("expected_ranks"));
  ConsolidateOptions strict;
  strict.strict = true;
  EXPECT_THAT(std::string(Consolidate(LocalFileSystem(), bare, out, strict).status().message()),
              ::testing::HasSubstr("completeness_unproven"));
}

TEST(ConsolidateTest, NewestPyTorchLayoutConsolidatesToLogicalTensorsByteExactly) {
  std::vector<ExampleTensor> model = {{"w", DType::kBF16, {16, 8}, Sharding::kStrided},
                                      {"m", DType::kF32, {12, 6}, Sharding::kStridedMesh},
                                      {"r", DType::kF32, {8, 2}, Sharding::kRow},
                                      {"b", DType::kI64, {3}, Sharding::kReplicated}};
  for (bool global_shape : {false, true}) {
    std::string in = WriteModel(
        model, {.ranks = 4, .mesh_rows = 2, .logical_fqn = true, .global_shape = global_shape});
    std::string out = testing::NewTempDir() + "/out";
    ConsolidateOptions o;
    o.verify = true;
    auto r = Consolidate(LocalFileSystem(), in, out, o);
    ASSERT_TRUE(r.ok()) << r.status();
    ExpectEqualsNaiveReassembly(model, out);
    auto idx = ParseIndexJson(testing::ReadFile(out + "/model.safetensors.index.json"), "i");
    ASSERT_TRUE(idx.ok());
    EXPECT_EQ(idx->weight_map.size(), 4u);
    EXPECT_EQ(idx->weight_map.count("w.__dcp_shard_0"), 0u);
  }
}

TEST(ConsolidateTest, ZeroTensorCheckpointIsAClearErrorNotACrash) {
  std::string in = testing::NewTempDir() + "/in";
  ASSERT_TRUE(LocalFileSystem().MakeDirs(in).ok());
  testing::WriteFile(
      in + "/" + ShardFileName(0, 1, 1),
      testing::RawSafetensors(R"({"__metadata__":{"DCP_SHARDING_INFO":"{}","format":"pt"}})", ""));
  auto r = Consolidate(LocalFileSystem(), in, testing::NewTempDir() + "/out", {});
  EXPECT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), ::testing::HasSubstr("no tensors"));
}

TEST(ConsolidateTest, ASecondWriterIntoTheSameDirectoryIsRefusedWhileTheFirstHoldsIt) {
  std::string in = WriteModel({{"w", DType::kF32, {8, 2}, Sharding::kRow}});
  std::string out = testing::NewTempDir() + "/out";
  ASSERT_TRUE(LocalFileSystem().MakeDirs(out).ok());
  {
    absl::StatusOr<DirectoryLock> held = DirectoryLock::Acquire(LocalFileSystem(), out);
    ASSERT_TRUE(held.ok()) << held.status();
    auto r = Consolidate(LocalFileSystem(), in, out, {});
    EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
    EXPECT_THAT(std::string(r.status().message()),
                ::testing::HasSubstr("another safeshard process"));
    EXPECT_FALSE(LocalFileSystem().Stat(out + "/model.safetensors.index.json").ok());
  }
  // Released with its holder (also when a process dies): the next run proceeds.
  auto r = Consolidate(LocalFileSystem(), in, out, {});
  ASSERT_TRUE(r.ok()) << r.status();
}

TEST(ConsolidateTest, AnInputTruncatedWhileItIsCopiedIsAnErrorNotASigbus) {
  for (bool cast : {false, true}) {
    std::string in = WriteModel({{"w", DType::kF32, {512, 1024}, Sharding::kRow}}, {.ranks = 2});
    std::string out = testing::NewTempDir() + "/out";
    ConsolidateOptions o;
    o.threads = 1;
    o.verify = true;  // every run is hashed from the mapping
    if (cast) o.cast_dtype = DType::kBF16;
    bool truncated = false;
    o.progress = [&](uint64_t, uint64_t) {
      if (truncated) return;
      truncated = true;
      for (int r = 0; r < 2; ++r) {
        ASSERT_EQ(truncate(JoinPath(in, ShardFileName(r, 1, 1)).c_str(), 4096), 0);
      }
    };
    auto r = Consolidate(LocalFileSystem(), in, out, o);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
    EXPECT_THAT(std::string(r.status().message()),
                ::testing::HasSubstr("shrank while it was being read"));
    EXPECT_THAT(std::string(r.status().message()), ::testing::HasSubstr("shard-0000"));
    EXPECT_FALSE(LocalFileSystem().Stat(out + "/model.safetensors.index.json").ok());
  }
}

TEST(ConsolidateTest, RefusesAnOutputHoldingInputFilesReachedThroughLinks) {
  // The HF cache layout: snapshots/ holds symlinks to blobs/. Consolidating snapshots into blobs
  // with --overwrite would replace or delete the very files being read.
  std::string base = testing::NewTempDir();
  std::string blobs = WriteModel({{"w", DType::kF32, {8, 2}, Sharding::kRow}});
  std::string snap = base + "/snap";
  ASSERT_TRUE(LocalFileSystem().MakeDirs(snap).ok());
  for (int r = 0; r < 4; ++r) {
    const std::string name = ShardFileName(r, 1, 1);
    ASSERT_EQ(symlink(JoinPath(blobs, name).c_str(), JoinPath(snap, name).c_str()), 0);
  }
  ConsolidateOptions o;
  o.overwrite = true;
  auto r = Consolidate(LocalFileSystem(), snap, blobs, o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_THAT(std::string(r.status().message()), ::testing::HasSubstr("one of the input files"));
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), snap);
  ASSERT_TRUE(ck.ok());
  EXPECT_TRUE(ck->problems().empty());
  EXPECT_EQ(ck->files().size(), 4u);
}

// ---- Dequantization (issue 14). Expected values come from testing::ReferenceF8/ReferenceBf16,
// which decode from the bit definitions, never from core/quant.

std::string FloatBytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

std::vector<float> FloatsOf(const std::string& bytes) {
  std::vector<float> v(bytes.size() / 4);
  std::memcpy(v.data(), bytes.data(), v.size() * 4);
  return v;
}

// A [..., M, N] FP8 weight dequantized to BF16 (as uint16 bits) with [..., ceil(M/br),
// ceil(N/bc)] scales: value = code * scale in float, rounded once to nearest even.
std::string ExpectedFp8Bf16(DType code, const std::string& codes,
                            const std::vector<uint64_t>& shape, const std::vector<float>& scales,
                            uint64_t br, uint64_t bc) {
  const uint64_t n = shape.back(), m = shape[shape.size() - 2];
  const uint64_t sn = (n + bc - 1) / bc, sm = (m + br - 1) / br;
  std::string out(codes.size() * 2, '\0');
  for (uint64_t i = 0; i < codes.size(); ++i) {
    const uint64_t row = i / n, col = i % n, lead = row / m, r = row % m;
    const float s = scales[(lead * sm + r / br) * sn + col / bc];
    const float v =
        static_cast<float>(testing::ReferenceF8(code, static_cast<uint8_t>(codes[i]))) * s;
    const uint16_t b = testing::ReferenceBf16(v);
    std::memcpy(&out[2 * i], &b, 2);
  }
  return out;
}

TEST(ConsolidateDequantizeTest, Fp8WithPartialEdgeBlocksNaNCodesAndItsScaleInAnotherFile) {
  const std::string in = testing::NewTempDir() + "/fp8";
  ASSERT_TRUE(LocalFileSystem().MakeDirs(in).ok());
  // File 1: the weight (pattern codes, NaN codes among them) and a plain tensor.
  std::string codes = testing::PatternBytes("w.weight", 300 * 200);
  codes[5] = static_cast<char>(0x7f);  // NaN codes, both signs
  codes[6] = static_cast<char>(0xff);
  const std::string norm = testing::PatternBytes("norm.weight", 600);
  testing::WriteFile(
      in + "/model-00001-of-00002.safetensors",
      testing::RawSafetensors(
          R"({"norm.weight":{"dtype":"BF16","shape":[300],"data_offsets":[0,600]},)"
          R"("w.weight":{"dtype":"F8_E4M3","shape":[300,200],"data_offsets":[600,60600]}})",
          norm + codes));
  // File 2: its scales [ceil(300/128), ceil(200/128)] = [3, 2]: partial blocks at both edges.
  const std::vector<float> scales = {0.5f, -2.0f, 1e-3f, 3.0f, 7.0f, 0.125f};
  testing::WriteFile(
      in + "/model-00002-of-00002.safetensors",
      testing::RawSafetensors(R"({"w.weight_scale_inv":{"dtype":"F32","shape":[3,2],)"
                              R"("data_offsets":[0,24]}})",
                              FloatBytes(scales)));
  testing::WriteFile(in + "/config.json",
                     R"({"model_type": "deepseek_v3", "hidden_size": 200,)"
                     R"( "quantization_config": {"quant_method": "fp8", "fmt": "e4m3",)"
                     R"( "weight_block_size": [128, 128]}, "torch_dtype": "bfloat16"})");
  const std::string out = testing::NewTempDir() + "/out";
  ConsolidateOptions o;
  o.dequantize = DType::kBF16;
  o.verify = true;
  auto r = Consolidate(LocalFileSystem(), in, out, o);
  ASSERT_TRUE(r.ok()) << r.status();
  auto got = ReadAllTensors(out);
  ASSERT_EQ(got.size(), 2u);  // the scale is dropped
  EXPECT_EQ(got["norm.weight"].first, DType::kBF16);
  EXPECT_EQ(got["norm.weight"].second, norm);  // everything else byte for byte
  ASSERT_EQ(got["w.weight"].first, DType::kBF16);
  const std::string want = ExpectedFp8Bf16(DType::kF8_E4M3, codes, {300, 200}, scales, 128, 128);
  ASSERT_EQ(got["w.weight"].second.size(), want.size());
  for (size_t i = 0; i < want.size(); i += 2) {
    ASSERT_EQ(got["w.weight"].second.substr(i, 2), want.substr(i, 2)) << "element " << i / 2;
  }
  uint16_t nan_bits;
  std::memcpy(&nan_bits, got["w.weight"].second.data() + 10, 2);
  EXPECT_EQ(nan_bits & 0x7fc0, 0x7fc0) << "a NaN code stays NaN";
  // config.json: no quantization_config, torch_dtype of the output; other keys kept in order.
  const std::string cfg = testing::ReadFile(out + "/config.json");
  EXPECT_THAT(cfg, Not(HasSubstr("quantization_config")));
  EXPECT_THAT(cfg, HasSubstr(R"("torch_dtype": "bfloat16")"));
  EXPECT_LT(cfg.find("model_type"), cfg.find("hidden_size"));
  // The index carries total_parameters (transformers writes it) next to total_size.
  auto idx = ParseIndexJson(testing::ReadFile(out + "/" + std::string(kIndexFileName)), "index");
  ASSERT_TRUE(idx.ok()) << idx.status();
  EXPECT_EQ(idx->extra_metadata.at("total_parameters"), "60300");
  EXPECT_EQ(*idx->total_size, 600u + 120000u);
  EXPECT_FALSE(idx->weight_map.count("w.weight_scale_inv"));
}

TEST(ConsolidateDequantizeTest, Mxfp4BlocksBecomeTheirLogicalTensor) {
  const std::string in = testing::NewTempDir() + "/mx";
  ASSERT_TRUE(LocalFileSystem().MakeDirs(in).ok());
  const std::string blocks = testing::PatternBytes("experts.down_proj_blocks", 2 * 3 * 16);
  const std::string scales = {char(127), char(125), char(130), char(0), char(255), char(120)};
  testing::WriteFile(
      in + "/model.safetensors",
      testing::RawSafetensors(
          R"({"experts.down_proj_blocks":{"dtype":"U8","shape":[2,3,16],"data_offsets":[0,96]},)"
          R"("experts.down_proj_scales":{"dtype":"U8","shape":[2,3],"data_offsets":[96,102]}})",
          blocks + scales));
  const std::string out = testing::NewTempDir() + "/out";
  ConsolidateOptions o;
  o.dequantize = DType::kF32;
  auto r = Consolidate(LocalFileSystem(), in, out, o);
  ASSERT_TRUE(r.ok()) << r.status();
  auto got = ReadAllTensors(out);
  ASSERT_EQ(got.size(), 1u);
  ASSERT_TRUE(got.count("experts.down_proj"));
  EXPECT_EQ(got["experts.down_proj"].first, DType::kF32);
  std::vector<float> v = FloatsOf(got["experts.down_proj"].second);
  ASSERT_EQ(v.size(), 2u * 96u);  // [2, 3 * 32]
  for (size_t i = 0; i < v.size(); ++i) {
    const uint8_t byte = static_cast<uint8_t>(blocks[i / 2]);
    const unsigned code = i % 2 == 0 ? (byte & 0xf) : (byte >> 4);  // low nibble first
    const double want = testing::ReferenceMinifloat(code, 2, 1, 1) *
                        testing::ReferenceF8(DType::kF8_E8M0, static_cast<uint8_t>(scales[i / 32]));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(v[i])) << i;
    } else {
      EXPECT_EQ(v[i], static_cast<float>(want)) << i;
    }
  }
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), out);
  ASSERT_TRUE(ck.ok());
  EXPECT_EQ(ck->FindTensor("experts.down_proj")->shape, (std::vector<uint64_t>{2, 96}));
}

TEST(ConsolidateDequantizeTest, PerRankShardsOfAQuantizedModel) {
  // Weights and their scales sharded across 3 ranks like the weights (row and column), so a
  // rank's rows need scale rows another rank holds; the expected values come from a plain
  // consolidation of the same input.
  const std::vector<ExampleTensor> model = {
      {"a.weight", DType::kF8_E4M3, {300, 200}, Sharding::kRow},
      {"a.weight_scale_inv", DType::kF32, {3, 2}, Sharding::kRow},
      {"b.weight", DType::kF8_E4M3, {256, 384}, Sharding::kColumn},
      {"b.weight_scale_inv", DType::kF32, {2, 3}, Sharding::kColumn},
      {"norm", DType::kBF16, {300}, Sharding::kReplicated},
  };
  const std::string in = WriteModel(model, {.ranks = 3});
  const std::string plain = testing::NewTempDir() + "/plain";
  ASSERT_TRUE(Consolidate(LocalFileSystem(), in, plain, {}).ok());
  auto ref = ReadAllTensors(plain);
  for (int threads : {1, 2}) {
    const std::string out = testing::NewTempDir() + "/out";
    ConsolidateOptions o;
    o.dequantize = DType::kBF16;
    o.threads = threads;
    o.max_shard_size = 100000;  // a.weight and b.weight in files of their own
    auto r = Consolidate(LocalFileSystem(), in, out, o);
    ASSERT_TRUE(r.ok()) << r.status();
    auto got = ReadAllTensors(out);
    ASSERT_EQ(got.size(), 3u);
    EXPECT_EQ(got["norm"], ref["norm"]);
    EXPECT_EQ(got["a.weight"].second,
              ExpectedFp8Bf16(DType::kF8_E4M3, ref["a.weight"].second, {300, 200},
                              FloatsOf(ref["a.weight_scale_inv"].second), 128, 128));
    EXPECT_EQ(got["b.weight"].second,
              ExpectedFp8Bf16(DType::kF8_E4M3, ref["b.weight"].second, {256, 384},
                              FloatsOf(ref["b.weight_scale_inv"].second), 128, 128));
  }
}

TEST(ConsolidateDequantizeTest, RefusesUnpairedTensorsNamingBothBeforeWriting) {
  // Scales that do not fit a weight: blocking for any consolidation (the model is broken).
  const std::string in = testing::NewTempDir() + "/bad";
  ASSERT_TRUE(LocalFileSystem().MakeDirs(in).ok());
  testing::WriteFile(in + "/model.safetensors",
                     testing::BuildSafetensors({{"c.weight_scale_inv", DType::kF32, {1, 1}},
                                                {"d.weight", DType::kF8_E4M3, {2, 2}},
                                                {"d.weight_scale_inv", DType::kF32, {2, 1}}}));
  const std::string out = testing::NewTempDir() + "/out";
  for (bool dequantize : {true, false}) {
    ConsolidateOptions o;
    if (dequantize) o.dequantize = DType::kBF16;
    auto r = Consolidate(LocalFileSystem(), in, out, o);
    ASSERT_FALSE(r.ok());
    const std::string msg(r.status().message());
    EXPECT_THAT(msg, HasSubstr("nothing was written"));
    EXPECT_THAT(msg, HasSubstr(R"(scale "d.weight_scale_inv" has shape [2, 1] but weight )"
                               R"("d.weight" [2, 2] needs [1, 1])"));
    EXPECT_FALSE(LocalFileSystem().Stat(out).ok());
  }
  // A scale without its weight: a warning for a plain consolidation, refused by --dequantize.
  const std::string lone = testing::NewTempDir() + "/lone";
  ASSERT_TRUE(LocalFileSystem().MakeDirs(lone).ok());
  testing::WriteFile(lone + "/model.safetensors",
                     testing::BuildSafetensors(
                         {{"c.weight_scale_inv", DType::kF32, {1, 1}}, {"n", DType::kF32, {2}}}));
  ConsolidateOptions dq;
  dq.dequantize = DType::kBF16;
  auto lr = Consolidate(LocalFileSystem(), lone, out, dq);
  ASSERT_FALSE(lr.ok());
  EXPECT_THAT(std::string(lr.status().message()),
              HasSubstr(R"(scale "c.weight_scale_inv" has no weight "c.weight")"));
  EXPECT_FALSE(LocalFileSystem().Stat(out).ok());
  auto lp = Consolidate(LocalFileSystem(), lone, testing::NewTempDir() + "/lp", {});
  ASSERT_TRUE(lp.ok()) << lp.status();
  EXPECT_THAT(absl::StrJoin(lp->warnings, "\n"), HasSubstr("unpaired_scale"));
  // An FP8 weight without a scale beside a scaled one: refused only when dequantizing.
  const std::string in2 = testing::NewTempDir() + "/unscaled";
  ASSERT_TRUE(LocalFileSystem().MakeDirs(in2).ok());
  testing::WriteFile(in2 + "/model.safetensors",
                     testing::BuildSafetensors({{"a.weight", DType::kF8_E4M3, {4, 4}},
                                                {"b.weight", DType::kF8_E4M3, {4, 4}},
                                                {"b.weight_scale_inv", DType::kF32, {1, 1}}}));
  ConsolidateOptions o;
  o.dequantize = DType::kBF16;
  auto r = Consolidate(LocalFileSystem(), in2, out, o);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr(R"(FP8 weight "a.weight" has no scale "a.weight_scale_inv")"));
  EXPECT_FALSE(LocalFileSystem().Stat(out).ok());
  auto plain = Consolidate(LocalFileSystem(), in2, out, {});  // F8 bytes copied as they are
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_THAT(absl::StrJoin(plain->warnings, "\n"), HasSubstr("unscaled_fp8"));
}

// Memory stays bounded whatever the tensor size: a 1 GiB FP8 weight (a sparse file: the codes
// are holes, the scales real) dequantized to 2 GiB of BF16 in a child process whose anonymous
// memory is sampled from /proc throughout; the bound is 64 MiB (one block row of this weight is
// 8 MiB more; the engine never holds one).
TEST(ConsolidateDequantizeTest, PeakAnonymousMemoryStaysBoundedForALargeWeight) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "sanitizer shadow memory is anonymous: the bound is checked in normal builds";
#endif
  const uint64_t rows = 32768, cols = 32768, scale_bytes = 256 * 256 * 4;  // 1 GiB of codes
  const std::string in = testing::NewTempDir() + "/big";
  ASSERT_TRUE(LocalFileSystem().MakeDirs(in).ok());
  const std::string json =
      absl::StrCat(R"({"w.weight_scale_inv":{"dtype":"F32","shape":[256,256],"data_offsets":[0,)",
                   scale_bytes, R"(]},"w.weight":{"dtype":"F8_E4M3","shape":[)", rows, ",", cols,
                   R"(],"data_offsets":[)", scale_bytes, ",", scale_bytes + rows * cols, "]}}");
  const std::vector<float> scales(256 * 256, 0.5f);
  const std::string file = in + "/model.safetensors";
  const std::string head = testing::RawSafetensors(json, FloatBytes(scales));
  testing::WriteFile(file, head);
  ASSERT_EQ(truncate(file.c_str(), static_cast<off_t>(head.size() + rows * cols)), 0);
  const std::string out = testing::NewTempDir() + "/out";
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> peak{0};
    std::thread sampler([&] {
      while (!stop.load()) {
        std::ifstream st("/proc/self/status");
        for (std::string line; std::getline(st, line);) {
          if (line.rfind("RssAnon:", 0) == 0) {
            peak = std::max<uint64_t>(peak.load(), std::stoull(line.substr(8)));
          }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    });
    ConsolidateOptions o;
    o.dequantize = DType::kBF16;
    o.threads = 2;
    o.checksums = false;
    auto r = Consolidate(LocalFileSystem(), in, out, o);
    stop = true;
    sampler.join();
    std::fprintf(stderr, "peak RssAnon %llu KiB\n", static_cast<unsigned long long>(peak.load()));
    if (!r.ok()) std::fprintf(stderr, "%s\n", std::string(r.status().message()).c_str());
    _exit(!r.ok() ? 1 : peak.load() > 64 * 1024 ? 2 : 0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: consolidation failed, 2: anonymous memory over 64 MiB";
  auto st = LocalFileSystem().Stat(out + "/model-00001-of-00001.safetensors");
  ASSERT_TRUE(st.ok());
  EXPECT_GT(st->size, 2 * rows * cols);
}

// A weight large enough that its run is split into work items mid-row and converted in many
// pieces, with 1,152 distinct scales (more than the per-thread table cache holds), verified:
// --verify re-reads every dequantized run and must agree with what was hashed while writing.
TEST(ConsolidateDequantizeTest, LargeWeightVerifiesAcrossItemsPiecesAndManyScales) {
  const uint64_t rows = 4500, cols = 4000;  // 18 MB of codes: two work items, split mid-row
  const std::string in = testing::NewTempDir() + "/big";
  ASSERT_TRUE(LocalFileSystem().MakeDirs(in).ok());
  const std::string codes = testing::PatternBytes("w", rows * cols);
  std::vector<float> scales(36 * 32);
  for (size_t i = 0; i < scales.size(); ++i) scales[i] = 1e-3f * static_cast<float>(i + 1);
  const std::string json = absl::StrCat(
      R"({"w.weight_scale_inv":{"dtype":"F32","shape":[36,32],"data_offsets":[0,4608]},)",
      R"("w.weight":{"dtype":"F8_E4M3","shape":[)", rows, ",", cols, R"(],"data_offsets":[4608,)",
      4608 + rows * cols, "]}}");
  testing::WriteFile(in + "/model.safetensors",
                     testing::RawSafetensors(json, FloatBytes(scales) + codes));
  for (DType target : {DType::kBF16, DType::kF16}) {
    const std::string out = testing::NewTempDir() + "/out";
    ConsolidateOptions o;
    o.dequantize = target;
    o.verify = true;
    o.threads = 2;
    auto r = Consolidate(LocalFileSystem(), in, out, o);
    ASSERT_TRUE(r.ok()) << r.status();
    auto got = ReadAllTensors(out);
    const std::string& b = got["w.weight"].second;
    ASSERT_EQ(b.size(), rows * cols * 2);
    for (uint64_t i = 0; i < rows * cols; i += 997) {  // a sample across both items
      const float v = static_cast<float>(
                          testing::ReferenceF8(DType::kF8_E4M3, static_cast<uint8_t>(codes[i]))) *
                      scales[(i / cols / 128) * 32 + (i % cols) / 128];
      uint16_t have;
      std::memcpy(&have, b.data() + 2 * i, 2);
      if (std::isnan(v)) continue;
      const uint16_t want = target == DType::kBF16 ? testing::ReferenceBf16(v) : FloatToHalf(v);
      ASSERT_EQ(have, want) << "element " << i;
    }
  }
  // A cast (F32 -> BF16) of a run over the 1 MiB conversion buffer verifies too.
  const std::string cin = testing::NewTempDir() + "/cast";
  ASSERT_TRUE(LocalFileSystem().MakeDirs(cin).ok());
  testing::WriteFile(cin + "/model.safetensors",
                     testing::BuildSafetensors({{"x", DType::kF32, {1024, 600}}}));
  ConsolidateOptions co;
  co.cast_dtype = DType::kBF16;
  co.verify = true;
  auto cr = Consolidate(LocalFileSystem(), cin, testing::NewTempDir() + "/cout", co);
  EXPECT_TRUE(cr.ok()) << cr.status();
}

TEST(ConsolidateDequantizeTest, ThreeDimensionalFp8AndShardedMxfp4) {
  // [3, 130, 260] experts with [3, 2, 3] scales; MXFP4 blocks and scales split along G over 3
  // ranks (chunk boundaries between blocks).
  const std::vector<ExampleTensor> model = {
      {"x.weight", DType::kF8_E4M3, {3, 130, 260}, Sharding::kRow},
      {"x.weight_scale_inv", DType::kF32, {3, 2, 3}, Sharding::kRow},
      {"e_blocks", DType::kU8, {4, 6, 16}, Sharding::kColumn},
      {"e_scales", DType::kU8, {4, 6}, Sharding::kColumn},
  };
  const std::string in = WriteModel(model, {.ranks = 3});
  const std::string plain = testing::NewTempDir() + "/plain";
  ASSERT_TRUE(Consolidate(LocalFileSystem(), in, plain, {}).ok());
  auto ref = ReadAllTensors(plain);
  const std::string out = testing::NewTempDir() + "/out";
  ConsolidateOptions o;
  o.dequantize = DType::kF32;
  auto r = Consolidate(LocalFileSystem(), in, out, o);
  ASSERT_TRUE(r.ok()) << r.status();
  auto got = ReadAllTensors(out);
  ASSERT_EQ(got.size(), 2u);
  const std::vector<float> x = FloatsOf(got["x.weight"].second);
  const std::vector<float> xs = FloatsOf(ref["x.weight_scale_inv"].second);
  const std::string& xc = ref["x.weight"].second;
  ASSERT_EQ(x.size(), 3u * 130 * 260);
  for (size_t i = 0; i < x.size(); ++i) {
    const size_t e = i / (130 * 260), row = i / 260 % 130, col = i % 260;
    const float want =
        static_cast<float>(testing::ReferenceF8(DType::kF8_E4M3, static_cast<uint8_t>(xc[i]))) *
        xs[(e * 2 + row / 128) * 3 + col / 128];
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(x[i])) << i;
    } else {
      ASSERT_EQ(x[i], want) << i;
    }
  }
  const std::vector<float> m = FloatsOf(got["e"].second);
  const std::string& blocks = ref["e_blocks"].second;
  const std::string& es = ref["e_scales"].second;
  ASSERT_EQ(m.size(), 4u * 6 * 32);
  for (size_t v = 0; v < m.size(); ++v) {
    const uint8_t byte = static_cast<uint8_t>(blocks[v / 2]);
    const double want =
        testing::ReferenceMinifloat(v % 2 == 0 ? (byte & 0xf) : (byte >> 4), 2, 1, 1) *
        testing::ReferenceF8(DType::kF8_E8M0, static_cast<uint8_t>(es[v / 32]));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(m[v])) << v;
    } else {
      ASSERT_EQ(m[v], static_cast<float>(want)) << v;
    }
  }
}

TEST(ConsolidateDequantizeTest, BlockSizeMappingConfigAndOutputConfigRules) {
  // 256x256 with [4, 4] scales: 64x64 blocks, which only --block-size says.
  const std::string in = testing::NewTempDir() + "/q";
  ASSERT_TRUE(LocalFileSystem().MakeDirs(in).ok());
  testing::WriteFile(in + "/model.safetensors",
                     testing::BuildSafetensors({{"a.weight", DType::kF8_E4M3, {256, 256}},
                                                {"a.weight_scale_inv", DType::kF32, {4, 4}},
                                                {"e_blocks", DType::kU8, {2, 16}},
                                                {"e_scales", DType::kU8, {2}},
                                                {"norm", DType::kBF16, {4}}}));
  testing::WriteFile(
      in + "/config.json",
      R"({"torch_dtype": "bfloat16", "quantization_config": {"quant_method": "fp8"}})");
  ConsolidateOptions o;
  o.dequantize = DType::kBF16;
  auto refused = Consolidate(LocalFileSystem(), in, testing::NewTempDir() + "/x", o);
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("needs [2, 2] for 128x128"));
  // The mapping of the quantized model (it names e_blocks and the scales): e goes to file 2,
  // and the scales are not reported as dropped entries.
  o.block_size = quant::BlockSize{64, 64};
  o.fqn_to_index = std::map<std::string, int>{
      {"a.weight", 1}, {"a.weight_scale_inv", 1}, {"e_blocks", 2}, {"e_scales", 2}, {"norm", 1}};
  const std::string out = testing::NewTempDir() + "/out";
  auto r = Consolidate(LocalFileSystem(), in, out, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(absl::StrJoin(r->warnings, "\n"), Not(HasSubstr("dropped")));
  auto idx = ParseIndexJson(testing::ReadFile(out + "/" + std::string(kIndexFileName)), "index");
  ASSERT_TRUE(idx.ok());
  EXPECT_EQ(idx->weight_map.at("e"), "model-00002-of-00002.safetensors");
  EXPECT_EQ(idx->weight_map.at("a.weight"), "model-00001-of-00002.safetensors");

  // A config.json already in OUT that still says quantization_config: refused, kept.
  const std::string busy = testing::NewTempDir() + "/busy";
  ASSERT_TRUE(LocalFileSystem().MakeDirs(busy).ok());
  testing::WriteFile(busy + "/config.json", R"({"quantization_config": {}})");
  auto kept = Consolidate(LocalFileSystem(), in, busy, o);
  ASSERT_FALSE(kept.ok());
  EXPECT_THAT(std::string(kept.status().message()), HasSubstr("--overwrite"));
  EXPECT_EQ(testing::ReadFile(busy + "/config.json"), R"({"quantization_config": {}})");
  o.overwrite = true;
  ASSERT_TRUE(Consolidate(LocalFileSystem(), in, busy, o).ok());
  EXPECT_THAT(testing::ReadFile(busy + "/config.json"), Not(HasSubstr("quantization_config")));

  // Nothing quantized: --dequantize copies config.json unchanged (no torch_dtype rewritten).
  const std::string plain = testing::NewTempDir() + "/plain";
  ASSERT_TRUE(LocalFileSystem().MakeDirs(plain).ok());
  testing::WriteFile(plain + "/model.safetensors",
                     testing::BuildSafetensors(
                         {{"attn.logit_scales", DType::kF32, {8}}, {"w", DType::kBF16, {4}}}));
  testing::WriteFile(plain + "/config.json", R"({"torch_dtype": "bfloat16"})");
  ConsolidateOptions f16;
  f16.dequantize = DType::kF16;
  const std::string pout = testing::NewTempDir() + "/pout";
  auto pr = Consolidate(LocalFileSystem(), plain, pout, f16);
  ASSERT_TRUE(pr.ok()) << pr.status();
  EXPECT_EQ(testing::ReadFile(pout + "/config.json"), R"({"torch_dtype": "bfloat16"})");
  EXPECT_EQ(pr->dequantized, 0u);
}

}  // namespace
}  // namespace safeshard

namespace safeshard {
namespace {

// On tmpfs the outputs are not preallocated and every run, large ones too, is copied through
// the writable mapping: the result is the same bytes (checked against the naive reassembly and
// by --verify), with 1 and 3 threads, including runs of 1 MiB and more.
TEST(ConsolidateTest, TmpfsOutputsEqualNaiveReassembly) {
  struct statfs sfs;
  if (statfs("/dev/shm", &sfs) != 0 || sfs.f_type != TMPFS_MAGIC) GTEST_SKIP() << "no tmpfs";
  char tmpl[] = "/dev/shm/safeshard-consolidate-test-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  std::vector<ExampleTensor> model = AcceptanceModel();
  model.push_back({"big", DType::kF32, {1024, 640}, Sharding::kRow});  // 640 KiB rows x 2
  model.push_back({"bigger", DType::kU8, {4, 3u << 20}, Sharding::kColumn});
  const std::string in = WriteModel(model);
  for (int threads : {1, 3}) {
    const std::string out = absl::StrCat(tmpl, "/out", threads);
    ConsolidateOptions o;
    o.threads = threads;
    o.verify = true;
    auto r = Consolidate(LocalFileSystem(), in, out, o);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_TRUE(r->verify.has_value());
    EXPECT_TRUE(r->verify->mismatches.empty());
    ExpectEqualsNaiveReassembly(model, out);
  }
  std::system(absl::StrCat("rm -rf '", tmpl, "'").c_str());
}

}  // namespace
}  // namespace safeshard
