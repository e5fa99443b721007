#include "daemon/config.h"

#include "core/testing/testing.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace safeshard::daemon {
namespace {

using ::testing::HasSubstr;

TEST(ConfigTest, ParsesEveryKey) {
  auto c = ParseConfig(R"({
    "watch_roots": ["/a", "/b"], "output_template": "{root}/hf/{name}",
    "output_files": {"mode": "max_shard_size", "max_shard_size": "5GB"},
    "dtype": {"cast": "bf16"}, "key_map": [["^model\\.", ""]],
    "max_concurrent_jobs": 3, "threads_per_job": 4, "quiet_period_seconds": 12.5,
    "rescan_interval_seconds": 30, "expected_ranks": 8,
    "retention": {"mode": "keep_last", "keep_last": 2},
    "api": {"address": "127.0.0.1", "port": 9000, "token_file": "/t"},
    "state_db": "/s.db", "max_attempts": 7})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->watch_roots.size(), 2u);
  EXPECT_EQ(c->max_shard_size, "5GB");
  EXPECT_EQ(c->cast_dtype, DType::kBF16);
  EXPECT_EQ(c->key_map.size(), 1u);
  EXPECT_EQ(c->keep_last, 2);
  EXPECT_EQ(c->api_port, 9000);
  EXPECT_EQ(c->quiet_period_seconds, 12.5);
}

TEST(ConfigTest, RejectsUnknownKeysNamingThem) {
  auto c = ParseConfig(R"({"watch_roots": [], "quiet_period": 3})");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("\"quiet_period\""));
  auto n = ParseConfig(R"({"api": {"port": 1, "tokenfile": "x"}})");
  ASSERT_FALSE(n.ok());
  EXPECT_THAT(std::string(n.status().message()), HasSubstr("api.tokenfile"));
}

TEST(ConfigTest, RejectsBadValues) {
  for (const char* bad :
       {R"({"max_concurrent_jobs": 0})", R"({"output_files": {"mode": "x"}})",
        R"({"output_files": {"mode": "reference"}})", R"({"retention": "sometimes"})",
        R"({"dtype": {"cast": "f128"}})", R"({"watch_roots": "/a"})", R"({"api": {"port": 70000}})",
        R"({"key_map": [["(", ""]]})", "[]", "{", R"({"a": 1, "a": 2})"}) {
    EXPECT_FALSE(ParseConfig(bad).ok()) << bad;
  }
}

TEST(ConfigTest, DefaultsAndHomeExpansion) {
  auto c = ParseConfig("{}");
  ASSERT_TRUE(c.ok());
  ResolvePaths(&*c);
  EXPECT_EQ(c->files_mode, "single");
  EXPECT_NE(c->state_db.find("safeshardd.db"), std::string::npos);
  EXPECT_EQ(c->state_db.find("~"), std::string::npos);
}

TEST(ConfigTest, OptionsThatWouldBeIgnoredByJobsAreRefusedUpFront) {
  // An unparseable size used to pass and make every job write a single file.
  auto size =
      ParseConfig(R"({"output_files": {"mode": "max_shard_size", "max_shard_size": "5XB"}})");
  ASSERT_FALSE(size.ok());
  EXPECT_THAT(std::string(size.status().message()), HasSubstr("max_shard_size"));
  Config c;
  c.files_mode = "max_shard_size";
  c.max_shard_size = "lots";
  EXPECT_FALSE(ValidateConfig(c).ok());  // flags go through the same checks
  c.max_shard_size = "500MiB";
  EXPECT_TRUE(ValidateConfig(c).ok());
  c.expected_ranks = -2;
  EXPECT_FALSE(ValidateConfig(c).ok());
  auto strict = ParseConfig(R"({"strict": true, "output_root": "/pub"})");
  ASSERT_TRUE(strict.ok()) << strict.status();
  EXPECT_TRUE(strict->strict);
  EXPECT_EQ(strict->output_root, "/pub");
}

TEST(ConfigTest, JobsRunTheSameTypedSpecAsTheCliValidatedAtLoad) {
  auto c = ParseConfig(R"({"output_files": {"mode": "max_shard_size", "max_shard_size": "2GiB"},
                           "dtype": {"cast": "torch.bfloat16"}, "threads_per_job": 3,
                           "expected_ranks": 4, "strict": true, "key_map": [["^a", "b"]]})");
  ASSERT_TRUE(c.ok()) << c.status();
  ConsolidateSpec s = c->ConsolidateSpecFor("/run");
  EXPECT_EQ(s.max_shard_size, "2GiB");
  EXPECT_EQ(*ParseCastDType(s.cast_dtype), DType::kBF16);
  EXPECT_EQ(s.threads, 3);
  EXPECT_EQ(s.expect_ranks, 4);
  EXPECT_TRUE(s.strict && s.verify && s.overwrite && s.checksums);
  EXPECT_EQ(s.key_map.size(), 1u);
  EXPECT_TRUE(ValidateConsolidateSpec(s).ok());
  // What a job would silently get wrong is refused at load, by the same validator.
  for (const auto& [text, want] : std::vector<std::pair<std::string, std::string>>{
           {R"({"output_files": {"mode": "max_shard_size", "max_shard_size": "5"}})",
            "has no unit"},
           {R"({"dtype": {"restore_from_reference": true}})", "restore_from_reference"},
           {R"({"key_map": [["^w$", "\\0"]]})", "key_map"},
       }) {
    auto bad = ParseConfig(text);
    ASSERT_FALSE(bad.ok()) << text;
    EXPECT_THAT(std::string(bad.status().message()), HasSubstr(want)) << text;
  }
}

TEST(ConfigTest, ExpectedRanksPerRoot) {
  auto c = ParseConfig(R"({"watch_roots": ["/a", "/a/b", "/c"], "expected_ranks": 2,
                           "expected_ranks_by_root": {"/a": 8, "/a/b": 64}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->ExpectedRanksFor("/a/run"), 8);
  EXPECT_EQ(c->ExpectedRanksFor("/a/b/run"), 64);  // the deepest root wins
  EXPECT_EQ(c->ExpectedRanksFor("/ab/run"), 2);    // not under "/a"
  EXPECT_EQ(c->ExpectedRanksFor("/c/x"), 2);
  EXPECT_FALSE(ParseConfig(R"({"expected_ranks_by_root": {"/a": 0}})").ok());
  EXPECT_FALSE(ParseConfig(R"({"expected_ranks_by_root": {"/a": "8"}})").ok());
}

TEST(ConfigTest, DequantizeForEveryRootOrPerRoot) {
  auto c = ParseConfig(R"({"watch_roots": ["/a", "/a/q", "/c"],
                           "dtype": {"dequantize": "bf16", "block_size": "128x64"},
                           "dequantize_by_root": {"/a": "", "/a/q": "f32"}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->ConsolidateSpecFor("/c/run").dequantize, "bf16");
  EXPECT_EQ(c->ConsolidateSpecFor("/c/run").block_size, "128x64");
  EXPECT_EQ(c->ConsolidateSpecFor("/a/run").dequantize, "");  // turned off under /a
  EXPECT_EQ(c->ConsolidateSpecFor("/a/run").block_size, "");
  EXPECT_EQ(c->ConsolidateSpecFor("/a/q/run").dequantize, "f32");
  auto bad = ParseConfig(R"({"dequantize_by_root": {"/a": "int8"}})");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("dequantize_by_root[\"/a\"]"));
  EXPECT_FALSE(ParseConfig(R"({"dtype": {"dequantize": "f8"}})").ok());
  EXPECT_FALSE(ParseConfig(R"({"dtype": {"dequantize": "bf16", "block_size": "0"}})").ok());
}

TEST(ConfigTest, ThePackagedConfigParsesAndTheServiceStateDirectoryHoldsJournalAndToken) {
  auto c = ParseConfig(testing::ReadFile("daemon/safeshardd.json"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->token_group_readable);
  setenv("STATE_DIRECTORY", "/var/lib/safeshard", 1);
  ResolvePaths(&*c);
  unsetenv("STATE_DIRECTORY");
  EXPECT_EQ(c->token_file, "/var/lib/safeshard/token");
  EXPECT_EQ(c->state_db, "/var/lib/safeshard/safeshardd.db");
  Config home;
  ResolvePaths(&home);
  EXPECT_NE(home.token_file.find(".config/safeshard/token"), std::string::npos);
}

}  // namespace
}  // namespace safeshard::daemon
