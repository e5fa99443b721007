#include "core/remap/keymap.h"

#include "absl/strings/str_cat.h"
#include "core/format/internal/json_util.h"
#include "nlohmann/json.hpp"
#include "re2/re2.h"

namespace safeshard {
namespace {

// Python replacement syntax -> RE2 rewrite: "\g<N>" -> "\N"; "\\" stays; other escapes kept.
absl::StatusOr<std::string> ToRe2Rewrite(absl::string_view repl) {
  std::string out;
  for (size_t i = 0; i < repl.size(); ++i) {
    char c = repl[i];
    if (c != '\\') {
      out += c;
      continue;
    }
    if (i + 1 >= repl.size()) return absl::InvalidArgumentError("replacement ends with '\\'");
    char n = repl[i + 1];
    if (n == 'g' && i + 2 < repl.size() && repl[i + 2] == '<') {
      size_t close = repl.find('>', i + 3);
      if (close == absl::string_view::npos) {
        return absl::InvalidArgumentError("unterminated \\g<...> in replacement");
      }
      absl::string_view num = repl.substr(i + 3, close - i - 3);
      for (char d : num) {
        if (d < '0' || d > '9') {
          return absl::InvalidArgumentError(
              absl::StrCat("named group \\g<", num, "> is not supported; use its number"));
        }
      }
      if (num.size() != 1) {
        return absl::InvalidArgumentError("only groups \\g<0> to \\g<9> are supported");
      }
      absl::StrAppend(&out, "\\", num);
      i = close;
      continue;
    }
    if (n == '0') {
      // Python's re.sub (transformers' key_mapping) reads "\0" as an octal escape, the NUL
      // character; RE2 would read it as the whole match. Neither guess is safe for a key.
      return absl::InvalidArgumentError(
          "\\0 in a replacement is the NUL character in Python's re.sub (transformers' "
          "key_mapping), not the whole match; write \\g<0> for the whole match");
    }
    if (n >= '1' && n <= '9') {
      if (i + 2 < repl.size() && repl[i + 2] >= '0' && repl[i + 2] <= '9') {
        // Python reads "\12" as group 12, RE2 as group 1 then "2".
        return absl::InvalidArgumentError(absl::StrCat(
            "\\", repl.substr(i + 1, 2), " in a replacement is group ", repl.substr(i + 1, 2),
            " in Python's re.sub; only groups 1 to 9 are supported (for group ", std::string(1, n),
            " followed by a digit write \\g<", std::string(1, n), ">", std::string(1, repl[i + 2]),
            ")"));
      }
      absl::StrAppend(&out, "\\", std::string(1, n));
    } else if (n == '\\') {
      out += "\\\\";
    } else if (n == 'n') {
      out += '\n';
    } else if (n == 't') {
      out += '\t';
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown escape \\", std::string(1, n), " in replacement"));
    }
    ++i;
  }
  return out;
}

}  // namespace

KeyMap::KeyMap() = default;
KeyMap::~KeyMap() = default;
KeyMap::KeyMap(KeyMap&&) noexcept = default;
KeyMap& KeyMap::operator=(KeyMap&&) noexcept = default;

absl::StatusOr<KeyMap> KeyMap::Create(std::vector<Rule> rules) {
  KeyMap km;
  for (size_t i = 0; i < rules.size(); ++i) {
    const Rule& r = rules[i];
    auto re = std::make_unique<re2::RE2>(r.pattern, re2::RE2::Quiet);
    if (!re->ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("key-map rule ", i + 1, " (", r.pattern, "): invalid regex: ", re->error()));
    }
    absl::StatusOr<std::string> rw = ToRe2Rewrite(r.replacement);
    if (!rw.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("key-map rule ", i + 1, " (", r.pattern,
                                                     " => ", r.replacement,
                                                     "): ", rw.status().message()));
    }
    std::string why;
    if (!re->CheckRewriteString(*rw, &why)) {
      return absl::InvalidArgumentError(
          absl::StrCat("key-map rule ", i + 1, " (", r.pattern, " => ", r.replacement, "): ", why));
    }
    km.compiled_.push_back(std::move(re));
    km.rewrites_.push_back(*std::move(rw));
  }
  km.rules_ = std::move(rules);
  return km;
}

absl::StatusOr<KeyMap> KeyMap::FromJson(absl::string_view json) {
  nlohmann::json root;
  internal::StrictParseResult pr = internal::ParseJsonStrict(json.begin(), json.end(), &root);
  if (!pr.ok) return absl::InvalidArgumentError(absl::StrCat("key-map JSON: ", pr.error));
  if (pr.duplicate) {
    return absl::InvalidArgumentError(
        absl::StrCat("key-map JSON: pattern ", internal::Quote(*pr.duplicate), " repeated"));
  }
  std::vector<Rule> rules;
  if (root.is_array()) {
    for (const auto& r : root) {
      if (!r.is_array() || r.size() != 2 || !r[0].is_string() || !r[1].is_string()) {
        return absl::InvalidArgumentError(
            "key-map JSON: each rule must be a [\"regex\", \"replacement\"] pair");
      }
      rules.push_back({r[0].get<std::string>(), r[1].get<std::string>()});
    }
  } else if (root.is_object()) {
    // Object member order is lost by the DOM; re-read the text in order for rule order.
    nlohmann::ordered_json ordered = nlohmann::ordered_json::parse(json.begin(), json.end());
    for (auto it = ordered.begin(); it != ordered.end(); ++it) {
      if (!it.value().is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "key-map JSON: replacement for ", internal::Quote(it.key()), " is not a string"));
      }
      rules.push_back({it.key(), it.value().get<std::string>()});
    }
  } else {
    return absl::InvalidArgumentError(
        "key-map JSON must be an array of [regex, replacement] pairs or an object");
  }
  return Create(std::move(rules));
}

absl::StatusOr<KeyMap::Rule> KeyMap::ParseRule(absl::string_view text) {
  size_t p = text.find("=>");
  if (p == absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("rule \"", text, "\" must look like 'REGEX=>REPLACEMENT'"));
  }
  return Rule{std::string(text.substr(0, p)), std::string(text.substr(p + 2))};
}

std::string KeyMap::Apply(absl::string_view key) const {
  for (size_t i = 0; i < compiled_.size(); ++i) {
    std::string s(key);
    if (re2::RE2::GlobalReplace(&s, *compiled_[i], rewrites_[i]) > 0) return s;
  }
  return std::string(key);
}

absl::StatusOr<std::map<std::string, std::string>> KeyMap::MapAll(
    const std::vector<std::string>& keys) const {
  std::map<std::string, std::string> out;
  std::map<std::string, std::string> back;  // new -> old
  for (const std::string& k : keys) {
    std::string n = Apply(k);
    if (n.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("key ", internal::Quote(k), " maps to an empty name"));
    }
    auto [it, inserted] = back.emplace(n, k);
    if (!inserted && it->second != k) {
      return absl::InvalidArgumentError(absl::StrCat("keys ", internal::Quote(it->second), " and ",
                                                     internal::Quote(k), " both map to ",
                                                     internal::Quote(n)));
    }
    out[k] = n;
  }
  return out;
}

}  // namespace safeshard
