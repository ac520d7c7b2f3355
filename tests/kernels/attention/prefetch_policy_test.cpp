#include "l2kv/kernels/attention/prefetch_policy.h"

#include <gtest/gtest.h>

#include "l2kv/core/error.h"

namespace l2kv {
namespace {

TEST(PrefetchPolicy, ParsesEveryForm) {
  EXPECT_EQ(parse_prefetch_policy("off").mode, PrefetchMode::kOff);
  EXPECT_EQ(parse_prefetch_policy("auto").mode, PrefetchMode::kAuto);
  const auto fixed = parse_prefetch_policy("on:3+evict_last+stream");
  EXPECT_EQ(fixed.mode, PrefetchMode::kFixedDistance);
  EXPECT_EQ(fixed.distance, 3);
  EXPECT_EQ(fixed.prefetch_hint, L2EvictionHint::kEvictLast);
  EXPECT_EQ(fixed.load_hint, L2EvictionHint::kEvictFirst);
  EXPECT_EQ(parse_prefetch_policy("on").distance, 1);
  EXPECT_TRUE(parse_prefetch_policy("off+pdl").pdl);
  EXPECT_FALSE(parse_prefetch_policy("on:2").pdl);
  for (const char* text : {"off", "auto", "on:2", "on:1+evict_last", "auto+stream",
                           "on:1+every_head", "off+pdl", "on:2+evict_last+pdl"})
    EXPECT_EQ(to_string(parse_prefetch_policy(text)), text);
}

TEST(PrefetchPolicy, RejectsMalformedText) {
  for (const char* text :
       {"", "maybe", "on:", "on:x", "on:0", "on:65", "auto+fast", "on:2x", "pdl"})
    EXPECT_THROW(parse_prefetch_policy(text), Error) << text;
}

}  // namespace
}  // namespace l2kv
