#include "core/consolidate/tcp_collective.h"

#include <thread>

#include "core/consolidate/consolidate.h"
#include "core/example/example.h"
#include "core/testing/testing.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace safeshard {
namespace {

using ::testing::HasSubstr;

// Runs `fn(rank, collective)` on `n` threads that meet over TCP on a free port.
void RunGroup(int n,
              const std::function<void(int, absl::StatusOr<std::unique_ptr<Collective>>)>& fn,
              absl::Duration timeout = absl::Seconds(20), const std::string& key = "k") {
  const int port = testing::FreePort();
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      TcpGroupOptions o{.rank = r,
                        .world_size = n,
                        .host = "127.0.0.1",
                        .port = port,
                        .group_key = key,
                        .timeout = timeout};
      fn(r, NewTcpCollective(o));
    });
  }
  for (auto& t : threads) t.join();
}

TEST(TcpCollectiveTest, GathersBroadcastsAndSharesErrors) {
  RunGroup(3, [](int r, absl::StatusOr<std::unique_ptr<Collective>> c) {
    ASSERT_TRUE(c.ok()) << c.status();
    auto all = (*c)->AllGather(std::string(static_cast<size_t>(r + 1), 'x'));
    ASSERT_TRUE(all.ok()) << all.status();
    EXPECT_EQ(*all, (std::vector<std::string>{"x", "xx", "xxx"}));
    auto b = (*c)->Broadcast(r == 2 ? "from two" : "", 2);
    ASSERT_TRUE(b.ok());
    EXPECT_EQ(*b, "from two");
    absl::Status s =
        AllGatherStatus(**c, r == 1 ? absl::DataLossError("disk on fire") : absl::OkStatus());
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
    EXPECT_EQ(s.message(), "rank 1: disk on fire");
    EXPECT_TRUE((*c)->Barrier().ok());
  });
}

TEST(TcpCollectiveTest, ARankThatLeavesFailsTheOthersWithoutHanging) {
  RunGroup(3, [](int r, absl::StatusOr<std::unique_ptr<Collective>> c) {
    ASSERT_TRUE(c.ok()) << c.status();
    if (r == 2) return;  // leaves: its connection closes
    auto all = (*c)->AllGather("x");
    ASSERT_FALSE(all.ok());
    EXPECT_THAT(std::string(all.status().message()),
                r == 0 ? HasSubstr("rank 2 closed its connection") : HasSubstr("rank 0"));
  });
  // A rank that never comes: rank 0 gives up after the timeout.
  RunGroup(
      1, [](int, absl::StatusOr<std::unique_ptr<Collective>> c) { EXPECT_TRUE(c.ok()); },
      absl::Seconds(1));
  const int port = testing::FreePort();
  TcpGroupOptions o{.rank = 0,
                    .world_size = 2,
                    .host = "127.0.0.1",
                    .port = port,
                    .group_key = "k",
                    .timeout = absl::Milliseconds(300)};
  auto alone = NewTcpCollective(o);
  ASSERT_FALSE(alone.ok());
  EXPECT_THAT(std::string(alone.status().message()), HasSubstr("only 1 of 2 ranks joined"));
}

TEST(TcpCollectiveTest, ThreeRanksConsolidateAsOne) {
  const std::vector<ExampleTensor> model = {{"w", DType::kF32, {30, 8}, Sharding::kRow},
                                            {"b", DType::kBF16, {6, 10}, Sharding::kColumn}};
  const std::string in = testing::NewTempDir() + "/in";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), in, model, {.ranks = 4}).ok());
  const std::string one = testing::NewTempDir() + "/one", three = testing::NewTempDir() + "/three";
  ASSERT_TRUE(Consolidate(LocalFileSystem(), in, one, {}).ok());
  RunGroup(3, [&](int, absl::StatusOr<std::unique_ptr<Collective>> c) {
    ASSERT_TRUE(c.ok()) << c.status();
    auto r = Consolidate(LocalFileSystem(), in, three, {}, c->get());
    EXPECT_TRUE(r.ok()) << r.status();
  });
  EXPECT_EQ(testing::ReadFile(one + "/model-00001-of-00001.safetensors"),
            testing::ReadFile(three + "/model-00001-of-00001.safetensors"));
}

}  // namespace
}  // namespace safeshard
