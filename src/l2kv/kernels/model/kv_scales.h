// fp8 KV-cache scales computed from the data, for checkpoints that carry none (vLLM's
// --calculate-kv-scales): during the first prompt, each layer's largest |K| and |V| (as stored:
// after bias and RoPE, rounded to the model's dtype) map to a fixed point inside E4M3's range
// before that prompt is written, and the scales stay fixed from then on.
//
// Why: with scale 1, real checkpoints leave E4M3's range. Qwen2.5's K bias puts |K| in the
// hundreds (E4M3 saturates at 448) and many V values lie below 2^-6, where E4M3 has no
// mantissa bits left (subnormal steps of 2^-9). Above 2^-6 E4M3's relative rounding is the
// same at every magnitude, so a scale only has to keep the values between those two ends.
//
// Per layer, not per KV head: a head whose values are 100x below the layer's largest still
// rounds as finely (only values ~1e4x below it turn subnormal), so per-head scales would gain
// nothing measurable here while adding a scale per head to every attention kernel.
#pragma once

#include "l2kv/core/host_device.h"

namespace l2kv {

// Where the first prompt's amax lands in E4M3 (largest 448): vLLM's K_SCALE_CONSTANT and
// V_SCALE_CONSTANT. Later tokens up to 2.24x (K) and 4.48x (V) the first prompt's largest
// value still fit unsaturated; the cost is only that values about 1e-4 times the amax and
// smaller fall below 2^-6 (subnormal), where they were negligible in the dot products anyway.
inline constexpr float kKvScaleKeyRange = 200.f;
inline constexpr float kKvScaleValueRange = 100.f;
// Bounds of a calculated scale: all-zero K or V (or NaN) still gets a positive finite scale,
// and an infinite amax a finite one.
inline constexpr float kMinKvScale = 1e-30f;
inline constexpr float kMaxKvScale = 1e30f;

// The scale that maps `amax` to `range`: stored = E4M3(value / scale), value = stored * scale.
// Nondecreasing in amax, so the largest of per-block scales is the scale of the largest amax.
L2KV_HOST_DEVICE float kv_scale_from_amax(float amax, float range) {
  const float scale = amax / range;
  if (!(scale > kMinKvScale)) return kMinKvScale;  // also NaN
  return scale < kMaxKvScale ? scale : kMaxKvScale;
}

}  // namespace l2kv
