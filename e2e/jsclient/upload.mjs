// Uploads a file through the gateway with the official JS SDK (@google/genai), then uses it in
// generateContent three times. Driven by e2e/jsclient_test.go, which passes:
//   GATEWAY_URL  the gateway's base URL
//   ACCESS_KEY   a gateway access key
//   UPLOAD_PATH  the file to upload (text/plain)
//   MODEL        the model to call
// It prints one JSON line: {"name","uri","sizeBytes","texts":[...]} and exits 0, or prints the
// error and exits 1.
import { GoogleGenAI, createPartFromUri, createUserContent } from '@google/genai';

const { GATEWAY_URL, ACCESS_KEY, UPLOAD_PATH, MODEL } = process.env;

async function main() {
  const ai = new GoogleGenAI({ apiKey: ACCESS_KEY, httpOptions: { baseUrl: GATEWAY_URL } });
  const file = await ai.files.upload({
    file: UPLOAD_PATH,
    config: { mimeType: 'text/plain', displayName: 'js sdk upload' },
  });
  const texts = [];
  for (let i = 0; i < 3; i++) {
    const resp = await ai.models.generateContent({
      model: MODEL,
      contents: createUserContent([createPartFromUri(file.uri, file.mimeType), 'hello']),
    });
    texts.push(resp.text);
  }
  console.log(JSON.stringify({ name: file.name, uri: file.uri, sizeBytes: file.sizeBytes, texts }));
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
