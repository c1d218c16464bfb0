#!/usr/bin/env node
// Reference ids from Hugging Face's tokenizers (the Rust library's Node binding) for the C++
// HfTokenizer tests and bench. Used only by tests and bench, never at run time.
//
// Usage: node hf_reference.js TOKENIZER_JSON INPUT_JSONL OUTPUT_JSONL
//   Each input line is {"text": "..."} or {"ids": [..]}. Each output line (same order) is
//   {"with_special": [..], "without_special": [..], "decoded": "...", "decoded_without_special":
//   "..."} for a text, where decoded is decode(with_special, skip_special_tokens=false) and
//   decoded_without_special the same of without_special, or {"decoded": "..."} for ids.
//   Exits 2 with a message on stderr when the tokenizers package is missing or a line is bad.
// Usage: node hf_reference.js --bench TOKENIZER_JSON INPUT_JSONL REPEATS
//   Prints one JSON object: load_ms, the texts, their bytes, ids and the encode seconds (the best
//   of REPEATS passes, one text at a time with addSpecialTokens=false, as a single-threaded caller).
'use strict';
const fs = require('fs');

let Tokenizer;
try {
  ({ Tokenizer } = require('tokenizers'));
} catch (e) {
  process.stderr.write(`hf_reference: cannot load the 'tokenizers' package (run scripts/bootstrap.sh): ${e.message}\n`);
  process.exit(2);
}

function readLines(path) {
  return fs.readFileSync(path, 'utf8').split('\n').filter((l) => l.length > 0).map((l, i) => {
    try {
      return JSON.parse(l);
    } catch (e) {
      process.stderr.write(`hf_reference: ${path}:${i + 1}: ${e.message}\n`);
      process.exit(2);
    }
  });
}

async function reference(tokPath, inPath, outPath) {
  const tok = Tokenizer.fromFile(tokPath);
  const out = [];
  for (const item of readLines(inPath)) {
    if (Array.isArray(item.ids)) {
      out.push(JSON.stringify({ decoded: await tok.decode(item.ids, false) }));
      continue;
    }
    const withSpecial = (await tok.encode(item.text, null, { addSpecialTokens: true })).getIds();
    const withoutSpecial = (await tok.encode(item.text, null, { addSpecialTokens: false })).getIds();
    const decoded = await tok.decode(withSpecial, false);
    const decodedWithoutSpecial = await tok.decode(withoutSpecial, false);
    out.push(JSON.stringify({
      with_special: withSpecial, without_special: withoutSpecial, decoded,
      decoded_without_special: decodedWithoutSpecial,
    }));
  }
  fs.writeFileSync(outPath, out.join('\n') + '\n');
}

async function bench(tokPath, inPath, repeats) {
  const t0 = process.hrtime.bigint();
  const tok = Tokenizer.fromFile(tokPath);
  const loadMs = Number(process.hrtime.bigint() - t0) / 1e6;
  const texts = readLines(inPath).map((x) => x.text);
  let best = Infinity;
  let ids = 0;
  for (let r = 0; r < repeats; r++) {
    ids = 0;
    const s = process.hrtime.bigint();
    for (const t of texts) ids += (await tok.encode(t, null, { addSpecialTokens: false })).getIds().length;
    best = Math.min(best, Number(process.hrtime.bigint() - s) / 1e9);
  }
  const bytes = texts.reduce((a, t) => a + Buffer.byteLength(t, 'utf8'), 0);
  console.log(JSON.stringify({ load_ms: loadMs, texts: texts.length, bytes, ids, encode_s: best }));
}

const args = process.argv.slice(2);
const run = args[0] === '--bench' ? bench(args[1], args[2], Number(args[3] || 3)) : reference(args[0], args[1], args[2]);
run.catch((e) => {
  process.stderr.write(`hf_reference: ${e && e.message ? e.message : e}\n`);
  process.exit(2);
});
