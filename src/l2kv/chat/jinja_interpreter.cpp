#include "l2kv/chat/jinja_interpreter.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "l2kv/chat/text_case.h"
#include "l2kv/core/error.h"

namespace l2kv::jinja {
namespace {

struct BreakSignal {};
struct ContinueSignal {};

std::string strip_chars(const std::string& s, const std::string& chars, bool left, bool right) {
  const auto is_strip = [&](char c) {
    return chars.empty()
               ? (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f')
               : chars.find(c) != std::string::npos;
  };
  size_t b = 0, e = s.size();
  if (left)
    while (b < e && is_strip(s[b])) ++b;
  if (right)
    while (e > b && is_strip(s[e - 1])) --e;
  return s.substr(b, e - b);
}

[[noreturn]] void too_long() {
  throw Error("chat template: a string grew over " + std::to_string(kMaxStringBytes) + " bytes");
}

std::string replace_all(std::string s, const std::string& from, const std::string& to,
                        int64_t count = -1) {
  if (from.empty()) return s;
  size_t pos = 0;
  while (count != 0 && (pos = s.find(from, pos)) != std::string::npos) {
    if (s.size() - from.size() + to.size() > kMaxStringBytes) too_long();
    s.replace(pos, from.size(), to);
    pos += to.size();
    --count;
  }
  return s;
}

// A string's characters (code points, as Python's str holds them): each a UTF-8 sequence, a
// lead byte and its continuation bytes. Indexing, slicing, first / last, reverse and loops
// over a string take these, so no character is cut in half.
std::vector<std::string> characters(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    size_t j = i + 1;
    while (j < s.size() && (static_cast<unsigned char>(s[j]) & 0xC0) == 0x80) ++j;
    out.emplace_back(s, i, j - i);
    i = j;
  }
  return out;
}

int64_t python_index(int64_t i, int64_t size) {
  return i < 0 ? i + size : i;
}

std::string join_values(const List& items, const std::string& separator) {
  std::string r;
  for (size_t i = 0; i < items.size(); ++i) {
    r += (i ? separator : "") + items[i].to_output();
    if (r.size() > kMaxStringBytes) too_long();
  }
  return r;
}

class Interpreter {
 public:
  explicit Interpreter(const Globals& globals) { scopes_.push_back(globals); }

  void run(const Program& program, std::string& out) {
    for (const auto& s : program) exec(*s, out);
  }

 private:
  [[noreturn]] static void fail(const Expr& e, const std::string& what) {
    throw Error("chat template: " + what + " (at offset " + std::to_string(e.offset) + ")");
  }

  // Counts work against kMaxRenderSteps.
  void charge(int64_t steps) {
    steps_ += steps;
    if (steps_ > kMaxRenderSteps)
      throw Error("chat template: rendering took over " + std::to_string(kMaxRenderSteps) +
                  " steps (a runaway loop?)");
  }
  // capitalize and title map a text one character at a time through ICU (~0.07 s a MB): they
  // cost a step per 8 bytes, so a template cannot call them on a 16 MiB string again and again.
  const std::string& charged_case_text(const std::string& text) {
    charge(1 + static_cast<int64_t>(text.size() / 8));
    return text;
  }
  // What producing `v` cost: its list items and string bytes.
  void charge_value(const Value& v) {
    if (v.is_string()) {
      if (v.str().size() > kMaxStringBytes) too_long();
      charge(static_cast<int64_t>(v.str().size() / 64));
    } else if (v.is_list()) {
      charge(static_cast<int64_t>(v.list_items().size() / 16));
    }
  }
  // Charges a walk over `v` (each item, and string bytes): the work of printing, comparing or
  // copying it. Lists share their items, so a few lines ({% set a = [a, a] %} forty times) build
  // a value of 2^40 leaves in a few bytes; walking it is what must stay bounded.
  void charge_walk(const Value& v, int depth = 0) {
    charge(1);
    if (depth > kMaxValueDepth)
      throw Error("chat template: a value nested deeper than " + std::to_string(kMaxValueDepth) +
                  " levels");
    if (v.is_string()) {
      charge(static_cast<int64_t>(v.str().size() / 64));
    } else if (v.is_list()) {
      for (const auto& x : v.list_items()) charge_walk(x, depth + 1);
    } else if (v.is_dict()) {
      for (const auto& [k, x] : v.dict_items()) {
        charge(static_cast<int64_t>(k.size() / 64));
        charge_walk(x, depth + 1);
      }
    }
  }
  std::string output_of(const Value& v) {
    charge_walk(v);
    return v.to_output();
  }
  bool equal_charged(const Value& a, const Value& b) {
    charge_walk(a);
    charge_walk(b);
    return equal(a, b);
  }
  std::string join_charged(const List& items, const std::string& separator) {
    for (const auto& x : items) charge_walk(x);
    return join_values(items, separator);
  }

  // A value stored into a namespace outlives the loop iteration that built it, so a loop could
  // nest it ever deeper or store a namespace into itself (a reference cycle, never freed and
  // printed forever). Checks both, charging the walk.
  void check_storable(const Expr& e, const Value& v, const void* target, int depth = 0) {
    charge(1);
    if (depth > kMaxValueDepth)
      fail(e, "a value nested deeper than " + std::to_string(kMaxValueDepth) + " levels");
    if (v.is_list()) {
      for (const auto& x : v.list_items()) check_storable(e, x, target, depth + 1);
    } else if (v.is_dict()) {
      if (std::get<DictRef>(v.v).items.get() == target)
        fail(e, "a namespace cannot be stored inside itself");
      for (const auto& [k, x] : v.dict_items()) check_storable(e, x, target, depth + 1);
    }
  }
  // `value` by reference: read after the __builtin_*_overflow argument has stored it.
  static int64_t checked(const Expr& e, bool overflow, const int64_t& value) {
    if (overflow) fail(e, "integer overflow");
    return value;
  }
  // An integer argument within [lo, hi] (a float is truncated, as int() does).
  static int64_t bounded_int(const Expr& e, const Value& v, int64_t lo, int64_t hi,
                             const std::string& what) {
    if (!v.is_number()) fail(e, what + " must be a number");
    const double x = v.number();
    if (v.is_int() ? (std::get<int64_t>(v.v) < lo || std::get<int64_t>(v.v) > hi)
                   : !(x >= static_cast<double>(lo) && x <= static_cast<double>(hi)))
      fail(e, what + " must be within [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return v.is_int() ? std::get<int64_t>(v.v) : static_cast<int64_t>(x);
  }

  Value lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it)
      for (const auto& [k, v] : *it)
        if (k == name) return v;
    return Value();
  }
  void assign(const std::string& name, Value v) {
    // Scopes are searched name by name: thousands of variables make every set a long scan.
    charge(static_cast<int64_t>(scopes_.back().size() / 32));
    for (auto& [k, val] : scopes_.back())
      if (k == name) {
        val = std::move(v);
        return;
      }
    scopes_.back().emplace_back(name, std::move(v));
  }

  void exec(const Stmt& s, std::string& out) {
    charge(1);
    switch (s.kind) {
      case Stmt::Kind::kText:
        out += s.text;
        if (out.size() > kMaxStringBytes) too_long();
        return;
      case Stmt::Kind::kOutput:
        out += output_of(eval(*s.expr));
        if (out.size() > kMaxStringBytes) too_long();
        return;
      case Stmt::Kind::kIf: {
        const auto& branch = eval(*s.expr).truthy() ? s.body : s.else_body;
        for (const auto& b : branch) exec(*b, out);
        return;
      }
      case Stmt::Kind::kSet: {
        Value v = eval(*s.expr);
        if (s.targets.size() == 1) {
          assign(s.targets[0], std::move(v));
          return;
        }
        const Value target = lookup(s.targets[0]);
        if (!target.is_dict() || !std::get<DictRef>(target.v).is_namespace)
          fail(*s.expr,
               "'" + s.targets[0] + "' is not a namespace; only namespace attributes can be set");
        check_storable(*s.expr, v, std::get<DictRef>(target.v).items.get());
        target.set(s.targets[1], std::move(v));
        return;
      }
      case Stmt::Kind::kFor:
        exec_for(s, out);
        return;
      case Stmt::Kind::kBreak:
        throw BreakSignal{};
      case Stmt::Kind::kContinue:
        throw ContinueSignal{};
    }
  }

  void exec_for(const Stmt& s, std::string& out) {
    const Value iterable = eval(*s.expr);
    List items;
    if (iterable.is_list()) {
      items = iterable.list_items();
    } else if (iterable.is_dict()) {
      for (const auto& [k, v] : iterable.dict_items()) items.push_back(Value(k));
    } else if (iterable.is_string()) {
      charge(static_cast<int64_t>(iterable.str().size() / 16));
      for (std::string& c : characters(iterable.str())) items.push_back(Value(std::move(c)));
    } else if (!iterable.is_undefined() && !iterable.is_none()) {
      fail(*s.expr, "cannot iterate over a " + iterable.type_name());
    }
    auto bind = [&](Globals& scope, const Value& item) {
      if (s.targets.size() == 1) {
        scope.emplace_back(s.targets[0], item);
        return;
      }
      if (!item.is_list() || item.list_items().size() != s.targets.size())
        fail(*s.expr,
             "cannot unpack a loop item into " + std::to_string(s.targets.size()) + " names");
      for (size_t i = 0; i < s.targets.size(); ++i)
        scope.emplace_back(s.targets[i], item.list_items()[i]);
    };
    if (s.filter) {  // "for x in xs if cond": the loop sees only the kept items
      List kept;
      for (const auto& item : items) {
        scopes_.emplace_back();
        bind(scopes_.back(), item);
        const bool keep = eval(*s.filter).truthy();
        scopes_.pop_back();
        if (keep) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      for (const auto& b : s.else_body) exec(*b, out);
      return;
    }
    const int64_t n = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < n; ++i) {
      scopes_.emplace_back();
      bind(scopes_.back(), items[i]);
      scopes_.back().emplace_back("loop",
                                  Value::dict({{"index", Value(i + 1)},
                                               {"index0", Value(i)},
                                               {"first", Value(i == 0)},
                                               {"last", Value(i == n - 1)},
                                               {"length", Value(n)},
                                               {"revindex", Value(n - i)},
                                               {"revindex0", Value(n - i - 1)},
                                               {"previtem", i > 0 ? items[i - 1] : Value()},
                                               {"nextitem", i + 1 < n ? items[i + 1] : Value()}}));
      bool stop = false;
      try {
        for (const auto& b : s.body) exec(*b, out);
      } catch (const BreakSignal&) {
        stop = true;
      } catch (const ContinueSignal&) {
      }
      scopes_.pop_back();
      if (stop) break;
    }
  }

  // Each nested expression is a C++ frame; a chain like a ~ b ~ c ~ ... nests without limit
  // in the parser's output.
  Value eval(const Expr& e) {
    struct Nesting {
      int& depth;
      ~Nesting() { --depth; }
    } nesting{++depth_};
    if (depth_ > kMaxEvalDepth)
      fail(e, "expression nested deeper than " + std::to_string(kMaxEvalDepth) + " levels");
    charge(1);
    Value v = eval_node(e);
    charge_value(v);
    return v;
  }

  Value eval_node(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::kLiteral:
        return e.literal;
      case Expr::Kind::kName:
        return lookup(e.name);
      case Expr::Kind::kList: {
        List items;
        for (const auto& a : e.args) items.push_back(eval(*a));
        return Value::list(std::move(items));
      }
      case Expr::Kind::kDict: {
        Value d = Value::dict();
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
          const Value k = eval(*e.args[i]);
          if (!k.is_string()) fail(e, "dict keys must be strings");
          d.set(k.str(), eval(*e.args[i + 1]));
        }
        return d;
      }
      case Expr::Kind::kAttribute: {
        const Value base = eval(*e.args[0]);
        return base.get(e.name);
      }
      case Expr::Kind::kIndex:
        return index(e, eval(*e.args[0]), eval(*e.args[1]));
      case Expr::Kind::kSlice:
        return slice(e);
      case Expr::Kind::kCall:
        return call_function(e);
      case Expr::Kind::kMethodCall:
        return call_method(e);
      case Expr::Kind::kFilter:
        return apply_filter(e);
      case Expr::Kind::kTest:
        return Value(apply_test(e) != e.negated);
      case Expr::Kind::kUnary: {
        const Value raw = eval(*e.args[0]);
        if (e.name == "not") return Value(!raw.truthy());
        const Value v = int_if_bool(raw);  // -True is -1
        if (!v.is_number()) fail(e, "unary " + e.name + " needs a number");
        if (e.name == "+") return v;
        if (v.is_int()) {
          int64_t r = 0;
          return Value(
              checked(e, __builtin_sub_overflow(int64_t{0}, std::get<int64_t>(v.v), &r), r));
        }
        return Value(-v.number());
      }
      case Expr::Kind::kBinary:
        return binary(e);
      case Expr::Kind::kTernary:
        return eval(*e.args[0]).truthy() ? eval(*e.args[1]) : eval(*e.args[2]);
    }
    fail(e, "unknown expression");
  }

  Value index(const Expr& e, const Value& base, const Value& key) {
    if (base.is_dict()) {
      if (!key.is_string()) return Value();
      return base.get(key.str());
    }
    if (base.is_list() || base.is_string()) {
      if (!key.is_int()) fail(e, "list and string indices must be integers");
      std::vector<std::string> chars;
      if (base.is_string()) {
        charge(static_cast<int64_t>(base.str().size() / 16));
        chars = characters(base.str());
      }
      const int64_t size = base.is_list() ? static_cast<int64_t>(base.list_items().size())
                                          : static_cast<int64_t>(chars.size());
      const int64_t i = python_index(std::get<int64_t>(key.v), size);
      if (i < 0 || i >= size) return Value();
      return base.is_list() ? base.list_items()[i] : Value(chars[i]);
    }
    return Value();
  }

  Value slice(const Expr& e) {
    const Value base = eval(*e.args[0]);
    auto part = [&](int k, int64_t fallback) -> int64_t {
      if (!e.args[k]) return fallback;
      const Value v = eval(*e.args[k]);
      if (v.is_none()) return fallback;
      if (!v.is_int()) fail(e, "slice bounds must be integers");
      return std::get<int64_t>(v.v);
    };
    std::vector<std::string> chars;
    if (base.is_string()) {
      charge(static_cast<int64_t>(base.str().size() / 16));
      chars = characters(base.str());
    }
    const int64_t size = base.is_list()     ? static_cast<int64_t>(base.list_items().size())
                         : base.is_string() ? static_cast<int64_t>(chars.size())
                                            : -1;
    if (size < 0) fail(e, "cannot slice a " + base.type_name());
    const int64_t step = part(3, 1);
    if (step == 0) fail(e, "slice step cannot be zero");
    auto clamp = [&](int64_t i, bool upper_default) {
      i = python_index(i, size);
      if (step > 0) return std::clamp<int64_t>(i, 0, size);
      (void)upper_default;
      return std::clamp<int64_t>(i, -1, size - 1);
    };
    const int64_t start = e.args[1] ? clamp(part(1, 0), false) : (step > 0 ? 0 : size - 1);
    const int64_t stop = e.args[2] ? clamp(part(2, 0), true) : (step > 0 ? size : -1);
    List items;
    std::string text;
    for (int64_t i = start; step > 0 ? i < stop : i > stop;) {
      if (base.is_list())
        items.push_back(base.list_items()[i]);
      else
        text += chars[i];
      if (step > 0 ? stop - i <= step : i - stop <= -step) break;  // i + step would pass stop
      i += step;
    }
    return base.is_list() ? Value::list(std::move(items)) : Value(text);
  }

  Value call_function(const Expr& e) {
    if (e.name == "namespace") {
      Value ns = Value::dict({}, /*is_namespace=*/true);
      for (const auto& [k, v] : e.kwargs) ns.set(k, eval(*v));
      return ns;
    }
    if (e.name == "dict") {
      Value d = Value::dict();
      for (const auto& [k, v] : e.kwargs) d.set(k, eval(*v));
      return d;
    }
    if (e.name == "raise_exception") {
      const std::string message = e.args.empty() ? "" : output_of(eval(*e.args[0]));
      throw Error("chat template raised: " + message);
    }
    if (e.name == "range") {
      std::vector<int64_t> a;
      for (const auto& arg : e.args) {
        const Value v = eval(*arg);
        if (!v.is_int()) fail(e, "range() takes integers");
        a.push_back(std::get<int64_t>(v.v));
      }
      if (a.empty() || a.size() > 3) fail(e, "range() takes 1 to 3 arguments");
      const int64_t start = a.size() == 1 ? 0 : a[0], stop = a.size() == 1 ? a[0] : a[1],
                    step = a.size() == 3 ? a[2] : 1;
      if (step == 0) fail(e, "range() step cannot be zero");
      // The item count in 128 bits: stop - start may not fit 64.
      const __int128 span = static_cast<__int128>(stop) - start;
      const __int128 count = step > 0 ? (span > 0 ? (span + step - 1) / step : 0)
                                      : (span < 0 ? (-span + (-static_cast<__int128>(step)) - 1) /
                                                        -static_cast<__int128>(step)
                                                  : 0);
      if (count > kMaxRangeItems)
        fail(e, "range() of over " + std::to_string(kMaxRangeItems) + " items");
      charge(static_cast<int64_t>(count));
      List items;
      for (int64_t k = 0; k < static_cast<int64_t>(count); ++k)
        items.push_back(Value(static_cast<int64_t>(start + static_cast<__int128>(k) * step)));
      return Value::list(std::move(items));
    }
    fail(e, "unknown function " + e.name);
  }

  std::vector<Value> eval_args(const Expr& e) {
    std::vector<Value> args;
    for (size_t i = 1; i < e.args.size(); ++i) args.push_back(eval(*e.args[i]));
    return args;
  }

  Value call_method(const Expr& e) {
    const Value self = eval(*e.args[0]);
    const std::vector<Value> args = eval_args(e);
    auto str_arg = [&](size_t i, const std::string& fallback) {
      if (i >= args.size() || args[i].is_none()) return fallback;
      if (!args[i].is_string()) fail(e, e.name + "() needs a string argument");
      return args[i].str();
    };
    if (self.is_string()) {
      const std::string& s = self.str();
      if (e.name == "strip") return Value(strip_chars(s, str_arg(0, ""), true, true));
      if (e.name == "lstrip") return Value(strip_chars(s, str_arg(0, ""), true, false));
      if (e.name == "rstrip") return Value(strip_chars(s, str_arg(0, ""), false, true));
      if (e.name == "upper") return Value(to_upper(s));
      if (e.name == "lower") return Value(to_lower(s));
      if (e.name == "startswith") return Value(s.starts_with(str_arg(0, "")));
      if (e.name == "endswith") return Value(s.ends_with(str_arg(0, "")));
      if (e.name == "replace") {
        const int64_t count =
            args.size() > 2 && args[2].is_int() ? std::get<int64_t>(args[2].v) : -1;
        return Value(replace_all(s, str_arg(0, ""), str_arg(1, ""), count));
      }
      if (e.name == "count") {
        const std::string sub = str_arg(0, "");
        int64_t n = 0;
        for (size_t p = s.find(sub); !sub.empty() && p != std::string::npos;
             p = s.find(sub, p + sub.size()))
          ++n;
        return Value(n);
      }
      if (e.name == "split") {
        List parts;
        const std::string sep = str_arg(0, "");
        int64_t maxsplit = args.size() > 1 && args[1].is_int() ? std::get<int64_t>(args[1].v) : -1;
        if (sep.empty()) {  // whitespace split, empty parts dropped
          size_t i = 0;
          while (i < s.size()) {
            while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
            if (i >= s.size()) break;
            size_t j = i;
            if (maxsplit == 0)
              j = s.size();
            else
              while (j < s.size() && !std::isspace(static_cast<unsigned char>(s[j]))) ++j;
            parts.push_back(Value(s.substr(i, j - i)));
            if (maxsplit > 0) --maxsplit;
            i = j;
          }
          return Value::list(std::move(parts));
        }
        size_t start = 0, hit;
        while (maxsplit != 0 && (hit = s.find(sep, start)) != std::string::npos) {
          parts.push_back(Value(s.substr(start, hit - start)));
          start = hit + sep.size();
          if (maxsplit > 0) --maxsplit;
        }
        parts.push_back(Value(s.substr(start)));
        return Value::list(std::move(parts));
      }
      if (e.name == "title") return Value(python_title(charged_case_text(s)));
      if (e.name == "capitalize") return Value(capitalize(charged_case_text(s)));
      if (e.name == "join") {
        if (args.empty() || !args[0].is_list()) fail(e, "join() needs a list");
        return Value(join_charged(args[0].list_items(), s));
      }
    }
    if (self.is_dict()) {
      if (e.name == "items" || e.name == "keys" || e.name == "values") {
        List out;
        for (const auto& [k, v] : self.dict_items()) {
          if (e.name == "items")
            out.push_back(Value::tuple({Value(k), v}));
          else if (e.name == "keys")
            out.push_back(Value(k));
          else
            out.push_back(v);
        }
        return Value::list(std::move(out));
      }
      if (e.name == "get") {
        if (args.empty() || !args[0].is_string()) fail(e, "get() needs a string key");
        const Value v = self.get(args[0].str());
        return v.is_undefined() ? (args.size() > 1 ? args[1] : Value(None{})) : v;
      }
    }
    if (self.is_list() && e.name == "count") {
      int64_t n = 0;
      for (const auto& v : self.list_items())
        n += equal_charged(v, args.empty() ? Value() : args[0]);
      return Value(n);
    }
    fail(e, "no method " + e.name + "() on a " + self.type_name());
  }

  Value apply_filter(const Expr& e) {
    const Value v = eval(*e.args[0]);
    const std::vector<Value> args = eval_args(e);
    const std::string& f = e.name;
    if (f == "trim") {
      if (!v.is_string()) fail(e, "trim needs a string, got a " + v.type_name());
      return Value(strip_chars(v.str(), args.empty() ? "" : output_of(args[0]), true, true));
    }
    if (f == "tojson") {
      int indent = 0;
      for (const auto& [k, x] : e.kwargs)
        if (k == "indent") indent = static_cast<int>(bounded_int(e, eval(*x), 0, 64, "indent"));
      if (!args.empty() && args[0].is_int())
        indent = static_cast<int>(bounded_int(e, args[0], 0, 64, "indent"));
      charge_walk(v);
      return Value(v.to_json(indent));
    }
    if (f == "length" || f == "count") {
      if (v.is_string()) {
        int64_t n = 0;  // code points, as Python's len()
        for (unsigned char c : v.str()) n += (c & 0xC0) != 0x80;
        return Value(n);
      }
      if (v.is_list()) return Value(static_cast<int64_t>(v.list_items().size()));
      if (v.is_dict()) return Value(static_cast<int64_t>(v.dict_items().size()));
      fail(e, "length of a " + v.type_name());
    }
    if (f == "default" || f == "d") {
      const bool boolean = args.size() > 1 && args[1].truthy();
      const bool use_default = v.is_undefined() || (boolean && !v.truthy());
      return use_default ? (args.empty() ? Value("") : args[0]) : v;
    }
    if (f == "first" || f == "last") {
      if (v.is_list()) {
        if (v.list_items().empty()) return Value();
        return f == "first" ? v.list_items().front() : v.list_items().back();
      }
      if (v.is_string() && !v.str().empty()) {
        const std::vector<std::string> chars = characters(v.str());
        return Value(f == "first" ? chars.front() : chars.back());
      }
      return Value();
    }
    if (f == "join") {
      if (!v.is_list()) fail(e, "join needs a list");
      return Value(join_charged(v.list_items(), args.empty() ? "" : output_of(args[0])));
    }
    if (f == "list") {
      if (v.is_list()) return Value::list(v.list_items());
      List items;
      if (v.is_string())  // characters, as Python's list(str)
        for (std::string& c : characters(v.str())) items.push_back(Value(std::move(c)));
      if (v.is_dict())
        for (const auto& [k, x] : v.dict_items()) items.push_back(Value(k));
      return Value::list(std::move(items));
    }
    if (f == "upper") return Value(to_upper(output_of(v)));
    if (f == "lower") return Value(to_lower(output_of(v)));
    if (f == "capitalize") return Value(capitalize(charged_case_text(output_of(v))));
    if (f == "title") return Value(jinja_title(charged_case_text(output_of(v))));
    if (f == "replace") {
      if (args.size() < 2) fail(e, "replace needs two arguments");
      return Value(replace_all(output_of(v), output_of(args[0]), output_of(args[1])));
    }
    if (f == "string" || f == "safe") return Value(output_of(v));
    if (f == "int") {
      if (v.is_int()) return v;
      if (v.is_bool()) return int_if_bool(v);
      if (v.is_number()) {
        // Python's int() of a float beyond 64 bits is a big integer; ours cannot hold it.
        const double x = v.number();
        if (!(x > -9.2e18 && x < 9.2e18)) fail(e, "int() of a float out of range");
        return Value(static_cast<int64_t>(x));
      }
      try {
        return Value(static_cast<int64_t>(std::stoll(output_of(v))));
      } catch (const std::exception&) {
        return Value(static_cast<int64_t>(0));
      }
    }
    if (f == "float") {
      if (v.is_number() || v.is_bool()) return Value(int_if_bool(v).number());
      try {
        return Value(std::stod(output_of(v)));
      } catch (const std::exception&) {
        return Value(0.0);
      }
    }
    if (f == "abs" && v.is_bool()) return int_if_bool(v);
    if (f == "abs") {
      if (!v.is_number()) fail(e, "abs of a " + v.type_name());
      if (v.is_int()) {
        const int64_t x = std::get<int64_t>(v.v);
        int64_t r = 0;
        return Value(x < 0 ? checked(e, __builtin_sub_overflow(int64_t{0}, x, &r), r) : x);
      }
      return Value(std::fabs(v.number()));
    }
    if (f == "items") {
      List out;
      if (v.is_dict())
        for (const auto& [k, x] : v.dict_items()) out.push_back(Value::tuple({Value(k), x}));
      return Value::list(std::move(out));
    }
    if (f == "dictsort") {
      if (!v.is_dict()) fail(e, "dictsort needs a dict");
      Dict d = v.dict_items();
      std::stable_sort(d.begin(), d.end(),
                       [](const auto& a, const auto& b) { return a.first < b.first; });
      List out;
      for (const auto& [k, x] : d) out.push_back(Value::tuple({Value(k), x}));
      return Value::list(std::move(out));
    }
    if (f == "reverse") {
      if (v.is_list()) {
        List r(v.list_items().rbegin(), v.list_items().rend());
        return Value::list(std::move(r));
      }
      std::vector<std::string> chars = characters(output_of(v));
      std::string r;
      for (auto it = chars.rbegin(); it != chars.rend(); ++it) r += *it;
      return Value(r);
    }
    if (f == "indent") {
      const int width =
          args.empty() ? 4 : static_cast<int>(bounded_int(e, args[0], 0, 256, "indent width"));
      const std::string pad(static_cast<size_t>(width), ' ');
      std::string s = output_of(v), r;
      for (size_t i = 0; i < s.size(); ++i) {
        r += s[i];
        if (s[i] == '\n' && i + 1 < s.size()) r += pad;
        if (r.size() > kMaxStringBytes) too_long();
      }
      return Value(r);
    }
    fail(e, "unknown filter " + f);
  }

  bool apply_test(const Expr& e) {
    const Value v = eval(*e.args[0]);
    const std::vector<Value> args = eval_args(e);
    const std::string& t = e.name;
    if (t == "defined") return !v.is_undefined();
    if (t == "undefined") return v.is_undefined();
    if (t == "none") return v.is_none();
    if (t == "string") return v.is_string();
    if (t == "number") return v.is_number();
    if (t == "integer") return v.is_int();
    if (t == "float") return v.is_float();
    if (t == "boolean") return v.is_bool();
    if (t == "true") return v.is_bool() && std::get<bool>(v.v);
    if (t == "false") return v.is_bool() && !std::get<bool>(v.v);
    if (t == "mapping") return v.is_dict();
    if (t == "iterable") return v.is_list() || v.is_dict() || v.is_string();
    if (t == "sequence") return v.is_list() || v.is_string();
    if (t == "odd" || t == "even")
      return v.is_int() && (std::get<int64_t>(v.v) % 2 != 0) == (t == "odd");
    if (t == "eq" || t == "equalto") return !args.empty() && equal_charged(v, args[0]);
    if (t == "ne") return args.empty() || !equal_charged(v, args[0]);
    if (t == "in") return !args.empty() && contains(e, args[0], v);
    fail(e, "unknown test " + t);
  }

  bool contains(const Expr& e, const Value& container, const Value& item) {
    if (container.is_string()) {
      if (!item.is_string()) fail(e, "'in <string>' needs a string on the left");
      return container.str().find(item.str()) != std::string::npos;
    }
    if (container.is_list()) {
      for (const auto& x : container.list_items())
        if (equal_charged(x, item)) return true;
      return false;
    }
    if (container.is_dict()) return item.is_string() && !container.get(item.str()).is_undefined();
    fail(e, "'in' on a " + container.type_name());
  }

  Value binary(const Expr& e) {
    const std::string& op = e.name;
    if (op == "and") {
      Value a = eval(*e.args[0]);
      return a.truthy() ? eval(*e.args[1]) : a;
    }
    if (op == "or") {
      Value a = eval(*e.args[0]);
      return a.truthy() ? a : eval(*e.args[1]);
    }
    // Python's bool is an int in arithmetic and ordering: True + 1 is 2, 'a' * True is 'a'.
    const Value a_raw = eval(*e.args[0]);
    const Value b_raw = eval(*e.args[1]);
    if (op == "==") return Value(equal_charged(a_raw, b_raw));
    if (op == "!=") return Value(!equal_charged(a_raw, b_raw));
    if (op == "in") return Value(contains(e, b_raw, a_raw));
    if (op == "not in") return Value(!contains(e, b_raw, a_raw));
    if (op == "~") {
      std::string x = output_of(a_raw), y = output_of(b_raw);
      if (x.size() + y.size() > kMaxStringBytes) too_long();
      return Value(x + y);
    }
    const Value a = int_if_bool(a_raw);
    const Value b = int_if_bool(b_raw);
    if (op == "<" || op == ">" || op == "<=" || op == ">=") {
      int cmp;
      if (a.is_number() && b.is_number())
        cmp = a.number() < b.number() ? -1 : a.number() > b.number() ? 1 : 0;
      else if (a.is_string() && b.is_string())
        cmp = a.str().compare(b.str());
      else
        fail(e, "cannot compare a " + a.type_name() + " with a " + b.type_name());
      if (op == "<") return Value(cmp < 0);
      if (op == ">") return Value(cmp > 0);
      if (op == "<=") return Value(cmp <= 0);
      return Value(cmp >= 0);
    }
    if (op == "+") {
      if (a.is_string() && b.is_string()) {
        if (a.str().size() + b.str().size() > kMaxStringBytes) too_long();
        return Value(a.str() + b.str());
      }
      if (a.is_list() && b.is_list()) {
        // The copy shares nested lists but copies strings: charge what it copies.
        for (const auto& x : a.list_items())
          charge(1 + (x.is_string() ? static_cast<int64_t>(x.str().size() / 64) : 0));
        for (const auto& x : b.list_items())
          charge(1 + (x.is_string() ? static_cast<int64_t>(x.str().size() / 64) : 0));
        List r = a.list_items();
        r.insert(r.end(), b.list_items().begin(), b.list_items().end());
        return Value::list(std::move(r));
      }
    }
    if (op == "*" && ((a.is_string() && b.is_int()) || (a.is_int() && b.is_string()))) {
      // Python's repetition: '-' * 20.
      const std::string& text = a.is_string() ? a.str() : b.str();
      const int64_t times = std::get<int64_t>((a.is_int() ? a : b).v);
      if (times <= 0 || text.empty()) return Value(std::string());
      if (static_cast<uint64_t>(times) > kMaxStringBytes / text.size()) too_long();
      const size_t bytes = text.size() * static_cast<size_t>(times);
      charge(1 + static_cast<int64_t>(bytes / 64));
      std::string r;
      r.reserve(bytes);
      for (int64_t i = 0; i < times; ++i) r += text;
      return Value(std::move(r));
    }
    if (!a.is_number() || !b.is_number())
      fail(e, "operator " + op + " on a " + a.type_name() + " and a " + b.type_name());
    const bool ints = a.is_int() && b.is_int();
    const int64_t x = ints ? std::get<int64_t>(a.v) : 0, y = ints ? std::get<int64_t>(b.v) : 0;
    int64_t r = 0;
    if (op == "+")
      return ints ? Value(checked(e, __builtin_add_overflow(x, y, &r), r))
                  : Value(a.number() + b.number());
    if (op == "-")
      return ints ? Value(checked(e, __builtin_sub_overflow(x, y, &r), r))
                  : Value(a.number() - b.number());
    if (op == "*")
      return ints ? Value(checked(e, __builtin_mul_overflow(x, y, &r), r))
                  : Value(a.number() * b.number());
    if (op == "/") {
      if (b.number() == 0) fail(e, "division by zero");
      return Value(a.number() / b.number());
    }
    if (op == "//" || op == "%") {
      if (b.number() == 0) fail(e, "division by zero");
      if (ints) {
        if (x == std::numeric_limits<int64_t>::min() && y == -1) fail(e, "integer overflow");
        int64_t q = x / y;
        r = x % y;
        if (r != 0 && ((r < 0) != (y < 0))) {  // Python floors
          --q;
          r += y;
        }
        return op == "//" ? Value(q) : Value(r);
      }
      const double q = std::floor(a.number() / b.number());
      return op == "//" ? Value(q) : Value(a.number() - q * b.number());
    }
    fail(e, "unknown operator " + op);
  }

  std::vector<Globals> scopes_;
  int64_t steps_ = 0;
  int depth_ = 0;
};

}  // namespace

std::string render(const Program& program, const Globals& globals) {
  std::string out;
  Interpreter interpreter(globals);
  try {
    interpreter.run(program, out);
  } catch (const BreakSignal&) {
    throw Error("chat template: break outside a loop");
  } catch (const ContinueSignal&) {
    throw Error("chat template: continue outside a loop");
  }
  return out;
}

}  // namespace l2kv::jinja
