// The fixtures a parameterized test runs on: the committed ones always (a missing one then fails
// loudly), and those not generated yet (make_fixtures.py needs torch and transformers) only once
// their folder exists, so a test can list a fixture before it is committed.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace l2kv::testing {

inline std::vector<std::string> fixture_names(const std::filesystem::path& root,
                                              std::vector<std::string> committed,
                                              const std::vector<std::string>& when_present) {
  for (const std::string& name : when_present)
    if (std::filesystem::exists(root / name / "config.json")) committed.push_back(name);
  return committed;
}

}  // namespace l2kv::testing
