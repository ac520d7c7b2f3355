// The output side of the engine: each request's text, made from its sampled token ids by the
// incremental detokenizer and passed through the stop-string checker. The scheduling side
// (Request, Scheduler, the runner) works on token ids only; after appending a token the engine
// asks this class whether the text now ends in one of the request's stop strings, and takes the
// text gathered since its last output when it delivers one. Without a tokenizer there is no
// text (the engine then refuses stop strings when a request is added).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>

#include "l2kv/engine/stop_checker.h"
#include "l2kv/sampling/sampling_params.h"
#include "l2kv/tokenizer/stream_detokenizer.h"

namespace l2kv {

class Tokenizer;

class OutputProcessor {
 public:
  // `tokenizer` (may be null: no text) must outlive the processor.
  explicit OutputProcessor(const Tokenizer* tokenizer) : tokenizer_(tokenizer) {}

  // Starts request `id`'s text (skip_special_tokens, stop, include_stop_str_in_output of
  // `params`). Nothing without a tokenizer.
  void add(int64_t id, const SamplingParams& params);
  // Appends the text of `token` to `id`'s output. While `may_stop` is false (before
  // min_tokens) stop strings are not looked for. Returns the stop string the text now ends in
  // (its text and what follows are not part of the output unless included), or nullopt. Throws
  // what the detokenizer throws (a token it cannot decode). Unknown ids: nullopt.
  std::optional<std::string> push(int64_t id, int32_t token, bool may_stop);
  // The output ends for another reason: the text held back for a stop string that never came,
  // and any incomplete character, join the pending text.
  void finish(int64_t id);
  // The text gathered since the last take (empty for unknown ids).
  std::string take(int64_t id);
  // Forgets `id`.
  void remove(int64_t id) { texts_.erase(id); }

 private:
  struct Text {
    StreamDetokenizer detokenizer;
    StopStringChecker stop_checker;
    std::string pending;
  };
  const Tokenizer* tokenizer_;
  std::unordered_map<int64_t, Text> texts_;
};

}  // namespace l2kv
