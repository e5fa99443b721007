// url.h: fsspec-style paths. Every place that takes a checkpoint path (CLI, consolidation,
// the HF storage writer and reader) resolves it here to a FileSystem and a path in it.
//
//   /abs/path, rel/path, file:///abs/path   the local file system
//   mem://NAME/...                          a process-wide in-memory file system (tests)
//   http://host/..., https://host/...       HTTP with ranged GETs; WebDAV for writes
//   hf://ORG/REPO[@REVISION]/PATH           the Hugging Face Hub, read-only ($HF_ENDPOINT)
//
//   ASSIGN_OR_RETURN(ResolvedPath p, ResolveUrl("hf://org/model/ckpt", {.token = flag}));
//   ASSIGN_OR_RETURN(CheckpointLayout ck, CheckpointLayout::Scan(*p.fs, p.path));
//
// The token, when none is given, comes from $HF_TOKEN, then $HF_HOME/token or
// ~/.cache/huggingface/token; it is sent only as a bearer header and never printed.
#ifndef SAFESHARD_CORE_IO_URL_H_
#define SAFESHARD_CORE_IO_URL_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/io/filesystem.h"
#include "core/io/http_filesystem.h"

namespace safeshard {

struct UrlOptions {
  std::string token;  // empty: from the environment (see above)
  HttpOptions http;   // its token is filled from `token`
};

struct ResolvedPath {
  std::shared_ptr<FileSystem> fs;
  std::string path;  // what to pass to fs
  bool remote = false;
};

absl::StatusOr<ResolvedPath> ResolveUrl(const std::string& url, const UrlOptions& options = {});

// Adds or replaces a scheme ("s3" for "s3://..."); the factory gets the whole URL.
using UrlSchemeFactory =
    std::function<absl::StatusOr<ResolvedPath>(const std::string& url, const UrlOptions&)>;
void RegisterUrlScheme(const std::string& scheme, UrlSchemeFactory factory);

// The token in effect for `options` (explicit, $HF_TOKEN, the token file), or empty.
std::string ResolveToken(const UrlOptions& options);

// "http", "hf", ... or "" for a plain path.
std::string UrlScheme(const std::string& url);

}  // namespace safeshard

#endif  // SAFESHARD_CORE_IO_URL_H_
