// safeshard-torch: safeshard's libtorch companion (the `safeshard` binary stays torch-free and
// runs this one for its torch subcommands, the way git runs git-<cmd>).
//
//   safeshard-torch dist-consolidate IN OUT --ranks R [consolidate options...]
//       spawns R processes that consolidate together over c10d (Gloo, FileStore rendezvous),
//       splitting the work by bytes; rank 0 publishes after every rank succeeded.
//   safeshard-torch dist-consolidate-rank IN OUT --rank r --world-size R --store F
//       one rank of the above (also usable under torchrun with --from-env).
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/consolidate/consolidate.h"
#include "core/dcp/c10d_collective.h"
#include "core/dcp/hf_storage_reader.h"
#include "core/dcp/hf_storage_writer.h"
#include "core/dcp/quantized_reader.h"
#include "core/example/example.h"
#include "core/io/filesystem.h"
#include "core/io/url.h"
#include "core/layout/layout.h"
#include "core/quant/quant.h"
#include "core/util/rlimit.h"

extern char** environ;

namespace {

uint64_t RssKib() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  unsigned long long pages = 0, resident = 0;
  if (f != nullptr) {
    if (std::fscanf(f, "%llu %llu", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

// One write(2) per line: ranks share the parent's stderr, so lines must not interleave.
void Err(const std::string& s) {
  std::string line = s + "\n";
  (void)!write(2, line.data(), line.size());
}

struct Group {
  std::unique_ptr<safeshard::Collective> c;
  int rank = 0;
  int world_size = 1;
};

// Joins the group: from the torchrun environment, or as rank/world with a FileStore.
absl::StatusOr<Group> JoinGroup(int rank, int world, const std::string& store, bool from_env,
                                double timeout_s) {
  safeshard::GroupOptions o;
  if (from_env) {
    absl::StatusOr<safeshard::GroupOptions> e = safeshard::GroupOptionsFromEnv();
    if (!e.ok()) return e.status();
    o = *e;
  } else {
    o.rank = rank;
    o.world_size = world;
    o.file_store = store;
  }
  o.timeout = absl::Seconds(timeout_s);
  absl::StatusOr<std::unique_ptr<safeshard::Collective>> c = safeshard::NewC10dCollective(o);
  if (!c.ok()) return c.status();
  return Group{std::move(*c), o.rank, o.world_size};
}

// Reports a failure to join and gives the exit code (2: usage, 1: runtime).
int JoinFailed(const absl::Status& s) {
  Err(absl::StrCat("safeshard-torch: ", s.message()));
  return s.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

int RankMain(const std::string& in, const std::string& out, int rank, int world,
             const std::string& store, bool from_env, int threads, const std::string& max_shard,
             double timeout_s, const std::string& dequantize,
             std::optional<safeshard::quant::BlockSize> block) {
  absl::StatusOr<Group> joined = JoinGroup(rank, world, store, from_env, timeout_s);
  if (!joined.ok()) return JoinFailed(joined.status());
  Group& g = *joined;
  safeshard::ConsolidateOptions o;
  o.threads = threads;
  o.verify = true;
  if (!max_shard.empty()) {
    absl::StatusOr<uint64_t> s = safeshard::ParseByteSize(max_shard);
    if (!s.ok()) {
      Err(absl::StrCat("safeshard-torch: ", s.status().message()));
      return 2;
    }
    o.max_shard_size = *s;
  }
  if (!dequantize.empty()) {
    absl::StatusOr<safeshard::DType> d = safeshard::quant::ParseDequantizeTarget(dequantize);
    if (!d.ok()) {
      Err(absl::StrCat("safeshard-torch: --dequantize: ", d.status().message()));
      return 2;
    }
    o.dequantize = *d;
  }
  o.block_size = block;
  uint64_t mine = 0;
  o.progress = [&](uint64_t, uint64_t total) { mine = total; };
  // The input may be a URL (http(s)://, hf://): read remotely, write locally.
  absl::StatusOr<safeshard::ResolvedPath> src = safeshard::ResolveUrl(in);
  if (!src.ok()) {
    Err(absl::StrCat("safeshard-torch: ", src.status().message()));
    return 2;
  }
  if (src->remote) o.output_fs = &safeshard::LocalFileSystem();
  absl::StatusOr<safeshard::ConsolidateResult> r =
      safeshard::Consolidate(*src->fs, src->path, out, o, g.c.get());
  if (!r.ok()) {
    Err(absl::StrCat("safeshard-torch: rank ", g.rank, ": ", r.status().message()));
    return 1;
  }
  std::cout << absl::StrFormat("rank %d: copied %d bytes; %d bytes in %.2fs across %d ranks\n",
                               g.rank, mine, r->bytes, r->seconds, g.world_size);
  return 0;
}

absl::StatusOr<c10::ScalarType> TorchDType(safeshard::DType d) {
  switch (d) {
    case safeshard::DType::kF32: return c10::kFloat;
    case safeshard::DType::kBF16: return c10::kBFloat16;
    case safeshard::DType::kF16: return c10::kHalf;
    case safeshard::DType::kF64: return c10::kDouble;
    case safeshard::DType::kI64: return c10::kLong;
    case safeshard::DType::kI32: return c10::kInt;
    case safeshard::DType::kI16: return c10::kShort;
    case safeshard::DType::kI8: return c10::kChar;
    case safeshard::DType::kU8: return c10::kByte;
    case safeshard::DType::kBOOL: return c10::kBool;
    default: return absl::InvalidArgumentError("dtype not available in libtorch 1.13");
  }
}

at::Tensor FromBytes(const std::string& bytes, const std::vector<uint64_t>& sizes,
                     c10::ScalarType t) {
  std::vector<int64_t> s(sizes.begin(), sizes.end());
  at::Tensor out = torch::empty(s, torch::TensorOptions().dtype(t));
  if (!bytes.empty()) std::memcpy(out.data_ptr(), bytes.data(), bytes.size());
  return out;
}

// One rank of a generated training save: its shards of the transformer-shaped model (row,
// column, 2-D mesh) and every replicated tensor, saved through the HF storage writer.
int SaveRankMain(const std::string& out, int rank, int world, const std::string& store,
                 bool from_env, int layers, uint64_t hidden, uint64_t vocab, double timeout_s,
                 const std::string& consolidated, bool full) {
  absl::StatusOr<Group> joined = JoinGroup(rank, world, store, from_env, timeout_s);
  if (!joined.ok()) return JoinFailed(joined.status());
  Group& g = *joined;
  std::vector<safeshard::ExampleTensor> model =
      safeshard::TransformerLikeModel({.layers = layers, .hidden = hidden, .vocab = vocab});
  safeshard::WriteOptions wo{.ranks = g.world_size, .mesh_rows = g.world_size % 2 == 0 ? 2 : 1};
  safeshard::StateDict sd;
  std::vector<uint64_t> ignored(g.world_size, 0);
  for (size_t i = 0; i < model.size(); ++i) {
    const safeshard::ExampleTensor& t = model[i];
    absl::StatusOr<c10::ScalarType> dt = TorchDType(t.dtype);
    if (!dt.ok()) return 2;
    if (t.sharding == safeshard::Sharding::kReplicated || full) {
      sd.push_back({t.name, FromBytes(safeshard::ExpectedTensorBytes(t), t.shape, *dt)});
      continue;
    }
    std::vector<std::vector<safeshard::ChunkSpec>> chunks =
        safeshard::PlanChunks(model, i, wo, &ignored);
    for (const safeshard::ChunkSpec& mine : chunks[g.rank]) {  // several: strided sharding
      safeshard::ShardedTensor st;
      st.local = FromBytes(safeshard::ChunkBytes(t, mine), mine.sizes, *dt);
      st.global_shape.assign(t.shape.begin(), t.shape.end());
      st.offsets.assign(mine.offsets.begin(), mine.offsets.end());
      sd.push_back({t.name, std::move(st)});
    }
  }
  safeshard::SaveOptions so;
  so.consolidated_output_path = consolidated;
  // Memory beyond the tensors: sample resident memory while saving.
  const uint64_t rss_before = RssKib();
  std::atomic<bool> saving{true};
  std::atomic<uint64_t> rss_peak{rss_before};
  std::thread sampler([&] {
    while (saving) {
      uint64_t now = RssKib();
      if (now > rss_peak) rss_peak = now;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  auto t0 = std::chrono::steady_clock::now();
  if (full) {
    // save_sharded=False: layers in file 2, everything else in file 1.
    std::map<std::string, int> mapping;
    for (const auto& [name, v] : sd)
      mapping[name] = name.find("layers.") != std::string::npos ? 2 : 1;
    so.fqn_to_index_mapping = mapping;
  }
  absl::StatusOr<safeshard::SaveResult> r =
      full ? safeshard::SaveFull(sd, out, *g.c, so) : safeshard::SaveSharded(sd, out, *g.c, so);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  saving = false;
  sampler.join();
  if (!r.ok()) {
    Err(absl::StrCat("safeshard-torch: rank ", g.rank, ": ", r.status().message()));
    return 1;
  }
  std::cout << absl::StrFormat(
      "rank %d: wrote %s (%d tensor bytes) in %.3f s; resident memory beyond the tensors while "
      "saving: %.1f MiB\n",
      g.rank, r->file, r->bytes, secs, (rss_peak.load() - rss_before) / 1024.0);
  return 0;
}

// The end of every load-check rank: statuses gathered, failures printed by rank 0 naming their
// rank, the success line (from the total bytes and the slowest rank's seconds) printed once.
int ReportLoadCheck(Group& g, const std::string& report, uint64_t bytes, uint64_t tensors,
                    double load_secs, const std::function<std::string(uint64_t, double)>& ok) {
  const int rank = g.rank;
  absl::StatusOr<std::vector<std::string>> all = g.c->AllGather(
      report.empty() ? absl::StrCat("ok ", bytes, " ", tensors, " ", load_secs) : "ERR " + report);
  if (!all.ok()) {
    Err(absl::StrCat("safeshard-torch: ", all.status().message()));
    return 1;
  }
  int bad = 0;
  uint64_t total = 0;
  double slowest = 0;
  for (size_t r = 0; r < all->size(); ++r) {
    const std::string& line = (*all)[r];
    if (line.rfind("ERR ", 0) == 0) {
      ++bad;
      if (rank == 0) Err(absl::StrCat("rank ", r, ": ", line.substr(4)));
    } else {
      std::istringstream is(line.substr(3));
      uint64_t b = 0, n = 0;
      double sec = 0;
      is >> b >> n >> sec;
      total += b;
      slowest = std::max(slowest, sec);
    }
  }
  if (rank == 0 && bad == 0) std::cout << ok(total, slowest);
  return bad == 0 ? 0 : 1;
}

// One rank of load-check --dequantize: this rank's slice of every logical tensor of any
// checkpoint through QuantizedHfStorageReader (quantized weights decoded into `target`), each
// compared with the whole tensor read as stored (codes and scales for a quantized weight, decoded
// whole) and cut to the same box: slicing, sharding and block arithmetic are what is checked.
int LoadCheckDequantizeRankMain(const std::string& dir, int rank, int world,
                                const std::string& store, const std::string& layout,
                                double timeout_s, safeshard::DType target,
                                std::optional<safeshard::quant::BlockSize> block) {
  absl::StatusOr<Group> joined = JoinGroup(rank, world, store, /*from_env=*/false, timeout_s);
  if (!joined.ok()) return JoinFailed(joined.status());
  Group& g = *joined;
  safeshard::QuantizedHfStorageReader reader(dir, 1, block);
  safeshard::HfStorageReader plain(dir);
  plain.set_quant_block(block);
  std::string report;
  uint64_t bytes = 0, tensors = 0;
  size_t quantized = 0;
  double load_secs = 0;
  const c10::ScalarType tt = *TorchDType(target);
  [&] {
    absl::StatusOr<const safeshard::CheckpointLayout*> ck = reader.ReadMetadata();
    absl::StatusOr<std::vector<safeshard::quant::QuantPair>> pairs = reader.QuantizedWeights();
    if (!ck.ok() || !pairs.ok()) {
      report = std::string(!ck.ok() ? ck.status().message() : pairs.status().message());
      return;
    }
    quantized = pairs->size();
    // The logical tensors: quantized weights in the target dtype, the others as stored.
    std::vector<safeshard::ExampleTensor> model;
    std::vector<const safeshard::quant::QuantPair*> pair_of;
    const safeshard::Sharding sh = layout == "row"    ? safeshard::Sharding::kRow
                                   : layout == "mesh" ? safeshard::Sharding::kMesh
                                                      : safeshard::Sharding::kColumn;
    for (const safeshard::quant::QuantPair& q : *pairs) {
      model.push_back({q.output, target, q.output_shape, sh});
      pair_of.push_back(&q);
    }
    for (const safeshard::TensorLayout& t : (*ck)->tensors()) {
      if ((*ck)->QuantPairOf(t.name) != nullptr || !TorchDType(t.dtype).ok()) continue;
      model.push_back({t.name, t.dtype, t.shape, sh});
      pair_of.push_back(nullptr);
    }
    safeshard::WriteOptions wo{.ranks = world, .mesh_rows = world % 2 == 0 ? 2 : 1};
    std::vector<uint64_t> ignored(world, 0);
    std::vector<safeshard::LoadRequest> reqs;
    std::vector<size_t> which;
    for (size_t i = 0; i < model.size(); ++i) {
      std::vector<std::vector<safeshard::ChunkSpec>> chunks =
          safeshard::PlanChunks(model, i, wo, &ignored);
      if (chunks[rank].empty()) continue;
      const safeshard::ChunkSpec& box = chunks[rank][0];
      std::vector<int64_t> sz(box.sizes.begin(), box.sizes.end());
      reqs.push_back({model[i].name,
                      torch::empty(sz, torch::TensorOptions().dtype(*TorchDType(model[i].dtype))),
                      std::vector<int64_t>(box.offsets.begin(), box.offsets.end())});
      which.push_back(i);
    }
    auto t0 = std::chrono::steady_clock::now();
    safeshard::LoadStats stats;
    if (absl::Status s = reader.ReadData(reqs, &stats); !s.ok()) {
      report = std::string(s.message());
      return;
    }
    load_secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    bytes = stats.bytes_copied;
    tensors = reqs.size();
    for (size_t k = 0; k < reqs.size(); ++k) {
      const safeshard::quant::QuantPair* q = pair_of[which[k]];
      const safeshard::TensorLayout* wt = (*ck)->FindTensor(q != nullptr ? q->weight : reqs[k].fqn);
      const safeshard::TensorLayout* st = q != nullptr ? (*ck)->FindTensor(q->scale) : nullptr;
      auto whole = [&](const safeshard::TensorLayout* t) -> absl::StatusOr<at::Tensor> {
        std::vector<int64_t> sz(t->shape.begin(), t->shape.end());
        absl::StatusOr<c10::ScalarType> dt = TorchDType(t->dtype);
        at::Tensor out = torch::empty(sz, torch::TensorOptions().dtype(dt.ok() ? *dt : c10::kByte));
        std::vector<safeshard::LoadRequest> one = {{t->name, out, {}}};
        if (absl::Status s = plain.ReadData(one); !s.ok()) return s;
        return out;
      };
      absl::StatusOr<at::Tensor> ref = whole(wt);
      if (!ref.ok()) {
        report = std::string(ref.status().message());
        return;
      }
      if (q != nullptr) {
        absl::StatusOr<at::Tensor> sc = whole(st);
        if (!sc.ok()) {
          report = std::string(sc.status().message());
          return;
        }
        at::Tensor codes = ref->contiguous();
        std::vector<int64_t> osz(q->output_shape.begin(), q->output_shape.end());
        at::Tensor f = torch::empty(osz, torch::kFloat);
        if (q->scheme == safeshard::quant::Scheme::kBlockFp8) {
          at::Tensor s32 = sc->to(torch::kFloat).contiguous();
          std::vector<float> v = safeshard::quant::DequantizeFp8Tensor(
              q->code_dtype, codes.data_ptr<uint8_t>(), q->output_shape, s32.data_ptr<float>(),
              q->block);
          std::memcpy(f.data_ptr<float>(), v.data(), v.size() * 4);
        } else {
          safeshard::quant::DequantizeMxfp4(
              codes.data_ptr<uint8_t>(), 0, static_cast<uint64_t>(f.numel()),
              sc->contiguous().data_ptr<uint8_t>(), safeshard::DType::kF32, f.data_ptr<float>());
        }
        *ref = f.to(tt);  // round to nearest even, once, as the reader does
      }
      at::Tensor cut = *ref;
      for (int64_t d = 0; d < reqs[k].dest.dim(); ++d)
        cut = cut.narrow(d, reqs[k].offsets[d], reqs[k].dest.size(d));
      at::Tensor want = cut.contiguous(), got = reqs[k].dest.contiguous();
      const bool same =
          want.is_floating_point()
              // NaN is not equal to itself (and torch canonicalises its sign): same NaN
              // positions, the same values elsewhere
              ? torch::equal(torch::isnan(want), torch::isnan(got)) &&
                    torch::equal(torch::nan_to_num(want, 0), torch::nan_to_num(got, 0))
              : torch::equal(want, got);
      if (!same) {
        report = absl::StrCat("tensor \"", reqs[k].fqn,
                              "\": the loaded slice differs from the whole tensor decoded");
        return;
      }
    }
  }();
  return ReportLoadCheck(g, report, bytes, tensors, load_secs, [&](uint64_t total, double slowest) {
    return absl::StrFormat(
        "ok: %d ranks loaded every tensor of %s as %s-sharded slices (%d bytes in %.3f s), %d "
        "quantized weights dequantized to %s, and every value matches the whole tensor decoded\n",
        world, dir, layout, total, slowest, quantized, DTypeName(target));
  });
}

// One rank of load-check: load this rank's slice of every tensor under another sharding and
// compare it with the generator's bytes (valid for checkpoints made by make-example/save-example).
int LoadCheckRankMain(const std::string& dir, int rank, int world, const std::string& store,
                      const std::string& layout, double timeout_s) {
  absl::StatusOr<Group> joined = JoinGroup(rank, world, store, /*from_env=*/false, timeout_s);
  if (!joined.ok()) return JoinFailed(joined.status());
  Group& g = *joined;
  safeshard::HfStorageReader reader(dir);  // a path or a URL
  absl::StatusOr<const safeshard::CheckpointLayout*> ck = reader.ReadMetadata();
  std::string report;
  uint64_t bytes = 0, tensors = 0;
  double load_secs = 0;
  auto t0 = std::chrono::steady_clock::now();
  if (!ck.ok()) {
    report = std::string(ck.status().message());
    (void)g.c->AllGather("ready");  // the other ranks' barrier below
  } else {
    std::vector<safeshard::ExampleTensor> model;
    for (const safeshard::TensorLayout& t : (*ck)->tensors()) {
      safeshard::Sharding sh = layout == "row"    ? safeshard::Sharding::kRow
                               : layout == "mesh" ? safeshard::Sharding::kMesh
                                                  : safeshard::Sharding::kColumn;
      model.push_back({t.name, t.dtype, t.shape, sh});
    }
    safeshard::WriteOptions wo{.ranks = world, .mesh_rows = world % 2 == 0 ? 2 : 1};
    std::vector<uint64_t> ignored(world, 0);
    std::vector<safeshard::LoadRequest> reqs;
    std::vector<std::string> expected;
    for (size_t i = 0; i < model.size(); ++i) {
      std::vector<std::vector<safeshard::ChunkSpec>> chunks =
          safeshard::PlanChunks(model, i, wo, &ignored);
      if (chunks[rank].empty()) continue;
      const safeshard::ChunkSpec& box = chunks[rank][0];
      absl::StatusOr<c10::ScalarType> dt = TorchDType(model[i].dtype);
      if (!dt.ok()) continue;
      std::vector<int64_t> sz(box.sizes.begin(), box.sizes.end());
      // Allocated and written before the load, as torch.distributed.checkpoint.load fills a
      // model's existing parameters in place (their first-touch page faults are not the load's).
      reqs.push_back({model[i].name, torch::zeros(sz, torch::TensorOptions().dtype(*dt)),
                      std::vector<int64_t>(box.offsets.begin(), box.offsets.end())});
      expected.push_back(safeshard::ChunkBytes(model[i], box));
    }
    // Every rank has its requests and expected values before any rank's load is timed: the
    // loads run together, as in training, not beside other ranks still generating data.
    absl::Status s = g.c->AllGather("ready").status();
    safeshard::LoadStats stats;
    t0 = std::chrono::steady_clock::now();
    if (s.ok()) s = reader.ReadData(reqs, &stats);
    load_secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!s.ok()) {
      report = std::string(s.message());
    } else {
      for (size_t i = 0; i < reqs.size(); ++i) {
        at::Tensor t = reqs[i].dest.contiguous();
        if (!expected[i].empty() &&  // an empty tensor has no data pointer
            std::memcmp(t.data_ptr(), expected[i].data(), expected[i].size()) != 0) {
          report = absl::StrCat("tensor \"", reqs[i].fqn,
                                "\": loaded values differ from the saved ones");
          break;
        }
      }
      bytes = stats.bytes_copied;
      tensors = reqs.size();
    }
  }
  return ReportLoadCheck(g, report, bytes, tensors, load_secs, [&](uint64_t total, double slowest) {
    return absl::StrFormat(
        "ok: %d ranks loaded every tensor of %s as %s-sharded slices (%d bytes in %.3f s) and "
        "every value matches what was saved\n",
        world, dir, layout, total, slowest);
  });
}

int SpawnRanks(const std::vector<std::string>& base, int ranks) {
  // A fresh directory per invocation: a pid-derived name is shared by concurrent runs in PID
  // namespaces (containers, sandboxes) that see the same /tmp, and their ranks would meet.
  const char* tmp = std::getenv("TMPDIR");
  std::string dir = absl::StrCat(tmp && *tmp ? tmp : "/tmp", "/safeshard-rdzv-XXXXXX");
  if (mkdtemp(dir.data()) == nullptr) {
    Err(absl::StrCat("safeshard-torch: cannot create a rendezvous directory ", dir, ": ",
                     std::strerror(errno)));
    return 1;
  }
  const std::string rdzv = dir + "/store";
  std::vector<pid_t> pids;
  for (int r = 0; r < ranks; ++r) {
    std::vector<std::string> args = base;
    for (const std::string& a :
         {std::string("--rank"), std::to_string(r), std::string("--world-size"),
          std::to_string(ranks), std::string("--store"), rdzv}) {
      args.push_back(a);
    }
    std::vector<char*> av;
    for (auto& a : args) av.push_back(a.data());
    av.push_back(nullptr);
    pid_t pid;
    if (posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, av.data(), environ) != 0) {
      Err(absl::StrCat("safeshard-torch: cannot start rank ", r));
      return 1;
    }
    pids.push_back(pid);
  }
  int worst = 0;
  for (pid_t p : pids) {
    int status = 0;
    waitpid(p, &status, 0);
    worst = std::max(worst, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
  }
  std::remove(rdzv.c_str());
  rmdir(dir.c_str());
  return worst;
}

}  // namespace

int main(int argc, char** argv) {
  safeshard::RaiseOpenFileLimit();  // 1,000+ rank files
  CLI::App app{
      "safeshard-torch: safeshard's libtorch companion (multi-process consolidation over "
      "c10d/Gloo)"};
  app.require_subcommand(1);
  std::string in, out, store, max_shard, dist_dequantize;
  int ranks = 2, rank = 0, world = 1, threads = 1;
  bool from_env = false;
  double timeout = 120;
  CLI::App* dist = app.add_subcommand("dist-consolidate",
                                      "Consolidate with R cooperating processes over c10d (Gloo)");
  dist->add_option("IN", in)->required();
  dist->add_option("OUT", out)->required();
  dist->add_option("--ranks", ranks, "Number of processes")->check(CLI::Range(1, 256));
  CLI::App* one = app.add_subcommand("dist-consolidate-rank", "One rank of dist-consolidate");
  one->add_option("IN", in)->required();
  one->add_option("OUT", out)->required();
  one->add_option("--rank", rank);
  one->add_option("--world-size", world);
  one->add_option("--store", store, "FileStore rendezvous path");
  one->add_flag("--from-env", from_env, "Take RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT (torchrun)");
  for (CLI::App* a : {dist, one}) {
    a->add_option("--threads", threads, "Copy threads per process");
    a->add_option("--max-shard-size", max_shard, "Split outputs at this size");
    a->add_option("--dequantize", dist_dequantize,
                  "Decode block-quantized weights (FP8, MXFP4) into bf16, f16 or f32");
    a->add_option("--timeout", timeout, "Seconds a rank waits for the others before failing");
  }
  int layers = 4;
  uint64_t hidden = 256, vocab = 4096;
  CLI::App* save =
      app.add_subcommand("save-example",
                         "R processes save a generated transformer-shaped model over Gloo with the "
                         "HF storage writer (per-rank DCP shards + completion manifest)");
  save->add_option("OUT", out)->required();
  save->add_option("--ranks", ranks, "Number of processes")->check(CLI::Range(1, 256));
  CLI::App* save_one = app.add_subcommand("save-example-rank", "One rank of save-example");
  save_one->add_option("OUT", out)->required();
  save_one->add_option("--rank", rank);
  save_one->add_option("--world-size", world);
  save_one->add_option("--store", store);
  save_one->add_flag("--from-env", from_env);
  std::string consolidated;
  bool full = false;
  for (CLI::App* a : {save, save_one}) {
    a->add_flag("--full", full,
                "save_sharded=False: every rank holds full tensors; files by a "
                "mapping (layers in file 2) and the index json");
    a->add_option("--consolidated-output", consolidated,
                  "After the save, all ranks consolidate it into the HF layout here");
    a->add_option("--layers", layers, "Transformer layers");
    a->add_option("--hidden", hidden, "Hidden size");
    a->add_option("--vocab", vocab, "Vocabulary size");
    a->add_option("--timeout", timeout, "Seconds a rank waits for the others before failing");
  }
  std::string layout = "col";
  CLI::App* lc = app.add_subcommand(
      "load-check",
      "R processes load a generated checkpoint into another sharding (col, row or "
      "mesh) and verify every value");
  lc->add_option("DIR", in)->required();
  lc->add_option("--ranks", ranks)->check(CLI::Range(1, 256));
  lc->add_option("--layout", layout, "col, row or mesh")
      ->check(CLI::IsMember({"col", "row", "mesh"}));
  std::string dequantize;
  lc->add_option("--dequantize", dequantize,
                 "Load block-quantized weights (FP8, MXFP4) decoded into bf16, f16 or f32 (any "
                 "checkpoint: each slice is compared with the whole tensor decoded)");
  CLI::App* lc_one = app.add_subcommand("load-check-rank", "One rank of load-check");
  lc_one->add_option("DIR", in)->required();
  lc_one->add_option("--rank", rank);
  lc_one->add_option("--world-size", world);
  lc_one->add_option("--store", store);
  lc_one->add_option("--layout", layout);
  lc_one->add_option("--dequantize", dequantize);
  std::string block_size;
  for (CLI::App* a : {lc, lc_one, dist, one}) {
    a->add_option(
        "--block-size", block_size,
        "FP8 block size with --dequantize: 128 or RxC (default: config.json's, else 128)");
  }
  for (CLI::App* a : {lc, lc_one}) a->add_option("--timeout", timeout);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help is 0; any other parse error is a usage error: 2, as everywhere in safeshard (not
    // CLI11's own codes, e.g. 109 for an unknown option).
    return app.exit(e) == 0 ? 0 : 2;
  }
  std::optional<safeshard::DType> dequantize_to;
  if (!dequantize.empty()) {
    absl::StatusOr<safeshard::DType> d = safeshard::quant::ParseDequantizeTarget(dequantize);
    if (!d.ok()) {
      Err(absl::StrCat("safeshard load-check: --dequantize: ", d.status().message()));
      return 2;
    }
    dequantize_to = *d;
  }
  std::optional<safeshard::quant::BlockSize> block;
  if (!block_size.empty()) {
    absl::StatusOr<safeshard::quant::BlockSize> b = safeshard::quant::ParseBlockSize(block_size);
    if (!b.ok() || (dequantize.empty() && dist_dequantize.empty())) {
      Err(absl::StrCat("safeshard-torch: --block-size: ",
                       b.ok() ? "only applies with --dequantize" : b.status().message()));
      return 2;
    }
    block = *b;
  }
  if (lc_one->parsed()) {
    return dequantize_to ? LoadCheckDequantizeRankMain(in, rank, world, store, layout, timeout,
                                                       *dequantize_to, block)
                         : LoadCheckRankMain(in, rank, world, store, layout, timeout);
  }
  if (lc->parsed()) {
    std::vector<std::string> args = {
        "/proc/self/exe", "load-check-rank",      in, "--layout", layout,
        "--timeout",      std::to_string(timeout)};
    if (dequantize_to) {
      args.push_back("--dequantize");
      args.push_back(dequantize);
    }
    if (block) {
      args.push_back("--block-size");
      args.push_back(block_size);
    }
    return SpawnRanks(args, ranks);
  }
  if (save_one->parsed()) {
    return SaveRankMain(out, rank, world, store, from_env, layers, static_cast<uint64_t>(hidden),
                        static_cast<uint64_t>(vocab), timeout, consolidated, full);
  }
  if (save->parsed()) {
    std::vector<std::string> base = {"/proc/self/exe",
                                     "save-example-rank",
                                     out,
                                     "--layers",
                                     std::to_string(layers),
                                     "--hidden",
                                     std::to_string(hidden),
                                     "--vocab",
                                     std::to_string(vocab),
                                     "--timeout",
                                     std::to_string(timeout)};
    if (!consolidated.empty()) {
      base.push_back("--consolidated-output");
      base.push_back(consolidated);
    }
    if (full) base.push_back("--full");
    return SpawnRanks(base, ranks);
  }
  if (one->parsed())
    return RankMain(in, out, rank, world, store, from_env, threads, max_shard, timeout,
                    dist_dequantize, block);

  // dist-consolidate: the ranks are this binary again, meeting through a FileStore.
  std::vector<std::string> base = {
      "/proc/self/exe", "dist-consolidate-rank", in,          out,
      "--threads",      std::to_string(threads), "--timeout", std::to_string(timeout)};
  if (!max_shard.empty()) {
    base.push_back("--max-shard-size");
    base.push_back(max_shard);
  }
  if (block) {
    base.push_back("--block-size");
    base.push_back(block_size);
  }
  if (!dist_dequantize.empty()) {
    base.push_back("--dequantize");
    base.push_back(dist_dequantize);
  }
  return SpawnRanks(base, ranks);
}
