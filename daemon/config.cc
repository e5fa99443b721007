#include "daemon/config.h"

#include "core/quant/quant.h"
#include "daemon/api.h"

#include "core/consolidate/consolidate.h"
#include "core/util/status_macros.h"

#include <cstdlib>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "core/format/internal/json_util.h"
#include "nlohmann/json.hpp"

namespace safeshard::daemon {
namespace {

using nlohmann::json;

absl::Status Unknown(const json& obj, const std::set<std::string>& allowed,
                     absl::string_view where) {
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    if (!allowed.count(it.key())) {
      return absl::InvalidArgumentError(
          absl::StrCat("config: unknown key \"", where, it.key(), "\""));
    }
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status Get(const json& obj, const char* key, T* out, absl::string_view where = "") {
  auto it = obj.find(key);
  if (it == obj.end()) return absl::OkStatus();
  try {
    *out = it->get<T>();
  } catch (const std::exception&) {
    return absl::InvalidArgumentError(
        absl::StrCat("config: \"", where, key, "\" has the wrong type (", it->type_name(), ")"));
  }
  return absl::OkStatus();
}

#define CFG_RETURN(expr)      \
  do {                        \
    absl::Status s_ = (expr); \
    if (!s_.ok()) return s_;  \
  } while (0)

}  // namespace

std::string ExpandHome(const std::string& path) {
  if (path.rfind("~/", 0) == 0) {
    const char* home = std::getenv("HOME");
    return absl::StrCat(home ? home : "/root", path.substr(1));
  }
  return path;
}

void ResolvePaths(Config* c) {
  // Under systemd (StateDirectory=safeshard) the journal and the token live in the service's
  // state directory, else below $HOME.
  const char* state = std::getenv("STATE_DIRECTORY");
  std::string state_dir = state != nullptr ? std::string(state) : "";
  state_dir = state_dir.substr(0, state_dir.find(':'));  // several are ':'-separated
  if (c->token_file.empty()) {
    c->token_file =
        !state_dir.empty() ? state_dir + "/token" : std::string("~/") + api::kTokenFileBelowHome;
  }
  if (c->state_db.empty()) {
    c->state_db = !state_dir.empty() ? state_dir + "/safeshardd.db"
                                     : "~/.local/state/safeshard/safeshardd.db";
  }
  c->token_file = ExpandHome(c->token_file);
  c->state_db = ExpandHome(c->state_db);
  for (std::string& r : c->watch_roots) r = ExpandHome(r);
}

namespace {

// The entry of the deepest root in `by_root` holding `run_dir`, else `fallback`.
template <typename V>
V DeepestRootValue(const std::map<std::string, V>& by_root, const std::string& run_dir,
                   V fallback) {
  size_t best = 0;
  for (const auto& [r, v] : by_root) {
    if ((run_dir == r || run_dir.rfind(r + "/", 0) == 0) && r.size() > best) {
      best = r.size();
      fallback = v;
    }
  }
  return fallback;
}

}  // namespace

int Config::ExpectedRanksFor(const std::string& run_dir) const {
  return DeepestRootValue(expected_ranks_by_root, run_dir, expected_ranks);
}

std::string Config::DequantizeFor(const std::string& run_dir) const {
  return DeepestRootValue(dequantize_by_root, run_dir, dequantize);
}

ConsolidateSpec Config::ConsolidateSpecFor(const std::string& run_dir) const {
  ConsolidateSpec s;
  if (files_mode == "max_shard_size") s.max_shard_size = max_shard_size;
  if (files_mode == "reference") {
    s.reference = reference;
    s.unmapped = "own-file";  // tensors the model lacks get files of their own
  }
  // Without output_files.mode "reference" the spec has no reference: the validator refuses
  // this instead of ignoring it.
  s.restore_dtypes = restore_dtypes;
  if (cast_dtype) s.cast_dtype = std::string(DTypeName(*cast_dtype));
  s.key_map = key_map;
  s.dequantize = DequantizeFor(run_dir);
  if (!s.dequantize.empty()) s.block_size = block_size;
  s.threads = threads_per_job;
  s.verify = true;
  s.overwrite = true;
  s.expect_ranks = ExpectedRanksFor(run_dir);
  s.strict = strict;
  s.checksums = true;
  return s;
}

absl::Status ValidateConfig(const Config& c) {
  if (c.files_mode != "single" && c.files_mode != "max_shard_size" && c.files_mode != "reference") {
    return absl::InvalidArgumentError(
        "config: output_files.mode must be single, max_shard_size or reference");
  }
  if (c.files_mode == "max_shard_size" && c.max_shard_size.empty()) {
    return absl::InvalidArgumentError(
        "config: output_files.max_shard_size is required for that mode");
  }
  if (c.files_mode == "reference" && c.reference.empty()) {
    return absl::InvalidArgumentError("config: output_files.reference is required for that mode");
  }
  if (c.restore_dtypes && c.files_mode != "reference") {
    return absl::InvalidArgumentError(
        "config: dtype.restore_from_reference needs output_files {\"mode\": \"reference\", "
        "\"reference\": DIR}");
  }
  if (c.retention != "keep" && c.retention != "delete" && c.retention != "keep_last") {
    return absl::InvalidArgumentError("config: retention.mode must be keep, delete or keep_last");
  }
  if (c.retention == "keep_last" && c.keep_last < 1) {
    return absl::InvalidArgumentError("config: retention.keep_last must be at least 1");
  }
  if (c.max_concurrent_jobs < 1 || c.threads_per_job < 1 || c.max_attempts < 1) {
    return absl::InvalidArgumentError(
        "config: max_concurrent_jobs, threads_per_job and max_attempts must be at least 1");
  }
  if (c.quiet_period_seconds < 0 || c.rescan_interval_seconds <= 0) {
    return absl::InvalidArgumentError(
        "config: quiet_period_seconds >= 0, rescan_interval_seconds > 0");
  }
  if (c.api_port < 0 || c.api_port > 65535)
    return absl::InvalidArgumentError("config: api.port out of range");
  // What every job will run, checked now by the one validator (a size without a unit or that
  // does not parse, a dtype that is not a cast target, a bad key-map rule): never a silent
  // fallback in a job later.
  if (absl::Status spec = ValidateConsolidateSpec(c.ConsolidateSpecFor("")); !spec.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("config: ", spec.message()));
  }
  if (c.expected_ranks < 0)
    return absl::InvalidArgumentError("config: expected_ranks must be >= 0");
  for (const auto& [r, d] : c.dequantize_by_root) {
    if (d.empty()) continue;
    if (absl::StatusOr<DType> t = quant::ParseDequantizeTarget(d); !t.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("config: dequantize_by_root[\"", r, "\"]: ", t.status().message()));
    }
  }
  if (!c.block_size.empty()) {
    if (absl::StatusOr<quant::BlockSize> b = quant::ParseBlockSize(c.block_size); !b.ok())
      return absl::InvalidArgumentError(
          absl::StrCat("config: dtype.block_size: ", b.status().message()));
  }
  for (const auto& [r, n] : c.expected_ranks_by_root) {
    if (n < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("config: expected_ranks_by_root[\"", r, "\"] must be at least 1"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Config> ParseConfig(absl::string_view text) {
  json root;
  internal::StrictParseResult pr = internal::ParseJsonStrict(text.begin(), text.end(), &root);
  if (!pr.ok) return absl::InvalidArgumentError(absl::StrCat("config: not valid JSON: ", pr.error));
  if (pr.duplicate) {
    return absl::InvalidArgumentError(absl::StrCat("config: key \"", *pr.duplicate, "\" repeated"));
  }
  if (!root.is_object()) return absl::InvalidArgumentError("config: must be a JSON object");
  CFG_RETURN(
      Unknown(root,
              {"watch_roots", "output_template", "output_root", "output_files", "dtype", "key_map",
               "max_concurrent_jobs", "threads_per_job", "quiet_period_seconds",
               "rescan_interval_seconds", "expected_ranks", "expected_ranks_by_root",
               "dequantize_by_root", "strict", "retention", "api", "state_db", "max_attempts"},
              ""));
  Config c;
  CFG_RETURN(Get(root, "watch_roots", &c.watch_roots));
  CFG_RETURN(Get(root, "output_template", &c.output_template));
  CFG_RETURN(Get(root, "output_root", &c.output_root));
  CFG_RETURN(Get(root, "max_concurrent_jobs", &c.max_concurrent_jobs));
  CFG_RETURN(Get(root, "threads_per_job", &c.threads_per_job));
  CFG_RETURN(Get(root, "quiet_period_seconds", &c.quiet_period_seconds));
  CFG_RETURN(Get(root, "rescan_interval_seconds", &c.rescan_interval_seconds));
  CFG_RETURN(Get(root, "expected_ranks", &c.expected_ranks));
  CFG_RETURN(Get(root, "strict", &c.strict));
  CFG_RETURN(Get(root, "expected_ranks_by_root", &c.expected_ranks_by_root));
  CFG_RETURN(Get(root, "dequantize_by_root", &c.dequantize_by_root));
  CFG_RETURN(Get(root, "state_db", &c.state_db));
  CFG_RETURN(Get(root, "max_attempts", &c.max_attempts));
  if (auto f = root.find("output_files"); f != root.end()) {
    if (!f->is_object())
      return absl::InvalidArgumentError("config: \"output_files\" must be an object");
    CFG_RETURN(Unknown(*f, {"mode", "max_shard_size", "reference"}, "output_files."));
    CFG_RETURN(Get(*f, "mode", &c.files_mode, "output_files."));
    CFG_RETURN(Get(*f, "max_shard_size", &c.max_shard_size, "output_files."));
    CFG_RETURN(Get(*f, "reference", &c.reference, "output_files."));
  }
  if (auto d = root.find("dtype"); d != root.end()) {
    if (!d->is_object()) return absl::InvalidArgumentError("config: \"dtype\" must be an object");
    CFG_RETURN(
        Unknown(*d, {"cast", "restore_from_reference", "dequantize", "block_size"}, "dtype."));
    CFG_RETURN(Get(*d, "dequantize", &c.dequantize, "dtype."));
    CFG_RETURN(Get(*d, "block_size", &c.block_size, "dtype."));
    std::string cast;
    CFG_RETURN(Get(*d, "cast", &cast, "dtype."));
    if (!cast.empty()) {
      absl::StatusOr<DType> t =
          ParseCastDType(cast);  // as the CLI: bf16, bfloat16, torch.bfloat16, ...
      if (!t.ok())
        return absl::InvalidArgumentError(
            absl::StrCat("config: dtype.cast: ", t.status().message()));
      c.cast_dtype = *t;
    }
    CFG_RETURN(Get(*d, "restore_from_reference", &c.restore_dtypes, "dtype."));
  }
  if (auto k = root.find("key_map"); k != root.end()) {
    absl::StatusOr<KeyMap> km = KeyMap::FromJson(k->dump());
    if (!km.ok())
      return absl::InvalidArgumentError(absl::StrCat("config: key_map: ", km.status().message()));
    c.key_map = km->rules();
  }
  if (auto r = root.find("retention"); r != root.end()) {
    if (r->is_string()) {
      c.retention = r->get<std::string>();
    } else if (r->is_object()) {
      CFG_RETURN(Unknown(*r, {"mode", "keep_last"}, "retention."));
      CFG_RETURN(Get(*r, "mode", &c.retention, "retention."));
      CFG_RETURN(Get(*r, "keep_last", &c.keep_last, "retention."));
    } else {
      return absl::InvalidArgumentError("config: \"retention\" must be a string or an object");
    }
  }
  if (auto a = root.find("api"); a != root.end()) {
    if (!a->is_object()) return absl::InvalidArgumentError("config: \"api\" must be an object");
    CFG_RETURN(Unknown(*a, {"address", "port", "token_file", "token_group_readable"}, "api."));
    CFG_RETURN(Get(*a, "token_group_readable", &c.token_group_readable, "api."));
    CFG_RETURN(Get(*a, "address", &c.api_address, "api."));
    CFG_RETURN(Get(*a, "port", &c.api_port, "api."));
    CFG_RETURN(Get(*a, "token_file", &c.token_file, "api."));
  }
  RETURN_IF_ERROR(ValidateConfig(c));
  return c;
}

}  // namespace safeshard::daemon
