#include "l2kv/structured/grammar_matcher.h"

#include <algorithm>
#include <array>
#include <numeric>

#include "l2kv/core/error.h"

namespace l2kv::structured {
namespace {

using Stack = GrammarMatcher::Stack;
using State = GrammarMatcher::State;
using Kind = Element::Kind;

// Stacks deeper than this are dropped (JSON nested over a thousand levels, or a grammar that
// recurses without consuming): the rest of the state stays a valid parse.
constexpr size_t kMaxStackDepth = 1024;
// States with more live stacks than this keep the first ones (a pathologically ambiguous
// regex); what they allow is still valid.
constexpr size_t kMaxStacks = 4096;
// Rule references expanded in a row without a byte consumed: deeper chains (a long run of
// optional items, such as (a?){0,100000}) are cut, bounding the recursion and its cycle check.
constexpr size_t kMaxExpansionChain = 2048;
// Rule expansions per byte advanced (or per start state): a grammar that explodes there, such as
// nested nullable repetitions ((a*)*)*, keeps what it found within the budget.
constexpr int64_t kExpansionBudget = 1 << 14;
// Parser work (rule expansions and the cycle checks along their chains) one mask may take:
// past this a request's constraint is too ambiguous to follow (a long run of optional items,
// a?b?c?..., expands the whole run after every byte) and the mask is refused, instead of
// holding up every request of the step for seconds.
constexpr int64_t kMaxMaskWork = int64_t{16} << 20;
// Bytes of masks cached per grammar (128 masks of a 128k vocabulary, 4,096 of a 4k one); past
// this the cache starts over.
constexpr size_t kMaxCachedMaskBytes = size_t{2} << 20;

// Pushes onto `out` every stack `s` becomes once rule references on top are expanded (tops are
// then byte sets, or the stack is empty: complete). `path` holds the stacks being expanded, so
// a rule that derives itself without consuming a byte is cut instead of looping.
void expand(const Grammar& g, Stack& s, State& out, std::vector<Stack>& path, int64_t& budget,
            int64_t& work) {
  if (s.empty() || g.elements()[s.back()].kind == Kind::kBytes) {
    out.push_back(s);
    return;
  }
  if (s.size() > kMaxStackDepth || path.size() > kMaxExpansionChain || --budget < 0) return;
  work += 1 + static_cast<int64_t>(path.size());  // this expansion and its cycle check
  for (const Stack& p : path)
    if (p == s) return;
  path.push_back(s);
  const int32_t top = s.back();
  const int32_t rule = g.elements()[top].index;
  s.pop_back();
  if (g.elements()[top + 1].kind != Kind::kEnd) s.push_back(top + 1);
  const size_t base = s.size();
  for (int32_t start : g.alternatives(rule)) {
    if (g.elements()[start].kind != Kind::kEnd) s.push_back(start);
    expand(g, s, out, path, budget, work);
    s.resize(base);
  }
  path.pop_back();
  // Restore `s` for the caller (it is scratch, but keep it whole).
  if (g.elements()[top + 1].kind != Kind::kEnd) s.pop_back();
  s.push_back(top);
}

void normalize(State& state) {
  std::sort(state.begin(), state.end());
  state.erase(std::unique(state.begin(), state.end()), state.end());
  if (state.size() > kMaxStacks) state.resize(kMaxStacks);
}

}  // namespace

State initial_state(const Grammar& g) {
  if (g.root() < 0) throw Error("structured output: the grammar has no root rule");
  State out;
  std::vector<Stack> path;
  int64_t budget = kExpansionBudget, work = 0;
  Stack s{};
  // A root reference as a one-element stack: a synthetic position is not available, so expand
  // the root's alternatives directly.
  for (int32_t start : g.alternatives(g.root())) {
    s.clear();
    if (g.elements()[start].kind != Kind::kEnd) s.push_back(start);
    expand(g, s, out, path, budget, work);
  }
  normalize(out);
  return out;
}

State advance_state(const Grammar& g, const State& state, uint8_t byte, int64_t* work) {
  State out;
  std::vector<Stack> path;
  int64_t budget = kExpansionBudget;
  int64_t unused = 0;
  int64_t& counted = work ? *work : unused;
  Stack s;
  for (const Stack& from : state) {
    if (from.empty()) continue;
    const Element& e = g.elements()[from.back()];
    if (e.kind != Kind::kBytes || !g.byte_set(e.index).has(byte)) continue;
    s = from;
    const int32_t top = s.back();
    s.pop_back();
    if (g.elements()[top + 1].kind != Kind::kEnd) s.push_back(top + 1);
    expand(g, s, out, path, budget, counted);
  }
  normalize(out);
  return out;
}

bool grammar_matches(const Grammar& grammar, std::string_view text) {
  State state = initial_state(grammar);
  for (char c : text) {
    state = advance_state(grammar, state, static_cast<uint8_t>(c));
    if (state.empty()) return false;
  }
  return std::any_of(state.begin(), state.end(), [](const Stack& s) { return s.empty(); });
}

TokenVocabulary::TokenVocabulary(std::vector<std::string> token_bytes, std::vector<int32_t> eos_ids)
    : bytes_(std::move(token_bytes)), eos_ids_(std::move(eos_ids)) {
  for (int32_t id : eos_ids_)
    if (id < 0 || id >= size())
      throw Error("structured output: EOS id " + std::to_string(id) + " is outside the vocabulary");
  for (int32_t id = 0; id < static_cast<int32_t>(bytes_.size()); ++id)
    if (!bytes_[id].empty() && !is_eos(id)) sorted_.push_back(id);
  std::sort(sorted_.begin(), sorted_.end(),
            [&](int32_t a, int32_t b) { return bytes_[a] < bytes_[b]; });
  shared_prefix_.resize(sorted_.size(), 0);
  for (size_t i = 1; i < sorted_.size(); ++i) {
    const std::string& a = bytes_[sorted_[i - 1]];
    const std::string& b = bytes_[sorted_[i]];
    size_t n = 0;
    while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
    shared_prefix_[i] = static_cast<int32_t>(n);
  }
}

bool TokenVocabulary::is_eos(int32_t id) const {
  return std::find(eos_ids_.begin(), eos_ids_.end(), id) != eos_ids_.end();
}

CompiledGrammar::CompiledGrammar(Grammar grammar, std::shared_ptr<const TokenVocabulary> vocabulary)
    : grammar_(std::move(grammar)), vocabulary_(std::move(vocabulary)) {
  if (!vocabulary_) throw Error("structured output: no token vocabulary");
  // A grammar without a root, or one that can never complete, fails here, not in the engine.
  const State start = initial_state(grammar_);
  if (!productive_rules(grammar_)[static_cast<size_t>(grammar_.root())] || start.empty())
    throw Error(
        "the constraint allows no complete output (it refers only to itself, or recurses with no "
        "way to end)");
}

bool CompiledGrammar::cached_mask(const std::string& key, std::span<uint32_t> mask) const {
  std::lock_guard lock(mutex_);
  const auto it = masks_.find(key);
  if (it == masks_.end() || it->second.size() != mask.size()) return false;
  std::copy(it->second.begin(), it->second.end(), mask.begin());
  return true;
}

void CompiledGrammar::cache_mask(const std::string& key, std::span<const uint32_t> mask) const {
  std::lock_guard lock(mutex_);
  if ((masks_.size() + 1) * mask.size_bytes() > kMaxCachedMaskBytes) masks_.clear();
  masks_.emplace(key, std::vector<uint32_t>(mask.begin(), mask.end()));
}

GrammarMatcher::GrammarMatcher(std::shared_ptr<const CompiledGrammar> grammar)
    : grammar_(std::move(grammar)) {
  if (!grammar_) throw Error("GrammarMatcher: no grammar");
  state_ = initial_state(grammar_->grammar());
}

bool GrammarMatcher::accept_bytes(std::string_view bytes) {
  if (terminated_) return false;
  State next = state_;
  for (char c : bytes) {
    next = advance_state(grammar_->grammar(), next, static_cast<uint8_t>(c));
    if (next.empty()) return false;
  }
  state_ = std::move(next);
  return true;
}

bool GrammarMatcher::accept_token(int32_t id) {
  const TokenVocabulary& vocab = grammar_->vocabulary();
  if (terminated_ || id < 0 || id >= vocab.size()) return false;
  if (vocab.is_eos(id)) {
    if (!accepting()) return false;
    terminated_ = true;
    return true;
  }
  if (vocab.bytes(id).empty()) return false;
  return accept_bytes(vocab.bytes(id));
}

bool GrammarMatcher::accepting() const {
  return std::any_of(state_.begin(), state_.end(), [](const Stack& s) { return s.empty(); });
}

bool GrammarMatcher::can_continue() const {
  return std::any_of(state_.begin(), state_.end(), [](const Stack& s) { return !s.empty(); });
}

namespace {

std::string key_of(const State& state) {
  std::string key;
  for (const Stack& s : state) {
    const int32_t n = static_cast<int32_t>(s.size());
    key.append(reinterpret_cast<const char*>(&n), sizeof n);
    key.append(reinterpret_cast<const char*>(s.data()), s.size() * sizeof(int32_t));
  }
  return key;
}

// The parse states one mask walk meets, each once, with their transitions by byte as they are
// computed. Inside a JSON string most bytes lead back to the same state, so most of the
// vocabulary's trie costs a table lookup instead of a stack copy.
class StateTable {
 public:
  static constexpr int32_t kDead = -1;
  static constexpr int32_t kUnknown = -2;

  int32_t intern(State state) {
    std::string key = key_of(state);
    const auto it = ids_.find(key);
    if (it != ids_.end()) return it->second;
    const int32_t id = static_cast<int32_t>(states_.size());
    ids_.emplace(std::move(key), id);
    states_.push_back(std::move(state));
    next_.emplace_back();
    next_.back().fill(kUnknown);
    return id;
  }

  int32_t advance(const Grammar& g, int32_t id, uint8_t byte) {
    const int32_t known = next_[id][byte];
    if (known != kUnknown) return known;
    State after = advance_state(g, states_[id], byte, &work_);
    if (work_ > kMaxMaskWork)
      throw Error(
          "structured output: the constraint is too ambiguous to follow (one token mask took "
          "over " +
          std::to_string(kMaxMaskWork) +
          " parser steps; a long run of optional items such as a?b?c?... does this)");
    const int32_t to = after.empty() ? kDead : intern(std::move(after));
    next_[id][byte] = to;
    return to;
  }

 private:
  std::unordered_map<std::string, int32_t> ids_;
  std::vector<State> states_;
  std::vector<std::array<int32_t, 256>> next_;
  int64_t work_ = 0;  // rule expansions and their cycle checks so far
};

}  // namespace

std::string GrammarMatcher::state_key() const {
  return key_of(state_);
}

int64_t GrammarMatcher::fill_mask(std::span<uint32_t> mask) const {
  const TokenVocabulary& vocab = grammar_->vocabulary();
  if (static_cast<int64_t>(mask.size()) != mask_words(vocab.size()))
    throw Error("GrammarMatcher::fill_mask: the mask has " + std::to_string(mask.size()) +
                " words, the vocabulary needs " + std::to_string(mask_words(vocab.size())));
  std::fill(mask.begin(), mask.end(), 0u);
  auto allow = [&](int32_t id) { mask[id >> 5] |= 1u << (id & 31); };
  if (terminated_) return 0;
  const std::string key = state_key();
  if (!grammar_->cached_mask(key, mask)) {
    const Grammar& g = grammar_->grammar();
    const std::vector<int32_t>& ids = vocab.sorted_ids();
    const std::vector<int32_t>& shared = vocab.shared_prefix();
    StateTable table;
    // levels[d]: the state after the first d bytes of the current token; valid up to `valid`.
    std::vector<int32_t> levels(1, table.intern(state_));
    size_t valid = 0;
    for (size_t i = 0; i < ids.size(); ++i) {
      const std::string& t = vocab.bytes(ids[i]);
      size_t d = std::min(static_cast<size_t>(shared[i]), valid);
      bool dead = false;
      while (d < t.size()) {
        if (levels.size() <= d + 1) levels.resize(d + 2);
        levels[d + 1] = table.advance(g, levels[d], static_cast<uint8_t>(t[d]));
        if (levels[d + 1] == StateTable::kDead) {
          dead = true;
          break;
        }
        ++d;
      }
      valid = d;
      if (!dead) {
        allow(ids[i]);
        continue;
      }
      // Every following token that starts with the dead prefix t[0..d] is dead too.
      while (i + 1 < ids.size() && static_cast<size_t>(shared[i + 1]) > d) ++i;
    }
    grammar_->cache_mask(key, mask);
  }
  if (accepting())
    for (int32_t id : vocab.eos_ids()) allow(id);
  int64_t allowed = 0;
  for (uint32_t w : mask) allowed += __builtin_popcount(w);
  return allowed;
}

}  // namespace l2kv::structured
