// tokenizer.json decoders: ByteLevel, Replace, ByteFallback, Fuse, Strip, Sequence. Each maps
// the list of token strings to a new list; the text is their concatenation.
#pragma once

#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace l2kv {

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual std::vector<std::string> decode_chain(std::vector<std::string> tokens) const = 0;
};

// Builds the decoder described by `spec` (null gives nullptr); unsupported types throw.
std::unique_ptr<Decoder> make_decoder(const nlohmann::json& spec);

}  // namespace l2kv
