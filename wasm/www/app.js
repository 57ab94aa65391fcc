// The page: picks files, maps the patch, verifies (and optionally saves) in
// a Web Worker (worker.js) with the wasm engine, and shows the header,
// progress, a verdict and a picture.
//
// Rules the page keeps (issue 14):
// - the main thread never runs the engine: it answers at once whatever the
//   patch declares, and Cancel terminates the worker;
// - the inputs are locked while a check runs, and a change cancels it;
// - nothing is written where the user can see it before the whole patch
//   verified: "Verify, then save" verifies into the origin-private file
//   system, and asks where to save only after every check passed;
// - any red check makes the verdict red.

import { load, mapPatch, version, looksLikePatch, patchLengthProblem } from './anypatch.js';

const $ = (id) => document.getElementById(id);
const KINDS = [
  { name: 'unchanged', label: 'unchanged (copied from the same place)', color: '--unchanged' },
  { name: 'moved', label: 'moved (copied from elsewhere in the old image)', color: '--moved' },
  { name: 'data', label: 'changed (new data in the patch)', color: '--data' },
  { name: 'zero', label: 'zeroed', color: '--zero' },
];
const BUCKETS = 4096;
const COLUMNS = 128;
const GIB = 2 ** 30;
const STAGING = 'anypatch-staging-';
const CHECKS = ['check-base', 'check-patch', 'check-result', 'check-signature'];
const INPUTS = ['old-file', 'patch-file', 'new-file', 'new-hash', 'key-file', 'max-size'];

let worker = null;
let current = null; // the run in progress: { id, finish }
let runs = 0; // finished runs and saves, in data-runs and data-saves (tests wait on them)
let saves = 0;
let copying = null; // a save in progress: { cancelled }
let busy = false;
let generation = 0; // of input changes
let pending = 0; // input changes being read
let picked = null; // what the picked files tell before any run: { patch, old, header, map, problem }
let staged = null; // a verified image waiting for a place: { name, summary, suggestedName }

function bytes(n) {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return i === 0 ? `${n} bytes` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

function mbps(n, seconds) {
  return seconds > 0 ? `${(n / 1e6 / seconds).toFixed(0)} MB/s` : '';
}

function duration(s) {
  if (s < 60) return `${Math.ceil(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  if (s < 86400 * 2) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  return `${Math.round(s / 86400)} days`;
}

function sentence(text) {
  const t = text.trim();
  return t.charAt(0).toUpperCase() + t.slice(1) + (/[.!?]$/.test(t) ? '' : '.');
}

function setVerdict(kind, text) {
  const v = $('verdict');
  v.dataset.verdict = kind;
  v.textContent = text;
}

function setCheck(id, state, text) {
  const li = $(id);
  li.dataset.state = state;
  li.querySelector('span').textContent = text;
}

function resetChecks() {
  for (const id of CHECKS) setCheck(id, 'pending', 'not checked yet');
  $('progress').value = 0;
  $('throughput').textContent = '';
}

/** The size limit the user set, in bytes, or null when the field is not a positive number. */
function maxNewLen() {
  const gib = Number($('max-size').value);
  return Number.isFinite(gib) && gib > 0 ? Math.min(Math.floor(gib * GIB), Number.MAX_SAFE_INTEGER) : null;
}

function typedHash() {
  const typed = $('new-hash').value.trim().toLowerCase();
  if (!typed) return { hash: null };
  if (!/^[0-9a-f]{64}$/.test(typed)) return { error: 'The expected BLAKE3 must be 64 hex digits (0-9, a-f); it has ' + typed.length + ' characters.' };
  return { hash: typed };
}

/** The engine's (CLI-worded) sentence, rewritten for this page. */
function pageMessage(kind, message, header) {
  let m = message;
  m = m.replace(/; use a newer version of anypatch$/, '; this page is older than the patch: open a newer version of this page, or apply it with a newer applypatch');
  const big = /^refused: the patch makes a (\d+)-byte new file, above the limit of (\d+) bytes/.exec(m);
  if (kind === 'too_large' && big) {
    return `This patch makes a ${bytes(Number(big[1]))} image, above your limit of ${bytes(Number(big[2]))}. Raise “Largest new image to accept” if you trust the patch.`;
  }
  if (/^not an anypatch patch/.test(m)) {
    return 'The file picked as the patch is not an anypatch patch (it does not start with the patch signature bytes). Pick the .anyp file that mkpatch wrote.';
  }
  if (kind === 'wrong_base' && header) {
    return `${sentence(m)} Pick the image this patch was made for: ${bytes(header.old_len)}, BLAKE3 ${header.old_hash.slice(0, 16)}….`;
  }
  return sentence(m);
}

function showHeader(h, signatureText) {
  const rows = [
    ['Format version', h.version],
    ['Old image', `${bytes(h.old_len)} (${h.old_len} bytes)`],
    ['Old BLAKE3', h.old_hash, true],
    ['New image', `${bytes(h.new_len)} (${h.new_len} bytes)`],
    ['New BLAKE3', h.new_hash, true],
    ['Patch', `${bytes(h.patch_len)}, ${h.extent_count} extents, ${h.segment_count} data segments`],
    ['Chunking', `${bytes(h.block_size)} blocks, largest data segment ${bytes(h.segment_max)}, ${h.codec}`],
    ['In place', h.in_place_safe ? 'safe to apply in place' : 'not safe in place (apply to a new file)'],
    ['Producer', h.producer],
    ['Signature', signatureText],
  ];
  const table = $('header-table');
  table.replaceChildren();
  for (const [k, v, mono] of rows) {
    const tr = table.insertRow();
    tr.insertCell().textContent = k;
    const td = tr.insertCell();
    if (mono) { const c = document.createElement('code'); c.textContent = v; td.append(c); } else td.textContent = v;
  }
  $('header-section').hidden = false;
}

/** `verified`: the engine accepted the patch, so a signature that does not verify is of an unknown algorithm. */
function signatureText(h, verified = false) {
  if (!h.signers) return 'checked when you verify';
  if (h.signers.length === 0) return 'unsigned';
  return h.signers.map((s) => {
    if (!s.valid && verified) return `key ${s.key_id}: signed with an algorithm this page cannot check, so it counts as unsigned`;
    const verifies = s.valid ? 'signature verifies' : 'signature does NOT verify';
    const trust = s.trusted ? 'a trusted key' : 'not one of your trusted keys';
    return `key ${s.key_id}: ${verifies}, ${trust}`;
  }).join('; ');
}

function signatureState(h, trustedGiven, verified = false) {
  if (!h || !h.signers) return ['pending', 'not checked'];
  if (h.signers.length === 0) return trustedGiven ? ['bad', 'unsigned, and you required a trusted key'] : ['warn', 'unsigned'];
  if (h.signers.some((s) => s.valid && s.trusted)) return ['ok', signatureText(h, verified)];
  if (!verified && h.signers.some((s) => !s.valid)) return ['bad', signatureText(h)];
  return [trustedGiven ? 'bad' : 'warn', `${signatureText(h, verified)}${trustedGiven ? '' : ' (give a trusted key to require it)'}`];
}

function drawMap(map, newLen) {
  const canvas = $('map');
  const ctx = canvas.getContext('2d');
  const css = getComputedStyle(document.documentElement);
  const colors = KINDS.map((k) => css.getPropertyValue(k.color).trim());
  const n = map.buckets.length / 4;
  const rows = Math.ceil(n / COLUMNS);
  const cell = Math.floor(canvas.width / COLUMNS);
  canvas.height = Math.max(rows * cell, cell);
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  for (let b = 0; b < n; b++) {
    const v = map.buckets.subarray ? map.buckets.subarray(4 * b, 4 * b + 4) : map.buckets.slice(4 * b, 4 * b + 4);
    const total = v[0] + v[1] + v[2] + v[3];
    if (total === 0) continue;
    const x = (b % COLUMNS) * cell;
    const y = Math.floor(b / COLUMNS) * cell;
    ctx.fillStyle = colors[0];
    ctx.fillRect(x, y, cell - 1, cell - 1);
    // Any change shows, however small: the dominant changed kind, stronger the more of the cell it covers.
    let k = 1;
    for (const j of [2, 3]) if (v[j] > v[k]) k = j;
    const changed = v[1] + v[2] + v[3];
    if (changed > 0) {
      ctx.globalAlpha = 0.45 + 0.55 * (changed / total);
      ctx.fillStyle = colors[k];
      ctx.fillRect(x, y, cell - 1, cell - 1);
      ctx.globalAlpha = 1;
    }
  }
  $('map-scale').textContent = `${n} cells in reading order, left to right and top to bottom; each cell is ${bytes(Math.ceil(newLen / Math.max(n, 1)))} of the new image (${map.pages} manifest page${map.pages === 1 ? '' : 's'}).`;
  const legend = $('legend');
  legend.replaceChildren();
  KINDS.forEach((kind, i) => {
    const li = document.createElement('li');
    li.dataset.kind = kind.name;
    const sw = document.createElement('i');
    sw.style.background = colors[i];
    const pct = newLen > 0 ? ((100 * map.totals[i]) / newLen).toFixed(2) : '0';
    li.append(sw, `${kind.label}: ${bytes(map.totals[i])} (${pct}%) in ${map.counts[i]} extent${map.counts[i] === 1 ? '' : 's'}`);
    legend.append(li);
  });
  $('map-section').hidden = false;
}

// ---- what the picked files tell before any run ----------------------------

/**
 * Reads what can be known at once: whether the patch is a patch (or the
 * files are swapped), its header and map, its length against the header,
 * the size limit and the typed expected hash. Returns the first problem
 * as { kind, text }, or null.
 */
async function precheck({ typing = false } = {}) {
  const old = $('old-file').files[0] || null;
  const patch = $('patch-file').files[0] || null;
  if (!patch) return null;
  if (!picked || picked.patch !== patch) {
    // Read once per patch; concurrent checks wait for the same reading.
    picked = { patch, header: null, map: null, problem: null, isPatch: false };
    picked.ready = readPicked(picked);
  }
  await picked.ready;
  if (!picked.isPatch) {
    if (old && (await looksLikePatch(old))) {
      return { kind: 'swapped', text: 'The files look swapped: the one picked as the old image is a patch, and the one picked as the patch is not. Pick them the other way round.' };
    }
    return { kind: 'corrupt_patch', text: pageMessage('corrupt_patch', 'not an anypatch patch', null) };
  }
  if (picked.problem) return picked.problem;
  const h = picked.header;
  const limit = maxNewLen();
  if (limit === null) return { kind: 'failed', text: 'The size limit must be a positive number of GiB.' };
  if (h && h.new_len > limit) {
    return { kind: 'too_large', text: `This patch makes a ${bytes(h.new_len)} image, above your limit of ${bytes(limit)}. Raise “Largest new image to accept” if you trust the patch.` };
  }
  const typed = typedHash();
  // Half-typed is not yet wrong; at Verify it is.
  if (typed.error && !(typing && /^[0-9a-fA-F]{0,63}$/.test($('new-hash').value.trim()))) return { kind: 'failed', text: typed.error };
  if (h && typed.hash && typed.hash !== h.new_hash) {
    return { kind: 'expected_mismatch', text: `This patch makes an image with BLAKE3 ${h.new_hash.slice(0, 16)}…, not the ${typed.hash.slice(0, 16)}… you expect: it is not the patch for the image you want.` };
  }
  if (old && h && old.size !== h.old_len) {
    return { kind: 'wrong_base', text: `Wrong base: the old image is ${bytes(old.size)} (${old.size} bytes), but the patch was made against a ${h.old_len}-byte file. Pick the image this patch was made for (BLAKE3 ${h.old_hash.slice(0, 16)}…).` };
  }
  return null;
}

/** Reads the picked patch's magic, header and map, and shows them. */
async function readPicked(p) {
  p.isPatch = await looksLikePatch(p.patch);
  if (p.isPatch) {
    const { header, map } = await mapPatch(p.patch, BUCKETS);
    p.header = header;
    p.map = map;
    if (map.error) p.problem = { kind: map.error.includes('newer') ? 'unsupported' : 'corrupt_patch', text: pageMessage('corrupt_patch', map.error, header) };
    else if (header) {
      const short = patchLengthProblem(header, p.patch.size);
      if (short) p.problem = { kind: 'corrupt_patch', text: sentence(short) };
    }
  }
  if (picked !== p) return;
  if (p.header) showHeader(p.header, signatureText(p.header));
  else $('header-section').hidden = true;
  if (p.map && !p.map.error && p.header) drawMap(p.map, p.header.new_len);
  else $('map-section').hidden = true;
}

/** Shows what the picked files tell; cancels a run or a waiting save, since the files changed. */
async function onInputsChanged() {
  // Changes come in bursts (several inputs): only the last one's reading is shown.
  const gen = ++generation;
  document.body.dataset.pending = ++pending;
  try {
    await showInputs(gen);
  } finally {
    document.body.dataset.pending = --pending;
  }
}

async function showInputs(gen) {
  if (busy) {
    // The inputs are locked during a run; should a change get through anyway,
    // the run stops rather than end with a verdict about other files.
    picked = null;
    cancel('the files changed while it ran, so it was stopped; press Verify again');
    return;
  }
  await discardStaged();
  resetChecks();
  if (!$('patch-file').files[0]) picked = null;
  const problem = await precheck({ typing: true });
  updateButtons();
  if (busy || gen !== generation) return;
  if (problem) {
    setVerdict(problem.kind, problem.text);
    if (problem.kind === 'corrupt_patch' || problem.kind === 'unsupported') setCheck('check-patch', 'bad', problem.text);
    if (problem.kind === 'expected_mismatch') setCheck('check-result', 'bad', problem.text);
    if (problem.kind === 'wrong_base') setCheck('check-base', 'bad', problem.text);
  } else if (!$('patch-file').files[0]) setVerdict('idle', 'Pick the old image and the patch.');
  else setVerdict('idle', $('old-file').files[0] ? 'Ready: press Verify.' : 'Now pick the old image.');
}

function updateButtons() {
  const ready = !busy && $('old-file').files.length > 0 && $('patch-file').files.length > 0;
  $('verify').disabled = !ready;
  $('save').disabled = !ready || !canStage();
  $('input-set').disabled = busy;
  $('cancel').hidden = !busy;
  $('save-now').hidden = busy || !staged;
}

function canStage() {
  return !!(navigator.storage && navigator.storage.getDirectory && window.Worker);
}

// ---- the worker ----------------------------------------------------------

function startWorker() {
  if (worker) return worker;
  worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  worker.onmessage = ({ data }) => current && current.onMessage(data);
  worker.onerror = (e) => {
    e.preventDefault();
    if (current) current.finish({ type: 'error', kind: 'failed', message: `the checker stopped unexpectedly (${e.message || 'worker error'})` });
  };
  return worker;
}

/** Runs one check in the worker; resolves to its last message ('done', 'error' or 'cancelled'). */
function inWorker(job, onMessage) {
  const id = ++runs;
  return new Promise((resolve) => {
    current = {
      id,
      onMessage: (m) => (m.type === 'done' || m.type === 'error' ? current.finish(m) : onMessage(m)),
      finish: (m) => { if (current && current.id === id) { current = null; resolve(m); } },
    };
    startWorker().postMessage({ type: 'run', ...job });
  });
}

/** Stops the run (or the save) at once. */
function cancel(why = 'you cancelled it') {
  if (current) {
    worker.terminate(); // immediate, even inside an engine step
    worker = null;
    current.finish({ type: 'cancelled', why });
  }
  if (copying) copying.cancelled = why;
}

async function stagingDir() {
  return navigator.storage.getDirectory();
}

/** Removes a staging file; retries while a terminated worker's lock on it lingers. */
async function removeStaging(name) {
  const dir = await stagingDir();
  for (let i = 0; i < 40; i++) {
    try {
      await dir.removeEntry(name);
      return;
    } catch (e) {
      if (e.name === 'NotFoundError') return;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

async function discardStaged() {
  if (!staged) return;
  const { name } = staged;
  staged = null;
  $('save-note').textContent = '';
  updateButtons();
  await removeStaging(name);
}

// ---- a run ---------------------------------------------------------------

function showProgress(m, oldLen, header, t0) {
  const seconds = m.seconds ?? (performance.now() - t0) / 1000;
  if (m.phase === 'expected') {
    const f = m.total > 0 ? m.done / m.total : 1;
    $('progress').value = f;
    $('progress-label').textContent = 'Hashing the expected image';
    $('throughput').textContent = `${(100 * f).toFixed(0)}% · ${bytes(m.done)} of ${bytes(m.total)} · ${mbps(m.done, seconds)}${eta(f, seconds)}`;
    return;
  }
  const newLen = header ? header.new_len : 0;
  const all = oldLen + newLen;
  const f = all > 0 ? Math.min((m.baseChecked + m.newDone) / all, 1) : 0;
  // Speed in image bytes: the old image is read once and the new one made
  // once, so a 2 GiB image checked in 10 s is 215 MB/s, not twice that.
  const image = Math.max(oldLen, newLen);
  $('progress').value = f;
  $('progress-label').textContent = m.baseChecked < oldLen ? 'Checking the old image' : 'Checking the patch and the new image';
  $('throughput').textContent = `${(100 * f).toFixed(f < 0.01 ? 2 : 0)}% of a ${bytes(image)} image · ${mbps(f * image, seconds)}${eta(f, seconds)}`;
}

function eta(f, seconds) {
  if (f <= 0 || seconds < 0.5) return '';
  return ` · about ${duration((seconds * (1 - f)) / f)} left`;
}

async function run(save) {
  const old = $('old-file').files[0];
  const patch = $('patch-file').files[0];
  const newFile = $('new-file').files[0] || null;
  await discardStaged();
  resetChecks();
  const problem = await precheck();
  if (problem) {
    // Known from the header and the inputs: refused before any work or write.
    setVerdict(problem.kind, problem.text);
    if (problem.kind === 'expected_mismatch') setCheck('check-result', 'bad', problem.text);
    if (problem.kind === 'corrupt_patch' || problem.kind === 'unsupported') setCheck('check-patch', 'bad', problem.text);
    if (problem.kind === 'wrong_base') setCheck('check-base', 'bad', problem.text);
    for (const id of CHECKS) if ($(id).dataset.state === 'pending') setCheck(id, 'pending', 'not reached');
    window.anypatchLast = { verdict: problem.kind, message: problem.text };
    $('verdict').focus();
    document.body.dataset.runs = ++runs;
    return;
  }
  const trusted = await Promise.all([...$('key-file').files].map((f) => f.text()));
  const expected = typedHash().hash;
  const stage = save ? `${STAGING}${Date.now()}-${Math.random().toString(36).slice(2)}.img` : null;
  busy = true;
  updateButtons();
  $('cancel').focus(); // the pressed button is now disabled: focus must not fall to the body
  setVerdict('running', save ? 'Verifying (the new image is kept aside until every check passed)…' : 'Verifying…');
  const t0 = performance.now();
  let header = picked && picked.header;
  const end = await inWorker({ old, patch, newFile, expected, trustedKeys: trusted, maxNewLen: maxNewLen(), stage }, (m) => {
    if (m.type === 'header') {
      header = m.header;
      showHeader(header, signatureText(header));
      setCheck('check-signature', ...signatureState(header, trusted.length > 0));
      setCheck('check-base', 'pending', `hashing ${bytes(header.old_len)}…`);
    } else if (m.type === 'phase' && m.phase === 'expected') {
      setCheck('check-result', 'pending', `hashing the expected image ${newFile.name}…`);
    } else if (m.type === 'phase' && m.phase === 'staging') {
      $('progress-label').textContent = 'Preparing room to keep the verified image';
    } else if (m.type === 'progress') {
      showProgress(m, old.size, header, t0);
      if (m.phase === 'apply' && header && m.baseChecked === old.size && $('check-base').dataset.state !== 'ok') {
        setCheck('check-base', 'ok', `matches (BLAKE3 ${header.old_hash})`);
      }
    }
  });
  busy = false;
  if (worker) {
    // A fresh worker for every run: nothing a run leaves behind in one (a
    // pending read of a file, a storage call that still hangs) can stall
    // the next; starting one costs a few milliseconds.
    worker.terminate();
    worker = null;
  }
  try {
    if (end.type === 'done') finishOk(end.result, { save, stage, old, patch, newFile, expected, trusted });
    else {
      if (stage) await removeStaging(stage);
      if (end.type === 'cancelled') finishCancelled(end.why);
      else finishFailed(end, { old, header, trusted });
    }
  } finally {
    updateButtons();
    (staged ? $('save-now') : $('verdict')).focus();
    document.body.dataset.runs = runs;
  }
}

function finishOk(result, { save, stage, old, patch, newFile, expected, trusted }) {
  const { summary, progress, map, header } = result;
  drawMap(map, summary.new_len);
  showHeader(header, signatureText(header, true));
  setCheck('check-base', 'ok', `matches (BLAKE3 ${header.old_hash})`);
  setCheck('check-patch', 'ok', `intact: every page, data segment and the whole-patch hash ${summary.patch_hash.slice(0, 16)}… verify`);
  let resultText = `BLAKE3 ${summary.new_hash} matches the header`;
  if (expected) resultText += ' and the hash you gave';
  if (newFile) resultText += ` and your image ${newFile.name}`;
  setCheck('check-result', 'ok', resultText);
  setCheck('check-signature', ...signatureState(header, trusted.length > 0, true));
  const seconds = progress.seconds;
  const image = Math.max(old.size, summary.new_len);
  $('progress').value = 1;
  $('progress-label').textContent = 'Done';
  $('throughput').textContent = `a ${bytes(image)} image checked in ${seconds.toFixed(1)} s (${mbps(image, seconds)})`;
  // A red row is never under a green verdict.
  const bad = CHECKS.find((id) => $(id).dataset.state === 'bad');
  if (bad) {
    const text = $(bad).querySelector('span').textContent;
    setVerdict('failed', `Not verified: ${text}.`);
    window.anypatchLast = { verdict: 'failed', message: text };
    if (stage) removeStaging(stage);
    return;
  }
  window.anypatchLast = { verdict: 'ok', seconds, summary, oldLen: old.size };
  if (save) {
    staged = { name: stage, summary, suggestedName: patch.name.replace(/\.[^.]*$/, '') + '.new.img' };
    setVerdict('ok', `Verified: this patch fits this image and gives BLAKE3 ${summary.new_hash.slice(0, 16)}… Now choose where to save the new image.`);
    $('save-note').textContent = `The verified image (${bytes(summary.new_len)}) is kept in this browser until you save it or pick other files.`;
  } else {
    setVerdict('ok', `Verified: this patch fits this image and gives BLAKE3 ${summary.new_hash.slice(0, 16)}…`);
  }
}

function finishCancelled(why) {
  for (const id of CHECKS) if ($(id).dataset.state === 'pending') setCheck(id, 'pending', 'not reached');
  $('progress-label').textContent = 'Cancelled';
  setVerdict('cancelled', `Cancelled: ${why}. Nothing was written.`);
  window.anypatchLast = { verdict: 'cancelled', message: why };
}

function finishFailed(e, { old, header, trusted }) {
  const kind = e.kind;
  const h = e.header || header;
  const message = pageMessage(kind, e.message, h);
  if (e.progress) {
    const done = e.progress.baseChecked + e.progress.newDone;
    const all = old.size + (h ? h.new_len : 0);
    $('progress').value = all > 0 ? done / all : 0;
    $('throughput').textContent = `stopped after ${bytes(done)} of ${bytes(all)}`;
  }
  $('progress-label').textContent = 'Stopped';
  for (const id of CHECKS) if ($(id).dataset.state === 'pending') setCheck(id, 'pending', 'not reached');
  if (kind === 'wrong_base') setCheck('check-base', 'bad', message);
  else if (h && e.progress && e.progress.baseChecked === old.size && old.size > 0) setCheck('check-base', 'ok', `matches (BLAKE3 ${h.old_hash})`);
  if ((kind === 'corrupt_patch' && e.message.startsWith('result check failed')) || kind === 'expected_mismatch') setCheck('check-result', 'bad', message);
  else if (kind === 'corrupt_patch' || kind === 'unsupported') setCheck('check-patch', 'bad', message);
  if (kind === 'untrusted') setCheck('check-signature', 'bad', message);
  else if (h) setCheck('check-signature', ...signatureState(h, trusted.length > 0));
  setVerdict(kind, message);
  window.anypatchLast = { verdict: kind, message: e.message };
}

// ---- saving a verified image ----------------------------------------------

/** Asks where to save the verified image (a click, so the picker may open), then copies it there. */
async function saveNow() {
  if (!staged || busy) return;
  const { name, summary, suggestedName } = staged;
  if (!window.showSaveFilePicker) {
    const file = await (await (await stagingDir()).getFileHandle(name)).getFile();
    // No File System Access API: the browser's download saves it.
    const a = document.createElement('a');
    a.href = URL.createObjectURL(file);
    a.download = suggestedName;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 60000);
    setVerdict('ok', `Verified; your browser is saving the new image as ${suggestedName}.`);
    return;
  }
  let target;
  try {
    target = await window.showSaveFilePicker({ suggestedName });
  } catch (e) {
    if (e.name === 'AbortError') {
      // Not a failure: the verified image is still here.
      $('save-note').textContent = 'Not saved yet: the save dialog was closed. Press “Save the new image…” to choose a file.';
      $('save-now').focus();
      document.body.dataset.saves = ++saves;
      return;
    }
    throw e;
  }
  const file = await (await (await stagingDir()).getFileHandle(name)).getFile();
  busy = true;
  copying = { cancelled: null };
  updateButtons();
  $('cancel').focus();
  setVerdict('running', `Saving the verified image as ${target.name}…`);
  let writable = null;
  const t0 = performance.now();
  try {
    writable = await target.createWritable({ keepExistingData: false });
    const reader = file.stream().getReader();
    let done = 0;
    let last = 0;
    for (;;) {
      if (copying.cancelled) throw Object.assign(new Error(copying.cancelled), { name: 'Cancelled' });
      const r = await reader.read();
      if (r.done) break;
      await writable.write({ type: 'write', position: done, data: r.value });
      done += r.value.length;
      if (performance.now() - last > 100) {
        last = performance.now();
        const f = summary.new_len > 0 ? done / summary.new_len : 1;
        const s = (performance.now() - t0) / 1000;
        $('progress').value = f;
        $('progress-label').textContent = 'Saving';
        $('throughput').textContent = `${bytes(done)} of ${bytes(summary.new_len)} · ${mbps(done, s)}${eta(f, s)}`;
      }
    }
    if (done !== summary.new_len) throw new Error(`the kept image is ${done} bytes, not ${summary.new_len}; press Verify and save again`);
    await writable.close();
    writable = null;
    $('progress').value = 1;
    $('progress-label').textContent = 'Saved';
    setVerdict('ok', `Verified and saved as ${target.name}: the new image is ${bytes(summary.new_len)}, BLAKE3 ${summary.new_hash.slice(0, 16)}…`);
    window.anypatchLast = { ...window.anypatchLast, saved: target.name };
    copying = null;
    busy = false;
    await discardStaged();
  } catch (e) {
    if (writable) await writable.abort().catch(() => {});
    // The picker created (or emptied) the file: leave nothing half-written behind.
    if (target.remove) await target.remove().catch(() => {});
    if (e.name === 'Cancelled') setVerdict('cancelled', `Saving cancelled: ${e.message}. The verified image is still kept here; press “Save the new image…” to try again.`);
    else setVerdict('io', `The new image could not be saved (${e.message}). It is still kept here; press “Save the new image…” to try another place.`);
  } finally {
    copying = null;
    busy = false;
    updateButtons();
    (staged ? $('save-now') : $('verdict')).focus();
    document.body.dataset.saves = ++saves;
  }
}

async function main() {
  await load();
  $('version').textContent = `${version()} · BLAKE3 with WebAssembly SIMD`;
  for (const id of INPUTS) $(id).addEventListener(id === 'new-hash' || id === 'max-size' ? 'input' : 'change', () => onInputsChanged().catch(fail));
  $('verify').addEventListener('click', () => run(false).catch(fail));
  $('save').addEventListener('click', () => run(true).catch(fail));
  $('save-now').addEventListener('click', () => saveNow().catch(fail));
  $('cancel').addEventListener('click', () => cancel());
  document.addEventListener('keydown', (e) => { if (e.key === 'Escape' && busy) cancel(); });
  if (!canStage()) $('save-note').textContent = 'This browser cannot keep a verified image aside to save it; Verify still works.';
  // A tab closed before its verified image was saved leaves it in the origin-private file system.
  if (canStage()) {
    const dir = await stagingDir();
    for await (const name of dir.keys()) if (name.startsWith(STAGING)) await dir.removeEntry(name).catch(() => {});
  }
  updateButtons();
  document.body.dataset.ready = 'true';
}

function fail(e) {
  busy = false;
  updateButtons();
  setVerdict('failed', `Something went wrong in the page: ${e.message}`);
  $('verdict').focus();
}

main().catch((e) => setVerdict('failed', `The page could not start: ${e.message}`));
