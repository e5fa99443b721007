// http_filesystem.h: FileSystem over HTTP(S) with libcurl, and the hf:// Hugging Face Hub scheme.
//
// Paths are full URLs ("http://host:8080/runs/step-100/shard-00001-...safetensors"); JoinPath and
// DirName work on them unchanged.
//   - reads are ranged GETs (`Range: bytes=a-b`): opening a file fetches its first 64 bytes (the
//     answer's Content-Range gives the size: no HEAD), so reading a header costs one more GET for
//     the rest of it; ReadAt fetches exactly the bytes asked for. Map() downloads the whole file
//     once into an unlinked local spool file (consolidation copies from it; later ReadAt calls on
//     that handle are served from it).
//   - listing uses the server's JSON directory index (nginx `autoindex_format json`; for hf://
//     also the Hub's tree API), falling back to model.safetensors.index.json;
//   - writes (WebDAV) spool locally and PUT on Close(); Rename is MOVE (so AtomicFile's
//     temporary name + rename is an atomic publish), MakeDirs is MKCOL, Remove is DELETE;
//   - a file opened for reading is read only in the version it had when opened: ranged GETs
//     carry `If-Match: <ETag>`, so a file replaced mid-read fails (HTTP 412) rather than mixing
//     bytes of two versions;
//   - every request is retried with exponential backoff on connection errors, timeouts, truncated
//     bodies and 5xx answers, never on 4xx;
//   - the token goes in `Authorization: Bearer ...` and appears in no message or log.
//
//   auto fs = NewHttpFileSystem({.token = "hf_..."});
//   ASSIGN_OR_RETURN(CheckpointLayout ck, CheckpointLayout::Scan(*fs,
//   "http://127.0.0.1:8080/ckpt"));
#ifndef SAFESHARD_CORE_IO_HTTP_FILESYSTEM_H_
#define SAFESHARD_CORE_IO_HTTP_FILESYSTEM_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "core/io/filesystem.h"

namespace safeshard {

struct HttpOptions {
  std::string token;             // sent as a bearer token when not empty
  int max_attempts = 5;          // per request, for retryable failures
  int initial_backoff_ms = 100;  // doubled after every failed attempt
  int connect_timeout_s = 10;
  int stall_timeout_s = 30;  // abort a transfer that moves no byte for this long
  std::string user_agent = "safeshard/1";
};

// Counters of one file system (tests and benchmarks).
struct HttpStats {
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> retries{0};
  std::atomic<uint64_t> bytes_received{0};
  std::atomic<uint64_t> bytes_sent{0};
};

class HttpFileSystem : public FileSystem {
 public:
  explicit HttpFileSystem(HttpOptions options);
  ~HttpFileSystem() override;
  bool remote() const override { return true; }

  absl::StatusOr<FileStat> Stat(const std::string& url) override;
  absl::StatusOr<std::vector<DirEntry>> List(const std::string& dir) override;
  absl::StatusOr<std::unique_ptr<ReadableFile>> OpenRead(const std::string& url) override;
  absl::StatusOr<std::unique_ptr<WritableFile>> Create(const std::string& url) override;
  absl::StatusOr<std::unique_ptr<WritableFile>> OpenForWrite(const std::string& url) override;
  absl::Status Rename(const std::string& from, const std::string& to) override;
  absl::Status Remove(const std::string& url) override;
  absl::Status MakeDirs(const std::string& dir) override;
  absl::Status SyncDir(const std::string& dir) override;

  // Reads [offset, offset + n) of `url` into dst with one ranged GET (retried). With `etag`, only
  // from that version of the file (If-Match): kAborted (HTTP 412) once it was replaced.
  absl::Status ReadRange(const std::string& url, uint64_t offset, size_t n, char* dst,
                         const std::string& etag = "");
  // Uploads a local file's first `size` bytes to `url` (PUT, retried).
  absl::Status PutFile(const std::string& url, int fd, uint64_t size);

  // OpenRead fetches a file's first bytes with one ranged GET (no HEAD); a header read needs
  // exactly these first (the 8-byte length and the header's start).
  static constexpr uint64_t kOpenPrefixBytes = 64;

  const HttpStats& stats() const { return stats_; }
  const HttpOptions& options() const { return options_; }

  // Hooks for hf://: how a path becomes a URL, and extra listing sources.
  virtual std::string ToUrl(const std::string& path) const { return path; }
  virtual bool read_only() const { return false; }

  struct Response;
  struct Request;
  absl::StatusOr<Response> Send(const Request& req);

 protected:
  virtual absl::StatusOr<std::vector<DirEntry>> ListExtra(const std::string& dir) {
    (void)dir;
    return absl::NotFoundError("");
  }
  absl::Status RefuseWrite(const std::string& path) const;

 private:
  // Stat, also returning the file's strong ETag when the server sent one directly (not redirected).
  absl::StatusOr<FileStat> StatUrl(const std::string& path, std::string* etag);
  HttpOptions options_;
  HttpStats stats_;
};

// hf://ORG/REPO[@REVISION]/PATH, read-only: {endpoint}/ORG/REPO/resolve/{REVISION}/PATH with
// endpoint = $HF_ENDPOINT (default https://huggingface.co) and REVISION default "main".
class HfFileSystem : public HttpFileSystem {
 public:
  HfFileSystem(HttpOptions options, std::string endpoint);
  // Directories exist only in the Hub's tree API: a path it lists is a directory.
  absl::StatusOr<FileStat> Stat(const std::string& path) override;
  std::string ToUrl(const std::string& path) const override;
  bool read_only() const override { return true; }
  const std::string& endpoint() const { return endpoint_; }

 protected:
  absl::StatusOr<std::vector<DirEntry>> ListExtra(const std::string& dir) override;

 private:
  std::string endpoint_;
};

// Parses "hf://ORG/REPO[@REV]/PATH" (PATH may be empty). kInvalidArgument otherwise.
struct HfPath {
  std::string org, repo, revision = "main", path;
};
absl::StatusOr<HfPath> ParseHfPath(const std::string& url);

// The URL of rel="next" in a Link header value (`<URL>; rel="next", <URL2>; rel="last"`), as
// paginated listings (the Hub's tree API) send it; "" when there is none.
std::string NextPageLink(absl::string_view link_header);

}  // namespace safeshard

#endif  // SAFESHARD_CORE_IO_HTTP_FILESYSTEM_H_
