// keymap.h: ordered (regex => replacement) key-mapping rules, as transformers' `key_mapping`.
//
// For each key the rules are tried in order; the first whose regex matches anywhere rewrites
// every non-overlapping match (Python `re.subn` semantics, `\1` or `\g<1>` back-references) and
// no later rule is tried. A key no rule matches is unchanged.
//
//   ASSIGN_OR_RETURN(KeyMap km, KeyMap::Create({{"^model\\.", ""}, {"(.*)\\.gamma$",
//   "\\1.weight"}})); km.Apply("model.layers.0.w") == "layers.0.w"; ASSIGN_OR_RETURN(KeyMap km2,
//   KeyMap::FromJson(R"([["^a\\.", "b."]])"));   // or {"^a\\.": "b."}
#ifndef SAFESHARD_CORE_REMAP_KEYMAP_H_
#define SAFESHARD_CORE_REMAP_KEYMAP_H_

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace re2 {
class RE2;
}

namespace safeshard {

class KeyMap {
 public:
  struct Rule {
    std::string pattern;
    std::string replacement;
    bool operator==(const Rule&) const = default;
  };

  KeyMap();
  ~KeyMap();
  KeyMap(KeyMap&&) noexcept;
  KeyMap& operator=(KeyMap&&) noexcept;

  // kInvalidArgument naming the rule for a bad regex or a back-reference to a missing group.
  static absl::StatusOr<KeyMap> Create(std::vector<Rule> rules);
  // A JSON array of [regex, replacement] pairs, or an object {regex: replacement} (in order).
  static absl::StatusOr<KeyMap> FromJson(absl::string_view json);
  // "REGEX=>REPLACEMENT" (the CLI's --rule syntax).
  static absl::StatusOr<Rule> ParseRule(absl::string_view text);

  bool empty() const { return rules_.empty(); }
  const std::vector<Rule>& rules() const { return rules_; }
  std::string Apply(absl::string_view key) const;

  // old -> new for every key; kInvalidArgument naming both keys when two map to one name.
  absl::StatusOr<std::map<std::string, std::string>> MapAll(
      const std::vector<std::string>& keys) const;

 private:
  std::vector<Rule> rules_;
  std::vector<std::unique_ptr<re2::RE2>> compiled_;
  std::vector<std::string> rewrites_;  // replacement in RE2 syntax
};

}  // namespace safeshard

#endif  // SAFESHARD_CORE_REMAP_KEYMAP_H_
