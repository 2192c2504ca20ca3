// Drives an OpenAI-compatible server (fiddler serve) with the official `openai` npm client, as a real user would.
//
//   node check.mjs URL [API_KEY]        URL: http://host:port or http://host:port/v1
//   env: FIDDLER_URL, FIDDLER_API_KEY, FIDDLER_MODEL (default: the first id /v1/models lists)
//
// Prints one JSON object on stdout ({"ok": true, ...} or {"ok": false, "failures": [...], ...}); exits 0 when every
// check passed, 1 when one failed (each failure also goes to stderr on one line), 2 for bad arguments.
import OpenAI from 'openai';
import { VERSION } from 'openai/version';

const baseArg = process.argv[2] ?? process.env.FIDDLER_URL;
const apiKey = process.argv[3] ?? process.env.FIDDLER_API_KEY ?? '';
if (!baseArg || !/^https?:\/\//.test(baseArg)) {
  console.error('usage: node check.mjs http://HOST:PORT [API_KEY]   (or set FIDDLER_URL / FIDDLER_API_KEY)');
  process.exit(2);
}
const root = baseArg.replace(/\/+$/, '').replace(/\/v1$/, '');
const baseURL = `${root}/v1`;

// Raw SSE text of every streamed response, so the check sees how the stream really ended: the client stops at
// `data: [DONE]` but also ends quietly when the server just closes the connection.
const rawStreams = [];
async function recordingFetch(url, init) {
  const response = await fetch(url, init);
  if (!response.body || !(response.headers.get('content-type') ?? '').includes('text/event-stream')) return response;
  const record = { text: '' };
  rawStreams.push(record);
  const decoder = new TextDecoder();
  const tap = new TransformStream({
    transform(chunk, controller) { record.text += decoder.decode(chunk, { stream: true }); controller.enqueue(chunk); },
    flush() { record.text += decoder.decode(); },
  });
  return new Response(response.body.pipeThrough(tap), { status: response.status, statusText: response.statusText, headers: response.headers });
}

// No retries: a 429 or 5xx must show up here, not be hidden by the client's backoff.
const client = new OpenAI({ baseURL, apiKey: apiKey || 'no-key', maxRetries: 0, timeout: 120_000, fetch: recordingFetch });
const results = { ok: false, base_url: baseURL, node: process.version, openai: VERSION };
const failures = [];

async function check(name, body) {
  try {
    results[name] = await body();
  } catch (e) {
    // A connection error carries its reason (ECONNREFUSED, ...) in cause.
    let inner = e;
    while (inner?.cause) inner = inner.cause;
    const cause = inner !== e ? ` (${inner.code ?? inner.message ?? inner})` : '';
    const detail = e instanceof OpenAI.APIError && e.status ? `HTTP ${e.status}: ${e.message}` : `${e?.constructor?.name ?? 'Error'}: ${e?.message ?? e}${cause}`;
    failures.push(`${name}: ${detail}`);
    results[name] = { error: detail };
  }
}

function expect(condition, message) {
  if (!condition) throw new Error(message);
}

/** The data payloads of an SSE text, in order. */
function sseData(text) {
  return text.split(/\r?\n/).filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim());
}

async function expectApiError(call, statuses) {
  try {
    await call();
  } catch (e) {
    expect(e instanceof OpenAI.APIError, `expected OpenAI.APIError, got ${e?.constructor?.name}: ${e}`);
    expect(statuses.includes(e.status), `expected HTTP ${statuses.join(' or ')}, got ${e.status}: ${e.message}`);
    // OpenAI error schema: {"error": {"message", "type", "param", "code"}}; the client exposes the inner object.
    expect(typeof e.error?.message === 'string' && e.error.message.length > 0, `error body lacks error.message: ${JSON.stringify(e.error)}`);
    expect('type' in e.error && 'param' in e.error && 'code' in e.error, `error body lacks type/param/code: ${JSON.stringify(e.error)}`);
    return { status: e.status, class: e.constructor.name, type: e.error.type ?? null, code: e.error.code ?? null, message: e.error.message };
  }
  throw new Error(`expected HTTP ${statuses.join(' or ')}, but the call succeeded`);
}

let model = process.env.FIDDLER_MODEL;
const messages = [{ role: 'user', content: 'Say hello in one short sentence.' }];

await check('health', async () => {
  const r = await fetch(`${root}/health`, { headers: apiKey ? { authorization: `Bearer ${apiKey}` } : {} });
  expect(r.ok, `GET /health answered ${r.status}`);
  return { status: r.status, body: await r.text() };
});

await check('models', async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  expect(ids.length > 0, 'GET /v1/models listed no model');
  model ??= ids[0];
  return { ids };
});
results.model = model ?? null;

if (model) {
  await check('chat', async () => {
    const c = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0 });
    const choice = c.choices?.[0];
    expect(c.object === 'chat.completion', `object is ${c.object}`);
    expect(choice?.message?.role === 'assistant', `message role is ${choice?.message?.role}`);
    expect(typeof choice.message.content === 'string', 'message content is not a string');
    expect(['stop', 'length'].includes(choice.finish_reason), `finish_reason is ${choice.finish_reason}`);
    expect(Number.isInteger(c.usage?.completion_tokens) && c.usage.completion_tokens <= 8, `usage.completion_tokens is ${c.usage?.completion_tokens}`);
    return { id: c.id, content: choice.message.content, finish_reason: choice.finish_reason, usage: c.usage };
  });

  await check('chat_stream', async () => {
    const before = rawStreams.length;
    const stream = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0, stream: true });
    let content = '';
    let chunks = 0;
    let finish = null;
    for await (const chunk of stream) {
      chunks++;
      expect(chunk.object === 'chat.completion.chunk', `chunk object is ${chunk.object}`);
      const choice = chunk.choices?.[0];
      if (choice?.delta?.content) content += choice.delta.content;
      if (choice?.finish_reason) finish = choice.finish_reason;
    }
    expect(chunks > 0, 'the stream carried no chunk');
    expect(['stop', 'length'].includes(finish), `finish_reason is ${finish}`);
    const raw = rawStreams[before];
    expect(raw, 'no text/event-stream response was seen');
    // Everything the client parsed passed through the tap, so a [DONE] it acted on is in raw.text (the client may
    // cancel the body right after it, so don't wait for the end of the response).
    const data = sseData(raw.text);
    const doneLast = data.at(-1) === '[DONE]';
    expect(doneLast, `the stream did not end with data: [DONE] (last event: ${JSON.stringify(data.at(-1))})`);
    return { chunks, content, finish_reason: finish, done_last: doneLast };
  });

  await check('completion', async () => {
    const c = await client.completions.create({ model, prompt: 'The capital of France is', max_tokens: 8, temperature: 0 });
    const choice = c.choices?.[0];
    expect(c.object === 'text_completion', `object is ${c.object}`);
    expect(typeof choice?.text === 'string', 'choices[0].text is not a string');
    expect(['stop', 'length'].includes(choice.finish_reason), `finish_reason is ${choice.finish_reason}`);
    return { id: c.id, text: choice.text, finish_reason: choice.finish_reason, usage: c.usage };
  });

  await check('error_unknown_model', () => expectApiError(
    () => client.chat.completions.create({ model: 'no-such-model-fiddler-check', messages, max_tokens: 4 }), [404]));

  await check('error_bad_request', () => expectApiError(
    () => client.chat.completions.create({ model, messages, max_tokens: -1 }), [400]));

  if (apiKey) {
    await check('error_wrong_api_key', async () => {
      const stranger = new OpenAI({ baseURL, apiKey: `${apiKey}-wrong`, maxRetries: 0 });
      return expectApiError(() => stranger.models.list(), [401]);
    });
  }
}

results.ok = failures.length === 0;
results.failures = failures;
console.log(JSON.stringify(results));
for (const f of failures) console.error(`check.mjs: FAILED ${f.split('\n')[0]}`);
process.exit(failures.length === 0 ? 0 : 1);
