// libFuzzer target for the untrusted-input parsers: safetensors header (length prefix + JSON),
// DCP sharding info (logical_fqn, global_shape, physical keys), model.safetensors.index.json and
// the completion manifest safeshard.complete.json. The first input byte picks the parser
// (byte % 3: 0 header, 1 index json, 2 manifest).
// Invariants checked beyond "no crash": an accepted header re-serialises to one that parses to
// the same tensors, and its offsets tile the buffer.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/format/header.h"
#include "core/format/index_json.h"
#include "core/format/manifest.h"
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
  absl::StatusOr<std::optional<safeshard::ShardingInfo>> info =
      safeshard::ReadShardingInfo(*h, "f");
  if (info.ok() && info->has_value()) {
    // What was read serialises to sharding info that reads back the same.
    safeshard::Header h3 = *h;
    h3.metadata["DCP_SHARDING_INFO"] = safeshard::SerializeShardingInfo(**info);
    absl::StatusOr<std::optional<safeshard::ShardingInfo>> back =
        safeshard::ReadShardingInfo(h3, "g");
    Check(back.ok() && back->has_value());
    Check((*back)->saved_offsets == (*info)->saved_offsets);
    Check((*back)->logical_fqn == (*info)->logical_fqn);
    Check((*back)->global_shape == (*info)->global_shape);
  }
  std::string again = safeshard::SerializeHeader(*h);
  absl::StatusOr<uint64_t> n2 =
      safeshard::ParseHeaderLength(again, again.size() + h->buffer_size, "g");
  Check(n2.ok());
  absl::StatusOr<safeshard::Header> h2 = safeshard::ParseHeader(absl::string_view(again).substr(8),
                                                                again.size() + h->buffer_size, "g");
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

void FuzzManifest(absl::string_view data) {
  absl::StatusOr<safeshard::Manifest> m = safeshard::ParseManifest(data, "m");
  if (!m.ok()) return;
  const std::string text = safeshard::SerializeManifest(*m);
  absl::StatusOr<safeshard::Manifest> again = safeshard::ParseManifest(text, "n");
  Check(again.ok());
  Check(again->kind == m->kind);
  Check(again->ranks == m->ranks);
  Check(again->files.size() == m->files.size());
  for (size_t i = 0; i < m->files.size(); ++i) {
    Check(again->files[i].name == m->files[i].name);
    Check(again->files[i].size == m->files[i].size);
    Check(again->files[i].xxh3 == m->files[i].xxh3);
    Check(again->files[i].tensor_xxh3 == m->files[i].tensor_xxh3);
  }
  Check(safeshard::SerializeManifest(*again) == text);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  absl::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 3) {
    case 0: FuzzHeader(rest); break;
    case 1: FuzzIndex(rest); break;
    default: FuzzManifest(rest); break;
  }
  return 0;
}
