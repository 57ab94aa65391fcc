// Shared set-up of the wasm tests: the make-corpus small pairs, their patches
// made by the release mkpatch, and the native applier's outputs.

import fs from 'node:fs';
import path from 'node:path';
import http from 'node:http';
import os from 'node:os';
import { execFileSync, spawnSync } from 'node:child_process';

export const root = path.resolve(import.meta.dirname, '../..');
export const www = path.join(root, 'wasm/www');
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
