// The `rlhf annotate web` page. Talks JSON to the relay (annotation/web_relay.h). Model output is
// untrusted: every text from the server goes into the page through textContent, never as HTML.
'use strict';

const $ = (id) => document.getElementById(id);
const LETTERS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ';
const RETRY_MS = 1500;
const SESSION_ENDED = 'Your session ended (it expired, the relay restarted, or your token was ' +
  'revoked); sign in again.';

const state = {
  csrf: '',
  task: null,        // {id, prompt, answers, lease_seconds_left}
  shownAt: 0,        // performance.now() when the task was shown
  leaseDeadline: 0,  // performance.now() when the lease ends
  groups: [],        // picks so far: groups of answer indices, best first
  tieNext: false,    // the next pick joins the last group
  busy: false,       // a request is in flight (or waiting to be retried)
  pollTimer: 0,
};

// ---- talking to the relay -------------------------------------------------------------------

// POST/GET to the relay. Resolves {status, data}; status 0 when the relay itself does not answer.
async function api(method, path, body) {
  const init = {method, headers: {}, credentials: 'same-origin'};
  if (method === 'POST') {
    init.headers['Content-Type'] = 'application/json';
    init.headers['X-CSRF-Token'] = state.csrf;
    init.body = JSON.stringify(body || {});
  }
  try {
    const res = await fetch(path, init);
    let data = {};
    try { data = await res.json(); } catch (e) { /* empty body */ }
    return {status: res.status, data};
  } catch (e) {
    return {status: 0, data: {error: 'RELAY_DOWN',
      message: 'This page\'s server (rlhf annotate web) does not answer. Retrying...'}};
  }
}

// Down, or busy (429 BUSY: too many requests of this session waiting in the relay): retry.
function isDown(r) {
  return r.status === 0 || r.status === 503 && r.data.error !== 'TOO_MANY_SESSIONS' ||
    r.status === 429 && r.data.error === 'BUSY';
}

// Sends a request that is safe to repeat (task, submit) until the annotation server answers;
// shows the banner meanwhile. Nothing the annotator picked is touched.
async function sendUntilUp(path, body) {
  state.busy = true;
  setButtons();
  for (;;) {
    const r = await api('POST', path, body);
    if (!isDown(r)) {
      hideBanner();
      state.busy = false;
      setButtons();
      return r;
    }
    showBanner(r.data.message || 'The annotation server is down or restarting. Retrying...');
    await new Promise((ok) => setTimeout(ok, RETRY_MS));
  }
}

function showBanner(text) { const b = $('banner'); b.textContent = text; b.hidden = false; }
function hideBanner() { $('banner').hidden = true; }

// ---- screens ----------------------------------------------------------------------------------

function show(screen) {
  for (const id of ['signin', 'work', 'done']) $(id).hidden = id !== screen;
  document.body.dataset.state = screen;
}

function showSignIn(why) {
  state.csrf = '';
  state.task = null;
  $('who').hidden = true;
  $('progress').textContent = '';
  $('lease').textContent = '';
  $('signin-error').textContent = why || '';
  show('signin');
  $('token').focus();
}

function signedIn(data) {
  state.csrf = data.csrf;
  $('annotator').textContent = data.annotator;
  $('who').hidden = false;
  $('token').value = '';
  loadTask();
}

async function signIn(event) {
  event.preventDefault();
  const token = $('token').value.trim();
  if (!token) return;
  $('signin-error').textContent = 'Signing in...';
  const r = await api('POST', '/api/signin', {token});
  if (r.status === 200) return signedIn(r.data);
  if (r.status === 401) {
    $('signin-error').textContent = 'That token is not known to the annotation server (or it was ' +
      'revoked). Check it and try again.';
  } else if (isDown(r)) {
    $('signin-error').textContent = 'The annotation server is not running (or is restarting). ' +
      'Try again in a moment.';
  } else {
    $('signin-error').textContent = r.data.message || 'Sign-in failed (HTTP ' + r.status + ').';
  }
}

async function signOut() {
  await api('POST', '/api/signout');
  showSignIn('Signed out.');
}

// ---- tasks ------------------------------------------------------------------------------------

async function loadTask() {
  clearTimeout(state.pollTimer);
  const r = await sendUntilUp('/api/task');
  handleTaskAnswer(r);
}

// Handles any answer that carries {task | no_task, progress}.
function handleTaskAnswer(r) {
  if (r.status === 401 || (r.status === 403 && r.data.error === 'CSRF'))
    return showSignIn(SESSION_ENDED);
  if (r.status !== 200) return say(r.data.message || 'Error (HTTP ' + r.status + ')', true);
  if (r.data.progress) showProgress(r.data.progress);
  if (r.data.task) return showTask(r.data.task);
  state.task = null;
  $('lease').textContent = '';
  const wait = r.data.no_task ? r.data.no_task.retry_after_seconds : 0;
  show('done');
  if (wait > 0) {
    $('done-title').textContent = 'Waiting for tasks';
    $('done-text').textContent = 'The remaining tasks are held by other annotators; this page ' +
      'checks again by itself.';
    state.pollTimer = setTimeout(loadTask, Math.min(wait, 5) * 1000);
  } else {
    $('done-title').textContent = 'No tasks left for you. Thank you!';
    $('done-text').textContent = 'Press u to undo your last submission, or close this page.';
  }
}

function showProgress(p) {
  $('progress').textContent = 'done ' + p.done + ' · remaining ' + p.remaining +
    (p.done ? ' · median ' + p.median_seconds.toFixed(1) + ' s per task' : '');
}

function showTask(task) {
  const same = state.task && state.task.id === task.id;
  state.task = task;
  state.leaseDeadline = performance.now() + task.lease_seconds_left * 1000;
  if (!same) {
    state.groups = [];
    state.tieNext = false;
    state.shownAt = performance.now();
    renderText($('prompt'), task.prompt);
    renderAnswers(task.answers);
  }
  $('work').dataset.taskId = String(task.id);
  show('work');
  closeFlag();
  renderOrder();
  tickLease();
}

// Writes `text` into `el` as text: fenced code blocks (```) become <pre>, everything else keeps
// its line breaks (CSS white-space: pre-wrap). Never interprets HTML.
function renderText(el, text) {
  el.replaceChildren();
  const parts = text.split(/^```[^\n]*\n?/m);
  parts.forEach((part, i) => {
    if (!part) return;
    const node = document.createElement(i % 2 ? 'pre' : 'span');
    node.textContent = i % 2 ? part.replace(/\n$/, '') : part;
    el.appendChild(node);
  });
}

function renderAnswers(answers) {
  const box = $('answers');
  box.replaceChildren();
  answers.forEach((answer, i) => {
    const card = document.createElement('article');
    card.className = 'answer';
    card.dataset.index = String(i);
    const head = document.createElement('header');
    const name = document.createElement('span');
    name.className = 'name';
    name.textContent = LETTERS[i];
    const pick = document.createElement('button');
    pick.type = 'button';
    pick.className = 'pick';
    pick.textContent = i < 9 ? 'Pick (' + (i + 1) + ')' : 'Pick';
    pick.addEventListener('click', () => pickAnswer(i));
    const place = document.createElement('span');
    place.className = 'place';
    head.append(name, pick, place);
    const body = document.createElement('div');
    body.className = 'text';
    renderText(body, answer);
    card.append(head, body);
    box.appendChild(card);
  });
}

// ---- building the order -----------------------------------------------------------------------

function picked(i) { return state.groups.some((g) => g.includes(i)); }
function pickedCount() { return state.groups.reduce((n, g) => n + g.length, 0); }

function pickAnswer(i) {
  if (!state.task || state.busy || i >= state.task.answers.length) return;
  if (picked(i)) return say(LETTERS[i] + ' is already in your order (Backspace takes back).');
  if (state.tieNext && state.groups.length) state.groups[state.groups.length - 1].push(i);
  else state.groups.push([i]);
  state.tieNext = false;
  say(pickedCount() === state.task.answers.length ? 'All picked: press Enter to submit.' : '');
  renderOrder();
}

function tieWithPrevious() {
  if (!state.task || state.busy) return;
  if (!state.groups.length) return say('Pick an answer first; = ties the next pick with it.');
  state.tieNext = true;
  say('The next pick ties with ' + LETTERS[lastPick()] + '.');
  renderOrder();
}

function lastPick() { const g = state.groups[state.groups.length - 1]; return g[g.length - 1]; }

function takeBack() {
  if (!state.task || state.busy) return;
  if (state.tieNext) state.tieNext = false;
  else if (state.groups.length) {
    const g = state.groups[state.groups.length - 1];
    g.pop();
    if (!g.length) state.groups.pop();
  }
  say('');
  renderOrder();
}

function orderText() {
  if (!state.groups.length) return '(nothing picked yet)';
  let s = state.groups.map((g) => g.map((i) => LETTERS[i]).join(' = ')).join(' > ');
  if (state.tieNext) s += ' = …';
  return s;
}

function renderOrder() {
  $('order').textContent = orderText();
  const places = new Map();
  let place = 1;
  for (const g of state.groups) {
    for (const i of g) places.set(i, g.length > 1 ? 'tied ' + ordinal(place) : ordinal(place));
    place += g.length;
  }
  for (const card of $('answers').children) {
    const i = Number(card.dataset.index);
    card.classList.toggle('picked', places.has(i));
    card.querySelector('.place').textContent = places.get(i) || '';
    card.querySelector('.pick').disabled = places.has(i) || state.busy;
  }
  setButtons();
}

function ordinal(n) {
  const s = ['th', 'st', 'nd', 'rd'];
  const v = n % 100;
  return n + (s[(v - 20) % 10] || s[v] || s[0]);
}

function setButtons() {
  const working = !!state.task && !state.busy;
  for (const id of ['tie', 'takeback', 'submit', 'none', 'skip', 'flag'])
    $(id).disabled = !working;
  $('undo').disabled = state.busy;
}

function say(text, isError) {
  const m = $('message');
  m.textContent = text;
  m.classList.toggle('error', !!isError);
}

// ---- submitting -------------------------------------------------------------------------------

function submitRanking() {
  if (!state.task || state.busy) return;
  const n = state.task.answers.length;
  if (pickedCount() < n) {
    const missing = [...Array(n).keys()].filter((i) => !picked(i)).map((i) => LETTERS[i]);
    return say('Rank every answer first; not picked yet: ' + missing.join(', ') + '.', true);
  }
  send({groups: state.groups}, 'Saved ' + orderText() + ' (u undoes it).');
}

function send(judgement, savedText) {
  const task = state.task;
  const body = Object.assign({task_id: task.id,
    seconds: (performance.now() - state.shownAt) / 1000}, judgement);
  say('Saving...');
  sendUntilUp('/api/submit', body).then((r) => {
    if (r.status === 200 || (r.status === 409 && r.data.error === 'ALREADY_SUBMITTED')) {
      say(savedText);
      if (r.status === 200) return handleTaskAnswer(r);
      return loadTask();
    }
    if (r.status === 409 && ['TASK_FULL', 'NOT_LEASED', 'UNKNOWN_TASK'].includes(r.data.error)) {
      say('Not saved: ' + r.data.message, true);
      return loadTask();
    }
    if (r.status === 401 || r.status === 403) return showSignIn(SESSION_ENDED);
    say('Not saved: ' + (r.data.message || 'HTTP ' + r.status), true);
  });
}

function openFlag() {
  if (!state.task || state.busy) return;
  $('flag-form').hidden = false;
  $('flag-reason').value = '';
  $('flag-reason').focus();
}

function closeFlag() {
  $('flag-form').hidden = true;
  if (document.activeElement === $('flag-reason')) $('flag-reason').blur();
}

function submitFlag(event) {
  event.preventDefault();
  const reason = $('flag-reason').value.trim();
  if (!reason) return say('Say what is wrong with the task, then press Enter.', true);
  closeFlag();
  send({flag: reason}, 'Flagged the task (u undoes it).');
}

async function undo() {
  if (state.busy) return;
  state.busy = true;
  say('Undoing...');
  const r = await api('POST', '/api/undo');
  state.busy = false;
  if (r.status === 200) {
    state.task = null;
    await loadTask();
    return say('Undid your last submission (task ' + r.data.undone.task_id + '): rank it again.');
  }
  if (r.status === 401) return showSignIn(SESSION_ENDED);
  if (isDown(r)) showBanner(r.data.message);
  say('Cannot undo: ' + (r.data.message || 'HTTP ' + r.status), true);
  setButtons();
}

function tickLease() {
  if (!state.task) return;
  const left = Math.round((state.leaseDeadline - performance.now()) / 1000);
  $('lease').textContent = left > 0 ?
    '· task reserved for you for ' + Math.floor(left / 60) + ':' + String(left % 60).padStart(2, '0') :
    '· reservation expired: submit anyway; it is saved if the task still needs a ranking';
}

// ---- keys -------------------------------------------------------------------------------------

function onKey(e) {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (document.body.dataset.state === 'signin') return;
  const target = e.target;
  if (target && (target.tagName === 'INPUT' || target.tagName === 'TEXTAREA')) {
    if (e.key === 'Escape') closeFlag();
    return;
  }
  const k = e.key;
  let handled = true;
  if (k >= '1' && k <= '9') pickAnswer(Number(k) - 1);
  else if (k === '=') tieWithPrevious();
  else if (k === 'Backspace') takeBack();
  else if (k === 'Enter') submitRanking();
  else if (k === 'n') { if (state.task && !state.busy) send({none_acceptable: true}, 'Saved: none acceptable (u undoes it).'); }
  else if (k === 's') { if (state.task && !state.busy) send({skip: true}, 'Skipped (u undoes it).'); }
  else if (k === 'f') openFlag();
  else if (k === 'u') undo();
  else if (k === '?') $('help').open = !$('help').open;
  else handled = false;
  if (handled) e.preventDefault();
}

// ---- start ------------------------------------------------------------------------------------

async function start() {
  $('signin-form').addEventListener('submit', signIn);
  $('signout').addEventListener('click', signOut);
  $('tie').addEventListener('click', tieWithPrevious);
  $('takeback').addEventListener('click', takeBack);
  $('submit').addEventListener('click', submitRanking);
  $('none').addEventListener('click', () => state.task && !state.busy &&
    send({none_acceptable: true}, 'Saved: none acceptable (u undoes it).'));
  $('skip').addEventListener('click', () => state.task && !state.busy && send({skip: true}, 'Skipped (u undoes it).'));
  $('flag').addEventListener('click', openFlag);
  $('flag-form').addEventListener('submit', submitFlag);
  $('flag-cancel').addEventListener('click', closeFlag);
  $('undo').addEventListener('click', undo);
  document.addEventListener('keydown', onKey);
  setInterval(tickLease, 1000);
  const r = await api('GET', '/api/session');
  if (r.status === 200) signedIn(r.data);
  else showSignIn('');
}

document.addEventListener('DOMContentLoaded', start);
