// The independent check of the schema suite: every output l2kv generated under a schema's
// grammar (JSON lines {"name", "output"} written by SchemaSuite in l2kv_tests) must parse as
// JSON and validate against that schema with ajv (draft 2020-12, formats from ajv-formats).
// Usage: node validate.mjs SCHEMAS_JSON OUTPUTS_JSONL. Exits 1 on any invalid or missing output.
import fs from "node:fs";
import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";

const [schemasPath, outputsPath] = process.argv.slice(2);
if (!schemasPath || !outputsPath) {
  console.error("usage: node validate.mjs SCHEMAS_JSON OUTPUTS_JSONL");
  process.exit(2);
}
const suite = JSON.parse(fs.readFileSync(schemasPath, "utf8"));
const outputs = new Map(
  fs.readFileSync(outputsPath, "utf8").split("\n").filter((l) => l.trim() !== "")
    .map((l) => JSON.parse(l)).map((o) => [o.name, o.output]));

// strict: false lets annotations such as "strict" through; validation itself is unchanged.
const ajv = new Ajv2020({ strict: false, allErrors: true });
addFormats(ajv);

let failures = 0;
for (const { name, schema } of suite.schemas) {
  if (!outputs.has(name)) {
    console.error(`MISSING ${name}: no output`);
    failures++;
    continue;
  }
  const text = outputs.get(name);
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    console.error(`INVALID ${name}: not JSON (${e.message}): ${text.slice(0, 200)}`);
    failures++;
    continue;
  }
  const validate = ajv.compile(schema);
  if (!validate(value)) {
    console.error(`INVALID ${name}: ${ajv.errorsText(validate.errors)}: ${text.slice(0, 300)}`);
    failures++;
  }
}
const total = suite.schemas.length;
console.log(`schema suite: ${total - failures} of ${total} outputs valid (ajv)`);
process.exit(failures === 0 ? 0 : 1);
