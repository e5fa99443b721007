#include "core/consolidate/spec.h"

#include <cctype>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/format/internal/json_util.h"
#include "core/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace safeshard {
namespace {

absl::Status Bad(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

}  // namespace

absl::StatusOr<DType> ParseCastDType(absl::string_view name) {
  std::string n = absl::AsciiStrToLower(absl::StripAsciiWhitespace(name));
  if (absl::StartsWith(n, "torch.")) n = n.substr(6);
  if (n == "bf16" || n == "bfloat16") return DType::kBF16;
  if (n == "f16" || n == "fp16" || n == "float16" || n == "half") return DType::kF16;
  if (n == "f32" || n == "fp32" || n == "float32" || n == "float") return DType::kF32;
  if (n == "f64" || n == "fp64" || n == "float64" || n == "double") return DType::kF64;
  return absl::InvalidArgumentError(absl::StrCat(
      internal::Quote(name),
      " is not a dtype to cast to: bf16, f16, f32 or f64 (also bfloat16, "
      "torch.bfloat16, half, float, double); FP8 and integer targets are never produced"));
}

absl::Status ValidateConsolidateSpec(const ConsolidateSpec& s) {
  const int choices = !s.mapping_file.empty() + !s.reference.empty() + !s.max_shard_size.empty();
  if (choices > 1) {
    return absl::InvalidArgumentError(
        "choose one of mapping_file (--mapping), reference (--reference) and max_shard_size "
        "(--max-shard-size): each decides the output files");
  }
  if (s.restore_dtypes && s.reference.empty()) {
    return Bad("restore_dtypes", "needs reference (the model whose dtypes to restore)");
  }
  if (s.restore_dtypes && !s.cast_dtype.empty()) {
    return Bad("cast_dtype", "contradicts restore_dtypes: choose one");
  }
  if (!s.max_shard_size.empty()) {
    const std::string t(absl::StripAsciiWhitespace(s.max_shard_size));
    if (!t.empty() && std::isdigit(static_cast<unsigned char>(t.back()))) {
      return Bad("max_shard_size", absl::StrCat(internal::Quote(s.max_shard_size),
                                                " has no unit; write e.g. 5GB, 500MiB (or ", t,
                                                "B if bytes are really meant)"));
    }
    if (absl::StatusOr<uint64_t> n = ParseByteSize(t); !n.ok())
      return Bad("max_shard_size", n.status().message());
  }
  if (s.unmapped != "error" && s.unmapped != "first" && s.unmapped != "own-file") {
    return Bad("unmapped",
               absl::StrCat(internal::Quote(s.unmapped), " is not error, first or own-file"));
  }
  if (!s.cast_dtype.empty()) {
    if (absl::StatusOr<DType> d = ParseCastDType(s.cast_dtype); !d.ok())
      return Bad("cast_dtype", d.status().message());
  }
  if (!s.dequantize.empty()) {
    if (absl::StatusOr<DType> d = quant::ParseDequantizeTarget(s.dequantize); !d.ok())
      return Bad("dequantize", d.status().message());
  }
  if (!s.dequantize.empty() && !s.cast_dtype.empty()) {
    absl::StatusOr<DType> d = quant::ParseDequantizeTarget(s.dequantize);
    absl::StatusOr<DType> c = ParseCastDType(s.cast_dtype);
    if (d.ok() && c.ok() && *d != *c) {
      return Bad("cast_dtype",
                 absl::StrCat("contradicts dequantize (", DTypeName(*c), " vs ", DTypeName(*d),
                              "): the model would mix both; "
                              "choose one dtype"));
    }
  }
  if (!s.block_size.empty()) {
    if (s.dequantize.empty()) return Bad("block_size", "only applies with dequantize");
    if (absl::StatusOr<quant::BlockSize> b = quant::ParseBlockSize(s.block_size); !b.ok())
      return Bad("block_size", b.status().message());
  }
  if (!s.key_map.empty()) {
    if (absl::StatusOr<KeyMap> km = KeyMap::Create(s.key_map); !km.ok())
      return Bad("key_map", km.status().message());
  }
  for (const auto& [k, v] : s.metadata) {
    if (k.empty()) return Bad("metadata", "an empty key");
    if (k == "format") return Bad("metadata", "\"format\" is always \"pt\"");
    if (k == "DCP_SHARDING_INFO") {
      return Bad("metadata",
                 "DCP_SHARDING_INFO marks per-rank shards; a consolidated file has none");
    }
  }
  if (s.threads < 0 || s.threads > 1024) return Bad("threads", "must be 0 (every core) to 1024");
  if (s.expect_ranks < 0 || s.expect_ranks > (1 << 20))
    return Bad("expect_ranks", "must be 0 (not checked) to 1048576");
  return absl::OkStatus();
}

std::string SerializeConsolidateSpec(const ConsolidateSpec& s) {
  nlohmann::ordered_json j;
  j["mapping_file"] = s.mapping_file;
  j["reference"] = s.reference;
  j["max_shard_size"] = s.max_shard_size;
  j["unmapped"] = s.unmapped;
  j["restore_dtypes"] = s.restore_dtypes;
  j["cast_dtype"] = s.cast_dtype;
  nlohmann::ordered_json rules = nlohmann::ordered_json::array();
  for (const KeyMap::Rule& r : s.key_map) rules.push_back({r.pattern, r.replacement});
  j["key_map"] = std::move(rules);
  j["metadata"] = s.metadata;
  j["diffusers"] = s.diffusers;
  j["threads"] = s.threads;
  j["verify"] = s.verify;
  j["overwrite"] = s.overwrite;
  j["expect_ranks"] = s.expect_ranks;
  j["strict"] = s.strict;
  j["checksums"] = s.checksums;
  j["model_files"] = s.model_files;
  j["dequantize"] = s.dequantize;
  j["block_size"] = s.block_size;
  return internal::DumpJson(j, 2);
}

absl::StatusOr<ConsolidateSpec> ParseConsolidateSpec(absl::string_view json) {
  nlohmann::json root;
  std::vector<std::pair<std::string, nlohmann::json>> members;
  internal::StrictParseResult pr = internal::ParseJsonStrict(json, &root, &members);
  if (!pr.ok)
    return absl::InvalidArgumentError(
        absl::StrCat("consolidation spec: ", pr.error, " at byte ", pr.error_byte));
  if (pr.duplicate) {
    return absl::InvalidArgumentError(
        absl::StrCat("consolidation spec: ", internal::Quote(*pr.duplicate), " given twice"));
  }
  if (!root.is_object()) return absl::InvalidArgumentError("consolidation spec: not a JSON object");
  ConsolidateSpec s;
  auto str = [](const nlohmann::json& v, std::string* out) {
    if (!v.is_string()) return false;
    *out = v.get<std::string>();
    return true;
  };
  auto boolean = [](const nlohmann::json& v, bool* out) {
    if (!v.is_boolean()) return false;
    *out = v.get<bool>();
    return true;
  };
  auto integer = [](const nlohmann::json& v, int* out) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > (1 << 30))
      return false;
    *out = static_cast<int>(v.get<int64_t>());
    return true;
  };
  for (const auto& [key, v] : members) {
    bool ok = false;
    if (key == "mapping_file")
      ok = str(v, &s.mapping_file);
    else if (key == "reference")
      ok = str(v, &s.reference);
    else if (key == "max_shard_size")
      ok = str(v, &s.max_shard_size);
    else if (key == "unmapped")
      ok = str(v, &s.unmapped);
    else if (key == "restore_dtypes")
      ok = boolean(v, &s.restore_dtypes);
    else if (key == "cast_dtype")
      ok = str(v, &s.cast_dtype);
    else if (key == "diffusers")
      ok = boolean(v, &s.diffusers);
    else if (key == "threads")
      ok = integer(v, &s.threads);
    else if (key == "verify")
      ok = boolean(v, &s.verify);
    else if (key == "overwrite")
      ok = boolean(v, &s.overwrite);
    else if (key == "expect_ranks")
      ok = integer(v, &s.expect_ranks);
    else if (key == "strict")
      ok = boolean(v, &s.strict);
    else if (key == "checksums")
      ok = boolean(v, &s.checksums);
    else if (key == "model_files")
      ok = boolean(v, &s.model_files);
    else if (key == "dequantize")
      ok = str(v, &s.dequantize);
    else if (key == "block_size")
      ok = str(v, &s.block_size);
    else if (key == "key_map") {
      absl::StatusOr<KeyMap> km = KeyMap::FromJson(internal::DumpJson(v));
      if (!km.ok()) return Bad("consolidation spec: key_map", km.status().message());
      s.key_map = km->rules();
      ok = true;
    } else if (key == "metadata") {
      ok = v.is_object();
      for (auto it = v.begin(); ok && it != v.end(); ++it) {
        ok = it.value().is_string();
        if (ok) s.metadata[it.key()] = it.value().get<std::string>();
      }
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("consolidation spec: unknown key ", internal::Quote(key)));
    }
    if (!ok)
      return absl::InvalidArgumentError(
          absl::StrCat("consolidation spec: ", key, " has the wrong type"));
  }
  RETURN_IF_ERROR(ValidateConsolidateSpec(s));
  return s;
}

absl::StatusOr<std::unique_ptr<ResolvedConsolidation>> ResolveConsolidateSpec(
    FileSystem& fs, const ConsolidateSpec& s) {
  RETURN_IF_ERROR(ValidateConsolidateSpec(s));
  auto r = std::make_unique<ResolvedConsolidation>();
  ConsolidateOptions& o = r->options;
  if (!s.mapping_file.empty()) {
    ASSIGN_OR_RETURN(std::string text, ReadOptionFile(s.mapping_file));
    ASSIGN_OR_RETURN(o.fqn_to_index, ParseMappingJson(text, s.mapping_file));
  }
  if (!s.reference.empty()) {
    ASSIGN_OR_RETURN(o.fqn_to_index, MappingFromReference(fs, s.reference, &r->warnings));
    if (s.restore_dtypes) {
      ASSIGN_OR_RETURN(o.fqn_to_dtype, DTypesFromReference(fs, s.reference));
    }
  }
  if (!s.max_shard_size.empty()) {
    ASSIGN_OR_RETURN(o.max_shard_size, ParseByteSize(s.max_shard_size));
  }
  o.unmapped = s.unmapped == "first"      ? UnmappedPolicy::kFirst
               : s.unmapped == "own-file" ? UnmappedPolicy::kOwnFile
                                          : UnmappedPolicy::kError;
  if (!s.cast_dtype.empty()) {
    ASSIGN_OR_RETURN(o.cast_dtype, ParseCastDType(s.cast_dtype));
  }
  if (!s.key_map.empty()) {
    ASSIGN_OR_RETURN(KeyMap km, KeyMap::Create(s.key_map));
    r->key_map = std::make_unique<KeyMap>(std::move(km));
    o.key_map = r->key_map.get();
  }
  o.metadata = s.metadata;
  o.diffusers_index = s.diffusers;
  o.threads = s.threads;
  o.verify = s.verify;
  o.overwrite = s.overwrite;
  o.expect_ranks = s.expect_ranks;
  o.strict = s.strict;
  o.checksums = s.checksums;
  o.copy_model_files = s.model_files;
  if (!s.dequantize.empty()) {
    ASSIGN_OR_RETURN(o.dequantize, quant::ParseDequantizeTarget(s.dequantize));
  }
  if (!s.block_size.empty()) {
    ASSIGN_OR_RETURN(o.block_size, quant::ParseBlockSize(s.block_size));
  }
  return r;
}

}  // namespace safeshard
