#include "core/layout/layout_json.h"

#include <algorithm>
#include <array>
#include <map>
#include <ostream>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/format/internal/json_util.h"

#include "core/format/sharding.h"

namespace safeshard {

using ordered_json = nlohmann::ordered_json;

ordered_json ProblemJson(const Problem& p) {
  ordered_json j;
  j["kind"] = std::string(ProblemKindName(p.kind));
  j["file"] = p.file;
  j["tensor"] = p.tensor;
  j["message"] = p.message;
  j["blocking"] = IsBlocking(p.kind);
  return j;
}

ordered_json CompletenessJson(const Completeness& c) {
  ordered_json j;
  j["proven"] = c.proven;
  j["by"] = c.by;
  j["unproven"] = c.proven ? ordered_json() : ordered_json(c.unproven);
  return j;
}

namespace {

// Writes JSON as it is produced, formatted exactly as nlohmann's dump(indent) (indent < 0:
// compact; strings escaped by nlohmann, invalid UTF-8 replaced) — the document of a 100k-tensor
// checkpoint is never held as a DOM.
class JsonStream {
 public:
  JsonStream(std::ostream& out, int indent) : out_(out), indent_(indent) {
    buf_.reserve(kFlushAt + 4096);
  }
  ~JsonStream() { Flush(); }
  // Hands what is buffered to the stream (a std::ostream writes char by char under a lock when
  // synchronised with stdio: the document is built in a string and written in large pieces).
  void Flush() {
    out_.write(buf_.data(), static_cast<std::streamsize>(buf_.size()));
    buf_.clear();
  }

  void BeginObject() { Open('{'); }
  void EndObject() { Close('}'); }
  void BeginArray() { Open('['); }
  void EndArray() { Close(']'); }
  void Key(absl::string_view k) {
    Separate();
    WriteString(k);
    buf_ += indent_ >= 0 ? ": " : ":";
    after_key_ = true;
  }
  void String(absl::string_view s) {
    Separate();
    WriteString(s);
  }
  void Uint(uint64_t v) {
    Separate();
    absl::StrAppend(&buf_, v);
    MaybeFlush();
  }
  void Int(int64_t v) {
    Separate();
    absl::StrAppend(&buf_, v);
  }
  void Bool(bool v) {
    Separate();
    buf_ += v ? "true" : "false";
  }
  void Null() {
    Separate();
    buf_ += "null";
  }
  void Uints(const std::vector<uint64_t>& v) {
    BeginArray();
    for (uint64_t x : v) Uint(x);
    EndArray();
  }
  // A small value built as a DOM (a problem, the completeness), indented to where it goes.
  void Dom(const ordered_json& j) {
    Separate();
    std::string text = internal::DumpJson(j, indent_);
    if (indent_ > 0) {
      const std::string pad = "\n" + std::string(static_cast<size_t>(indent_) * depth_.size(), ' ');
      for (size_t at = text.find('\n'); at != std::string::npos; at = text.find('\n', at + 1)) {
        text.replace(at, 1, pad);
        at += pad.size() - 1;
      }
    }
    buf_ += text;
    MaybeFlush();
  }

 private:
  void Open(char c) {
    Separate();
    buf_ += c;
    depth_.push_back(true);  // empty so far
  }
  void Close(char c) {
    const bool empty = depth_.back();
    depth_.pop_back();
    if (!empty && indent_ >= 0) {
      buf_ += '\n';
      Pad();
    }
    buf_ += c;
    MaybeFlush();
  }
  // Before a value or a key: nothing after a key; otherwise the separator from the previous
  // sibling (or the opening bracket) and the indentation.
  void Separate() {
    if (after_key_) {
      after_key_ = false;
      return;
    }
    if (depth_.empty()) return;
    if (!depth_.back()) buf_ += ',';
    depth_.back() = false;
    if (indent_ >= 0) {
      buf_ += '\n';
      Pad();
    }
  }
  void Pad() { buf_.append(static_cast<size_t>(indent_) * depth_.size(), ' '); }
  void MaybeFlush() {
    if (buf_.size() >= kFlushAt) Flush();
  }
  void WriteString(absl::string_view s) {
    const bool plain = std::all_of(s.begin(), s.end(), [](char ch) {
      const unsigned char u = static_cast<unsigned char>(ch);
      return u >= 0x20 && u < 0x80 && ch != '"' && ch != '\\';
    });
    if (plain) {
      absl::StrAppend(&buf_, "\"", s, "\"");
    } else {
      buf_ += internal::DumpJson(nlohmann::json(std::string(s)));
    }
    MaybeFlush();
  }

  static constexpr size_t kFlushAt = 1 << 16;
  std::ostream& out_;
  std::string buf_;
  const int indent_;
  std::vector<bool> depth_;  // per open container: still empty
  bool after_key_ = false;
};

}  // namespace

void WriteLayoutJson(std::ostream& out, const CheckpointLayout& ck, const NameFilter& keep,
                     int indent) {
  JsonStream w(out, indent);
  auto str = [&](absl::string_view k, absl::string_view v) {
    w.Key(k);
    w.String(v);
  };
  auto uint = [&](absl::string_view k, uint64_t v) {
    w.Key(k);
    w.Uint(v);
  };
  auto null_key = [&](absl::string_view k) {
    w.Key(k);
    w.Null();
  };
  w.BeginObject();
  str("schema", "safeshard.inspect/1");
  str("path", ck.root());
  str("kind", CheckpointKindName(ck.kind()));
  w.Key("ranks");
  w.Int(ck.rank_count());
  if (ck.index_file().empty()) {
    null_key("index_file");
  } else {
    str("index_file", ck.index_file());
  }
  w.Key("files");
  w.BeginArray();
  for (const FileInfo& f : ck.files()) {
    w.BeginObject();
    str("name", f.name);
    uint("size", f.size);
    if (f.header) {
      uint("header_size", f.header->header_size);
    } else {
      null_key("header_size");
    }
    uint("tensors", f.header ? f.header->tensors.size() : 0);
    if (f.shard) {
      w.Key("shard");
      w.Int(*f.shard);
    } else {
      null_key("shard");
    }
    w.Key("dcp");
    w.Bool(f.dcp);
    // __metadata__ without DCP_SHARDING_INFO: that raw JSON string (megabytes for 100k tensors)
    // is already in the tensors' chunks, read and checked; only its entry count is kept.
    w.Key("metadata");
    if (f.header) {
      w.BeginObject();
      for (const auto& [k, v] : f.header->metadata) {
        if (k != kShardingInfoKey) str(k, v);
      }
      w.EndObject();
    } else {
      w.Null();
    }
    if (f.error) {
      str("error", *f.error);
    } else {
      null_key("error");
    }
    w.EndObject();
  }
  w.EndArray();
  w.Key("tensors");
  w.BeginArray();
  std::map<std::string, std::array<uint64_t, 3>> totals;  // dtype -> tensors, params, bytes
  for (const TensorLayout& t : ck.tensors()) {
    if (keep && !keep(t.name)) continue;
    w.BeginObject();
    str("name", t.name);
    str("dtype", DTypeName(t.dtype));
    w.Key("shape");
    w.Uints(t.shape);
    uint("parameters", t.numel());
    uint("bytes", t.bytes());
    w.Key("chunks");
    w.BeginArray();
    for (const Chunk& c : t.chunks) {
      w.BeginObject();
      str("file", ck.files()[c.file].name);
      if (!c.key.empty()) str("key", c.key);  // physical key (PyTorch's __dcp_shard_k)
      w.Key("offsets");
      w.Uints(c.offsets);
      w.Key("sizes");
      w.Uints(c.sizes);
      w.Key("byte_range");
      w.Uints({c.begin, c.end});
      w.EndObject();
    }
    w.EndArray();
    w.Key("problem");
    w.Bool(t.has_problem);
    w.EndObject();
    auto& tot = totals[std::string(DTypeName(t.dtype))];
    tot[0] += 1;
    tot[1] += t.numel();
    tot[2] += t.bytes();
  }
  w.EndArray();
  w.Key("totals");
  w.BeginObject();
  for (const auto& [d, v] : totals) {
    w.Key(d);
    w.BeginObject();
    uint("tensors", v[0]);
    uint("parameters", v[1]);
    uint("bytes", v[2]);
    w.EndObject();
  }
  w.EndObject();
  w.Key("quantized");
  w.BeginArray();
  for (const quant::QuantPair& q : ck.quantized()) {
    if (keep && !keep(q.output) && !keep(q.weight)) continue;
    w.BeginObject();
    str("weight", q.output);
    w.Key("shape");
    w.Uints(q.output_shape);
    str("scheme", q.scheme == quant::Scheme::kMxfp4 ? "mxfp4" : "fp8_block");
    w.Key("block");
    w.Uints({static_cast<uint64_t>(q.block.rows), static_cast<uint64_t>(q.block.cols)});
    str("codes", q.weight);
    str("scales", q.scale);
    str("description", q.Describe());
    w.EndObject();
  }
  w.EndArray();
  w.Key("problems");
  w.BeginArray();
  for (const Problem& p : ck.problems()) w.Dom(ProblemJson(p));
  w.EndArray();
  w.Key("completeness");
  w.Dom(CompletenessJson(ck.completeness()));
  w.EndObject();
}

std::string LayoutJsonText(const CheckpointLayout& ck, const NameFilter& keep, int indent) {
  std::ostringstream out;
  WriteLayoutJson(out, ck, keep, indent);
  return out.str();
}

}  // namespace safeshard
