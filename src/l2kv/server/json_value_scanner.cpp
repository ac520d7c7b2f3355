#include "l2kv/server/json_value_scanner.h"

#include <cstdio>
#include <nlohmann/json.hpp>

#include "l2kv/core/hex_digit.h"
#include "l2kv/tokenizer/utf8.h"

namespace l2kv::server {
namespace {

bool is_space(char c) {
  return c == ' ' || c == '\n' || c == '\t' || c == '\r';
}

bool is_number_char(char c) {
  return (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E';
}

}  // namespace

std::string JsonValueScanner::pending() const {
  return number_ + escape_raw_ + utf8_;
}

// nlohmann's serializer (ensure_ascii off): the two-character escapes, \u00xx for the other
// control characters, everything else as UTF-8.
void JsonValueScanner::put_codepoint(uint32_t cp, std::string& out) const {
  if (mode_ == Mode::kSkip) return;
  if (mode_ == Mode::kString) {
    utf8::append(out, cp);
    return;
  }
  switch (cp) {
    case 0x08:
      out += "\\b";
      return;
    case 0x09:
      out += "\\t";
      return;
    case 0x0A:
      out += "\\n";
      return;
    case 0x0C:
      out += "\\f";
      return;
    case 0x0D:
      out += "\\r";
      return;
    case 0x22:
      out += "\\\"";
      return;
    case 0x5C:
      out += "\\\\";
      return;
    default:
      break;
  }
  if (cp < 0x20) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(cp));
    out += buf;
    return;
  }
  utf8::append(out, cp);
}

JsonValueScanner::Status JsonValueScanner::value_done() {
  if (stack_.empty()) return Status::kDone;
  expect_ = Expect::kCommaOrEnd;
  return Status::kMore;
}

JsonValueScanner::Status JsonValueScanner::begin_value(char c, std::string& out) {
  if (mode_ == Mode::kString && c != '"') return Status::kError;
  switch (c) {
    case '{':
      stack_.push_back('{');
      expect_ = Expect::kKeyOrEnd;
      put("{", out);
      return Status::kMore;
    case '[':
      stack_.push_back('[');
      expect_ = Expect::kValueOrEnd;
      put("[", out);
      return Status::kMore;
    case '"':
      token_ = Token::kString;
      key_ = false;
      put("\"", out);
      return Status::kMore;
    case 't':
      literal_ = "true";
      break;
    case 'f':
      literal_ = "false";
      break;
    case 'n':
      literal_ = "null";
      break;
    default:
      if (c == '-' || (c >= '0' && c <= '9')) {
        token_ = Token::kNumber;
        number_.clear();
        number_.push_back(c);
        return Status::kMore;
      }
      return Status::kError;
  }
  token_ = Token::kLiteral;
  literal_at_ = 1;
  return Status::kMore;
}

JsonValueScanner::Status JsonValueScanner::feed_string(unsigned char c, std::string& out) {
  if (utf8_left_ > 0) {
    if (c < next_lo_ || c > next_hi_) return Status::kError;
    utf8_ += static_cast<char>(c);
    next_lo_ = 0x80;
    next_hi_ = 0xBF;
    if (--utf8_left_ == 0) {
      if (mode_ != Mode::kSkip) out += utf8_;
      utf8_.clear();
    }
    return Status::kMore;
  }
  if (escape_ == 1) {
    escape_raw_ += static_cast<char>(c);
    uint32_t cp = 0;
    switch (c) {
      case '"':
        cp = 0x22;
        break;
      case '\\':
        cp = 0x5C;
        break;
      case '/':
        cp = 0x2F;
        break;
      case 'b':
        cp = 0x08;
        break;
      case 'f':
        cp = 0x0C;
        break;
      case 'n':
        cp = 0x0A;
        break;
      case 'r':
        cp = 0x0D;
        break;
      case 't':
        cp = 0x09;
        break;
      case 'u':
        escape_ = 2;
        hex_digits_ = 0;
        hex_ = 0;
        return Status::kMore;
      default:
        return Status::kError;
    }
    escape_ = 0;
    escape_raw_.clear();
    put_codepoint(cp, out);
    return Status::kMore;
  }
  if (escape_ == 3 || escape_ == 4) {
    // A high surrogate must be followed by \u and a low one.
    if (c != (escape_ == 3 ? '\\' : 'u')) return Status::kError;
    escape_raw_ += static_cast<char>(c);
    if (++escape_ == 5) {
      hex_digits_ = 0;
      hex_ = 0;
    }
    return Status::kMore;
  }
  if (escape_ == 2 || escape_ == 5) {
    const int v = hex_digit_value(static_cast<char>(c));
    if (v < 0) return Status::kError;
    escape_raw_ += static_cast<char>(c);
    hex_ = hex_ * 16 + static_cast<uint32_t>(v);
    if (++hex_digits_ < 4) return Status::kMore;
    if (escape_ == 2) {
      if (hex_ >= 0xDC00 && hex_ <= 0xDFFF) return Status::kError;
      if (hex_ >= 0xD800 && hex_ <= 0xDBFF) {
        high_ = hex_;
        escape_ = 3;
        return Status::kMore;
      }
      put_codepoint(hex_, out);
    } else {
      if (hex_ < 0xDC00 || hex_ > 0xDFFF) return Status::kError;
      put_codepoint(0x10000 + ((high_ - 0xD800) << 10) + (hex_ - 0xDC00), out);
    }
    escape_ = 0;
    escape_raw_.clear();
    return Status::kMore;
  }
  if (c == '\\') {
    escape_ = 1;
    escape_raw_.assign(1, '\\');
    return Status::kMore;
  }
  if (c == '"') {
    token_ = Token::kNone;
    if (mode_ != Mode::kString) put("\"", out);
    if (key_) {
      expect_ = Expect::kColon;
      return Status::kMore;
    }
    return value_done();
  }
  if (c < 0x20) return Status::kError;
  if (c < 0x80) {
    if (mode_ != Mode::kSkip) out += static_cast<char>(c);
    return Status::kMore;
  }
  // The lead byte of a multibyte character and the range of its second byte (RFC 3629).
  if (c >= 0xC2 && c <= 0xDF) {
    utf8_left_ = 1;
  } else if (c >= 0xE0 && c <= 0xEF) {
    utf8_left_ = 2;
    if (c == 0xE0) next_lo_ = 0xA0;
    if (c == 0xED) next_hi_ = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    utf8_left_ = 3;
    if (c == 0xF0) next_lo_ = 0x90;
    if (c == 0xF4) next_hi_ = 0x8F;
  } else {
    return Status::kError;
  }
  utf8_.clear();
  utf8_.push_back(static_cast<char>(c));
  return Status::kMore;
}

JsonValueScanner::Status JsonValueScanner::feed(char c, std::string& out) {
  switch (token_) {
    case Token::kString:
      return feed_string(static_cast<unsigned char>(c), out);
    case Token::kLiteral:
      if (c != literal_[literal_at_]) return Status::kError;
      if (literal_[++literal_at_] != '\0') return Status::kMore;
      token_ = Token::kNone;
      put(literal_, out);
      return value_done();
    case Token::kNumber: {
      if (is_number_char(c)) {
        number_ += c;
        return Status::kMore;
      }
      // The number ends before `c`: nlohmann reads and prints it, except an integer past 64
      // bits, which it would read as a double and print with its digits lost: that is kept as
      // written (JSON integers have one spelling), as Python's json keeps it.
      try {
        const auto v = nlohmann::ordered_json::parse(number_);
        const bool integer = number_.find_first_of(".eE") == std::string::npos;
        put(integer && v.is_number_float() ? number_ : v.dump(), out);
      } catch (const nlohmann::ordered_json::exception&) {
        return Status::kError;
      }
      number_.clear();
      token_ = Token::kNone;
      if (value_done() == Status::kDone) return Status::kDoneBefore;
      return feed(c, out);
    }
    case Token::kNone:
      break;
  }
  if (is_space(c)) return Status::kMore;
  switch (expect_) {
    case Expect::kValue:
      return begin_value(c, out);
    case Expect::kValueOrEnd:
      if (c != ']') return begin_value(c, out);
      stack_.pop_back();
      put("]", out);
      return value_done();
    case Expect::kKey:
    case Expect::kKeyOrEnd:
      if (c == '}' && expect_ == Expect::kKeyOrEnd) {
        stack_.pop_back();
        put("}", out);
        return value_done();
      }
      if (c != '"') return Status::kError;
      token_ = Token::kString;
      key_ = true;
      put("\"", out);
      return Status::kMore;
    case Expect::kColon:
      if (c != ':') return Status::kError;
      put(":", out);
      expect_ = Expect::kValue;
      return Status::kMore;
    case Expect::kCommaOrEnd:
      if (c == ',') {
        put(",", out);
        expect_ = stack_.back() == '{' ? Expect::kKey : Expect::kValue;
        return Status::kMore;
      }
      if (c != (stack_.back() == '{' ? '}' : ']')) return Status::kError;
      put(std::string(1, c), out);
      stack_.pop_back();
      return value_done();
  }
  return Status::kError;
}

}  // namespace l2kv::server
