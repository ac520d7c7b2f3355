// Structured outputs through the official openai npm client: response_format json_schema and
// json_object on chat (streamed and not), vLLM's structured_outputs (choice, regex, json) on
// completions. The fixture has random weights and samples at temperature 1, so only the grammar
// keeps the outputs valid; ajv (pinned) checks each against its schema.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import Ajv2020 from "ajv/dist/2020.js";
import { startServer } from "./harness.mjs";

const ajv = new Ajv2020({ strict: false, allErrors: true });

// Bounded strings and numbers: with 128k tokens allowed inside a free string, a random model
// would close it only by chance; the bounds keep each answer short.
const PERSON = {
  type: "object",
  properties: {
    name: { type: "string", maxLength: 12 },
    age: { type: "integer", minimum: 0, maximum: 120 },
    role: { enum: ["admin", "user", "guest"] },
    active: { type: "boolean" },
    tags: { type: "array", items: { type: "string", maxLength: 6 }, maxItems: 2 },
  },
  required: ["name", "age", "role"],
  additionalProperties: false,
};
const MESSAGES = [{ role: "user", content: "Describe a user as JSON." }];

let server, client;

before(async () => {
  server = await startServer("structured");
  client = server.client();
});

after(async () => {
  if (!server) return;
  const exit = await server.stop();
  assert.equal(exit.code, 0, `l2kv serve exited with ${JSON.stringify(exit)} after SIGTERM`);
});

function assertValid(schema, text, what) {
  let value;
  assert.doesNotThrow(() => { value = JSON.parse(text); }, `${what}: not JSON: ${text}`);
  const validate = ajv.compile(schema);
  assert.ok(validate(value), `${what}: ${ajv.errorsText(validate.errors)}: ${text}`);
  return value;
}

describe("response_format", () => {
  test("json_schema, non-streaming: every choice valid, finish_reason stop", async () => {
    const r = await client.chat.completions.create({
      model: "l2kv-ci", messages: MESSAGES, n: 3, seed: 5, temperature: 1, max_tokens: 300,
      response_format: { type: "json_schema", json_schema: { name: "person", strict: true, schema: PERSON } },
    });
    assert.equal(r.choices.length, 3);
    const texts = new Set();
    for (const c of r.choices) {
      assert.equal(c.finish_reason, "stop", `choice ${c.index}: ${c.message.content}`);
      assertValid(PERSON, c.message.content, `choice ${c.index}`);
      texts.add(c.message.content);
    }
    assert.ok(texts.size > 1, "three seeded choices gave the same text");
  });

  test("json_schema, streaming: the deltas put together are valid", async () => {
    const stream = await client.chat.completions.create({
      model: "l2kv-ci", messages: MESSAGES, seed: 11, temperature: 1, max_tokens: 300, stream: true,
      response_format: { type: "json_schema", json_schema: { name: "person", schema: PERSON } },
    });
    let text = "", finish = null, chunks = 0;
    for await (const chunk of stream) {
      for (const c of chunk.choices) {
        text += c.delta?.content ?? "";
        if (c.finish_reason) finish = c.finish_reason;
      }
      chunks++;
    }
    assert.equal(finish, "stop", text);
    assert.ok(chunks > 3, `only ${chunks} chunks`);
    assertValid(PERSON, text, "streamed");
  });

  test("json_object: an object", async () => {
    const r = await client.chat.completions.create({
      model: "l2kv-ci", messages: MESSAGES, seed: 3, temperature: 1, max_tokens: 400,
      response_format: { type: "json_object" },
    });
    const c = r.choices[0];
    if (c.finish_reason === "stop") {
      const value = JSON.parse(c.message.content);
      assert.equal(typeof value, "object");
      assert.ok(value !== null && !Array.isArray(value), c.message.content);
    } else {
      // A free object may outgrow max_tokens: then "length", as any request, and a prefix.
      assert.equal(c.finish_reason, "length");
      assert.ok(c.message.content.startsWith("{"), c.message.content);
    }
  });

  test("max_tokens cuts a constrained output: finish_reason length", async () => {
    const r = await client.chat.completions.create({
      model: "l2kv-ci", messages: MESSAGES, seed: 1, temperature: 1, max_tokens: 2,
      response_format: { type: "json_schema", json_schema: { name: "person", schema: PERSON } },
    });
    assert.equal(r.choices[0].finish_reason, "length");
    assert.ok(r.choices[0].message.content.startsWith("{"), r.choices[0].message.content);
  });
});

describe("structured_outputs on /v1/completions", () => {
  test("choice", async () => {
    const choices = ["red", "green", "blue"];
    const r = await client.completions.create({
      model: "l2kv-ci", prompt: "My favourite colour is", n: 4, seed: 2, temperature: 1, max_tokens: 10,
      structured_outputs: { choice: choices },
    });
    for (const c of r.choices) {
      assert.equal(c.finish_reason, "stop");
      assert.ok(choices.includes(c.text), c.text);
    }
  });

  test("regex", async () => {
    const r = await client.completions.create({
      model: "l2kv-ci", prompt: "Call me at", seed: 4, temperature: 1, max_tokens: 20,
      structured_outputs: { regex: "\\+?[0-9]{3}-[0-9]{4}" },
    });
    assert.equal(r.choices[0].finish_reason, "stop");
    assert.match(r.choices[0].text, /^\+?[0-9]{3}-[0-9]{4}$/);
  });

  test("json, streamed", async () => {
    const schema = { type: "array", items: { type: "integer", minimum: -5, maximum: 5 }, minItems: 1, maxItems: 3 };
    const stream = await client.completions.create({
      model: "l2kv-ci", prompt: "Three small numbers:", seed: 8, temperature: 1, max_tokens: 60,
      stream: true, structured_outputs: { json: schema },
    });
    let text = "", finish = null;
    for await (const chunk of stream) {
      for (const c of chunk.choices) {
        text += c.text ?? "";
        if (c.finish_reason) finish = c.finish_reason;
      }
    }
    assert.equal(finish, "stop", text);
    assertValid(schema, text, "streamed completion");
  });
});

describe("errors", () => {
  test("an unsupported schema keyword is a 400 that names it", async () => {
    await assert.rejects(
      client.chat.completions.create({
        model: "l2kv-ci", messages: MESSAGES, max_tokens: 5,
        response_format: { type: "json_schema", json_schema: { name: "x", schema: { type: "array", uniqueItems: true } } },
      }),
      (e) => e.status === 400 && e.error?.param === "response_format" && /uniqueItems/.test(e.message));
  });
});
