#include "l2kv/engine/request.h"

#include <utility>

namespace l2kv {

Request::Request(int64_t request_id, int64_t arrival_order, std::vector<int32_t> prompt,
                 SamplingParams sampling, uint64_t resolved_seed)
    : id(request_id),
      arrival(arrival_order),
      tokens(std::move(prompt)),
      num_prompt_tokens(static_cast<int32_t>(tokens.size())),
      params(std::move(sampling)),
      seed(resolved_seed) {}

}  // namespace l2kv
