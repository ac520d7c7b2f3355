// Parses a Jinja template into a Program. Only the constructs l2kv's interpreter implements
// are accepted: an unknown statement, filter, test, method or function is a load-time
// l2kv::Error naming it, never a wrong prompt at request time.
#pragma once

#include <string>

#include "l2kv/chat/jinja_ast.h"

namespace l2kv::jinja {

Program parse(const std::string& source);

}  // namespace l2kv::jinja
