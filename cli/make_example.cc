// make_example.cc: `safeshard make-example` — a generated per-rank checkpoint for trying things
// out.
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/cli.h"
#include "cli/command.h"
#include "cli/format_util.h"
#include "core/example/example.h"
#include "core/format/internal/json_util.h"
#include "core/io/atomic_file.h"
#include "core/io/filesystem.h"
#include "core/io/url.h"
#include "core/layout/layout.h"
#include "nlohmann/json.hpp"

namespace safeshard::cli {
namespace {

struct ExampleArgs {
  std::string out;
  int ranks = 4;
  int layers = 4;
  uint64_t hidden = 256;
  uint64_t vocab = 4096;
  int mesh_rows = 2;
  std::string gap;
  int many = 0;
  bool force = false;
  bool newest = false, strided = false, manifest = false;
};

int RunMakeExample(const ExampleArgs& a, std::ostream& out, std::ostream& err) {
  FileSystem& fs = LocalFileSystem();
  if (absl::StatusOr<std::vector<DirEntry>> l = fs.List(a.out); l.ok() && !a.force) {
    for (const DirEntry& e : *l) {
      if (absl::EndsWith(e.name, ".safetensors")) {
        err << "safeshard make-example: " << a.out
            << " already holds safetensors files; pass --force to overwrite\n";
        return kExitUsage;
      }
    }
  }
  WriteOptions o;
  o.ranks = a.ranks;
  o.mesh_rows = a.mesh_rows;
  if (!a.gap.empty()) {
    std::vector<std::string> parts = absl::StrSplit(a.gap, absl::MaxSplits(':', 1));
    int rank;
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[1], &rank) || rank < 0 || rank >= a.ranks) {
      err << "safeshard make-example: --gap expects TENSOR:RANK with 0 <= RANK < " << a.ranks
          << "\n";
      return kExitUsage;
    }
    o.drop_chunk = std::make_pair(parts[0], rank);
  }
  std::vector<ExampleTensor> model =
      a.many > 0 ? ManySmallTensors(a.many)
                 : TransformerLikeModel({.layers = a.layers, .hidden = a.hidden, .vocab = a.vocab});
  o.logical_fqn = a.newest || a.strided;
  o.global_shape = a.newest;
  o.manifest = a.manifest;
  if (a.strided) {
    // FSDP2 + TP: MLP and attention projections strided (two row blocks per rank).
    for (ExampleTensor& t : model) {
      if (t.sharding == Sharding::kMesh) t.sharding = Sharding::kStridedMesh;
      if (t.sharding == Sharding::kRow && absl::StrContains(t.name, "layers.")) {
        t.sharding = Sharding::kStrided;
      }
    }
  }
  absl::Status s = WriteDcpCheckpoint(fs, a.out, model, o);
  if (!s.ok()) {
    err << "safeshard make-example: " << s.message() << "\n";
    return kExitProblems;
  }
  uint64_t bytes = 0;
  for (const ExampleTensor& t : model) bytes += ByteSizeOf(t.dtype, t.shape).value_or(0);
  out << "wrote " << model.size() << " tensors (" << HumanBytes(bytes) << ") as " << a.ranks
      << " per-rank DCP shard files in " << a.out << "\n";
  return kExitOk;
}

}  // namespace

std::vector<Subcommand> AddMakeExample(CLI::App& app) {
  auto a = std::make_shared<ExampleArgs>();
  CLI::App* example =
      app.add_subcommand("make-example",
                         "Write a generated transformer-shaped checkpoint as per-rank DCP shards "
                         "(the layout PyTorch's HuggingFaceStorageWriter writes with "
                         "save_sharded=True): row, column and 2-D mesh sharded tensors, several "
                         "dtypes, a 0-d scalar.");
  example->add_option("OUT", a->out, "Output directory (created)")->required();
  example->add_option("--ranks", a->ranks, "Number of ranks (files)")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  example->add_option("--layers", a->layers, "Transformer layers")
      ->capture_default_str()
      ->check(CLI::Range(0, 100000));
  example->add_option("--hidden", a->hidden, "Hidden size")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 20));
  example->add_option("--vocab", a->vocab, "Vocabulary size")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 24));
  example->add_option("--mesh-rows", a->mesh_rows, "Rows of the 2-D device mesh (divides ranks)")
      ->capture_default_str();
  example->add_option("--gap", a->gap,
                      "TENSOR:RANK: leave out that rank's chunk (a deliberate coverage gap)");
  example->add_flag("--force", a->force, "Overwrite an existing checkpoint in OUT");
  example->add_flag("--pytorch-newest", a->newest,
                    "PyTorch's newest layout: logical_fqn and global_shape in every "
                    "DCP_SHARDING_INFO entry");
  example->add_flag("--strided", a->strided,
                    "Strided FSDP2+TP sharding: two row blocks of a layer tensor per rank file, "
                    "under physical keys {fqn}.__dcp_shard_{k} (implies logical_fqn)");
  example->add_flag("--manifest", a->manifest,
                    "Also publish safeshard.complete.json with checksums (as safeshard's own "
                    "writer and save-example do)");
  example
      ->add_option("--many", a->many,
                   "Instead of the transformer, N small replicated F32 [4, 4] tensors spread "
                   "over the ranks (for scan benchmarks)")
      ->check(CLI::Range(1, 100000000));

  return {{example,
           [a](std::ostream& out, std::ostream& err) { return RunMakeExample(*a, out, err); }}};
}

}  // namespace safeshard::cli
