#include "core/remap/keymap.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace safeshard {
namespace {

using ::testing::HasSubstr;

TEST(KeyMapTest, FirstMatchingRuleWinsAndRewritesEveryMatch) {
  auto km = KeyMap::Create({{"^model\\.", ""}, {"layers", "blocks"}, {"\\.", "/"}});
  ASSERT_TRUE(km.ok()) << km.status();
  EXPECT_EQ(km->Apply("model.layers.0.w"), "layers.0.w");      // rule 1 only
  EXPECT_EQ(km->Apply("layers.layers.1"), "blocks.blocks.1");  // all matches (re.subn)
  EXPECT_EQ(km->Apply("a.b.c"), "a/b/c");
  EXPECT_EQ(km->Apply("zzz"), "zzz");
}

TEST(KeyMapTest, BackReferencesInBothSyntaxes) {
  auto km = KeyMap::Create({{"^(.*)\\.gamma$", "\\1.weight"}, {"^(.*)\\.beta$", "\\g<1>.bias"}});
  ASSERT_TRUE(km.ok());
  EXPECT_EQ(km->Apply("ln.gamma"), "ln.weight");
  EXPECT_EQ(km->Apply("ln.beta"), "ln.bias");
}

TEST(KeyMapTest, AmbiguousPythonEscapesAreRefusedNotGuessed) {
  // Python's re.sub reads "\\0" as NUL and "\\12" as group 12; RE2 would read the whole match
  // and group 1 + "2". A key must never silently differ from what transformers would produce.
  for (const char* repl : {"x\\0", "\\0.weight", "\\12"}) {
    auto km = KeyMap::Create({{"^(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)(k)(l)$", repl}});
    ASSERT_FALSE(km.ok()) << repl;
    EXPECT_THAT(std::string(km.status().message()), HasSubstr("Python")) << repl;
  }
  auto whole = KeyMap::Create({{"^w$", "\\g<0>.weight"}});
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(whole->Apply("w"), "w.weight");
  auto one_then_digit = KeyMap::Create({{"^(l)$", "\\g<1>2"}});
  ASSERT_TRUE(one_then_digit.ok());
  EXPECT_EQ(one_then_digit->Apply("l"), "l2");
}

TEST(KeyMapTest, RejectsBadRulesNamingThem) {
  auto bad = KeyMap::Create({{"ok", "x"}, {"(", "y"}});
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("rule 2"));
  EXPECT_FALSE(KeyMap::Create({{"(a)", "\\2"}}).ok());  // no group 2
  EXPECT_FALSE(KeyMap::ParseRule("no arrow").ok());
  auto r = KeyMap::ParseRule("^a\\.=>b.");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->pattern, "^a\\.");
  EXPECT_EQ(r->replacement, "b.");
}

TEST(KeyMapTest, LoadsJsonArraysAndObjectsInOrder) {
  auto a = KeyMap::FromJson(R"([["^x", "y"], ["^y", "z"]])");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->Apply("x1"), "y1");
  auto o = KeyMap::FromJson(R"({"^y": "z", "^x": "y"})");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->rules()[0].pattern, "^y");
  EXPECT_FALSE(KeyMap::FromJson("[1]").ok());
  EXPECT_FALSE(KeyMap::FromJson(R"({"a": "b", "a": "c"})").ok());
}

TEST(KeyMapTest, MapAllRejectsCollisionsNamingBothKeys) {
  auto km = KeyMap::Create({{"^(enc|dec)\\.", ""}});
  ASSERT_TRUE(km.ok());
  auto r = km->MapAll({"enc.w", "dec.w", "other"});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("\"enc.w\" and \"dec.w\" both map to \"w\""));
  auto ok = km->MapAll({"enc.w", "dec.b"});
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->at("dec.b"), "b");
}

}  // namespace
}  // namespace safeshard
