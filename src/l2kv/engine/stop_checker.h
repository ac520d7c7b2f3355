// Stop strings over streamed text. Text arrives in pieces (from the incremental detokenizer);
// the checker passes on what is safe to stream and holds back any tail that could still
// become the start of a stop string, so a client never sees a stop string or a prefix of one
// that turns out to end the output. The stop string itself is part of the output only when the
// checker is built to include it (vLLM's include_stop_str_in_output).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace l2kv {

class StopStringChecker {
 public:
  explicit StopStringChecker(std::vector<std::string> stops, bool include_stop = false);

  struct Result {
    std::string text;               // safe to stream now
    std::optional<size_t> matched;  // index in `stops` of the stop string that ends the output
  };

  // Takes the next piece of text. A stop string matches only where it ends in this piece.
  // While `match` is false (before min_tokens), stop strings are not looked for, but a tail
  // that may start one is still held back, so a stop string that ends in the first piece that
  // may match is found even when it began earlier. Once a stop string is found, `text` is what
  // precedes it (and the stop string itself when included) and the rest is dropped; later calls
  // return nothing.
  Result push(std::string_view piece, bool match = true);
  // The text still held back, when the output ends for another reason.
  std::string flush();

  bool stopped() const { return stopped_; }
  const std::vector<std::string>& stops() const { return stops_; }
  // Built to include the stop string (include_stop_str_in_output).
  bool includes_stop() const { return include_stop_; }

 private:
  std::vector<std::string> stops_;
  bool include_stop_ = false;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace l2kv
