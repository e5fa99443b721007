#include <memory>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "core/consolidate/collective.h"

namespace safeshard {
namespace {

// Generation-counted rendezvous: each collective call contributes a value and waits until all
// ranks of the same generation have contributed.
struct Shared {
  explicit Shared(int n) : n(n), values(n) {}
  absl::Mutex mu;
  const int n;
  uint64_t generation = 0;
  int arrived = 0;
  std::vector<std::string> values;
  std::vector<std::string> result;  // published for `generation`
};

class InProcess : public Collective {
 public:
  InProcess(std::shared_ptr<Shared> s, int rank, absl::Duration timeout)
      : s_(std::move(s)), rank_(rank), timeout_(timeout) {}
  int rank() const override { return rank_; }
  int world_size() const override { return s_->n; }

  absl::StatusOr<std::vector<std::string>> AllGather(const std::string& mine) override {
    absl::MutexLock l(&s_->mu);
    const uint64_t gen = s_->generation;
    s_->values[rank_] = mine;
    if (++s_->arrived == s_->n) {
      s_->result = s_->values;
      s_->arrived = 0;
      ++s_->generation;
      return s_->result;
    }
    auto done = [&] { return s_->generation != gen; };
    if (!s_->mu.AwaitWithTimeout(absl::Condition(&done), timeout_)) {
      return absl::DeadlineExceededError(
          absl::StrCat("rank ", rank_, ": timed out after ", absl::FormatDuration(timeout_),
                       " waiting for the other ranks (a rank failed or hung)"));
    }
    return s_->result;
  }

  absl::StatusOr<std::string> Broadcast(const std::string& data, int root) override {
    absl::StatusOr<std::vector<std::string>> all = AllGather(rank_ == root ? data : "");
    if (!all.ok()) return all.status();
    return (*all)[root];
  }

  absl::Status Barrier() override { return AllGather("").status(); }

 private:
  std::shared_ptr<Shared> s_;
  int rank_;
  absl::Duration timeout_;
};

class Single : public Collective {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  absl::StatusOr<std::vector<std::string>> AllGather(const std::string& mine) override {
    return std::vector<std::string>{mine};
  }
  absl::StatusOr<std::string> Broadcast(const std::string& data, int) override { return data; }
  absl::Status Barrier() override { return absl::OkStatus(); }
};

}  // namespace

std::vector<std::unique_ptr<Collective>> NewInProcessGroup(int n, absl::Duration timeout) {
  auto shared = std::make_shared<Shared>(n);
  std::vector<std::unique_ptr<Collective>> out;
  for (int r = 0; r < n; ++r) out.push_back(std::make_unique<InProcess>(shared, r, timeout));
  return out;
}

std::unique_ptr<Collective> NewSingleRank() {
  return std::make_unique<Single>();
}

absl::Status AllGatherStatus(Collective& c, const absl::Status& mine) {
  absl::StatusOr<std::vector<std::string>> all = c.AllGather(
      mine.ok() ? "" : absl::StrCat(static_cast<int>(mine.code()), "|", mine.message()));
  if (!all.ok()) return all.status();
  std::vector<std::string> errors;
  absl::StatusCode code = absl::StatusCode::kOk;
  for (size_t r = 0; r < all->size(); ++r) {
    const std::string& e = (*all)[r];
    if (e.empty()) continue;
    size_t bar = e.find('|');
    int c_int = static_cast<int>(absl::StatusCode::kUnknown);
    (void)absl::SimpleAtoi(e.substr(0, bar), &c_int);
    if (code == absl::StatusCode::kOk) code = static_cast<absl::StatusCode>(c_int);
    std::string msg = e.substr(bar + 1);
    errors.push_back(c.world_size() > 1 ? absl::StrCat("rank ", r, ": ", msg) : msg);
  }
  if (errors.empty()) return absl::OkStatus();
  return absl::Status(code, absl::StrJoin(errors, "; "));
}

}  // namespace safeshard
