#include "l2kv/engine/output_processor.h"

#include <exception>
#include <utility>

namespace l2kv {

void OutputProcessor::add(int64_t id, const SamplingParams& params) {
  if (tokenizer_ == nullptr) return;
  texts_.emplace(id, Text{StreamDetokenizer(*tokenizer_, params.skip_special_tokens),
                          StopStringChecker(params.stop, params.include_stop_str_in_output),
                          {}});
}

std::optional<std::string> OutputProcessor::push(int64_t id, int32_t token, bool may_stop) {
  const auto it = texts_.find(id);
  if (it == texts_.end()) return std::nullopt;
  Text& t = it->second;
  StopStringChecker::Result text = t.stop_checker.push(t.detokenizer.push(token), may_stop);
  t.pending += text.text;
  if (!text.matched) return std::nullopt;
  return t.stop_checker.stops()[*text.matched];
}

void OutputProcessor::finish(int64_t id) {
  const auto it = texts_.find(id);
  if (it == texts_.end()) return;
  Text& t = it->second;
  try {
    t.pending += t.stop_checker.push(t.detokenizer.finish(), false).text;
    t.pending += t.stop_checker.flush();
  } catch (const std::exception&) {  // a last piece the tokenizer cannot decode
    t.pending += t.stop_checker.flush();
  }
}

std::string OutputProcessor::take(int64_t id) {
  const auto it = texts_.find(id);
  if (it == texts_.end()) return {};
  return std::exchange(it->second.pending, {});
}

}  // namespace l2kv
