// manifest.h: `safeshard.complete.json`, the completion manifest of a checkpoint directory.
//
// safeshard's writer publishes it last, after every rank's file is in place; consolidation
// publishes one for its outputs before the index json; the daemon waits for it. It is the proof
// that a per-rank checkpoint is complete, which headers alone cannot give (a lost highest rank
// leaves no trace in the other ranks' files):
//
//   {"format": "safeshard.complete/1", "kind": "dcp_shards", "ranks": 4,
//    "checksum": "xxh3-64",
//    "files": [{"name": "shard-00001-model-00001-of-00001.safetensors", "size": 1234,
//               "xxh3_64": "0123456789abcdef", "tensors_xxh3_64": ["...", ...]}, ...]}
//
// `ranks` is the writer's world size (absent for a consolidated output, kind "consolidated").
// `xxh3_64` is XXH3-64 (seed 0) of the whole file, the value `xxhsum -H3` prints;
// `tensors_xxh3_64` has one XXH3-64 per tensor of the file, in data order (by byte offset), so a
// mismatch names the tensor. Checksums are optional (older manifests have none). Members are only
// ever added within format version 1; unknown members are ignored.
//
//   ASSIGN_OR_RETURN(Manifest m, ParseManifest(text, "ckpt/safeshard.complete.json"));
//   std::string text = SerializeManifest(m);
//
// Parsing never throws and is bounded: hostile input (wrong types, huge numbers, deep nesting,
// trailing bytes) is a kDataLoss error naming the file and the byte offset or member.
#ifndef SAFESHARD_CORE_FORMAT_MANIFEST_H_
#define SAFESHARD_CORE_FORMAT_MANIFEST_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace safeshard {

inline constexpr char kManifestFileName[] = "safeshard.complete.json";
inline constexpr absl::string_view kManifestFormat = "safeshard.complete/1";
inline constexpr absl::string_view kManifestKindShards = "dcp_shards";
inline constexpr absl::string_view kManifestKindConsolidated = "consolidated";
inline constexpr absl::string_view kChecksumAlgorithm = "xxh3-64";
// Manifests larger than this are refused before parsing.
inline constexpr uint64_t kMaxManifestBytes = 256ull << 20;
inline constexpr int kMaxManifestRanks = 1 << 20;

struct ManifestFile {
  std::string name;  // plain file name in the manifest's directory
  uint64_t size = 0;
  std::optional<uint64_t> xxh3;       // of the whole file
  std::vector<uint64_t> tensor_xxh3;  // per tensor in data order; empty when not recorded
};

struct Manifest {
  std::string kind = std::string(kManifestKindShards);
  std::optional<int> ranks;  // world size of the writer (per-rank shards)
  std::vector<ManifestFile> files;
  const ManifestFile* Find(absl::string_view name) const;
};

absl::StatusOr<Manifest> ParseManifest(absl::string_view text, absl::string_view file);
// Two-space indented JSON with a trailing newline.
std::string SerializeManifest(const Manifest& m);

// XXH3-64 of bytes fed in order (streaming).
class ContentHasher {
 public:
  ContentHasher();
  ~ContentHasher();
  ContentHasher(const ContentHasher&) = delete;
  ContentHasher& operator=(const ContentHasher&) = delete;
  void Update(absl::string_view bytes);
  uint64_t Digest() const;

 private:
  void* state_;
};
uint64_t Xxh3(absl::string_view bytes);
std::string ChecksumHex(uint64_t v);  // 16 lowercase hex digits

}  // namespace safeshard

#endif  // SAFESHARD_CORE_FORMAT_MANIFEST_H_
