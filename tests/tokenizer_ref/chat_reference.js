#!/usr/bin/env node
// Reference renderings of chat templates by @huggingface/jinja (the Jinja engine transformers.js
// renders chat templates with) for the C++ ChatTemplate tests. Used only by tests, never at run
// time.
//
// Usage: node chat_reference.js INPUT_JSONL OUTPUT_JSONL
//   Each input line is {"config": PATH_OF_A_TOKENIZER_CONFIG_JSON, "messages": [..],
//   "add_generation_prompt": BOOL, "extra": {..}}. The template is the config's chat_template (a
//   string, or the "default" of a list of {name, template}); the special tokens (bos_token,
//   eos_token, unk_token, sep_token, pad_token, cls_token, mask_token) come from the config (a
//   string or {"content": ..}; left undefined when null, empty or absent), as transformers(.js)
//   passes them. The variables are set in the order messages, add_generation_prompt, the special
//   tokens, then extra's keys (which override). Each output line (same order) is {"text": ".."} or {"error": ".."}.
//   A line {"source": TEMPLATE, "vars": {..}} renders TEMPLATE with exactly those variables.
//   Exits 2 with a message on stderr when @huggingface/jinja is missing or a line is bad.
'use strict';
const fs = require('fs');

let Template;
try {
  ({ Template } = require('@huggingface/jinja'));
} catch (e) {
  process.stderr.write(`chat_reference: cannot load '@huggingface/jinja' (run scripts/bootstrap.sh): ${e.message}\n`);
  process.exit(2);
}

const SPECIAL_TOKENS = ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token'];

function specialToken(v) {
  if (v !== null && typeof v === 'object') return v.content;
  return v;
}

function templateOf(config) {
  const t = config.chat_template;
  if (Array.isArray(t)) return t.find((e) => e.name === 'default').template;
  return t;
}

const cache = new Map();
function load(path) {
  if (!cache.has(path)) {
    const config = JSON.parse(fs.readFileSync(path, 'utf8'));
    let template = null;
    let error = null;
    try {
      template = new Template(templateOf(config));
    } catch (e) {
      error = e.message;
    }
    cache.set(path, { config, template, error });
  }
  return cache.get(path);
}

function renderSource(item) {
  try {
    return { text: new Template(item.source).render(item.vars || {}) };
  } catch (e) {
    return { error: e.message };
  }
}

function render(item) {
  if ('source' in item) return renderSource(item);
  const { config, template, error } = load(item.config);
  if (error !== null) return { error };
  const vars = { messages: item.messages, add_generation_prompt: !!item.add_generation_prompt };
  for (const key of SPECIAL_TOKENS) {
    const token = specialToken(config[key]);
    if (token) vars[key] = token;
  }
  Object.assign(vars, item.extra || {});
  try {
    return { text: template.render(vars) };
  } catch (e) {
    return { error: e.message };
  }
}

const [inPath, outPath] = process.argv.slice(2);
if (!inPath || !outPath) {
  process.stderr.write('usage: node chat_reference.js INPUT_JSONL OUTPUT_JSONL\n');
  process.exit(2);
}
const out = [];
fs.readFileSync(inPath, 'utf8').split('\n').filter((l) => l.length > 0).forEach((l, i) => {
  let item;
  try {
    item = JSON.parse(l);
  } catch (e) {
    process.stderr.write(`chat_reference: ${inPath}:${i + 1}: ${e.message}\n`);
    process.exit(2);
  }
  out.push(JSON.stringify(render(item)));
});
fs.writeFileSync(outPath, out.map((l) => l + '\n').join(''));
