// The Vercel AI SDK (`ai` + `@ai-sdk/openai`, pinned in package.json) against gitcap, through
// its default OpenAI provider, which speaks the Responses API: `generateText` and `streamText`
// with an image. Prints what it got as one JSON object (tests/responses_clients.rs compares it
// with the transformers goldens).
//
//     node generate.mjs BASE_URL TOKEN IMAGE
import { readFileSync } from "node:fs";

import { createOpenAI } from "@ai-sdk/openai";
import { generateText, streamText } from "ai";

const [baseURL, apiKey, imagePath] = process.argv.slice(2);
const openai = createOpenAI({ baseURL, apiKey });
const image = readFileSync(imagePath);
const messages = [{ role: "user", content: [{ type: "image", image, mediaType: "image/png" }] }];
const out = {};

const whole = await generateText({ model: openai("tiny"), messages, maxOutputTokens: 12, maxRetries: 0 });
out.generate = { text: whole.text, finishReason: whole.finishReason, outputTokens: whole.usage.outputTokens };

const streamed = streamText({ model: openai("tiny"), messages, maxOutputTokens: 12, maxRetries: 0 });
const deltas = [];
for await (const delta of streamed.textStream) {
  deltas.push(delta);
}
out.stream = { deltas, finishReason: await streamed.finishReason, outputTokens: (await streamed.usage).outputTokens };

console.log(JSON.stringify(out));
