#include "l2kv/chat/jinja_lexer.h"

#include <cctype>

#include "l2kv/core/error.h"

namespace l2kv::jinja {
namespace {

// HF renders chat templates with trim_blocks and lstrip_blocks and drops one final newline.
std::string preprocess(std::string s) {
  if (!s.empty() && s.back() == '\n') s.pop_back();
  std::string out;
  out.reserve(s.size());
  // lstrip_blocks: spaces and tabs from a line start up to a block or comment tag.
  for (size_t i = 0; i < s.size();) {
    const bool line_start = i == 0 || s[i - 1] == '\n';
    if (line_start) {
      size_t j = i;
      while (j < s.size() && (s[j] == ' ' || s[j] == '\t')) ++j;
      if (j + 1 < s.size() && s[j] == '{' &&
          (s[j + 1] == '%' || s[j + 1] == '#' || s[j + 1] == '-'))
        i = j;
    }
    const size_t next = s.find('\n', i);
    const size_t end = next == std::string::npos ? s.size() : next + 1;
    out.append(s, i, end - i);
    i = end;
  }
  // trim_blocks: the newline right after a block or comment tag.
  std::string trimmed;
  trimmed.reserve(out.size());
  for (size_t i = 0; i < out.size(); ++i) {
    trimmed += out[i];
    if (out[i] == '}' && i > 0 && (out[i - 1] == '%' || out[i - 1] == '#' || out[i - 1] == '-') &&
        i + 1 < out.size() && out[i + 1] == '\n')
      ++i;
  }
  return trimmed;
}

bool is_space(char c) {
  return std::isspace(static_cast<unsigned char>(c)) != 0;
}

}  // namespace

std::vector<Token> lex(const std::string& source) {
  const std::string s = preprocess(source);
  std::vector<Token> tokens;
  size_t i = 0;
  bool strip_next_text = false;
  auto fail = [&](const std::string& what, size_t at) {
    throw Error("chat template: " + what + " at offset " + std::to_string(at));
  };
  while (i < s.size()) {
    // Text up to the next tag.
    size_t tag = s.find('{', i);
    while (tag != std::string::npos && tag + 1 < s.size() && s[tag + 1] != '{' &&
           s[tag + 1] != '%' && s[tag + 1] != '#')
      tag = s.find('{', tag + 1);
    if (tag == std::string::npos || tag + 1 >= s.size()) tag = s.size();
    std::string text = s.substr(i, tag - i);
    if (strip_next_text) {
      size_t k = 0;
      while (k < text.size() && is_space(text[k])) ++k;
      text.erase(0, k);
    }
    strip_next_text = false;
    if (tag < s.size() && tag + 2 < s.size() && s[tag + 2] == '-')
      while (!text.empty() && is_space(text.back())) text.pop_back();
    if (!text.empty()) tokens.push_back({TokenKind::kText, text, i});
    if (tag >= s.size()) break;
    const char kind = s[tag + 1];
    i = tag + 2;
    if (i < s.size() && s[i] == '-') ++i;
    if (kind == '#') {
      const size_t close = s.find("#}", i);
      if (close == std::string::npos) fail("unterminated comment", tag);
      strip_next_text = close > 0 && s[close - 1] == '-';
      i = close + 2;
      continue;
    }
    const char close_char = kind == '{' ? '}' : '%';
    tokens.push_back({kind == '{' ? TokenKind::kOutputOpen : TokenKind::kStatementOpen, "", tag});
    while (true) {
      while (i < s.size() && is_space(s[i])) ++i;
      if (i >= s.size()) fail("unterminated tag", tag);
      const char c = s[i];
      // Closing delimiter, with optional '-'.
      if ((c == '-' && i + 2 < s.size() + 1 &&
           s.compare(i + 1, 2, std::string(1, close_char) + "}") == 0) ||
          (c == close_char && i + 1 < s.size() && s[i + 1] == '}')) {
        strip_next_text = c == '-';
        i += c == '-' ? 3 : 2;
        tokens.push_back(
            {kind == '{' ? TokenKind::kOutputClose : TokenKind::kStatementClose, "", i});
        break;
      }
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t j = i;
        while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
        tokens.push_back({TokenKind::kName, s.substr(i, j - i), i});
        i = j;
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        size_t j = i;
        while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
        bool is_float =
            j + 1 < s.size() && s[j] == '.' && std::isdigit(static_cast<unsigned char>(s[j + 1]));
        if (is_float) {
          ++j;
          while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
        }
        tokens.push_back({is_float ? TokenKind::kFloat : TokenKind::kInt, s.substr(i, j - i), i});
        i = j;
      } else if (c == '\'' || c == '"') {
        std::string value;
        size_t j = i + 1;
        for (; j < s.size() && s[j] != c; ++j) {
          if (s[j] != '\\' || j + 1 >= s.size()) {
            value += s[j];
            continue;
          }
          const char e = s[++j];
          switch (e) {
            case 'n':
              value += '\n';
              break;
            case 't':
              value += '\t';
              break;
            case 'r':
              value += '\r';
              break;
            case 'b':
              value += '\b';
              break;
            case 'f':
              value += '\f';
              break;
            default:
              value += e;  // \\ \' \" and anything else literally
          }
        }
        if (j >= s.size()) fail("unterminated string", i);
        tokens.push_back({TokenKind::kString, value, i});
        i = j + 1;
      } else {
        static const char* two[] = {"==", "!=", "<=", ">=", "//", "**"};
        std::string op(1, c);
        for (const char* t : two)
          if (s.compare(i, 2, t) == 0) op = t;
        if (std::string("+-*/%=<>()[]{},.:|~!").find(c) == std::string::npos)
          fail(std::string("unexpected '") + c + "'", i);
        tokens.push_back({TokenKind::kOperator, op, i});
        i += op.size();
      }
    }
  }
  tokens.push_back({TokenKind::kEnd, "", s.size()});
  return tokens;
}

}  // namespace l2kv::jinja
