#include "l2kv/engine/output_processor.h"

#include <exception>
#include <optional>
#include <utility>

#include "l2kv/core/error.h"

namespace l2kv {

void OutputProcessor::add(int64_t key, const SamplingParams& params) {
  params.validate_stop();
  if (tokenizer_ == nullptr) {
    if (!params.stop.empty()) throw Error("stop strings need a tokenizer, and this model has none");
    return;
  }
  texts_.erase(key);  // a key used again starts afresh
  texts_.emplace(key, Text{StreamDetokenizer(*tokenizer_, params.skip_special_tokens),
                           StopStringChecker(params.stop, params.include_stop_str_in_output),
                           {},
                           params.min_tokens,
                           0,
                           false});
}

void OutputProcessor::flush(Text& t) {
  try {
    t.pending += t.stop_checker.push(t.detokenizer.finish(), false).text;
    t.pending += t.stop_checker.flush();
  } catch (const std::exception&) {  // a last piece the tokenizer cannot decode
    t.pending += t.stop_checker.flush();
  }
}

OutputProcessor::Verdict OutputProcessor::process(int64_t key, RequestOutput& out) {
  const auto it = texts_.find(key);
  if (it == texts_.end()) return Verdict::kDeliver;
  Text& t = it->second;
  if (t.ended) {
    if (out.finished) texts_.erase(it);
    return Verdict::kDrop;
  }
  const size_t count = out.new_tokens.size();
  // A stop token (EOS or stop_token_ids: the engine's kStop) ends the output without its text,
  // unless include_stop_str_in_output keeps it (as vLLM's detokenizer does; a special token's
  // text still follows skip_special_tokens).
  const bool stop_token = out.finished && out.finish_reason == FinishReason::kStop && count > 0;
  const size_t spoken = stop_token && !t.stop_checker.includes_stop() ? count - 1 : count;
  size_t kept = count;
  std::optional<std::string> stop;
  std::string error;
  for (size_t i = 0; i < spoken; ++i) {
    ++t.produced;
    try {
      const StopStringChecker::Result r =
          t.stop_checker.push(t.detokenizer.push(out.new_tokens[i]), t.produced > t.min_tokens);
      t.pending += r.text;
      if (r.matched) stop = t.stop_checker.stops()[*r.matched];
    } catch (const std::exception& e) {  // a token the tokenizer cannot decode
      error = e.what();
    }
    if (stop || !error.empty()) {
      kept = i + 1;
      break;
    }
  }
  const bool engine_finished = out.finished;
  if (stop || !error.empty()) {
    const size_t dropped = count - kept;
    out.new_tokens.resize(kept);
    if (out.new_logprobs.size() > kept) out.new_logprobs.resize(kept);
    out.completion_tokens -= static_cast<int32_t>(dropped);
    out.finished = true;
    out.finish_reason = stop ? FinishReason::kStop : FinishReason::kError;
    out.stop_reason = stop ? std::move(*stop) : std::string();
    out.stop_token_id = -1;
    out.error = std::move(error);
    if (!stop) flush(t);
  } else if (out.finished) {
    flush(t);
  }
  out.new_text = std::exchange(t.pending, {});
  const bool ended_here = out.finished && !engine_finished;
  if (out.finished && !ended_here)
    texts_.erase(it);  // the engine's request has ended too: nothing more comes
  else if (ended_here)
    t.ended = true;
  return ended_here ? Verdict::kEnded : Verdict::kDeliver;
}

}  // namespace l2kv
