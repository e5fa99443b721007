// testing.h: helpers shared by safeshard's tests (testonly).
//
//   std::string dir = NewTempDir();                 // fresh directory per call
//   std::string bytes = BuildSafetensors({{"w", DType::kF32, {2, 2}}}, {{"format", "pt"}});
//   WriteFile(dir + "/a.safetensors", bytes);
//   std::optional<std::string> fixtures = FixturesDirOrSkip();  // in a TEST body
#ifndef SAFESHARD_CORE_TESTING_TESTING_H_
#define SAFESHARD_CORE_TESTING_TESTING_H_

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/format/header.h"
#include "core/io/filesystem.h"

namespace safeshard::testing {

// A new empty directory under $TEST_TMPDIR (or /tmp), unique per call.
std::string NewTempDir();

// A free TCP port on 127.0.0.1 (bound to port 0 and released; the kernel picks it).
int FreePort();

void WriteFile(const std::string& path, const std::string& bytes);
std::string ReadFile(const std::string& path);

// A complete safetensors file laid out canonically; tensor bytes are a deterministic pattern
// derived from the tensor name (or `fill` when given) so tests can compare bytes.
std::string BuildSafetensors(std::vector<TensorSpec> specs,
                             std::map<std::string, std::string> metadata = {},
                             std::optional<uint8_t> fill = std::nullopt);

// Builds a file from raw header JSON and a buffer: `u64 len(json)` + json + buffer.
std::string RawSafetensors(const std::string& json, const std::string& buffer);

// XORs `mask` into byte `offset` of tensor `tensor`'s data (row-major) in the checkpoint `dir`,
// whose tensor is stored whole in one file (a consolidated checkpoint): a one-byte corruption.
void FlipTensorByte(const std::string& dir, const std::string& tensor, uint64_t offset,
                    uint8_t mask = 0x01);

// Two parsed headers are the same: tensors (name, dtype, shape, offsets, in order, each found
// by name), metadata, sizes and fingerprint (gtest expectations).
void ExpectSameHeader(const Header& a, const Header& b);

// `s` as a JSON string literal (quotes and escapes included).
std::string Quoted(const std::string& s);

// The deterministic byte pattern of tensor `name` (n bytes).
std::string PatternBytes(const std::string& name, uint64_t n);

// Independent references for quantized formats, from the bit definitions alone (never from
// core/quant): a minifloat code's value from its sign, exponent field (with `bias`) and mantissa
// field; an 8-bit float code of `t` (F8_E4M3 FN, F8_E5M2, the FNUZ variants, F8_E8M0) with each
// format's NaN and infinity codes; float -> bfloat16 rounded to nearest even, by the bits.
double ReferenceMinifloat(unsigned code, int ebits, int mbits, int bias);
double ReferenceF8(DType t, unsigned code);
uint16_t ReferenceBf16(float f);

// A FileSystem that forwards every call to `base`; tests override the calls they fake.
class ForwardingFileSystem : public FileSystem {
 public:
  explicit ForwardingFileSystem(FileSystem* base) : base_(base) {}
  absl::StatusOr<FileStat> Stat(const std::string& p) override { return base_->Stat(p); }
  absl::StatusOr<std::vector<DirEntry>> List(const std::string& d) override {
    return base_->List(d);
  }
  absl::StatusOr<std::unique_ptr<ReadableFile>> OpenRead(const std::string& p) override {
    return base_->OpenRead(p);
  }
  absl::StatusOr<std::unique_ptr<WritableFile>> Create(const std::string& p) override {
    return base_->Create(p);
  }
  absl::StatusOr<std::unique_ptr<WritableFile>> OpenForWrite(const std::string& p) override {
    return base_->OpenForWrite(p);
  }
  absl::Status Rename(const std::string& a, const std::string& b) override {
    return base_->Rename(a, b);
  }
  absl::Status Remove(const std::string& p) override { return base_->Remove(p); }
  absl::Status MakeDirs(const std::string& d) override { return base_->MakeDirs(d); }
  absl::Status SyncDir(const std::string& d) override { return base_->SyncDir(d); }

 protected:
  FileSystem* base_;
};

// Replaces the local file `path` with `bytes` (a writer saving over it) just before it is opened
// for the `nth` time (1-based): what a consolidation sees when a checkpoint is rewritten between
// its scan and its copy.
class ReplaceOnOpenFileSystem : public ForwardingFileSystem {
 public:
  ReplaceOnOpenFileSystem(FileSystem* base, std::string path, int nth, std::string bytes)
      : ForwardingFileSystem(base), path_(std::move(path)), nth_(nth), bytes_(std::move(bytes)) {}
  absl::StatusOr<std::unique_ptr<ReadableFile>> OpenRead(const std::string& p) override {
    if (p == path_ && ++opened_ == nth_) {
      WriteFile(p + ".new", bytes_);
      std::rename((p + ".new").c_str(), p.c_str());
    }
    return base_->OpenRead(p);
  }
  int opened() const { return opened_.load(); }

 private:
  std::string path_;
  int nth_;
  std::string bytes_;
  std::atomic<int> opened_{0};
};

// $SAFESHARD_FIXTURES if set and a directory. When unset and $SAFESHARD_REQUIRE_FIXTURES is 1,
// the calling test fails; when merely unset, returns nullopt (the caller should GTEST_SKIP).
std::optional<std::string> FixturesDir();

}  // namespace safeshard::testing

// Skips the current test with a message when the fixtures directory is not configured.
#define SAFESHARD_REQUIRE_FIXTURES_OR_SKIP(var)                                          \
  std::optional<std::string> var##_opt = ::safeshard::testing::FixturesDir();            \
  if (!var##_opt) {                                                                      \
    GTEST_SKIP() << "SAFESHARD_FIXTURES is not set: fixture tests skipped (CI sets it)"; \
  }                                                                                      \
  const std::string var = *var##_opt

#endif  // SAFESHARD_CORE_TESTING_TESTING_H_
