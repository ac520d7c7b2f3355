#include "l2kv/chat/jinja_parser.h"

#include <set>
#include <stdexcept>

#include "l2kv/chat/jinja_lexer.h"
#include "l2kv/core/error.h"

namespace l2kv::jinja {
namespace {

const std::set<std::string> kFilters = {
    "trim", "tojson",     "length", "count", "default", "d",      "first",  "last",
    "join", "list",       "upper",  "lower", "replace", "string", "int",    "float",
    "abs",  "capitalize", "title",  "items", "reverse", "safe",   "indent", "dictsort"};
const std::set<std::string> kTests = {"defined", "undefined", "none",    "string",   "number",
                                      "integer", "float",     "mapping", "iterable", "sequence",
                                      "boolean", "true",      "false",   "odd",      "even",
                                      "eq",      "equalto",   "ne",      "in"};
const std::set<std::string> kMethods = {
    "strip", "lstrip",     "rstrip", "split", "startswith", "endswith", "replace", "upper", "lower",
    "title", "capitalize", "items",  "keys",  "values",     "get",      "join",    "count"};
const std::set<std::string> kFunctions = {"namespace", "raise_exception", "range", "dict"};

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : t_(std::move(tokens)) {}

  Program parse_program() {
    Program program = parse_block({});
    if (peek().kind != TokenKind::kEnd) fail("unexpected tag");
    return program;
  }

 private:
  // The parser recurses once per nested expression, block and elif; deeper templates are
  // rejected before they exhaust the stack (here, in the interpreter or in the AST's destructor).
  static constexpr int kMaxNesting = 128;
  struct Nesting {
    Parser& parser;
    explicit Nesting(Parser& p) : parser(p) {
      if (++parser.depth_ > kMaxNesting)
        parser.fail("nesting deeper than " + std::to_string(kMaxNesting) + " levels");
    }
    ~Nesting() { --parser.depth_; }
  };
  int depth_ = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw Error("chat template: " + what + " at offset " + std::to_string(peek().offset));
  }
  const Token& peek(size_t ahead = 0) const { return t_[std::min(pos_ + ahead, t_.size() - 1)]; }
  const Token& take() { return t_[std::min(pos_++, t_.size() - 1)]; }
  bool at_op(const char* op) const {
    return peek().kind == TokenKind::kOperator && peek().text == op;
  }
  bool at_name(const char* n) const { return peek().kind == TokenKind::kName && peek().text == n; }
  void expect_op(const char* op) {
    if (!at_op(op)) fail(std::string("expected '") + op + "'");
    ++pos_;
  }
  void expect_name(const char* n) {
    if (!at_name(n)) fail(std::string("expected '") + n + "'");
    ++pos_;
  }
  std::string take_name() {
    if (peek().kind != TokenKind::kName) fail("expected a name");
    return take().text;
  }
  void expect_close() {
    if (peek().kind != TokenKind::kStatementClose) fail("expected '%}'");
    ++pos_;
  }

  // Statements until one of `terminators` ({% name %}), which is left unconsumed.
  Program parse_block(const std::set<std::string>& terminators) {
    Program out;
    while (true) {
      const Token& tok = peek();
      if (tok.kind == TokenKind::kEnd) {
        if (!terminators.empty()) fail("missing {% " + *terminators.begin() + " %}");
        return out;
      }
      if (tok.kind == TokenKind::kText) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::kText;
        s->text = take().text;
        out.push_back(std::move(s));
        continue;
      }
      if (tok.kind == TokenKind::kOutputOpen) {
        ++pos_;
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::kOutput;
        s->expr = parse_expression();
        if (peek().kind != TokenKind::kOutputClose) fail("expected '}}'");
        ++pos_;
        out.push_back(std::move(s));
        continue;
      }
      if (tok.kind != TokenKind::kStatementOpen) fail("unexpected token");
      const Token& keyword = peek(1);
      if (keyword.kind == TokenKind::kName && terminators.count(keyword.text)) return out;
      ++pos_;
      out.push_back(parse_statement());
    }
  }

  std::unique_ptr<Stmt> parse_statement() {
    const Nesting nesting(*this);
    const std::string keyword = take_name();
    auto s = std::make_unique<Stmt>();
    if (keyword == "if") return parse_if();
    if (keyword == "for") {
      s->kind = Stmt::Kind::kFor;
      s->targets.push_back(take_name());
      while (at_op(",")) {
        ++pos_;
        s->targets.push_back(take_name());
      }
      expect_name("in");
      s->expr = parse_or();
      if (at_name("if")) {
        ++pos_;
        s->filter = parse_or();
      }
      expect_close();
      s->body = parse_block({"else", "endfor"});
      ++pos_;
      if (take_name() == "else") {
        expect_close();
        s->else_body = parse_block({"endfor"});
        pos_ += 2;
      }
      expect_close();
      return s;
    }
    if (keyword == "set") {
      s->kind = Stmt::Kind::kSet;
      s->targets.push_back(take_name());
      if (at_op(".")) {
        ++pos_;
        s->targets.push_back(take_name());
      }
      if (!at_op("=")) fail("block assignment ({% set x %}...{% endset %}) is not supported");
      ++pos_;
      s->expr = parse_expression();
      expect_close();
      return s;
    }
    if (keyword == "break" || keyword == "continue") {
      s->kind = keyword == "break" ? Stmt::Kind::kBreak : Stmt::Kind::kContinue;
      expect_close();
      return s;
    }
    fail("unsupported statement '" + keyword + "'");
  }

  // After "if" or "elif": condition, body, then elif (a nested if that consumes the shared
  // endif), else, or endif.
  std::unique_ptr<Stmt> parse_if() {
    const Nesting nesting(*this);
    auto s = std::make_unique<Stmt>();
    s->kind = Stmt::Kind::kIf;
    s->expr = parse_expression();
    expect_close();
    s->body = parse_block({"elif", "else", "endif"});
    ++pos_;
    const std::string next = take_name();
    if (next == "elif") {
      s->else_body.push_back(parse_if());
      return s;
    }
    if (next == "else") {
      expect_close();
      s->else_body = parse_block({"endif"});
      pos_ += 2;
    }
    expect_close();
    return s;
  }

  std::unique_ptr<Expr> make(Expr::Kind kind, std::string name = {}) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->name = std::move(name);
    e->offset = peek().offset;
    return e;
  }

  std::unique_ptr<Expr> parse_expression() {
    const Nesting nesting(*this);
    auto value = parse_or();
    if (!at_name("if")) return value;
    ++pos_;
    auto t = make(Expr::Kind::kTernary);
    auto cond = parse_or();
    std::unique_ptr<Expr> otherwise;
    if (at_name("else")) {
      ++pos_;
      otherwise = parse_expression();
    } else {
      otherwise = make(Expr::Kind::kLiteral);  // undefined
    }
    t->args.push_back(std::move(cond));
    t->args.push_back(std::move(value));
    t->args.push_back(std::move(otherwise));
    return t;
  }

  std::unique_ptr<Expr> binary(std::string op, std::unique_ptr<Expr> a, std::unique_ptr<Expr> b) {
    auto e = make(Expr::Kind::kBinary, std::move(op));
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return e;
  }

  std::unique_ptr<Expr> parse_or() {
    auto e = parse_and();
    while (at_name("or")) {
      ++pos_;
      e = binary("or", std::move(e), parse_and());
    }
    return e;
  }
  std::unique_ptr<Expr> parse_and() {
    auto e = parse_not();
    while (at_name("and")) {
      ++pos_;
      e = binary("and", std::move(e), parse_not());
    }
    return e;
  }
  std::unique_ptr<Expr> parse_not() {
    const Nesting nesting(*this);
    if (at_name("not")) {
      ++pos_;
      auto e = make(Expr::Kind::kUnary, "not");
      e->args.push_back(parse_not());
      return e;
    }
    return parse_compare();
  }
  std::unique_ptr<Expr> parse_compare() {
    auto e = parse_concat();
    while (true) {
      if (peek().kind == TokenKind::kOperator &&
          (peek().text == "==" || peek().text == "!=" || peek().text == "<" || peek().text == ">" ||
           peek().text == "<=" || peek().text == ">=")) {
        const std::string op = take().text;
        e = binary(op, std::move(e), parse_concat());
      } else if (at_name("in")) {
        ++pos_;
        e = binary("in", std::move(e), parse_concat());
      } else if (at_name("not") && peek(1).kind == TokenKind::kName && peek(1).text == "in") {
        pos_ += 2;
        e = binary("not in", std::move(e), parse_concat());
      } else {
        return e;
      }
    }
  }
  std::unique_ptr<Expr> parse_concat() {
    auto e = parse_additive();
    while (at_op("~")) {
      ++pos_;
      e = binary("~", std::move(e), parse_additive());
    }
    return e;
  }
  std::unique_ptr<Expr> parse_additive() {
    auto e = parse_multiplicative();
    while (at_op("+") || at_op("-")) {
      const std::string op = take().text;
      e = binary(op, std::move(e), parse_multiplicative());
    }
    return e;
  }
  std::unique_ptr<Expr> parse_multiplicative() {
    auto e = parse_unary();
    while (at_op("*") || at_op("/") || at_op("//") || at_op("%")) {
      const std::string op = take().text;
      e = binary(op, std::move(e), parse_unary());
    }
    return e;
  }
  std::unique_ptr<Expr> parse_unary() {
    const Nesting nesting(*this);
    if (at_op("-") || at_op("+")) {
      auto e = make(Expr::Kind::kUnary, take().text);
      e->args.push_back(parse_unary());
      return e;
    }
    return parse_postfix(parse_primary());
  }

  void parse_call_args(Expr& call) {
    expect_op("(");
    while (!at_op(")")) {
      if (peek().kind == TokenKind::kName && peek(1).kind == TokenKind::kOperator &&
          peek(1).text == "=") {
        std::string key = take().text;
        ++pos_;
        call.kwargs.emplace_back(std::move(key), parse_expression());
      } else {
        call.args.push_back(parse_expression());
      }
      if (!at_op(",")) break;
      ++pos_;
    }
    expect_op(")");
  }

  std::unique_ptr<Expr> parse_postfix(std::unique_ptr<Expr> e) {
    while (true) {
      if (at_op(".")) {
        ++pos_;
        const std::string name = take_name();
        if (at_op("(")) {
          if (!kMethods.count(name)) fail("unsupported method '" + name + "'");
          auto call = make(Expr::Kind::kMethodCall, name);
          call->args.push_back(std::move(e));
          parse_call_args(*call);
          e = std::move(call);
        } else {
          auto attr = make(Expr::Kind::kAttribute, name);
          attr->args.push_back(std::move(e));
          e = std::move(attr);
        }
      } else if (at_op("[")) {
        ++pos_;
        std::unique_ptr<Expr> parts[3];
        int colons = 0;
        while (true) {
          if (at_op(":")) {
            ++pos_;
            if (++colons > 2) fail("too many ':' in a slice");
            continue;
          }
          if (at_op("]")) break;
          if (parts[colons]) fail("expected ':' or ']' in a subscript");
          parts[colons] = parse_expression();
        }
        expect_op("]");
        if (colons == 0) {
          if (!parts[0]) fail("empty subscript '[]'");
          auto index = make(Expr::Kind::kIndex);
          index->args.push_back(std::move(e));
          index->args.push_back(std::move(parts[0]));
          e = std::move(index);
        } else {
          auto slice = make(Expr::Kind::kSlice);
          slice->args.push_back(std::move(e));
          for (auto& p : parts) slice->args.push_back(std::move(p));  // null = omitted
          e = std::move(slice);
        }
      } else if (at_op("(") && e->kind == Expr::Kind::kName) {
        if (!kFunctions.count(e->name)) fail("unsupported function '" + e->name + "'");
        auto call = make(Expr::Kind::kCall, e->name);
        parse_call_args(*call);
        e = std::move(call);
      } else if (at_op("|")) {
        ++pos_;
        const std::string name = take_name();
        if (!kFilters.count(name)) fail("unsupported filter '" + name + "'");
        auto filter = make(Expr::Kind::kFilter, name);
        filter->args.push_back(std::move(e));
        if (at_op("(")) parse_call_args(*filter);
        e = std::move(filter);
      } else if (at_name("is")) {
        ++pos_;
        auto test = make(Expr::Kind::kTest);
        if (at_name("not")) {
          ++pos_;
          test->negated = true;
        }
        test->name = take_name();
        if (!kTests.count(test->name)) fail("unsupported test '" + test->name + "'");
        test->args.push_back(std::move(e));
        if (at_op("(")) {
          parse_call_args(*test);
        } else if (peek().kind == TokenKind::kString || peek().kind == TokenKind::kInt ||
                   (peek().kind == TokenKind::kName && !at_name("and") && !at_name("or") &&
                    !at_name("else") && !at_name("if") && !at_name("is") && !at_name("in") &&
                    !at_name("not"))) {
          test->args.push_back(parse_primary());  // "x is equalto 3"
        }
        e = std::move(test);
      } else {
        return e;
      }
    }
  }

  std::unique_ptr<Expr> parse_primary() {
    const Token& tok = peek();
    if (tok.kind == TokenKind::kString) {
      auto e = make(Expr::Kind::kLiteral);
      e->literal = Value(take().text);
      while (peek().kind == TokenKind::kString)
        e->literal = Value(e->literal.str() + take().text);  // "a" "b"
      return e;
    }
    if (tok.kind == TokenKind::kInt || tok.kind == TokenKind::kFloat) {
      auto e = make(Expr::Kind::kLiteral);
      const Token& n = take();
      try {
        e->literal = n.kind == TokenKind::kInt ? Value(static_cast<int64_t>(std::stoll(n.text)))
                                               : Value(std::stod(n.text));
      } catch (const std::out_of_range&) {
        fail("number " + n.text + " out of range");
      }
      return e;
    }
    if (tok.kind == TokenKind::kName) {
      const std::string n = take().text;
      auto e = make(Expr::Kind::kLiteral);
      if (n == "true" || n == "True")
        e->literal = Value(true);
      else if (n == "false" || n == "False")
        e->literal = Value(false);
      else if (n == "none" || n == "None")
        e->literal = Value(None{});
      else {
        e->kind = Expr::Kind::kName;
        e->name = n;
      }
      return e;
    }
    if (at_op("(")) {
      ++pos_;
      auto e = parse_expression();
      expect_op(")");
      return e;
    }
    if (at_op("[")) {
      ++pos_;
      auto e = make(Expr::Kind::kList);
      while (!at_op("]")) {
        e->args.push_back(parse_expression());
        if (!at_op(",")) break;
        ++pos_;
      }
      expect_op("]");
      return e;
    }
    if (at_op("{")) {
      ++pos_;
      auto e = make(Expr::Kind::kDict);
      while (!at_op("}")) {
        e->args.push_back(parse_expression());
        expect_op(":");
        e->args.push_back(parse_expression());
        if (!at_op(",")) break;
        ++pos_;
      }
      expect_op("}");
      return e;
    }
    fail("unexpected '" + tok.text + "' in an expression");
  }

  std::vector<Token> t_;
  size_t pos_ = 0;
};

}  // namespace

Program parse(const std::string& source) {
  return Parser(lex(source)).parse_program();
}

}  // namespace l2kv::jinja
