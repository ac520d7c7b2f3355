// The output side of the engine, run by the front ends (vLLM V1's OutputProcessor): each
// request's text, made from the token ids the engine streams by an incremental detokenizer and
// passed through its stop strings. The engine core works on token ids only (stop token ids,
// EOS, lengths); a stop string found here ends the output at the token that completed it, and
// the front end aborts the engine's request, which may have run on (the server's output thread
// works a step or so behind the engine thread): what came after is dropped. Without a
// tokenizer there is no text and stop strings are refused.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>

#include "l2kv/engine/engine.h"
#include "l2kv/engine/stop_checker.h"
#include "l2kv/sampling/sampling_params.h"
#include "l2kv/tokenizer/stream_detokenizer.h"

namespace l2kv {

class Tokenizer;

class OutputProcessor {
 public:
  // `tokenizer` (may be null: no text) must outlive the processor.
  explicit OutputProcessor(const Tokenizer* tokenizer) : tokenizer_(tokenizer) {}

  // Starts the text of the request the caller knows as `key` (its own index or the engine's
  // id): skip_special_tokens, stop, include_stop_str_in_output and min_tokens of `params`.
  // Throws l2kv::Error (nothing added) for an empty stop string, or stop strings without a
  // tokenizer.
  void add(int64_t key, const SamplingParams& params);

  enum class Verdict {
    kDeliver,  // `out` now carries its text: deliver it
    kEnded,    // the text ended the output (a stop string, or a token the tokenizer cannot
               // decode): `out` is its final output; deliver it and abort the engine's request
    kDrop,     // an output of a request this processor has ended already: drop it
  };
  // Takes the engine's next output of request `key`: appends its new tokens' text (from the
  // token after min_tokens on, watching for stop strings; a stop token's text is not part of
  // the output) and sets out.new_text. A stop string cuts the output after the token that
  // completed it (later tokens and their logprobs are dropped, completion_tokens counts up to
  // it) and finishes it with kStop and the string as stop_reason. Text held back for a stop
  // string that never came is flushed when the output ends otherwise. A finished output
  // forgets the key. Keys never added pass through unchanged (kDeliver).
  Verdict process(int64_t key, RequestOutput& out);

  // Keys still tracked (added, and no final output processed yet).
  size_t size() const { return texts_.size(); }

 private:
  struct Text {
    StreamDetokenizer detokenizer;
    StopStringChecker stop_checker;
    std::string pending;
    int32_t min_tokens = 0;
    int32_t produced = 0;  // output tokens taken so far
    bool ended = false;    // by this processor; the engine's later outputs are dropped
  };
  // The text held back, and any incomplete character, join the pending text.
  static void flush(Text& t);

  const Tokenizer* tokenizer_;
  std::unordered_map<int64_t, Text> texts_;
};

}  // namespace l2kv
