// consolidate.cc: `safeshard consolidate` — per-rank shards (or any checkpoint) into the HF layout.
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/cli.h"
#include "cli/command.h"
#include "cli/format_util.h"
#include "core/consolidate/consolidate.h"
#include "core/consolidate/spec.h"
#include "core/format/internal/json_util.h"
#include "core/io/atomic_file.h"
#include "core/io/filesystem.h"
#include "core/io/url.h"
#include "core/layout/layout.h"
#include "core/remap/keymap.h"
#include "nlohmann/json.hpp"

namespace safeshard::cli {
namespace {

struct ConsolidateArgs {
  std::string in, out, token;
  std::string mapping, reference, max_shard_size, unmapped = "error", cast_dtype, key_map;
  std::string dequantize, block_size;
  std::vector<std::string> metadata;
  bool restore_dtypes = false, diffusers = false, verify = false, overwrite = false, json = false;
  bool strict = false, no_checksums = false, no_model_files = false, dry_run = false;
  int threads = 0;
  int expect_ranks = 0;
};

int RunConsolidate(const ConsolidateArgs& a, std::ostream& out, std::ostream& err) {
  FileSystem& fs = LocalFileSystem();
  auto usage = [&](absl::string_view msg) {
    err << "safeshard consolidate: " << msg << "\n";
    return kExitUsage;
  };
  auto fail = [&](const absl::Status& s) {
    err << "safeshard consolidate: " << s.message() << "\n";
    return s.code() == absl::StatusCode::kInvalidArgument || s.code() == absl::StatusCode::kNotFound
               ? kExitUsage
               : kExitProblems;
  };
  // The flags become one ConsolidateSpec (the daemon and the inspector build the same), which
  // is validated and resolved in one place.
  ConsolidateSpec spec;
  spec.mapping_file = a.mapping;
  spec.reference = a.reference;
  spec.max_shard_size = a.max_shard_size;
  spec.unmapped = a.unmapped;
  spec.restore_dtypes = a.restore_dtypes;
  spec.cast_dtype = a.cast_dtype;
  spec.dequantize = a.dequantize;
  spec.block_size = a.block_size;
  if (!a.key_map.empty()) {
    absl::StatusOr<std::string> text = ReadOptionFile(a.key_map);
    if (!text.ok()) return fail(text.status());
    absl::StatusOr<KeyMap> k = KeyMap::FromJson(*text);
    if (!k.ok()) return usage(absl::StrCat("--key-map ", a.key_map, ": ", k.status().message()));
    spec.key_map = k->rules();
  }
  for (const std::string& kv : a.metadata) {
    size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) return usage("--metadata expects KEY=VALUE");
    spec.metadata[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  spec.diffusers = a.diffusers;
  spec.threads = a.threads;
  spec.verify = a.verify;
  spec.overwrite = a.overwrite;
  spec.expect_ranks = a.expect_ranks;
  spec.strict = a.strict;
  spec.checksums = !a.no_checksums;
  spec.model_files = !a.no_model_files;
  if (absl::Status valid = ValidateConsolidateSpec(spec); !valid.ok())
    return usage(valid.message());
  absl::StatusOr<std::unique_ptr<ResolvedConsolidation>> resolved =
      ResolveConsolidateSpec(fs, spec);
  if (!resolved.ok()) return fail(resolved.status());
  ConsolidateOptions& o = (*resolved)->options;
  std::vector<std::string> warnings = (*resolved)->warnings;
  ProgressBar bar(err, StderrIsTerminal(err) && !a.json);
  // After the copy the bar would sit at 100% while the outputs are synced, checksummed and
  // (with --verify) re-read: say which phase runs instead.
  bool copied = false;
  const bool phases = StderrIsTerminal(err) && !a.json;
  o.progress = [&](uint64_t done, uint64_t total) {
    bar.Update(done, total);
    if (phases && !copied && done == total) {
      copied = true;
      bar.Finish();
      err << (o.verify ? "copied; syncing, checksumming and verifying the output...\n"
                       : "copied; syncing and checksumming the output...\n")
          << std::flush;
    }
  };
  absl::StatusOr<ResolvedPath> in = Resolve(a.in, a.token);
  if (!in.ok()) return usage(in.status().message());
  if (!UrlScheme(a.out).empty() && UrlScheme(a.out) != "file") {
    return usage(
        "OUT must be a local directory (remote inputs are read with ranged GETs; outputs are "
        "written locally)");
  }
  absl::StatusOr<ResolvedPath> outp = Resolve(a.out, a.token);
  if (!outp.ok()) return usage(outp.status().message());
  o.output_fs = outp->fs.get();
  if (a.dry_run) {
    // The plan consolidation would carry out, from the same checks; nothing is written.
    ScanOptions so;
    so.expect_ranks = o.expect_ranks;
    so.strict = o.strict;
    absl::StatusOr<CheckpointLayout> ck = CheckpointLayout::Scan(*in->fs, in->path, so);
    if (!ck.ok()) return fail(ck.status());
    std::optional<std::string> config;
    if (o.dequantize) {
      absl::StatusOr<std::optional<std::string>> c = ReadModelConfig(*in->fs, ck->root());
      if (!c.ok()) return fail(c.status());
      config = std::move(*c);
    }
    absl::StatusOr<ConsolidationPlan> plan = PlanConsolidation(*ck, o, config ? &*config : nullptr);
    if (!plan.ok()) return fail(plan.status());
    uint64_t total = 0;
    std::vector<std::vector<std::string>> rows = {{"FILE", "SIZE", "TENSORS"}};
    for (const OutputFilePlan& f : plan->outputs) {
      total += f.header.file_size();
      rows.push_back(
          {f.name, HumanBytes(f.header.file_size()), absl::StrCat(f.header.tensors.size())});
    }
    out << "plan: " << plan->outputs.size() << " file" << (plan->outputs.size() == 1 ? "" : "s")
        << ", " << HumanBytes(total) << ", " << plan->weight_map.size() << " tensors into " << a.out
        << "\n";
    PrintTable(rows, out, {1, 2});
    std::vector<std::string> extra;
    if (o.copy_model_files) {
      for (const std::string& n : ModelFileNames()) {
        if (in->fs->Stat(JoinPath(plan->input_root, n)).ok()) extra.push_back(n);
      }
    }
    if (o.checksums) extra.push_back(std::string(kManifestFileName));
    extra.push_back(plan->index_name + " (last)");
    out << "then: " << absl::StrJoin(extra, ", ") << "\n";
    if (o.dequantize) {
      out << "dequantized to " << DTypeName(*o.dequantize) << ": " << plan->dequantized.size()
          << " weight" << (plan->dequantized.size() == 1 ? "" : "s") << " (" << plan->scales.size()
          << " scale tensors dropped)"
          << (plan->config_json ? "; config.json without quantization_config" : "") << "\n";
    }
    for (const std::string& w : plan->warnings) out << "warning: " << w << "\n";
    out << "nothing was written (--dry-run)\n";
    return kExitOk;
  }
  absl::StatusOr<ConsolidateResult> r = Consolidate(*in->fs, in->path, outp->path, o);
  bar.Finish();
  if (!r.ok()) return fail(r.status());
  warnings.insert(warnings.end(), r->warnings.begin(), r->warnings.end());
  double rate = r->seconds > 0 ? r->bytes / r->seconds : 0;
  if (a.json) {
    ordered_json j;
    j["schema"] = "safeshard.consolidate/1";
    j["output"] = r->output_dir;
    j["files"] = r->files;
    j["bytes"] = r->bytes;
    j["seconds"] = r->seconds;
    j["bytes_per_second"] = rate;
    j["dequantized"] = r->dequantized;
    if (r->verify) {
      j["verify"] = {{"bytes", r->verify->bytes_checked}, {"seconds", r->verify->seconds}};
    }
    j["warnings"] = warnings;
    out << internal::DumpJson(j, 2) << "\n";
    return kExitOk;
  }
  for (const std::string& w : warnings) err << "warning: " << w << "\n";
  size_t tensor_files = 0;
  for (const std::string& f : r->files) tensor_files += absl::EndsWith(f, ".safetensors");
  out << "consolidated " << HumanBytes(r->bytes) << " into " << tensor_files << " file"
      << (tensor_files == 1 ? "" : "s") << " in " << a.out;
  if (o.dequantize) {
    out << " (" << r->dequantized << " weight" << (r->dequantized == 1 ? "" : "s")
        << " dequantized to " << DTypeName(*o.dequantize) << ")";
  }
  out << absl::StrFormat(" (%.2fs, %s/s)", r->seconds, HumanBytes(static_cast<uint64_t>(rate)));
  if (r->verify) {
    double vr = r->verify->seconds > 0 ? r->verify->bytes_checked / r->verify->seconds : 0;
    out << absl::StrFormat("; verified %s (%s/s)", HumanBytes(r->verify->bytes_checked),
                           HumanBytes(static_cast<uint64_t>(vr)));
  }
  out << "\n";
  return kExitOk;
}

}  // namespace

std::vector<Subcommand> AddConsolidate(CLI::App& app) {
  auto a = std::make_shared<ConsolidateArgs>();
  CLI::App* consolidate = app.add_subcommand(
      "consolidate",
      "Merge per-rank DCP shards (or any checkpoint) into the HF layout: "
      "model-IIIII-of-NNNNN.safetensors + model.safetensors.index.json. Refuses incomplete "
      "checkpoints before writing; streams runs from the mapped inputs; publishes atomically "
      "(the index is written last).");
  consolidate->add_option("IN", a->in, std::string("Checkpoint (per-rank shards): ") + kUrlHelp)
      ->required();
  consolidate->add_option("--token", a->token, kTokenHelp);
  consolidate->add_option("OUT", a->out, "Output directory (created)")->required();
  consolidate->add_option("--mapping", a->mapping,
                          "JSON file {\"fqn\": file_index} choosing each tensor's output file");
  consolidate->add_option("--reference", a->reference,
                          "HF model directory whose index json (or files) choose output files");
  consolidate->add_option("--max-shard-size", a->max_shard_size,
                          "Split outputs at this size, with a unit: 5GB, 500MiB (save_pretrained's "
                          "rules; 5B for bytes)");
  consolidate->add_option("--unmapped", a->unmapped,
                          "Tensors missing from the mapping: error (default), first, own-file");
  consolidate->add_option("--threads", a->threads, "Copy threads (default: all cores)")
      ->check(CLI::Range(0, 1024));
  consolidate->add_option("--cast-dtype", a->cast_dtype,
                          "Convert floating-point tensors (never FP8) to bf16, f16, f32 or f64 "
                          "(also bfloat16, torch.bfloat16, half, float, double)");
  consolidate->add_option(
      "--dequantize", a->dequantize,
      "Decode block-quantized weights into bf16, f16 or f32: FP8 X.weight + X.weight_scale_inv "
      "(DeepSeek-V3 style) and MXFP4 X_blocks + X_scales (gpt-oss, written as X [..., G*32]); "
      "scales are dropped, other tensors copied as they are, config.json loses its "
      "quantization_config");
  consolidate->get_option("--dequantize")->check([](const std::string& v) {
    return v.empty() ? std::string("needs a dtype: bf16, f16 or f32") : std::string();
  });
  consolidate->add_option("--block-size", a->block_size,
                          "FP8 block size with --dequantize: 128 or RxC (default: config.json's "
                          "quantization_config.weight_block_size, else 128)");
  consolidate->add_flag("--restore-dtypes", a->restore_dtypes,
                        "Convert tensors back to the dtypes of the --reference model");
  consolidate->add_option("--key-map", a->key_map,
                          "JSON rules [[\"regex\", \"replacement\"], ...] renaming output keys");
  consolidate->add_option("--metadata", a->metadata,
                          "KEY=VALUE added to __metadata__ (repeatable)");
  consolidate->add_flag("--diffusers", a->diffusers,
                        "Name outputs diffusion_pytorch_model-*.safetensors (+ its index)");
  consolidate->add_flag("--verify", a->verify,
                        "Re-read the output and compare it with the inputs (checksums)");
  consolidate->add_flag("--overwrite", a->overwrite,
                        "Replace a checkpoint already in OUT: it is removed (index first) before "
                        "the new one is written, so a failed run leaves none that looks finished. "
                        "Per-rank shards in OUT are never replaced");
  consolidate
      ->add_option("--expect-ranks", a->expect_ranks,
                   "Refuse unless IN holds shard files of exactly ranks 0..N-1 (the job's "
                   "world size): proves no trailing rank was lost")
      ->check(CLI::Range(1, 1 << 20));
  consolidate->add_flag("--strict", a->strict,
                        "Refuse IN when its completeness cannot be proven (no manifest, no "
                        "global_shape, no --expect-ranks)");
  consolidate->add_flag("--no-checksums", a->no_checksums,
                        "Do not publish safeshard.complete.json with the outputs' XXH3-64 "
                        "checksums (saves one read of the outputs)");
  consolidate->add_flag("--no-model-files", a->no_model_files,
                        "Do not copy config.json, generation_config.json and the tokenizer files "
                        "found beside IN into OUT (copied by default; one already in OUT is kept)");
  consolidate->add_flag(
      "--dry-run", a->dry_run,
      "Check IN and print the output plan (files, sizes, tensors); write nothing");
  consolidate->add_flag("--json", a->json, "Print the result as JSON (no progress bar)");

  return {{consolidate,
           [a](std::ostream& out, std::ostream& err) { return RunConsolidate(*a, out, err); }}};
}

}  // namespace safeshard::cli
