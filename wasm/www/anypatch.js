// anypatch.js: drives the wasm engine (pkg/anypatch_wasm.js) over Blobs.
//
// The same module runs in the page (File objects) and in the node tests
// (fs.openAsBlob). Files are read through Blob.slice() in windows of a few
// MiB and never loaded whole, so memory stays bounded whatever the image
// size: two read windows per file, the engine's ~31 MiB, and one write.

import init, { initSync, PatchSession, PatchMap, Hasher, version } from './pkg/anypatch_wasm.js';

export { PatchSession, PatchMap, Hasher, version };

/** Loads the wasm module: from its URL beside this file, or from bytes (node). */
export async function load(bytes) {
  if (bytes) initSync({ module: bytes });
  else await init({ module_or_path: new URL('./pkg/anypatch_wasm_bg.wasm', import.meta.url) });
}

/**
 * Reads a Blob through a byte stream (`blob.slice(at).stream()`, BYOB), in
 * two windows: while the caller works on one, the next is already being
 * read. Sequential reads, the common case (hashing the base, copying
 * unchanged extents), never reopen the stream; a jump reopens it at the new
 * offset. Memory: two windows, whatever the blob size.
 */
export class BlobReader {
  constructor(blob, window = 8 << 20) {
    this.blob = blob;
    this.window = window;
    this.reader = null;
    this.pos = 0; // where the stream will read next
    this.cur = null; // { at, bytes }
    this.next = null; // promise of the following { at, bytes }
    this.spare = null; // an ArrayBuffer free for the next fill
  }

  #open(at) {
    if (this.reader) this.reader.cancel().catch(() => {});
    this.reader = this.blob.slice(at).stream().getReader({ mode: 'byob' });
    this.pos = at;
  }

  /** Reads the stream's next window into `buffer`. */
  async #fill(buffer) {
    const at = this.pos;
    let buf = buffer;
    let filled = 0;
    while (filled < buf.byteLength) {
      const { value, done } = await this.reader.read(new Uint8Array(buf, filled, buf.byteLength - filled));
      if (value) buf = value.buffer; // the read transfers the buffer and hands it back
      if (done) break;
      filled += value.byteLength;
    }
    this.pos = at + filled;
    return { at, bytes: new Uint8Array(buf, 0, filled) };
  }

  #prefetch(buffer) {
    this.next = this.pos < this.blob.size ? this.#fill(buffer || new ArrayBuffer(this.window)) : null;
    if (!this.next) this.spare = buffer;
  }

  /** `len` bytes at `offset`, fewer only at the end of the blob. A view: use it before the next read. */
  async read(offset, len) {
    const end = Math.min(offset + len, this.blob.size);
    if (end <= offset) return new Uint8Array(0);
    if (end - offset > this.window) {
      // Larger than a window (never asked by the engine): read it exactly.
      return new Uint8Array(await this.blob.slice(offset, end).arrayBuffer());
    }
    const cur = this.cur;
    if (cur && offset >= cur.at && end <= cur.at + cur.bytes.length) {
      return cur.bytes.subarray(offset - cur.at, end - cur.at);
    }
    if (cur && this.next && offset >= cur.at && offset <= cur.at + cur.bytes.length) {
      // Sequential: the rest is in the window being read.
      const nxt = await this.next;
      if (end <= nxt.at + nxt.bytes.length) {
        let out;
        if (offset >= nxt.at) {
          out = nxt.bytes.subarray(offset - nxt.at, end - nxt.at);
        } else {
          out = new Uint8Array(end - offset); // straddles the two windows
          out.set(cur.bytes.subarray(offset - cur.at));
          out.set(nxt.bytes.subarray(0, end - nxt.at), nxt.at - offset);
        }
        this.cur = nxt;
        this.#prefetch(cur.bytes.buffer);
        return out;
      }
      this.cur = nxt; // too short: the blob shrank, or a jump below
    }
    // A jump (or the first read): reopen the stream there.
    if (this.next) await this.next.catch(() => {});
    const buffers = [this.cur && this.cur.bytes.buffer, this.spare].filter((b) => b && b.byteLength === this.window);
    this.#open(offset);
    this.cur = await this.#fill(buffers.pop() || new ArrayBuffer(this.window));
    this.#prefetch(buffers.pop());
    return this.cur.bytes.subarray(0, Math.min(end - offset, this.cur.bytes.length));
  }
}

/** Why an apply failed: the engine's sentence, its class, and what was learnt before. */
export class ApplyFailure extends Error {
  constructor(message, kind, header, progress) {
    super(message);
    this.name = 'ApplyFailure';
    // corrupt_patch | wrong_base | unsupported | not_in_place | untrusted | too_large | io
    // (the engine's classes), or expected_mismatch (the header's new BLAKE3 is not `expected`).
    this.kind = kind;
    this.header = header; // null when the header itself was refused
    this.progress = progress;
  }
}

/** The first 8 bytes of every patch (spec 3.1). */
export const PATCH_MAGIC = [0x89, 0x41, 0x4e, 0x59, 0x50, 0x54, 0x0d, 0x0a];

/** Whether a Blob starts with the patch magic: tells a patch from an image. */
export async function looksLikePatch(blob) {
  const b = new Uint8Array(await blob.slice(0, PATCH_MAGIC.length).arrayBuffer());
  return b.length === PATCH_MAGIC.length && PATCH_MAGIC.every((m, i) => b[i] === m);
}

/**
 * Compares the patch's size with the header's `patch_len`: a patch cut short
 * (or with bytes appended) is known from its header, before any work.
 * Returns null when they agree, else the sentence to show.
 */
export function patchLengthProblem(header, size) {
  const want = header.patch_len;
  if (size === want) return null;
  if (size < want) {
    return `patch is truncated: the file is ${size} bytes, but its header says ${want} (${want - size === 1 ? '1 byte is' : `${want - size} bytes are`} missing); it was probably cut short while downloading, so get it again`;
  }
  return `patch is corrupt: the file is ${size} bytes, ${size - want} more than the ${want} its header says; something was added to it, so get it again from its source`;
}

function progressOf(s, t0) {
  return {
    baseChecked: s.base_checked,
    newDone: s.new_done,
    patchConsumed: s.patch_consumed,
    seconds: (performance.now() - t0) / 1000,
  };
}

/**
 * Applies (or only verifies) `patch` to `old`, both Blobs.
 * - trustedKeys: texts of public key files; a valid signature by one is then required.
 * - sink: { write(offset, Uint8Array), zero?(offset, len) }, awaited; null verifies only.
 * - maxNewLen: refuse (class too_large) a patch that makes a larger new file,
 *   before the old file is read (the engine's Config::max_new_len).
 * - expected: the BLAKE3 (hex) the new file must have; a header that names
 *   another one is refused (class expected_mismatch) before the old file is read.
 * - onHeader(header): the checked header and signers, before the base is read;
 *   awaited, and may throw to stop the apply there.
 * - onProgress(progress): at most every `progressMs`.
 * The patch's size is checked against the header's patch_len first.
 * Resolves to { header, summary, map, progress }; rejects with ApplyFailure.
 */
export async function applyPatch({
  old, patch, trustedKeys = [], sink = null, maxNewLen = null, expected = null, onHeader, onProgress, progressMs = 100, buckets,
}) {
  const s = new PatchSession(old.size, buckets);
  const t0 = performance.now();
  let header = null;
  let lastReport = 0;
  const report = () => {
    if (onProgress && performance.now() - lastReport >= progressMs) {
      lastReport = performance.now();
      onProgress(progressOf(s, t0));
    }
  };
  try {
    for (const k of trustedKeys) s.trust_key_file(k);
    if (maxNewLen !== null) s.set_max_new_len(maxNewLen);
    s.set_report_writes(sink !== null);
    const oldReader = new BlobReader(old);
    const patchReader = new BlobReader(patch, 4 << 20);
    let patchPos = 0;
    for (;;) {
      switch (s.poll()) {
        case 'need_input': {
          if (patchPos >= patch.size) {
            s.end();
          } else {
            const b = await patchReader.read(patchPos, Math.min(1 << 20, patch.size - patchPos));
            patchPos += b.length;
            s.feed(b);
          }
          break;
        }
        case 'header': {
          header = JSON.parse(s.header_json());
          const short = patchLengthProblem(header, patch.size);
          if (short) throw new ApplyFailure(short, 'corrupt_patch', header, progressOf(s, t0));
          if (expected && expected !== header.new_hash) {
            throw new ApplyFailure(`the patch makes BLAKE3 ${header.new_hash}, not the expected ${expected}`, 'expected_mismatch', header, progressOf(s, t0));
          }
          if (onHeader) await onHeader(header);
          break;
        }
        case 'read_old': {
          s.provide_old(await oldReader.read(s.offset, s.length));
          report();
          break;
        }
        case 'write':
          await sink.write(s.offset, s.write_data());
          break;
        case 'zero':
          // Reported even when verifying only: long zero runs come in 16 MiB steps.
          if (sink && sink.zero) await sink.zero(s.offset, s.length);
          report();
          break;
        case 'done': {
          const progress = progressOf(s, t0);
          if (onProgress) onProgress(progress);
          return {
            header,
            summary: JSON.parse(s.summary_json()),
            map: { ...JSON.parse(s.map_json()), buckets: s.map_buckets() },
            progress,
          };
        }
        case 'error':
          throw new ApplyFailure(s.error_message(), s.error_class(), header, progressOf(s, t0));
        default:
          throw new Error('anypatch: unexpected request from the engine');
      }
    }
  } finally {
    s.free();
  }
}

/**
 * Reads only the header and the page chain of `patch` (a Blob) and sums the
 * extents into `buckets`: what the patch copies, moves, changes and zeros.
 * Resolves to { header, map } (header null and map.error set on failure).
 */
export async function mapPatch(patch, buckets) {
  const m = new PatchMap(buckets);
  try {
    const reader = new BlobReader(patch, 1 << 20);
    while (m.wanted_length > 0) {
      const at = m.wanted_offset;
      const want = m.wanted_length;
      const b = await reader.read(at, want);
      m.give(at, b);
      if (b.length < want) m.truncated();
    }
    const h = m.header_json();
    return { header: h ? JSON.parse(h) : null, map: { ...JSON.parse(m.map_json()), buckets: m.buckets() } };
  } finally {
    m.free();
  }
}

/** BLAKE3 of a Blob, streamed; `onProgress(bytesDone)` after each window. */
export async function hashBlob(blob, onProgress) {
  const h = new Hasher();
  try {
    const reader = new BlobReader(blob);
    for (let at = 0; at < blob.size; ) {
      // Pieces smaller than the window, so the next window is read while these hash.
      const b = await reader.read(at, Math.min(1 << 20, blob.size - at));
      h.update(b);
      at += b.length;
      if (onProgress) onProgress(at);
    }
    return h.finalize();
  } finally {
    h.free();
  }
}
