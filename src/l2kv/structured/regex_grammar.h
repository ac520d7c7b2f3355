// Regular expressions and choice lists as grammars. The regex subset is that of JSON Schema's
// `pattern` and vLLM's `regex` as models are asked for them: literals (UTF-8), escapes (\d \w
// \s \D \W \S \n \t \r \. ...), classes with ASCII ranges and negation, `.`, groups `( )` and
// `(?: )`, `|`, and one quantifier per atom: * + ? {n} {n,} {n,m} (lazy forms match the same
// text; a** is refused, as JavaScript refuses it).
// Named groups are plain groups. Backreferences, lookaround, word boundaries, \p classes,
// negated classes with non-ASCII members and class ranges over more than 256 non-ASCII
// characters are refused with an l2kv::Error naming the construct.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "l2kv/structured/grammar.h"

namespace l2kv::structured {

// How the pattern's text sits in the output.
enum class RegexText : uint8_t {
  kRaw,         // the output is the text itself
  kJsonString,  // inside a JSON string: `"` `\` and control characters come out escaped
};

// The rule for `pattern` (a leading ^ and trailing $ are dropped: the whole text must match).
Element compile_regex(Grammar& g, std::string_view pattern, RegexText text);

// JSON Schema's `pattern` is a search: a pattern without ^ (or $) may have any text before
// (or after) its match.
Element compile_schema_pattern(Grammar& g, std::string_view pattern);

// A grammar whose sentences are the texts matching `pattern` entirely.
Grammar regex_grammar(std::string_view pattern);
// A grammar whose sentences are exactly `choices` (at least one).
Grammar choice_grammar(const std::vector<std::string>& choices);

}  // namespace l2kv::structured
