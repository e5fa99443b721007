// detect.cc: how safeshardd finds runs and decides that one is finished — the scans, the
// completeness rules (manifest, or inference after a quiet period), where its output goes and
// what parks it for a person.
#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "core/consolidate/consolidate.h"
#include "core/format/filenames.h"
#include "core/format/manifest.h"
#include "core/io/atomic_file.h"
#include "core/io/filesystem.h"
#include "core/layout/layout.h"
#include "core/remap/remap.h"
#include "daemon/daemon.h"
#include "daemon/internal.h"

namespace safeshard::daemon {

using namespace detail;  // NOLINT(build/namespaces): the daemon's own helpers
using nlohmann::json;

bool Daemon::PublishedAfterSources(const std::string& dir, const std::string& output) const {
  struct stat idx;
  if (::lstat(JoinPath(output, std::string(kIndexFileName)).c_str(), &idx) != 0 ||
      !S_ISREG(idx.st_mode)) {
    return false;
  }
  absl::StatusOr<std::vector<DirEntry>> entries = RootsFs().List(dir);
  if (!entries.ok()) return false;
  bool any = false;
  for (const DirEntry& e : *entries) {
    if (!(absl::StartsWith(e.name, "shard-") && absl::EndsWith(e.name, ".safetensors")) &&
        e.name != kCompletionManifest) {
      continue;
    }
    struct stat st;
    if (::lstat(JoinPath(dir, e.name).c_str(), &st) != 0) return false;
    if (st.st_mtim.tv_sec > idx.st_mtim.tv_sec ||
        (st.st_mtim.tv_sec == idx.st_mtim.tv_sec && st.st_mtim.tv_nsec > idx.st_mtim.tv_nsec)) {
      return false;
    }
    any = true;
  }
  return any;
}

std::string Daemon::WhyParked(const std::string& dir, const std::string& output) const {
  absl::StatusOr<std::vector<DirEntry>> entries = RootsFs().List(dir);
  if (entries.ok()) {
    for (const DirEntry& e : *entries) {
      const bool shard = absl::EndsWith(e.name, ".safetensors") || e.name == kCompletionManifest ||
                         absl::EndsWith(e.name, ".safetensors.index.json");
      if (e.is_symlink && shard) {
        return absl::StrCat(e.name,
                            " is a symbolic link: links under a watch root are never followed "
                            "(copy the file into the run instead)");
      }
    }
  }
  return WhyOutputRefused(dir, output);
}

std::string Daemon::WhyOutputRefused(const std::string& source, const std::string& output) const {
  const Config c = config();
  absl::StatusOr<std::string> out = ResolveUnderRoots(output, /*outputs=*/true);
  if (!out.ok()) {
    return absl::StrCat("its output ", output,
                        " would be outside the watch roots (set output_template so that it "
                        "resolves under a root): ",
                        out.status().message());
  }
  for (const std::string& r : config().watch_roots) {
    if (*out == r) return absl::StrCat("its output would be the watch root ", r, " itself");
  }
  if (SameDirectory(RootsFs(), source, *out) || *out == source ||
      absl::StartsWith(*out, source + "/")) {
    return absl::StrCat("its output ", *out, " would be inside its own source ", source);
  }
  // One output per run: another run that already goes there (queued, running or published)
  // keeps it; a parked or incomplete one claims nothing.
  if (absl::StatusOr<std::vector<RunRecord>> runs = store_->ListRuns(); runs.ok()) {
    for (const RunRecord& r : *runs) {
      const bool claims = r.state == RunState::kQueued || r.state == RunState::kRunning ||
                          r.state == RunState::kPublished;
      if (claims && r.path != source && !r.output.empty() && r.output == *out) {
        return absl::StrCat("its output ", *out, " is also the output of run ", r.id, " (", r.path,
                            "); set output_template so that every run has its own (use {name})");
      }
    }
  }
  // Another run's source (per-rank shards) is never an output.
  if (absl::StatusOr<std::vector<DirEntry>> in_out = RootsFs().List(*out); in_out.ok()) {
    for (const DirEntry& e : *in_out) {
      if (absl::StartsWith(e.name, "shard-") && absl::EndsWith(e.name, ".safetensors")) {
        return absl::StrCat("its output ", *out, " holds per-rank shards (", e.name,
                            "): another run's source");
      }
    }
  }
  // No component below the root may be a symbolic link (checked again when the job starts).
  if (*out == c.output_root) return "its output would be the output root itself";
  for (std::string p = *out; p.size() > 1; p = DirName(p)) {
    bool is_root = p == c.output_root;
    for (const std::string& r : c.watch_roots) is_root |= p == r;
    if (is_root) break;
    struct stat st;
    if (lstat(p.c_str(), &st) == 0 && S_ISLNK(st.st_mode)) {
      return absl::StrCat("its output path ", *out, " goes through the symbolic link ", p);
    }
  }
  return "";
}

std::string Daemon::OutputFor(const std::string& run_dir) const {
  Config c = config();
  // PyTorch's HuggingFaceStorageWriter(enable_consolidation=True) saves its shards to
  // RUN/sharded/ and consolidates them into RUN: that is where their output belongs.
  if (BaseName(run_dir) == kShardedSubdir) return DirName(run_dir);
  std::string parent = DirName(run_dir), name = BaseName(run_dir);
  std::string root;
  for (const std::string& r : c.watch_roots) {
    if (absl::StartsWith(run_dir, r + "/")) root = r;
  }
  return absl::StrReplaceAll(c.output_template,
                             {{"{parent}", parent}, {"{name}", name}, {"{root}", root}});
}

void Daemon::ScanRoots() {
  rescans_++;
  ScanTrees(config().watch_roots, /*recursive=*/true, NowMs());
}

void Daemon::ScanTrees(std::vector<std::string> stack, bool recursive, int64_t now) {
  std::vector<std::string> runs;
  while (!stack.empty()) {
    std::string d = stack.back();
    stack.pop_back();
    absl::StatusOr<std::vector<DirEntry>> entries = RootsFs().List(d);
    if (!entries.ok()) continue;
    bool run = false;
    for (const DirEntry& e : *entries) {
      if (e.is_dir) {
        // Symbolic links under a root are never followed (no cycles, nothing outside the roots).
        if (recursive && !e.is_symlink && e.name[0] != '.') stack.push_back(JoinPath(d, e.name));
      } else if ((absl::StartsWith(e.name, "shard-") && absl::EndsWith(e.name, ".safetensors")) ||
                 e.name == kCompletionManifest) {
        run = true;
      }
    }
    if (run) runs.push_back(NormalizeDir(d));
  }
  for (const std::string& r : runs) {
    if (stopping_) return;
    EvaluateRun(r, now);
  }
}

void Daemon::EvaluateRun(const std::string& dir, int64_t now) {
  const std::string id = RunId(dir);
  absl::StatusOr<std::optional<RunRecord>> existing = store_->GetRun(id);
  if (!existing.ok()) return;
  RunRecord run;
  bool is_new = !existing->has_value();
  if (!is_new) run = **existing;
  bool has_shards, has_manifest;
  std::string fp = Fingerprint(dir, &has_shards, &has_manifest);
  if (!has_shards && has_manifest) {
    // A consolidated output (ours, kind "consolidated") is not a run to consolidate.
    absl::StatusOr<Manifest> m = ReadRunManifest(dir);
    if (m.ok() && m->kind == kManifestKindConsolidated) return;
  }
  // Nor is a remap's output (per-rank shards renamed from a run): it is that job's result.
  if (is_new) {
    if (absl::StatusOr<std::vector<JobRecord>> jobs = store_->ListJobs(); jobs.ok()) {
      for (const JobRecord& j : *jobs) {
        if (j.kind == JobKind::kRemap && j.output == dir) return;
      }
    }
  }
  if (is_new) {
    run.id = id;
    run.path = dir;
    run.first_seen_ms = now;
    run.last_change_ms = now;
    run.state = RunState::kIncomplete;
    run.output = OutputFor(dir);
    // Not in the journal (first sight, or a journal rebuilt after corruption): an output whose
    // index was published after every source file last changed is this run's finished result.
    if (BaseName(dir) != kShardedSubdir && PublishedAfterSources(dir, run.output)) {
      run.fingerprint = fp;
      run.state = RunState::kPublished;
      run.detail = "published:" + fp;
      Journaled(store_->UpsertRun(run), "run");
      return;
    }
  }
  if (fp != run.fingerprint) {
    run.fingerprint = fp;
    run.last_change_ms = now;
    if (run.state == RunState::kPublished || run.state == RunState::kParked ||
        run.state == RunState::kFailed) {
      run.state = RunState::kIncomplete;  // re-saved: it will be consolidated again once finished
    }
  }
  if (run.state == RunState::kQueued || run.state == RunState::kRunning ||
      run.state == RunState::kPublished || run.state == RunState::kParked ||
      run.state == RunState::kFailed) {
    if (is_new || fp != (**existing).fingerprint) Journaled(store_->UpsertRun(run), "UpsertRun");
    return;
  }
  Config c = config();
  // What needs a person, decided before anything is read: a symlinked shard or manifest (never
  // followed), and an output that would land outside the roots or on a source.
  if (std::string park = WhyParked(dir, run.output); !park.empty()) {
    if (run.state != RunState::kParked || run.detail != park) {
      run.state = RunState::kParked;
      run.detail = park;
      Log("warning", "run parked", {{"path", dir}, {"why", park}});
      Journaled(store_->UpsertRun(run), "UpsertRun");
    }
    return;
  }
  std::string why;
  bool ready = false;
  if (has_manifest) {
    run.detection = "manifest";
    // The one manifest parser: a malformed or hostile manifest is an error value, never an
    // exception in the scheduler thread.
    absl::StatusOr<Manifest> m = ReadRunManifest(dir);
    if (!m.ok()) {
      why = absl::StrCat("completion manifest is unreadable: ", m.status().message());
    } else {
      ready = true;
      for (const ManifestFile& f : m->files) {
        absl::StatusOr<FileStat> st = RootsFs().Stat(JoinPath(dir, f.name));
        if (!st.ok() || st->size != f.size) {
          ready = false;
          why = absl::StrCat("manifest lists ", f.name, " (", f.size, " bytes), which ",
                             st.ok() ? absl::StrCat("has ", st->size, " bytes") : "is missing");
          break;
        }
      }
      if (ready) {
        // Every listed file is in place; the scan judges the rest (ranks, coverage, extras).
        ScanOptions so;
        so.expect_ranks = c.ExpectedRanksFor(dir);
        absl::StatusOr<CheckpointLayout> ck = CheckpointLayout::Scan(RootsFs(), dir, so);
        if (!ck.ok()) {
          ready = false;
          why = std::string(ck.status().message());
        } else if (ck->HasBlockingProblem()) {
          ready = false;
          for (const Problem& p : ck->problems()) {
            if (IsBlocking(p.kind)) {
              why = p.ToString();
              break;
            }
          }
        }
      }
    }
  } else {
    run.detection = "inferred";
    double quiet_ms = c.quiet_period_seconds * 1000;
    if (now - run.last_change_ms < quiet_ms) {
      why = "changed less than the quiet period ago";
      NoteDeadline(run.last_change_ms + static_cast<int64_t>(quiet_ms) + 1);
    } else {
      ScanOptions so;
      so.expect_ranks = c.ExpectedRanksFor(dir);
      so.strict = c.strict;
      absl::StatusOr<CheckpointLayout> ck = CheckpointLayout::Scan(RootsFs(), dir, so);
      if (!ck.ok()) {
        why = std::string(ck.status().message());
      } else if (!ck->problems().empty()) {
        why = ck->problems()[0].ToString();
      } else if (ck->kind() != CheckpointKind::kDcpSharded) {
        why = "not a per-rank DCP checkpoint";
      } else if (ck->tensors().empty()) {
        why = "its shard files hold no tensors";
      } else {
        ready = true;
        if (!ck->completeness().proven) {
          // Headers alone cannot rule out a lost highest rank: say so (the run's API record
          // carries it too, under "completeness").
          Log("warning", "run finished by inference; its completeness cannot be proven",
              {{"path", dir}, {"why", ck->completeness().unproven}});
        }
      }
    }
  }
  if (!ready) {
    run.state = RunState::kIncomplete;
    run.detail = why;
    Journaled(store_->UpsertRun(run), "UpsertRun");
    return;
  }
  // RUN/sharded/ whose writer already consolidated it into RUN (PyTorch's
  // enable_consolidation publishes RUN's index last): nothing to do.
  if (BaseName(dir) == kShardedSubdir &&
      RootsFs().Stat(JoinPath(run.output, std::string(kIndexFileName))).ok() &&
      run.detail.rfind("published:", 0) != 0) {
    run.state = RunState::kPublished;
    run.detail = "consolidated by its writer into " + run.output;
    Journaled(store_->UpsertRun(run), "UpsertRun");
    return;
  }
  // An output already published for exactly these files is never redone.
  if (RootsFs().Stat(JoinPath(run.output, std::string(kIndexFileName))).ok() &&
      run.detail == "published:" + fp) {
    run.state = RunState::kPublished;
    Journaled(store_->UpsertRun(run), "UpsertRun");
    return;
  }
  JobRecord j;
  j.run_id = run.id;
  j.output = run.output;
  j.created_ms = now;
  absl::StatusOr<int64_t> jid = store_->AddJob(j);
  if (!jid.ok()) {
    // No job: the run stays visible as not done, and the next evaluation tries again.
    run.state = RunState::kIncomplete;
    run.detail = absl::StrCat("could not queue its consolidation: ", jid.status().message());
    Journaled(store_->UpsertRun(run), "run");
    Log("error", "could not queue a consolidation", {{"run", run.id}, {"error", run.detail}});
    return;
  }
  run.state = RunState::kQueued;
  run.detail = "";
  Journaled(store_->UpsertRun(run), "run");
  Log("info", "run finished; consolidation queued",
      {{"run", run.id},
       {"path", dir},
       {"detection", run.detection},
       {"job", *jid},
       {"output", run.output}});
}

}  // namespace safeshard::daemon
