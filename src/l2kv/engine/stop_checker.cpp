#include "l2kv/engine/stop_checker.h"

#include <algorithm>

namespace l2kv {

StopStringChecker::StopStringChecker(std::vector<std::string> stops, bool include_stop)
    : stops_(std::move(stops)), include_stop_(include_stop) {
  std::erase_if(stops_, [](const std::string& s) { return s.empty(); });
}

StopStringChecker::Result StopStringChecker::push(std::string_view piece, bool match) {
  Result result;
  if (stopped_) return result;
  const size_t old = held_.size();
  held_.append(piece);
  if (stops_.empty()) {
    result.text.swap(held_);
    return result;
  }
  // The earliest occurrence that ends in the new piece wins: as vLLM searches the tail of its
  // output text, from len(stop) - 1 characters before the new ones. Before min_tokens the tail
  // that may start a stop string is held all the same, so a stop string that starts there and
  // ends in the first piece that may match is found; one made whole before is not (a held tail
  // can contain a shorter stop string).
  size_t first = std::string::npos;
  for (size_t i = 0; match && i < stops_.size(); ++i) {
    const size_t from = old + 1 > stops_[i].size() ? old + 1 - stops_[i].size() : 0;
    const size_t at = held_.find(stops_[i], from);
    if (at != std::string::npos && (first == std::string::npos || at < first)) {
      first = at;
      result.matched = i;
    }
  }
  if (result.matched) {
    result.text = held_.substr(0, first + (include_stop_ ? stops_[*result.matched].size() : 0));
    held_.clear();
    stopped_ = true;
    return result;
  }
  // Hold back the longest tail of the text that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const std::string& stop : stops_) {
    for (size_t n = std::min(stop.size() - 1, held_.size()); n > hold; --n) {
      if (held_.compare(held_.size() - n, n, stop, 0, n) == 0) {
        hold = n;
        break;
      }
    }
  }
  result.text = held_.substr(0, held_.size() - hold);
  held_.erase(0, held_.size() - hold);
  return result;
}

std::string StopStringChecker::flush() {
  std::string rest;
  rest.swap(held_);
  return rest;
}

}  // namespace l2kv
