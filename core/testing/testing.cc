#include "core/testing/testing.h"

#include <cmath>
#include <cstring>

#include "nlohmann/json.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "core/layout/layout.h"
#include "gtest/gtest.h"

namespace safeshard::testing {

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  int port = ntohs(a.sin_port);
  close(fd);
  return port;
}

std::string NewTempDir() {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string templ = absl::StrCat(base && *base ? base : "/tmp", "/safeshard-test-XXXXXX");
  if (mkdtemp(templ.data()) == nullptr) {
    ADD_FAILURE() << "mkdtemp failed for " << templ;
    std::abort();
  }
  return templ;
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!f) ADD_FAILURE() << "cannot write " << path;
}

void FlipTensorByte(const std::string& dir, const std::string& tensor, uint64_t offset,
                    uint8_t mask) {
  absl::StatusOr<CheckpointLayout> ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  const TensorLayout* t = ck->FindTensor(tensor);
  ASSERT_NE(t, nullptr) << tensor;
  ASSERT_EQ(t->chunks.size(), 1u) << tensor << " is not stored whole";
  const Chunk& c = t->chunks[0];
  ASSERT_LT(offset, c.end - c.begin);
  std::fstream f(JoinPath(dir, ck->files()[c.file].name),
                 std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(c.begin + offset));
  char b = 0;
  f.read(&b, 1);
  b = static_cast<char>(b ^ mask);
  f.seekp(static_cast<std::streamoff>(c.begin + offset));
  f.write(&b, 1);
  ASSERT_TRUE(f.good()) << "cannot rewrite " << tensor;
}

void ExpectSameHeader(const Header& a, const Header& b) {
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    EXPECT_EQ(a.tensors[i].name, b.tensors[i].name) << i;
    EXPECT_EQ(a.tensors[i].dtype, b.tensors[i].dtype) << i;
    EXPECT_EQ(a.tensors[i].shape, b.tensors[i].shape) << i;
    EXPECT_EQ(a.tensors[i].begin, b.tensors[i].begin) << i;
    EXPECT_EQ(a.tensors[i].end, b.tensors[i].end) << i;
    EXPECT_EQ(a.Find(a.tensors[i].name), &a.tensors[i]);
  }
  EXPECT_EQ(a.metadata, b.metadata);
  EXPECT_EQ(a.has_metadata, b.has_metadata);
  EXPECT_EQ(a.header_size, b.header_size);
  EXPECT_EQ(a.buffer_size, b.buffer_size);
  EXPECT_EQ(a.fingerprint, b.fingerprint);
}

std::string Quoted(const std::string& s) {
  return nlohmann::json(s).dump();
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

double ReferenceMinifloat(unsigned code, int ebits, int mbits, int bias) {
  const int s = (code >> (ebits + mbits)) & 1;
  const int e = (code >> mbits) & ((1 << ebits) - 1);
  const int m = code & ((1 << mbits) - 1);
  const double frac = static_cast<double>(m) / (1 << mbits);
  const double mag = e == 0 ? std::pow(2.0, 1 - bias) * frac : std::pow(2.0, e - bias) * (1 + frac);
  return s ? -mag : mag;
}

double ReferenceF8(DType t, unsigned code) {
  switch (t) {
    case DType::kF8_E4M3:  // S.1111.111 is NaN; no infinities
      return (code & 0x7f) == 0x7f ? NAN : ReferenceMinifloat(code, 4, 3, 7);
    case DType::kF8_E5M2:  // exponent all ones: infinity (mantissa 0) or NaN
      if (((code >> 2) & 0x1f) == 0x1f)
        return (code & 3) ? NAN : ((code & 0x80) ? -INFINITY : INFINITY);
      return ReferenceMinifloat(code, 5, 2, 15);
    case DType::kF8_E4M3FNUZ: return code == 0x80 ? NAN : ReferenceMinifloat(code, 4, 3, 8);
    case DType::kF8_E5M2FNUZ: return code == 0x80 ? NAN : ReferenceMinifloat(code, 5, 2, 16);
    case DType::kF8_E8M0: return code == 0xff ? NAN : std::pow(2.0, static_cast<int>(code) - 127);
    default: return NAN;
  }
}

uint16_t ReferenceBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return static_cast<uint16_t>((u >> 16) | 0x40);
  const uint32_t lower = u & 0xffff, upper = u >> 16;
  if (lower > 0x8000 || (lower == 0x8000 && (upper & 1))) return static_cast<uint16_t>(upper + 1);
  return static_cast<uint16_t>(upper);
}

std::string PatternBytes(const std::string& name, uint64_t n) {
  uint32_t h = 2166136261u;
  for (char c : name) h = (h ^ static_cast<uint8_t>(c)) * 16777619u;
  std::string out(n, '\0');
  for (uint64_t i = 0; i < n; ++i) {
    h = h * 1103515245u + 12345u;
    out[i] = static_cast<char>(h >> 16);
  }
  return out;
}

std::string BuildSafetensors(std::vector<TensorSpec> specs,
                             std::map<std::string, std::string> metadata,
                             std::optional<uint8_t> fill) {
  absl::StatusOr<Header> h = LayoutHeader(std::move(specs), std::move(metadata));
  if (!h.ok()) {
    ADD_FAILURE() << h.status();
    return "";
  }
  std::string out = SerializeHeader(*h);
  for (const TensorEntry& t : h->tensors) {
    out += fill ? std::string(t.size(), static_cast<char>(*fill)) : PatternBytes(t.name, t.size());
  }
  return out;
}

std::string RawSafetensors(const std::string& json, const std::string& buffer) {
  std::string out(8, '\0');
  uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + json + buffer;
}

std::optional<std::string> FixturesDir() {
  const char* dir = std::getenv("SAFESHARD_FIXTURES");
  const char* req = std::getenv("SAFESHARD_REQUIRE_FIXTURES");
  bool required = req != nullptr && std::string(req) == "1";
  struct stat st;
  if (dir == nullptr || *dir == '\0' || stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
    if (required) {
      ADD_FAILURE() << "SAFESHARD_REQUIRE_FIXTURES=1 but SAFESHARD_FIXTURES ("
                    << (dir ? dir : "unset") << ") is not a directory";
    }
    return std::nullopt;
  }
  return std::string(dir);
}

}  // namespace safeshard::testing
