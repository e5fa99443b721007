#include "core/io/filesystem.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>

#include "core/io/sigbus_guard.h"
#include "core/testing/testing.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace safeshard {
namespace {

using ::testing::HasSubstr;

// One conformance suite, run against every implementation.
struct FsCase {
  const char* name;
  std::function<std::pair<FileSystem*, std::string>()> make;  // fs and a root directory
};

class FileSystemConformanceTest : public ::testing::TestWithParam<FsCase> {
 protected:
  void SetUp() override {
    auto [fs, root] = GetParam().make();
    fs_ = fs;
    root_ = root;
  }
  FileSystem* fs_;
  std::string root_;
};

TEST_P(FileSystemConformanceTest, WritesReadsAndMaps) {
  std::string p = JoinPath(root_, "a.bin");
  {
    auto w = fs_->Create(p);
    ASSERT_TRUE(w.ok()) << w.status();
    ASSERT_TRUE((*w)->Append("hello ").ok());
    ASSERT_TRUE((*w)->Append("world").ok());
    ASSERT_TRUE((*w)->WriteAt(0, "H").ok());
    ASSERT_TRUE((*w)->Sync().ok());
    ASSERT_TRUE((*w)->Close().ok());
  }
  auto st = fs_->Stat(p);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->size, 11u);
  EXPECT_FALSE(st->is_dir);
  auto r = fs_->OpenRead(p);
  ASSERT_TRUE(r.ok());
  char buf[5];
  ASSERT_TRUE((*r)->ReadAt(6, 5, buf).ok());
  EXPECT_EQ(std::string(buf, 5), "world");
  auto m = (*r)->Map();
  ASSERT_TRUE(m.ok());
  EXPECT_EQ((*m)->data(), "Hello world");
  EXPECT_EQ(*fs_->ReadAll(p), "Hello world");
}

TEST_P(FileSystemConformanceTest, ShortReadIsDataLossNamingOffset) {
  std::string p = JoinPath(root_, "short.bin");
  auto w = fs_->Create(p);
  ASSERT_TRUE((*w)->Append("abc").ok());
  ASSERT_TRUE((*w)->Close().ok());
  auto r = fs_->OpenRead(p);
  char buf[8];
  absl::Status s = (*r)->ReadAt(1, 8, buf);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(s.message()), HasSubstr("short.bin"));
}

TEST_P(FileSystemConformanceTest, ListsSortedAndStatsDirectories) {
  ASSERT_TRUE(fs_->MakeDirs(JoinPath(root_, "d/e")).ok());
  for (const char* n : {"b", "a", "c"}) {
    auto w = fs_->Create(JoinPath(root_, n));
    ASSERT_TRUE(w.ok());
  }
  auto l = fs_->List(root_);
  ASSERT_TRUE(l.ok()) << l.status();
  std::vector<std::string> names;
  for (const auto& e : *l) names.push_back(e.name + (e.is_dir ? "/" : ""));
  EXPECT_EQ(names, (std::vector<std::string>{"a", "b", "c", "d/"}));
  EXPECT_TRUE(fs_->Stat(JoinPath(root_, "d/e"))->is_dir);
}

TEST_P(FileSystemConformanceTest, RenameReplacesAndRemoveDeletes) {
  std::string a = JoinPath(root_, "x"), b = JoinPath(root_, "y");
  {
    auto w = fs_->Create(a);
    ASSERT_TRUE((*w)->Append("1").ok());
  }
  {
    auto w = fs_->Create(b);
    ASSERT_TRUE((*w)->Append("22").ok());
  }
  ASSERT_TRUE(fs_->Rename(a, b).ok());
  EXPECT_EQ(*fs_->ReadAll(b), "1");
  EXPECT_EQ(fs_->Stat(a).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(fs_->Remove(b).ok());
  EXPECT_EQ(fs_->OpenRead(b).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(fs_->SyncDir(root_).ok());
}

TEST_P(FileSystemConformanceTest, MissingFileIsNotFoundNamingPath) {
  auto r = fs_->OpenRead(JoinPath(root_, "nope.safetensors"));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("nope.safetensors"));
}

TEST_P(FileSystemConformanceTest, AllocateSetsSize) {
  std::string p = JoinPath(root_, "big");
  auto w = fs_->Create(p);
  ASSERT_TRUE((*w)->Allocate(4096).ok());
  ASSERT_TRUE((*w)->WriteAt(4000, "z").ok());
  ASSERT_TRUE((*w)->Close().ok());
  EXPECT_EQ(fs_->Stat(p)->size, 4096u);
}

TEST_P(FileSystemConformanceTest, CopyFromAndCopyRangeMoveExactBytes) {
  std::string src = JoinPath(root_, "src"), dst = JoinPath(root_, "dst");
  std::string data;
  for (int i = 0; i < 100000; ++i) data += static_cast<char>(i * 7);
  {
    auto w = fs_->Create(src);
    ASSERT_TRUE((*w)->Append(data).ok());
    ASSERT_TRUE((*w)->Close().ok());
  }
  auto r = fs_->OpenRead(src);
  auto w = fs_->Create(dst);
  ASSERT_TRUE((*w)->Allocate(50000).ok());
  ASSERT_TRUE((*w)->CopyFrom(**r, 1234, 10, 40000).ok());
  ASSERT_TRUE(fs_->CopyRange(src, 0, **w, 40010, 5000).ok());
  ASSERT_TRUE((*w)->Close().ok());
  std::string got = *fs_->ReadAll(dst);
  EXPECT_EQ(got.substr(10, 40000), data.substr(1234, 40000));
  EXPECT_EQ(got.substr(40010, 5000), data.substr(0, 5000));
  auto w2 = fs_->Create(JoinPath(root_, "dst2"));
  EXPECT_FALSE((*w2)->CopyFrom(**r, 99990, 0, 100).ok());  // beyond the end
}

TEST_P(FileSystemConformanceTest, WritableMappingWritesThrough) {
  std::string p = JoinPath(root_, "mapped");
  auto w = fs_->Create(p);
  ASSERT_TRUE((*w)->Allocate(8192).ok());
  absl::StatusOr<char*> m = (*w)->MapWritable(8192);
  if (!m.ok()) {
    EXPECT_EQ(m.status().code(), absl::StatusCode::kUnimplemented);
    return;
  }
  std::memcpy(*m + 4096, "mapped!", 7);
  ASSERT_TRUE((*w)->Sync().ok());
  ASSERT_TRUE((*w)->Close().ok());
  EXPECT_EQ(fs_->ReadAll(p)->substr(4096, 7), "mapped!");
}

INSTANTIATE_TEST_SUITE_P(
    AllFileSystems, FileSystemConformanceTest,
    ::testing::Values(
        FsCase{"Local", [] { return std::make_pair(&LocalFileSystem(), testing::NewTempDir()); }},
        FsCase{"Mem",
               [] {
                 static std::unique_ptr<FileSystem> fs;
                 fs = NewMemFileSystem();
                 EXPECT_TRUE(fs->MakeDirs("/root").ok());
                 return std::make_pair(fs.get(), std::string("/root"));
               }},
        // The confined views output I/O goes through: the same contract, relative paths.
        FsCase{"LocalBeneath",
               [] {
                 static std::unique_ptr<FileSystem> fs;
                 fs = *LocalFileSystem().OpenBeneath(testing::NewTempDir());
                 EXPECT_TRUE(fs->MakeDirs("sub/dir").ok());
                 return std::make_pair(fs.get(), std::string("sub/dir"));
               }},
        FsCase{"MemBeneath",
               [] {
                 static std::unique_ptr<FileSystem> mem, fs;
                 mem = NewMemFileSystem();
                 EXPECT_TRUE(mem->MakeDirs("/root").ok());
                 fs = *mem->OpenBeneath("/root");
                 EXPECT_TRUE(fs->MakeDirs("sub").ok());
                 return std::make_pair(fs.get(), std::string("sub"));
               }}),
    [](const ::testing::TestParamInfo<FsCase>& i) { return std::string(i.param.name); });

TEST(PathTest, JoinsAndSplits) {
  EXPECT_EQ(JoinPath("a", "b"), "a/b");
  EXPECT_EQ(JoinPath("a/", "b"), "a/b");
  EXPECT_EQ(DirName("/x/y.st"), "/x");
  EXPECT_EQ(DirName("y.st"), ".");
  EXPECT_EQ(DirName("/y"), "/");
  EXPECT_EQ(BaseName("/x/y.st"), "y.st");
  EXPECT_EQ(BaseName("/x/dir/"), "dir");
}

class BeneathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = testing::NewTempDir();
    out_ = base_ + "/out";
    elsewhere_ = base_ + "/elsewhere";
    ASSERT_EQ(mkdir(out_.c_str(), 0755), 0);
    ASSERT_EQ(mkdir(elsewhere_.c_str(), 0755), 0);
    testing::WriteFile(elsewhere_ + "/victim", "precious");
  }
  std::string base_, out_, elsewhere_;
};

TEST_F(BeneathTest, ReplacingTheDirectoryBySymlinkDoesNotRedirectWrites) {
  auto fs = LocalFileSystem().OpenBeneath(out_);
  ASSERT_TRUE(fs.ok()) << fs.status();
  // The directory is moved away and a symlink to elsewhere planted under its name.
  ASSERT_EQ(rename(out_.c_str(), (base_ + "/moved").c_str()), 0);
  ASSERT_EQ(symlink(elsewhere_.c_str(), out_.c_str()), 0);
  auto w = (*fs)->Create("model.safetensors");
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_TRUE((*w)->Append("x").ok());
  ASSERT_TRUE((*w)->Close().ok());
  ASSERT_TRUE((*fs)->Rename("model.safetensors", "final.safetensors").ok());
  EXPECT_EQ(testing::ReadFile(base_ + "/moved/final.safetensors"), "x");
  auto listed = LocalFileSystem().List(elsewhere_);
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 1u);  // only the victim
  EXPECT_EQ(testing::ReadFile(elsewhere_ + "/victim"), "precious");
}

TEST_F(BeneathTest, SymlinksInsideAreNeverFollowed) {
  ASSERT_EQ(symlink((elsewhere_ + "/victim").c_str(), (out_ + "/file-link").c_str()), 0);
  ASSERT_EQ(symlink(elsewhere_.c_str(), (out_ + "/dir-link").c_str()), 0);
  auto fs = *LocalFileSystem().OpenBeneath(out_);
  for (const char* p : {"file-link", "dir-link/victim", "dir-link/new"}) {
    auto w = fs->Create(p);
    EXPECT_FALSE(w.ok()) << p;
    if (!w.ok()) {
      EXPECT_THAT(w.status().message(), HasSubstr(out_)) << p;
    }
    EXPECT_FALSE(fs->OpenForWrite(p).ok()) << p;
    EXPECT_FALSE(fs->OpenRead(p).ok()) << p;
  }
  EXPECT_FALSE(fs->MakeDirs("dir-link/sub").ok());
  EXPECT_FALSE(fs->List("dir-link").ok());
  auto entries = fs->List("");
  ASSERT_TRUE(entries.ok());
  for (const DirEntry& e : *entries) {
    EXPECT_TRUE(e.is_symlink) << e.name;
    EXPECT_FALSE(e.is_dir) << e.name;  // not followed
  }
  // Removing or renaming a link acts on the link, never its target.
  ASSERT_TRUE(fs->Remove("file-link").ok());
  EXPECT_EQ(testing::ReadFile(elsewhere_ + "/victim"), "precious");
  EXPECT_EQ(LocalFileSystem().List(elsewhere_)->size(), 1u);
}

TEST_F(BeneathTest, EscapesAreRefusedWithTheirPath) {
  auto fs = *LocalFileSystem().OpenBeneath(out_);
  for (const char* p : {"../elsewhere/victim", "a/../../elsewhere/victim", "/etc/passwd"}) {
    auto w = fs->Create(p);
    ASSERT_FALSE(w.ok()) << p;
    EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument) << p;
    EXPECT_FALSE(fs->OpenRead(p).ok()) << p;
    EXPECT_FALSE(fs->Remove(p).ok()) << p;
  }
  EXPECT_EQ(testing::ReadFile(elsewhere_ + "/victim"), "precious");
  // "." and empty components are the directory itself.
  ASSERT_TRUE(fs->MakeDirs("./a//b").ok());
  EXPECT_TRUE(fs->Stat("a/./b")->is_dir);
  EXPECT_TRUE(fs->Stat("")->is_dir);
}

TEST_F(BeneathTest, NoFollowRefusesASymlinkAnywhereInTheDirectoryPath) {
  ASSERT_EQ(symlink(elsewhere_.c_str(), (base_ + "/link").c_str()), 0);
  ASSERT_EQ(mkdir((elsewhere_ + "/sub").c_str(), 0755), 0);
  EXPECT_FALSE(LocalFileSystemNoFollow().OpenBeneath(base_ + "/link").ok());
  EXPECT_FALSE(LocalFileSystemNoFollow().OpenBeneath(base_ + "/link/sub").ok());
  EXPECT_TRUE(LocalFileSystemNoFollow().OpenBeneath(elsewhere_ + "/sub").ok());
  // The plain local file system follows the user's own symlink to the directory.
  EXPECT_TRUE(LocalFileSystem().OpenBeneath(base_ + "/link/sub").ok());
}

TEST_F(BeneathTest, FifoUnderAnOutputNameIsRefusedWithoutHanging) {
  ASSERT_EQ(mkfifo((out_ + "/model.safetensors").c_str(), 0644), 0);
  for (FileSystem* fs : {&LocalFileSystem(), &LocalFileSystemNoFollow()}) {
    auto w = fs->OpenForWrite(out_ + "/model.safetensors");
    ASSERT_FALSE(w.ok());
    EXPECT_THAT(w.status().message(), HasSubstr("not a regular file"));
  }
  auto b = *LocalFileSystem().OpenBeneath(out_);
  EXPECT_FALSE(b->OpenForWrite("model.safetensors").ok());
  EXPECT_FALSE(b->Create("model.safetensors").ok());
  EXPECT_FALSE(b->OpenRead("model.safetensors").ok());
}

TEST_F(BeneathTest, DirectoryLockWorksThroughTheConfinedView) {
  auto fs = *LocalFileSystem().OpenBeneath(out_);
  auto fd = fs->OpenDirectoryFd("");
  ASSERT_TRUE(fd.ok()) << fd.status();
  struct stat a, b;
  ASSERT_EQ(fstat(*fd, &a), 0);
  ASSERT_EQ(stat(out_.c_str(), &b), 0);
  EXPECT_EQ(a.st_ino, b.st_ino);
  close(*fd);
}

}  // namespace
}  // namespace safeshard

namespace safeshard {
namespace {

// A directory on tmpfs, or nullopt (then the test is skipped).
std::optional<std::string> TmpfsDir() {
  struct statfs sfs;
  if (statfs("/dev/shm", &sfs) != 0 || sfs.f_type != TMPFS_MAGIC) return std::nullopt;
  char tmpl[] = "/dev/shm/safeshard-fs-test-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return std::nullopt;
  return std::string(tmpl);
}

// On tmpfs, reserving an output's pages would allocate and zero them all before they are
// written: Allocate and MapWritable check the free space instead and leave the file sparse, and
// a size beyond the free space is refused before anything is written.
TEST(TmpfsTest, OutputsAreNotPreallocatedButSpaceIsChecked) {
  std::optional<std::string> dir = TmpfsDir();
  if (!dir) GTEST_SKIP() << "no tmpfs at /dev/shm";
  const std::string p = JoinPath(*dir, "out");
  auto w = LocalFileSystem().Create(p);
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_TRUE((*w)->Allocate(64 << 20).ok());
  struct stat st;
  ASSERT_EQ(stat(p.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 64 << 20);
  EXPECT_LT(st.st_blocks * 512, 1 << 20) << "the tmpfs file was preallocated";
  absl::StatusOr<char*> m = (*w)->MapWritable(64 << 20);
  ASSERT_TRUE(m.ok()) << m.status();
  std::memcpy(*m + (32 << 20), "hello", 5);
  ASSERT_TRUE((*w)->Close().ok());
  EXPECT_EQ(LocalFileSystem().ReadAll(p)->substr(32 << 20, 5), "hello");
  auto big = LocalFileSystem().Create(JoinPath(*dir, "huge"));
  ASSERT_TRUE(big.ok());
  absl::Status s = (*big)->Allocate(uint64_t{1} << 60);  // an exbibyte
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("huge"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("bytes free"));
  // Several outputs are checked together before any is written.
  EXPECT_TRUE((*big)->CheckFreeSpace(1).ok());
  absl::Status total = (*big)->CheckFreeSpace(uint64_t{1} << 60);
  EXPECT_EQ(total.code(), absl::StatusCode::kResourceExhausted) << total;
  EXPECT_THAT(std::string(total.message()), HasSubstr("huge"));
  (void)(*big)->Close();
  std::system(("rm -rf '" + *dir + "'").c_str());
}

// A write through an output mapping that faults (here: the file was truncated under it, as a
// full tmpfs would fault) is an error naming the output, not a crash and not a complaint about
// the input.
TEST(SigbusGuardTest, FaultInTheOutputMappingNamesTheOutput) {
  const std::string dir = testing::NewTempDir();
  const std::string in = JoinPath(dir, "in"), out = JoinPath(dir, "out");
  testing::WriteFile(in, std::string(8192, 'x'));
  testing::WriteFile(out, std::string(8192, '\0'));
  auto r = LocalFileSystem().OpenRead(in);
  auto m = (*r)->Map();
  ASSERT_TRUE(m.ok());
  const int fd = open(out.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  char* o = static_cast<char*>(mmap(nullptr, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  ASSERT_NE(o, MAP_FAILED);
  ASSERT_EQ(ftruncate(fd, 0), 0);
  const char* src = (*m)->data().data();
  absl::Status s = GuardMappedCopy(in, 4096, out, o, 8192, [&] { std::memcpy(o + 4096, src, 16); });
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(out + ": no space to write at byte offset 4096"));
  // A fault in the input is still the input's.
  ASSERT_EQ(ftruncate(fd, 8192), 0);
  const int in_fd = open(in.c_str(), O_RDWR);
  ASSERT_EQ(ftruncate(in_fd, 0), 0);
  s = GuardMappedCopy(in, 0, out, o, 8192, [&] { std::memcpy(o, src, 16); });
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("shrank while it was being read"));
  munmap(o, 8192);
  close(fd);
  close(in_fd);
}

}  // namespace
}  // namespace safeshard
