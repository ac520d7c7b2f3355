// Writes Hugging Face tokenizers.js's ids and decodes for every corpus entry: the oracle of
// l2kv's tokenizer tests. Usage: node encode.mjs <model-dir> <corpus.json> <out.json>
import { Tokenizer } from "@huggingface/tokenizers";
import fs from "node:fs";

const [modelDir, corpusPath, outPath] = process.argv.slice(2);
const json = JSON.parse(fs.readFileSync(`${modelDir}/tokenizer.json`, "utf8"));
const config = JSON.parse(fs.readFileSync(`${modelDir}/tokenizer_config.json`, "utf8"));
const tokenizer = new Tokenizer(json, config);
const corpus = JSON.parse(fs.readFileSync(corpusPath, "utf8"));
const entries = corpus.map((text) => {
  const ids = tokenizer.encode(text).ids;
  const plain = tokenizer.encode(text, { add_special_tokens: false }).ids;
  return {
    text,
    ids,
    ids_without_special: plain,
    decoded: tokenizer.decode(plain, { clean_up_tokenization_spaces: false }),
  };
});
fs.writeFileSync(outPath, JSON.stringify({ model_dir: modelDir, entries }, null, 0));
