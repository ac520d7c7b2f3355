#include "l2kv/profiling/step_profile.h"

#include <gtest/gtest.h>

namespace l2kv {
namespace {

ModelConfig two_layer_config() {
  ModelConfig c;
  c.vocab_size = 1000;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_layers = 2;
  c.num_q_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  return c;
}

TEST(StepProfile, ProjectionsFollowTheDecoderGraphOrder) {
  const auto p = decode_projections(two_layer_config());
  ASSERT_EQ(p.size(), 9u);
  EXPECT_EQ(p[0].kind, "qkv");
  EXPECT_EQ(p[0].out, 64 + 2 * 32);
  EXPECT_EQ(p[2].kind, "gate_up");
  EXPECT_EQ(p[2].weight_bytes, 64 * 256 * 2);
  EXPECT_EQ(p[3].in, 128);
  EXPECT_EQ(p[8].kind, "lm_head");
  EXPECT_EQ(p[8].out, 1000);
}

TEST(StepProfile, Fp8ProjectionsCountOneBytePerWeightAndTheLmHeadTwo) {
  ModelConfig c = two_layer_config();
  c.fp8_weights = true;
  const auto p = decode_projections(c);
  EXPECT_EQ(p[2].weight_bytes, 64 * 256);
  EXPECT_EQ(p[8].weight_bytes, 64 * 1000 * 2);
}

TEST(StepProfile, ShortNamesDropNamespacesTemplatesAndParameters) {
  // void l2kv::(anonymous namespace)::gemv_kernel<__nv_bfloat16, 1>(int)
  EXPECT_EQ(short_kernel_name("_ZN4l2kv12_GLOBAL__N_111gemv_kernelI13__nv_bfloat16Li1EEEvi"),
            "gemv_kernel");
  EXPECT_EQ(short_kernel_name("nvjet_hsh_128x64_64x4_1x2_h_bz_TNT"),
            "nvjet_hsh_128x64_64x4_1x2_h_bz_TNT");
  EXPECT_TRUE(is_projection_kernel("nvjet_hsh_128x64"));
  EXPECT_TRUE(is_projection_kernel("gemv_kernel"));
  EXPECT_FALSE(is_projection_kernel("split_decode_kernel"));
}

TEST(StepProfile, AttributesTimeGapsOverlapAndProjectionBandwidth) {
  const auto projections = decode_projections(two_layer_config());
  std::vector<KernelInterval> k;
  uint64_t t = 1000;
  auto add = [&](const char* name, uint64_t start_delay, uint64_t length) {
    k.push_back({name, t + start_delay, t + start_delay + length});
    t += start_delay + length;
  };
  for (int layer = 0; layer < 2; ++layer) {
    add("rms_norm", 0, 1000);
    add("gemv_kernel", 0, 2000);
    add("rope_kernel", 500, 1000);  // a 0.5 us gap
    add("split_decode", 0, 3000);
    add("gemv_kernel", 0, 2000);
    add("gemv_splitk_reduce", 0, 1000);  // joins the O projection
    add("gemv_kernel", 0, 4000);
    add("silu_mul", 0, 1000);
    add("gemv_kernel", 0, 2000);
  }
  add("gemv_kernel", 0, 10000);
  // A kernel launched early (PDL) that waits 1 us behind the previous one: only its last
  // 1 us is its own.
  k.push_back({"argmax", t - 1000, t + 1000});
  const auto p = profile_step(k, projections, 1e12);
  EXPECT_EQ(p["kernels"].get<int>(), static_cast<int>(k.size()));
  EXPECT_DOUBLE_EQ(p["gap_us"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(p["step_us"].get<double>(), p["busy_us"].get<double>() + 1.0);
  EXPECT_DOUBLE_EQ(p["overlap_us"].get<double>(), 1.0);
  // Both 0.5 us gaps are gemv_kernel -> rope_kernel hand-overs: one transition, two gaps.
  ASSERT_EQ(p["gaps_by_transition"].size(), 1u) << p["gaps_by_transition"].dump();
  EXPECT_EQ(p["gaps_by_transition"][0]["after"], "gemv_kernel");
  EXPECT_EQ(p["gaps_by_transition"][0]["before"], "rope_kernel");
  EXPECT_EQ(p["gaps_by_transition"][0]["count"].get<int>(), 2);
  EXPECT_DOUBLE_EQ(p["gaps_by_transition"][0]["us"].get<double>(), 1.0);
  EXPECT_NE(format_step_profile(p).find("gaps    1.0 us in   2  gemv_kernel -> rope_kernel"),
            std::string::npos)
      << format_step_profile(p);
  const auto& proj = p["projections"];
  ASSERT_TRUE(proj["matched"].get<bool>()) << proj.dump();
  const auto& o = proj["by_kind"][1];
  EXPECT_EQ(o["kind"], "o");
  EXPECT_DOUBLE_EQ(o["us"].get<double>(), 6.0);  // 2 layers x (2 + 1) us
  EXPECT_NEAR(o["GB_per_s"].get<double>(), 2.0 * 64 * 64 * 2 / 6e-6 * 1e-9, 1e-9);
  EXPECT_NEAR(proj["by_kind"][4]["of_ceiling"].get<double>(), 64.0 * 1000 * 2 / 10e-6 / 1e12,
              1e-12);

  EXPECT_FALSE(o.contains("TFLOP_per_s")) << "no rows given, no FLOP rate";

  // With the rows known (a step of 300 rows, logits for 3), each kind's FLOP rate: the O
  // projection's 2 x 300 x 64 x 64 FLOPs a layer over its 6 us; the LM head's 2 x 3 x 64 x 1000.
  auto with_rows = projections;
  for (auto& shape : with_rows) shape.rows = shape.kind == "lm_head" ? 3 : 300;
  const auto rated = profile_step(k, with_rows, 1e12);
  const auto& rated_o = rated["projections"]["by_kind"][1];
  EXPECT_NEAR(rated_o["TFLOP_per_s"].get<double>(), 2 * 2.0 * 300 * 64 * 64 / 6e-6 * 1e-12, 1e-9);
  EXPECT_NEAR(rated["projections"]["by_kind"][4]["TFLOP_per_s"].get<double>(),
              2.0 * 3 * 64 * 1000 / 10e-6 * 1e-12, 1e-9);
  EXPECT_NE(format_step_profile(rated).find(" TFLOP/s"), std::string::npos)
      << format_step_profile(rated);
  EXPECT_EQ(format_step_profile(p).find(" TFLOP/s"), std::string::npos);

  k.pop_back();
  k.push_back({"gemv_kernel", t + 5000, t + 6000});  // one projection too many
  const auto unmatched = profile_step(k, projections, 1e12);
  EXPECT_FALSE(unmatched["projections"]["matched"].get<bool>());
  EXPECT_NE(format_step_profile(unmatched).find("not attributed"), std::string::npos);
  EXPECT_NE(format_step_profile(p).find("lm_head"), std::string::npos);

  // No shapes (the kernels of many steps, as an e2e point's trace): the same time and gaps,
  // and nothing said of projections.
  const auto trace = profile_step(k, {}, 1e12);
  EXPECT_EQ(trace["kernels"].get<int>(), static_cast<int>(k.size()));
  EXPECT_DOUBLE_EQ(trace["gap_us"].get<double>(), unmatched["gap_us"].get<double>());
  EXPECT_FALSE(trace.contains("projections")) << trace.dump();
  const std::string text = format_step_profile(trace);
  EXPECT_EQ(text.find("projection"), std::string::npos) << text;
  EXPECT_NE(text.find("gemv_kernel"), std::string::npos) << text;
}

}  // namespace
}  // namespace l2kv
