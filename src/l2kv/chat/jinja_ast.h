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

  Expr() = default;
  Expr(const Expr&) = delete;
  Expr& operator=(const Expr&) = delete;
  // Frees the subtree without recursion: a chain like 1 + 1 + ... parses in a loop into a tree
  // as deep as the chain is long, which a recursive destructor would follow to a stack overflow.
  ~Expr() {
    std::vector<std::unique_ptr<Expr>> pending;
    auto adopt_children = [&pending](Expr& e) {
      for (auto& a : e.args) pending.push_back(std::move(a));
      for (auto& kw : e.kwargs) pending.push_back(std::move(kw.second));
    };
    adopt_children(*this);
    while (!pending.empty()) {
      std::unique_ptr<Expr> node = std::move(pending.back());
      pending.pop_back();
      if (node) adopt_children(*node);
    }  // each node dies childless
  }
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
