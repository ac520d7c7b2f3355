#include "l2kv/tokenizer/decoder.h"

#include <nlohmann/json.hpp>

#include "l2kv/core/error.h"
#include "l2kv/tokenizer/byte_level.h"
#include "l2kv/tokenizer/utf8.h"

namespace l2kv {
namespace {

// Byte-level characters back to bytes; the byte string is then read as UTF-8, lossily.
class ByteLevelDecoder : public Decoder {
 public:
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    std::string bytes;
    for (const auto& t : tokens) {
      for (size_t i = 0; i < t.size();) {
        const size_t start = i;
        const char32_t cp = utf8::next(t, i);
        if (const auto b = byte_level::byte_of(cp))
          bytes += static_cast<char>(*b);
        else
          bytes.append(t, start, i - start);  // not in the alphabet (an added token): as is
      }
    }
    return {utf8::repair(bytes)};
  }
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(std::string from, std::string to) : from_(std::move(from)), to_(std::move(to)) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (auto& t : tokens) {
      std::string out;
      size_t pos = 0, hit;
      while (!from_.empty() && (hit = t.find(from_, pos)) != std::string::npos) {
        out.append(t, pos, hit - pos);
        out += to_;
        pos = hit + from_.size();
      }
      out.append(t, pos);
      t = std::move(out);
    }
    return tokens;
  }

 private:
  std::string from_, to_;
};

// Runs of <0xNN> tokens become the text of their bytes, or one U+FFFD per byte when the run is
// not valid UTF-8 (as HF's ByteFallback).
class ByteFallbackDecoder : public Decoder {
 public:
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    size_t pending_count = 0;
    auto flush = [&] {
      if (pending_count == 0) return;
      if (utf8::is_valid(pending)) {
        out.push_back(pending);
      } else {
        for (size_t i = 0; i < pending_count; ++i) {
          std::string r;
          utf8::append(r, utf8::kReplacement);
          out.push_back(r);
        }
      }
      pending.clear();
      pending_count = 0;
    };
    for (auto& t : tokens) {
      unsigned value = 0;
      if (t.size() == 6 && t.starts_with("<0x") && t.back() == '>' &&
          std::sscanf(t.c_str() + 3, "%2x", &value) == 1) {
        pending += static_cast<char>(value);
        ++pending_count;
        continue;
      }
      flush();
      out.push_back(std::move(t));
    }
    flush();
    return out;
  }
};

class FuseDecoder : public Decoder {
 public:
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    std::string all;
    for (const auto& t : tokens) all += t;
    return {all};
  }
};

// Removes up to `start` leading and `stop` trailing copies of `content` from every token.
class StripDecoder : public Decoder {
 public:
  StripDecoder(std::string content, int start, int stop)
      : content_(std::move(content)), start_(start), stop_(stop) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (auto& t : tokens) {
      for (int i = 0; i < start_ && !content_.empty() && t.starts_with(content_); ++i)
        t.erase(0, content_.size());
      for (int i = 0; i < stop_ && !content_.empty() && t.ends_with(content_); ++i)
        t.resize(t.size() - content_.size());
    }
    return tokens;
  }

 private:
  std::string content_;
  int start_, stop_;
};

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps)
      : steps_(std::move(steps)) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (const auto& s : steps_) tokens = s->decode_chain(std::move(tokens));
    return tokens;
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

}  // namespace

std::unique_ptr<Decoder> make_decoder(const nlohmann::json& spec) {
  if (spec.is_null()) return nullptr;
  const std::string type = spec.value("type", "");
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Replace") {
    if (!spec.at("pattern").contains("String"))
      throw Error("tokenizer.json: Replace decoder with a regex pattern is not supported");
    return std::make_unique<ReplaceDecoder>(spec.at("pattern").at("String").get<std::string>(),
                                            spec.at("content").get<std::string>());
  }
  if (type == "Strip")
    return std::make_unique<StripDecoder>(spec.at("content").get<std::string>(),
                                          spec.value("start", 0), spec.value("stop", 0));
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Decoder>> steps;
    for (const auto& s : spec.at("decoders"))
      if (auto d = make_decoder(s)) steps.push_back(std::move(d));
    return std::make_unique<SequenceDecoder>(std::move(steps));
  }
  throw Error("tokenizer.json: unsupported decoder type '" + type + "'");
}

}  // namespace l2kv
