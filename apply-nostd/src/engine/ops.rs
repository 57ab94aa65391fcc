//! Running a data segment's ops into its output, checked against the
//! segment hash before any of it is handed out.

use super::*;

impl Applier {
    /// Runs a segment's ops until one needs old bytes, then verifies and
    /// writes its output.
    pub(super) fn run_segment(
        &mut self,
        mut run: SegmentRun,
    ) -> Result<Option<Action>, ApplyError> {
        let data: &[u8] = match run.data_in_inbuf {
            Some(at) => &self.input.buf[at..],
            None => &self.bufs.data,
        };
        if let Some(range) = run.delta_pending.take() {
            let add = &data[run.data_pos..run.data_pos + range.len()];
            for (o, d) in self.bufs.out[range.clone()].iter_mut().zip(add) {
                *o = o.wrapping_add(*d);
            }
            run.data_pos += range.len();
        }
        let block = match run.ops_in {
            OpsIn::Payload => &self.input.buf,
            OpsIn::Unpacked => &self.bufs.ops,
            OpsIn::Page => &self.walk.page_content,
        };
        let mut ops = OpIter::new(&block[run.ops.clone()]);
        while let Some(op) = ops.next() {
            let op = op.expect("ops were validated in start_segment");
            run.ops.start = run.ops.end - ops.remaining();
            let len = op.len() as usize;
            let at = run.out_pos;
            run.out_pos += len;
            match op {
                Op::Literal { .. } => {
                    self.bufs.out[at..at + len]
                        .copy_from_slice(&data[run.data_pos..run.data_pos + len]);
                    run.data_pos += len;
                }
                Op::Zero { .. } => self.bufs.out[at..at + len].fill(0),
                Op::Copy { delta, .. } | Op::Delta { delta, .. } => {
                    let offset = self.walk.rules.source(
                        run.start + at as u64,
                        delta,
                        len as u64,
                        run.start,
                    )?;
                    if matches!(op, Op::Delta { .. }) {
                        run.delta_pending = Some(at..at + len);
                    }
                    self.state = State::Segment(run);
                    return Ok(Some(Action::ReadOld {
                        offset,
                        range: at..at + len,
                    }));
                }
            }
        }
        let new_len = run.entry.new_len as usize;
        // One hash: its prefix checks the entry, all of it is reported.
        let full = *blake3::hash(&self.bufs.out[..new_len]).as_bytes();
        let checked = if self.walk.rules.compact_pages() {
            SHORT_HASH_LEN
        } else {
            HASH_LEN
        };
        if full[..checked] != run.entry.hash[..checked] {
            return Err(ApplyError::SegmentHash {
                segment: self.walk.tally.segments - 1,
                new_offset: run.start,
            });
        }
        if let Some(h) = self.hashes.new.as_mut() {
            h.update(&self.bufs.out[..new_len]);
        }
        self.new_pos += new_len as u64;
        self.written += new_len as u64;
        self.written_segment = Some((self.walk.tally.segments - 1, full));
        self.input.buf.clear();
        self.state = State::Extent;
        Ok(Some(Action::Write {
            offset: run.start,
            range: 0..new_len,
        }))
    }
}
