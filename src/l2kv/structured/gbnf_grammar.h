// Grammars written by hand in GBNF, the EBNF of llama.cpp and xgrammar (vLLM's
// structured_outputs.grammar): `name ::= alternatives` rules, one of them `root`; string
// literals "..." with \n \t \r \\ \" \xHH \uHHHH escapes, character classes [a-z] and [^...]
// (ASCII ranges, listed non-ASCII characters), rule references, groups ( ), `.` (any
// character), the operators * + ? {m} {m,} {m,n}, and # comments. Errors (an unknown rule, no
// root, a class range beyond ASCII, a malformed rule) are l2kv::Error naming what and where.
#pragma once

#include <string_view>

#include "l2kv/structured/grammar.h"

namespace l2kv::structured {

Grammar gbnf_grammar(std::string_view text);

}  // namespace l2kv::structured
