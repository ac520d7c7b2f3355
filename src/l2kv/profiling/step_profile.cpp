#include "l2kv/profiling/step_profile.h"

#include <cxxabi.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>

namespace l2kv {
namespace {

constexpr int kLargestGaps = 5;
constexpr uint64_t kGapReportNs = 500;  // gaps shorter than this are timestamp noise

double us(uint64_t ns) {
  return static_cast<double>(ns) * 1e-3;
}

std::string lowercase(std::string s) {
  for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

}  // namespace

std::vector<ProjectionShape> decode_projections(const ModelConfig& c) {
  const int64_t elem = dtype_bytes(c.dtype);
  const int64_t layer_elem = c.fp8_weights ? 1 : elem;  // fp8 projections; the LM head is 16-bit
  const int64_t q = c.num_q_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  const int64_t h = c.hidden_size, inter = c.intermediate_size;
  auto shape = [&](const char* kind, int64_t in, int64_t out) {
    return ProjectionShape{kind, in, out, in * out * layer_elem};
  };
  std::vector<ProjectionShape> p;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    p.push_back(shape("qkv", h, q + 2 * kv));
    p.push_back(shape("o", q, h));
    p.push_back(shape("gate_up", h, 2 * inter));
    p.push_back(shape("down", inter, h));
  }
  p.push_back({"lm_head", h, c.vocab_size, h * c.vocab_size * elem});
  return p;
}

std::string short_kernel_name(const std::string& name) {
  int status = 0;
  std::unique_ptr<char, decltype(&std::free)> demangled(
      abi::__cxa_demangle(name.c_str(), nullptr, nullptr, &status), &std::free);
  std::string s = status == 0 && demangled ? demangled.get() : name;
  for (size_t at; (at = s.find("(anonymous namespace)")) != std::string::npos;)
    s.replace(at, 21, "anon");
  if (const size_t at = s.find_first_of("<("); at != std::string::npos) s.resize(at);
  if (const size_t at = s.rfind(' '); at != std::string::npos) s = s.substr(at + 1);
  if (const size_t at = s.rfind("::"); at != std::string::npos) s = s.substr(at + 2);
  return s;
}

bool is_projection_kernel(const std::string& short_name) {
  const std::string n = lowercase(short_name);
  for (const char* part : {"gemv", "gemm", "nvjet", "xmma", "cutlass", "splitkreduce", "matmul"})
    if (n.find(part) != std::string::npos) return true;
  return false;
}

nlohmann::ordered_json profile_step(std::vector<KernelInterval> kernels,
                                    const std::vector<ProjectionShape>& projections,
                                    double ceiling_bytes_per_s) {
  using json = nlohmann::ordered_json;
  std::sort(kernels.begin(), kernels.end(), [](const KernelInterval& a, const KernelInterval& b) {
    return a.start_ns < b.start_ns;
  });
  json out;
  out["kernels"] = kernels.size();
  if (kernels.empty()) return out;

  // A kernel's own time is what it adds to the timeline: from the later of its start and the
  // end of everything that started before it, to its end. Kernels launched early (PDL) wait
  // for their predecessor inside that window, which belongs to the predecessor.
  struct Entry {
    std::string name;
    uint64_t own_ns, raw_ns;
    bool projection;
  };
  std::vector<Entry> entries;
  struct Gap {
    uint64_t ns;
    size_t before;
  };
  std::vector<Gap> gaps;
  uint64_t covered_until = kernels.front().start_ns, busy_ns = 0;
  for (size_t i = 0; i < kernels.size(); ++i) {
    const KernelInterval& k = kernels[i];
    if (k.start_ns > covered_until && i > 0) gaps.push_back({k.start_ns - covered_until, i});
    const uint64_t from = std::max(k.start_ns, covered_until);
    const uint64_t own = k.end_ns > from ? k.end_ns - from : 0;
    busy_ns += own;
    covered_until = std::max(covered_until, k.end_ns);
    const std::string name = short_kernel_name(k.name);
    entries.push_back({name, own, k.end_ns - k.start_ns, is_projection_kernel(name)});
  }
  const uint64_t step_ns = covered_until - kernels.front().start_ns;
  uint64_t raw_ns = 0, gap_ns = 0;
  for (const Entry& e : entries) raw_ns += e.raw_ns;
  for (const Gap& g : gaps) gap_ns += g.ns;
  out["step_us"] = us(step_ns);
  out["busy_us"] = us(busy_ns);
  out["gap_us"] = us(gap_ns);
  out["gaps_over_0.5us"] =
      std::count_if(gaps.begin(), gaps.end(), [](const Gap& g) { return g.ns >= kGapReportNs; });
  // Time kernels spent running beside (or waiting behind) an earlier kernel.
  out["overlap_us"] = us(raw_ns - busy_ns);
  std::sort(gaps.begin(), gaps.end(), [](const Gap& a, const Gap& b) { return a.ns > b.ns; });
  json largest = json::array();
  for (size_t g = 0; g < gaps.size() && g < kLargestGaps; ++g)
    largest.push_back({{"us", us(gaps[g].ns)},
                       {"after", entries[gaps[g].before - 1].name},
                       {"before", entries[gaps[g].before].name}});
  out["largest_gaps"] = largest;

  // The same gaps summed per kind of hand-over (kernel before -> kernel after), largest total
  // first: a handful of transitions usually hold most of a step's idle time.
  struct Transition {
    int64_t count = 0;
    uint64_t ns = 0;
  };
  std::map<std::pair<std::string, std::string>, Transition> by_transition;
  for (const Gap& g : gaps) {
    if (g.ns < kGapReportNs) continue;
    Transition& t = by_transition[{entries[g.before - 1].name, entries[g.before].name}];
    t.count++;
    t.ns += g.ns;
  }
  std::vector<std::pair<std::pair<std::string, std::string>, Transition>> transitions(
      by_transition.begin(), by_transition.end());
  std::sort(transitions.begin(), transitions.end(),
            [](const auto& a, const auto& b) { return a.second.ns > b.second.ns; });
  json gap_kinds = json::array();
  for (size_t i = 0; i < transitions.size() && i < kLargestGaps; ++i) {
    const auto& [names, t] = transitions[i];
    gap_kinds.push_back(
        {{"after", names.first}, {"before", names.second}, {"count", t.count}, {"us", us(t.ns)}});
  }
  out["gaps_by_transition"] = gap_kinds;

  struct Sum {
    int64_t count = 0;
    uint64_t own_ns = 0;
  };
  std::map<std::string, Sum> by_name;
  for (const Entry& e : entries) {
    by_name[e.name].count++;
    by_name[e.name].own_ns += e.own_ns;
  }
  std::vector<std::pair<std::string, Sum>> sorted(by_name.begin(), by_name.end());
  std::sort(sorted.begin(), sorted.end(),
            [](const auto& a, const auto& b) { return a.second.own_ns > b.second.own_ns; });
  json by_kernel = json::array();
  for (const auto& [name, sum] : sorted)
    by_kernel.push_back(
        {{"name", name},
         {"count", sum.count},
         {"us", us(sum.own_ns)},
         {"share", static_cast<double>(sum.own_ns) / static_cast<double>(step_ns)}});
  out["by_kernel"] = by_kernel;

  // Projection kernels in launch order, a reduction joining the projection before it.
  std::vector<uint64_t> projection_ns;
  bool previous_was_projection = false;
  for (const Entry& e : entries) {
    if (e.projection && previous_was_projection &&
        lowercase(e.name).find("reduce") != std::string::npos)
      projection_ns.back() += e.own_ns;
    else if (e.projection)
      projection_ns.push_back(e.own_ns);
    previous_was_projection = e.projection;
  }
  // No shapes to attribute (an e2e point's many steps): the kernels and gaps alone.
  if (projections.empty()) return out;
  json proj;
  if (projection_ns.size() != projections.size()) {
    proj["matched"] = false;
    proj["found_kernels"] = projection_ns.size();
    proj["expected"] = projections.size();
  } else {
    proj["matched"] = true;
    struct KindSum {
      uint64_t ns = 0;
      int64_t bytes = 0;
      double flops = 0;
    };
    std::map<std::string, KindSum> by_kind;
    std::vector<std::string> order;
    KindSum all;
    for (size_t p = 0; p < projections.size(); ++p) {
      const ProjectionShape& shape = projections[p];
      auto [it, fresh] = by_kind.try_emplace(shape.kind);
      if (fresh) order.push_back(shape.kind);
      const double flops = 2.0 * static_cast<double>(shape.rows) * static_cast<double>(shape.in) *
                           static_cast<double>(shape.out);
      for (KindSum* sum : {&it->second, &all}) {
        sum->ns += projection_ns[p];
        sum->bytes += shape.weight_bytes;
        sum->flops += flops;
      }
    }
    auto row = [&](const std::string& kind, const KindSum& sum) {
      const double seconds = static_cast<double>(sum.ns) * 1e-9;
      const double rate = sum.ns ? static_cast<double>(sum.bytes) / seconds : 0;
      json r{{"kind", kind},
             {"us", us(sum.ns)},
             {"weight_bytes", sum.bytes},
             {"GB_per_s", rate * 1e-9},
             {"of_ceiling", ceiling_bytes_per_s > 0 ? rate / ceiling_bytes_per_s : 0.0}};
      if (sum.flops > 0 && sum.ns) r["TFLOP_per_s"] = sum.flops / seconds * 1e-12;
      return r;
    };
    json kinds = json::array();
    for (const std::string& kind : order) kinds.push_back(row(kind, by_kind[kind]));
    proj["by_kind"] = kinds;
    proj["all"] = row("all", all);
  }
  out["projections"] = proj;
  return out;
}

std::string format_step_profile(const nlohmann::ordered_json& p) {
  std::string s;
  char line[256];
  if (p.value("kernels", 0) == 0) return "  profile: no kernels recorded\n";
  std::snprintf(line, sizeof line,
                "  profile: %d kernels, step %.1f us = busy %.1f + gaps %.1f (%d gaps >= 0.5 us); "
                "overlap %.1f us\n",
                p["kernels"].get<int>(), p["step_us"].get<double>(), p["busy_us"].get<double>(),
                p["gap_us"].get<double>(), p["gaps_over_0.5us"].get<int>(),
                p["overlap_us"].get<double>());
  s += line;
  for (const auto& k : p["by_kernel"]) {
    std::snprintf(line, sizeof line, "    %-40.40s x%-5d %9.1f us  %5.1f %%\n",
                  k["name"].get<std::string>().c_str(), k["count"].get<int>(),
                  k["us"].get<double>(), 100.0 * k["share"].get<double>());
    s += line;
  }
  const auto proj = p.value("projections", nlohmann::ordered_json());
  if (proj.is_null()) {
    // Nothing was attributed (no shapes given).
  } else if (!proj.value("matched", false)) {
    std::snprintf(line, sizeof line,
                  "    projections: %d projection kernels for %d projections, not attributed\n",
                  proj.value("found_kernels", 0), proj.value("expected", 0));
    s += line;
  } else {
    auto add_row = [&](const nlohmann::ordered_json& r) {
      std::snprintf(line, sizeof line, "    %-8s %9.1f us  %7.0f GB/s  %.2f of ceiling",
                    r["kind"].get<std::string>().c_str(), r["us"].get<double>(),
                    r["GB_per_s"].get<double>(), r["of_ceiling"].get<double>());
      s += line;
      if (r.contains("TFLOP_per_s")) {
        std::snprintf(line, sizeof line, "  %6.1f TFLOP/s", r["TFLOP_per_s"].get<double>());
        s += line;
      }
      s += "\n";
    };
    for (const auto& r : proj["by_kind"]) add_row(r);
    add_row(proj["all"]);  // its kind is "all"
  }
  for (const auto& g : p["largest_gaps"]) {
    std::snprintf(line, sizeof line, "    gap %6.1f us  %s -> %s\n", g["us"].get<double>(),
                  g["after"].get<std::string>().c_str(), g["before"].get<std::string>().c_str());
    s += line;
  }
  for (const auto& g : p.value("gaps_by_transition", nlohmann::ordered_json::array())) {
    std::snprintf(line, sizeof line, "    gaps %6.1f us in %3d  %s -> %s\n", g["us"].get<double>(),
                  g["count"].get<int>(), g["after"].get<std::string>().c_str(),
                  g["before"].get<std::string>().c_str());
    s += line;
  }
  return s;
}

}  // namespace l2kv
