// Meets an access key's policy with the official JS SDK (@google/genai) through the gateway:
// a key with rpm 1 (the second request and a stream are refused with 429), a key whose policy
// denies a model (403) and lists only its models. Driven by e2e/tenant_test.go, which passes:
//   GATEWAY_URL    the gateway's base URL
//   RPM_KEY        an access key with rpm 1, unused so far
//   GLOBS_KEY      an access key whose policy allows ALLOWED_MODEL and not DENIED_MODEL
//   ALLOWED_MODEL  a model GLOBS_KEY may use
//   DENIED_MODEL   a model GLOBS_KEY may not use
// It prints one JSON line, an outcome per step: {"ok":true,"value":...} or
// {"ok":false,"name","status","message"} as the SDK's error has them; it exits 1 only when
// the script itself fails.
import { GoogleGenAI } from '@google/genai';

const { GATEWAY_URL, RPM_KEY, GLOBS_KEY, ALLOWED_MODEL, DENIED_MODEL } = process.env;

function client(apiKey) {
  return new GoogleGenAI({ apiKey, httpOptions: { baseUrl: GATEWAY_URL } });
}

async function attempt(fn) {
  try {
    return { ok: true, value: await fn() };
  } catch (err) {
    return { ok: false, name: err?.name, status: err?.status, message: String(err?.message ?? err) };
  }
}

async function main() {
  const rpm = client(RPM_KEY);
  const generate = (ai, model) => async () =>
    (await ai.models.generateContent({ model, contents: 'hello' })).text;
  const first = await attempt(generate(rpm, ALLOWED_MODEL));
  const second = await attempt(generate(rpm, ALLOWED_MODEL));
  const streamed = await attempt(async () => {
    let text = '';
    for await (const chunk of await rpm.models.generateContentStream({ model: ALLOWED_MODEL, contents: 'hello' })) {
      text += chunk.text ?? '';
    }
    return text;
  });
  const globs = client(GLOBS_KEY);
  const allowed = await attempt(generate(globs, ALLOWED_MODEL));
  const denied = await attempt(generate(globs, DENIED_MODEL));
  const listed = await attempt(async () => {
    const names = [];
    for await (const m of await globs.models.list()) {
      names.push(m.name);
    }
    return names;
  });
  console.log(JSON.stringify({ first, second, streamed, allowed, denied, listed }));
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
