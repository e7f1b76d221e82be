// The Live API through the gateway with the official JS SDK (@google/genai) on Node: ai.live.connect
// (the SDK turns the http:// base URL into ws:// and sends the access key as ?key=), a text turn,
// an audio turn (PCM in, the model's audio back), then an ephemeral token made through the gateway
// (authTokens.create on v1alpha) and a Constrained session opened with it (?access_token=).
// Driven by e2e/live_test.go, which passes:
//   GATEWAY_URL  the gateway's base URL (http://…)
//   ACCESS_KEY   a gateway access key
//   MODEL        a Live model
// It prints one JSON line:
//   {"text","usage":[…],"audioBytes","audioSame","tokenName","tokenText"}
// and exits 0, or prints the error and exits 1.
import { GoogleGenAI, Modality } from '@google/genai';

const { GATEWAY_URL, ACCESS_KEY, MODEL } = process.env;

// inbox queues a session's messages for the script to take one by one.
function inbox() {
  const queue = [];
  const waiting = [];
  let ended = null;
  return {
    push(m) {
      const w = waiting.shift();
      if (w) w.resolve(m);
      else queue.push(m);
    },
    end(why) {
      ended = why;
      for (const w of waiting.splice(0)) w.reject(why);
    },
    next() {
      if (queue.length) return Promise.resolve(queue.shift());
      if (ended) return Promise.reject(ended);
      return new Promise((resolve, reject) => waiting.push({ resolve, reject }));
    },
  };
}

async function connect(ai) {
  const box = inbox();
  const session = await ai.live.connect({
    model: MODEL,
    config: { responseModalities: [Modality.TEXT] },
    callbacks: {
      onmessage: (m) => box.push(m),
      onerror: (e) => box.end(new Error('websocket error: ' + (e?.message ?? e))),
      onclose: (e) => box.end(new Error(`closed ${e.code} ${e.reason}`)),
    },
  });
  return { session, box };
}

// turn reads messages until the model's turn is complete.
async function turn(box) {
  let text = '';
  const audio = [];
  const usage = [];
  for (;;) {
    const m = await box.next();
    if (m.usageMetadata) usage.push(m.usageMetadata);
    const sc = m.serverContent;
    for (const p of sc?.modelTurn?.parts ?? []) {
      if (p.text) text += p.text;
      if (p.inlineData?.data) audio.push(Buffer.from(p.inlineData.data, 'base64'));
    }
    if (sc?.turnComplete) return { text, audio: Buffer.concat(audio), usage };
  }
}

async function main() {
  const ai = new GoogleGenAI({ apiKey: ACCESS_KEY, httpOptions: { baseUrl: GATEWAY_URL } });
  const { session, box } = await connect(ai);
  session.sendClientContent({ turns: [{ role: 'user', parts: [{ text: 'hello from node' }] }], turnComplete: true });
  const t1 = await turn(box);

  const pcm = Buffer.alloc(24000);
  for (let i = 0; i < pcm.length; i++) pcm[i] = (i * 7) & 0xff;
  session.sendRealtimeInput({ audio: { data: pcm.toString('base64'), mimeType: 'audio/pcm;rate=16000' } });
  session.sendRealtimeInput({ audioStreamEnd: true });
  const t2 = await turn(box);
  session.close();

  const maker = new GoogleGenAI({ apiKey: ACCESS_KEY, httpOptions: { baseUrl: GATEWAY_URL, apiVersion: 'v1alpha' } });
  const token = await maker.authTokens.create({ config: { uses: 1 } });
  const byToken = new GoogleGenAI({ apiKey: token.name, httpOptions: { baseUrl: GATEWAY_URL, apiVersion: 'v1alpha' } });
  const s2 = await connect(byToken);
  s2.session.sendClientContent({ turns: [{ role: 'user', parts: [{ text: 'hello by token' }] }], turnComplete: true });
  const t3 = await turn(s2.box);
  s2.session.close();

  console.log(JSON.stringify({
    text: t1.text,
    usage: [...t1.usage, ...t2.usage],
    audioBytes: t2.audio.length,
    audioSame: t2.audio.equals(pcm),
    tokenName: token.name,
    tokenText: t3.text,
  }));
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err && err.stack ? err.stack : String(err));
    process.exit(1);
  },
);
