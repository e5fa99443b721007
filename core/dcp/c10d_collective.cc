#include "core/dcp/c10d_collective.h"

#include <torch/torch.h>
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cstdlib>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace safeshard {
namespace {

absl::Status FromException(const std::exception& e, int rank, absl::string_view what) {
  std::string msg = e.what();
  size_t nl = msg.find('\n');  // c10::Error appends a backtrace; keep the first line
  if (nl != std::string::npos) msg.resize(nl);
  std::string text = absl::StrCat("rank ", rank, ": ", what, ": ", msg);
  if (absl::StrContains(msg, "imed out") || absl::StrContains(msg, "imeout")) {
    return absl::DeadlineExceededError(
        absl::StrCat(text, " (another rank failed, hung or never started)"));
  }
  return absl::AbortedError(text);
}

class C10dCollective : public Collective {
 public:
  C10dCollective(c10::intrusive_ptr<c10d::ProcessGroupGloo> pg, int rank, int world)
      : pg_(std::move(pg)), rank_(rank), world_(world) {}
  int rank() const override { return rank_; }
  int world_size() const override { return world_; }

  absl::StatusOr<std::vector<std::string>> AllGather(const std::string& mine) override {
    try {
      // Lengths first, then the bytes padded to the longest.
      std::vector<at::Tensor> len_in = {
          torch::tensor({static_cast<int64_t>(mine.size())}, torch::kInt64)};
      std::vector<std::vector<at::Tensor>> len_out(1);
      for (int r = 0; r < world_; ++r) len_out[0].push_back(torch::zeros({1}, torch::kInt64));
      pg_->allgather(len_out, len_in)->wait();
      int64_t max_len = 1;
      std::vector<int64_t> lens(world_);
      for (int r = 0; r < world_; ++r) {
        lens[r] = len_out[0][r].item<int64_t>();
        max_len = std::max(max_len, lens[r]);
      }
      at::Tensor buf = torch::zeros({max_len}, torch::kUInt8);
      std::memcpy(buf.data_ptr(), mine.data(), mine.size());
      std::vector<at::Tensor> in = {buf};
      std::vector<std::vector<at::Tensor>> out(1);
      for (int r = 0; r < world_; ++r) out[0].push_back(torch::zeros({max_len}, torch::kUInt8));
      pg_->allgather(out, in)->wait();
      std::vector<std::string> result(world_);
      for (int r = 0; r < world_; ++r) {
        result[r].assign(static_cast<const char*>(out[0][r].data_ptr()), lens[r]);
      }
      return result;
    } catch (const std::exception& e) {
      return FromException(e, rank_, "all-gather");
    }
  }

  absl::StatusOr<std::string> Broadcast(const std::string& data, int root) override {
    absl::StatusOr<std::vector<std::string>> all = AllGather(rank_ == root ? data : "");
    if (!all.ok()) return all.status();
    return (*all)[root];
  }

  absl::Status Barrier() override {
    try {
      pg_->barrier()->wait();
      return absl::OkStatus();
    } catch (const std::exception& e) {
      return FromException(e, rank_, "barrier");
    }
  }

 private:
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg_;
  int rank_, world_;
};

}  // namespace

absl::StatusOr<GroupOptions> GroupOptionsFromEnv() {
  GroupOptions o;
  auto get = [](const char* k) -> std::string {
    const char* v = std::getenv(k);
    return v ? v : "";
  };
  if (!absl::SimpleAtoi(get("RANK"), &o.rank) ||
      !absl::SimpleAtoi(get("WORLD_SIZE"), &o.world_size)) {
    return absl::InvalidArgumentError("RANK and WORLD_SIZE must be set (as torchrun does)");
  }
  o.master_addr = get("MASTER_ADDR");
  if (o.master_addr.empty()) o.master_addr = "127.0.0.1";
  std::string port = get("MASTER_PORT");
  if (!port.empty() && !absl::SimpleAtoi(port, &o.master_port)) {
    return absl::InvalidArgumentError(absl::StrCat("MASTER_PORT \"", port, "\" is not a port"));
  }
  return o;
}

absl::StatusOr<std::unique_ptr<Collective>> NewC10dCollective(const GroupOptions& o) {
  if (o.world_size < 1 || o.rank < 0 || o.rank >= o.world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", o.rank, " is not in a group of ", o.world_size));
  }
  const auto timeout = std::chrono::milliseconds(absl::ToInt64Milliseconds(o.timeout));
  try {
    c10::intrusive_ptr<c10d::Store> store;
    if (!o.file_store.empty()) {
      store = c10::make_intrusive<c10d::FileStore>(o.file_store, o.world_size);
    } else {
      c10d::TCPStoreOptions so;
      so.port = static_cast<uint16_t>(o.master_port);
      so.isServer = o.rank == 0;
      so.numWorkers = o.world_size;
      so.timeout = timeout;
      store = c10::make_intrusive<c10d::TCPStore>(o.master_addr, so);
    }
    store->setTimeout(timeout);
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    if (!o.master_addr.empty() && o.master_addr != "127.0.0.1" && o.master_addr != "localhost") {
      opts->devices[0] = c10d::ProcessGroupGloo::createDefaultDevice();
    }
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, o.rank, o.world_size, opts);
    return std::unique_ptr<Collective>(new C10dCollective(pg, o.rank, o.world_size));
  } catch (const std::exception& e) {
    return FromException(e, o.rank, "joining the process group");
  }
}

}  // namespace safeshard
