// daemon_client.cc: `safeshard runs|jobs|daemon-consolidate` — safeshardd's control API from the
// shell.
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
#include "daemon/api.h"
#include "httplib.h"
#include "nlohmann/json.hpp"

namespace safeshard::cli {
namespace {

struct DaemonArgs {
  std::string address;
  std::string token_file;
  bool json = false;
  std::string run;
};

std::string DefaultDaemonAddress() {
  const char* e = std::getenv("SAFESHARD_DAEMON");
  return e && *e ? e : absl::StrCat(daemon::api::kDefaultAddress, ":", daemon::api::kDefaultPort);
}

std::string DefaultTokenFile() {
  return daemon::api::DefaultClientTokenFile();
}

std::unique_ptr<httplib::Client> Connect(const std::string& address) {
  std::string host = address;
  int port = daemon::api::kDefaultPort;
  size_t colon = address.rfind(':');
  if (colon != std::string::npos) {
    host = address.substr(0, colon);
    (void)absl::SimpleAtoi(address.substr(colon + 1), &port);
  }
  auto c = std::make_unique<httplib::Client>(host, port);
  c->set_connection_timeout(3);
  c->set_read_timeout(30);
  return c;
}

int DaemonGet(const DaemonArgs& a, const std::string& path, std::ostream& err,
              nlohmann::json* out) {
  auto c = Connect(a.address);
  auto r = c->Get(path.c_str());
  if (!r) {
    err << "safeshard: cannot reach safeshardd at " << a.address
        << " (is it running? set --daemon or SAFESHARD_DAEMON)\n";
    return kExitProblems;
  }
  *out = nlohmann::json::parse(r->body, nullptr, false);
  if (r->status != 200 || out->is_discarded()) {
    err << "safeshard: safeshardd answered " << r->status << ": " << r->body << "\n";
    return kExitProblems;
  }
  return kExitOk;
}

int RunRuns(const DaemonArgs& a, std::ostream& out, std::ostream& err) {
  nlohmann::json j;
  if (int rc = DaemonGet(a, daemon::api::kRuns, err, &j); rc != kExitOk) return rc;
  if (a.json) {
    out << internal::DumpJson(j, 2) << "\n";
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows = {{"ID", "STATE", "DETECTION", "PATH", "DETAIL"}};
  for (const auto& r : j["runs"]) {
    std::string detail = r.value("detail", "");
    if (detail.size() > 70) detail = detail.substr(0, 67) + "...";
    if (absl::StartsWith(detail, "published:")) detail = "-> " + r.value("output", "");
    rows.push_back({r.value("id", ""), r.value("state", ""), r.value("detection", ""),
                    r.value("path", ""), detail});
  }
  PrintTable(rows, out, {});
  return kExitOk;
}

int RunJobs(const DaemonArgs& a, std::ostream& out, std::ostream& err) {
  nlohmann::json j;
  if (int rc = DaemonGet(a, daemon::api::kJobs, err, &j); rc != kExitOk) return rc;
  if (a.json) {
    out << internal::DumpJson(j, 2) << "\n";
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows = {
      {"JOB", "RUN", "KIND", "STATE", "PROGRESS", "ERROR"}};
  for (const auto& r : j["jobs"]) {
    uint64_t done = r.value("bytes_done", uint64_t{0}), total = r.value("bytes_total", uint64_t{0});
    std::string prog = total ? absl::StrFormat("%d%% of %s", static_cast<int>(100.0 * done / total),
                                               HumanBytes(total))
                             : "-";
    std::string e = r.value("error", "");
    if (e.size() > 60) e = e.substr(0, 57) + "...";
    rows.push_back({absl::StrCat(r.value("id", 0)), r.value("run", ""), r.value("kind", ""),
                    r.value("state", ""), prog, e});
  }
  PrintTable(rows, out, {});
  return kExitOk;
}

int RunDaemonConsolidate(const DaemonArgs& a, std::ostream& out, std::ostream& err) {
  absl::StatusOr<std::string> token = LocalFileSystem().ReadAll(a.token_file);
  if (!token.ok()) {
    err << "safeshard daemon-consolidate: cannot read the API token: " << token.status().message()
        << " (pass --token-file)\n";
    return kExitUsage;
  }
  std::string id = a.run;
  if (!id.empty() && id[0] == '/') {  // a path: look its id up
    nlohmann::json runs;
    if (int rc = DaemonGet(a, daemon::api::kRuns, err, &runs); rc != kExitOk) return rc;
    std::string want = id;
    while (want.size() > 1 && want.back() == '/') want.pop_back();
    id.clear();
    for (const auto& r : runs["runs"]) {
      if (r.value("path", "") == want) id = r.value("id", "");
    }
    if (id.empty()) {
      err << "safeshard daemon-consolidate: the daemon knows no run at " << a.run << "\n";
      return kExitProblems;
    }
  }
  auto c = Connect(a.address);
  httplib::Headers h = {
      {"Authorization", "Bearer " + std::string(absl::StripAsciiWhitespace(*token))}};
  auto r = c->Post(daemon::api::ConsolidatePath(id).c_str(), h, "", "application/json");
  if (!r) {
    err << "safeshard: cannot reach safeshardd at " << a.address << "\n";
    return kExitProblems;
  }
  if (r->status != 202) {
    err << "safeshard daemon-consolidate: safeshardd answered " << r->status << ": " << r->body;
    return kExitProblems;
  }
  const nlohmann::json answer = nlohmann::json::parse(r->body, nullptr, false);
  if (a.json) {
    out << r->body;
  } else if (answer.is_object() && answer.contains("job") && answer["job"].is_number_integer()) {
    out << "queued: job " << answer["job"].get<int64_t>() << " consolidates run " << id
        << " (follow it with `safeshard jobs`)\n";
  } else {
    out << "queued: " << r->body;
  }
  return kExitOk;
}

}  // namespace

std::vector<Subcommand> AddDaemonClient(CLI::App& app) {
  auto a = std::make_shared<DaemonArgs>();
  a->address = DefaultDaemonAddress();
  a->token_file = DefaultTokenFile();
  CLI::App* runs = app.add_subcommand("runs", "List the runs safeshardd knows, with their state");
  CLI::App* jobs = app.add_subcommand("jobs", "List safeshardd's jobs with state and progress");
  CLI::App* dcons = app.add_subcommand("daemon-consolidate",
                                       "Ask safeshardd to consolidate a run (by id or path) now");
  dcons->add_option("RUN", a->run, "Run id (from `safeshard runs`) or its path")->required();
  for (CLI::App* sub : {runs, jobs, dcons}) {
    sub->add_option("--daemon", a->address,
                    "safeshardd's address (default $SAFESHARD_DAEMON or 127.0.0.1:8470)");
    sub->add_flag("--json", a->json, "Print the daemon's JSON answer");
  }
  dcons->add_option("--token-file", a->token_file,
                    "API token file (default ~/.config/safeshard/token)");

  return {{runs, [a](std::ostream& out, std::ostream& err) { return RunRuns(*a, out, err); }},
          {jobs, [a](std::ostream& out, std::ostream& err) { return RunJobs(*a, out, err); }},
          {dcons, [a](std::ostream& out, std::ostream& err) {
             return RunDaemonConsolidate(*a, out, err);
           }}};
}

}  // namespace safeshard::cli
