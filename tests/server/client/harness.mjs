// Shared by the server tests: starts `l2kv serve` on the CPU backend as a child process on a free
// port of 127.0.0.1, talks raw HTTP to it, reads its Prometheus metrics, and runs
// `l2kv generate` as the oracle of greedy outputs.
//
// Environment: L2KV_BIN (default build/l2kv), L2KV_SERVER_FIXTURE (default
// build/server_fixture, made by scripts/make_server_fixture.py), L2KV_SERVER_LOG_DIR (default
// build/server_test: each server's stderr goes to <name>.log there).
import { spawn, execFile } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import OpenAI from "openai";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
export const L2KV_BIN = path.resolve(ROOT, process.env.L2KV_BIN ?? "build/l2kv");
export const FIXTURE = path.resolve(ROOT, process.env.L2KV_SERVER_FIXTURE ?? "build/server_fixture");
const LOG_DIR = path.resolve(ROOT, process.env.L2KV_SERVER_LOG_DIR ?? "build/server_test");

export const MODEL_NAME = "l2kv-ci";
export const MAX_MODEL_LEN = 512;

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Starts a server and waits until GET /health answers 200. `args` are extra flags.
export async function startServer(name, args = []) {
  const port = await freePort();
  fs.mkdirSync(LOG_DIR, { recursive: true });
  const logPath = path.join(LOG_DIR, `${name}.log`);
  const log = fs.openSync(logPath, "w");
  const argv = ["serve", "--model", FIXTURE, "--device", "cpu", "--host", "127.0.0.1",
    "--port", String(port), "--max-model-len", String(MAX_MODEL_LEN),
    "--served-model-name", MODEL_NAME, ...args];
  const proc = spawn(L2KV_BIN, argv, { stdio: ["ignore", log, log] });
  fs.closeSync(log);
  let exit = null;
  const exited = new Promise((resolve) => proc.on("exit", (code, signal) => {
    exit = { code, signal };
    resolve(exit);
  }));
  const url = `http://127.0.0.1:${port}`;
  const server = {
    name, url, port, proc, logPath, exited,
    get exit() { return exit; },
    log: () => fs.readFileSync(logPath, "utf8"),
    client: (opts = {}) => new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0,
      timeout: 120_000, ...opts }),
    // SIGTERM, then the exit status (SIGKILL after `graceMs`; `killed` then says so).
    async stop(graceMs = 15_000) {
      if (exit) return { ...exit, killed: false };
      proc.kill("SIGTERM");
      const timer = sleep(graceMs).then(() => null);
      const result = await Promise.race([exited, timer]);
      if (result) return { ...result, killed: false };
      proc.kill("SIGKILL");
      return { ...(await exited), killed: true };
    },
  };
  const deadline = Date.now() + 120_000;
  for (;;) {
    if (exit) {
      throw new Error(`l2kv serve exited (${JSON.stringify(exit)}) before /health answered:\n` +
        `${L2KV_BIN} ${argv.join(" ")}\n${server.log().slice(-4000)}`);
    }
    try {
      const r = await request(url, "GET", "/health");
      if (r.status === 200) return server;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) {
      proc.kill("SIGKILL");
      throw new Error(`l2kv serve: /health not 200 within 120 s\n${server.log().slice(-4000)}`);
    }
    await sleep(200);
  }
}

// One HTTP request over a fresh socket. `body`: a string or Buffer sent as is, or an object sent
// as JSON. Resolves {status, headers, text, json} (json: parsed body or undefined). A server that
// answers before reading the whole body (413) and then closes still yields its answer.
export function request(url, method, route, body, headers = {}) {
  return new Promise((resolve, reject) => {
    let payload;
    if (body !== undefined) {
      payload = typeof body === "string" || Buffer.isBuffer(body) ? body : JSON.stringify(body);
      headers = { "content-type": "application/json",
        "content-length": Buffer.byteLength(payload), ...headers };
    }
    const u = new URL(route, url);
    const req = http.request({ hostname: u.hostname, port: u.port, path: u.pathname + u.search,
      method, headers, agent: false });
    let answered = false;
    req.on("response", (res) => {
      answered = true;
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("error", reject);
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        let json;
        try { json = JSON.parse(text); } catch { json = undefined; }
        resolve({ status: res.statusCode, headers: res.headers, text, json });
      });
    });
    req.on("error", (e) => {
      if (!answered) reject(e);
    });
    if (payload !== undefined) req.write(payload);
    req.end();
  });
}

// Splits a server-sent-events body into its `data:` payloads (strings, "[DONE]" included).
export function sseData(text) {
  return text.split(/\r?\n\r?\n/).filter((e) => e.trim() !== "").map((event) => event
    .split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart())
    .join("\n"));
}

// Prometheus text format -> [{name, labels, value}].
export function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/);
    if (m) samples.push({ name: m[1], labels: m[2] ?? "", value: Number(m[3]) });
  }
  return samples;
}

// The metric of KV blocks in use: an `l2kv:` gauge whose name speaks of KV blocks being used
// (not free or total). Throws with the metric names when there is none.
export function kvBlocksUsed(samples) {
  const used = samples.filter((s) => s.name.startsWith("l2kv:") && /kv/i.test(s.name) &&
    /block/i.test(s.name) && /used|in_use|usage/i.test(s.name) && !/free|total/i.test(s.name));
  if (used.length === 0) {
    throw new Error("no l2kv: metric of KV blocks in use; names: " +
      [...new Set(samples.map((s) => s.name))].join(", "));
  }
  return used;
}

// Runs `l2kv generate --temperature 0 --output-format jsonl` over `prompts` ({prompt},
// {prompt_ids} or {messages} objects) and returns its JSON lines in order. Chat prompts run in a
// call of their own: generate applies the chat template to every text prompt after the first
// {messages} line of a file.
export async function generateReference(prompts, maxTokens, extra = []) {
  const isChat = (p) => p.messages !== undefined;
  const [plain, chat] = await Promise.all([
    generateLines(prompts.filter((p) => !isChat(p)), maxTokens, extra),
    generateLines(prompts.filter(isChat), maxTokens, extra)]);
  return prompts.map((p) => (isChat(p) ? chat : plain).shift());
}

async function generateLines(prompts, maxTokens, extra) {
  if (prompts.length === 0) return [];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "l2kv-ref-"));
  const file = path.join(dir, "prompts.jsonl");
  fs.writeFileSync(file, prompts.map((p) => JSON.stringify(p)).join("\n") + "\n");
  const args = ["generate", "--model", FIXTURE, "--device", "cpu", "--temperature", "0",
    "--max-tokens", String(maxTokens), "--output-format", "jsonl", "--prompt-file", file, ...extra];
  const stdout = await new Promise((resolve, reject) => {
    execFile(L2KV_BIN, args, { maxBuffer: 64 << 20 }, (err, out, errText) => {
      if (err) reject(new Error(`l2kv ${args.join(" ")} failed: ${err.message}\n${errText}`));
      else resolve(out);
    });
  });
  fs.rmSync(dir, { recursive: true, force: true });
  const lines = stdout.split("\n").filter((l) => l.trim() !== "").map((l) => JSON.parse(l));
  if (lines.length !== prompts.length) {
    throw new Error(`l2kv generate: ${lines.length} results for ${prompts.length} prompts`);
  }
  return lines;
}

// Checks an error answer: the status and OpenAI's body {"error": {message, type, param, code}}.
export function errorShapeProblems(res, status) {
  const problems = [];
  const expected = Array.isArray(status) ? status : [status];
  if (!expected.includes(res.status)) problems.push(`status ${res.status}, expected ${expected.join(" or ")}`);
  const e = res.json?.error;
  if (!e || typeof e !== "object") {
    problems.push("body is not {\"error\": {...}}");
  } else {
    if (typeof e.message !== "string" || e.message === "") problems.push("error.message is not a non-empty string");
    if (typeof e.type !== "string" || e.type === "") problems.push("error.type is not a non-empty string");
    if (!("param" in e)) problems.push("error.param is missing");
    if (!("code" in e)) problems.push("error.code is missing");
  }
  return problems;
}

export { sleep };
