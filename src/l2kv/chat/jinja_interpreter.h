// Renders a parsed Jinja template. Scoping follows Jinja: a for loop's body has its own scope
// (so templates use namespace() to carry state out of loops); raise_exception() throws.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "l2kv/chat/jinja_ast.h"

namespace l2kv::jinja {

// What one render may do. A template is a program: these bound its time (steps: statements,
// expressions, and list items and string bytes produced), its memory (the longest string and
// the output) and its stack (nested expressions), so a hostile or broken template is an
// l2kv::Error instead of a hang, an exhausted memory or a stack overflow. Real chat templates
// render long conversations far inside them.
inline constexpr int64_t kMaxRenderSteps = 4'000'000;
inline constexpr size_t kMaxStringBytes = size_t{16} << 20;
inline constexpr int kMaxEvalDepth = 256;
inline constexpr int64_t kMaxRangeItems = 1'000'000;

// A variable of the template's global scope.
using Globals = Dict;

// Throws l2kv::Error for runtime errors (a type mismatch, raise_exception(...), integer
// overflow) and for a render over the limits above.
std::string render(const Program& program, const Globals& globals);

}  // namespace l2kv::jinja
