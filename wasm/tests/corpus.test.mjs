// The wasm module under node, on every make-corpus small pair: its output is
// byte-identical to the native applier's (`applypatch -o`), and its errors
// are the sentences the CLI prints.

import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { load, applyPatch, mapPatch, hashBlob, ApplyFailure, Hasher } from '../www/anypatch.js';
import { root, work, corpus, patchOf, applypatch, corrupted, firstDifference, zeroPatch, blake3Of } from './fixtures.mjs';

let pairs;

before(() => {
  load(fs.readFileSync(path.join(root, 'wasm/www/pkg/anypatch_wasm_bg.wasm')));
  pairs = corpus();
  assert.ok(pairs.length >= 7, `make-corpus made only ${pairs.map((p) => p.name)}`);
});

/** Applies with the wasm module, writing the output to `out` through positional writes. */
async function wasmApply(old, patch, out) {
  const fd = fs.openSync(out, 'w');
  try {
    const sink = {
      write: (offset, data) => { fs.writeSync(fd, data, 0, data.length, offset); },
      zero: () => {}, // a fresh file reads as zero; the truncate below sizes it
    };
    const r = await applyPatch({ old: await fs.openAsBlob(old), patch: await fs.openAsBlob(patch), sink });
    fs.ftruncateSync(fd, r.summary.new_len);
    return r;
  } finally {
    fs.closeSync(fd);
  }
}

test('every small corpus pair: wasm output is byte-identical to applypatch -o', async (t) => {
  const outDir = path.join(work, 'out');
  fs.mkdirSync(outDir, { recursive: true });
  for (const pair of pairs) {
    await t.test(pair.name, async () => {
      const patch = patchOf(pair);
      const native = path.join(outDir, `${pair.name}.native`);
      const wasm = path.join(outDir, `${pair.name}.wasm`);
      fs.rmSync(native, { force: true });
      const r = applypatch(pair.old, patch, '-o', native);
      assert.equal(r.status, 0, r.stderr);
      const { header, summary, map } = await wasmApply(pair.old, patch, wasm);
      assert.equal(fs.statSync(wasm).size, fs.statSync(native).size);
      assert.equal(firstDifference(wasm, native), -1, `${pair.name}: outputs differ`);
      assert.equal(summary.new_hash, header.new_hash);
      assert.equal(await hashBlob(await fs.openAsBlob(wasm)), summary.new_hash, 'the Hasher agrees with the engine');
      // The map covers the new image exactly, and the seek-only walk agrees with the streamed one.
      assert.ok(map.complete);
      assert.equal(map.totals.reduce((a, b) => a + b, 0), summary.new_len);
      const seek = await mapPatch(await fs.openAsBlob(patch));
      assert.deepEqual(seek.map.totals, map.totals);
      assert.deepEqual([...seek.map.buckets], [...map.buckets]);
      fs.rmSync(native);
      fs.rmSync(wasm);
    });
  }
});

test('verify only: no output copies, only the summary', async () => {
  const pair = pairs.find((p) => p.name === 'sparse');
  const r = await applyPatch({ old: await fs.openAsBlob(pair.old), patch: await fs.openAsBlob(patchOf(pair)) });
  assert.equal(r.summary.bytes_written + r.summary.bytes_zeroed <= r.summary.new_len, true);
  assert.equal(r.progress.baseChecked, fs.statSync(pair.old).size);
});

/** Expects the wasm apply to fail with the CLI's sentence (stderr is "applypatch: <sentence>"). */
async function sameRefusal(old, patch, kind) {
  const cli = applypatch('--check', old, patch);
  assert.notEqual(cli.status, 0);
  await assert.rejects(
    applyPatch({ old: await fs.openAsBlob(old), patch: await fs.openAsBlob(patch) }),
    (e) => {
      assert.ok(e instanceof ApplyFailure, String(e));
      assert.equal(e.kind, kind);
      assert.equal(`applypatch: ${e.message}`, cli.stderr.split('\n').find((l) => l.startsWith('applypatch: ')));
      return true;
    },
  );
}

test('a wrong base is refused with the CLI sentence', async () => {
  const pair = pairs.find((p) => p.name === 'edits');
  await sameRefusal(corrupted(pair.old, 12345, 'edits.old'), patchOf(pair), 'wrong_base');
});

test('a corrupted patch is refused with the CLI sentence', async () => {
  const pair = pairs.find((p) => p.name === 'edits');
  await sameRefusal(pair.old, corrupted(patchOf(pair), -200, 'edits.anyp'), 'corrupt_patch');
});

test('a truncated patch is refused at its header, as the CLI refuses it at its end', async () => {
  const pair = pairs.find((p) => p.name === 'edits');
  const cut = path.join(work, 'bad', 'edits.cut.anyp');
  const data = fs.readFileSync(patchOf(pair));
  fs.writeFileSync(cut, data.subarray(0, data.length - 1000));
  // The CLI finds it at the end of the stream; the page at the header, from
  // the file's size against patch_len, before the old file is read (issue 14).
  const cli = applypatch('--check', pair.old, cut);
  assert.equal(cli.status, 2);
  assert.match(cli.stderr, /^applypatch: patch is truncated: /m);
  await assert.rejects(applyPatch({ old: await fs.openAsBlob(pair.old), patch: await fs.openAsBlob(cut) }), (e) => {
    assert.ok(e instanceof ApplyFailure, String(e));
    assert.equal(e.kind, 'corrupt_patch');
    assert.equal(e.message, `patch is truncated: the file is ${data.length - 1000} bytes, but its header says ${data.length} (1000 bytes are missing); it was probably cut short while downloading, so get it again`);
    assert.equal(e.progress.baseChecked, 0, 'refused before the old file was read');
    return true;
  });
  const seek = await mapPatch(await fs.openAsBlob(cut));
  assert.equal(seek.map.complete, true, 'the manifest is intact; only the end is cut');
});

test('a 2^50-byte zero run: the engine size limit refuses it at the header; without one, zeros come in steps', async () => {
  const huge = new Blob([zeroPatch(blake3Of(Hasher), 2n ** 50n)]);
  await assert.rejects(applyPatch({ old: new Blob([]), patch: huge, maxNewLen: 64 * 2 ** 30 }), (e) => {
    assert.equal(e.kind, 'too_large');
    assert.equal(e.message, 'refused: the patch makes a 1125899906842624-byte new file, above the limit of 68719476736 bytes; raise the limit if you trust the patch');
    assert.equal(e.header.new_len, 2 ** 50, 'the header was read first');
    assert.equal(e.progress.newDone, 0);
    return true;
  });
  // Verifying only, without a limit: progress comes back every 16 MiB step
  // (the caller could stop, or yield); stopped here after three.
  const seen = [];
  await assert.rejects(applyPatch({
    old: new Blob([]), patch: huge, progressMs: 0,
    onProgress: (p) => { seen.push(p.newDone); if (seen.length === 3) throw new Error('enough'); },
  }), /enough/);
  assert.deepEqual(seen, [16 << 20, 32 << 20, 48 << 20]);
});
