// Tokens of a Jinja template: text between tags, the tag delimiters, and the expression tokens
// inside them. Applies HF's environment (trim_blocks, lstrip_blocks, one trailing newline
// dropped) and the '-' whitespace control of each tag.
#pragma once

#include <string>
#include <vector>

namespace l2kv::jinja {

enum class TokenKind {
  kText,
  kOutputOpen,
  kOutputClose,
  kStatementOpen,
  kStatementClose,
  kName,
  kString,
  kInt,
  kFloat,
  kOperator,
  kEnd
};

struct Token {
  TokenKind kind;
  std::string text;
  size_t offset;  // in the preprocessed template, for error messages
};

// Throws l2kv::Error (with the offset) on an unterminated tag or string.
std::vector<Token> lex(const std::string& source);

}  // namespace l2kv::jinja
