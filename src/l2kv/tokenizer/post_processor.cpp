#include "l2kv/tokenizer/post_processor.h"

#include <nlohmann/json.hpp>
#include <string>

#include "l2kv/core/error.h"
#include "l2kv/tokenizer/token_id_json.h"

namespace l2kv {

PostProcessor::PostProcessor(const nlohmann::json& spec) {
  if (!spec.is_null()) read(spec);
}

void PostProcessor::read(const nlohmann::json& spec) {
  const std::string type = spec.value("type", "");
  if (type == "ByteLevel") return;  // offsets only
  if (type == "Sequence") {
    for (const auto& p : spec.at("processors")) read(p);
    return;
  }
  if (type != "TemplateProcessing")
    throw Error("tokenizer.json: unsupported post-processor type '" + type + "'");
  if (has_template_) throw Error("tokenizer.json: more than one TemplateProcessing");
  has_template_ = true;
  bool after_sequence = false;
  for (const auto& item : spec.at("single")) {
    if (item.contains("Sequence")) {
      after_sequence = true;
      continue;
    }
    const std::string name = item.at("SpecialToken").at("id").get<std::string>();
    const auto& special = spec.at("special_tokens");
    if (!special.contains(name))
      throw Error("tokenizer.json: TemplateProcessing names '" + name + "' but does not define it");
    auto& target = after_sequence ? suffix_ : prefix_;
    for (const auto& id : special.at(name).at("ids"))
      target.push_back(token_id_from_json(id, "special token " + name));
  }
}

std::vector<int32_t> PostProcessor::apply(const std::vector<int32_t>& ids) const {
  if (!has_template_) return ids;
  std::vector<int32_t> out(prefix_);
  out.insert(out.end(), ids.begin(), ids.end());
  out.insert(out.end(), suffix_.begin(), suffix_.end());
  return out;
}

}  // namespace l2kv
