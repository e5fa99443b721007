#include "core/io/url.h"

#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace safeshard {
namespace {

std::mutex& RegistryMu() {
  static std::mutex mu;
  return mu;
}

std::map<std::string, UrlSchemeFactory>& Registry() {
  static auto* r = new std::map<std::string, UrlSchemeFactory>();
  return *r;
}

std::shared_ptr<FileSystem> SharedMemFileSystem() {
  static std::shared_ptr<FileSystem> mem(NewMemFileSystem());
  return mem;
}

std::string ReadTokenFile(const std::string& path) {
  std::ifstream f(path);
  if (!f) return {};
  std::stringstream ss;
  ss << f.rdbuf();
  return std::string(absl::StripAsciiWhitespace(ss.str()));
}

HttpOptions WithToken(const UrlOptions& o) {
  HttpOptions h = o.http;
  h.token = ResolveToken(o);
  return h;
}

void RegisterBuiltins(std::map<std::string, UrlSchemeFactory>& r) {
  r["file"] = [](const std::string& url, const UrlOptions&) -> absl::StatusOr<ResolvedPath> {
    std::string path = url.substr(std::string("file://").size());
    if (path.empty() || path[0] != '/') {
      return absl::InvalidArgumentError(
          absl::StrCat(url, ": file:// URLs take an absolute path (file:///abs/path)"));
    }
    return ResolvedPath{std::shared_ptr<FileSystem>(&LocalFileSystem(), [](FileSystem*) {}), path,
                        false};
  };
  r["mem"] = [](const std::string& url, const UrlOptions&) -> absl::StatusOr<ResolvedPath> {
    return ResolvedPath{SharedMemFileSystem(), "/" + url.substr(std::string("mem://").size()),
                        false};
  };
  auto http = [](const std::string& url, const UrlOptions& o) -> absl::StatusOr<ResolvedPath> {
    return ResolvedPath{std::make_shared<HttpFileSystem>(WithToken(o)), url, true};
  };
  r["http"] = http;
  r["https"] = http;
  r["hf"] = [](const std::string& url, const UrlOptions& o) -> absl::StatusOr<ResolvedPath> {
    absl::StatusOr<HfPath> p = ParseHfPath(url);
    if (!p.ok()) return p.status();
    const char* ep = std::getenv("HF_ENDPOINT");
    std::string endpoint = ep && *ep ? ep : "https://huggingface.co";
    return ResolvedPath{std::make_shared<HfFileSystem>(WithToken(o), endpoint), url, true};
  };
}

}  // namespace

std::string UrlScheme(const std::string& url) {
  size_t p = url.find("://");
  if (p == std::string::npos || p == 0) return {};
  for (size_t i = 0; i < p; ++i) {
    const char c = url[i];
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '+' && c != '-' && c != '.')
      return {};
  }
  return absl::AsciiStrToLower(url.substr(0, p));
}

std::string ResolveToken(const UrlOptions& o) {
  if (!o.token.empty()) return o.token;
  if (const char* t = std::getenv("HF_TOKEN"); t && *t) return t;
  if (const char* home = std::getenv("HF_HOME"); home && *home) {
    std::string t = ReadTokenFile(absl::StrCat(home, "/token"));
    if (!t.empty()) return t;
  }
  if (const char* home = std::getenv("HOME"); home && *home) {
    return ReadTokenFile(absl::StrCat(home, "/.cache/huggingface/token"));
  }
  return {};
}

void RegisterUrlScheme(const std::string& scheme, UrlSchemeFactory factory) {
  std::lock_guard<std::mutex> l(RegistryMu());
  auto& r = Registry();
  if (r.empty()) RegisterBuiltins(r);
  r[absl::AsciiStrToLower(scheme)] = std::move(factory);
}

absl::StatusOr<ResolvedPath> ResolveUrl(const std::string& url, const UrlOptions& options) {
  const std::string scheme = UrlScheme(url);
  if (scheme.empty()) {
    return ResolvedPath{std::shared_ptr<FileSystem>(&LocalFileSystem(), [](FileSystem*) {}), url,
                        false};
  }
  UrlSchemeFactory f;
  std::vector<std::string> known;
  {
    std::lock_guard<std::mutex> l(RegistryMu());
    auto& r = Registry();
    if (r.empty()) RegisterBuiltins(r);
    auto it = r.find(scheme);
    if (it != r.end()) f = it->second;
    for (const auto& [k, v] : r) known.push_back(k + "://");
  }
  if (!f) {
    return absl::InvalidArgumentError(absl::StrCat(url, ": unsupported URL scheme \"", scheme,
                                                   "://\" (supported: ", absl::StrJoin(known, ", "),
                                                   " and plain paths)"));
  }
  return f(url, options);
}

}  // namespace safeshard
