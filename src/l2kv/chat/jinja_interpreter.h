// Renders a parsed Jinja template. Scoping follows Jinja: a for loop's body has its own scope
// (so templates use namespace() to carry state out of loops); raise_exception() throws.
#pragma once

#include <string>

#include "l2kv/chat/jinja_ast.h"

namespace l2kv::jinja {

// A variable of the template's global scope.
using Globals = Dict;

// Throws l2kv::Error for runtime errors (a type mismatch, raise_exception(...)).
std::string render(const Program& program, const Globals& globals);

}  // namespace l2kv::jinja
