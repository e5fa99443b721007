#include "core/dcp/hf_storage_writer.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/consolidate/consolidate.h"
#include "core/format/filenames.h"
#include "core/format/header.h"
#include "core/format/index_json.h"
#include "core/format/manifest.h"
#include "core/format/sharding.h"
#include "core/io/atomic_file.h"
#include "core/io/filesystem.h"
#include "core/io/url.h"
#include "core/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace safeshard {
namespace {

using nlohmann::json;

struct Item {
  std::string fqn;  // logical name
  std::string key;  // physical key in the file: fqn, or "{fqn}.__dcp_shard_{k}" when this
                    // rank holds several chunks of fqn (strided sharding)
  const StateDictValue* value = nullptr;
  bool replicated = false;
  std::vector<int64_t> offsets, sizes, global_shape;
  uint64_t bytes = 0;
};

const at::Tensor& LocalOf(const StateDictValue& v) {
  return std::holds_alternative<at::Tensor>(v) ? std::get<at::Tensor>(v)
                                               : std::get<ShardedTensor>(v).local;
}

}  // namespace

absl::StatusOr<DType> DTypeOfTorch(c10::ScalarType t) {
  switch (t) {
    case c10::kFloat: return DType::kF32;
    case c10::kBFloat16: return DType::kBF16;
    case c10::kHalf: return DType::kF16;
    case c10::kDouble: return DType::kF64;
    case c10::kChar: return DType::kI8;
    case c10::kShort: return DType::kI16;
    case c10::kInt: return DType::kI32;
    case c10::kLong: return DType::kI64;
    case c10::kByte: return DType::kU8;
    case c10::kBool: return DType::kBOOL;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("torch dtype ", c10::toString(t), " has no safetensors equivalent"));
  }
}

absl::StatusOr<SaveResult> SaveSharded(const StateDict& sd, const std::string& dir, Collective& c,
                                       const SaveOptions& options) {
  // A URL (http(s):// over WebDAV, file://, mem://): save through the file system it names.
  if (options.fs == nullptr && !UrlScheme(dir).empty()) {
    UrlOptions uo;
    uo.token = options.token;
    absl::StatusOr<ResolvedPath> where = ResolveUrl(dir, uo);
    RETURN_IF_ERROR(AllGatherStatus(c, where.status()));
    SaveOptions o = options;
    o.fs = where->fs.get();
    return SaveSharded(sd, where->path, c, o);
  }
  const int rank = c.rank(), world = c.world_size();
  // 1. Local plan. A name may repeat only as several sharded chunks of one tensor held by this
  //    rank (strided FSDP2+TP sharding): they are stored under physical keys, as PyTorch does.
  std::vector<Item> items;
  absl::Status planned = [&]() -> absl::Status {
    std::map<std::string, std::vector<size_t>> occurrences;
    for (size_t i = 0; i < sd.size(); ++i) occurrences[sd[i].first].push_back(i);
    std::map<std::string, int> next_k;
    for (const auto& [fqn, v] : sd) {
      const std::vector<size_t>& occ = occurrences.at(fqn);
      if (fqn.empty() || fqn == "__metadata__") {
        return absl::InvalidArgumentError(absl::StrCat("tensor name \"", fqn, "\" is not allowed"));
      }
      if (occ.size() > 1) {
        for (size_t o : occ) {
          if (!std::holds_alternative<ShardedTensor>(sd[o].second) ||
              std::get<ShardedTensor>(sd[o].second).global_shape !=
                  std::get<ShardedTensor>(sd[occ[0]].second).global_shape) {
            return absl::InvalidArgumentError(
                absl::StrCat("tensor \"", fqn,
                             "\" appears twice; only chunks of one sharded tensor (same "
                             "global shape) may repeat"));
          }
        }
      }
      Item it;
      it.fqn = fqn;
      it.value = &v;
      const at::Tensor& t = LocalOf(v);
      if (!t.defined())
        return absl::InvalidArgumentError(absl::StrCat("tensor \"", fqn, "\" is undefined"));
      absl::StatusOr<DType> dt = DTypeOfTorch(t.scalar_type());
      if (!dt.ok())
        return absl::InvalidArgumentError(
            absl::StrCat("tensor \"", fqn, "\": ", dt.status().message()));
      it.sizes.assign(t.sizes().begin(), t.sizes().end());
      it.bytes = static_cast<uint64_t>(t.numel()) * t.element_size();
      if (std::holds_alternative<at::Tensor>(v)) {
        it.replicated = true;
        it.offsets.assign(it.sizes.size(), 0);
        it.global_shape = it.sizes;
      } else {
        const ShardedTensor& s = std::get<ShardedTensor>(v);
        if (s.offsets.size() != it.sizes.size() || s.global_shape.size() != it.sizes.size()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "tensor \"", fqn, "\": offsets, global shape and local tensor disagree on rank"));
        }
        for (size_t d = 0; d < it.sizes.size(); ++d) {
          if (s.offsets[d] < 0 || s.offsets[d] + it.sizes[d] > s.global_shape[d]) {
            return absl::InvalidArgumentError(
                absl::StrCat("tensor \"", fqn,
                             "\": local chunk lies outside the global shape in dimension ", d));
          }
        }
        it.offsets = s.offsets;
        it.global_shape = s.global_shape;
        if (t.numel() == 0) continue;  // an empty local shard saves nothing
      }
      items.push_back(std::move(it));
    }
    // Physical keys: plain fqn for a single chunk, fqn.__dcp_shard_k for several.
    std::map<std::string, int> chunks_of;
    for (const Item& it : items) chunks_of[it.fqn]++;
    for (Item& it : items) {
      it.key = chunks_of[it.fqn] > 1 ? PhysicalShardKey(it.fqn, next_k[it.fqn]++) : it.fqn;
    }
    return absl::OkStatus();
  }();
  json mine = json::array();
  for (const Item& it : items) {
    mine.push_back({it.fqn, it.replicated, it.bytes});
  }
  absl::Status shared = AllGatherStatus(c, planned);
  if (!shared.ok()) return shared;
  absl::StatusOr<std::vector<std::string>> plans = c.AllGather(mine.dump());
  if (!plans.ok()) return plans.status();

  // 2. Global plan (identical on every rank): replicated tensors go to the least-loaded rank.
  std::vector<uint64_t> load(world, 0);
  std::map<std::string, uint64_t> replicated;  // fqn -> bytes
  for (int r = 0; r < world; ++r) {
    for (const auto& e : json::parse((*plans)[r])) {
      if (e[1].get<bool>()) {
        replicated[e[0].get<std::string>()] = e[2].get<uint64_t>();
      } else {
        load[r] += e[2].get<uint64_t>();
      }
    }
  }
  std::vector<std::pair<std::string, uint64_t>> rep(replicated.begin(), replicated.end());
  std::stable_sort(rep.begin(), rep.end(),
                   [](const auto& a, const auto& b) { return a.second > b.second; });
  std::map<std::string, int> owner;
  for (const auto& [fqn, bytes] : rep) {
    int r = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    owner[fqn] = r;
    load[r] += bytes;
  }

  // 3. This rank's files (one per mapped file index), streamed from tensor memory under
  //    temporary names, `thread_count` files at a time.
  FileSystem& fs = options.fs != nullptr ? *options.fs : LocalFileSystem();
  SaveResult result;
  std::map<int, std::vector<const Item*>> by_index;  // file index -> items
  int count = 1;
  if (options.fqn_to_index_mapping) {
    for (const auto& [k, v] : *options.fqn_to_index_mapping) count = std::max(count, v);
  }
  for (const Item& it : items) {
    if (it.replicated && owner.at(it.fqn) != rank) continue;
    int idx = 1;
    if (options.fqn_to_index_mapping) {
      auto m = options.fqn_to_index_mapping->find(it.fqn);
      idx = m != options.fqn_to_index_mapping->end() ? m->second : 1;
    }
    by_index[idx].push_back(&it);
  }
  if (by_index.empty()) by_index[1];  // every rank publishes a file, even with nothing to save
  std::vector<std::optional<AtomicFile>> outs(by_index.size());
  std::vector<absl::Status> statuses(by_index.size());
  std::vector<uint64_t> bytes(by_index.size(), 0);
  std::vector<std::pair<int, std::vector<const Item*>>> jobs(by_index.begin(), by_index.end());
  std::vector<ManifestFile> sums(by_index.size());
  auto write_one = [&](size_t j) -> absl::Status {
    const auto& [idx, members] = jobs[j];
    std::vector<TensorSpec> specs;
    ShardingInfo info;
    std::map<std::string, const Item*> by_key;
    for (const Item* it : members) {
      const at::Tensor& t = LocalOf(*it->value);
      DType dt = *DTypeOfTorch(t.scalar_type());
      auto want = options.fqn_to_dtype_mapping.find(it->fqn);
      if (want != options.fqn_to_dtype_mapping.end() && want->second != dt) {
        // libtorch 1.13 has no float8: FP8 travels as uint8 and is saved back under its name.
        if (!(IsFloat8(want->second) && (dt == DType::kU8 || dt == DType::kI8))) {
          return absl::InvalidArgumentError(
              absl::StrCat("tensor \"", it->fqn, "\": fqn_to_dtype_mapping asks for ",
                           DTypeName(want->second), " but the tensor is ", DTypeName(dt),
                           " (only uint8 -> FP8 relabelling is supported)"));
        }
        dt = want->second;
      }
      specs.push_back({it->key, dt, std::vector<uint64_t>(it->sizes.begin(), it->sizes.end())});
      info.saved_offsets[it->key] = std::vector<uint64_t>(it->offsets.begin(), it->offsets.end());
      info.logical_fqn[it->key] = it->fqn;
      info.global_shape[it->key] =
          std::vector<uint64_t>(it->global_shape.begin(), it->global_shape.end());
      by_key[it->key] = it;
    }
    absl::StatusOr<Header> h = LayoutHeader(std::move(specs), ShardedFileMetadata(info));
    if (!h.ok()) return h.status();
    absl::StatusOr<AtomicFile> f =
        AtomicFile::Create(fs, JoinPath(dir, ShardFileName(rank, idx, count)));
    if (!f.ok()) return f.status();
    outs[j].emplace(std::move(*f));
    // Checksums are computed from the bytes as they are written (header, then tensors in data
    // order): the manifest records what this process wrote, not a later re-read.
    ContentHasher whole;
    const std::string head = SerializeHeader(*h);
    whole.Update(head);
    absl::Status st = outs[j]->file().Allocate(h->file_size());
    if (st.ok()) st = outs[j]->file().WriteAt(0, head);
    for (const TensorEntry& e : h->tensors) {
      if (!st.ok()) break;
      at::Tensor t = LocalOf(*by_key.at(e.name)->value);
      t = t.is_contiguous() ? t : t.contiguous();  // one tensor at a time, never the file
      const absl::string_view bytes_of(static_cast<const char*>(t.data_ptr()), e.size());
      whole.Update(bytes_of);
      sums[j].tensor_xxh3.push_back(Xxh3(bytes_of));
      st = outs[j]->file().WriteAt(h->data_start() + e.begin, bytes_of);
      bytes[j] += e.size();
    }
    if (st.ok()) st = outs[j]->file().Sync();
    sums[j].name = ShardFileName(rank, idx, count);
    sums[j].size = h->file_size();
    sums[j].xxh3 = whole.Digest();
    return st;
  };
  absl::Status written = fs.MakeDirs(dir);
  if (written.ok()) {
    std::atomic<size_t> next{0};
    std::vector<std::thread> pool;
    int threads = std::max(1, std::min<int>(options.thread_count, static_cast<int>(jobs.size())));
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&] {
        for (size_t j = next++; j < jobs.size(); j = next++) statuses[j] = write_one(j);
      });
    }
    for (auto& t : pool) t.join();
    for (size_t j = 0; j < jobs.size(); ++j) {
      if (written.ok() && !statuses[j].ok()) written = statuses[j];
      result.bytes += bytes[j];
    }
  }
  result.file = ShardFileName(rank, jobs[0].first, count);
  if (const char* fail = std::getenv("SAFESHARD_TEST_FAIL_RANK");
      fail != nullptr && std::atoi(fail) == rank) {
    written = absl::InternalError("injected failure (SAFESHARD_TEST_FAIL_RANK) during the save");
  }
  absl::Status all_written = AllGatherStatus(c, written);
  if (!all_written.ok()) return all_written;  // AtomicFile removes the temporary file

  // 4. Rename, then the coordinator publishes the completion manifest (with every file's size
  //    and checksums) last.
  absl::Status committed = absl::OkStatus();
  Manifest mine_files;
  for (size_t j = 0; j < outs.size(); ++j) {
    if (committed.ok()) committed = outs[j]->Commit();
    if (committed.ok()) mine_files.files.push_back(sums[j]);
  }
  absl::StatusOr<std::vector<std::string>> gathered = c.AllGather(SerializeManifest(mine_files));
  if (!gathered.ok()) return gathered.status();
  absl::Status all_committed = AllGatherStatus(c, committed);
  if (!all_committed.ok()) return all_committed;
  Manifest m;
  m.ranks = world;
  for (const std::string& text : *gathered) {
    absl::StatusOr<Manifest> part = ParseManifest(text, "a rank's file list");
    if (!part.ok()) return part.status();
    for (ManifestFile& f : part->files) {
      result.all_files.emplace_back(f.name, f.size);
      m.files.push_back(std::move(f));
    }
  }
  absl::Status manifest = absl::OkStatus();
  if (rank == 0) {
    manifest =
        WriteFileAtomically(fs, JoinPath(dir, kCompletionManifestName), SerializeManifest(m));
  }
  absl::Status done = AllGatherStatus(c, manifest);
  if (!done.ok()) return done;
  if (!options.consolidated_output_path.empty()) {
    ConsolidateOptions co;
    co.fqn_to_index = options.fqn_to_index_mapping;
    if (co.fqn_to_index) co.unmapped = UnmappedPolicy::kOwnFile;
    co.fqn_to_dtype = options.fqn_to_dtype_mapping;
    co.diffusers_index = options.diffusers_compatible;
    co.threads = options.num_threads_consolidation;
    co.overwrite = true;
    // The consolidated output is written locally (or on the URL's file system, if it names one
    // other than the shards').
    UrlOptions uo;
    uo.token = options.token;
    absl::StatusOr<ResolvedPath> out_where = ResolveUrl(options.consolidated_output_path, uo);
    RETURN_IF_ERROR(AllGatherStatus(c, out_where.status()));
    if (out_where->remote) {
      return absl::InvalidArgumentError(absl::StrCat(options.consolidated_output_path,
                                                     ": consolidated_output_path must be local"));
    }
    if (out_where->fs.get() != &fs) co.output_fs = out_where->fs.get();
    absl::StatusOr<ConsolidateResult> r = Consolidate(fs, dir, out_where->path, co, &c);
    if (!r.ok()) return r.status();
    result.consolidated_files = r->files;
  }
  return result;
}

absl::StatusOr<SaveResult> Save(const StateDict& sd, const std::string& path, Collective& c,
                                const SaveOptions& options) {
  SaveOptions o = options;
  if (o.thread_count_consolidation > 0) o.num_threads_consolidation = o.thread_count_consolidation;
  if (o.enable_consolidation) {
    if (!o.consolidated_output_path.empty() && o.consolidated_output_path != path) {
      return absl::InvalidArgumentError(
          "enable_consolidation consolidates into the save path; do not also set "
          "consolidated_output_path");
    }
    o.consolidated_output_path = path;
    return SaveSharded(sd, JoinPath(path, kShardedDirName), c, o);
  }
  return o.save_distributed ? SaveSharded(sd, path, c, o) : SaveFull(sd, path, c, o);
}

absl::StatusOr<SaveResult> SaveFull(const StateDict& sd, const std::string& dir, Collective& c,
                                    const SaveOptions& options) {
  const int rank = c.rank(), world = c.world_size();
  FileSystem& fs = options.fs != nullptr ? *options.fs : LocalFileSystem();
  // Plan (identical on every rank): file of each tensor, files to ranks by bytes.
  std::map<int, std::vector<const std::pair<std::string, StateDictValue>*>> by_file;
  std::map<int, uint64_t> file_bytes;
  absl::Status planned = [&]() -> absl::Status {
    std::set<std::string> seen;
    for (const auto& e : sd) {
      if (!seen.insert(e.first).second) {
        return absl::InvalidArgumentError(absl::StrCat("tensor \"", e.first, "\" appears twice"));
      }
      if (!std::holds_alternative<at::Tensor>(e.second)) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor \"", e.first,
                         "\" is sharded: a full save needs whole tensors (save sharded, "
                         "or use consolidated_output_path)"));
      }
      const at::Tensor& t = std::get<at::Tensor>(e.second);
      absl::StatusOr<DType> dt = DTypeOfTorch(t.scalar_type());
      if (!dt.ok())
        return absl::InvalidArgumentError(
            absl::StrCat("tensor \"", e.first, "\": ", dt.status().message()));
      int idx = 1;
      if (options.fqn_to_index_mapping) {
        auto it = options.fqn_to_index_mapping->find(e.first);
        if (it == options.fqn_to_index_mapping->end()) {
          return absl::InvalidArgumentError(
              absl::StrCat("tensor \"", e.first, "\" is not in fqn_to_index_mapping"));
        }
        idx = it->second;
      }
      by_file[idx].push_back(&e);
      file_bytes[idx] += static_cast<uint64_t>(t.numel()) * t.element_size();
    }
    return absl::OkStatus();
  }();
  absl::Status ok = AllGatherStatus(c, planned);
  if (!ok.ok()) return ok;
  const int count = by_file.empty() ? 1 : by_file.rbegin()->first;
  std::vector<std::pair<uint64_t, int>> order;
  for (const auto& [idx, b] : file_bytes) order.push_back({b, idx});
  std::stable_sort(order.begin(), order.end(), [](auto a, auto b) { return a.first > b.first; });
  std::vector<uint64_t> load(world, 0);
  std::map<int, int> owner;
  for (const auto& [b, idx] : order) {
    int r = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    owner[idx] = r;
    load[r] += b;
  }
  auto name_of = [&](int idx) {
    std::string n = ModelFileName(idx, count);
    return options.diffusers_compatible ? "diffusion_pytorch_model" + n.substr(5) : n;
  };
  // Write the files this rank owns (temporary names), then publish when every rank succeeded.
  SaveResult result;
  std::vector<AtomicFile> mine;
  absl::Status written = [&]() -> absl::Status {
    absl::Status s = fs.MakeDirs(dir);
    if (!s.ok()) return s;
    for (const auto& [idx, entries] : by_file) {
      if (owner[idx] != rank) continue;
      std::vector<TensorSpec> specs;
      std::map<std::string, at::Tensor> tensors;
      for (const auto* e : entries) {
        at::Tensor t = std::get<at::Tensor>(e->second);
        specs.push_back({e->first, *DTypeOfTorch(t.scalar_type()),
                         std::vector<uint64_t>(t.sizes().begin(), t.sizes().end())});
        tensors[e->first] = t;
      }
      absl::StatusOr<Header> h = LayoutHeader(std::move(specs), {{"format", "pt"}});
      if (!h.ok()) return h.status();
      absl::StatusOr<AtomicFile> f = AtomicFile::Create(fs, JoinPath(dir, name_of(idx)));
      if (!f.ok()) return f.status();
      s = f->file().Allocate(h->file_size());
      if (s.ok()) s = f->file().WriteAt(0, SerializeHeader(*h));
      for (const TensorEntry& te : h->tensors) {
        if (!s.ok()) break;
        at::Tensor t = tensors.at(te.name);
        t = t.is_contiguous() ? t : t.contiguous();
        s = f->file().WriteAt(h->data_start() + te.begin,
                              absl::string_view(static_cast<const char*>(t.data_ptr()), te.size()));
        result.bytes += te.size();
      }
      if (s.ok()) s = f->file().Sync();
      if (!s.ok()) return s;
      mine.push_back(std::move(*f));
    }
    return absl::OkStatus();
  }();
  ok = AllGatherStatus(c, written);
  if (!ok.ok()) return ok;
  absl::Status committed = absl::OkStatus();
  for (AtomicFile& f : mine) {
    if (committed.ok()) committed = f.Commit();
  }
  ok = AllGatherStatus(c, committed);
  if (!ok.ok()) return ok;
  absl::Status index = absl::OkStatus();
  if (rank == 0) {
    IndexJson idx;
    uint64_t total = 0;
    for (const auto& [i, entries] : by_file) {
      for (const auto* e : entries) idx.weight_map[e->first] = name_of(i);
      total += file_bytes[i];
    }
    idx.total_size = total;
    index = WriteFileAtomically(
        fs,
        JoinPath(dir, std::string(options.diffusers_compatible ? kDiffusersIndexFileName
                                                               : kIndexFileName)),
        SerializeIndexJson(idx));
  }
  ok = AllGatherStatus(c, index);
  if (!ok.ok()) return ok;
  for (const auto& [i, entries] : by_file) result.all_files.push_back({name_of(i), 0});
  return result;
}

}  // namespace safeshard
