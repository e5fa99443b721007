#include "core/io/http_filesystem.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "nlohmann/json.hpp"

namespace safeshard {

using json = nlohmann::json;

struct HttpFileSystem::Request {
  std::string method = "GET";
  std::string url;
  std::optional<std::pair<uint64_t, uint64_t>> range;  // inclusive bytes a-b
  std::vector<std::string> headers;
  // Body sinks: into `dst` (its first `dst_size` bytes), into `fd` at `fd_offset`, or into
  // `body` (capped at 64 MiB: listings and small files).
  char* dst = nullptr;
  size_t dst_size = 0;
  int sink_fd = -1;
  uint64_t fd_offset = 0;
  // Upload source (PUT).
  int upload_fd = -1;
  uint64_t upload_size = 0;
  bool head = false;
};

struct HttpFileSystem::Response {
  long code = 0;
  std::string body;
  std::map<std::string, std::string> headers;  // lower-case names
  uint64_t received = 0;                       // body bytes delivered to the sink
  bool overflow = false;  // more body than `dst` holds arrived (a range ignored): transfer stopped
  bool redirected = false;  // the answer came from another URL (a CDN)
};

namespace {

void GlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// One easy handle per thread, reused so connections stay alive between requests.
struct ThreadHandle {
  CURL* h = nullptr;
  ~ThreadHandle() {
    if (h) curl_easy_cleanup(h);
  }
};
CURL* Handle() {
  thread_local ThreadHandle t;
  if (t.h == nullptr)
    t.h = curl_easy_init();
  else
    curl_easy_reset(t.h);
  return t.h;
}

struct Transfer {
  const HttpFileSystem::Request* req;
  HttpFileSystem::Response* resp;
  HttpStats* stats;
  bool write_error = false;
  bool overflow = false;
  uint64_t upload_pos = 0;
};

size_t OnBody(char* p, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t len = size * n;
  t->stats->bytes_received += len;
  const char* data = p;
  const size_t avail = len;
  // Only a successful answer's body goes to the caller's sink; an error page (404, 401, 5xx) is
  // kept in `body` for the message, never written into a destination or spool.
  const bool success = t->resp->code >= 200 && t->resp->code < 300;
  if (t->req->dst != nullptr && success) {
    // More than was asked for (a server answering a range with the whole file): stop the
    // transfer rather than download a file of any size; the caller sees `overflow`.
    const uint64_t at = t->resp->received;
    const size_t take = static_cast<size_t>(
        std::min<uint64_t>(avail, t->req->dst_size - std::min(at, t->req->dst_size)));
    std::memcpy(t->req->dst + at, data, take);
    t->resp->received += take;
    if (take < avail) {
      t->overflow = true;
      return 0;  // aborts the transfer
    }
    return len;
  }
  if (t->req->sink_fd >= 0 && success) {
    size_t off = 0;
    while (off < avail) {
      ssize_t w = pwrite(t->req->sink_fd, data + off, avail - off,
                         static_cast<off_t>(t->req->fd_offset + t->resp->received));
      if (w <= 0) {
        t->write_error = true;
        return 0;  // aborts the transfer
      }
      off += static_cast<size_t>(w);
      t->resp->received += static_cast<uint64_t>(w);
    }
    return len;
  }
  if (t->resp->body.size() < (64u << 20)) t->resp->body.append(data, avail);
  t->resp->received += avail;
  return len;
}

size_t OnHeader(char* p, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  absl::string_view line(p, size * n);
  if (absl::StartsWith(line, "HTTP/")) {
    t->resp->headers.clear();  // a new response (after a 100 Continue or a redirect)
    std::vector<absl::string_view> parts = absl::StrSplit(line, ' ');
    long code = 0;
    if (parts.size() >= 2 && absl::SimpleAtoi(parts[1], &code)) t->resp->code = code;
    return size * n;
  }
  size_t colon = line.find(':');
  if (colon != absl::string_view::npos) {
    std::string name = absl::AsciiStrToLower(line.substr(0, colon));
    t->resp->headers[name] = std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
  }
  return size * n;
}

size_t OnUpload(char* p, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const uint64_t left = t->req->upload_size - t->upload_pos;
  const size_t want = static_cast<size_t>(std::min<uint64_t>(size * n, left));
  if (want == 0) return 0;
  ssize_t r = pread(t->req->upload_fd, p, want, static_cast<off_t>(t->upload_pos));
  if (r < 0) return CURL_READFUNC_ABORT;
  t->upload_pos += static_cast<uint64_t>(r);
  t->stats->bytes_sent += static_cast<uint64_t>(r);
  return static_cast<size_t>(r);
}

bool RetryableCurl(CURLcode c) {
  switch (c) {
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_NOT_BUILT_IN:
    case CURLE_WRITE_ERROR:  // our sink failed (e.g. a full local disk): not the network
    case CURLE_ABORTED_BY_CALLBACK: return false;
    default: return true;
  }
}

std::string Describe(const HttpFileSystem::Request& r) {
  std::string s = absl::StrCat(r.method, " ", r.url);
  if (r.range) absl::StrAppend(&s, " (bytes ", r.range->first, "-", r.range->second, ")");
  return s;
}

absl::Status StatusForHttp(const HttpFileSystem::Request& r, const HttpFileSystem::Response& resp,
                           bool has_token) {
  std::string what = absl::StrCat(Describe(r), ": HTTP ", resp.code);
  switch (resp.code) {
    case 401:
    case 403:
      return absl::PermissionDeniedError(absl::StrCat(
          what, resp.code == 401 ? " Unauthorized" : " Forbidden", ": the server refused ",
          has_token ? "the token (check --token, HF_TOKEN or ~/.cache/huggingface/token)"
                    : "a request without a token (pass --token, or set HF_TOKEN or "
                      "~/.cache/huggingface/token)"));
    case 404: return absl::NotFoundError(absl::StrCat(what, " Not Found"));
    case 405:
      return absl::FailedPreconditionError(
          absl::StrCat(what, " Method Not Allowed (is WebDAV enabled for writes?)"));
    case 409: return absl::FailedPreconditionError(absl::StrCat(what, " Conflict"));
    case 412:
      return absl::AbortedError(
          absl::StrCat(what,
                       " Precondition Failed: the file changed on the server after it was opened "
                       "(its ETag no longer "
                       "matches); nothing read from the new version was used, open it again"));
    case 416:
      return absl::OutOfRangeError(
          absl::StrCat(what, " Range Not Satisfiable (the file is shorter)"));
    default: return absl::UnavailableError(absl::StrCat(what));
  }
}

int64_t ParseHttpDate(const std::string& s) {
  if (s.empty()) return 0;
  time_t t = curl_getdate(s.c_str(), nullptr);
  return t < 0 ? 0 : static_cast<int64_t>(t) * 1000000000;
}

std::string WithSlash(std::string url) {
  if (url.empty() || url.back() != '/') url.push_back('/');
  return url;
}

// A 206 answer's "Content-Range: bytes FIRST-LAST/TOTAL" (TOTAL may be "*": unknown, 0 here).
struct ContentRange {
  uint64_t first = 0, last = 0, total = 0;
};
std::optional<ContentRange> ParseContentRange(const HttpFileSystem::Response& resp) {
  auto it = resp.headers.find("content-range");
  if (it == resp.headers.end()) return std::nullopt;
  absl::string_view v = it->second;
  if (!absl::ConsumePrefix(&v, "bytes ")) return std::nullopt;
  const size_t dash = v.find('-'), slash = v.find('/');
  if (dash == absl::string_view::npos || slash == absl::string_view::npos || slash < dash)
    return std::nullopt;
  ContentRange r;
  if (!absl::SimpleAtoi(v.substr(0, dash), &r.first) ||
      !absl::SimpleAtoi(v.substr(dash + 1, slash - dash - 1), &r.last) || r.last < r.first) {
    return std::nullopt;
  }
  if (v.substr(slash + 1) != "*" && !absl::SimpleAtoi(v.substr(slash + 1), &r.total))
    return std::nullopt;
  return r;
}

// "scheme://host[:port]" of a URL ("" if it has none).
std::string Origin(const std::string& url) {
  const size_t scheme = url.find("://");
  if (scheme == std::string::npos) return "";
  const size_t path = url.find('/', scheme + 3);
  return url.substr(0, path);
}

}  // namespace

std::string NextPageLink(absl::string_view value) {
  for (absl::string_view part : absl::StrSplit(value, ',')) {
    part = absl::StripAsciiWhitespace(part);
    if (!absl::ConsumePrefix(&part, "<")) continue;
    const size_t end = part.find('>');
    if (end == absl::string_view::npos) continue;
    const absl::string_view target = part.substr(0, end);
    for (absl::string_view param : absl::StrSplit(part.substr(end + 1), ';')) {
      param = absl::StripAsciiWhitespace(param);
      if (param == "rel=\"next\"" || param == "rel=next") return std::string(target);
    }
  }
  return "";
}

namespace {

std::string NoSlash(std::string url) {
  while (url.size() > 1 && url.back() == '/' && !absl::EndsWith(url, "://")) url.pop_back();
  return url;
}

class SpoolRegion : public MappedRegion {
 public:
  SpoolRegion(void* p, size_t n) : p_(p), n_(n) {}
  ~SpoolRegion() override {
    if (p_ && n_) munmap(p_, n_);
  }
  absl::string_view data() const override { return {static_cast<const char*>(p_), n_}; }

 private:
  void* p_;
  size_t n_;
};

absl::StatusOr<int> NewSpoolFile() {
  const char* dir = std::getenv("TMPDIR");
  std::string tmpl = absl::StrCat(dir && *dir ? dir : "/tmp", "/safeshard-spool-XXXXXX");
  int fd = mkstemp(tmpl.data());
  if (fd < 0)
    return absl::ResourceExhaustedError(
        absl::StrCat(tmpl, ": cannot create a spool file: ", std::strerror(errno)));
  unlink(tmpl.c_str());  // gone when closed, whatever happens
  return fd;
}

class HttpReadable : public ReadableFile {
 public:
  // `etag`: the strong ETag the file had when opened ("" if none); every read then asks for that
  // version (If-Match), so a file replaced mid-read fails with HTTP 412 instead of mixing versions.
  // `prefix`: the file's first bytes, fetched when it was opened (reads within them are free).
  HttpReadable(HttpFileSystem* fs, std::string path, std::string url, uint64_t size,
               std::string etag, std::string prefix = "")
      : fs_(fs),
        path_(std::move(path)),
        url_(std::move(url)),
        size_(size),
        etag_(std::move(etag)),
        prefix_(std::move(prefix)) {}
  ~HttpReadable() override {
    if (spool_fd_ >= 0) close(spool_fd_);
  }
  const std::string& path() const override { return path_; }
  uint64_t size() const override { return size_; }
  bool remote() const override { return true; }

  absl::Status ReadAt(uint64_t offset, size_t n, char* dst) const override {
    if (offset > size_ || n > size_ - offset) {
      return absl::DataLossError(absl::StrCat(path_, ": ", n, " bytes at offset ", offset,
                                              " lie beyond the end of the file (", size_,
                                              " bytes)"));
    }
    if (n == 0) return absl::OkStatus();
    if (offset + n <= prefix_.size()) {
      std::memcpy(dst, prefix_.data() + offset, n);
      return absl::OkStatus();
    }
    {
      std::lock_guard<std::mutex> l(mu_);
      if (map_) {
        std::memcpy(dst, map_->data().data() + offset, n);
        return absl::OkStatus();
      }
    }
    return fs_->ReadRange(url_, offset, n, dst, etag_);
  }

  absl::StatusOr<std::shared_ptr<const MappedRegion>> Map() override {
    std::lock_guard<std::mutex> l(mu_);
    if (map_) return map_;
    absl::StatusOr<int> fd = NewSpoolFile();
    if (!fd.ok()) return fd.status();
    spool_fd_ = *fd;
    if (size_ > 0) {
      if (ftruncate(spool_fd_, static_cast<off_t>(size_)) != 0) {
        return absl::ResourceExhaustedError(
            absl::StrCat("spool for ", path_, ": ", std::strerror(errno)));
      }
      // Download in ranges so a dropped connection resumes where it stopped.
      constexpr uint64_t kPiece = 64ull << 20;
      for (uint64_t at = 0; at < size_; at += kPiece) {
        const uint64_t n = std::min(kPiece, size_ - at);
        HttpFileSystem::Request r;
        r.url = url_;
        r.range = {{at, at + n - 1}};
        r.sink_fd = spool_fd_;
        r.fd_offset = at;
        if (!etag_.empty()) r.headers = {"If-Match: " + etag_};
        absl::StatusOr<HttpFileSystem::Response> resp = fs_->Send(r);
        if (!resp.ok()) return resp.status();
        if (resp->code != 206 && !(at == 0 && n == size_ && resp->received == n)) {
          return absl::FailedPreconditionError(
              absl::StrCat("GET ", url_, ": the server ignored the Range header (HTTP ", resp->code,
                           "); ranged reads are required"));
        }
      }
      void* p = mmap(nullptr, size_, PROT_READ, MAP_SHARED, spool_fd_, 0);
      if (p == MAP_FAILED)
        return absl::InternalError(
            absl::StrCat("mmap spool of ", path_, ": ", std::strerror(errno)));
      map_ = std::make_shared<SpoolRegion>(p, size_);
    } else {
      map_ = std::make_shared<SpoolRegion>(nullptr, 0);
    }
    return map_;
  }

 private:
  HttpFileSystem* fs_;
  std::string path_, url_;
  uint64_t size_;
  std::string etag_;
  const std::string prefix_;
  mutable std::mutex mu_;
  int spool_fd_ = -1;
  std::shared_ptr<const MappedRegion> map_;
};

class HttpWritable : public WritableFile {
 public:
  HttpWritable(HttpFileSystem* fs, std::string path, std::string url, int fd)
      : fs_(fs), path_(std::move(path)), url_(std::move(url)), fd_(fd) {}
  ~HttpWritable() override {
    if (fd_ >= 0) close(fd_);  // never uploaded: nothing appears on the server
  }
  const std::string& path() const override { return path_; }
  absl::Status Append(absl::string_view data) override { return WriteAt(size_, data); }
  absl::Status WriteAt(uint64_t offset, absl::string_view data) override {
    if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat(path_, ": already closed"));
    size_t done = 0;
    while (done < data.size()) {
      ssize_t w =
          pwrite(fd_, data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
      if (w < 0) {
        if (errno == EINTR) continue;
        return absl::ResourceExhaustedError(
            absl::StrCat(path_, ": local spool write failed: ", std::strerror(errno)));
      }
      done += static_cast<size_t>(w);
    }
    size_ = std::max<uint64_t>(size_, offset + data.size());
    return absl::OkStatus();
  }
  absl::Status Allocate(uint64_t size) override {
    if (ftruncate(fd_, static_cast<off_t>(size)) != 0) {
      return absl::ResourceExhaustedError(
          absl::StrCat(path_, ": local spool: ", std::strerror(errno)));
    }
    size_ = size;
    return absl::OkStatus();
  }
  absl::Status Sync() override { return absl::OkStatus(); }  // durability comes with Close (PUT)
  absl::Status Close() override {
    if (fd_ < 0) return absl::OkStatus();
    absl::Status s = fs_->PutFile(url_, fd_, size_);
    close(fd_);
    fd_ = -1;
    return s;
  }

 private:
  HttpFileSystem* fs_;
  std::string path_, url_;
  int fd_;
  uint64_t size_ = 0;
};

}  // namespace

HttpFileSystem::HttpFileSystem(HttpOptions options) : options_(std::move(options)) {
  GlobalInit();
}
HttpFileSystem::~HttpFileSystem() = default;

absl::StatusOr<HttpFileSystem::Response> HttpFileSystem::Send(const Request& req) {
  absl::Status last;
  int backoff = options_.initial_backoff_ms;
  for (int attempt = 1; attempt <= std::max(1, options_.max_attempts); ++attempt) {
    if (attempt > 1) {
      stats_.retries++;
      std::this_thread::sleep_for(std::chrono::milliseconds(backoff));
      backoff = std::min(backoff * 2, 10000);
    }
    CURL* h = Handle();
    Response resp;
    Transfer t{&req, &resp, &stats_};
    curl_slist* headers = nullptr;
    std::string auth;
    if (!options_.token.empty()) {
      auth = "Authorization: Bearer " + options_.token;
      headers = curl_slist_append(headers, auth.c_str());
    }
    headers = curl_slist_append(headers, "Expect:");
    for (const std::string& hd : req.headers) headers = curl_slist_append(headers, hd.c_str());
    std::string range;
    if (req.range) range = absl::StrCat(req.range->first, "-", req.range->second);
    curl_easy_setopt(h, CURLOPT_URL, req.url.c_str());
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_USERAGENT, options_.user_agent.c_str());
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, static_cast<long>(options_.connect_timeout_s));
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, static_cast<long>(options_.stall_timeout_s));
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, OnBody);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, OnHeader);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &t);
    // Follow redirects only for reads (the Hub redirects to its CDN); never resend a token to
    // another host.
    const bool read = req.method == "GET" || req.head;
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, read && !req.head ? 1L : 0L);
    curl_easy_setopt(h, CURLOPT_UNRESTRICTED_AUTH, 0L);
    if (!range.empty()) curl_easy_setopt(h, CURLOPT_RANGE, range.c_str());
    if (req.head) {
      curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else if (req.upload_fd >= 0) {
      curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
      curl_easy_setopt(h, CURLOPT_READFUNCTION, OnUpload);
      curl_easy_setopt(h, CURLOPT_READDATA, &t);
      curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(req.upload_size));
    } else if (req.method != "GET") {
      curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, req.method.c_str());
    }
    stats_.requests++;
    CURLcode rc = curl_easy_perform(h);
    long code = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    resp.code = code;
    long redirects = 0;
    curl_easy_getinfo(h, CURLINFO_REDIRECT_COUNT, &redirects);
    resp.redirected = redirects > 0;
    curl_slist_free_all(headers);
    if (t.overflow && code >= 200 && code < 300) {
      resp.overflow = true;
      return resp;  // the caller decides (ReadRange refuses; OpenRead falls back to HEAD)
    }
    if (rc != CURLE_OK) {
      last = absl::UnavailableError(absl::StrCat(Describe(req), ": ", curl_easy_strerror(rc)));
      if (t.write_error)
        return absl::ResourceExhaustedError(
            absl::StrCat(Describe(req), ": writing the local spool failed"));
      if (!RetryableCurl(rc)) return last;
      continue;
    }
    if (code >= 500) {
      last = absl::UnavailableError(absl::StrCat(Describe(req), ": HTTP ", code));
      continue;
    }
    if (code >= 400) return StatusForHttp(req, resp, !options_.token.empty());
    const bool redirect = code == 301 || code == 302 || code == 303 || code == 307 || code == 308;
    if (code >= 300 && !redirect && code != 304) {
      return absl::UnavailableError(absl::StrCat(Describe(req), ": unexpected HTTP ", code));
    }
    if (req.range && !req.head && code == 206) {
      // The bytes the answer says it carries ("bytes a-b/total": fewer than asked at the end of
      // a file), else the bytes asked for.
      uint64_t want = req.range->second - req.range->first + 1;
      if (std::optional<ContentRange> cr = ParseContentRange(resp)) want = cr->last - cr->first + 1;
      if (resp.received != want) {  // truncated mid-transfer
        last = absl::UnavailableError(absl::StrCat(Describe(req), ": got ", resp.received, " of ",
                                                   want, " bytes (connection dropped)"));
        continue;
      }
    }
    return resp;
  }
  return absl::UnavailableError(
      absl::StrCat(last.message(), " (after ", options_.max_attempts, " attempts)"));
}

absl::Status HttpFileSystem::ReadRange(const std::string& url, uint64_t offset, size_t n, char* dst,
                                       const std::string& etag) {
  if (n == 0) return absl::OkStatus();
  Request r;
  r.url = url;
  if (!etag.empty()) r.headers = {"If-Match: " + etag};
  r.range = {{offset, offset + n - 1}};
  r.dst = dst;
  r.dst_size = n;
  absl::StatusOr<Response> resp = Send(r);
  if (!resp.ok()) return resp.status();
  if ((resp->code == 200 && offset > 0) || resp->overflow) {
    return absl::FailedPreconditionError(absl::StrCat(
        "GET ", url,
        ": the server ignored the Range header (HTTP 200); ranged reads are required"));
  }
  if (resp->received != n) {
    return absl::DataLossError(absl::StrCat("GET ", url, " (bytes ", offset, "-", offset + n - 1,
                                            "): got ", resp->received, " bytes"));
  }
  return absl::OkStatus();
}

absl::Status HttpFileSystem::PutFile(const std::string& url, int fd, uint64_t size) {
  Request r;
  r.method = "PUT";
  r.url = url;
  r.upload_fd = fd;
  r.upload_size = size;
  absl::StatusOr<Response> resp = Send(r);
  if (!resp.ok()) return resp.status();
  return absl::OkStatus();
}

absl::Status HttpFileSystem::RefuseWrite(const std::string& path) const {
  return absl::PermissionDeniedError(absl::StrCat(
      path,
      ": hf:// is read-only (safeshard reads Hub checkpoints; write locally or over WebDAV)"));
}

absl::StatusOr<FileStat> HttpFileSystem::Stat(const std::string& path) {
  return StatUrl(path, nullptr);
}

absl::StatusOr<FileStat> HttpFileSystem::StatUrl(const std::string& path, std::string* etag) {
  const std::string url = ToUrl(path);
  Request r;
  r.method = "HEAD";
  r.head = true;
  r.url = url;
  absl::StatusOr<Response> resp = Send(r);
  if (!resp.ok()) return resp.status();
  FileStat st;
  auto header = [&](const char* n) {
    auto it = resp->headers.find(n);
    return it == resp->headers.end() ? std::string() : it->second;
  };
  if (resp->code == 301 || resp->code == 302 || resp->code == 303 || resp->code == 307 ||
      resp->code == 308) {
    const std::string loc = header("location");
    if (absl::EndsWith(loc, "/")) {
      st.is_dir = true;
      return st;
    }
    // A redirect to the file's content (the Hub's CDN): follow with a one-byte ranged GET.
    char byte;
    Request g;
    g.url = url;
    g.range = {{0, 0}};
    g.dst = &byte;
    g.dst_size = 1;
    absl::StatusOr<Response> gr = Send(g);
    if (!gr.ok()) return gr.status();
    std::optional<ContentRange> cr = ParseContentRange(*gr);
    if (!cr || cr->total == 0) {
      return absl::UnavailableError(
          absl::StrCat("GET ", url, ": no Content-Range with the file size in the answer"));
    }
    st.size = cr->total;
    st.mtime_ns = ParseHttpDate(header("last-modified"));
    return st;
  }
  if (absl::EndsWith(url, "/")) {
    st.is_dir = true;
    return st;
  }
  if (!absl::SimpleAtoi(header("content-length"), &st.size)) {
    return absl::UnavailableError(absl::StrCat("HEAD ", url, ": no Content-Length in the answer"));
  }
  st.mtime_ns = ParseHttpDate(header("last-modified"));
  // Only a strong ETag from the server that serves the bytes (not a redirect: a CDN has its own
  // ETags) can be matched by later ranged reads.
  if (etag) {
    const std::string e = header("etag");
    if (!e.empty() && !absl::StartsWith(e, "W/")) *etag = e;
  }
  return st;
}

absl::StatusOr<std::vector<DirEntry>> HttpFileSystem::List(const std::string& dir) {
  const std::string url = WithSlash(ToUrl(dir));
  std::vector<DirEntry> out;
  std::string why;
  {
    Request r;
    r.url = url;
    absl::StatusOr<Response> resp = Send(r);
    if (resp.ok()) {
      json j = json::parse(resp->body, nullptr, false);
      if (j.is_array()) {
        for (const json& e : j) {
          if (!e.is_object() || !e.contains("name") || !e["name"].is_string()) continue;
          out.push_back({e["name"].get<std::string>(), e.value("type", "") == "directory"});
        }
        std::sort(out.begin(), out.end(),
                  [](const DirEntry& a, const DirEntry& b) { return a.name < b.name; });
        return out;
      }
      why = "its answer is not a JSON directory index";
    } else if (absl::IsUnavailable(resp.status())) {
      return resp.status();
    } else {
      // 404, or 403 from a server that lists nothing: try the other sources. (A refused token
      // shows again on the index json below.)
      why = std::string(resp.status().message());
    }
  }
  absl::StatusOr<std::vector<DirEntry>> extra = ListExtra(dir);
  if (extra.ok()) return extra;
  // The model index names the files.
  Request r;
  r.url = url + "model.safetensors.index.json";
  absl::StatusOr<Response> idx = Send(r);
  if (!idx.ok() && absl::IsPermissionDenied(idx.status())) return idx.status();
  if (idx.ok()) {
    json j = json::parse(idx->body, nullptr, false);
    if (j.is_object() && j.contains("weight_map") && j["weight_map"].is_object()) {
      std::set<std::string> names = {"model.safetensors.index.json"};
      for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
        if (it.value().is_string()) names.insert(it.value().get<std::string>());
      }
      for (const std::string& n : names) out.push_back({n, false});
      return out;
    }
  }
  return absl::NotFoundError(
      absl::StrCat("cannot list ", url, ": ", why,
                   ", and it has no model.safetensors.index.json (serve a JSON index, e.g. nginx "
                   "\"autoindex on; autoindex_format json;\", or open a single file)"));
}

absl::StatusOr<std::unique_ptr<ReadableFile>> HttpFileSystem::OpenRead(const std::string& path) {
  // One ranged GET of the first bytes instead of a HEAD: its Content-Range gives the size, and
  // the bytes are what a header read asks for first (a scan then needs one more request per
  // file, for the rest of the header). Redirects (the Hub's CDN) are followed once, here.
  {
    const std::string url = ToUrl(path);
    std::string prefix(kOpenPrefixBytes, '\0');
    Request r;
    r.url = url;
    r.range = {{0, kOpenPrefixBytes - 1}};
    r.dst = prefix.data();
    r.dst_size = prefix.size();
    absl::StatusOr<Response> resp = Send(r);
    // A refused token, a server down after all retries: final. A 404 (maybe an hf:// directory)
    // or 416 (an empty file) is told apart by the HEAD below.
    if (!resp.ok() && !absl::IsNotFound(resp.status()) && !absl::IsOutOfRange(resp.status()))
      return resp.status();
    if (resp.ok() && resp->code == 206 && !resp->overflow) {
      std::optional<ContentRange> cr = ParseContentRange(*resp);
      const uint64_t total = cr ? cr->total : 0;
      if (total > 0 && resp->received == std::min<uint64_t>(total, kOpenPrefixBytes)) {
        prefix.resize(resp->received);
        std::string etag;
        auto e = resp->headers.find("etag");
        if (!resp->redirected && e != resp->headers.end() && !absl::StartsWith(e->second, "W/"))
          etag = e->second;
        return std::unique_ptr<ReadableFile>(
            new HttpReadable(this, path, url, total, std::move(etag), std::move(prefix)));
      }
    }
    // Anything else (an empty file's 416, a server without ranges, a directory, a 404 to be
    // told apart from an hf:// directory): the HEAD below says what it is.
  }
  std::string etag;
  absl::StatusOr<FileStat> st = StatUrl(path, &etag);
  if (!st.ok() && absl::IsNotFound(st.status())) {
    absl::StatusOr<FileStat> dir = Stat(path);  // hf:// directories exist only in the tree API
    if (dir.ok() && dir->is_dir) st = dir;
  }
  if (!st.ok()) return st.status();
  if (st->is_dir) return absl::FailedPreconditionError(absl::StrCat(path, ": is a directory"));
  return std::unique_ptr<ReadableFile>(
      new HttpReadable(this, path, ToUrl(path), st->size, std::move(etag)));
}

absl::StatusOr<std::unique_ptr<WritableFile>> HttpFileSystem::Create(const std::string& path) {
  if (read_only()) return RefuseWrite(path);
  absl::StatusOr<int> fd = NewSpoolFile();
  if (!fd.ok()) return fd.status();
  return std::unique_ptr<WritableFile>(new HttpWritable(this, path, ToUrl(path), *fd));
}

absl::StatusOr<std::unique_ptr<WritableFile>> HttpFileSystem::OpenForWrite(
    const std::string& path) {
  if (read_only()) return RefuseWrite(path);
  return absl::UnimplementedError(absl::StrCat(
      path, ": ranges of an existing remote file cannot be written; write the output locally"));
}

absl::Status HttpFileSystem::Rename(const std::string& from, const std::string& to) {
  if (read_only()) return RefuseWrite(from);
  Request r;
  r.method = "MOVE";
  r.url = ToUrl(from);
  r.headers = {"Destination: " + ToUrl(to), "Overwrite: T"};
  absl::StatusOr<Response> resp = Send(r);
  return resp.ok() ? absl::OkStatus() : resp.status();
}

absl::Status HttpFileSystem::Remove(const std::string& path) {
  if (read_only()) return RefuseWrite(path);
  Request r;
  r.method = "DELETE";
  r.url = ToUrl(path);
  absl::StatusOr<Response> resp = Send(r);
  return resp.ok() ? absl::OkStatus() : resp.status();
}

absl::Status HttpFileSystem::MakeDirs(const std::string& dir) {
  if (read_only()) return RefuseWrite(dir);
  const std::string url = NoSlash(ToUrl(dir));
  absl::StatusOr<FileStat> st = Stat(url);
  if (st.ok() && st->is_dir) return absl::OkStatus();
  // MKCOL each level below the host, top down; existing ones answer 405.
  const size_t scheme = url.find("://");
  size_t pos = url.find('/', scheme == std::string::npos ? 0 : scheme + 3);
  while (pos != std::string::npos) {
    size_t next = url.find('/', pos + 1);
    std::string level = url.substr(0, next == std::string::npos ? url.size() : next);
    if (level.size() > pos + 1) {
      Request r;
      r.method = "MKCOL";
      r.url = level + "/";
      absl::StatusOr<Response> resp = Send(r);
      if (!resp.ok() && !absl::IsFailedPrecondition(resp.status())) return resp.status();
    }
    pos = next;
  }
  return absl::OkStatus();
}

absl::Status HttpFileSystem::SyncDir(const std::string&) {
  return absl::OkStatus();
}

// ------------------------------------------------------------------ hf://

absl::StatusOr<HfPath> ParseHfPath(const std::string& url) {
  absl::string_view rest = url;
  if (!absl::ConsumePrefix(&rest, "hf://"))
    return absl::InvalidArgumentError(absl::StrCat(url, ": not an hf:// URL"));
  std::vector<std::string> parts = absl::StrSplit(rest, absl::MaxSplits('/', 2));
  if (parts.size() < 2 || parts[0].empty() || parts[1].empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(url, ": expected hf://ORG/REPO[@REVISION]/PATH"));
  }
  HfPath p;
  p.org = parts[0];
  p.repo = parts[1];
  if (size_t at = p.repo.find('@'); at != std::string::npos) {
    p.revision = p.repo.substr(at + 1);
    p.repo = p.repo.substr(0, at);
    if (p.revision.empty() || p.repo.empty())
      return absl::InvalidArgumentError(absl::StrCat(url, ": empty repository or revision"));
  }
  if (parts.size() == 3) p.path = std::string(absl::StripSuffix(parts[2], "/"));
  return p;
}

HfFileSystem::HfFileSystem(HttpOptions options, std::string endpoint)
    : HttpFileSystem(std::move(options)), endpoint_(NoSlash(std::move(endpoint))) {}

std::string HfFileSystem::ToUrl(const std::string& path) const {
  absl::StatusOr<HfPath> p = ParseHfPath(path);
  if (!p.ok()) return path;  // already a URL
  std::string url = absl::StrCat(endpoint_, "/", p->org, "/", p->repo, "/resolve/", p->revision);
  if (!p->path.empty()) absl::StrAppend(&url, "/", p->path);
  return url;
}

absl::StatusOr<FileStat> HfFileSystem::Stat(const std::string& path) {
  absl::StatusOr<HfPath> p = ParseHfPath(path);
  if (p.ok() && p->path.empty()) return FileStat{0, 0, true};  // the repository's root
  absl::StatusOr<FileStat> st = HttpFileSystem::Stat(path);
  if (st.ok() || !absl::IsNotFound(st.status())) return st;
  // The Hub has no directory URLs: a path is a directory when the tree API lists it.
  absl::StatusOr<std::vector<DirEntry>> entries = ListExtra(path);
  if (entries.ok()) return FileStat{0, 0, true};
  return st;
}

absl::StatusOr<std::vector<DirEntry>> HfFileSystem::ListExtra(const std::string& dir) {
  absl::StatusOr<HfPath> p = ParseHfPath(dir);
  if (!p.ok()) return p.status();
  Request r;
  r.url = absl::StrCat(endpoint_, "/api/models/", p->org, "/", p->repo, "/tree/", p->revision,
                       p->path.empty() ? "" : "/", p->path);
  // The listing comes in pages: each names the next in `Link: <URL>; rel="next"` (GitHub-style,
  // as huggingface_hub's paginate() follows). A checkpoint of 1,000+ rank files spans several.
  std::vector<DirEntry> out;
  std::set<std::string> seen;
  for (int page = 1;; ++page) {
    seen.insert(r.url);
    absl::StatusOr<Response> resp = Send(r);
    if (!resp.ok()) return resp.status();
    json j = json::parse(resp->body, nullptr, false);
    if (!j.is_array()) {
      if (page == 1) return absl::NotFoundError("not a tree listing");
      return absl::UnavailableError(
          absl::StrCat("GET ", r.url, ": page ", page, " of the tree listing is not a JSON array"));
    }
    for (const json& e : j) {
      if (!e.is_object() || !e.contains("path") || !e["path"].is_string()) continue;
      out.push_back({BaseName(e["path"].get<std::string>()), e.value("type", "") == "directory"});
    }
    auto link = resp->headers.find("link");
    std::string next = link == resp->headers.end() ? "" : NextPageLink(link->second);
    if (next.empty()) break;
    if (absl::StartsWith(next, "/")) next = Origin(endpoint_) + next;
    if (Origin(next) != Origin(endpoint_)) {  // the token goes only to the endpoint
      return absl::UnavailableError(
          absl::StrCat("GET ", r.url, ": the next page of the tree listing is on another host (",
                       Origin(next), "); not following"));
    }
    if (seen.count(next)) {
      return absl::UnavailableError(
          absl::StrCat("GET ", r.url, ": the tree listing's pages loop back to ", next));
    }
    r.url = next;
  }
  std::sort(out.begin(), out.end(),
            [](const DirEntry& a, const DirEntry& b) { return a.name < b.name; });
  return out;
}

}  // namespace safeshard
