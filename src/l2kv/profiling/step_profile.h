// Where the time of one decode step goes: per-kernel time, the gaps between kernels, and each
// weight projection's bandwidth against the same run's read ceiling (and its FLOP rate where
// the rows are known). Pure host logic over
// recorded kernel intervals (KernelTrace records them on the GPU), so it is tested on the CPU.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "l2kv/model/model_config.h"

namespace l2kv {

// One kernel's execution on the GPU, as a tracer reports it.
struct KernelInterval {
  std::string name;  // mangled or plain
  uint64_t start_ns = 0, end_ns = 0;
};

// One weight projection of a decode step, in launch order.
struct ProjectionShape {
  std::string kind;  // "qkv", "o", "gate_up", "down", "lm_head"
  int64_t in = 0, out = 0;
  int64_t weight_bytes = 0;
  // The rows it multiplies, where the caller knows them: the profile then also reports its
  // FLOP rate (a prompt chunk's products are bound by the tensor cores, not by the weights).
  int64_t rows = 0;
};

// The projections one decode step launches, in the order run_decoder_graph() calls them.
std::vector<ProjectionShape> decode_projections(const ModelConfig& c);

// A readable kernel name: demangled, without namespaces, template arguments or parameters.
std::string short_kernel_name(const std::string& name);

// True for kernels that compute a projection (l2kv's GEMV, cuBLASLt's GEMMs) and for their
// split-K reductions.
bool is_projection_kernel(const std::string& short_name);

// Summarizes the kernels of one step. Projection kernels are matched in order to
// `projections` (a reduction joins the projection before it); where their counts differ the
// "projections" entry says so instead of guessing, and with no `projections` (the kernels of
// many steps) there is no such entry. `ceiling_bytes_per_s` is the same run's
// streaming-read rate.
nlohmann::ordered_json profile_step(std::vector<KernelInterval> kernels,
                                    const std::vector<ProjectionShape>& projections,
                                    double ceiling_bytes_per_s);

// The profile as a few lines for the terminal.
std::string format_step_profile(const nlohmann::ordered_json& profile);

}  // namespace l2kv
