// Measures verification throughput of the web page in headless Chromium
// (see bench-large). Usage: node bench-large.mjs OLD PATCH [APPLYPATCH]

import fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import { serve, launchChromium, artifacts } from './fixtures.mjs';
import path from 'node:path';

const [oldPath, patchPath, applypatch] = process.argv.slice(2);
const BUDGET = 150; // MB/s
const oldLen = fs.statSync(oldPath).size;
const mb = (n, s) => (n / 1e6 / s).toFixed(0);

const server = await serve();
const browser = await launchChromium();
try {
  const page = await browser.context.newPage();
  page.on('pageerror', (e) => console.error(`page error: ${e}`));
  await page.goto(server.url);
  await page.waitForSelector('body[data-ready="true"]');
  const simd = await page.evaluate(() => WebAssembly.validate(new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11])));

  // The hash floor in this browser: BLAKE3 of the old file through the same File.slice reader.
  await page.setInputFiles('#old-file', oldPath);
  const hashSeconds = await page.evaluate(async () => {
    const { hashBlob } = await import('./anypatch.js');
    const t0 = performance.now();
    await hashBlob(document.querySelector('#old-file').files[0]);
    return (performance.now() - t0) / 1000;
  });

  console.error(`hashed the old file in ${hashSeconds.toFixed(1)} s; verifying`);
  await page.setInputFiles('#patch-file', patchPath);
  await page.waitForFunction(() => !document.querySelector('#verify').disabled);
  const t0 = Date.now();
  await page.click('#verify');
  await page.waitForFunction(() => !['idle', 'running'].includes(document.querySelector('#verdict').dataset.verdict), null, { timeout: 600000 });
  const wall = (Date.now() - t0) / 1000;
  const last = await page.evaluate(() => window.anypatchLast);
  fs.mkdirSync(artifacts, { recursive: true });
  await page.screenshot({ path: path.join(artifacts, 'bench-large.png'), fullPage: true });
  if (last.verdict !== 'ok') throw new Error(`verification failed: ${last.verdict} ${last.message || ''}`);
  const newLen = last.summary.new_len;

  let native = '';
  if (applypatch) {
    const n0 = Date.now();
    const r = spawnSync(applypatch, ['--check', oldPath, patchPath], { encoding: 'utf8' });
    const ns = (Date.now() - n0) / 1000;
    if (r.status === 0) native = `native applypatch --check: ${ns.toFixed(1)} s (${mb(oldLen, ns)} MB/s)`;
  }
  const rate = Number(mb(oldLen, last.seconds));
  console.log(`old ${oldLen} bytes, new ${newLen} bytes, patch ${fs.statSync(patchPath).size} bytes; wasm SIMD in this browser: ${simd}`);
  console.log(`BLAKE3 of the old file alone (File.slice + wasm): ${hashSeconds.toFixed(1)} s (${mb(oldLen, hashSeconds)} MB/s)`);
  console.log(`verify in the page: ${last.seconds.toFixed(1)} s (click to verdict ${wall.toFixed(1)} s): ${rate} MB/s of image, ${mb(oldLen + newLen, last.seconds)} MB/s of old+new bytes processed`);
  if (native) console.log(native);
  console.log(`budget ${BUDGET} MB/s of image: ${rate >= BUDGET ? 'ok' : 'MISSED'}`);
  process.exitCode = rate >= BUDGET ? 0 : 1;
} finally {
  await browser.close();
  await server.close();
}
