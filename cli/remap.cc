// remap.cc: `safeshard remap` — rename tensors by ordered regex rules.
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
#include "core/format/internal/json_util.h"
#include "core/io/atomic_file.h"
#include "core/io/filesystem.h"
#include "core/io/url.h"
#include "core/layout/layout.h"
#include "core/remap/keymap.h"
#include "core/remap/remap.h"
#include "nlohmann/json.hpp"

namespace safeshard::cli {
namespace {

struct RemapArgs {
  std::string in, out, rules_file, token;
  std::vector<std::string> rules;
  bool dry_run = false, in_place = false, overwrite = false;
};

int RunRemap(const RemapArgs& a, std::ostream& out, std::ostream& err) {
  auto fail = [&](const absl::Status& s) {
    err << "safeshard remap: " << s.message() << "\n";
    return s.code() == absl::StatusCode::kInvalidArgument || s.code() == absl::StatusCode::kNotFound
               ? kExitUsage
               : kExitProblems;
  };
  if (a.rules.empty() == a.rules_file.empty()) {
    err << "safeshard remap: give either --rule (repeatable) or --rules FILE\n";
    return kExitUsage;
  }
  absl::StatusOr<KeyMap> km;
  if (!a.rules_file.empty()) {
    absl::StatusOr<std::string> text = ReadOptionFile(a.rules_file);
    if (!text.ok()) return fail(text.status());
    km = KeyMap::FromJson(*text);
  } else {
    std::vector<KeyMap::Rule> rules;
    for (const std::string& r : a.rules) {
      absl::StatusOr<KeyMap::Rule> rule = KeyMap::ParseRule(r);
      if (!rule.ok()) return fail(rule.status());
      rules.push_back(*rule);
    }
    km = KeyMap::Create(std::move(rules));
  }
  if (!km.ok()) return fail(km.status());
  absl::StatusOr<ResolvedPath> in = Resolve(a.in, a.token);
  if (!in.ok()) return fail(in.status());
  if (a.dry_run) {
    absl::StatusOr<CheckpointLayout> ck = CheckpointLayout::Scan(*in->fs, in->path);
    if (!ck.ok()) return fail(ck.status());
    absl::StatusOr<RemapPlan> plan = PlanRemap(*ck, *km);
    if (!plan.ok()) return fail(plan.status());
    std::vector<std::vector<std::string>> rows = {{"OLD", "", "NEW"}};
    for (const auto& [o, n] : plan->renames) {
      rows.push_back({o, o == n ? "  " : "->", o == n ? "(unchanged)" : n});
    }
    PrintTable(rows, out, {});
    out << plan->changed << " of " << plan->renames.size()
        << " keys change (dry run: nothing written)\n";
    return kExitOk;
  }
  std::string target = a.out.empty() ? a.in : a.out;
  if (a.out.empty() && !a.in_place) {
    err << "safeshard remap: give an output directory, or --in-place to rewrite the input\n";
    return kExitUsage;
  }
  RemapOptions o;
  o.in_place = a.in_place;
  o.overwrite = a.overwrite;
  if (in->remote && a.in_place) {
    err << "safeshard remap: --in-place needs a local checkpoint; give a local output directory\n";
    return kExitUsage;
  }
  if (!UrlScheme(target).empty() && UrlScheme(target) != "file") {
    err << "safeshard remap: OUT must be a local directory\n";
    return kExitUsage;
  }
  absl::StatusOr<ResolvedPath> outp = Resolve(target, a.token);
  if (!outp.ok()) return fail(outp.status());
  if (in->remote) o.output_fs = outp->fs.get();
  absl::StatusOr<RemapResult> r =
      Remap(*in->fs, in->path, in->remote ? outp->path : target, *km, o);
  if (!r.ok()) return fail(r.status());
  out << "renamed " << r->plan.changed << " of " << r->plan.renames.size() << " tensors; wrote "
      << r->files.size() << " files (" << HumanBytes(r->bytes_copied) << " of tensor bytes copied, "
      << "not re-encoded) to " << target << "\n";
  return kExitOk;
}

}  // namespace

std::vector<Subcommand> AddRemap(CLI::App& app) {
  auto a = std::make_shared<RemapArgs>();
  CLI::App* remap = app.add_subcommand(
      "remap",
      "Rename tensors by ordered regex rules (first matching rule wins, Python re.subn "
      "semantics, \\1 back-references) into a new checkpoint; bytes are copied, never "
      "re-encoded. Two keys mapping to one name are refused.");
  remap->add_option("IN", a->in, std::string("Checkpoint: ") + kUrlHelp)->required();
  remap->add_option("--token", a->token, kTokenHelp);
  remap->add_option("OUT", a->out, "Output directory (omit with --in-place)");
  remap->add_option("--rule", a->rules, "'REGEX=>REPLACEMENT' (repeatable, in order)");
  remap->add_option("--rules", a->rules_file, "JSON rules file: [[regex, replacement], ...]");
  remap->add_flag("--dry-run", a->dry_run, "Print the old -> new table, write nothing");
  remap->add_flag("--in-place", a->in_place,
                  "Rewrite IN itself (each file via a temporary file and a rename)");
  remap->add_flag("--overwrite", a->overwrite, "Replace an existing checkpoint in OUT");

  return {{remap, [a](std::ostream& out, std::ostream& err) { return RunRemap(*a, out, err); }}};
}

}  // namespace safeshard::cli
