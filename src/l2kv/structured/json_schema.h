// JSON Schema (the subset models are asked for through response_format and tools) compiled to
// a Grammar whose every sentence is a JSON text valid against the schema.
//
// Supported: type (one or a list), properties, required, additionalProperties, enum, const,
// items, minItems, maxItems, anyOf, oneOf, allOf of one schema, $ref to "#", "#/$defs/..." or
// "#/definitions/..." (recursion included), minLength, maxLength, pattern (regex_grammar.h's
// subset), format (date, time, date-time, uuid, ipv4, email), minimum, maximum,
// exclusiveMinimum, exclusiveMaximum; annotations (title, description, default, examples,
// $schema, $id, $comment, deprecated, readOnly, writeOnly, strict) are ignored. Any other
// keyword is an l2kv::Error that names it and where it is.
//
// What is generated, always valid and sometimes narrower than the schema allows:
//   - objects hold the listed properties in schema order, every required one and any subset
//     of the optional ones, and no others (extra keys only for an object without properties,
//     whose additionalProperties is then the values' schema);
//   - integers have at most 15 digits; numbers at most 15 integer digits, 15 fraction digits
//     and a two-digit exponent; a number with bounds is written as an integer in its range;
//   - oneOf is generated as anyOf: exactly one branch holds only when the branches are
//     disjoint;
//   - whitespace between tokens is at most 16 of space, tab and newline.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "l2kv/structured/grammar.h"

namespace l2kv::structured {

// Any JSON object (response_format json_object).
Grammar json_object_grammar();
// The schema's grammar. Throws l2kv::Error naming an unsupported keyword and its location.
Grammar json_schema_grammar(const nlohmann::ordered_json& schema);

}  // namespace l2kv::structured
