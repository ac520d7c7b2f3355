// Encode speed of Hugging Face tokenizers.js on the same paragraphs as l2kv_bench_tokenizer.
// Usage: node oracle_speed.mjs <megabytes> <tokenizer-dir> <text files...>
import { Tokenizer } from "@huggingface/tokenizers";
import fs from "node:fs";

const [mb, dir, ...files] = process.argv.slice(2);
const all = files.map((f) => fs.readFileSync(f, "utf8") + "\n\n").join("");
const base = [];
for (let pos = 0; pos < all.length; ) {
  let end = all.indexOf("\n\n", pos);
  if (end < 0) end = all.length;
  if (end > pos) base.push(all.slice(pos, end + 1));
  pos = end + 2;
}
const paragraphs = [];
let bytes = 0;
while (bytes < Number(mb) * 1e6)
  for (const p of base) {
    paragraphs.push(p);
    bytes += Buffer.byteLength(p, "utf8");
  }
const tok = new Tokenizer(JSON.parse(fs.readFileSync(`${dir}/tokenizer.json`, "utf8")),
                          JSON.parse(fs.readFileSync(`${dir}/tokenizer_config.json`, "utf8")));
for (let i = 0; i < paragraphs.length / 10; ++i) tok.encode(paragraphs[i]);
let tokens = 0;
const start = process.hrtime.bigint();
for (const p of paragraphs) tokens += tok.encode(p, { add_special_tokens: false }).ids.length;
const s = Number(process.hrtime.bigint() - start) / 1e9;
console.log(`tokenizers.js ${dir}: ${(bytes / 1e6).toFixed(1)} MB in ${s.toFixed(2)} s = ${(bytes / 1e6 / s).toFixed(2)} MB/s, ${(tokens / 1e6 / s).toFixed(2)} M tokens/s`);
