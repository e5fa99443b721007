// Scan a per-rank checkpoint, stop on problems, consolidate it into 5 GB files, and read a
// slice of one tensor back. Build: bazel build //examples/cpp:consolidate_and_read
#include <algorithm>
#include <cstdio>
#include <vector>

#include "core/consolidate/consolidate.h"  // //core/consolidate
#include "core/io/filesystem.h"            // //core/io
#include "core/layout/layout.h"            // //core/layout
#include "core/layout/slice_reader.h"      // //core/layout:slice_reader

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s IN OUT\n", argv[0]);
    return 2;
  }
  safeshard::FileSystem& fs = safeshard::LocalFileSystem();
  absl::StatusOr<safeshard::CheckpointLayout> in = safeshard::CheckpointLayout::Scan(fs, argv[1]);
  if (!in.ok()) {
    std::fprintf(stderr, "%s\n", in.status().ToString().c_str());
    return 1;
  }
  for (const safeshard::Problem& p : in->problems()) std::printf("%s\n", p.ToString().c_str());
  if (in->HasBlockingProblem()) return 1;
  const safeshard::Completeness& c = in->completeness();
  std::printf("%s\n", c.proven ? "complete: proven" : ("note: " + c.unproven).c_str());

  safeshard::ConsolidateOptions options;
  options.max_shard_size = 5'000'000'000;  // save_pretrained's "5GB"
  options.threads = 4;
  absl::StatusOr<safeshard::ConsolidateResult> r =
      safeshard::Consolidate(fs, argv[1], argv[2], options);
  if (!r.ok()) {
    std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
    return 1;
  }
  std::printf("consolidated %llu bytes into %zu files\n", static_cast<unsigned long long>(r->bytes),
              r->files.size());

  // The first two rows of the first tensor, read back from the output.
  absl::StatusOr<safeshard::CheckpointLayout> out = safeshard::CheckpointLayout::Scan(fs, argv[2]);
  if (!out.ok() || out->tensors().empty()) return 1;
  const safeshard::TensorLayout& t = out->tensors().front();
  std::vector<uint64_t> offsets(t.shape.size(), 0), sizes = t.shape;
  if (!sizes.empty()) sizes[0] = std::min<uint64_t>(sizes[0], 2);
  uint64_t bytes = safeshard::BitsOf(t.dtype) / 8;
  for (uint64_t s : sizes) bytes *= s;
  std::vector<char> buffer(bytes);
  absl::Status s = safeshard::ReadSlice(fs, *out, t.name, offsets, sizes, buffer.data(), bytes);
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("read %llu bytes of %s\n", static_cast<unsigned long long>(bytes), t.name.c_str());
  return 0;
}
