// The HF storage writer and reader over HTTP against a real nginx (WebDAV): a 2-rank sharded save
// to an http:// URL, then loads into other shardings that fetch only the rows they need.
#include <filesystem>
#include <thread>

#include "absl/strings/match.h"
#include "core/consolidate/run_ranks.h"
#include "core/dcp/hf_storage_reader.h"
#include "core/dcp/hf_storage_writer.h"
#include "core/io/filesystem.h"
#include "core/io/http_filesystem.h"
#include "core/layout/layout.h"
#include "core/testing/nginx.h"
#include "core/testing/testing.h"
#include "gtest/gtest.h"

namespace safeshard {
namespace {

using testing::RunRanks;

constexpr char kToken[] = "dcp-remote-token";

TEST(HfRemoteTest, SaveOverWebDavThenLoadOnlyTheNeededRanges) {
  const std::string root = testing::NewTempDir() + "/www";
  std::filesystem::create_directories(root);
  auto server = testing::NginxServer::Start(root, kToken);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string url = (*server)->url() + "/runs/step-7";

  // [4096, 256] F32 (4 MiB) row-sharded over 2 ranks, a column-sharded BF16 tensor, a scalar.
  at::Tensor w = torch::randn({4096, 256});
  at::Tensor v = torch::randn({64, 96}).to(torch::kBFloat16);
  at::Tensor step = torch::tensor(7, torch::kInt64);
  SaveOptions o;
  o.token = kToken;
  auto st = RunRanks(2, [&](int r, Collective& c) {
    StateDict sd = {
        {"w", ShardedTensor{w.slice(0, 2048 * r, 2048 * (r + 1)), {4096, 256}, {2048 * r, 0}}},
        {"v", ShardedTensor{v.slice(1, 48 * r, 48 * (r + 1)), {64, 96}, {0, 48 * r}}},
        {"step", step}};
    return SaveSharded(sd, url, c, o).status();
  });
  for (const auto& s : st) ASSERT_TRUE(s.ok()) << s;
  // Published by MOVE: the final names, the manifest, no temporary file.
  auto local = CheckpointLayout::Scan(LocalFileSystem(), root + "/runs/step-7");
  ASSERT_TRUE(local.ok()) << local.status();
  EXPECT_TRUE(local->problems().empty());
  EXPECT_EQ(local->files().size(), 2u);
  EXPECT_TRUE(std::filesystem::exists(root + "/runs/step-7/safeshard.complete.json"));
  for (const auto& e : std::filesystem::directory_iterator(root + "/runs/step-7")) {
    EXPECT_FALSE(absl::StrContains(e.path().filename().string(), ".tmp")) << e.path();
  }

  // Load rows [1000, 3000) of w (crossing the two ranks' files) and all of v over HTTP.
  HfStorageReader reader(url, nullptr, 2, nullptr, kToken);
  std::vector<LoadRequest> reqs = {{"w", torch::empty({2000, 256}), {1000, 0}},
                                   {"v", torch::empty({64, 96}, torch::kBFloat16), {}},
                                   {"step", torch::empty({}, torch::kInt64), {}}};
  ASSERT_TRUE(reader.ReadMetadata().ok());
  (*server)->ClearAccessLog();
  LoadStats stats;
  absl::Status s = reader.ReadData(reqs, &stats);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_TRUE(torch::equal(reqs[0].dest, w.slice(0, 1000, 3000)));
  EXPECT_TRUE(torch::equal(reqs[1].dest, v));
  EXPECT_EQ(reqs[2].dest.item<int64_t>(), 7);
  // The needed bytes: 2000 rows of w, all of v, the scalar (ranges less than 256 KiB apart are
  // coalesced into one request, which then also carries the bytes between them).
  const uint64_t needed = 2000 * 256 * 4 + 64 * 96 * 2 + 8;
  EXPECT_EQ(stats.bytes_copied, needed);
  EXPECT_EQ(stats.files_mapped, 0);
  // Served: the ranges fetched, plus the first 64 bytes of each of the 2 files, fetched when
  // the reader opens them (that GET replaces a HEAD: it tells the size).
  uint64_t served = 0;
  int opens = 0;
  for (const auto& e : (*server)->AccessLog()) {
    if (e.method == "GET" && !absl::EndsWith(e.path, "/")) {  // not the directory listing
      EXPECT_FALSE(e.range.empty()) << e.path;
      served += e.bytes;
      opens += e.range == "bytes=0-63";
    }
  }
  EXPECT_EQ(opens, 2);
  EXPECT_EQ(served, stats.bytes_fetched + 2 * HttpFileSystem::kOpenPrefixBytes);
  // Within each file the fetched ranges hold only what was asked plus the bytes between
  // coalesced neighbours (here: tensors adjacent in the files), far below the files' size.
  uint64_t file_bytes = 0;
  for (const FileInfo& f : local->files()) file_bytes += f.size;
  EXPECT_LE(served, needed + 2 * 256 * 1024);
  EXPECT_LT(served, file_bytes * 3 / 4);

  // A wrong token: a clear 401 naming the URL, not the token.
  HfStorageReader bad(url, nullptr, 1, nullptr, "not-the-token-123");
  absl::StatusOr<const CheckpointLayout*> m = bad.ReadMetadata();
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(absl::StrContains(m.status().message(), (*server)->url()));
  EXPECT_FALSE(absl::StrContains(m.status().message(), "not-the-token-123"));
}

}  // namespace
}  // namespace safeshard
