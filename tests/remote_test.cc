// Remote storage against a real nginx started here (config: core/testing/nginx.conf.in): header-
// only scans counted from nginx's access log, the CLI on URLs, 401s that name the URL and never
// the token, dropped connections retried to an exact result, hf:// through $HF_ENDPOINT, WebDAV
// writes published atomically, and consolidation of a remote checkpoint into a local directory.
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "cli/cli.h"
#include "core/consolidate/consolidate.h"
#include "core/example/example.h"
#include "core/io/atomic_file.h"
#include "core/io/http_filesystem.h"
#include "core/io/url.h"
#include "core/layout/layout.h"
#include "core/testing/nginx.h"
#include "core/testing/testing.h"
#include "gtest/gtest.h"

namespace safeshard {
namespace {

constexpr char kToken[] = "test-token-4b1d";

class RemoteTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = testing::NewTempDir() + "/www";
    std::filesystem::create_directories(root_);
    auto s = testing::NginxServer::Start(root_, kToken);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
  }
  // A generated per-rank checkpoint under the served root.
  std::string Serve(const std::string& name, WriteOptions o = {.ranks = 4},
                    std::vector<ExampleTensor> model = {}) {
    if (model.empty()) model = TransformerLikeModel({.layers = 2, .hidden = 64, .vocab = 256});
    EXPECT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), root_ + "/" + name, model, o).ok());
    return server_->url() + "/" + name;
  }
  std::unique_ptr<HttpFileSystem> Fs(const std::string& token = kToken) {
    HttpOptions o;
    o.token = token;
    o.initial_backoff_ms = 10;
    return std::make_unique<HttpFileSystem>(o);
  }
  int Cli(std::vector<std::string> args, std::string* out = nullptr, std::string* err = nullptr) {
    std::ostringstream o, e;
    args.insert(args.begin(), "safeshard");
    int rc = RunSafeshard(args, o, e);
    if (out) *out = o.str();
    if (err) *err = e.str();
    return rc;
  }
  std::string root_;
  std::unique_ptr<testing::NginxServer> server_;
};

TEST_F(RemoteTest, ScanReadsOnlyHeaderBytes) {
  const std::string url = Serve("ckpt");
  auto local = CheckpointLayout::Scan(LocalFileSystem(), root_ + "/ckpt");
  ASSERT_TRUE(local.ok());
  server_->ClearAccessLog();
  auto fs = Fs();
  auto ck = CheckpointLayout::Scan(*fs, url);
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_TRUE(ck->problems().empty());
  EXPECT_EQ(ck->tensors().size(), local->tensors().size());
  ASSERT_EQ(ck->files().size(), 4u);
  // nginx's own count of body bytes: the directory index plus, per file, its first 64 bytes
  // (the 8-byte length and the header's start; enough to recognise a Git LFS pointer) and the
  // rest of its header — not one byte of tensor data, no byte twice.
  uint64_t header_bytes = 0, file_bytes = 0;
  for (const FileInfo& f : local->files()) {
    header_bytes += f.header->data_start();
    file_bytes += f.size;
  }
  uint64_t data_gets = 0, listing = 0;
  std::map<std::string, int> requests_per_file;
  for (const auto& e : server_->AccessLog()) {
    if (absl::EndsWith(e.path, ".safetensors")) {
      EXPECT_EQ(e.method, "GET") << e.path;  // no HEAD: opening a file fetches its first bytes
      requests_per_file[e.path]++;
    }
    if (e.method != "GET") continue;
    if (absl::EndsWith(e.path, "/")) {
      listing += e.bytes;
    } else {
      EXPECT_FALSE(e.range.empty()) << e.path << ": a GET without Range";
      EXPECT_EQ(e.status, 206) << e.path;
      data_gets += e.bytes;
    }
  }
  EXPECT_EQ(data_gets, header_bytes);
  ASSERT_EQ(requests_per_file.size(), 4u);
  for (const auto& [path, n] : requests_per_file)
    EXPECT_EQ(n, 2) << path << ": the first 64 bytes, then the rest of the header";
  EXPECT_GT(listing, 0u);
  EXPECT_LT(data_gets + listing, file_bytes / 10);
  // Identical layouts (chunks, byte ranges) to the local scan.
  for (size_t i = 0; i < ck->tensors().size(); ++i) {
    const TensorLayout& a = ck->tensors()[i];
    const TensorLayout& b = local->tensors()[i];
    EXPECT_EQ(a.name, b.name);
    ASSERT_EQ(a.chunks.size(), b.chunks.size());
    for (size_t c = 0; c < a.chunks.size(); ++c) EXPECT_EQ(a.chunks[c].begin, b.chunks[c].begin);
  }
}

TEST_F(RemoteTest, CliInspectVerifyConsolidateAndRemapTakeUrls) {
  const std::string url = Serve("run");
  std::string out, err;
  EXPECT_EQ(Cli({"verify", url, "--token", kToken}, &out, &err), 0) << err;
  EXPECT_EQ(Cli({"inspect", url, "--json", "--token", kToken}, &out, &err), 0) << err;
  EXPECT_NE(out.find("model.layers.1.mlp.gate_proj.weight"), std::string::npos);
  // The token from the environment, then from the Hugging Face token file.
  setenv("HF_TOKEN", kToken, 1);
  EXPECT_EQ(Cli({"verify", url}, &out, &err), 0) << err;
  unsetenv("HF_TOKEN");
  const std::string home = testing::NewTempDir();
  std::filesystem::create_directories(home + "/.cache/huggingface");
  testing::WriteFile(home + "/.cache/huggingface/token", std::string(kToken) + "\n");
  const char* old_home = std::getenv("HOME");
  const std::string saved = old_home ? old_home : "";
  setenv("HOME", home.c_str(), 1);
  EXPECT_EQ(Cli({"verify", url}, &out, &err), 0) << err;
  setenv("HOME", saved.c_str(), 1);
  // Consolidate a remote checkpoint into a local directory: the same bytes as from local files.
  const std::string remote_out = testing::NewTempDir() + "/from-remote";
  const std::string local_out = testing::NewTempDir() + "/from-local";
  ASSERT_EQ(Cli({"consolidate", url, remote_out, "--token", kToken, "--max-shard-size", "100KB"},
                &out, &err),
            0)
      << err;
  ASSERT_EQ(
      Cli({"consolidate", root_ + "/run", local_out, "--max-shard-size", "100KB"}, &out, &err), 0)
      << err;
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(local_out)) {
    const std::string name = e.path().filename().string();
    EXPECT_TRUE(testing::ReadFile(remote_out + "/" + name) == testing::ReadFile(e.path().string()))
        << name;
    ++files;
  }
  EXPECT_GT(files, 2);
  // Remap a remote checkpoint into a local directory.
  const std::string remapped = testing::NewTempDir() + "/remapped";
  ASSERT_EQ(Cli({"remap", url, remapped, "--rule", "^model\\.=>backbone.", "--token", kToken}, &out,
                &err),
            0)
      << err;
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), remapped);
  ASSERT_TRUE(ck.ok());
  EXPECT_NE(ck->FindTensor("backbone.embed_tokens.weight"), nullptr);
  EXPECT_TRUE(ck->problems().empty());
  // A remote checkpoint diffs equal to its local files, and to its local consolidation.
  EXPECT_EQ(Cli({"diff", url, root_ + "/run", "--token", kToken}, &out, &err), 0) << out << err;
  EXPECT_NE(out.find("identical; 0 only in A, 0 only in B"), std::string::npos) << out;
  EXPECT_EQ(Cli({"diff", url, local_out, "--token", kToken}, &out, &err), 0) << out << err;
  // A remote output is refused with a clear message.
  EXPECT_EQ(Cli({"consolidate", url, url + "-hf", "--token", kToken}, &out, &err), 2);
  EXPECT_NE(err.find("local"), std::string::npos) << err;
}

TEST_F(RemoteTest, MissingOrWrongTokenIsA401NamingTheUrlNotTheToken) {
  const std::string url = Serve("secret");
  unsetenv("HF_TOKEN");
  const char* old_home = std::getenv("HOME");
  const std::string saved_home = old_home ? old_home : "";
  setenv("HOME", testing::NewTempDir().c_str(), 1);  // no ~/.cache/huggingface/token
  for (const std::string& token : {std::string(), std::string("wrong-token-9x7q")}) {
    auto fs = Fs(token);
    auto ck = CheckpointLayout::Scan(*fs, url);
    ASSERT_FALSE(ck.ok());
    EXPECT_EQ(ck.status().code(), absl::StatusCode::kPermissionDenied);
    const std::string msg(ck.status().message());
    EXPECT_NE(msg.find(url), std::string::npos) << msg;
    EXPECT_NE(msg.find("401"), std::string::npos) << msg;
    if (!token.empty()) {
      EXPECT_EQ(msg.find(token), std::string::npos) << msg;
    }
    EXPECT_EQ(fs->stats().retries.load(), 0u) << "4xx must not be retried";
    std::string out, err;
    std::vector<std::string> args = {"verify", url};
    if (!token.empty()) args.insert(args.end(), {"--token", token});
    EXPECT_NE(Cli(args, &out, &err), 0);
    EXPECT_NE(err.find("401"), std::string::npos) << err;
    if (!token.empty()) {
      EXPECT_EQ(err.find(token), std::string::npos) << err;
    }
  }
  setenv("HOME", saved_home.c_str(), 1);
}

TEST_F(RemoteTest, DroppedConnectionsAreRetriedAndTheResultIsExact) {
  const std::string url_path = "/flaky";
  Serve("flaky", {.ranks = 2}, {{"big", DType::kF32, {512, 1024}, Sharding::kRow}});
  // The first 3 connections die after 100 KB of answer.
  auto proxy = testing::FlakyProxy::Start(server_->port(), 3, 100 * 1024);
  ASSERT_TRUE(proxy.ok()) << proxy.status();
  auto fs = Fs();
  const std::string file = "shard-00001-model-00001-of-00001.safetensors";
  auto f = fs->OpenRead((*proxy)->url() + url_path + "/" + file);
  ASSERT_TRUE(f.ok()) << f.status();
  const std::string want = testing::ReadFile(root_ + url_path + "/" + file);
  ASSERT_GT(want.size(), 1000000u);
  std::string got(want.size(), '\0');
  ASSERT_TRUE((*f)->ReadAt(0, got.size(), got.data()).ok());
  EXPECT_TRUE(got == want);
  EXPECT_GE((*proxy)->dropped(), 1);
  EXPECT_GE(fs->stats().retries.load(), 1u);
  // A whole-file download (consolidation's path) resumes too.
  auto m = (*f)->Map();
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_TRUE((*m)->data() == want);
  // Consolidating through the flaky server gives the local result.
  const std::string a = testing::NewTempDir() + "/a", b = testing::NewTempDir() + "/b";
  ConsolidateOptions o;
  o.output_fs = &LocalFileSystem();
  auto flaky = testing::FlakyProxy::Start(server_->port(), 2, 300 * 1024);
  ASSERT_TRUE(flaky.ok());
  auto r = Consolidate(*fs, (*flaky)->url() + url_path, a, o);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(Consolidate(LocalFileSystem(), root_ + url_path, b, {}).ok());
  EXPECT_TRUE(testing::ReadFile(a + "/model.safetensors") ==
              testing::ReadFile(b + "/model.safetensors"));
}

TEST_F(RemoteTest, AFileReplacedOnTheServerWhileOpenIsNotMixedIntoTheResult) {
  Serve("moving", {.ranks = 2});
  const std::string file = "shard-00001-model-00001-of-00001.safetensors";
  const std::string local = root_ + "/moving/" + file;
  const std::string url = server_->url() + "/moving/" + file;
  const std::string before = testing::ReadFile(local);
  auto fs = Fs();
  auto f = fs->OpenRead(url);
  ASSERT_TRUE(f.ok()) << f.status();
  std::string head(64, '\0');
  ASSERT_TRUE((*f)->ReadAt(0, head.size(), head.data()).ok());
  EXPECT_EQ(head, before.substr(0, 64));
  // A writer replaces the file with other bytes of the same size (nginx's ETag is the
  // modification time and size: a later mtime makes a new version).
  std::string after = before;
  for (size_t i = before.size() / 2; i < before.size(); ++i)
    after[i] = static_cast<char>(~after[i]);
  testing::WriteFile(local + ".new", after);
  std::filesystem::last_write_time(
      local + ".new", std::filesystem::last_write_time(local) + std::chrono::seconds(30));
  std::filesystem::rename(local + ".new", local);
  std::string got(before.size(), '\0');
  absl::Status s = (*f)->ReadAt(0, got.size(), got.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), url)) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "changed on the server")) << s;
  EXPECT_EQ((*f)->Map().status().code(), absl::StatusCode::kAborted);
  // Not retried: one request each.
  int gets_after_change = 0;
  for (const auto& e : server_->AccessLog())
    gets_after_change += e.method == "GET" && e.status == 412;
  EXPECT_EQ(gets_after_change, 2);
  // Opened again, the new version reads whole.
  auto g = fs->OpenRead(url);
  ASSERT_TRUE(g.ok()) << g.status();
  ASSERT_TRUE((*g)->ReadAt(0, got.size(), got.data()).ok());
  EXPECT_TRUE(got == after);
}

TEST_F(RemoteTest, AServerWithoutRangesIsRefusedWithoutDownloadingWholeFiles) {
  // 64 MiB behind a server that answers every GET with the whole file.
  const std::string dir = root_ + "/norange/big";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir,
                                 {{"w", DType::kF32, {4096, 4096}, Sharding::kRow}}, {.ranks = 1})
                  .ok());
  const std::string url = server_->url() + "/norange/big";
  auto fs = Fs();
  auto ck = CheckpointLayout::Scan(*fs, url);
  ASSERT_TRUE(ck.ok()) << ck.status();  // a scan reports unreadable files as problems
  ASSERT_EQ(ck->files().size(), 1u);
  ASSERT_TRUE(ck->files()[0].error.has_value());
  EXPECT_TRUE(absl::StrContains(*ck->files()[0].error, "ignored the Range header"))
      << *ck->files()[0].error;
  std::string out, err;
  EXPECT_EQ(Cli({"verify", url, "--token", kToken}, &out, &err), 1);
  EXPECT_TRUE(absl::StrContains(out + err, "ranged reads are required")) << out << err;
  const uint64_t file_size = ck->files()[0].size;
  ASSERT_GT(file_size, 64u << 20);
  uint64_t served = 0;
  for (const auto& e : server_->AccessLog()) served += e.method == "GET" ? e.bytes : 0;
  EXPECT_LT(served, file_size / 2) << "transfers of unwanted bytes must stop early";
}

TEST_F(RemoteTest, WritingRangesOfAnExistingRemoteFileIsRefusedClearly) {
  // WebDAV has no partial writes: whole files are PUT (Create); OpenForWrite says so, and hf://
  // refuses every write.
  auto fs = Fs();
  auto w = fs->OpenForWrite(server_->url() + "/out/model.safetensors");
  EXPECT_EQ(w.status().code(), absl::StatusCode::kUnimplemented) << w.status();
  EXPECT_NE(std::string(w.status().message()).find("write the output locally"), std::string::npos)
      << w.status();
  HfFileSystem hf(HttpOptions{}, server_->url());
  EXPECT_EQ(hf.OpenForWrite("hf://acme/tiny/x.safetensors").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(hf.Create("hf://acme/tiny/x.safetensors").status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST_F(RemoteTest, OpeningEmptyAndTinyFilesGivesTheirSizes) {
  std::filesystem::create_directories(root_ + "/small");
  testing::WriteFile(root_ + "/small/empty.bin", "");
  testing::WriteFile(root_ + "/small/tiny.bin", "0123456789");
  auto fs = Fs();
  auto empty = fs->OpenRead(server_->url() + "/small/empty.bin");  // the 64-byte GET gets a 416
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ((*empty)->size(), 0u);
  auto tiny = fs->OpenRead(server_->url() + "/small/tiny.bin");
  ASSERT_TRUE(tiny.ok()) << tiny.status();
  ASSERT_EQ((*tiny)->size(), 10u);
  std::string got(4, '\0');
  ASSERT_TRUE((*tiny)->ReadAt(6, 4, got.data()).ok());
  EXPECT_EQ(got, "6789");
  EXPECT_EQ((*tiny)->ReadAt(8, 4, got.data()).code(), absl::StatusCode::kDataLoss);  // past the end
  auto dir = fs->OpenRead(server_->url() + "/small");
  EXPECT_EQ(dir.status().code(), absl::StatusCode::kFailedPrecondition) << dir.status();
  auto missing = fs->OpenRead(server_->url() + "/small/none.bin");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound) << missing.status();
}

TEST_F(RemoteTest, ServerErrorsAreRetriedClientErrorsAreNot) {
  Serve("busy", {.ranks = 1}, {{"w", DType::kF32, {64, 64}, Sharding::kReplicated}});
  // Two 503 answers, then the real server.
  auto proxy = testing::FlakyProxy::Start(server_->port(), 2, 0, /*answer_503=*/true);
  ASSERT_TRUE(proxy.ok()) << proxy.status();
  auto fs = Fs();
  auto ck = CheckpointLayout::Scan(*fs, (*proxy)->url() + "/busy");
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_TRUE(ck->problems().empty());
  EXPECT_EQ((*proxy)->dropped(), 2);
  EXPECT_EQ(fs->stats().retries.load(), 2u);
  // More 503s than attempts: a clear error after the last one.
  auto always = testing::FlakyProxy::Start(server_->port(), 1000, 0, true);
  ASSERT_TRUE(always.ok());
  auto fs2 = Fs();
  auto bad = fs2->Stat((*always)->url() + "/busy");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(bad.status().message().find("503"), std::string::npos) << bad.status();
  EXPECT_NE(bad.status().message().find("5 attempts"), std::string::npos) << bad.status();
  // A 404 is final at once.
  auto fs3 = Fs();
  EXPECT_EQ(fs3->Stat(server_->url() + "/busy/nope.safetensors").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(fs3->stats().requests.load(), 1u);
  EXPECT_EQ(fs3->stats().retries.load(), 0u);
}

TEST_F(RemoteTest, HfUrlsResolveAgainstHfEndpoint) {
  // The Hub's layout: {endpoint}/ORG/REPO/resolve/REVISION/PATH.
  Serve("acme/tiny/resolve/v1.0/ckpt");
  setenv("HF_ENDPOINT", server_->url().c_str(), 1);
  UrlOptions uo;
  uo.token = kToken;
  auto where = ResolveUrl("hf://acme/tiny@v1.0/ckpt", uo);
  ASSERT_TRUE(where.ok()) << where.status();
  EXPECT_TRUE(where->remote);
  auto ck = CheckpointLayout::Scan(*where->fs, where->path);
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_TRUE(ck->problems().empty());
  EXPECT_EQ(ck->files().size(), 4u);
  bool resolved = false;
  for (const auto& e : server_->AccessLog())
    resolved |= absl::StartsWith(e.path, "/acme/tiny/resolve/v1.0/ckpt/");
  EXPECT_TRUE(resolved);
  std::string out, err;
  EXPECT_EQ(Cli({"verify", "hf://acme/tiny@v1.0/ckpt", "--token", kToken}, &out, &err), 0) << err;
  // Read-only.
  auto w = where->fs->Create(where->path + "/x");
  EXPECT_EQ(w.status().code(), absl::StatusCode::kPermissionDenied);
  // Default revision "main" and bad URLs.
  EXPECT_EQ(static_cast<HfFileSystem*>(where->fs.get())->ToUrl("hf://a/b/c.safetensors"),
            server_->url() + "/a/b/resolve/main/c.safetensors");
  EXPECT_EQ(ResolveUrl("hf://onlyorg").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResolveUrl("s3://bucket/x").status().code(), absl::StatusCode::kInvalidArgument);
  unsetenv("HF_ENDPOINT");
}

TEST_F(RemoteTest, HfListsThroughTheHubTreeApiWhereThereIsNoDirectoryIndex) {
  // The Hub's shapes, served statically under /noindex/ (no autoindex): files under
  // ORG/REPO/resolve/REV/, and the tree API's JSON at api/models/ORG/REPO/tree/REV/PATH.
  const std::string endpoint_dir = root_ + "/noindex";
  const std::string files = endpoint_dir + "/acme/tiny/resolve/main/ckpt";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), files,
                                 TransformerLikeModel({.layers = 1, .hidden = 32, .vocab = 64}),
                                 {.ranks = 2})
                  .ok());
  std::string tree = "[";
  for (const auto& e : std::filesystem::directory_iterator(files)) {
    if (tree.size() > 1) tree += ",";
    tree += absl::StrCat(R"({"type":"file","oid":"0","size":)", e.file_size(), R"(,"path":"ckpt/)",
                         e.path().filename().string(), R"("})");
  }
  tree += "]";
  std::filesystem::create_directories(endpoint_dir + "/api/models/acme/tiny/tree/main");
  testing::WriteFile(endpoint_dir + "/api/models/acme/tiny/tree/main/ckpt", tree);
  setenv("HF_ENDPOINT", (server_->url() + "/noindex").c_str(), 1);
  UrlOptions uo;
  uo.token = kToken;
  auto where = ResolveUrl("hf://acme/tiny/ckpt", uo);
  ASSERT_TRUE(where.ok());
  auto ck = CheckpointLayout::Scan(*where->fs, where->path);
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_EQ(ck->files().size(), 2u);
  EXPECT_TRUE(ck->problems().empty());
  bool used_tree = false;
  for (const auto& e : server_->AccessLog())
    used_tree |= e.path == "/noindex/api/models/acme/tiny/tree/main/ckpt";
  EXPECT_TRUE(used_tree);

  // A listing the Hub pages (Link: <...?cursor=N>; rel="next"): 5 rank files over 3 pages.
  const std::string paged = endpoint_dir + "/acme/paged/resolve/main/ckpt";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), paged,
                                 TransformerLikeModel({.layers = 1, .hidden = 32, .vocab = 64}),
                                 {.ranks = 5})
                  .ok());
  std::vector<std::string> entries;
  for (const auto& e : std::filesystem::directory_iterator(paged)) {
    entries.push_back(absl::StrCat(R"({"type":"file","oid":"0","size":)", e.file_size(),
                                   R"(,"path":"ckpt/)", e.path().filename().string(), R"("})"));
  }
  ASSERT_EQ(entries.size(), 5u);
  const std::string page = endpoint_dir + "/api/models/acme/paged/tree/main/ckpt";
  std::filesystem::create_directories(endpoint_dir + "/api/models/acme/paged/tree/main");
  testing::WriteFile(page, "[" + entries[0] + "," + entries[1] + "]");
  testing::WriteFile(page + ".2", "[" + entries[2] + "," + entries[3] + "]");
  testing::WriteFile(page + ".3", "[" + entries[4] + "]");
  server_->ClearAccessLog();
  auto paged_where = ResolveUrl("hf://acme/paged/ckpt", uo);
  ASSERT_TRUE(paged_where.ok());
  auto paged_ck = CheckpointLayout::Scan(*paged_where->fs, paged_where->path);
  ASSERT_TRUE(paged_ck.ok()) << paged_ck.status();
  EXPECT_EQ(paged_ck->files().size(), 5u);
  EXPECT_EQ(paged_ck->rank_count(), 5);
  EXPECT_TRUE(paged_ck->problems().empty());
  int pages = 0;
  for (const auto& e : server_->AccessLog())
    pages += absl::StartsWith(e.path, "/noindex/api/models/acme/paged/tree/main/ckpt");
  EXPECT_EQ(pages, 3);  // FILE, FILE.2, FILE.3: each page once
  unsetenv("HF_ENDPOINT");
}

TEST(HttpLinkHeaderTest, FindsTheNextPage) {
  EXPECT_EQ(
      NextPageLink(R"(<https://hub.example/api/models/a/b/tree/main?cursor=xyz>; rel="next")"),
      "https://hub.example/api/models/a/b/tree/main?cursor=xyz");
  EXPECT_EQ(NextPageLink(R"(<https://h/p?page=1>; rel="prev", <https://h/p?page=3>; rel="next")"),
            "https://h/p?page=3");
  EXPECT_EQ(NextPageLink(R"(</api/tree?cursor=2>;rel=next)"), "/api/tree?cursor=2");
  EXPECT_EQ(NextPageLink(R"(<https://h/p?page=9>; rel="last")"), "");
  EXPECT_EQ(NextPageLink(""), "");
  EXPECT_EQ(NextPageLink("garbage; rel=\"next\""), "");
}

TEST_F(RemoteTest, WithoutADirectoryIndexTheModelIndexJsonLists) {
  // An HF-layout checkpoint (several files + index json) where the server lists nothing.
  const std::string src = root_ + "/src";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), src,
                                 TransformerLikeModel({.layers = 2, .hidden = 64, .vocab = 256}),
                                 {.ranks = 2})
                  .ok());
  ConsolidateOptions co;
  co.max_shard_size = 100000;
  ASSERT_TRUE(Consolidate(LocalFileSystem(), src, root_ + "/noindex/hf", co).ok());
  auto fs = Fs();
  const std::string url = server_->url() + "/noindex/hf";
  auto listed = fs->List(url);
  ASSERT_TRUE(listed.ok()) << listed.status();
  auto ck = CheckpointLayout::Scan(*fs, url);
  ASSERT_TRUE(ck.ok()) << ck.status();
  auto local = CheckpointLayout::Scan(LocalFileSystem(), root_ + "/noindex/hf");
  ASSERT_TRUE(local.ok());
  EXPECT_TRUE(ck->problems().empty());
  EXPECT_EQ(ck->files().size(), local->files().size());
  EXPECT_EQ(ck->tensors().size(), local->tensors().size());
  EXPECT_FALSE(ck->index_file().empty());
  // Neither listing source: a clear error naming the URL and what would work.
  ASSERT_TRUE(std::filesystem::create_directories(root_ + "/noindex/empty"));
  auto none = fs->List(server_->url() + "/noindex/empty");
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find("/noindex/empty"), std::string::npos) << none.status();
  EXPECT_NE(none.status().message().find("autoindex"), std::string::npos) << none.status();
}

TEST_F(RemoteTest, WebDavWritesPublishAtomically) {
  auto fs = Fs();
  const std::string dir = server_->url() + "/up/a/b";
  ASSERT_TRUE(fs->MakeDirs(dir).ok());
  auto st = fs->Stat(dir);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_TRUE(st->is_dir);
  {
    auto f = AtomicFile::Create(*fs, dir + "/w.safetensors");
    ASSERT_TRUE(f.ok()) << f.status();
    ASSERT_TRUE(f->file().Append("hello ").ok());
    ASSERT_TRUE(f->file().WriteAt(6, "world").ok());
    // Nothing under the final name until Commit.
    EXPECT_FALSE(std::filesystem::exists(root_ + "/up/a/b/w.safetensors"));
    ASSERT_TRUE(f->Commit().ok());
  }
  EXPECT_EQ(testing::ReadFile(root_ + "/up/a/b/w.safetensors"), "hello world");
  auto entries = fs->List(dir);
  ASSERT_TRUE(entries.ok());
  ASSERT_EQ(entries->size(), 1u);  // no temporary file left
  EXPECT_EQ((*entries)[0].name, "w.safetensors");
  {  // Abandoned: nothing appears.
    auto f = AtomicFile::Create(*fs, dir + "/gone.safetensors");
    ASSERT_TRUE(f.ok());
    ASSERT_TRUE(f->file().Append("x").ok());
  }
  EXPECT_EQ(fs->List(dir)->size(), 1u);
  ASSERT_TRUE(fs->Remove(dir + "/w.safetensors").ok());
  EXPECT_EQ(fs->Stat(dir + "/w.safetensors").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace safeshard
