// The page: picks files, maps the patch, verifies (and optionally saves) with
// the wasm engine, and shows the header, progress, a verdict and a picture.

import { load, applyPatch, mapPatch, hashBlob, version, ApplyFailure } from './anypatch.js';

const $ = (id) => document.getElementById(id);
const KINDS = [
  { name: 'unchanged', label: 'unchanged (copied from the same place)', color: '--unchanged' },
  { name: 'moved', label: 'moved (copied from elsewhere in the old image)', color: '--moved' },
  { name: 'data', label: 'changed (new data in the patch)', color: '--data' },
  { name: 'zero', label: 'zeroed', color: '--zero' },
];
const BUCKETS = 4096;
const COLUMNS = 128;
let busy = false;

function bytes(n) {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return i === 0 ? `${n} bytes` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

function mbps(n, seconds) {
  return seconds > 0 ? `${(n / 1e6 / seconds).toFixed(0)} MB/s` : '';
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
  for (const id of ['check-base', 'check-patch', 'check-result', 'check-signature']) setCheck(id, 'pending', 'not checked yet');
  $('progress').value = 0;
  $('throughput').textContent = '';
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

function signatureText(h) {
  if (!h.signers) return 'checked when you verify';
  if (h.signers.length === 0) return 'unsigned';
  return h.signers.map((s) => {
    const verifies = s.valid ? 'signature verifies' : 'signature does NOT verify';
    const trust = s.trusted ? 'a trusted key' : 'not one of your trusted keys';
    return `key ${s.key_id}: ${verifies}, ${trust}`;
  }).join('; ');
}

function signatureState(h, trustedGiven) {
  if (!h || !h.signers) return ['pending', 'not checked'];
  if (h.signers.length === 0) return trustedGiven ? ['bad', 'unsigned, and you required a trusted key'] : ['warn', 'unsigned'];
  if (h.signers.some((s) => s.valid && s.trusted)) return ['ok', signatureText(h)];
  if (h.signers.some((s) => !s.valid)) return ['bad', signatureText(h)];
  return [trustedGiven ? 'bad' : 'warn', `${signatureText(h)}${trustedGiven ? '' : ' (give a trusted key to require it)'}`];
}

function drawMap(map, newLen) {
  const canvas = $('map');
  const ctx = canvas.getContext('2d');
  const css = getComputedStyle(document.documentElement);
  const colors = KINDS.map((k) => css.getPropertyValue(k.color).trim());
  const n = map.buckets.length / 4;
  const rows = Math.ceil(n / COLUMNS);
  const cell = Math.floor(canvas.width / COLUMNS);
  canvas.height = rows * cell;
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
  $('map-scale').textContent = `${n} cells in reading order, left to right and top to bottom; each cell is ${bytes(Math.ceil(newLen / n))} of the new image (${map.pages} manifest page${map.pages === 1 ? '' : 's'}).`;
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

async function onPatchPicked() {
  const patch = $('patch-file').files[0];
  resetChecks();
  $('header-section').hidden = true;
  $('map-section').hidden = true;
  updateButtons();
  if (!patch) return;
  const { header, map } = await mapPatch(patch, BUCKETS);
  if (header) showHeader(header, signatureText(header));
  if (map.error) {
    setVerdict('corrupt_patch', map.error);
    setCheck('check-patch', 'bad', map.error);
    return;
  }
  drawMap(map, header.new_len);
  setVerdict('idle', $('old-file').files[0] ? 'Ready: press Verify.' : 'Now pick the old image.');
}

function updateButtons() {
  const ready = !busy && $('old-file').files.length > 0 && $('patch-file').files.length > 0;
  $('verify').disabled = !ready;
  $('save').disabled = !ready || !window.showSaveFilePicker;
}

async function readKeys() {
  return Promise.all([...$('key-file').files].map((f) => f.text()));
}

async function expectedHash() {
  const typed = $('new-hash').value.trim().toLowerCase();
  if (typed && !/^[0-9a-f]{64}$/.test(typed)) throw new Error('the expected BLAKE3 must be 64 hex digits');
  return typed || null;
}

async function run(save) {
  const old = $('old-file').files[0];
  const patch = $('patch-file').files[0];
  const newFile = $('new-file').files[0];
  let writable = null;
  if (save) {
    // The picker must open straight from the click, before any await.
    const handle = await window.showSaveFilePicker({ suggestedName: patch.name.replace(/\.[^.]*$/, '') + '.new.img' });
    writable = await handle.createWritable({ keepExistingData: false });
  }
  busy = true;
  updateButtons();
  resetChecks();
  setVerdict('running', save ? 'Verifying and writing the new image…' : 'Verifying…');
  let trusted = [];
  let header = null;
  try {
    trusted = await readKeys();
    const expected = await expectedHash();
    const sink = writable && {
      write: (offset, data) => writable.write({ type: 'write', position: offset, data }),
      // A fresh file reads as zero where nothing was written; the final truncate sizes it.
      zero: () => {},
    };
    const result = await applyPatch({
      old, patch, trustedKeys: trusted, sink, buckets: BUCKETS,
      onHeader: (h) => {
        header = h;
        showHeader(h, signatureText(h));
        setCheck('check-signature', ...signatureState(h, trusted.length > 0));
        setCheck('check-base', 'pending', `hashing ${bytes(h.old_len)}…`);
        if (expected && expected !== h.new_hash) setCheck('check-result', 'bad', `the patch makes ${h.new_hash}, not the expected ${expected}`);
      },
      onProgress: (p) => {
        const done = p.baseChecked + p.newDone;
        const all = old.size + (header ? header.new_len : 0);
        $('progress').value = all > 0 ? done / all : 0;
        $('throughput').textContent = `${bytes(done)} of ${bytes(all)} · ${mbps(done, p.seconds)}`;
        if (header && p.baseChecked === old.size) setCheck('check-base', 'ok', `matches (BLAKE3 ${header.old_hash})`);
      },
    });
    const { summary, progress, map } = result;
    if (writable) {
      await writable.truncate(summary.new_len);
      await writable.close();
      writable = null;
    }
    drawMap(map, summary.new_len);
    setCheck('check-base', 'ok', `matches (BLAKE3 ${header.old_hash})`);
    setCheck('check-patch', 'ok', `intact: every page, data segment and the whole-patch hash ${summary.patch_hash.slice(0, 16)}… verify`);
    let verdict = 'ok';
    let resultText = `BLAKE3 ${summary.new_hash} matches the header`;
    if (expected) {
      if (expected === summary.new_hash) resultText += ' and the hash you gave';
      else { verdict = 'expected_mismatch'; }
    }
    if (newFile) {
      setCheck('check-result', 'pending', `hashing the expected image ${newFile.name}…`);
      const h = await hashBlob(newFile);
      if (h === summary.new_hash) resultText += ` and your image ${newFile.name}`;
      else verdict = 'expected_mismatch';
    }
    const seconds = progress.seconds;
    const speed = `${bytes(old.size + summary.new_len)} processed in ${seconds.toFixed(1)} s (${mbps(old.size + summary.new_len, seconds)})`;
    $('progress').value = 1;
    $('throughput').textContent = speed;
    if (verdict === 'ok') {
      setCheck('check-result', 'ok', resultText);
      setVerdict('ok', save ? `Verified and saved: the new image is ${bytes(summary.new_len)}, BLAKE3 ${summary.new_hash.slice(0, 16)}…` : `Verified: this patch fits this image and gives BLAKE3 ${summary.new_hash.slice(0, 16)}…`);
    } else {
      setCheck('check-result', 'bad', `the patch makes ${summary.new_hash}, which is not the expected image`);
      setVerdict('expected_mismatch', 'The patch is intact and fits, but it does not make the new image you expected.');
    }
    window.anypatchLast = { verdict, seconds, summary, oldLen: old.size };
  } catch (e) {
    if (writable) await writable.abort().catch(() => {});
    const kind = e instanceof ApplyFailure ? e.kind : 'failed';
    const h = e.header || header;
    if (e.progress) {
      const done = e.progress.baseChecked + e.progress.newDone;
      const all = old.size + (h ? h.new_len : 0);
      $('progress').value = all > 0 ? done / all : 0;
      $('throughput').textContent = `stopped after ${bytes(done)} of ${bytes(all)}`;
    }
    for (const id of ['check-base', 'check-patch', 'check-result', 'check-signature']) {
      if ($(id).dataset.state === 'pending') setCheck(id, 'pending', 'not reached');
    }
    if (kind === 'wrong_base') setCheck('check-base', 'bad', e.message);
    else if (h && e.progress && e.progress.baseChecked === old.size) setCheck('check-base', 'ok', `matches (BLAKE3 ${h.old_hash})`);
    if (kind === 'corrupt_patch' && e.message.startsWith('result check failed')) setCheck('check-result', 'bad', e.message);
    else if (kind === 'corrupt_patch' || kind === 'unsupported') setCheck('check-patch', 'bad', e.message);
    if (kind === 'untrusted') setCheck('check-signature', 'bad', e.message);
    else if (h) setCheck('check-signature', ...signatureState(h, trusted.length > 0));
    setVerdict(kind, e.message.charAt(0).toUpperCase() + e.message.slice(1) + '.');
    window.anypatchLast = { verdict: kind, message: e.message };
  } finally {
    busy = false;
    updateButtons();
  }
}

async function main() {
  await load();
  $('version').textContent = `${version()} · BLAKE3 with WebAssembly SIMD`;
  $('old-file').addEventListener('change', () => { updateButtons(); if ($('patch-file').files[0]) onPatchPicked(); });
  $('patch-file').addEventListener('change', onPatchPicked);
  $('verify').addEventListener('click', () => run(false));
  $('save').addEventListener('click', () => run(true).catch((e) => setVerdict('failed', e.message)));
  if (!window.showSaveFilePicker) {
    $('save-note').textContent = 'This browser cannot stream a file to disk (it lacks the File System Access API); Verify still works.';
  }
  updateButtons();
  document.body.dataset.ready = 'true';
}

main().catch((e) => setVerdict('failed', `The page could not start: ${e.message}`));
