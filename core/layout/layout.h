// layout.h: what a checkpoint directory holds, from headers alone.
//
// CheckpointLayout::Scan reads every safetensors file's header (never tensor bytes) and the
// index json, then builds, per tensor, its dtype, global shape and chunks (which file holds which
// slice, at which byte range), the kind of checkpoint, and a verification report.
//
//   ASSIGN_OR_RETURN(CheckpointLayout ck, CheckpointLayout::Scan(LocalFileSystem(), "/ckpt"));
//   for (const TensorLayout& t : ck.tensors()) { ... t.chunks ... }
//   for (const Problem& p : ck.problems()) std::cerr << p.ToString() << "\n";
//
// Scan fails only when the path itself cannot be read (kNotFound, kInvalidArgument for an
// empty directory). A corrupt file is a Problem in the report, and the rest is still scanned.
#ifndef SAFESHARD_CORE_LAYOUT_LAYOUT_H_
#define SAFESHARD_CORE_LAYOUT_LAYOUT_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "core/format/dtype.h"
#include "core/format/header.h"
#include "core/format/index_json.h"
#include "core/format/manifest.h"
#include "core/io/filesystem.h"
#include "core/quant/quant.h"

namespace safeshard {

enum class CheckpointKind {
  kEmpty,       // no safetensors files
  kSingleFile,  // one plain safetensors file
  kHfSharded,   // several plain files (with or without an index json)
  kDcpSharded,  // per-rank files carrying DCP_SHARDING_INFO
  kMixed,       // both plain and DCP-sharded files
};
absl::string_view CheckpointKindName(CheckpointKind k);

struct FileInfo {
  std::string name;  // relative to the checkpoint root
  uint64_t size = 0;
  std::optional<Header> header;  // absent when the header is invalid
  std::optional<std::string> error;
  std::optional<int> shard;       // 1-based rank from a "shard-RRRRR-..." name
  std::optional<int> file_index;  // model file index from the name
  bool dcp = false;               // has DCP_SHARDING_INFO
};

struct Chunk {
  int file = 0;                   // index into files()
  std::vector<uint64_t> offsets;  // within the global tensor
  std::vector<uint64_t> sizes;    // the chunk's shape
  uint64_t begin = 0;             // absolute byte range in the file
  uint64_t end = 0;
  // The chunk's key in its file when it differs from the tensor's (logical) name: PyTorch's
  // newest writer stores several chunks of one tensor in one rank file as "{fqn}.__dcp_shard_{k}".
  std::string key;
};

struct TensorLayout {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<uint64_t> shape;  // global shape
  // True when the files declare the global shape (DCP_SHARDING_INFO global_shape); otherwise
  // `shape` is max(offset + size) over the chunks and a lost trailing chunk is invisible.
  bool declared_shape = false;
  std::vector<Chunk> chunks;
  uint64_t numel() const;
  uint64_t bytes() const;  // bytes of the global tensor
  bool has_problem = false;
};

enum class ProblemKind {
  kInvalidFile,          // header failed validation
  kGap,                  // part of a tensor is in no chunk
  kOverlap,              // two chunks share elements
  kOutOfBounds,          // a chunk lies outside the tensor's shape
  kRankMismatch,         // chunks disagree on the number of dimensions
  kDTypeMismatch,        // chunks disagree on dtype
  kIndexMissingFile,     // index names a file that does not exist
  kIndexMissingTensor,   // index says a file holds a tensor it does not
  kNotInIndex,           // a tensor in the files but not in the index
  kIndexTotalSize,       // metadata.total_size differs from the sum of tensor bytes
  kInvalidIndex,         // index json failed to parse
  kShardRanks,           // shard rank indices are not dense 1..R
  kShardFileCount,       // "-of-N" disagrees between files
  kDuplicateTensor,      // the same tensor in several plain files
  kGlobalShapeMismatch,  // chunks declare different global shapes
  kInvalidManifest,      // safeshard.complete.json failed to parse
  kManifestMissingFile,  // the manifest lists a file that does not exist
  kManifestFileSize,     // a listed file has another size than the manifest says
  kManifestUnlisted,     // a safetensors file the manifest does not list
  kManifestRanks,        // the shard files' ranks are not the manifest's 0..ranks-1
  kExpectedRanks,        // the shard files' ranks are not the expected 0..N-1 (--expect-ranks)
  kModelFileCount,       // plain "-of-N" files: some of the N are absent
  kReference,            // a tensor absent from, extra to, or shaped unlike the reference model
  kChecksum,             // file or tensor bytes differ from the manifest's checksum
  kUnproven,             // completeness cannot be proven (a problem only with --strict)
  kNoCheckpoint,         // a directory with no safetensors files (the message says what it holds)
  kQuantization,         // a quantized pair whose weight and scale disagree (shape, dtype)
  kUnscaledFp8,          // an FP8 weight with no scale where other weights have one (a warning)
  kUnpairedScale,        // X.weight_scale_inv without an FP8 X.weight (a warning)
  kUnfinishedSave,       // ShardWriter commit records left: a save still running, or died
};
absl::string_view ProblemKindName(ProblemKind k);
// Whether a problem makes the checkpoint unfit to consolidate or publish. One table for
// verify's exit code, consolidation's refusal and the daemon's decision (exhaustive switch).
bool IsBlocking(ProblemKind k);

struct Problem {
  ProblemKind kind;
  std::string file;    // may be empty
  std::string tensor;  // may be empty
  std::string message;
  std::string ToString() const;  // "<kind>: <file>: tensor "<t>": <message>"
};

struct ScanOptions {
  // Refuse to treat more than this many grid cells per tensor when locating a gap exactly; past
  // it the report gives the missing element count only.
  uint64_t max_gap_cells = 1 << 22;
  // Files whose headers are read at the same time (remote files: overlapping requests).
  int header_threads = 8;
  // > 0: the checkpoint must hold per-rank shard files of exactly ranks 0..expect_ranks-1
  // (what the training job's world size says). A proof of completeness.
  int expect_ranks = 0;
  // Completeness that cannot be proven is a kUnproven problem (blocking), not only a note.
  bool strict = false;
  // The FP8 block size quantized weights are paired with (`--block-size`); default: config.json
  // beside the checkpoint (quantization_config.weight_block_size), else 128x128.
  std::optional<quant::BlockSize> quant_block;
};

// How a scan knows the checkpoint holds every byte its writer saved, or why it cannot know.
struct Completeness {
  bool proven = false;
  std::vector<std::string> by;  // "manifest", "global_shape", "expected ranks", "index", ...
  std::string unproven;         // when !proven: what is unknown and how to prove it
};

class CheckpointLayout {
 public:
  // `path` is a directory (its *.safetensors files and index json) or a single file.
  static absl::StatusOr<CheckpointLayout> Scan(FileSystem& fs, const std::string& path,
                                               const ScanOptions& options = {});

  const std::string& root() const { return root_; }
  CheckpointKind kind() const { return kind_; }
  const std::vector<FileInfo>& files() const { return files_; }
  const std::vector<TensorLayout>& tensors() const { return tensors_; }  // sorted by name
  const std::vector<Problem>& problems() const { return problems_; }
  const std::optional<IndexJson>& index() const { return index_; }
  const std::string& index_file() const { return index_file_; }  // empty when none
  const TensorLayout* FindTensor(absl::string_view name) const;
  // Number of distinct ranks (shard numbers) for DCP checkpoints, else 0.
  int rank_count() const { return rank_count_; }
  uint64_t total_tensor_bytes() const;
  // safeshard.complete.json, when present and valid.
  const std::optional<Manifest>& manifest() const { return manifest_; }
  const Completeness& completeness() const { return completeness_; }
  // Compares tensor names and global shapes with a reference model (e.g. the HF model the run
  // started from): every difference is a kReference problem; a full match proves completeness.
  void CheckAgainstReference(const CheckpointLayout& reference);
  // Whether any problem is blocking (IsBlocking).
  bool HasBlockingProblem() const;
  // Block-quantized weights and their scales (FP8 X.weight + X.weight_scale_inv, MXFP4
  // X_blocks + X_scales), paired; the FP8 block size is config.json's
  // quantization_config.weight_block_size beside the checkpoint, else 128x128.
  const std::vector<quant::QuantPair>& quantized() const { return quantized_; }
  // The logical weight a tensor belongs to ("" when it is not part of a quantized pair).
  const quant::QuantPair* QuantPairOf(absl::string_view tensor) const;

 private:
  std::string root_;
  CheckpointKind kind_ = CheckpointKind::kEmpty;
  std::vector<FileInfo> files_;
  std::vector<TensorLayout> tensors_;
  std::vector<Problem> problems_;
  std::optional<IndexJson> index_;
  std::string index_file_;
  int rank_count_ = 0;
  std::optional<Manifest> manifest_;
  Completeness completeness_;
  bool strict_ = false;
  int expect_ranks_ = 0;
  bool reference_matched_ = false;
  bool single_path_ = false;  // a file was scanned by its path, not a directory
  std::vector<quant::QuantPair> quantized_;
  // Weight and scale names -> index into quantized_ (QuantPairOf runs once per tensor).
  absl::flat_hash_map<std::string, size_t> quant_of_;
  void DecideCompleteness();
  void FindQuantized(FileSystem& fs, std::optional<quant::BlockSize> block);
};

// Re-reads every file the manifest lists (pread, never mapped) and compares its XXH3-64, and
// each tensor's, with the manifest: kChecksum problems name the file and the tensor, and the
// byte range. Files without recorded checksums are listed in `unchecked`.
struct ChecksumReport {
  std::vector<Problem> problems;
  std::vector<std::string> unchecked;  // files the manifest has no checksum for
  uint64_t bytes = 0;
};
absl::StatusOr<ChecksumReport> VerifyChecksums(FileSystem& fs, const CheckpointLayout& layout);

// What replacing the checkpoint already in an output directory would remove (`out_dir` is that
// directory, as FileSystem::OpenBeneath gives it; `shown` names it in messages): its index
// json(s) first, then its completion manifest, then its model files. Only what is provably an
// earlier result goes: files its index or its (consolidated) manifest names, and files named
// like an HF model file (model.safetensors, model-IIIII-of-NNNNN.safetensors and the diffusers
// names). kFailedPrecondition, removing nothing, when the directory holds per-rank shards (by
// name, by DCP_SHARDING_INFO in the header, or under a per-rank manifest) or any other
// .safetensors file (an adapter, a user's file): never deleted on a guess.
absl::StatusOr<std::vector<std::string>> ReplaceableResult(FileSystem& out_dir,
                                                           const std::string& shown);
// The step consolidate and remap share before writing into `out_dir`: kAlreadyExists when it
// holds an earlier result and `overwrite` is false (a lone manifest needs no --overwrite), else
// the temporary files of dead runs and the earlier result are removed (in ReplaceableResult's
// order) and the directory synced. Returns the temporary files removed.
absl::StatusOr<std::vector<std::string>> ClearEarlierResult(FileSystem& out_dir,
                                                            const std::string& shown,
                                                            bool overwrite);

// kInvalidArgument when `output_dir` is the input directory by identity (st_dev/st_ino on the
// local file system: any spelling, ".", "..", symlinks), or holds one of the input files under
// any name (symlinks from the input into it).
absl::Status CheckOutputIsNotInput(FileSystem& fs, const CheckpointLayout& input,
                                   const std::string& output_dir);

// XXH3-64 of a whole file and of each tensor of its header (in data order), hashed from its
// mapping (local files) or read with pread (remote ones).
// `second_thread`: a file of 64 MiB or more hashes its whole-file XXH3 on a second thread.
absl::StatusOr<ManifestFile> ChecksumFile(ReadableFile& file, const Header& header,
                                          bool second_thread = true);

// Reads and validates one file's header (8-byte length, then N bytes) without touching data.
absl::StatusOr<Header> ReadHeader(FileSystem& fs, const std::string& path);
absl::StatusOr<Header> ReadHeader(const ReadableFile& file);

// What a scan saw of a file: enough to tell later whether it is still that file.
struct ScannedIdentity {
  uint64_t size = 0;
  uint64_t data_start = 0;   // 8 + N
  uint64_t fingerprint = 0;  // HeaderFingerprint of the N header bytes
};
ScannedIdentity IdentityOf(const FileInfo& info);  // requires info.header
// kAborted naming the file when `file` (opened after the scan) has another size or other header
// bytes than the scan saw: it was replaced or rewritten meanwhile, and offsets planned from the
// scan would copy the wrong bytes. `header_bytes`, when given, are the file's bytes
// [8, data_start) already in memory (e.g. mapped); otherwise they are read from `file`.
absl::Status CheckUnchanged(const ReadableFile& file, const ScannedIdentity& scanned,
                            std::optional<absl::string_view> header_bytes = std::nullopt);

// Opens and maps a scanned file, then checks it is still the file the scan saw (its header is
// compared from the mapping: no extra read).
struct MappedInput {
  std::unique_ptr<ReadableFile> file;
  std::shared_ptr<const MappedRegion> map;
};
absl::StatusOr<MappedInput> MapUnchanged(FileSystem& fs, const std::string& path,
                                         const ScannedIdentity& scanned);

// Checks that `chunks` (same rank as `shape`) tile `shape` exactly; appends kGap, kOverlap
// and kOutOfBounds problems naming the tensor and the element ranges. Exposed for tests.
void CheckCoverage(const std::string& tensor, const std::vector<uint64_t>& shape,
                   const std::vector<Chunk>& chunks, const std::vector<FileInfo>& files,
                   const ScanOptions& options, std::vector<Problem>* problems);

}  // namespace safeshard

#endif  // SAFESHARD_CORE_LAYOUT_LAYOUT_H_
