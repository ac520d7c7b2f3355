// The grammar engine: regexes, choice lists and JSON schemas accept and reject the strings
// they should; unsupported keywords are errors naming them; token masks equal a brute-force
// check of every token of small vocabularies, state after state.
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "l2kv/core/error.h"
#include "l2kv/structured/gbnf_grammar.h"
#include "l2kv/structured/grammar_cache.h"
#include "l2kv/structured/grammar_matcher.h"
#include "l2kv/structured/json_schema.h"
#include "l2kv/structured/regex_grammar.h"
#include "l2kv/structured/tokenizer_vocabulary.h"
#include "l2kv/tokenizer/tokenizer.h"

namespace l2kv::structured {
namespace {

using json = nlohmann::ordered_json;

Grammar schema(const char* text) {
  return json_schema_grammar(json::parse(text));
}

TEST(RegexGrammar, AcceptsAndRejects) {
  struct Case {
    const char* pattern;
    std::vector<const char*> yes, no;
  };
  const std::vector<Case> cases = {
      {"abc", {"abc"}, {"ab", "abcd", ""}},
      {"^a|b$", {"a", "b"}, {"ab", ""}},
      {"[0-9]{3}-[0-9]{4}", {"555-1234"}, {"55-1234", "555-12345", "5551234"}},
      {"(ab)*c?", {"", "ab", "abab", "ababc", "c"}, {"a", "abca"}},
      {"\\d+(\\.\\d{1,2})?", {"7", "10.5", "3.14"}, {"3.", "3.141", ".5"}},
      {"[^abc]+", {"xyz", "é"}, {"a", "xa", ""}},
      {"\\w+@\\w+\\.com", {"joe@mail.com"}, {"joe@mail.org", "@mail.com"}},
      {"(?:yes|no|maybe)", {"yes", "no", "maybe"}, {"y", "yesno"}},
      {"x{2,}", {"xx", "xxxxx"}, {"x", ""}},
      {"a.c", {"abc", "a€c"}, {"a\nc", "ac"}},
      {"(a*)*b", {"b", "aaab"}, {"aa"}},
      {"[a-c\\-]+", {"a-b", "ccc"}, {"d"}},
      {"héllo", {"héllo"}, {"hello"}},
  };
  for (const Case& c : cases) {
    const Grammar g = regex_grammar(c.pattern);
    for (const char* s : c.yes) EXPECT_TRUE(grammar_matches(g, s)) << c.pattern << " on " << s;
    for (const char* s : c.no) EXPECT_FALSE(grammar_matches(g, s)) << c.pattern << " on " << s;
  }
}

TEST(RegexGrammar, RefusesWhatItDoesNotSupport) {
  for (const char* p : {"(a)\\1", "(?=a)b", "a\\bb", "\\p{L}", "[[:alpha:]]", "a^b", "(ab", "a**",
                        "a+*", "a{2}?*", "b*{3}",
                        // Counts above the grammar's bound are refused, not read as text.
                        "a{1000000}", "a{2,1000000}", "a{1000000,}", "x{2147483648}"}) {
    EXPECT_THROW(regex_grammar(p), Error) << p;
  }
  EXPECT_NO_THROW(regex_grammar("a{100000}"));
}

// Nested repetitions of nullable groups stay cheap: the matcher's expansion budget bounds
// each byte's work, and what it keeps is still a valid parse.
TEST(RegexGrammar, NestedNullableRepetitionsStayCheap) {
  const Grammar g = regex_grammar("((((((((a*)*)*)*)*)*)*)*)*b");
  EXPECT_TRUE(grammar_matches(g, "aaaab"));
  EXPECT_TRUE(grammar_matches(g, "b"));
  EXPECT_FALSE(grammar_matches(g, "aaa"));
}

TEST(ChoiceGrammar, OnlyTheChoices) {
  const Grammar g = choice_grammar({"red", "green", "gray"});
  for (const char* s : {"red", "green", "gray"}) EXPECT_TRUE(grammar_matches(g, s));
  for (const char* s : {"re", "gre", "greenish", ""}) EXPECT_FALSE(grammar_matches(g, s));
  EXPECT_THROW(choice_grammar({}), Error);
}

// Thousands of values, some prefixes of others, all reachable: the trie keeps the matcher's
// live stacks to one per distinct next byte, far below its bound (which kept only the first
// 4,096 of a flat list of 5,000).
// "v<i>" (appended: GCC 12 warns falsely about "v" + std::to_string(i)).
std::string value_text(int i) {
  std::string s = "v";
  s += std::to_string(i);
  return s;
}

TEST(ChoiceGrammar, EveryValueOfALongListStaysReachable) {
  std::vector<std::string> choices;
  for (int i = 0; i < 5000; ++i) choices.push_back(value_text(i));
  choices.push_back("zzz");
  choices.push_back("v1");  // a repeat
  choices.push_back("");    // the empty text is a choice too
  const Grammar g = choice_grammar(choices);
  for (const std::string& c : {std::string("v0"), std::string("v4999"), std::string("v49"),
                               std::string("v499"), std::string("zzz"), std::string("")})
    EXPECT_TRUE(grammar_matches(g, c)) << c;
  for (const char* c : {"v", "v5000", "zz", "zzzz", "v00", "w"})
    EXPECT_FALSE(grammar_matches(g, c)) << c;
  EXPECT_LE(initial_state(g).size(), 3u);  // "", "v...", "zzz"
  int reachable = 0;
  for (int i = 0; i < 5000; i += 7) reachable += grammar_matches(g, value_text(i));
  EXPECT_EQ(reachable, (5000 + 6) / 7);
}

TEST(JsonSchemaGrammar, EnumOfThousandsKeepsItsLastValues) {
  json values = json::array();
  for (int i = 0; i < 6000; ++i) values.push_back(value_text(i));
  values.push_back(17);
  values.push_back(json{{"a", nullptr}});
  const Grammar g = json_schema_grammar(json{{"enum", values}});
  for (const char* s : {"\"v0\"", "\"v5999\"", "17", "{\"a\":null}"})
    EXPECT_TRUE(grammar_matches(g, s)) << s;
  for (const char* s : {"\"v6000\"", "\"v\"", "1", "v0"}) EXPECT_FALSE(grammar_matches(g, s)) << s;
}

// A short constraint cannot build an unbounded grammar: each step of a bounded repetition is a
// rule, and the rules of one grammar are bounded.
TEST(Grammar, SizeIsBounded) {
  std::string pattern;
  for (int i = 0; i < 3; ++i) pattern += "z{0,100000}";
  EXPECT_THROW(regex_grammar(pattern), Error);
  EXPECT_NO_THROW(regex_grammar("z{0,100000}"));
  EXPECT_THROW(json_schema_grammar(json::parse(R"({"type": "object", "properties": {
      "a": {"type": "string", "maxLength": 100000}, "b": {"type": "string", "maxLength": 100000},
      "c": {"type": "string", "maxLength": 100000}}, "required": ["a", "b", "c"]})")),
               Error);
  const Grammar small = regex_grammar("a{0,100}");
  const Grammar large = regex_grammar("a{0,10000}");
  EXPECT_GT(large.memory_bytes(), 50 * small.memory_bytes());
}

// The cache of compiled grammars is bounded by bytes as well as count: large grammars push the
// least recently used out, and the one just compiled stays.
TEST(GrammarCache, BoundedByBytes) {
  const auto vocab = std::make_shared<TokenVocabulary>(std::vector<std::string>{"a", "<eos>"},
                                                       std::vector<int32_t>{1});
  const size_t one = regex_grammar("a{0,20000}").memory_bytes();
  GrammarCache cache(vocab, 64, 3 * one + (size_t{6} << 20));  // three, with their mask caches
  for (int i = 0; i < 6; ++i) cache.get(value_text(i), [&] { return regex_grammar("a{0,20000}"); });
  EXPECT_EQ(cache.size(), 3u);
  EXPECT_LE(cache.bytes(), 3 * one + (size_t{6} << 20));
  GrammarCache tiny(vocab, 64, 1);
  tiny.get("big", [&] { return regex_grammar("a{0,20000}"); });
  EXPECT_EQ(tiny.size(), 1u);
  EXPECT_EQ(tiny.compilations(), 1);
  tiny.get("big", [&] { return regex_grammar("a{0,20000}"); });
  EXPECT_EQ(tiny.compilations(), 1);
}

// A long run of optional items keeps one stack per item alive, and a mask over a large
// vocabulary then took seconds while every request of the step waited: past its work bound a
// mask is refused with an error (the engine ends that request alone).
TEST(GrammarMatcher, AMaskTooAmbiguousToComputeIsAnError) {
  std::string pattern;
  for (int i = 0; i < 2000; ++i) pattern += std::string(1, static_cast<char>('a' + i % 26)) + "?";
  std::vector<std::string> tokens;
  for (char x = 'a'; x <= 'z'; ++x) {
    tokens.emplace_back(1, x);
    for (char y = 'a'; y <= 'z'; ++y) {
      tokens.push_back(std::string{x, y});
      for (char z = 'a'; z <= 'z'; ++z) tokens.push_back(std::string{x, y, z});
    }
  }
  tokens.push_back("<eos>");
  const auto vocab = std::make_shared<TokenVocabulary>(
      tokens, std::vector<int32_t>{static_cast<int32_t>(tokens.size()) - 1});
  GrammarMatcher m(std::make_shared<CompiledGrammar>(regex_grammar(pattern), vocab));
  std::vector<uint32_t> mask(static_cast<size_t>(mask_words(vocab->size())));
  try {
    m.fill_mask(mask);
    FAIL() << "the mask was computed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("too ambiguous"), std::string::npos) << e.what();
  }
  // A short run of the same kind is cheap and exact.
  GrammarMatcher small(std::make_shared<CompiledGrammar>(regex_grammar("a?b?c?"), vocab));
  EXPECT_GT(small.fill_mask(mask), 0);
}

// The regex parser recurses once per group: nesting is bounded before the stack is.
TEST(RegexGrammar, GroupNestingIsBounded) {
  const auto nested = [](int depth) {
    return std::string(static_cast<size_t>(depth), '(') + "a" +
           std::string(static_cast<size_t>(depth), ')');
  };
  EXPECT_TRUE(grammar_matches(regex_grammar(nested(128)), "a"));
  EXPECT_THROW(regex_grammar(nested(129)), Error);
  EXPECT_THROW(regex_grammar(nested(100000)), Error);
}

TEST(GbnfGrammar, AcceptsAndRejects) {
  const Grammar g = gbnf_grammar(R"(# a tiny JSON-ish object
root ::= "{" ws pair ("," ws pair)* ws "}"
pair ::= key ws ":" ws value
key  ::= "\"" [a-z_]+ "\""
value ::= [0-9]{1,3} | "true" | "false"
  | "\"" [^"\\]* "\""
ws ::= [ \t\n]?
)");
  for (const char* s : {R"({"a":1})", R"({ "a_b": true, "c":"x y"})", R"({"k": "é"})"})
    EXPECT_TRUE(grammar_matches(g, s)) << s;
  for (const char* s : {R"({})", R"({"A":1})", R"({"a":1234})", R"({"a":1,})"})
    EXPECT_FALSE(grammar_matches(g, s)) << s;
  const Grammar unicode = gbnf_grammar("root ::= \"\\u00e9\" [αβ]+ .");
  EXPECT_TRUE(grammar_matches(unicode, "éαβx"));
  EXPECT_FALSE(grammar_matches(unicode, "éγx"));
  for (const char* bad : {"start ::= \"x\"", "root ::= missing", "root ::= \"x", "root ::= [z-a]",
                          "root ::= \"a\"\nroot ::= \"b\"", "root = x"}) {
    EXPECT_THROW(gbnf_grammar(bad), Error) << bad;
  }
  // A count past Grammar::kMaxRepeat is named, whatever its digits (it failed on the eighth).
  EXPECT_TRUE(grammar_matches(gbnf_grammar("root ::= \"a\"{0,100000}"), "aaa"));
  for (const char* big : {"root ::= \"a\"{0,100000000}", "root ::= \"a\"{100001}",
                          "root ::= \"a\"{99999999999999999999,}"}) {
    try {
      gbnf_grammar(big);
      ADD_FAILURE() << "no error: " << big;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("is above 100000"), std::string::npos) << e.what();
    }
  }
}

TEST(JsonSchemaGrammar, Objects) {
  const Grammar g = schema(R"({"type": "object", "properties": {
      "name": {"type": "string"}, "age": {"type": "integer"}, "tags": {"type": "array",
      "items": {"type": "string"}, "maxItems": 2}}, "required": ["name"]})");
  for (const char* s : {R"({"name": "a"})", R"({"name":"a","age":3})",
                        R"({ "name": "x\"y", "tags": ["a", "b"] })", R"({"name":"","age":-12})"})
    EXPECT_TRUE(grammar_matches(g, s)) << s;
  for (const char* s : {R"({})", R"({"age": 3})", R"({"name": "a", "tags": ["a","b","c"]})",
                        R"({"name": "a", "age": 3.5})", R"({"name": "a", "other": 1})",
                        R"({"name": "a",})", R"({"age": 3, "name": "a"})"})
    EXPECT_FALSE(grammar_matches(g, s)) << s;
}

TEST(JsonSchemaGrammar, ScalarsAndCombinators) {
  EXPECT_TRUE(grammar_matches(schema(R"({"enum": ["a", 1, null]})"), "null"));
  EXPECT_FALSE(grammar_matches(schema(R"({"enum": ["a", 1, null]})"), "2"));
  EXPECT_TRUE(grammar_matches(schema(R"({"const": {"k": [1, 2]}})"), R"({"k":[1,2]})"));
  const Grammar range = schema(R"({"type": "integer", "minimum": -15, "maximum": 230})");
  for (int v = -30; v <= 300; ++v)
    EXPECT_EQ(grammar_matches(range, std::to_string(v)), v >= -15 && v <= 230) << v;
  EXPECT_FALSE(grammar_matches(range, "007"));
  const Grammar exclusive = schema(R"({"type": "number", "exclusiveMinimum": 0})");
  EXPECT_TRUE(grammar_matches(exclusive, "1"));
  EXPECT_FALSE(grammar_matches(exclusive, "0"));
  const Grammar any_of = schema(R"({"anyOf": [{"type": "string"}, {"type": "null"}]})");
  EXPECT_TRUE(grammar_matches(any_of, "null"));
  EXPECT_TRUE(grammar_matches(any_of, "\"\\u00e9\""));
  EXPECT_FALSE(grammar_matches(any_of, "1"));
  const Grammar number = schema(R"({"type": "number"})");
  for (const char* s : {"0", "-1.5", "2e10", "1.25E-3"}) EXPECT_TRUE(grammar_matches(number, s));
  for (const char* s : {"01", "1.", ".5", "--1", "1e"}) EXPECT_FALSE(grammar_matches(number, s));
  const Grammar sized = schema(R"({"type": "string", "minLength": 2, "maxLength": 3})");
  EXPECT_FALSE(grammar_matches(sized, "\"a\""));
  EXPECT_TRUE(grammar_matches(sized, "\"ab\""));
  EXPECT_TRUE(grammar_matches(sized, "\"a\\nc\""));
  EXPECT_FALSE(grammar_matches(sized, "\"abcd\""));
  const Grammar date = schema(R"({"type": "string", "format": "date"})");
  EXPECT_TRUE(grammar_matches(date, "\"2024-02-28\""));
  EXPECT_FALSE(grammar_matches(date, "\"2024-02-30\""));
  const Grammar pattern = schema(R"({"type": "string", "pattern": "^[A-Z]{2}\"$"})");
  EXPECT_TRUE(grammar_matches(pattern, R"("AB\"")"));
  EXPECT_FALSE(grammar_matches(pattern, R"("AB"")"));
  const Grammar search = schema(R"({"type": "string", "pattern": "ab"})");
  EXPECT_TRUE(grammar_matches(search, R"("xxabyy")"));
  EXPECT_FALSE(grammar_matches(search, R"("xxa")"));
}

TEST(JsonSchemaGrammar, RecursiveReferences) {
  const Grammar g = schema(R"({"$ref": "#/$defs/node", "$defs": {"node": {"type": "object",
      "properties": {"value": {"type": "integer"}, "children": {"type": "array",
      "items": {"$ref": "#/$defs/node"}}}, "required": ["value"]}}})");
  EXPECT_TRUE(
      grammar_matches(g, R"({"value":1,"children":[{"value":2},{"value":3,"children":[]}]})"));
  EXPECT_FALSE(grammar_matches(g, R"({"value":1,"children":[{}]})"));
}

// References are URI fragments: percent-encoded names and list indices resolve (RFC 6901);
// a bad index or escape is named.
TEST(JsonSchemaGrammar, ReferencesThroughEscapesAndIndices) {
  const Grammar spaced = schema(R"({"$ref": "#/$defs/a%20b~1c", "$defs": {"a b/c": {"type":
      "integer"}}})");
  EXPECT_TRUE(grammar_matches(spaced, "12"));
  EXPECT_FALSE(grammar_matches(spaced, "\"x\""));
  const Grammar indexed = schema(R"({"type": "object", "properties": {"p": {"anyOf": [
      {"type": "boolean"}, {"type": "null"}]}, "q": {"$ref": "#/properties/p/anyOf/1"}},
      "required": ["q"]})");
  EXPECT_TRUE(grammar_matches(indexed, R"({"q":null})"));
  EXPECT_FALSE(grammar_matches(indexed, R"({"q":true})"));
  for (const auto& [text, message] : std::vector<std::pair<const char*, const char*>>{
           {R"({"anyOf": [{"type": "null"}, {"$ref": "#/anyOf/2"}]})",
            "not an index of a list of 2"},
           {R"({"anyOf": [{"type": "null"}, {"$ref": "#/anyOf/01"}]})", "not an index"},
           {R"({"$ref": "#/$defs/a%2", "$defs": {}})", "two hex digits"}}) {
    try {
      schema(text);
      ADD_FAILURE() << "no error for " << text;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
    }
  }
}

TEST(JsonSchemaGrammar, JsonObject) {
  const Grammar g = json_object_grammar();
  EXPECT_TRUE(grammar_matches(g, R"({"a": [1, {"b": null}], "c": "d"})"));
  EXPECT_FALSE(grammar_matches(g, "[1]"));
  EXPECT_FALSE(grammar_matches(g, R"({"a": })"));
}

// JSON Schema counts numbers with a zero fraction as integers (5.0 is 5), as vLLM takes them.
TEST(JsonSchemaGrammar, WholeNumberCountsAreIntegers) {
  const Grammar g = schema(R"({"type": "string", "minLength": 2.0, "maxLength": 3.0})");
  EXPECT_TRUE(grammar_matches(g, "\"ab\""));
  EXPECT_TRUE(grammar_matches(g, "\"abc\""));
  EXPECT_FALSE(grammar_matches(g, "\"a\""));
  EXPECT_FALSE(grammar_matches(g, "\"abcd\""));
}

TEST(JsonSchemaGrammar, UnsupportedKeywordsAreNamed) {
  const std::vector<std::pair<const char*, const char*>> cases = {
      {R"({"type": "object", "patternProperties": {}})", "patternProperties"},
      {R"({"type": "string", "format": "hostname"})", "hostname"},
      {R"({"type": "array", "uniqueItems": true})", "uniqueItems"},
      {R"({"type": "number", "multipleOf": 3})", "multipleOf"},
      {R"({"not": {"type": "string"}})", "not"},
      {R"({"allOf": [{"type": "string"}, {"maxLength": 3}]})", "allOf"},
      {R"({"$ref": "https://example.com/s.json"})", "$ref"},
      {R"x({"type": "object", "properties": {"a": {"type": "string", "pattern": "(?=x)"}}})x",
       "#/properties/a"},
      // Counts: a fraction, a sign, or past the grammar's bound, named with their place.
      {R"({"type": "object", "properties": {"b": {"type": "string", "maxLength": 5.5}}})",
       "#/properties/b"},
      {R"({"type": "string", "minLength": -1})", "minLength"},
      {R"({"type": "string", "maxLength": 1e9})", "'maxLength' of 1000000000.0 is above 100000"},
      {R"({"type": "array", "maxItems": 9223372036854775808})",
       "'maxItems' of 9223372036854775808"},
  };
  for (const auto& [text, name] : cases) {
    try {
      schema(text);
      ADD_FAILURE() << "no error for " << text;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
  }
}

// A vocabulary of random short strings over the bytes JSON and the test grammars use, with
// every single byte of that alphabet (so any text can be spelled) and an EOS.
std::shared_ptr<const TokenVocabulary> random_vocabulary(uint32_t seed, int size) {
  const std::string alphabet = "{}[]\":, abc01-9.eE\\ntrufalsé";
  std::mt19937 rng(seed);
  std::vector<std::string> tokens;
  for (char c : alphabet) tokens.emplace_back(1, c);
  tokens.push_back("");  // an id with no bytes (a special token)
  while (static_cast<int>(tokens.size()) < size - 1) {
    std::string t;
    const int len = 2 + static_cast<int>(rng() % 5);
    for (int i = 0; i < len; ++i) t += alphabet[rng() % alphabet.size()];
    tokens.push_back(t);
  }
  tokens.push_back("</s>");
  const int32_t eos = static_cast<int32_t>(tokens.size()) - 1;
  return std::make_shared<TokenVocabulary>(std::move(tokens), std::vector<int32_t>{eos});
}

// Walks random allowed tokens; at every state, the mask must equal accept_token over every id.
void check_masks(Grammar grammar, uint32_t seed) {
  const auto vocab = random_vocabulary(seed, 400);
  const auto compiled = std::make_shared<CompiledGrammar>(std::move(grammar), vocab);
  std::mt19937 rng(seed);
  for (int walk = 0; walk < 3; ++walk) {
    GrammarMatcher m(compiled);
    for (int step = 0; step < 40 && !m.terminated(); ++step) {
      std::vector<uint32_t> mask(mask_words(vocab->size()));
      const int64_t allowed = m.fill_mask(mask);
      std::vector<int32_t> expected;
      for (int32_t id = 0; id < vocab->size(); ++id) {
        GrammarMatcher copy = m;
        const bool ok = copy.accept_token(id);
        EXPECT_EQ(ok, ((mask[id >> 5] >> (id & 31)) & 1) != 0)
            << "token " << id << " '" << vocab->bytes(id) << "' at step " << step;
        if (ok) expected.push_back(id);
      }
      ASSERT_EQ(allowed, static_cast<int64_t>(expected.size()));
      ASSERT_FALSE(expected.empty()) << "a dead end at step " << step;
      const int32_t pick = expected[rng() % expected.size()];
      ASSERT_TRUE(m.accept_token(pick));
    }
  }
}

TEST(GrammarMatcher, MasksEqualBruteForce) {
  check_masks(json_object_grammar(), 1);
  check_masks(schema(R"({"type": "object", "properties": {"a": {"type": "string"},
      "b": {"type": "array", "items": {"type": "number"}}}, "required": ["b"]})"),
              2);
  check_masks(schema(R"({"enum": ["true", "false", 19, {"a": null}]})"), 3);
  check_masks(regex_grammar("(ab|c)*-[0-9]+"), 4);
  check_masks(choice_grammar({"abc", "ab", "true", "false"}), 5);
  check_masks(
      gbnf_grammar("root ::= item (\",\" item)*\nitem ::= \"a\" | [0-9]+ | \"[\" root? \"]\""), 6);
}

TEST(GrammarMatcher, EosOnlyWhenComplete) {
  const auto vocab = std::make_shared<TokenVocabulary>(
      std::vector<std::string>{"a", "b", "ab", "<eos>"}, std::vector<int32_t>{3});
  const auto g = std::make_shared<CompiledGrammar>(regex_grammar("ab?"), vocab);
  GrammarMatcher m(g);
  EXPECT_FALSE(m.accept_token(3));
  EXPECT_TRUE(m.accept_token(0));
  EXPECT_TRUE(m.accepting());
  std::vector<uint32_t> mask(1);
  EXPECT_EQ(m.fill_mask(mask), 2);  // "b" and EOS
  EXPECT_EQ(mask[0], (1u << 1) | (1u << 3));
  EXPECT_TRUE(m.accept_token(3));
  EXPECT_TRUE(m.terminated());
  EXPECT_EQ(m.fill_mask(mask), 0);
}

// A constraint that can never complete is refused when compiled, not found out by the engine
// mid-generation (which could only end the request with an error).
TEST(GrammarMatcher, RefusesConstraintsThatNeverComplete) {
  const auto vocab = std::make_shared<TokenVocabulary>(std::vector<std::string>{"x", "<eos>"},
                                                       std::vector<int32_t>{1});
  const auto compile = [&](Grammar g) { return CompiledGrammar(std::move(g), vocab); };
  EXPECT_THROW(compile(json_schema_grammar(nlohmann::ordered_json::parse(R"({"$ref": "#"})"))),
               Error);
  EXPECT_THROW(compile(json_schema_grammar(nlohmann::ordered_json::parse(
                   R"({"$defs": {"A": {"$ref": "#/$defs/A"}}, "$ref": "#/$defs/A"})"))),
               Error);
  EXPECT_THROW(compile(json_schema_grammar(nlohmann::ordered_json::parse(
                   R"({"$defs": {"A": {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}},
                       "required": ["a"]}}, "$ref": "#/$defs/A"})"))),
               Error);
  EXPECT_THROW(compile(gbnf_grammar("root ::= a\na ::= \"x\" a")), Error);
  // Recursion with a way out, left-recursive included, stays.
  EXPECT_NO_THROW(compile(gbnf_grammar("root ::= a\na ::= \"x\" a | \"x\"")));
  EXPECT_NO_THROW(compile(gbnf_grammar("root ::= a\na ::= a \"x\" | \"x\"")));
  EXPECT_NO_THROW(compile(json_schema_grammar(nlohmann::ordered_json::parse(
      R"({"$defs": {"N": {"type": "object", "properties": {"next": {"anyOf": [{"type": "null"},
          {"$ref": "#/$defs/N"}]}}, "required": ["next"]}}, "$ref": "#/$defs/N"})"))));
}

}  // namespace
}  // namespace l2kv::structured

namespace l2kv::structured {
namespace {

// Token bytes of real tokenizers (byte-level BPE and SentencePiece with byte fallback) spell
// the text they encode, split UTF-8 characters included.
TEST(TokenizerVocabulary, TokenBytesSpellTheEncodedText) {
  const std::string text = "Hello, wörld! 東京 {\"a\": [1, 2.5]}\n\tend 🙂";
  for (const char* name : {"llama2", "llama3_1", "qwen3"}) {
    const std::filesystem::path folder = std::filesystem::path(L2KV_TOKENIZER_PACKAGES) /
                                         (std::string("tokenizer-") + name) / "models";
    if (!std::filesystem::exists(folder / "tokenizer.json"))
      GTEST_SKIP() << "run scripts/tokenizer_test_data.sh for " << folder;
    const Tokenizer tokenizer = Tokenizer::from_folder(folder);
    std::string spelled;
    for (int32_t id : tokenizer.encode(text, false)) spelled += tokenizer.token_bytes(id);
    // SentencePiece writes the text's first word with its leading space.
    EXPECT_TRUE(spelled == text || spelled == " " + text) << name << ": " << spelled;
    const TokenVocabulary vocab = tokenizer_vocabulary(tokenizer, tokenizer.vocab_size(), {});
    int64_t special_with_bytes = 0;
    for (int32_t id = 0; id < tokenizer.vocab_size(); ++id)
      special_with_bytes += tokenizer.is_special(id) && !vocab.bytes(id).empty();
    EXPECT_EQ(special_with_bytes, 0) << name;
  }
}

}  // namespace
}  // namespace l2kv::structured
