#include "core/format/header.h"
#include "core/format/internal/utf8.h"

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

#include "core/testing/testing.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace safeshard {
namespace {

using ::safeshard::testing::ExpectSameHeader;
using ::safeshard::testing::RawSafetensors;
using ::testing::HasSubstr;

// Parses a whole file image the way a reader does. Every test case also checks that the fast
// path and the DOM parser agree on it: the same result or the same error, and the fast path
// never accepts what the DOM parser refuses.
absl::StatusOr<Header> ParseImage(const std::string& image, const std::string& name = "t.st") {
  absl::StatusOr<uint64_t> n = ParseHeaderLength(image.substr(0, 64), image.size(), name);
  if (!n.ok()) return n.status();
  const absl::string_view json = absl::string_view(image).substr(8, *n);
  absl::StatusOr<Header> h = ParseHeader(json, image.size(), name);
  absl::StatusOr<Header> dom = internal::ParseHeaderWithDom(json, image.size(), name);
  std::optional<Header> fast = internal::ParseHeaderFast(json, image.size());
  EXPECT_EQ(h.ok(), dom.ok()) << json;
  if (!h.ok() && !dom.ok()) {
    EXPECT_EQ(h.status(), dom.status());
  }
  if (h.ok() && dom.ok()) ExpectSameHeader(*h, *dom);
  if (fast) {
    EXPECT_TRUE(dom.ok()) << "the fast path accepted what the DOM parser refuses: " << json;
    if (dom.ok()) ExpectSameHeader(*fast, *dom);
  }
  return h;
}

// Headers of the shapes real writers produce are read by the fast path (not only correctly by
// the fallback): the Rust crate's compact form, Python json.dumps' spaced form, escaped and
// non-ASCII names, metadata first, last, null or empty, members in any order, whitespace padding.
TEST(HeaderFastPathTest, ReadsTheShapesWritersProduce) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", std::string(8, 'x')},
      {R"({"__metadata__": {"format": "pt"}, "b": {"dtype": "BF16", "shape": [2, 1], )"
       R"("data_offsets": [0, 4]}, "a": {"dtype": "U8", "shape": [], "data_offsets": [4, 5]}}   )",
       std::string(5, 'x')},
      {R"({"a":{"data_offsets":[0,2],"shape":[1],"dtype":"F16"},"__metadata__":null})", "xx"},
      {R"({"__metadata__":{},"\u00e9t\u00E9\ud83d\ude00\n\"q\"":{"dtype":"U8","shape":[0],)"
       R"("data_offsets":[0,0]}})",
       ""},
      {"\n\t{ \"w\" : { \"dtype\" : \"F8_E4M3\" , \"shape\" : [ 3 ] , \"data_offsets\" : [ 0 , 3 ] "
       "} } \r\n",
       "xyz"},
      {R"({"__metadata__":{"DCP_SHARDING_INFO":"{\"w\": {\"saved_offsets\": [0]}}","k":"\/"},)"
       R"("w":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})",
       std::string(8, 'x')},
      {"{}", ""},
  };
  for (const auto& [json, buffer] : cases) {
    const std::string image = RawSafetensors(json, buffer);
    ASSERT_TRUE(ParseImage(image).ok()) << json;
    EXPECT_TRUE(internal::ParseHeaderFast(json, image.size()).has_value()) << json;
  }
  absl::StatusOr<Header> h = ParseImage(RawSafetensors(cases[3].first, ""));
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->tensors[0].name, "\xc3\xa9t\xc3\xa9\xf0\x9f\x98\x80\n\"q\"");
  // Our own serialiser's output, with many tensors.
  std::vector<TensorSpec> specs;
  for (int i = 0; i < 300; ++i) {
    specs.push_back({absl::StrCat("layers.", i, ".w"), DType::kF32, {3, 5}});
  }
  absl::StatusOr<Header> laid = LayoutHeader(specs, {{"format", "pt"}});
  ASSERT_TRUE(laid.ok());
  const std::string json = SerializeHeaderJson(*laid);
  EXPECT_TRUE(internal::ParseHeaderFast(json, 8 + json.size() + laid->buffer_size).has_value());
}

// Valid JSON the fast path leaves to the DOM parser (which accepts or refuses it), and invalid
// JSON: the fast path declines every one; ParseImage checks both give the same answer.
TEST(HeaderFastPathTest, DeclinesWhatItDoesNotHandle) {
  const std::vector<std::string> jsons = {
      R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1.0]}})",
      R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1e0]}})",
      R"({"a":{"dtype":"U8","shape":[01],"data_offsets":[0,1]}})",
      R"({"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}})",
      R"({"a":{"dtype":"U8","shape":[18446744073709551616],"data_offsets":[0,1]}})",
      R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":[1,{"x":null}]}})",
      R"({"a":{"dtype":"U8","shape":[1]}})",
      R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"dtype":"U8"}})",
      R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
      R"({"a":{"dtype":"U\u0038","shape":[1],"data_offsets":[0,1]}})",
      R"({"a":{"dtype":"X9","shape":[1],"data_offsets":[0,1]}})",
      R"({"\ud800":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})",
      R"({"\udc00\ud800":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})",
      R"({"\ud800\u0041":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})",
      "{\"a\\x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
      "{\"a\x01\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
      R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},})",
      R"({"a":{"dtype":"U8","shape":[1,],"data_offsets":[0,1]}})",
      R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}} x)",
      std::string(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})") + '\0' + " ",
      R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}})",
      R"({"__metadata__":{"k":1},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})",
      R"({"__metadata__":{"k":"v","k":"w"},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})",
      R"({"__metadata__":null,"__metadata__":null,"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})",
      R"({"__metadata__":[],"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})",
      R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]})",
      R"({"a":{"dtype":"U8","shape":1,"data_offsets":[0,1]}})",
      R"({"a":null})",
      R"([])",
  };
  for (const std::string& json : jsons) {
    const std::string image = RawSafetensors(json, "z");
    EXPECT_FALSE(internal::ParseHeaderFast(json, image.size()).has_value()) << json;
    (void)ParseImage(image);  // the agreement checks
  }
  // Entries that parse but break a rule: the fast path declines, the errors are the DOM path's.
  for (const std::string& json : {
           std::string(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,1]}})"),
           std::string(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[1,0]}})"),
           std::string(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})"),
       }) {
    const std::string image = RawSafetensors(json, "z");
    EXPECT_FALSE(internal::ParseHeaderFast(json, image.size()).has_value()) << json;
    EXPECT_FALSE(ParseImage(image).ok()) << json;
  }
}

void ExpectError(const absl::StatusOr<Header>& r, HeaderError e, const std::string& substr = "") {
  ASSERT_FALSE(r.ok()) << "expected " << HeaderErrorName(e);
  EXPECT_EQ(HeaderErrorOf(r.status()), e) << r.status();
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("t.st: "));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr(std::string(HeaderErrorName(e))));
  if (!substr.empty()) {
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(substr));
  }
}

TEST(HeaderTest, ParsesMinimalFile) {
  absl::StatusOr<Header> h = ParseImage(RawSafetensors(
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", std::string(8, 'x')));
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_EQ(h->tensors.size(), 1u);
  EXPECT_EQ(h->tensors[0].name, "a");
  EXPECT_EQ(h->tensors[0].dtype, DType::kF32);
  EXPECT_EQ(h->tensors[0].shape, (std::vector<uint64_t>{2}));
  EXPECT_EQ(h->buffer_size, 8u);
  EXPECT_FALSE(h->has_metadata);
}

TEST(HeaderTest, RejectsFileShorterThanLengthPrefix) {
  ExpectError(ParseImage(""), HeaderError::kFileTooSmall, "0 bytes");
  ExpectError(ParseImage("abc"), HeaderError::kFileTooSmall);
}

TEST(HeaderTest, RecognisesGitLfsPointer) {
  std::string lfs = "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1234\n";
  absl::StatusOr<Header> r = ParseImage(lfs);
  ExpectError(r, HeaderError::kGitLfsPointer, "git lfs pull");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(HeaderTest, RejectsHeaderOverSizeLimit) {
  std::string image(16, '\0');
  uint64_t n = kMaxHeaderSize + 1;
  for (int i = 0; i < 8; ++i) image[i] = static_cast<char>(n >> (8 * i));
  ExpectError(ParseImage(image), HeaderError::kHeaderTooLarge, "100000001");
}

TEST(HeaderTest, AcceptsHeaderAtSizeLimitBoundaryCheckOnly) {
  // Exactly the limit is allowed by the length check; it then fails on the file size.
  std::string image(16, '\0');
  uint64_t n = kMaxHeaderSize;
  for (int i = 0; i < 8; ++i) image[i] = static_cast<char>(n >> (8 * i));
  ExpectError(ParseImage(image), HeaderError::kHeaderLengthExceedsFile);
}

TEST(HeaderTest, RejectsLengthBeyondFile) {
  std::string image = RawSafetensors("{}", "");
  image[0] = 50;
  ExpectError(ParseImage(image), HeaderError::kHeaderLengthExceedsFile, "only 2 bytes follow");
}

TEST(HeaderTest, RejectsInvalidUtf8WithOffset) {
  std::string json = "{\"a\xff\":{}}";
  ExpectError(ParseImage(RawSafetensors(json, "")), HeaderError::kInvalidUtf8, "byte offset 11");
  // Overlong encoding and surrogates are invalid too.
  ExpectError(ParseImage(RawSafetensors("{\"\xc0\xaf\":1}", "")), HeaderError::kInvalidUtf8);
  ExpectError(ParseImage(RawSafetensors("{\"\xed\xa0\x80\":1}", "")), HeaderError::kInvalidUtf8);
}

TEST(HeaderTest, AcceptsUtf8TensorNames) {
  std::string json =
      "{\"\xc3\xa9t\xc3\xa9\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}";
  absl::StatusOr<Header> h = ParseImage(RawSafetensors(json, "z"));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->tensors[0].name, "\xc3\xa9t\xc3\xa9");
}

TEST(HeaderTest, RejectsInvalidJsonWithOffset) {
  ExpectError(ParseImage(RawSafetensors("{\"a\":", "")), HeaderError::kInvalidJson, "byte offset");
}

TEST(HeaderTest, RejectsNonObjectJson) {
  ExpectError(ParseImage(RawSafetensors("[1,2]   ", "")), HeaderError::kHeaderNotObject);
  ExpectError(ParseImage(RawSafetensors("", "")), HeaderError::kHeaderNotObject);
}

TEST(HeaderTest, RejectsDuplicateTensorNames) {
  std::string json =
      R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})";
  ExpectError(ParseImage(RawSafetensors(json, "zz")), HeaderError::kDuplicateKey, "\"a\"");
}

TEST(HeaderTest, RejectsDuplicateKeysInsideAnEntry) {
  std::string json = R"({"a":{"dtype":"U8","dtype":"I8","shape":[1],"data_offsets":[0,1]}})";
  ExpectError(ParseImage(RawSafetensors(json, "z")), HeaderError::kDuplicateKey, "dtype");
}

TEST(HeaderTest, MetadataMustMapStringsToStrings) {
  std::string ok = R"({"__metadata__":{"format":"pt","k":"v"}})";
  absl::StatusOr<Header> h = ParseImage(RawSafetensors(ok, ""));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_TRUE(h->has_metadata);
  EXPECT_EQ(h->metadata.at("format"), "pt");
  EXPECT_TRUE(h->tensors.empty());
  ExpectError(ParseImage(RawSafetensors(R"({"__metadata__":{"n":1}})", "")),
              HeaderError::kInvalidMetadata, "\"n\"");
  ExpectError(ParseImage(RawSafetensors(R"({"__metadata__":["x"]})", "")),
              HeaderError::kInvalidMetadata);
}

TEST(HeaderTest, RejectsMalformedTensorEntries) {
  ExpectError(ParseImage(RawSafetensors(R"({"a":3})", "")), HeaderError::kInvalidTensorEntry,
              "tensor \"a\"");
  ExpectError(ParseImage(RawSafetensors(R"({"a":{"dtype":"U8","shape":[1]}})", "")),
              HeaderError::kInvalidTensorEntry);
  ExpectError(
      ParseImage(RawSafetensors(R"({"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}})", "z")),
      HeaderError::kInvalidTensorEntry, "-1");
  ExpectError(
      ParseImage(RawSafetensors(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0]}})", "z")),
      HeaderError::kInvalidTensorEntry);
  ExpectError(
      ParseImage(RawSafetensors(R"({"a":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}})", "z")),
      HeaderError::kInvalidTensorEntry);
}

TEST(HeaderTest, RejectsUnknownDType) {
  ExpectError(
      ParseImage(RawSafetensors(R"({"a":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}})",
                                std::string(16, 'z'))),
      HeaderError::kUnknownDType, "F128");
  // Names are case-sensitive.
  ExpectError(ParseImage(RawSafetensors(R"({"a":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}})",
                                        std::string(4, 'z'))),
              HeaderError::kUnknownDType);
}

TEST(HeaderTest, RejectsShapeOverflow) {
  ExpectError(
      ParseImage(RawSafetensors(
          R"({"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", "")),
      HeaderError::kShapeOverflow);
  // Element count fits but bits do not.
  ExpectError(
      ParseImage(RawSafetensors(
          R"({"a":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,0]}})", "")),
      HeaderError::kShapeOverflow);
}

TEST(HeaderTest, RejectsSizeMismatchWithFileOffset) {
  std::string json = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})";
  ExpectError(ParseImage(RawSafetensors(json, "zzzz")), HeaderError::kSizeMismatch,
              "needs 8 (file byte offset 62)");
}

TEST(HeaderTest, SubByteDTypesNeedWholeBytes) {
  ExpectError(
      ParseImage(RawSafetensors(R"({"a":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}})", "z")),
      HeaderError::kMisalignedBits, "12 bits");
  absl::StatusOr<Header> ok =
      ParseImage(RawSafetensors(R"({"a":{"dtype":"F4","shape":[4],"data_offsets":[0,2]}})", "zz"));
  EXPECT_TRUE(ok.ok()) << ok.status();
  absl::StatusOr<Header> f6 = ParseImage(
      RawSafetensors(R"({"a":{"dtype":"F6_E2M3","shape":[4],"data_offsets":[0,3]}})", "zzz"));
  EXPECT_TRUE(f6.ok()) << f6.status();
}

TEST(HeaderTest, RejectsReversedOffsets) {
  ExpectError(
      ParseImage(RawSafetensors(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[2,1]}})", "zz")),
      HeaderError::kInvalidOffsets);
}

TEST(HeaderTest, RejectsGapBetweenTensors) {
  std::string json =
      R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"b":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}})";
  ExpectError(ParseImage(RawSafetensors(json, "zzz")), HeaderError::kOffsetGap, "[1, 2)");
  std::string leading = R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})";
  ExpectError(ParseImage(RawSafetensors(leading, "zz")), HeaderError::kOffsetGap, "[0, 1)");
}

TEST(HeaderTest, RejectsOverlappingTensors) {
  std::string json =
      R"({"a":{"dtype":"U16","shape":[1],"data_offsets":[0,2]},"b":{"dtype":"U16","shape":[1],"data_offsets":[1,3]}})";
  ExpectError(ParseImage(RawSafetensors(json, "zzz")), HeaderError::kOffsetOverlap, "tensor \"b\"");
}

TEST(HeaderTest, AcceptsHeaderOrderDifferentFromDataOrder) {
  std::string json =
      R"({"b":{"dtype":"U8","shape":[1],"data_offsets":[2,3]},"a":{"dtype":"U16","shape":[1],"data_offsets":[0,2]}})";
  absl::StatusOr<Header> h = ParseImage(RawSafetensors(json, "zzz"));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->tensors[0].name, "a");  // data order
  EXPECT_EQ(h->Find("b")->begin, 2u);
}

TEST(HeaderTest, RejectsTrailingAndMissingBufferBytes) {
  std::string json = R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})";
  ExpectError(ParseImage(RawSafetensors(json, "zzz")), HeaderError::kBufferSizeMismatch,
              "3 buffer bytes");
  ExpectError(ParseImage(RawSafetensors(json, "z")), HeaderError::kBufferSizeMismatch, "truncated");
}

TEST(HeaderTest, AcceptsEmptyTensorsAndScalars) {
  std::string json =
      R"({"e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},"s":{"dtype":"I64","shape":[],"data_offsets":[0,8]},"e2":{"dtype":"BF16","shape":[4,0],"data_offsets":[8,8]}})";
  absl::StatusOr<Header> h = ParseImage(RawSafetensors(json, std::string(8, 'z')));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->Find("s")->shape.size(), 0u);
  EXPECT_EQ(h->Find("e")->size(), 0u);
}

TEST(HeaderTest, AcceptsUnpaddedHeaderAndOddTail) {
  // 56-byte header is not a multiple of 8 after the prefix... use an odd-length one.
  std::string json = R"({"a":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}})";
  ASSERT_NE(json.size() % 8, 0u);
  absl::StatusOr<Header> h = ParseImage(RawSafetensors(json, "zzz"));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->header_size, json.size());
}

TEST(HeaderTest, LayoutOrdersByAlignmentThenName) {
  absl::StatusOr<Header> h = LayoutHeader({{"z", DType::kU8, {3}},
                                           {"b", DType::kF32, {2}},
                                           {"a", DType::kF32, {1}},
                                           {"m", DType::kI64, {}},
                                           {"h", DType::kBF16, {5}}},
                                          {{"format", "pt"}});
  ASSERT_TRUE(h.ok()) << h.status();
  std::vector<std::string> order;
  for (const auto& t : h->tensors) order.push_back(t.name);
  EXPECT_EQ(order, (std::vector<std::string>{"m", "a", "b", "h", "z"}));
  EXPECT_EQ(h->Find("a")->begin, 8u);
  EXPECT_EQ(h->buffer_size, 8u + 4 + 8 + 10 + 3);
  EXPECT_EQ(h->header_size % 8, 0u);
}

TEST(HeaderTest, LayoutRejectsDuplicateNames) {
  EXPECT_FALSE(LayoutHeader({{"a", DType::kU8, {1}}, {"a", DType::kU8, {2}}}, {}).ok());
}

TEST(HeaderTest, SerializeRoundTripsAndPadsToEight) {
  absl::StatusOr<Header> h =
      LayoutHeader({{"w\"q", DType::kF16, {3, 5}}, {"s", DType::kI64, {}}, {"e", DType::kF32, {0}}},
                   {{"format", "pt"}, {"note", "with \"quotes\""}});
  ASSERT_TRUE(h.ok());
  std::string image = SerializeHeader(*h) + std::string(h->buffer_size, '\x01');
  EXPECT_EQ((image.size() - h->buffer_size) % 8, 0u);
  absl::StatusOr<Header> back = ParseImage(image);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->metadata, h->metadata);
  ASSERT_EQ(back->tensors.size(), h->tensors.size());
  for (size_t i = 0; i < h->tensors.size(); ++i) {
    EXPECT_EQ(back->tensors[i].name, h->tensors[i].name);
    EXPECT_EQ(back->tensors[i].shape, h->tensors[i].shape);
    EXPECT_EQ(back->tensors[i].begin, h->tensors[i].begin);
    EXPECT_EQ(back->tensors[i].end, h->tensors[i].end);
  }
  EXPECT_EQ(SerializeHeaderJson(*back), SerializeHeaderJson(*h));
}

TEST(HeaderTest, SerializesCompactJsonInDataOrder) {
  absl::StatusOr<Header> h = LayoutHeader({{"a", DType::kU8, {2}}}, {{"format", "pt"}});
  ASSERT_TRUE(h.ok());
  const std::string compact =
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})";
  std::string json = SerializeHeaderJson(*h);
  EXPECT_EQ(json.size() % 8, 0u);
  ASSERT_GE(json.size(), compact.size());
  EXPECT_LT(json.size() - compact.size(), 8u);
  EXPECT_EQ(json.substr(0, compact.size()), compact);
  EXPECT_EQ(json.substr(compact.size()), std::string(json.size() - compact.size(), ' '));
}

// --- Parity with the safetensors crate (0.8) ---

TEST(HeaderTest, NullMetadataMeansNone) {
  // MLX writes "__metadata__": null in LoRA adapters; upstream reads it as no metadata.
  absl::StatusOr<Header> h = ParseImage(RawSafetensors(
      R"({"__metadata__":null,"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", "z"));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_FALSE(h->has_metadata);
  EXPECT_TRUE(h->metadata.empty());
  ASSERT_EQ(h->tensors.size(), 1u);
  // Other non-object metadata is still refused, naming the offset of the member.
  ExpectError(ParseImage(RawSafetensors(R"({"__metadata__":3})", "")),
              HeaderError::kInvalidMetadata, "byte offset 9");
}

TEST(HeaderTest, RejectsTrailingBytesAfterTheJsonValue) {
  const std::string entry = R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})";
  // A NUL then garbage inside the N header bytes: nlohmann would stop at the NUL.
  ExpectError(ParseImage(RawSafetensors(entry + std::string("\0xyz", 4), "z")),
              HeaderError::kInvalidJson, "trailing characters");
  ExpectError(ParseImage(RawSafetensors(entry + std::string(" \0", 2), "z")),
              HeaderError::kInvalidJson, absl::StrCat("byte offset ", 8 + entry.size() + 1));
  ExpectError(ParseImage(RawSafetensors(entry + "x", "z")), HeaderError::kInvalidJson);
  // Whitespace after the value is fine (writers pad with spaces).
  absl::StatusOr<Header> ok = ParseImage(RawSafetensors(entry + " \n\t\r ", "z"));
  EXPECT_TRUE(ok.ok()) << ok.status();
}

TEST(HeaderTest, AcceptsFnuzFloat8DTypes) {
  for (const char* name : {"F8_E4M3FNUZ", "F8_E5M2FNUZ"}) {
    absl::StatusOr<Header> h = ParseImage(RawSafetensors(
        absl::StrCat(R"({"a":{"dtype":")", name, R"(","shape":[2,2],"data_offsets":[0,4]}})"),
        "zzzz"));
    ASSERT_TRUE(h.ok()) << name << ": " << h.status();
    EXPECT_EQ(DTypeName(h->tensors[0].dtype), name);
    EXPECT_EQ(BitsOf(h->tensors[0].dtype), 8);
    EXPECT_TRUE(IsFloat8(h->tensors[0].dtype));
  }
}

TEST(HeaderTest, RefusesDeepNestingInAnExtraFieldQuickly) {
  // serde_json's recursion limit: 127 nested containers parse, the 128th is refused.
  auto nested = [](int depth) { return std::string(depth, '[') + std::string(depth, ']'); };
  const std::string pre = R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":)";
  // Root object and entry object are two levels.
  absl::StatusOr<Header> ok = ParseImage(RawSafetensors(pre + nested(125) + "}}", "z"));
  EXPECT_TRUE(ok.ok()) << ok.status();
  ExpectError(ParseImage(RawSafetensors(pre + nested(126) + "}}", "z")), HeaderError::kInvalidJson,
              "recursion limit");
  // 20 MB of nesting is refused at the 128th bracket, not after building a DOM of it.
  const std::string huge = pre + std::string(10'000'000, '[') + std::string(10'000'000, ']') + "}}";
  absl::StatusOr<Header> r = ParseImage(RawSafetensors(huge, "z"));
  ExpectError(r, HeaderError::kInvalidJson, absl::StrCat("byte offset ", 8 + pre.size() + 125));
}

TEST(HeaderTest, WideExtraFieldsAreCheckedButNotKept) {
  std::string wide = "[";
  for (int i = 0; i < 200000; ++i) absl::StrAppend(&wide, i ? "," : "", i);
  wide += "]";
  absl::StatusOr<Header> h = ParseImage(RawSafetensors(
      R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":)" + wide + "}}", "z"));
  ASSERT_TRUE(h.ok()) << h.status();
  // Duplicates inside a discarded extra field are still refused, like everywhere else.
  ExpectError(
      ParseImage(RawSafetensors(
          R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":{"k":1,"k":2}}})", "z")),
      HeaderError::kDuplicateKey, "\"k\"");
}

TEST(HeaderTest, EveryRuleNamesAByteOffset) {
  const std::string dup =
      R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})";
  // The duplicate's own offset, not the header's start: the second "a" is at JSON byte 53.
  ExpectError(ParseImage(RawSafetensors(dup, "zz")), HeaderError::kDuplicateKey,
              absl::StrCat("byte offset ", 8 + dup.find("\"a\"", 2)));
  ExpectError(ParseImage(RawSafetensors(R"({"__metadata__":{"n":1}})", "")),
              HeaderError::kInvalidMetadata, "byte offset 9");
  const std::string bad_entry = R"({"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":3})";
  ExpectError(
      ParseImage(RawSafetensors(bad_entry, "z")), HeaderError::kInvalidTensorEntry,
      absl::StrCat("tensor \"a\" (entry at byte offset ", 8 + bad_entry.find("\"a\""), ")"));
  ExpectError(
      ParseImage(RawSafetensors(R"({"a":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}})",
                                std::string(16, 'z'))),
      HeaderError::kUnknownDType, "byte offset 9");
  ExpectError(
      ParseImage(RawSafetensors(
          R"({"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", "")),
      HeaderError::kShapeOverflow, "byte offset 9");
  ExpectError(
      ParseImage(RawSafetensors(R"({"a":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}})", "z")),
      HeaderError::kMisalignedBits, "byte offset 9");
  const std::string lfs = "version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 12\n";
  ExpectError(ParseImage(lfs), HeaderError::kGitLfsPointer, "byte offset 0");
}

}  // namespace
}  // namespace safeshard

namespace safeshard {
namespace {

TEST(HeaderLengthTest, TextIsNotASafetensorsFileNotAHugeHeader) {
  const std::string readme = "# safeshard\n\nA C++ toolkit for HuggingFace checkpoints.\n";
  auto n = ParseHeaderLength(readme, readme.size(), "README.md");
  ASSERT_FALSE(n.ok());
  EXPECT_THAT(std::string(n.status().message()), ::testing::HasSubstr("not a safetensors file"));
  EXPECT_THAT(std::string(n.status().message()), ::testing::HasSubstr("\"# safeshard  A C++"));
  EXPECT_THAT(std::string(n.status().message()),
              ::testing::Not(::testing::HasSubstr("7526470892662235171")));
  // Binary garbage keeps the precise length message.
  const std::string bin("\xff\xff\xff\xff\xff\xff\xff\x7f", 8);
  auto b = ParseHeaderLength(bin + "xxxx", 12, "x.safetensors");
  ASSERT_FALSE(b.ok());
  EXPECT_THAT(std::string(b.status().message()), ::testing::HasSubstr("over the"));
}

}  // namespace
}  // namespace safeshard

namespace safeshard {
namespace {

// The validator skips ASCII eight bytes at a time: the offset of the first bad byte stays exact
// wherever it falls relative to those words, and multi-byte characters across a word boundary
// are still checked whole.
TEST(Utf8Test, FirstInvalidByteIsExactAtEveryAlignment) {
  for (size_t at = 0; at < 24; ++at) {
    std::string s(32, 'a');
    s[at] = '\xff';
    EXPECT_EQ(internal::FirstInvalidUtf8(s), at);
    std::string t(32, 'a');
    t[at] = '\xc3';  // a lead byte with an ASCII continuation
    EXPECT_EQ(internal::FirstInvalidUtf8(t), at);
    std::string u(32, 'a');
    u.replace(at, 4, "\xf0\x9f\x98\x80");  // valid, straddling words
    EXPECT_EQ(internal::FirstInvalidUtf8(u), absl::string_view::npos);
    u.replace(at, 4, "\xed\xa0\x80z");  // an encoded surrogate
    EXPECT_EQ(internal::FirstInvalidUtf8(u), at);
  }
  EXPECT_EQ(internal::FirstInvalidUtf8(std::string(7, 'a') + "\xc3"), 7u);  // truncated at end
}

}  // namespace
}  // namespace safeshard
