// End-to-end test of `rlhf annotate web` in headless Debian chromium (puppeteer-core; no browser
// is downloaded). Real processes: `rlhf annotate serve` on a real SQLite file and Unix socket,
// `rlhf annotate web` on a loopback port, and the page driven with keystrokes.
//
//   node browser_test.mjs --rlhf build/rlhf --chromium /usr/bin/chromium --out build/annotation_web_test
//
// Checks: sign-in; three tasks ranked by keys (a tie, none-acceptable, a plain ranking); undo and
// re-rank; the SQLite store (via `rlhf annotate export`) holds exactly those judgements; answers with
// <script> / <img onerror> are shown as text and run nothing; requests without the CSRF token, with
// another annotator's cookie, a foreign Host or an oversize body are refused; the annotation server
// restarted mid-task and the page carries on with the picks kept; the token never in a log.
// Writes OUT/annotate-web.png (docs/images/annotate-web.png is a copy).
import {spawn, spawnSync} from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import puppeteer from 'puppeteer-core';

const args = Object.fromEntries(
    process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []));
for (const need of ['rlhf', 'chromium', 'out'])
  if (!args[need]) throw new Error(`missing --${need} (usage: see the top of ${process.argv[1]})`);

const out = path.resolve(args.out);
fs.rmSync(out, {recursive: true, force: true});
fs.mkdirSync(out, {recursive: true});
const db = path.join(out, 'ann.db');
const socket = path.join(out, 'ann.sock');
const logs = {serve: '', web: ''};
const children = new Set();
let failures = 0;

function check(ok, what) {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
  if (!ok) failures++;
}

function rlhfSync(...argv) {
  const r = spawnSync(args.rlhf, argv, {encoding: 'utf8'});
  if (r.status !== 0) throw new Error(`rlhf ${argv.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

function start(name, argv) {
  const child = spawn(args.rlhf, argv, {stdio: ['ignore', 'pipe', 'pipe']});
  children.add(child);
  child.exited = new Promise((ok) => child.on('exit', () => { children.delete(child); ok(); }));
  const keep = (d) => { logs[name] += d.toString(); };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  return child;
}

async function waitFor(what, test, seconds = 30) {
  const end = Date.now() + seconds * 1000;
  for (;;) {
    const v = await test();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${seconds} s waiting for ${what}`);
    await new Promise((ok) => setTimeout(ok, 50));
  }
}

async function startAnnotationServer() {
  const child = start('serve', ['annotate', 'serve', '--db', db, '--socket', socket]);
  await waitFor('the annotation server socket', () => fs.existsSync(socket));
  return child;
}

async function stopChild(child) {
  child.kill('SIGTERM');
  await child.exited;
}

// One HTTP request from outside the browser (so headers such as Host can be set).
function request(port, method, urlPath, {headers = {}, body = ''} = {}) {
  return new Promise((ok, fail) => {
    const req = http.request({host: '127.0.0.1', port, method, path: urlPath,
      headers: {'Content-Length': Buffer.byteLength(body), ...headers}}, (res) => {
      let data = '';
      res.on('data', (d) => { data += d; });
      res.on('end', () => {
        let json = {};
        try { json = JSON.parse(data); } catch (e) { /* not JSON */ }
        ok({status: res.statusCode, headers: res.headers, json});
      });
    });
    req.on('error', fail);
    req.end(body);
  });
}

const tasks = [
  {prompt: 'How do I reverse a list in Python? Show a short example.',
    answers: [
      'Use slicing:\n\n```python\nitems = [1, 2, 3]\nreversed_items = items[::-1]\nprint(reversed_items)  # [3, 2, 1]\n```\n\nThis makes a new list; `items.reverse()` reverses in place.',
      'Two common ways:\n\n1. `items.reverse()` reverses the list in place and returns None.\n2. `list(reversed(items))` returns a new list:\n\n```python\nfor x in reversed(items):\n    print(x)\n```',
      'You can call items.sort(reverse=True), which reverses the list.']},
  {prompt: 'Write a haiku about the sea.',
    answers: ['The sea is big.', 'I cannot help with that.', 'Waves waves waves waves waves.']},
  {prompt: 'Reply with some HTML <b>bold</b> <script>window.__xss = "prompt"; alert("prompt")</script>',
    answers: ['<script>window.__xss = 1; alert(1)</script>plain?',
      '<img src=x onerror="window.__xss = 2; alert(2)">',
      'Indented code:\n    if (a < b) {\n        return "<i>" + a;\n    }']},
];
fs.writeFileSync(path.join(out, 'tasks.jsonl'), tasks.map((t) => JSON.stringify(t)).join('\n') + '\n');

const t0 = Date.now();
let browser;
try {
  rlhfSync('annotate', 'add-tasks', '--db', db, '--input', path.join(out, 'tasks.jsonl'), '--overlap', '1');
  const aliceToken = rlhfSync('annotate', 'add-annotator', '--db', db, '--name', 'alice').trim().split('\n').pop();
  const bobToken = rlhfSync('annotate', 'add-annotator', '--db', db, '--name', 'bob').trim().split('\n').pop();
  let server = await startAnnotationServer();
  const web = start('web', ['annotate', 'web', '--socket', socket, '--listen', '127.0.0.1:0', '--retry-seconds', '1']);
  const port = Number((await waitFor('the web server address',
      () => /http:\/\/127\.0\.0\.1:(\d+)\//.exec(logs.web)))[1]);
  const base = `http://127.0.0.1:${port}`;

  browser = await puppeteer.launch({
    executablePath: args.chromium, headless: true, userDataDir: path.join(out, 'profile'),
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'],
  });
  const page = await browser.newPage();
  await page.setViewport({width: 1400, height: 900});
  const dialogs = [];
  page.on('dialog', async (d) => { dialogs.push(d.message()); await d.dismiss(); });
  page.on('pageerror', (e) => { check(false, `no script error on the page (${e.message})`); });
  const taskId = () => page.$eval('#work', (w) => (w.hidden ? null : Number(w.dataset.taskId)));
  const waitTask = (id) => waitFor(`task ${id} on the page`, async () => (await taskId()) === id);
  const order = () => page.$eval('#order', (e) => e.textContent);
  const press = async (...keys) => { for (const k of keys) await page.keyboard.press(k); };

  // Sign in.
  await page.goto(base + '/');
  await page.waitForSelector('#token', {visible: true});
  await page.type('#token', 'not-a-token');
  await press('Enter');
  await waitFor('the refusal', () => page.$eval('#signin-error', (e) => /not known/.test(e.textContent)));
  check(true, 'a wrong token is refused on the page');
  await page.$eval('#token', (e) => { e.value = ''; });
  await page.type('#token', aliceToken);
  await press('Enter');
  await waitTask(1);
  check(await page.$eval('#annotator', (e) => e.textContent) === 'alice', 'signed in as alice');
  check(await page.evaluate(() => document.cookie) === '', 'the session cookie is not readable by scripts (HttpOnly)');
  check(!page.url().includes(aliceToken), 'the token is not in the URL');

  // Task 1: B = C > A, with a screenshot of the order being built.
  const tops = await page.$$eval('.answer', (cards) => cards.map((c) => c.getBoundingClientRect().top));
  check(tops.length === 3 && tops.every((t) => t === tops[0]), 'answers side by side on a wide screen');
  await press('2', 'Equal', '3');
  check(await order() === 'B = C', `order shown as built: "${await order()}"`);
  await page.screenshot({path: path.join(out, 'annotate-web.png')});
  await press('1', 'Backspace');
  check(await order() === 'B = C', 'Backspace takes back the last pick');
  await press('1', 'Enter');
  await waitTask(2);
  check(/done 1 /.test(await page.$eval('#progress', (e) => e.textContent)), 'progress counts the submission');

  // Task 2: none acceptable.
  await press('n');
  await waitTask(3);

  // Task 3: untrusted HTML shown as text.
  const texts = await page.$$eval('#answers .text', (els) => els.map((e) => e.textContent));
  check(texts[0].includes('<script>window.__xss = 1') && texts[1].includes('<img src=x onerror='),
      'the <script> and <img onerror> answers are shown as text');
  check(texts[2].includes('\n    if (a < b) {\n        return'), 'line breaks and indentation are kept');
  check(await page.evaluate(() => document.querySelectorAll('#prompt *:not(span):not(pre), #answers .text *:not(span):not(pre)').length) === 0,
      'no element made from the answers or the prompt');
  check(await page.evaluate(() => window.__xss === undefined) && dialogs.length === 0, 'no script from the answers ran');

  // Refusals: no CSRF token; another annotator's cookie; a foreign Host; an oversize body.
  const noCsrf = await page.evaluate(async () => (await fetch('/api/task', {method: 'POST',
    headers: {'Content-Type': 'application/json'}, body: '{}'})).status);
  check(noCsrf === 403, `a request without the CSRF token is refused (${noCsrf})`);
  const bob = await request(port, 'POST', '/api/signin', {headers: {'Content-Type': 'application/json', Host: `127.0.0.1:${port}`},
    body: JSON.stringify({token: bobToken})});
  const cookieHeader = String(bob.headers['set-cookie']);
  check(bob.status === 200 && /HttpOnly/.test(cookieHeader) && /SameSite=Strict/.test(cookieHeader),
      `the session cookie is HttpOnly and SameSite=Strict (${cookieHeader.replace(/=[0-9a-f]{64}/, '=…')})`);
  const bobCookie = cookieHeader.split(';')[0];
  const aliceCsrf = await page.evaluate(async () => (await (await fetch('/api/session')).json()).csrf);
  const submitTask3 = JSON.stringify({task_id: 3, groups: [[0], [1], [2]]});
  const jsonHost = {'Content-Type': 'application/json', Host: `127.0.0.1:${port}`};
  const crossed = await request(port, 'POST', '/api/submit', {headers: {...jsonHost, Cookie: bobCookie, 'X-CSRF-Token': aliceCsrf}, body: submitTask3});
  check(crossed.status === 403, `bob's cookie with alice's CSRF token is refused (${crossed.status})`);
  const bobsOwn = await request(port, 'POST', '/api/submit', {headers: {...jsonHost, Cookie: bobCookie, 'X-CSRF-Token': bob.json.csrf}, body: submitTask3});
  check(bobsOwn.status === 409 && bobsOwn.json.error === 'NOT_LEASED', `bob cannot submit alice's task (${bobsOwn.status} ${bobsOwn.json.error})`);
  const foreign = await request(port, 'GET', '/api/session', {headers: {Host: 'evil.example'}});
  check(foreign.status === 403, `a foreign Host header is refused (${foreign.status})`);
  const big = await request(port, 'POST', '/api/signin', {headers: jsonHost, body: 'x'.repeat(200 * 1024)});
  check(big.status === 413, `an oversize body is refused (${big.status})`);
  const form = await request(port, 'POST', '/api/signin', {headers: {...jsonHost, 'Content-Type': 'application/x-www-form-urlencoded'}, body: 'token=x'});
  check(form.status === 415, `a form post (cross-site style) is refused (${form.status})`);

  // Task 3: A > B > C, then undo it.
  await press('1', '2', '3', 'Enter');
  await waitFor('the end of the queue', () => page.evaluate(() => document.body.dataset.state === 'done'));
  await press('u');
  await waitTask(3);
  check(await order() === '(nothing picked yet)', 'undo shows task 3 again');

  // Restart the annotation server mid-task: C > A picked, server stopped, B + Enter typed.
  await press('3', '1');
  await stopChild(server);
  await press('2', 'Enter');
  await page.waitForSelector('#banner', {visible: true, timeout: 20000});
  const bannerText = await page.$eval('#banner', (e) => e.textContent);
  check(/down or restarting/.test(bannerText), `banner while the server is down: "${bannerText}"`);
  check(await order() === 'C > A > B', 'the picks are kept while the server is down');
  server = await startAnnotationServer();
  await waitFor('the page to carry on', () => page.evaluate(() => document.body.dataset.state === 'done'));
  check(await page.$eval('#banner', (e) => e.hidden), 'the banner goes away when the server is back');

  // Sign out: the cookie no longer works.
  await page.click('#signout');
  await page.waitForSelector('#token', {visible: true});
  const after = await page.evaluate(async () => (await fetch('/api/session')).status);
  check(after === 401, `signed out (${after})`);

  // The store holds exactly alice's three judgements.
  const exported = path.join(out, 'rankings.jsonl');
  rlhfSync('annotate', 'export', '--db', db, '--format', 'rankings', '--output', exported);
  const rows = fs.readFileSync(exported, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l))
      .sort((a, b) => a.task_id - b.task_id)
      .map((r) => ({task: r.task_id, who: r.annotator, groups: r.groups, none: r.none_acceptable, skipped: r.skipped}));
  const want = [
    {task: 1, who: 'alice', groups: [[1, 2], [0]], none: false, skipped: false},
    {task: 2, who: 'alice', groups: [], none: true, skipped: false},
    {task: 3, who: 'alice', groups: [[2], [0], [1]], none: false, skipped: false},
  ];
  check(JSON.stringify(rows) === JSON.stringify(want), `the store holds exactly the judgements: ${JSON.stringify(rows)}`);

  await stopChild(web);
  await stopChild(server);
  check(!logs.web.includes(aliceToken) && !logs.serve.includes(aliceToken) && !logs.web.includes(bobToken),
      'no token in the logs');
} catch (e) {
  console.log(`FAIL ${e.stack}`);
  failures++;
} finally {
  if (browser) await browser.close();
  for (const c of children) c.kill('SIGKILL');
  if (failures) console.log(`--- rlhf annotate web log:\n${logs.web}\n--- rlhf annotate serve log:\n${logs.serve}`);
}
console.log(`${failures ? 'FAILED' : 'passed'} in ${((Date.now() - t0) / 1000).toFixed(1)} s` +
    `; screenshot: ${path.join(out, 'annotate-web.png')}`);
process.exit(failures ? 1 : 0);
