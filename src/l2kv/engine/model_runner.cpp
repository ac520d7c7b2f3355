#include "l2kv/engine/model_runner.h"

#include <string>
#include <utility>

#include "l2kv/core/error.h"

namespace l2kv {

void ModelRunner::launch(const StepInput& step) {
  bool pending = false;
  for (const StepSequence& s : step.sequences) pending |= s.pending_token_row >= 0;
  if (!pending) {
    launched_results_.push_back(execute(step));
    return;
  }
  if (launched_results_.empty())
    throw Error("ModelRunner: a pending token names a step that was not launched");
  const std::vector<SampledToken>& previous = launched_results_.back();
  StepInput known = step;
  std::vector<std::vector<int32_t>> tokens(step.sequences.size());
  for (size_t i = 0; i < step.sequences.size(); ++i) {
    StepSequence& s = known.sequences[i];
    if (s.pending_token_row < 0) continue;
    if (s.tokens.empty() || static_cast<size_t>(s.pending_token_row) >= previous.size())
      throw Error("ModelRunner: pending token row " + std::to_string(s.pending_token_row) +
                  " of a step that sampled " + std::to_string(previous.size()));
    tokens[i].assign(s.tokens.begin(), s.tokens.end());
    tokens[i].back() = previous[static_cast<size_t>(s.pending_token_row)].token;
    s.tokens = tokens[i];
    s.pending_token_row = -1;
  }
  launched_results_.push_back(execute(known));
}

std::vector<SampledToken> ModelRunner::collect(const StepInput&) {
  if (launched_results_.empty()) throw Error("ModelRunner: collect() without a launched step");
  std::vector<SampledToken> out = std::move(launched_results_.front());
  launched_results_.pop_front();
  return out;
}

}  // namespace l2kv
