#include "core/io/atomic_file.h"

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "core/testing/testing.h"
#include "gtest/gtest.h"

namespace safeshard {
namespace {

TEST(AtomicFileTest, CommitPublishesAndLeavesNoTemp) {
  std::string dir = testing::NewTempDir();
  FileSystem& fs = LocalFileSystem();
  std::string target = JoinPath(dir, "out.safetensors");
  auto f = AtomicFile::Create(fs, target);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_TRUE(IsTempFileName(BaseName(f->temp_path())));
  EXPECT_EQ(DirName(f->temp_path()), dir);
  ASSERT_TRUE(f->file().Append("data").ok());
  EXPECT_EQ(fs.Stat(target).status().code(), absl::StatusCode::kNotFound);  // not yet visible
  ASSERT_TRUE(f->Commit().ok());
  EXPECT_EQ(testing::ReadFile(target), "data");
  EXPECT_EQ(fs.List(dir)->size(), 1u);
}

TEST(AtomicFileTest, AbandonedFileLeavesNothing) {
  std::string dir = testing::NewTempDir();
  FileSystem& fs = LocalFileSystem();
  {
    auto f = AtomicFile::Create(fs, JoinPath(dir, "out.safetensors"));
    ASSERT_TRUE(f.ok());
    ASSERT_TRUE(f->file().Append("partial").ok());
  }  // destroyed without Commit
  EXPECT_TRUE(fs.List(dir)->empty());
}

TEST(AtomicFileTest, ReplacesExistingFileWhole) {
  std::unique_ptr<FileSystem> fs = NewMemFileSystem();
  ASSERT_TRUE(fs->MakeDirs("/d").ok());
  ASSERT_TRUE(WriteFileAtomically(*fs, "/d/f", "old contents").ok());
  ASSERT_TRUE(WriteFileAtomically(*fs, "/d/f", "new").ok());
  EXPECT_EQ(*fs->ReadAll("/d/f"), "new");
  EXPECT_EQ(fs->List("/d")->size(), 1u);
}

TEST(AtomicFileTest, RecognisesTempNames) {
  EXPECT_TRUE(IsTempFileName(".model.safetensors.safeshard-tmp-12-00ff"));
  EXPECT_FALSE(IsTempFileName("model.safetensors"));
  EXPECT_FALSE(IsTempFileName(".hidden"));
}

TEST(AtomicFileTest, CleansOnlyTempFilesOfDeadProcesses) {
  std::string dir = testing::NewTempDir();
  FileSystem& fs = LocalFileSystem();
  // pid 2^22+1 is above Linux's pid_max limit: never a live process.
  testing::WriteFile(JoinPath(dir, ".a.safetensors.safeshard-tmp-4194305-00ff"), "stale");
  testing::WriteFile(JoinPath(dir, absl::StrCat(".b.safetensors.safeshard-tmp-", getpid(), "-01")),
                     "live");
  testing::WriteFile(JoinPath(dir, "model.safetensors"), "keep");
  auto removed = CleanStaleTempFiles(fs, dir);
  ASSERT_TRUE(removed.ok());
  EXPECT_EQ(*removed, std::vector<std::string>{".a.safetensors.safeshard-tmp-4194305-00ff"});
  EXPECT_EQ(fs.List(dir)->size(), 2u);
}

TEST(AtomicFileTest, CreateInMissingDirectoryFails) {
  auto f = AtomicFile::Create(LocalFileSystem(), "/nonexistent-dir-xyz/out");
  EXPECT_FALSE(f.ok());
}

}  // namespace
}  // namespace safeshard
