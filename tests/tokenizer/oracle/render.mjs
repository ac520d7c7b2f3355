// Renders every conversation with a tokenizer package's chat_template through Hugging Face's
// @huggingface/jinja: the oracle of l2kv's chat-template tests.
// Usage: node render.mjs <model-dir> <conversations.json> <out.json>
import { Template } from "@huggingface/jinja";
import fs from "node:fs";

const [modelDir, convPath, outPath] = process.argv.slice(2);
const config = JSON.parse(fs.readFileSync(`${modelDir}/tokenizer_config.json`, "utf8"));
const token = (t) => (t && typeof t === "object" ? t.content : t ?? "");
const template = new Template(config.chat_template);
const results = JSON.parse(fs.readFileSync(convPath, "utf8")).map((c) => {
  const vars = {
    messages: c.messages,
    add_generation_prompt: c.add_generation_prompt,
    bos_token: token(config.bos_token),
    eos_token: token(config.eos_token),
    ...(c.tools ? { tools: c.tools } : {}),
    ...(c.extra ?? {}),
  };
  try {
    return { name: c.name, output: template.render(vars) };
  } catch (e) {
    return { name: c.name, error: String(e.message ?? e) };
  }
});
fs.writeFileSync(outPath, JSON.stringify(results, null, 1));
