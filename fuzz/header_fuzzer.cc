// libFuzzer target for the untrusted-input parsers: safetensors header (length prefix + JSON),
// DCP sharding info, and model.safetensors.index.json. The first input byte picks the parser.
// Invariants checked beyond "no crash": an accepted header re-serialises to one that parses to
// the same tensors, and its offsets tile the buffer.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/format/header.h"
#include "core/format/index_json.h"
#include "core/format/sharding.h"

namespace {

void Check(bool ok) {
  if (!ok) std::abort();
}

void FuzzHeader(absl::string_view data) {
  absl::StatusOr<uint64_t> n = safeshard::ParseHeaderLength(data.substr(0, 64), data.size(), "f");
  if (!n.ok()) return;
  absl::StatusOr<safeshard::Header> h =
      safeshard::ParseHeader(data.substr(8, *n), data.size(), "f");
  if (!h.ok()) return;
  uint64_t sum = 0;
  for (const auto& t : h->tensors) sum += t.size();
  Check(sum == h->buffer_size);
  (void)safeshard::ReadShardingInfo(*h, "f");
  std::string again = safeshard::SerializeHeader(*h);
  absl::StatusOr<uint64_t> n2 =
      safeshard::ParseHeaderLength(again, again.size() + h->buffer_size, "g");
  Check(n2.ok());
  absl::StatusOr<safeshard::Header> h2 = safeshard::ParseHeader(
      absl::string_view(again).substr(8), again.size() + h->buffer_size, "g");
  Check(h2.ok());
  Check(h2->tensors.size() == h->tensors.size());
  for (size_t i = 0; i < h->tensors.size(); ++i) {
    Check(h2->tensors[i].name == h->tensors[i].name);
    Check(h2->tensors[i].begin == h->tensors[i].begin);
    Check(h2->tensors[i].shape == h->tensors[i].shape);
  }
  Check(h2->metadata == h->metadata);
}

void FuzzIndex(absl::string_view data) {
  absl::StatusOr<safeshard::IndexJson> idx = safeshard::ParseIndexJson(data, "i");
  if (!idx.ok()) return;
  absl::StatusOr<safeshard::IndexJson> again =
      safeshard::ParseIndexJson(safeshard::SerializeIndexJson(*idx), "j");
  Check(again.ok());
  Check(again->weight_map == idx->weight_map);
  Check(again->total_size == idx->total_size);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  absl::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] & 1) {
    FuzzIndex(rest);
  } else {
    FuzzHeader(rest);
  }
  return 0;
}
