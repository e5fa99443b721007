// config.h: safeshardd's configuration (JSON, strictly validated: unknown keys are errors).
//
//   {
//     "watch_roots": ["/checkpoints"],
//     "output_template": "{parent}/{name}-hf",      // {parent}, {name}, {root}
//     "output_root": "/published",                  // outputs may also go here (else: roots only)
//     "output_files": {"mode": "single"},           // or {"mode": "max_shard_size",
//     "max_shard_size": "5GB"}
//                                                   // or {"mode": "reference", "reference":
//                                                   "/models/llama"}
//     "dtype": {"cast": "bf16"},                    // or {"restore_from_reference": true}; default
//     keep "key_map": [["^model\\.", ""]], "max_concurrent_jobs": 2, "threads_per_job": 2,
//     "quiet_period_seconds": 30, "rescan_interval_seconds": 60,
//     "expected_ranks": 0,                          // 0: unknown; N proves no rank was lost
//     "expected_ranks_by_root": {"/ckpt/llama": 64}, // per root, overrides expected_ranks
//     "strict": false,                              // refuse runs whose completeness is unproven
//     "retention": {"mode": "keep"},                // or "delete", or {"mode": "keep_last",
//     "keep_last": 3} "api": {"address": "127.0.0.1", "port": 8470, "token_file":
//     "~/.config/safeshard/token"}, "state_db": "~/.local/state/safeshard/safeshardd.db",
//     "max_attempts": 5
//   }
#ifndef SAFESHARD_DAEMON_CONFIG_H_
#define SAFESHARD_DAEMON_CONFIG_H_

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/consolidate/spec.h"
#include "core/format/dtype.h"
#include "core/remap/keymap.h"
#include "daemon/api.h"

namespace safeshard::daemon {

struct Config {
  std::vector<std::string> watch_roots;
  std::string output_template = "{parent}/{name}-hf";
  // Outputs must resolve inside a watch root or inside this directory (when set): the daemon
  // never writes anywhere else.
  std::string output_root;
  std::string files_mode = "single";  // single | max_shard_size | reference
  std::string max_shard_size;         // e.g. "5GB"
  std::string reference;
  std::optional<DType> cast_dtype;
  bool restore_dtypes = false;
  std::vector<KeyMap::Rule> key_map;
  int max_concurrent_jobs = 2;
  int threads_per_job = 2;
  double quiet_period_seconds = 30;
  double rescan_interval_seconds = 60;
  int expected_ranks = 0;
  // Per watch root (after the roots are resolved): runs under that root must have exactly this
  // many ranks; overrides expected_ranks. {"expected_ranks_by_root": {"/ckpt/llama": 64}}.
  std::map<std::string, int> expected_ranks_by_root;
  // The expected rank count of a run directory: its root's entry, else expected_ranks (0: any).
  int ExpectedRanksFor(const std::string& run_dir) const;
  // Dequantization of block-quantized weights (FP8, MXFP4): "bf16", "f16", "f32" or "" (keep
  // them as they are); dtype.dequantize for every root, dequantize_by_root per watch root
  // ({"/ckpt/deepseek": "bf16"}; "" turns it off under that root); FP8 block size "128"/"RxC".
  std::string dequantize;
  std::map<std::string, std::string> dequantize_by_root;
  std::string block_size;
  std::string DequantizeFor(const std::string& run_dir) const;
  // The consolidation every job of `run_dir` runs (output files, dtypes, key map, threads,
  // expected ranks, strictness; always verified, replacing an earlier result): the same typed
  // ConsolidateSpec the CLI and the inspector build, validated by the same function.
  ConsolidateSpec ConsolidateSpecFor(const std::string& run_dir) const;
  // Refuse runs whose completeness cannot be proven (no manifest, no global_shape, no
  // expected_ranks) instead of consolidating them with a warning.
  bool strict = false;
  std::string retention = "keep";  // keep | delete | keep_last
  int keep_last = 0;
  std::string api_address = api::kDefaultAddress;
  int api_port = api::kDefaultPort;
  std::string token_file;
  // The token file is created 0640 (readable by the daemon's group: users who may command it
  // join that group), not 0600. The packaged service sets it.
  bool token_group_readable = false;
  std::string state_db;
  int max_attempts = 5;
};

// Parses and validates; every error names the offending key.
// The checks every configuration must pass, whatever it came from (file, flags, SIGHUP): modes,
// sizes that parse, key maps that compile, ranges.
absl::Status ValidateConfig(const Config& c);

absl::StatusOr<Config> ParseConfig(absl::string_view json);
// Fills defaults that depend on the environment ($HOME) and expands "~/".
void ResolvePaths(Config* c);
std::string ExpandHome(const std::string& path);

}  // namespace safeshard::daemon

#endif  // SAFESHARD_DAEMON_CONFIG_H_
