// The syntax tree of a parsed Jinja template.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "l2kv/chat/jinja_value.h"

namespace l2kv::jinja {

struct Expr {
  enum class Kind {
    kLiteral,
    kName,
    kList,
    kDict,
    kAttribute,
    kIndex,
    kSlice,
    kCall,
    kMethodCall,
    kFilter,
    kTest,
    kUnary,
    kBinary,
    kTernary
  };
  Kind kind;
  Value literal;                            // kLiteral
  std::string name;                         // variable, attribute, method, filter, test or operator
  bool negated = false;                     // kTest: "is not"
  std::vector<std::unique_ptr<Expr>> args;  // operands; for calls/filters/tests the subject first
  std::vector<std::pair<std::string, std::unique_ptr<Expr>>> kwargs;
  size_t offset = 0;
};

struct Stmt {
  enum class Kind { kText, kOutput, kIf, kFor, kSet, kBreak, kContinue };
  Kind kind;
  std::string text;                  // kText
  std::unique_ptr<Expr> expr;        // output value, if condition, for iterable, set value
  std::unique_ptr<Expr> filter;      // for ... if <filter>
  std::vector<std::string> targets;  // for: loop variables; set: name (and attribute)
  std::vector<std::unique_ptr<Stmt>> body, else_body;
};

using Program = std::vector<std::unique_ptr<Stmt>>;

}  // namespace l2kv::jinja
