#include "cli/cli.h"

#include <sys/stat.h>

#include <sstream>

#include "absl/strings/match.h"
#include "core/example/example.h"
#include "core/format/filenames.h"
#include "core/io/filesystem.h"
#include "core/layout/layout.h"
#include "core/testing/testing.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace safeshard {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

struct Result {
  int code;
  std::string out, err;
};

Result RunCli(std::vector<std::string> args) {
  args.insert(args.begin(), "safeshard");
  std::ostringstream out, err;
  int code = RunSafeshard(args, out, err);
  return {code, out.str(), err.str()};
}

std::string Example(WriteOptions o = {.ranks = 4}) {
  std::string dir = testing::NewTempDir();
  EXPECT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir,
                                 TransformerLikeModel({.layers = 1, .hidden = 16, .vocab = 32}), o)
                  .ok());
  return dir;
}

TEST(CliTest, VerifyCleanExitsZero) {
  Result r = RunCli({"verify", Example()});
  EXPECT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("ok: 16 tensors in 4 files"));
}

TEST(CliTest, VerifyPrintsEachProblemOnItsOwnLineAndExitsOne) {
  WriteOptions o{.ranks = 4};
  o.drop_chunk = std::make_pair(std::string("lm_head.weight"), 1);
  std::string dir = Example(o);
  ASSERT_TRUE(
      LocalFileSystem().Remove(JoinPath(dir, "shard-00002-model-00001-of-00001.safetensors")).ok());
  Result r = RunCli({"verify", dir});
  EXPECT_EQ(r.code, kExitProblems);
  std::vector<std::string> lines;
  std::istringstream is(r.out);
  for (std::string l; std::getline(is, l);) lines.push_back(l);
  EXPECT_GE(lines.size(), 3u);
  EXPECT_THAT(r.out, HasSubstr("gap: tensor \"lm_head.weight\""));
  EXPECT_THAT(r.out,
              HasSubstr("shard_ranks: shard rank indices are not dense 1..4: missing shard-2"));
}

TEST(CliTest, VerifyJsonReportsProblems) {
  WriteOptions o{.ranks = 2};
  o.drop_chunk = std::make_pair(std::string("model.embed_tokens.weight"), 0);
  Result r = RunCli({"verify", "--json", Example(o)});
  EXPECT_EQ(r.code, kExitProblems);
  nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["schema"], "safeshard.verify/1");
  EXPECT_FALSE(j["ok"].get<bool>());
  EXPECT_EQ(j["problems"][0]["kind"], "gap");
  EXPECT_EQ(j["problems"][0]["tensor"], "model.embed_tokens.weight");
}

TEST(CliTest, UsageErrorsExitTwo) {
  EXPECT_EQ(RunCli({}).code, kExitUsage);
  EXPECT_EQ(RunCli({"verify"}).code, kExitUsage);
  Result unknown = RunCli({"frobnicate"});
  EXPECT_EQ(unknown.code, kExitUsage);
  EXPECT_THAT(unknown.err, HasSubstr("unknown command \"frobnicate\""));
  EXPECT_EQ(RunCli({"verify", "/nonexistent/ckpt"}).code, kExitUsage);
  EXPECT_EQ(RunCli({"inspect", "--filter", "(", Example()}).code, kExitUsage);
  EXPECT_EQ(RunCli({"make-example", "/tmp/x", "--ranks", "0"}).code, kExitUsage);
}

TEST(CliTest, HelpExitsZeroAndExplains) {
  Result r = RunCli({"--help"});
  EXPECT_EQ(r.code, kExitOk);
  EXPECT_THAT(r.out, HasSubstr("inspect"));
  EXPECT_THAT(r.out, HasSubstr("verify"));
  Result v = RunCli({"verify", "--help"});
  EXPECT_EQ(v.code, kExitOk);
  EXPECT_THAT(v.out, HasSubstr("no gap, no overlap"));
}

TEST(CliTest, InspectTableShowsTensorsAndTotals) {
  Result r = RunCli({"inspect", Example()});
  EXPECT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("dcp_sharded, 4 ranks, 4 files"));
  EXPECT_THAT(r.out, HasSubstr("model.layers.0.mlp.gate_proj.weight"));
  EXPECT_THAT(r.out, HasSubstr("totals by dtype:"));
  EXPECT_THAT(r.out, HasSubstr("16 tensors"));
}

TEST(CliTest, InspectFilterAndByFile) {
  std::string dir = Example();
  Result r = RunCli({"inspect", "--filter", "norm", dir});
  EXPECT_THAT(r.out, HasSubstr("model.norm.weight"));
  EXPECT_THAT(r.out, Not(HasSubstr("lm_head")));
  Result b = RunCli({"inspect", "--by-file", dir});
  EXPECT_THAT(b.out, HasSubstr("shard-00003-model-00001-of-00001.safetensors"));
  EXPECT_THAT(b.out, HasSubstr("rank 2, DCP shard"));
}

TEST(CliTest, InspectJsonIsStable) {
  std::string dir = Example();
  Result r = RunCli({"inspect", "--json", dir});
  ASSERT_EQ(r.code, kExitOk);
  nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["schema"], "safeshard.inspect/1");
  EXPECT_EQ(j["kind"], "dcp_sharded");
  EXPECT_EQ(j["ranks"], 4);
  EXPECT_EQ(j["files"].size(), 4u);
  bool found = false;
  for (const auto& t : j["tensors"]) {
    if (t["name"] == "model.layers.0.mlp.gate_proj.weight") {
      found = true;
      EXPECT_EQ(t["shape"], nlohmann::json({64, 16}));
      EXPECT_EQ(t["chunks"].size(), 4u);
      EXPECT_EQ(t["chunks"][0]["sizes"], nlohmann::json({32, 8}));
    }
  }
  EXPECT_TRUE(found);
  EXPECT_EQ(j["totals"]["BF16"]["tensors"], 8);
  EXPECT_EQ(RunCli({"inspect", "--json", dir}).out, r.out);  // deterministic
  // The raw DCP_SHARDING_INFO string is not repeated in the files' metadata (it is the chunks).
  for (const auto& f : j["files"]) {
    EXPECT_FALSE(f["metadata"].contains("DCP_SHARDING_INFO")) << f["name"];
    EXPECT_EQ(f["metadata"]["format"], "pt");
  }
}

TEST(CliTest, InspectAndVerifyAgreeOnWrongInputsAndSayWhatIsThere) {
  // One exit-code table: 0 clean, 1 problems (a wrong input is one), 2 usage.
  struct Case {
    std::vector<std::string> files;
    std::string want;
  };
  for (const Case& c :
       std::vector<Case>{{{}, "the directory is empty"},
                         {{"__0_0.distcp", ".metadata"}, "torch.distributed.checkpoint"},
                         {{"pytorch_model.bin"}, "pickle weights"}}) {
    std::string dir = testing::NewTempDir();
    for (const std::string& f : c.files) testing::WriteFile(dir + "/" + f, "x");
    Result i = RunCli({"inspect", dir});
    Result v = RunCli({"verify", dir});
    EXPECT_EQ(i.code, kExitProblems) << c.want;
    EXPECT_EQ(v.code, kExitProblems) << c.want;
    EXPECT_THAT(i.out, HasSubstr(c.want));
    EXPECT_THAT(v.out, HasSubstr(c.want));  // the verdict on stdout, like "ok"
  }
  // A text file under a checkpoint name is "not a safetensors file", not a huge header length.
  std::string dir = testing::NewTempDir();
  testing::WriteFile(dir + "/README.safetensors", "# My model\n\nTrained for 3 epochs.\n");
  Result v = RunCli({"verify", dir + "/README.safetensors"});
  EXPECT_EQ(v.code, kExitProblems);
  EXPECT_THAT(v.out, HasSubstr("not a safetensors file"));
  Result i = RunCli({"inspect", dir + "/README.safetensors"});
  EXPECT_EQ(i.code, kExitProblems);
  EXPECT_THAT(i.out,
              HasSubstr("checkpoint " + dir + "/README.safetensors"));  // the file, not its dir
  EXPECT_EQ(RunCli({"inspect", dir + "/missing"}).code, kExitUsage);
}

TEST(CliConsolidateTest, DryRunPrintsThePlanAndWritesNothing) {
  std::string in = Example();
  std::string out = testing::NewTempDir() + "/out";
  Result r = RunCli({"consolidate", in, out, "--dry-run", "--max-shard-size", "20KB"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("plan: "));
  EXPECT_THAT(r.out, HasSubstr("model-00001-of-"));
  EXPECT_THAT(r.out, HasSubstr("nothing was written"));
  EXPECT_FALSE(LocalFileSystem().Stat(out).ok());
  // A bare number is refused: 5 bytes per file is never what is meant.
  Result bare = RunCli({"consolidate", in, out, "--max-shard-size", "5"});
  EXPECT_EQ(bare.code, kExitUsage);
  EXPECT_THAT(bare.err, HasSubstr("has no unit"));
  // Torch's dtype names are understood.
  Result cast = RunCli({"consolidate", in, out, "--dry-run", "--cast-dtype", "torch.bfloat16"});
  EXPECT_EQ(cast.code, kExitOk) << cast.err;
}

TEST(CliTest, InspectByFileShowsMetadata) {
  std::string dir = testing::NewTempDir();
  testing::WriteFile(
      dir + "/model.safetensors",
      testing::BuildSafetensors({{"w", DType::kF32, {2}}}, {{"format", "pt"}, {"step", "1000"}}));
  Result r = RunCli({"inspect", "--by-file", dir});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("metadata: \"format\"=\"pt\", \"step\"=\"1000\""));
}

TEST(CliTest, VersionAndNaturalOrder) {
  Result v = RunCli({"--version"});
  EXPECT_EQ(v.code, kExitOk);
  EXPECT_THAT(v.out, HasSubstr("safeshard 0."));
  std::string dir = testing::NewTempDir();
  testing::WriteFile(dir + "/model.safetensors",
                     testing::BuildSafetensors({{"layers.10.w", DType::kF32, {2}},
                                                {"layers.2.w", DType::kF32, {2}},
                                                {"layers.1.w", DType::kF32, {2}}}));
  Result r = RunCli({"inspect", dir});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  const size_t p1 = r.out.find("layers.1.w"), p2 = r.out.find("layers.2.w"),
               p10 = r.out.find("layers.10.w");
  EXPECT_LT(p1, p2);
  EXPECT_LT(p2, p10);
}

TEST(CliTest, MakeExampleRefusesToOverwrite) {
  std::string dir = Example();
  Result r = RunCli({"make-example", dir});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_THAT(r.err, HasSubstr("--force"));
  EXPECT_EQ(RunCli({"make-example", dir, "--force", "--layers", "1", "--hidden", "8"}).code,
            kExitOk);
}

}  // namespace
}  // namespace safeshard

namespace safeshard {
namespace {

TEST(CliConsolidateTest, ConsolidatesVerifiesAndRefusesToOverwrite) {
  std::string in = Example();
  std::string out = testing::NewTempDir() + "/hf";
  Result r = RunCli({"consolidate", in, out, "--verify", "--max-shard-size", "4KB"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("consolidated"));
  EXPECT_THAT(r.out, HasSubstr("verified"));
  EXPECT_EQ(RunCli({"verify", out}).code, kExitOk);
  Result again = RunCli({"consolidate", in, out});
  EXPECT_EQ(again.code, kExitProblems);
  EXPECT_THAT(again.err, HasSubstr("--overwrite"));
  Result json = RunCli({"consolidate", in, out, "--overwrite", "--json"});
  ASSERT_EQ(json.code, kExitOk) << json.err;
  nlohmann::json j = nlohmann::json::parse(json.out);
  EXPECT_EQ(j["schema"], "safeshard.consolidate/1");
  EXPECT_EQ(j["files"].back(), "model.safetensors.index.json");
}

TEST(CliConsolidateTest, RefusesIncompleteCheckpointAndBadOptions) {
  WriteOptions o{.ranks = 2};
  o.drop_chunk = std::make_pair(std::string("lm_head.weight"), 0);
  std::string in = Example(o);
  Result r = RunCli({"consolidate", in, testing::NewTempDir() + "/o"});
  EXPECT_EQ(r.code, kExitProblems);
  EXPECT_THAT(r.err, HasSubstr("gap: tensor \"lm_head.weight\""));
  EXPECT_EQ(RunCli({"consolidate", Example(), "/tmp/o", "--max-shard-size", "lots"}).code,
            kExitUsage);
  EXPECT_EQ(RunCli({"consolidate", Example(), "/tmp/o", "--cast-dtype", "f128"}).code, kExitUsage);
  EXPECT_EQ(
      RunCli({"consolidate", Example(), "/tmp/o", "--max-shard-size", "1GB", "--reference", "/tmp"})
          .code,
      kExitUsage);
}

TEST(CliRemapTest, DryRunThenApplyAndCollision) {
  std::string in = Example();
  Result dry = RunCli({"remap", in, "--rule", "^model\\.=>", "--dry-run"});
  ASSERT_EQ(dry.code, kExitOk) << dry.err;
  EXPECT_THAT(dry.out, HasSubstr("model.norm.weight"));
  EXPECT_THAT(dry.out, HasSubstr("->  norm.weight"));
  EXPECT_THAT(dry.out, HasSubstr("nothing written"));
  std::string out = testing::NewTempDir() + "/re";
  Result r = RunCli({"remap", in, out, "--rule", "^model\\.=>"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_EQ(RunCli({"verify", out}).code, kExitOk);
  Result col = RunCli({"remap", in, testing::NewTempDir() + "/c", "--rule", "\\.[qkv]_proj=>.qkv"});
  EXPECT_NE(col.code, kExitOk);
  EXPECT_THAT(col.err, HasSubstr("both map to"));
  EXPECT_EQ(RunCli({"remap", in, "--rule", "a=>b"}).code, kExitUsage);  // in place needs the flag
}

}  // namespace
}  // namespace safeshard

namespace safeshard {
namespace {

TEST(CliDiffTest, ShardsEqualTheirConsolidationThenOneByteDiffers) {
  const std::string in = Example();
  const std::string out = testing::NewTempDir() + "/hf";
  ASSERT_EQ(RunCli({"consolidate", in, out, "--max-shard-size", "20KB"}).code, kExitOk);
  Result same = RunCli({"diff", in, out});
  EXPECT_EQ(same.code, kExitOk) << same.out << same.err;
  EXPECT_THAT(same.out, HasSubstr("identical; 0 only in A, 0 only in B"));
  // One byte of one tensor changed in B.
  testing::FlipTensorByte(out, "model.embed_tokens.weight", 2 * (2 * 16 + 3),
                          0x40);  // BF16 [32, 16]: [2, 3]
  Result diff = RunCli({"diff", in, out});
  EXPECT_EQ(diff.code, kExitProblems) << diff.err;
  EXPECT_THAT(
      diff.out,
      HasSubstr(
          "values: model.embed_tokens.weight: 1 of 512 elements differ; first at [2, 3]: A 0x"));
  EXPECT_THAT(diff.out, HasSubstr("1 with other values"));
  Result js = RunCli({"diff", in, out, "--json"});
  EXPECT_EQ(js.code, kExitProblems);
  auto j = nlohmann::json::parse(js.out);
  EXPECT_EQ(j["schema"], "safeshard.diff/1");
  EXPECT_EQ(j["identical"], false);
  ASSERT_EQ(j["differences"].size(), 1u);
  EXPECT_EQ(j["differences"][0]["first_index"], nlohmann::json::array({2, 3}));
  // Headers only, or a filter leaving that tensor out: no difference seen.
  EXPECT_EQ(RunCli({"diff", in, out, "--headers-only"}).code, kExitOk);
  EXPECT_EQ(RunCli({"diff", in, out, "--filter", "^lm_head"}).code, kExitOk);
  // A BF16 cast of the checkpoint: another dtype byte for byte, equal within BF16's rounding.
  const std::string bf16 = testing::NewTempDir() + "/bf16";
  ASSERT_EQ(RunCli({"consolidate", in, bf16, "--cast-dtype", "bf16"}).code, kExitOk);
  Result cast = RunCli({"diff", in, bf16});
  EXPECT_EQ(cast.code, kExitProblems);
  EXPECT_THAT(cast.out, HasSubstr("with another dtype"));
  Result close = RunCli({"diff", in, bf16, "--rtol", "0.00390625", "--atol", "1e-6"});
  EXPECT_EQ(close.code, kExitOk) << close.out;
  EXPECT_THAT(close.out, HasSubstr("compared by value across float dtypes"));
  EXPECT_EQ(RunCli({"diff", in, bf16, "--rtol", "-1"}).code, kExitUsage);
  // Usage errors.
  EXPECT_EQ(RunCli({"diff", in}).code, kExitUsage);
  EXPECT_EQ(RunCli({"diff", in, out, "--filter", "("}).code, kExitUsage);
  Result missing = RunCli({"diff", in, out + "-missing"});
  EXPECT_EQ(missing.code, kExitUsage);
  EXPECT_THAT(missing.err, HasSubstr(out + "-missing"));
}

// ---- Issue 11: the verdict must be provable ----------------------------------------------------

size_t CheckpointLayoutFiles(const std::string& dir) {
  absl::StatusOr<CheckpointLayout> ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  return ck.ok() ? ck->files().size() : 0;
}

void RemoveHighestRank(const std::string& dir, int ranks) {
  ASSERT_TRUE(LocalFileSystem().Remove(JoinPath(dir, ShardFileName(ranks - 1, 1, 1))).ok());
}

TEST(CliTest, VerifySaysPlainlyWhenALostHighestRankCannotBeRuledOut) {
  std::string dir = Example({.ranks = 2});
  RemoveHighestRank(dir, 2);
  Result r = RunCli({"verify", dir});
  EXPECT_EQ(r.code, kExitOk) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("note: the checkpoint's completeness cannot be proven"));
  EXPECT_THAT(r.out, HasSubstr("--expect-ranks N"));
  Result strict = RunCli({"verify", "--strict", dir});
  EXPECT_EQ(strict.code, kExitProblems);
  EXPECT_THAT(strict.out, HasSubstr("completeness_unproven"));
  Result expect = RunCli({"verify", "--expect-ranks", "2", dir});
  EXPECT_EQ(expect.code, kExitProblems);
  EXPECT_THAT(
      expect.out,
      HasSubstr("expected_ranks: expected 2 ranks, found 1 with shard files; missing rank 1"));
  Result json = RunCli({"verify", "--json", dir});
  nlohmann::json j = nlohmann::json::parse(json.out);
  EXPECT_FALSE(j["completeness"]["proven"].get<bool>());
  EXPECT_THAT(j["completeness"]["unproven"].get<std::string>(), HasSubstr("--expect-ranks"));
}

TEST(CliTest, VerifyCatchesALostHighestRankThroughTheManifest) {
  WriteOptions o{.ranks = 2};
  o.manifest = true;
  std::string dir = Example(o);
  Result clean = RunCli({"verify", dir});
  EXPECT_EQ(clean.code, kExitOk) << clean.out;
  EXPECT_THAT(clean.out, HasSubstr("complete: proven by safeshard.complete.json"));
  RemoveHighestRank(dir, 2);
  Result r = RunCli({"verify", dir});
  EXPECT_EQ(r.code, kExitProblems);
  EXPECT_THAT(r.out,
              HasSubstr("manifest_missing_file: shard-00002-model-00001-of-00001.safetensors"));
  EXPECT_THAT(r.out, HasSubstr("manifest_ranks"));
  // consolidate refuses it, writing nothing.
  std::string out = testing::NewTempDir() + "/out";
  Result c = RunCli({"consolidate", dir, out});
  EXPECT_EQ(c.code, kExitProblems);
  EXPECT_FALSE(LocalFileSystem().Stat(out + "/model.safetensors.index.json").ok());
}

TEST(CliTest, VerifyChecksumsNamesTheFlippedTensor) {
  WriteOptions o{.ranks = 2};
  o.manifest = true;
  std::string dir = Example(o);
  Result ok = RunCli({"verify", "--checksums", dir});
  EXPECT_EQ(ok.code, kExitOk) << ok.out;
  EXPECT_THAT(ok.out, HasSubstr("every recorded XXH3-64 matches"));
  testing::FlipTensorByte(dir, "model.norm.weight", 0);
  EXPECT_EQ(RunCli({"verify", dir}).code, kExitOk);  // headers cannot see it
  Result r = RunCli({"verify", "--checksums", dir});
  EXPECT_EQ(r.code, kExitProblems);
  EXPECT_THAT(r.out, HasSubstr("checksum_mismatch: shard-0000"));
  EXPECT_THAT(r.out, HasSubstr("tensor \"model.norm.weight\""));
  // No manifest: nothing to compare with, said as a failure of the requested check.
  Result none = RunCli({"verify", "--checksums", Example({.ranks = 1})});
  EXPECT_EQ(none.code, kExitProblems);
  EXPECT_THAT(none.out, HasSubstr("no valid safeshard.complete.json"));
}

TEST(CliTest, VerifyAgainstAReferenceModel) {
  std::string ref = Example({.ranks = 1});
  std::string dir = Example({.ranks = 2});
  Result ok = RunCli({"verify", "--reference", ref, "--strict", dir});
  EXPECT_EQ(ok.code, kExitOk) << ok.out;
  EXPECT_THAT(ok.out, HasSubstr("proven by the reference model"));
  RemoveHighestRank(dir, 2);
  Result r = RunCli({"verify", "--reference", ref, dir});
  EXPECT_EQ(r.code, kExitProblems);
  EXPECT_THAT(r.out, HasSubstr("reference_mismatch"));
}

TEST(CliTest, DiffRefusesAnHfInputMissingAnIndexedFile) {
  std::string in = Example({.ranks = 2});
  std::string out = testing::NewTempDir() + "/hf";
  ASSERT_EQ(RunCli({"consolidate", in, out, "--max-shard-size", "4KiB"}).code, kExitOk);
  ASSERT_EQ(RunCli({"diff", in, out}).code, kExitOk);
  std::vector<std::string> files;
  absl::StatusOr<std::vector<DirEntry>> listed = LocalFileSystem().List(out);
  ASSERT_TRUE(listed.ok());
  for (const DirEntry& e : *listed) {
    if (absl::EndsWith(e.name, ".safetensors")) files.push_back(e.name);
  }
  ASSERT_GE(files.size(), 2u);
  ASSERT_TRUE(LocalFileSystem().Remove(out + "/" + files[1]).ok());
  Result d = RunCli({"diff", in, out});
  EXPECT_EQ(d.code, kExitProblems);
  EXPECT_THAT(d.err, HasSubstr("not compared"));
  // And it is refused as an input, by the manifest and, without it, by the index.
  Result c = RunCli({"consolidate", out, testing::NewTempDir() + "/again"});
  EXPECT_EQ(c.code, kExitProblems);
  EXPECT_THAT(c.err, HasSubstr("manifest_missing_file"));
  ASSERT_TRUE(LocalFileSystem().Remove(out + "/safeshard.complete.json").ok());
  Result c2 = RunCli({"consolidate", out, testing::NewTempDir() + "/again"});
  EXPECT_EQ(c2.code, kExitProblems);
  EXPECT_THAT(c2.err, HasSubstr("index_missing_file"));
  EXPECT_EQ(RunCli({"diff", in, out}).code, kExitProblems);
}

TEST(CliTest, MakeExampleWritesThePyTorchNewestStridedLayout) {
  std::string dir = testing::NewTempDir() + "/ex";
  Result w = RunCli({"make-example", dir, "--ranks", "4", "--layers", "1", "--hidden", "16",
                     "--vocab", "32", "--strided", "--pytorch-newest", "--manifest"});
  ASSERT_EQ(w.code, kExitOk) << w.err;
  Result v = RunCli({"verify", dir});
  EXPECT_EQ(v.code, kExitOk) << v.out;
  EXPECT_THAT(v.out, HasSubstr("ok: 16 tensors"));
  Result i = RunCli({"inspect", "--json", dir});
  nlohmann::json j = nlohmann::json::parse(i.out);
  bool keyed = false;
  for (const auto& t : j["tensors"]) {
    EXPECT_EQ(t["name"].get<std::string>().find("__dcp_shard_"), std::string::npos);
    for (const auto& c : t["chunks"]) keyed |= c.contains("key");
  }
  EXPECT_TRUE(keyed);
  std::string out = testing::NewTempDir() + "/hf";
  ASSERT_EQ(RunCli({"consolidate", dir, out, "--verify"}).code, kExitOk);
  EXPECT_EQ(RunCli({"diff", dir, out}).code, kExitOk);
}

TEST(CliTest, InspectExitsOneOnABrokenCheckpointAndReferenceCannotBeItself) {
  std::string dir = Example({.ranks = 2});
  testing::WriteFile(dir + "/junk.safetensors", "not a safetensors file at all");
  Result i = RunCli({"inspect", dir});
  EXPECT_EQ(i.code, kExitProblems);
  EXPECT_THAT(i.out, HasSubstr("not complete"));
  Result j = RunCli({"inspect", "--json", dir});
  EXPECT_EQ(j.code, kExitProblems);
  EXPECT_FALSE(nlohmann::json::parse(j.out)["completeness"]["proven"].get<bool>());
  std::string good = Example({.ranks = 2});
  Result self = RunCli({"verify", "--reference", good, good});
  EXPECT_EQ(self.code, kExitUsage);
  EXPECT_THAT(self.err, HasSubstr("the checkpoint itself"));
}

TEST(CliTest, AFifoNamedLikeAShardIsAnErrorNotAHang) {
  std::string dir = Example({.ranks = 2});
  ASSERT_EQ(mkfifo((dir + "/shard-00003-model-00001-of-00001.safetensors").c_str(), 0644), 0);
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"verify", dir},
        {"inspect", dir},
        {"consolidate", dir, testing::NewTempDir() + "/out"}}) {
    Result r = RunCli(args);  // returns (a blocking open would hang here forever)
    EXPECT_EQ(r.code, kExitProblems) << args[0];
    if (args[0] != "inspect") {
      EXPECT_THAT(r.out + r.err, HasSubstr("not a regular file")) << args[0];
    }
  }
}

TEST(CliTest, AnIndexEntryLeavingTheDirectoryBlocksConsolidation) {
  std::string in = Example({.ranks = 2});
  std::string hf = testing::NewTempDir() + "/hf";
  ASSERT_EQ(RunCli({"consolidate", in, hf}).code, kExitOk);
  std::string index = testing::ReadFile(hf + "/model.safetensors.index.json");
  const std::string from = "\"lm_head.weight\": \"model-00001-of-00001.safetensors\"";
  ASSERT_NE(index.find(from), std::string::npos);
  index.replace(index.find(from), from.size(), "\"lm_head.weight\": \"../../etc/passwd\"");
  testing::WriteFile(hf + "/model.safetensors.index.json", index);
  Result c = RunCli({"consolidate", hf, testing::NewTempDir() + "/again"});
  EXPECT_EQ(c.code, kExitProblems);
  EXPECT_THAT(c.err, HasSubstr("invalid_index"));
  EXPECT_EQ(RunCli({"verify", hf}).code, kExitProblems);
}

TEST(CliTest, OutputsThatOnlyBecomeTheInputOnceCreatedAndShardsInOutAreRefused) {
  std::string in = Example({.ranks = 2});
  // "IN/new/.." is IN once "new" exists.
  Result r = RunCli({"consolidate", in, in + "/nonexist/..", "--overwrite"});
  EXPECT_EQ(r.code, kExitUsage) << r.err;
  EXPECT_EQ(CheckpointLayoutFiles(in), 2u);
  EXPECT_FALSE(LocalFileSystem().Stat(in + "/nonexist").ok())
      << "a refused run left a directory in IN";
  Result rr = RunCli({"remap", in, in + "/nonexist2/..", "--rule", "^a=>b"});
  EXPECT_NE(rr.code, kExitOk);
  EXPECT_FALSE(LocalFileSystem().Stat(in + "/nonexist2").ok())
      << "a refused remap left a directory in IN";
  // An OUT holding another checkpoint's per-rank shards is never replaced, even with --overwrite.
  std::string other = Example({.ranks = 2});
  Result o = RunCli({"consolidate", in, other, "--overwrite"});
  EXPECT_EQ(o.code, kExitProblems) << o.err;
  EXPECT_THAT(o.err, HasSubstr("a per-rank shard"));
  EXPECT_EQ(CheckpointLayoutFiles(other), 2u);
  // A directory named like a shard is reported, not skipped.
  ASSERT_EQ(mkdir((in + "/shard-00003-model-00001-of-00001.safetensors").c_str(), 0755), 0);
  EXPECT_EQ(RunCli({"verify", in}).code, kExitProblems);
  // Names that are not UTF-8 are printed, never an abort.
  Result bad = RunCli({"verify", "--json", in + "/\xff"});
  EXPECT_EQ(bad.code, kExitUsage);
}

// Issue 14: quantized pairs in inspect, their problems in verify, and consolidate --dequantize.
TEST(CliQuantizedTest, InspectShowsPairsVerifyFlagsScalesConsolidateDequantizes) {
  const std::string dir = testing::NewTempDir() + "/q";
  ASSERT_EQ(mkdir(dir.c_str(), 0755), 0);
  testing::WriteFile(dir + "/model.safetensors",
                     testing::BuildSafetensors({{"l.weight", DType::kF8_E4M3, {256, 300}},
                                                {"l.weight_scale_inv", DType::kF32, {2, 3}},
                                                {"norm", DType::kBF16, {8}}}));
  testing::WriteFile(dir + "/config.json", R"({"quantization_config": {"quant_method": "fp8"}})");
  Result in = RunCli({"inspect", dir});
  EXPECT_EQ(in.code, kExitOk) << in.err;
  EXPECT_THAT(in.out, HasSubstr("quantized weights (1;"));
  EXPECT_THAT(in.out, HasSubstr("fp8 128x128 blocks (F8_E4M3 codes, F32 scales)"));
  EXPECT_THAT(in.out, HasSubstr("l.weight + l.weight_scale_inv"));
  Result js = RunCli({"inspect", "--json", dir});
  auto j = nlohmann::json::parse(js.out);
  ASSERT_EQ(j["quantized"].size(), 1u);
  EXPECT_EQ(j["quantized"][0]["block"], nlohmann::json::array({128, 128}));

  Result plan = RunCli({"consolidate", dir, dir + "-bf16", "--dequantize", "bf16", "--dry-run"});
  EXPECT_EQ(plan.code, kExitOk) << plan.err;
  EXPECT_THAT(plan.out, HasSubstr("dequantized to BF16: 1 weight (1 scale tensors dropped); "
                                  "config.json without quantization_config"));
  Result c = RunCli({"consolidate", dir, dir + "-bf16", "--dequantize", "torch.bfloat16"});
  EXPECT_EQ(c.code, kExitOk) << c.err;
  EXPECT_THAT(c.out, HasSubstr("(1 weight dequantized to BF16)"));
  auto out = CheckpointLayout::Scan(LocalFileSystem(), dir + "-bf16");
  ASSERT_TRUE(out.ok());
  ASSERT_NE(out->FindTensor("l.weight"), nullptr);
  EXPECT_EQ(out->FindTensor("l.weight")->dtype, DType::kBF16);
  EXPECT_EQ(out->FindTensor("l.weight_scale_inv"), nullptr);
  EXPECT_EQ(RunCli({"consolidate", dir, dir + "-x", "--block-size", "64"}).code, kExitUsage);
  EXPECT_EQ(RunCli({"consolidate", dir, dir + "-x", "--dequantize", ""}).code, kExitUsage);
  EXPECT_EQ(
      RunCli({"consolidate", dir, dir + "-x", "--dequantize", "bf16", "--cast-dtype", "f16"}).code,
      kExitUsage);

  // A scale whose shape does not fit its weight: a blocking verify problem naming both.
  testing::WriteFile(dir + "/model.safetensors",
                     testing::BuildSafetensors({{"l.weight", DType::kF8_E4M3, {256, 300}},
                                                {"l.weight_scale_inv", DType::kF32, {2, 2}}}));
  Result v = RunCli({"verify", dir});
  EXPECT_EQ(v.code, kExitProblems);
  EXPECT_THAT(v.out, HasSubstr("quantization: tensor \"l.weight\": scale \"l.weight_scale_inv\" "
                               "has shape [2, 2] but weight \"l.weight\" [256, 300] needs [2, 3]"));
}

}  // namespace
}  // namespace safeshard
