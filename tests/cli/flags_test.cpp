// The whole-number flag checks: range, garbage, overflow and negative values for unsigned flags.
#include "l2kv/cli/flags.h"

#include <gtest/gtest.h>

#include <string>

namespace l2kv::cli {
namespace {

std::string check(const CLI::Validator& v, std::string text) {
  return v(text);
}

TEST(FlagChecks, WholeNumbersInARange) {
  const CLI::Validator v = whole_number(-1, 100);
  EXPECT_EQ(check(v, "-1"), "");
  EXPECT_EQ(check(v, "100"), "");
  EXPECT_NE(check(v, "101").find("not in [-1, 100]"), std::string::npos);
  EXPECT_NE(check(v, "-2").find("not in [-1, 100]"), std::string::npos);
  EXPECT_NE(check(v, "abc").find("not a whole number"), std::string::npos);
  EXPECT_NE(check(v, "5x").find("not a whole number"), std::string::npos);
  EXPECT_NE(check(v, "1.5").find("not a whole number"), std::string::npos);
  EXPECT_NE(check(v, "99999999999999999999").find("out of range"), std::string::npos);
}

TEST(FlagChecks, UnsignedNumbersRefuseNegativesAndOverflow) {
  const CLI::Validator v = unsigned_number();
  EXPECT_EQ(check(v, "0"), "");
  EXPECT_EQ(check(v, "18446744073709551615"), "");
  EXPECT_NE(check(v, "-1").find("negative"), std::string::npos);
  EXPECT_NE(check(v, "18446744073709551616").find("out of range"), std::string::npos);
  EXPECT_NE(check(v, "12ab").find("not a whole number"), std::string::npos);
}

}  // namespace
}  // namespace l2kv::cli
