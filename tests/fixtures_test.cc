// Runs the real files in ../shared/fixtures (directory from $SAFESHARD_FIXTURES; .ci/run sets it
// and SAFESHARD_REQUIRE_FIXTURES=1). Valid files must inspect and verify clean with the
// manifest's tensor counts and dtypes; malformed ones must fail with the right named error.
#include <map>
#include <optional>
#include <sstream>

#include "cli/cli.h"
#include "core/consolidate/consolidate.h"
#include "core/format/header.h"
#include "core/format/index_json.h"
#include "core/io/filesystem.h"
#include "core/layout/layout.h"
#include "core/testing/testing.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace safeshard {
namespace {

using ::testing::HasSubstr;

nlohmann::json Manifest(const std::string& dir) {
  absl::StatusOr<std::string> text = LocalFileSystem().ReadAll(JoinPath(dir, "manifest.json"));
  EXPECT_TRUE(text.ok()) << text.status();
  return nlohmann::json::parse(text.ok() ? *text : "[]");
}

TEST(FixturesTest, ValidFilesScanCleanWithManifestCounts) {
  SAFESHARD_REQUIRE_FIXTURES_OR_SKIP(dir);
  int checked = 0;
  for (const auto& e : Manifest(dir)) {
    if (e["kind"] != "safetensors") continue;
    std::string path = JoinPath(dir, e["local"].get<std::string>());
    SCOPED_TRACE(path);
    absl::StatusOr<CheckpointLayout> ck = CheckpointLayout::Scan(LocalFileSystem(), path);
    ASSERT_TRUE(ck.ok()) << ck.status();
    for (const Problem& p : ck->problems()) ADD_FAILURE() << p.ToString();
    EXPECT_EQ(ck->tensors().size(), e["ntensors"].get<size_t>());
    std::map<std::string, int> dtypes;
    for (const TensorLayout& t : ck->tensors()) dtypes[std::string(DTypeName(t.dtype))]++;
    EXPECT_EQ(nlohmann::json(dtypes), e["dtypes"]);
    ASSERT_EQ(ck->files().size(), 1u);
    const FileInfo& f = ck->files()[0];
    EXPECT_EQ(f.header->header_size, e["header_len"].get<uint64_t>());
    EXPECT_EQ(f.header->has_metadata, e["has_metadata"].get<bool>());
    EXPECT_EQ(f.size, e["size"].get<uint64_t>());

    std::ostringstream out, err;
    EXPECT_EQ(RunSafeshard({"safeshard", "verify", path}, out, err), kExitOk) << out.str();
    std::ostringstream out2, err2;
    EXPECT_EQ(RunSafeshard({"safeshard", "inspect", path}, out2, err2), kExitOk) << err2.str();
    ++checked;
  }
  EXPECT_GE(checked, 30);
}

// Every real writer's header (Rust, Python, C++, Java, Julia, C#, candle, burn, ...) is read by
// the header parser's fast path, and what it reads equals the strict DOM parser's result.
TEST(FixturesTest, RealHeadersTakeTheFastPathAndAgreeWithTheDomParser) {
  SAFESHARD_REQUIRE_FIXTURES_OR_SKIP(dir);
  int checked = 0;
  for (const auto& e : Manifest(dir)) {
    if (e["kind"] != "safetensors") continue;
    const std::string path = JoinPath(dir, e["local"].get<std::string>());
    SCOPED_TRACE(path);
    absl::StatusOr<std::string> bytes = LocalFileSystem().ReadAll(path);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    absl::StatusOr<uint64_t> n = ParseHeaderLength(*bytes, bytes->size(), path);
    ASSERT_TRUE(n.ok()) << n.status();
    const absl::string_view json = absl::string_view(*bytes).substr(8, *n);
    absl::StatusOr<Header> dom = internal::ParseHeaderWithDom(json, bytes->size(), path);
    ASSERT_TRUE(dom.ok()) << dom.status();
    std::optional<Header> fast = internal::ParseHeaderFast(json, bytes->size());
    ASSERT_TRUE(fast.has_value()) << "the fast path declined a real writer's header";
    testing::ExpectSameHeader(*fast, *dom);
    ++checked;
  }
  EXPECT_GE(checked, 30);
}

TEST(FixturesTest, MalformedFilesFailWithTheRightError) {
  SAFESHARD_REQUIRE_FIXTURES_OR_SKIP(dir);
  const std::map<std::string, HeaderError> expected = {
      {"safetensors-cpp/safetensors_abuse_attempt_1.safetensors",
       HeaderError::kHeaderLengthExceedsFile},
      {"safetensorsharp/duplicate_keys_in_header.safetensors", HeaderError::kDuplicateKey},
      {"safetensorsharp/header_size_too_big.safetensors", HeaderError::kHeaderLengthExceedsFile},
      {"safetensorsharp/zero_len_file.safetensors", HeaderError::kFileTooSmall},
  };
  int checked = 0;
  for (const auto& e : Manifest(dir)) {
    if (e["kind"] != "malformed") continue;
    std::string local = e["local"];
    SCOPED_TRACE(local);
    auto want = expected.find(local);
    ASSERT_NE(want, expected.end()) << "new malformed fixture without an expectation";
    std::string path = JoinPath(dir, local);
    absl::StatusOr<Header> h = ReadHeader(LocalFileSystem(), path);
    ASSERT_FALSE(h.ok());
    EXPECT_EQ(HeaderErrorOf(h.status()), want->second) << h.status();
    EXPECT_THAT(std::string(h.status().message()), HasSubstr(path));
    std::ostringstream out, err;
    EXPECT_EQ(RunSafeshard({"safeshard", "verify", path}, out, err), kExitProblems);
    EXPECT_THAT(out.str(), HasSubstr("invalid_file: "));
    ++checked;
  }
  EXPECT_EQ(checked, 4);
}

TEST(FixturesTest, IndexJsonFilesParse) {
  SAFESHARD_REQUIRE_FIXTURES_OR_SKIP(dir);
  int checked = 0;
  for (const auto& e : Manifest(dir)) {
    if (e["kind"] != "index") continue;
    std::string path = JoinPath(dir, e["local"].get<std::string>());
    SCOPED_TRACE(path);
    absl::StatusOr<std::string> text = LocalFileSystem().ReadAll(path);
    ASSERT_TRUE(text.ok());
    absl::StatusOr<IndexJson> idx = ParseIndexJson(*text, path);
    ASSERT_TRUE(idx.ok()) << idx.status();
    EXPECT_EQ(idx->weight_map.size(), e["ntensors"].get<size_t>());
    EXPECT_TRUE(idx->total_size.has_value());
    ++checked;
  }
  EXPECT_EQ(checked, 3);
}

std::string TensorBytes(const CheckpointLayout& ck, const TensorLayout& t) {
  EXPECT_EQ(t.chunks.size(), 1u);
  const Chunk& c = t.chunks[0];
  auto f = LocalFileSystem().OpenRead(JoinPath(ck.root(), ck.files()[c.file].name));
  std::string out(c.end - c.begin, '\0');
  EXPECT_TRUE((*f)->ReadAt(c.begin, out.size(), out.data()).ok());
  return out;
}

TEST(FixturesTest, ShardedSetVerifiesAgainstIndexAndMatchesItsTwin) {
  SAFESHARD_REQUIRE_FIXTURES_OR_SKIP(dir);
  absl::StatusOr<CheckpointLayout> sharded =
      CheckpointLayout::Scan(LocalFileSystem(), JoinPath(dir, "safetensors-jl/sharded"));
  ASSERT_TRUE(sharded.ok()) << sharded.status();
  EXPECT_EQ(sharded->kind(), CheckpointKind::kHfSharded);
  EXPECT_EQ(sharded->index_file(), "model.safetensors.index.json");
  for (const Problem& p : sharded->problems()) ADD_FAILURE() << p.ToString();
  EXPECT_EQ(sharded->files().size(), 6u);
  EXPECT_EQ(sharded->index()->total_size, sharded->total_tensor_bytes());

  absl::StatusOr<CheckpointLayout> twin = CheckpointLayout::Scan(
      LocalFileSystem(), JoinPath(dir, "safetensors-jl/non_sharded/model.safetensors"));
  ASSERT_TRUE(twin.ok());
  ASSERT_EQ(twin->tensors().size(), sharded->tensors().size());
  for (size_t i = 0; i < twin->tensors().size(); ++i) {
    const TensorLayout& a = twin->tensors()[i];
    const TensorLayout& b = sharded->tensors()[i];
    SCOPED_TRACE(a.name);
    EXPECT_EQ(a.name, b.name);
    EXPECT_EQ(a.dtype, b.dtype);
    EXPECT_EQ(a.shape, b.shape);
    EXPECT_EQ(TensorBytes(*twin, a), TensorBytes(*sharded, b));
  }
  std::ostringstream out, err;
  EXPECT_EQ(
      RunSafeshard({"safeshard", "verify", JoinPath(dir, "safetensors-jl/sharded")}, out, err),
      kExitOk)
      << out.str();
}

TEST(FixturesTest, ConsolidatingTheHfShardedSetYieldsItsTwin) {
  SAFESHARD_REQUIRE_FIXTURES_OR_SKIP(dir);
  std::string out = testing::NewTempDir() + "/one";
  ConsolidateOptions o;
  o.verify = true;
  absl::StatusOr<ConsolidateResult> r =
      Consolidate(LocalFileSystem(), JoinPath(dir, "safetensors-jl/sharded"), out, o);
  ASSERT_TRUE(r.ok()) << r.status();
  absl::StatusOr<CheckpointLayout> got = CheckpointLayout::Scan(LocalFileSystem(), out);
  absl::StatusOr<CheckpointLayout> twin = CheckpointLayout::Scan(
      LocalFileSystem(), JoinPath(dir, "safetensors-jl/non_sharded/model.safetensors"));
  ASSERT_TRUE(got.ok() && twin.ok());
  EXPECT_TRUE(got->problems().empty());
  EXPECT_EQ(got->files().size(), 1u);
  ASSERT_EQ(got->tensors().size(), twin->tensors().size());
  for (size_t i = 0; i < twin->tensors().size(); ++i) {
    const TensorLayout& a = twin->tensors()[i];
    const TensorLayout& b = got->tensors()[i];
    SCOPED_TRACE(a.name);
    EXPECT_EQ(a.name, b.name);
    EXPECT_EQ(a.dtype, b.dtype);
    EXPECT_EQ(a.shape, b.shape);
    EXPECT_EQ(TensorBytes(*twin, a), TensorBytes(*got, b));
  }
}

}  // namespace
}  // namespace safeshard
