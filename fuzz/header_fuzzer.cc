// libFuzzer target for the untrusted-input parsers: safetensors header (length prefix + JSON),
// DCP sharding info (logical_fqn, global_shape, physical keys), model.safetensors.index.json and
// the completion manifest safeshard.complete.json. The first input byte picks the parser
// (byte % 3: 0 header, 1 index json, 2 manifest).
// Invariants checked beyond "no crash": an accepted header re-serialises to one that parses to
// the same tensors, and its offsets tile the buffer; the fast paths of the header and sharding
// info parsers agree with the strict DOM parsers (never accept more, same results, same errors).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>

#include "core/format/header.h"
#include "core/format/index_json.h"
#include "core/format/manifest.h"
#include "core/format/sharding.h"

namespace {

void Check(bool ok) {
  if (!ok) std::abort();
}

bool SameHeader(const safeshard::Header& a, const safeshard::Header& b) {
  if (a.tensors.size() != b.tensors.size() || a.metadata != b.metadata ||
      a.has_metadata != b.has_metadata || a.header_size != b.header_size ||
      a.buffer_size != b.buffer_size || a.fingerprint != b.fingerprint) {
    return false;
  }
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const safeshard::TensorEntry &x = a.tensors[i], &y = b.tensors[i];
    if (x.name != y.name || x.dtype != y.dtype || x.shape != y.shape || x.begin != y.begin ||
        x.end != y.end || a.Find(x.name) != &x) {
      return false;
    }
  }
  return true;
}

void FuzzHeader(absl::string_view data) {
  absl::StatusOr<uint64_t> n = safeshard::ParseHeaderLength(data.substr(0, 64), data.size(), "f");
  if (!n.ok()) return;
  const absl::string_view json = data.substr(8, *n);
  absl::StatusOr<safeshard::Header> h = safeshard::ParseHeader(json, data.size(), "f");
  // The fast path never accepts what the DOM parser refuses, and agrees with it when it accepts;
  // ParseHeader's answer (result or error) is the DOM parser's.
  absl::StatusOr<safeshard::Header> dom =
      safeshard::internal::ParseHeaderWithDom(json, data.size(), "f");
  std::optional<safeshard::Header> fast = safeshard::internal::ParseHeaderFast(json, data.size());
  Check(h.ok() == dom.ok());
  Check(h.ok() ? SameHeader(*h, *dom) : h.status() == dom.status());
  if (fast) Check(dom.ok() && SameHeader(*fast, *dom));
  if (!h.ok()) return;
  uint64_t sum = 0;
  for (const auto& t : h->tensors) sum += t.size();
  Check(sum == h->buffer_size);
  absl::StatusOr<std::optional<safeshard::ShardingInfo>> info =
      safeshard::ReadShardingInfo(*h, "f");
  absl::StatusOr<std::optional<safeshard::ShardingInfo>> info_dom =
      safeshard::internal::ReadShardingInfoWithDom(*h, "f");
  Check(info.ok() == info_dom.ok());
  if (!info.ok()) Check(info.status() == info_dom.status());
  absl::StatusOr<std::optional<safeshard::ShardingByTensor>> by =
      safeshard::ReadShardingByTensor(*h, "f");
  Check(by.status() == info_dom.status());
  if (info.ok()) {
    Check(info->has_value() == info_dom->has_value());
    Check(by->has_value() == info_dom->has_value());
    if (info->has_value()) {
      Check((*info)->saved_offsets == (*info_dom)->saved_offsets);
      Check((*info)->logical_fqn == (*info_dom)->logical_fqn);
      Check((*info)->global_shape == (*info_dom)->global_shape);
      for (size_t i = 0; i < h->tensors.size(); ++i) {
        const std::string& name = h->tensors[i].name;
        Check((*by)->saved_offsets[i] == (*info_dom)->saved_offsets.at(name));
        auto lf = (*info_dom)->logical_fqn.find(name);
        Check((*by)->logical_fqn[i] == (lf == (*info_dom)->logical_fqn.end() ? "" : lf->second));
        auto gs = (*info_dom)->global_shape.find(name);
        Check((*by)->global_shape[i].has_value() == (gs != (*info_dom)->global_shape.end()));
        if ((*by)->global_shape[i]) Check(*(*by)->global_shape[i] == gs->second);
      }
    }
  }
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
