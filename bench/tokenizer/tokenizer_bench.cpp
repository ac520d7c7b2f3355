// l2kv_bench_tokenizer: single-thread encoding speed of l2kv's tokenizers on English text.
// The text is split into paragraphs (blank-line separated) and encoded paragraph by paragraph,
// as the oracle benchmark (tests/tokenizer/oracle/speed.mjs) does, so both see the same calls.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "l2kv/core/error.h"
#include "l2kv/tokenizer/tokenizer.h"

namespace {

std::vector<std::string> paragraphs_of(const std::vector<std::string>& files, size_t min_bytes) {
  std::string all;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) throw l2kv::Error("cannot read " + f);
    std::ostringstream s;
    s << in.rdbuf();
    all += s.str() + "\n\n";
  }
  std::vector<std::string> base;
  size_t pos = 0;
  while (pos < all.size()) {
    size_t end = all.find("\n\n", pos);
    if (end == std::string::npos) end = all.size();
    if (end > pos) base.push_back(all.substr(pos, end - pos + 1));
    pos = end + 2;
  }
  if (base.empty()) throw l2kv::Error("no text in the input files");
  std::vector<std::string> out;
  size_t bytes = 0;
  while (bytes < min_bytes)
    for (const auto& p : base) {
      out.push_back(p);
      bytes += p.size();
    }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> tokenizers, texts;
  double megabytes = 8;
  CLI::App app{
      "l2kv_bench_tokenizer: single-thread encode speed (MB/s of UTF-8 input) per tokenizer "
      "folder"};
  app.add_option("--tokenizer", tokenizers, "Folders with tokenizer.json (repeatable)")->required();
  app.add_option("--text", texts, "Text files to encode (repeated up to --mb)")->required();
  app.add_option("--mb", megabytes, "Megabytes of text to encode")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    const auto paragraphs = paragraphs_of(texts, static_cast<size_t>(megabytes * 1e6));
    size_t bytes = 0;
    for (const auto& p : paragraphs) bytes += p.size();
    for (const auto& dir : tokenizers) {
      const auto tok = l2kv::Tokenizer::from_folder(dir);
      size_t tokens = 0;
      for (size_t i = 0; i < paragraphs.size() / 10; ++i)
        tokens += tok.encode(paragraphs[i]).size();  // warm-up
      tokens = 0;
      const auto start = std::chrono::steady_clock::now();
      for (const auto& p : paragraphs) tokens += tok.encode(p, false).size();
      const double s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::printf("l2kv %s: %.1f MB in %.2f s = %.2f MB/s, %.2f M tokens/s\n", dir.c_str(),
                  bytes / 1e6, s, bytes / 1e6 / s, tokens / 1e6 / s);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "l2kv_bench_tokenizer: %s\n", e.what());
    return 1;
  }
  return 0;
}
