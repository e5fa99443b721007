#include "core/format/manifest.h"

#include <xxhash.h>
#include <set>

#include "absl/strings/str_cat.h"
#include "core/format/filenames.h"
#include "core/format/internal/json_util.h"
#include "core/format/internal/utf8.h"
#include "nlohmann/json.hpp"

namespace safeshard {
namespace {

using internal::Quote;

bool ParseHex64(const nlohmann::json& v, uint64_t* out) {
  if (!v.is_string()) return false;
  const std::string& s = v.get_ref<const std::string&>();
  if (s.size() != 16) return false;
  uint64_t r = 0;
  for (char c : s) {
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else {
      return false;
    }
    r = (r << 4) | static_cast<uint64_t>(d);
  }
  *out = r;
  return true;
}

}  // namespace

const ManifestFile* Manifest::Find(absl::string_view name) const {
  for (const ManifestFile& f : files) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

absl::StatusOr<Manifest> ParseManifest(absl::string_view text, absl::string_view file) {
  auto bad = [&](absl::string_view what) {
    return absl::DataLossError(absl::StrCat(file, ": invalid completion manifest: ", what));
  };
  if (text.size() > kMaxManifestBytes) {
    return bad(absl::StrCat(text.size(), " bytes, over the ", kMaxManifestBytes, "-byte limit"));
  }
  if (size_t b = internal::FirstInvalidUtf8(text); b != absl::string_view::npos) {
    return bad(absl::StrCat("not valid UTF-8 at byte offset ", b));
  }
  nlohmann::json root;
  internal::StrictParseResult pr = internal::ParseJsonStrict(text, &root);
  if (!pr.ok) {
    return bad(absl::StrCat("not valid JSON at byte offset ", pr.error_byte, ": ", pr.error));
  }
  if (pr.duplicate) {
    return bad(
        absl::StrCat("key ", Quote(*pr.duplicate), " repeated at byte offset ", pr.duplicate_byte));
  }
  if (!root.is_object()) return bad("top level is not a JSON object");
  Manifest m;
  // A manifest without "format" is read as version 1 (hand-written ones often omit it).
  auto fmt = root.find("format");
  if (fmt != root.end() && (!fmt->is_string() || fmt->get_ref<const std::string&>().rfind(
                                                     "safeshard.complete/", 0) != 0)) {
    return bad(absl::StrCat("\"format\" must be \"", kManifestFormat, "\""));
  }
  if (fmt != root.end() && *fmt != std::string(kManifestFormat)) {
    return bad(absl::StrCat("format ", fmt->dump(), " is newer than this safeshard understands (",
                            kManifestFormat, ")"));
  }
  if (auto k = root.find("kind"); k != root.end()) {
    if (!k->is_string() ||
        (*k != std::string(kManifestKindShards) && *k != std::string(kManifestKindConsolidated))) {
      return bad(absl::StrCat("\"kind\" ", k->dump(), " is neither \"", kManifestKindShards,
                              "\" nor \"", kManifestKindConsolidated, "\""));
    }
    m.kind = k->get<std::string>();
  }
  if (auto r = root.find("ranks"); r != root.end() && !r->is_null()) {
    uint64_t v;
    if (!internal::ReadU64(*r, &v) || v < 1 || v > static_cast<uint64_t>(kMaxManifestRanks)) {
      return bad(
          absl::StrCat("\"ranks\" ", r->dump(), " is not an integer in 1..", kMaxManifestRanks));
    }
    m.ranks = static_cast<int>(v);
  }
  if (auto c = root.find("checksum"); c != root.end() && !c->is_null()) {
    if (!c->is_string() || *c != std::string(kChecksumAlgorithm)) {
      return bad(
          absl::StrCat("checksum algorithm ", c->dump(), " is not \"", kChecksumAlgorithm, "\""));
    }
  }
  auto files = root.find("files");
  if (files == root.end() || !files->is_array()) return bad("\"files\" must be an array");
  std::set<std::string> seen;
  for (size_t i = 0; i < files->size(); ++i) {
    const nlohmann::json& f = (*files)[i];
    const std::string where = absl::StrCat("files[", i, "]");
    if (!f.is_object()) return bad(absl::StrCat(where, " is not an object"));
    ManifestFile mf;
    auto name = f.find("name");
    if (name == f.end() || !name->is_string() ||
        !IsPlainFileName(name->get_ref<const std::string&>())) {
      return bad(absl::StrCat(where,
                              ": \"name\" must be a plain file name in the same directory, got ",
                              name == f.end() ? "nothing" : name->dump()));
    }
    mf.name = name->get<std::string>();
    if (!seen.insert(mf.name).second) {
      return bad(absl::StrCat(where, ": file ", Quote(mf.name), " listed twice"));
    }
    auto size = f.find("size");
    if (size == f.end() || !internal::ReadU64(*size, &mf.size)) {
      return bad(absl::StrCat(where, " (", Quote(mf.name),
                              "): \"size\" must be a non-negative 64-bit integer"));
    }
    if (auto x = f.find("xxh3_64"); x != f.end() && !x->is_null()) {
      uint64_t v;
      if (!ParseHex64(*x, &v)) {
        return bad(absl::StrCat(where, " (", Quote(mf.name), "): \"xxh3_64\" ", x->dump(),
                                " is not 16 hex digits"));
      }
      mf.xxh3 = v;
    }
    if (auto t = f.find("tensors_xxh3_64"); t != f.end() && !t->is_null()) {
      if (!t->is_array()) {
        return bad(
            absl::StrCat(where, " (", Quote(mf.name), "): \"tensors_xxh3_64\" is not an array"));
      }
      mf.tensor_xxh3.reserve(t->size());
      for (const auto& e : *t) {
        uint64_t v;
        if (!ParseHex64(e, &v)) {
          return bad(absl::StrCat(where, " (", Quote(mf.name), "): tensors_xxh3_64 entry ",
                                  e.dump(), " is not 16 hex digits"));
        }
        mf.tensor_xxh3.push_back(v);
      }
    }
    m.files.push_back(std::move(mf));
  }
  return m;
}

std::string SerializeManifest(const Manifest& m) {
  nlohmann::ordered_json j;
  j["format"] = kManifestFormat;
  j["kind"] = m.kind;
  if (m.ranks) j["ranks"] = *m.ranks;
  j["checksum"] = kChecksumAlgorithm;
  nlohmann::ordered_json files = nlohmann::ordered_json::array();
  for (const ManifestFile& f : m.files) {
    nlohmann::ordered_json e;
    e["name"] = f.name;
    e["size"] = f.size;
    if (f.xxh3) e["xxh3_64"] = ChecksumHex(*f.xxh3);
    if (!f.tensor_xxh3.empty()) {
      nlohmann::ordered_json t = nlohmann::ordered_json::array();
      for (uint64_t v : f.tensor_xxh3) t.push_back(ChecksumHex(v));
      e["tensors_xxh3_64"] = std::move(t);
    }
    files.push_back(std::move(e));
  }
  j["files"] = std::move(files);
  return j.dump(2) + "\n";
}

ContentHasher::ContentHasher() : state_(XXH3_createState()) {
  XXH3_64bits_reset(static_cast<XXH3_state_t*>(state_));
}
ContentHasher::~ContentHasher() {
  XXH3_freeState(static_cast<XXH3_state_t*>(state_));
}
void ContentHasher::Update(absl::string_view bytes) {
  XXH3_64bits_update(static_cast<XXH3_state_t*>(state_), bytes.data(), bytes.size());
}
uint64_t ContentHasher::Digest() const {
  return XXH3_64bits_digest(static_cast<const XXH3_state_t*>(state_));
}
uint64_t Xxh3(absl::string_view bytes) {
  return XXH3_64bits(bytes.data(), bytes.size());
}

std::string ChecksumHex(uint64_t v) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) out[i] = kDigits[v & 0xf];
  return out;
}

}  // namespace safeshard
