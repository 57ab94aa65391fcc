// worker.js: one verification (or verified apply) off the page's main
// thread, so the page answers at once whatever the patch declares, and
// Cancel is `worker.terminate()`: immediate, even inside an engine step.
//
// Message in: { type: 'run', old, patch, newFile, expected, trustedKeys,
//   maxNewLen, stage }. `stage` names a file in the origin-private file
// system that receives the verified new image (for "Verify and save");
// the page removes it if the run fails or is cancelled.
// Messages out: { type: 'phase' | 'header' | 'progress' | 'done' | 'error', ... }.

import { load, applyPatch, hashBlob, ApplyFailure } from './anypatch.js';

const ready = load();
const post = (m) => self.postMessage(m);
/** How long the browser's storage may take to open the file that keeps the verified image. */
const STORAGE_MS = 20000;

/** `promise`, or a failure saying what did not answer within `ms`. */
function within(promise, ms, what) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new ApplyFailure(`${what} did not answer within ${ms / 1000} s; press Verify and save again, or Verify to check without keeping the image`, 'io', null, null)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** A sink into a file of the origin-private file system, written synchronously (workers only). */
async function stagingSink(name) {
  const dir = await navigator.storage.getDirectory();
  const file = await dir.getFileHandle(name, { create: true });
  if (!file.createSyncAccessHandle) {
    throw new ApplyFailure('this browser cannot keep the verified image aside for saving (it lacks synchronous file access in workers); press Verify, and apply the patch with applypatch', 'io', null, null);
  }
  const handle = await file.createSyncAccessHandle();
  handle.truncate(0);
  return {
    handle,
    write(offset, data) {
      let at = 0;
      while (at < data.length) at += handle.write(data.subarray(at), { at: offset + at });
    },
    // The final truncate sizes the file; bytes never written read as zero.
    zero() {},
  };
}

async function run({ old, patch, newFile, expected, trustedKeys, maxNewLen, stage }) {
  await ready;
  let want = expected;
  if (newFile) {
    // The expected image first: its hash is then checked against the
    // header before the old file is read or anything is written.
    post({ type: 'phase', phase: 'expected', total: newFile.size });
    const t0 = performance.now();
    let last = 0;
    const h = await hashBlob(newFile, (done) => {
      if (performance.now() - last >= 100) {
        last = performance.now();
        post({ type: 'progress', phase: 'expected', done, total: newFile.size, seconds: (performance.now() - t0) / 1000 });
      }
    });
    if (want && want !== h) {
      throw new ApplyFailure(`the expected image ${newFile.name} has BLAKE3 ${h}, not the ${want} you typed`, 'expected_mismatch', null, null);
    }
    want = h;
  }
  post({ type: 'phase', phase: 'apply' });
  let sink = null;
  let done = null;
  try {
    if (stage) {
      post({ type: 'phase', phase: 'staging' });
      sink = await within(stagingSink(stage), STORAGE_MS, "the browser's storage (where the verified image is kept until saved)");
    }
    const result = await applyPatch({
      old, patch, trustedKeys, sink, maxNewLen, expected: want,
      onHeader: async (header) => {
        post({ type: 'header', header });
        if (sink && navigator.storage.estimate) {
          const { quota, usage } = await within(navigator.storage.estimate(), STORAGE_MS, "the browser's storage estimate");
          if (quota - usage < header.new_len) {
            throw new ApplyFailure(`the new image needs ${header.new_len} bytes, but this browser lets the page keep only ${quota - usage} (it holds the verified image there until you choose where to save it); free some disk space, or press Verify and apply the patch with applypatch`, 'io', header, null);
          }
        }
      },
      onProgress: (p) => post({ type: 'progress', phase: 'apply', ...p }),
    });
    if (sink) {
      sink.handle.truncate(result.summary.new_len);
      sink.handle.flush();
    }
    done = { type: 'done', result: { ...result, expectedImageHash: newFile ? want : null } };
  } finally {
    if (sink) sink.handle.close();
  }
  // Only once the kept image's handle is closed: the page ends this
  // worker as soon as it hears the run is done.
  post(done);
}

self.onmessage = ({ data }) => {
  if (data.type !== 'run') return;
  run(data).catch((e) => {
    post({
      type: 'error',
      message: e.message,
      kind: e instanceof ApplyFailure ? e.kind : 'failed',
      header: e.header || null,
      progress: e.progress || null,
    });
  });
};
