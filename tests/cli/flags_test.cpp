// The whole-number flag checks: range, garbage, overflow and negative values for unsigned flags.
#include "l2kv/cli/flags.h"

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

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

TEST(FlagChecks, DecimalOnlySinceCli11ReadsBaseZero) {
  const CLI::Validator v = whole_number(0, 100);
  EXPECT_EQ(check(v, "0"), "");
  EXPECT_EQ(check(v, "+10"), "");
  EXPECT_NE(check(v, "010").find("decimal"), std::string::npos);  // CLI11 would store 8
  EXPECT_NE(check(v, "0x10").find("decimal"), std::string::npos);
  EXPECT_NE(check(unsigned_number(), "007").find("decimal"), std::string::npos);
}

// The last of --NAME and --no-NAME on the command line wins, as with a single "--NAME,!--no-NAME".
TEST(FlagChecks, OnOffFlagsTakeTheLastGiven) {
  for (const auto& [args, want] : std::vector<std::pair<std::vector<std::string>, bool>>{
           {{}, true},
           {{"--no-caching"}, false},
           {{"--caching"}, true},
           {{"--no-caching", "--caching"}, true},
           {{"--caching", "--no-caching"}, false}}) {
    CLI::App app;
    bool value = true;
    add_on_off_flag(app, "caching", value, "help");
    std::vector<std::string> argv(args.rbegin(), args.rend());  // CLI11 takes them reversed
    app.parse(argv);
    EXPECT_EQ(value, want) << testing::PrintToString(args);
  }
}

}  // namespace
}  // namespace l2kv::cli
