// Shared set-up of the wasm tests: the make-corpus small pairs, their patches
// made by the release mkpatch, and the native applier's outputs.

import fs from 'node:fs';
import path from 'node:path';
import http from 'node:http';
import os from 'node:os';
import { execFileSync, spawnSync } from 'node:child_process';

export const root = path.resolve(import.meta.dirname, '../..');
// ANYPATCH_WWW serves another copy of the page (an older one, to see a test fail without a fix).
export const www = process.env.ANYPATCH_WWW ? path.resolve(process.env.ANYPATCH_WWW) : path.join(root, 'wasm/www');
const target = process.env.CARGO_TARGET_DIR || path.join(root, 'target');
export const work = path.join(target, 'wasm-tests');
export const artifacts = path.join(target, 'wasm-artifacts');
export const bin = (name) => path.join(target, 'release', name);

/** The small corpus, made once into target/wasm-tests/corpus (reused while its MANIFEST exists). */
export function corpus() {
  const dir = path.join(work, 'corpus');
  if (!fs.existsSync(path.join(dir, 'MANIFEST.tsv'))) {
    fs.rmSync(dir, { recursive: true, force: true });
    execFileSync('python3', [path.join(root, '../shared/corpus/make-corpus'), dir, '--scale', 'small'], { stdio: ['ignore', 'ignore', 'inherit'] });
  }
  const names = fs.readFileSync(path.join(dir, 'MANIFEST.tsv'), 'utf8').split('\n').slice(1)
    .map((l) => l.split('\t')[0]).filter(Boolean);
  return names.map((name) => ({ name, old: path.join(dir, `${name}.old`), new: path.join(dir, `${name}.new`) }));
}

/** Makes (or reuses) the patch of a pair with the release mkpatch. */
export function patchOf(pair) {
  const out = path.join(work, 'patches', `${pair.name}.anyp`);
  const fresh = fs.existsSync(out) && fs.statSync(out).mtimeMs > Math.max(fs.statSync(pair.new).mtimeMs, fs.statSync(bin('mkpatch')).mtimeMs);
  if (!fresh) {
    fs.mkdirSync(path.dirname(out), { recursive: true });
    execFileSync(bin('mkpatch'), [pair.old, pair.new, '-o', out], { stdio: ['ignore', 'ignore', 'inherit'] });
  }
  return out;
}

/** Runs the native applypatch; returns { status, stderr }. */
export function applypatch(...args) {
  const r = spawnSync(bin('applypatch'), args, { encoding: 'utf8' });
  return { status: r.status, stderr: r.stderr.trim() };
}

/** A copy of `file` with one byte flipped at `at` (negative: from the end). */
export function corrupted(file, at, name) {
  const data = fs.readFileSync(file);
  const i = at < 0 ? data.length + at : at;
  data[i] ^= 0x40;
  const out = path.join(work, 'bad', name);
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, data);
  return out;
}

/** The byte offset of the first difference between two files, or -1. Streams both. */
export function firstDifference(a, b) {
  const fa = fs.openSync(a, 'r');
  const fb = fs.openSync(b, 'r');
  try {
    const ba = Buffer.alloc(1 << 20);
    const bb = Buffer.alloc(1 << 20);
    for (let pos = 0; ; pos += ba.length) {
      const na = fs.readSync(fa, ba, 0, ba.length, pos);
      const nb = fs.readSync(fb, bb, 0, bb.length, pos);
      const n = Math.min(na, nb);
      const d = ba.subarray(0, n).compare(bb.subarray(0, n));
      if (d !== 0) { for (let i = 0; i < n; i++) if (ba[i] !== bb[i]) return pos + i; }
      if (na !== nb) return pos + n;
      if (na === 0) return -1;
    }
  } finally {
    fs.closeSync(fa);
    fs.closeSync(fb);
  }
}

const MIME = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css', '.wasm': 'application/wasm', '.json': 'application/json', '.ts': 'text/plain' };

/** Serves wasm/www on 127.0.0.1 at a free port; resolves to { url, close }. */
export function serve(dir = www) {
  const server = http.createServer((req, res) => {
    const rel = decodeURIComponent(new URL(req.url, 'http://x').pathname).replace(/^\/+/, '') || 'index.html';
    const file = path.resolve(dir, rel);
    if (!file.startsWith(dir + path.sep) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
      res.writeHead(404).end('not found');
      return;
    }
    res.writeHead(200, { 'content-type': MIME[path.extname(file)] || 'application/octet-stream', 'cache-control': 'no-store' });
    fs.createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      resolve({ url: `http://127.0.0.1:${server.address().port}/`, close: () => new Promise((r) => server.close(r)) });
    });
  });
}

/**
 * Debian's Chromium (never a downloaded browser), headless, with a fresh
 * user-data-dir. Resolves to { context, close }.
 */
export async function launchChromium() {
  const { chromium } = await import('playwright-core');
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'anypatch-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--disable-quic', '--no-first-run', '--disable-sync'],
  });
  return {
    context,
    close: async () => {
      await context.close();
      fs.rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

// ---- crafted patches: a header, one plain page and a trailer, hashes recomputed (spec sections 3.1-3.9) ----

/** Unsigned LEB128 of a non-negative integer (Number or BigInt): postcard's varint. */
function varint(n) {
  let v = BigInt(n);
  const out = [];
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) b |= 0x80;
    out.push(b);
  } while (v > 0n);
  return out;
}

function u16(n) { return [n & 0xff, n >> 8]; }
function u32(n) { return [n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, (n >>> 24) & 0xff]; }

/**
 * A patch for an empty old file whose new file is one zero extent of `len`
 * bytes (a Number or BigInt): preamble, header body, header hash, one plain
 * page, trailer. `b3` is blake3Of()'s { hash, zeros }; `newHash` is the
 * header's new BLAKE3 (default: that of `len` zero bytes when `len` is at
 * most 256 MiB, else of nothing, for a run that is never meant to end);
 * `major` overrides the format's major version. Returns a Buffer.
 */
export function zeroPatch(b3, len, { newHash = null, major = 1, producer = 'crafted zero run' } = {}) {
  const blake3 = b3.hash;
  const page = Buffer.from([...varint(1), ...varint(1), ...varint(len), 0x00]); // count, Zero { len }, next: none
  let hash = newHash;
  if (!hash) {
    hash = b3.zeros(BigInt(len) <= 256n << 20n ? Number(len) : 0);
  }
  const body = (patchLen) => Buffer.from([
    ...varint(0), ...varint(len), // old_len, new_len
    ...blake3(new Uint8Array(0)), ...hash, // old_hash, new_hash
    ...varint(4096), ...varint(0), 0x01, ...varint(0), // block_size, segment_max, codec zstd, flags
    ...varint(patchLen), ...varint(1), ...varint(0), // patch_len, extent_count, segment_count
    ...varint(page.length), ...blake3(page), // first_page
    ...varint(producer.length), ...Buffer.from(producer),
  ]);
  // patch_len is inside the header it measures: settle it.
  let patchLen = 0;
  let b = body(patchLen);
  while (patchLen !== 24 + b.length + 32 + page.length + 40) {
    patchLen = 24 + b.length + 32 + page.length + 40;
    b = body(patchLen);
  }
  const pre = Buffer.from([0x89, 0x41, 0x4e, 0x59, 0x50, 0x54, 0x0d, 0x0a, ...u16(major), ...u16(3), ...u32(0), ...u32(b.length), ...u32(0)]);
  const head = Buffer.concat([pre, b]);
  const before = Buffer.concat([head, blake3(head), page]);
  return Buffer.concat([before, blake3(before), Buffer.from('ANYPTEND')]);
}

/**
 * BLAKE3 through the wasm module's Hasher (call after load()):
 * { hash(bytes) -> Buffer(32), zeros(n) -> the hash of n zero bytes, fed in 1 MiB pieces }.
 */
export function blake3Of(Hasher) {
  const run = (feed) => {
    const h = new Hasher();
    try {
      feed(h);
      return Buffer.from(h.finalize(), 'hex');
    } finally {
      h.free();
    }
  };
  return {
    hash: (bytes) => run((h) => h.update(bytes)),
    zeros: (n) => run((h) => {
      const z = new Uint8Array(1 << 20);
      for (let left = n; left > 0; left -= z.length) h.update(left >= z.length ? z : z.subarray(0, left));
    }),
  };
}

/** Re-hashes a patch's trailer after its bytes were changed (signature block, padding). */
export function fixTrailer(b3, data) {
  const end = data.length - 40;
  b3.hash(data.subarray(0, end)).copy(data, end);
  return data;
}

/** Writes `bytes` under target/wasm-tests/crafted/`name`; returns the path. */
export function crafted(name, bytes) {
  const out = path.join(work, 'crafted', name);
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, bytes);
  return out;
}
