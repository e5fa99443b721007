#include "core/format/index_json.h"

#include "absl/strings/str_cat.h"
#include "core/format/filenames.h"
#include "core/format/internal/json_util.h"
#include "core/format/internal/utf8.h"
#include "nlohmann/json.hpp"

namespace safeshard {

using internal::Quote;

absl::StatusOr<IndexJson> ParseIndexJson(absl::string_view text, absl::string_view file) {
  auto bad = [&](absl::string_view what) {
    return absl::DataLossError(absl::StrCat(file, ": ", what));
  };
  if (size_t b = internal::FirstInvalidUtf8(text); b != absl::string_view::npos) {
    return bad(absl::StrCat("not valid UTF-8 at byte offset ", b));
  }
  nlohmann::json root;
  internal::StrictParseResult pr = internal::ParseJsonStrict(text.begin(), text.end(), &root);
  if (!pr.ok) {
    return bad(absl::StrCat("not valid JSON at byte offset ", pr.error_byte, ": ", pr.error));
  }
  if (pr.duplicate) {
    return bad(absl::StrCat("key ", Quote(*pr.duplicate), " appears more than once"));
  }
  if (!root.is_object()) return bad("top level is not a JSON object");
  IndexJson out;
  auto md = root.find("metadata");
  if (md != root.end() && !md->is_null()) {
    if (!md->is_object()) return bad("\"metadata\" is not an object");
    for (auto it = md->begin(); it != md->end(); ++it) {
      if (it.key() == "total_size") {
        uint64_t v;
        if (!internal::ReadU64(it.value(), &v, /*allow_float=*/true)) {
          return bad(absl::StrCat("metadata.total_size ", it.value().dump(),
                                  " is not a non-negative 64-bit integer"));
        }
        out.total_size = v;
      } else {
        out.extra_metadata[it.key()] = it.value().dump();
      }
    }
  }
  auto wm = root.find("weight_map");
  if (wm == root.end()) return bad("no \"weight_map\" object");
  if (!wm->is_object()) return bad("\"weight_map\" is not an object");
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it.value().is_string()) {
      return bad(absl::StrCat("weight_map entry for tensor ", Quote(it.key()),
                              " is not a file name string"));
    }
    const std::string& f = it.value().get_ref<const std::string&>();
    if (!IsPlainFileName(f)) {
      return bad(absl::StrCat("weight_map entry for tensor ", Quote(it.key()), " is ", Quote(f),
                              ": must be a plain file name in the same directory (no absolute "
                              "path, separator or \"..\")"));
    }
    out.weight_map[it.key()] = f;
  }
  return out;
}

std::string SerializeIndexJson(const IndexJson& index) {
  nlohmann::json root = nlohmann::json::object();
  nlohmann::json md = nlohmann::json::object();
  for (const auto& [k, v] : index.extra_metadata) md[k] = nlohmann::json::parse(v);
  if (index.total_size) md["total_size"] = *index.total_size;
  root["metadata"] = md;
  nlohmann::json wm = nlohmann::json::object();
  for (const auto& [k, v] : index.weight_map) wm[k] = v;
  root["weight_map"] = wm;
  return root.dump(2) + "\n";
}

}  // namespace safeshard
