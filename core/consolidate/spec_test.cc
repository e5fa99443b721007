#include "core/consolidate/spec.h"

#include "core/testing/testing.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace safeshard {
namespace {

using ::testing::HasSubstr;

ConsolidateSpec Everything() {
  ConsolidateSpec s;
  s.max_shard_size = "500MiB";
  s.unmapped = "own-file";
  s.cast_dtype = "torch.bfloat16";
  s.key_map = {{"^model\\.", ""}, {"(.*)\\.gamma$", "\\1.weight"}};
  s.metadata = {{"run", "42"}};
  s.diffusers = true;
  s.threads = 3;
  s.verify = true;
  s.overwrite = true;
  s.expect_ranks = 8;
  s.strict = true;
  s.checksums = false;
  s.dequantize = "bfloat16";
  s.block_size = "128x64";
  return s;
}

TEST(ConsolidateSpecTest, RoundTripsThroughJson) {
  const ConsolidateSpec s = Everything();
  auto back = ParseConsolidateSpec(SerializeConsolidateSpec(s));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(*back == s);
  auto defaults = ParseConsolidateSpec("{}");
  ASSERT_TRUE(defaults.ok());
  EXPECT_TRUE(*defaults == ConsolidateSpec{});
}

TEST(ConsolidateSpecTest, StrictJsonNamesTheKey) {
  for (const auto& [text, want] : std::vector<std::pair<std::string, std::string>>{
           {R"({"max_shard_sise": "5GB"})", "unknown key \"max_shard_sise\""},
           {R"({"verify": "yes"})", "verify has the wrong type"},
           {R"({"threads": -1})", "threads has the wrong type"},
           {R"({"verify": true, "verify": false})", "\"verify\" given twice"},
           {R"({"key_map": [["(", "x"]]})", "key_map"},
           {R"([1])", "not a JSON object"},
       }) {
    auto r = ParseConsolidateSpec(text);
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(want)) << text;
  }
}

TEST(ConsolidateSpecTest, ContradictionsAndBadValuesAreRefusedNamingTheField) {
  auto check = [](ConsolidateSpec s, const std::string& want) {
    absl::Status st = ValidateConsolidateSpec(s);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << want;
    EXPECT_THAT(std::string(st.message()), HasSubstr(want));
  };
  ConsolidateSpec two;
  two.reference = "/m";
  two.max_shard_size = "5GB";
  check(two, "choose one of");
  ConsolidateSpec restore;
  restore.restore_dtypes = true;
  check(restore, "restore_dtypes: needs reference");
  ConsolidateSpec bytes;
  bytes.max_shard_size = "5";  // 5 bytes would write one file per tensor
  check(bytes, "has no unit");
  ConsolidateSpec fp8;
  fp8.cast_dtype = "f8_e4m3";
  check(fp8, "cast_dtype");
  ConsolidateSpec deq;
  deq.dequantize = "f8";
  check(deq, "dequantize");
  ConsolidateSpec mixed;
  mixed.dequantize = "bf16";
  mixed.cast_dtype = "f16";
  check(mixed, "cast_dtype: contradicts dequantize (F16 vs BF16)");
  ConsolidateSpec block;
  block.block_size = "128";
  check(block, "block_size: only applies with dequantize");
  ConsolidateSpec policy;
  policy.unmapped = "drop";
  check(policy, "unmapped");
  ConsolidateSpec escape;
  escape.key_map = {{"^w$", "\\0"}};
  check(escape, "key_map");
  ConsolidateSpec shard_marker;
  shard_marker.metadata = {{"DCP_SHARDING_INFO", "{}"}};
  check(shard_marker, "metadata");
  ConsolidateSpec ok;
  ok.max_shard_size = "5B";
  EXPECT_TRUE(ValidateConsolidateSpec(ok).ok());
}

TEST(ConsolidateSpecTest, CastDTypeAcceptsTorchAndNumpySpellings) {
  for (const char* n : {"bf16", "BF16", "bfloat16", "torch.bfloat16"})
    EXPECT_EQ(*ParseCastDType(n), DType::kBF16) << n;
  for (const char* n : {"f16", "half", "float16", "torch.float16"})
    EXPECT_EQ(*ParseCastDType(n), DType::kF16) << n;
  for (const char* n : {"f32", "float", "float32", "torch.float32"})
    EXPECT_EQ(*ParseCastDType(n), DType::kF32) << n;
  for (const char* n : {"f64", "double", "float64"})
    EXPECT_EQ(*ParseCastDType(n), DType::kF64) << n;
  EXPECT_FALSE(ParseCastDType("int8").ok());
}

TEST(ConsolidateSpecTest, ResolvesIntoOptionsOwningTheKeyMap) {
  auto r = ResolveConsolidateSpec(LocalFileSystem(), Everything());
  ASSERT_TRUE(r.ok()) << r.status();
  const ConsolidateOptions& o = (*r)->options;
  EXPECT_EQ(o.max_shard_size, 500u << 20);
  EXPECT_EQ(o.unmapped, UnmappedPolicy::kOwnFile);
  EXPECT_EQ(o.cast_dtype, DType::kBF16);
  ASSERT_NE(o.key_map, nullptr);
  EXPECT_EQ(o.key_map->Apply("model.ln.gamma"), "ln.gamma");
  EXPECT_EQ(o.metadata.at("run"), "42");
  EXPECT_TRUE(o.diffusers_index && o.verify && o.overwrite && o.strict);
  EXPECT_FALSE(o.checksums);
  EXPECT_EQ(o.threads, 3);
  EXPECT_EQ(o.expect_ranks, 8);
  EXPECT_EQ(o.dequantize, DType::kBF16);
  EXPECT_EQ(o.block_size, (quant::BlockSize{128, 64}));
  // A mapping file that is not there is an error naming it, never "one file".
  ConsolidateSpec missing;
  missing.mapping_file = testing::NewTempDir() + "/nope.json";
  auto m = ResolveConsolidateSpec(LocalFileSystem(), missing);
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("nope.json"));
}

}  // namespace
}  // namespace safeshard
