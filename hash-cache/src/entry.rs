//! One cache file: a header naming the file state, kind and parameters it
//! was made for, the blob, and a BLAKE3 of everything before it.
//!
//! ```text
//! offset  size  field (integers little-endian)
//! 0x00    8     magic "APHCACHE"
//! 0x08    4     version, 1
//! 0x0c    8+8+8 dev, ino, size
//! 0x24    12    mtime (i64 seconds, u32 nanoseconds)
//! 0x30    12    ctime
//! 0x3c    12    taken (when the stat was taken)
//! 0x48    2     kind length K, then K bytes of kind
//!         4     params length P, then P bytes of params
//!         8     blob length B, then B bytes of blob
//!         32    BLAKE3 of all bytes above
//! ```
//!
//! [`decode`] checks every length against what is there and the checksum
//! before returning anything, and never panics.

use crate::file_id::{FileId, Time};

const MAGIC: [u8; 8] = *b"APHCACHE";
const VERSION: u32 = 0x0000_0001;
const SUM_LEN: usize = 32;

/// A decoded entry, borrowing from the file's bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Entry<'a> {
    pub file: FileId,
    pub kind: &'a [u8],
    pub params: &'a [u8],
    pub blob: &'a [u8],
}

/// The bytes of an entry. Fails only when `kind` or `params` are too long
/// for their length fields.
pub(crate) fn encode(entry: &Entry<'_>) -> Option<Vec<u8>> {
    let kind_len = u16::try_from(entry.kind.len()).ok()?;
    let params_len = u32::try_from(entry.params.len()).ok()?;
    let mut out = Vec::with_capacity(
        0x48 + 2 + entry.kind.len() + 4 + entry.params.len() + 8 + entry.blob.len() + SUM_LEN,
    );
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    let f = &entry.file;
    for v in [f.dev, f.ino, f.size] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for t in [f.mtime, f.ctime, f.taken] {
        out.extend_from_slice(&t.secs.to_le_bytes());
        out.extend_from_slice(&t.nanos.to_le_bytes());
    }
    out.extend_from_slice(&kind_len.to_le_bytes());
    out.extend_from_slice(entry.kind);
    out.extend_from_slice(&params_len.to_le_bytes());
    out.extend_from_slice(entry.params);
    out.extend_from_slice(&(entry.blob.len() as u64).to_le_bytes());
    out.extend_from_slice(entry.blob);
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    Some(out)
}

/// Where the blob lies in an entry of `entry_len` bytes that [`decode`]
/// accepted with a blob of `blob_len` bytes: it is the last field before
/// the checksum.
pub(crate) fn blob_range(entry_len: usize, blob_len: usize) -> std::ops::Range<usize> {
    let end = entry_len - SUM_LEN;
    end - blob_len..end
}

/// Why an entry's bytes were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Corrupt {
    Magic,
    Version(u32),
    Truncated,
    Checksum,
    TrailingBytes,
}

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Magic => write!(f, "not a cache entry (wrong magic)"),
            Self::Version(v) => write!(f, "entry version {v}, this build reads {VERSION}"),
            Self::Truncated => write!(f, "entry is truncated"),
            Self::Checksum => write!(f, "entry checksum does not match"),
            Self::TrailingBytes => write!(f, "entry has bytes after its blob"),
        }
    }
}

/// Parses and checks an entry.
pub(crate) fn decode(bytes: &[u8]) -> Result<Entry<'_>, Corrupt> {
    let body_len = bytes.len().checked_sub(SUM_LEN).ok_or(Corrupt::Truncated)?;
    let (body, sum) = bytes.split_at(body_len);
    let mut r = Reader(body);
    if r.take(8)? != MAGIC {
        return Err(Corrupt::Magic);
    }
    let version = r.u32()?;
    if version != VERSION {
        return Err(Corrupt::Version(version));
    }
    // The sum is checked before any field is believed.
    if blake3::hash(body).as_bytes() != sum {
        return Err(Corrupt::Checksum);
    }
    let (dev, ino, size) = (r.u64()?, r.u64()?, r.u64()?);
    let (mtime, ctime, taken) = (r.time()?, r.time()?, r.time()?);
    let kind_len = usize::from(r.u16()?);
    let kind = r.take(kind_len)?;
    let params_len = usize::try_from(r.u32()?).map_err(|_| Corrupt::Truncated)?;
    let params = r.take(params_len)?;
    let blob_len = usize::try_from(r.u64()?).map_err(|_| Corrupt::Truncated)?;
    let blob = r.take(blob_len)?;
    if !r.0.is_empty() {
        return Err(Corrupt::TrailingBytes);
    }
    Ok(Entry {
        file: FileId {
            dev,
            ino,
            size,
            mtime,
            ctime,
            taken,
        },
        kind,
        params,
        blob,
    })
}

/// Takes fields off the front of a slice; running out is [`Corrupt::Truncated`].
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Corrupt> {
        if n > self.0.len() {
            return Err(Corrupt::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Corrupt> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u16(&mut self) -> Result<u16, Corrupt> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, Corrupt> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, Corrupt> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn time(&mut self) -> Result<Time, Corrupt> {
        Ok(Time {
            secs: i64::from_le_bytes(self.array()?),
            nanos: self.u32()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entry<'static> {
        let t = |secs| Time { secs, nanos: 7 };
        Entry {
            file: FileId {
                dev: 0x0102,
                ino: 0x0304,
                size: 0x0506,
                mtime: t(-5),
                ctime: t(10),
                taken: t(20),
            },
            kind: b"kind",
            params: b"params",
            blob: b"the blob",
        }
    }

    #[test]
    fn blob_range_is_where_the_blob_is() {
        let e = sample();
        let bytes = encode(&e).expect("encode");
        let back = decode(&bytes).expect("decode");
        assert_eq!(&bytes[blob_range(bytes.len(), back.blob.len())], e.blob);
    }

    #[test]
    fn round_trips_and_lays_out_the_header() {
        let bytes = encode(&sample()).expect("encode");
        assert_eq!(&bytes[..8], b"APHCACHE");
        assert_eq!(bytes[0x0c..0x14], 0x0102u64.to_le_bytes());
        assert_eq!(bytes[0x24..0x2c], (-5i64).to_le_bytes());
        assert_eq!(bytes[0x48..0x4a], 4u16.to_le_bytes());
        assert_eq!(decode(&bytes), Ok(sample()));
    }

    #[test]
    fn every_flipped_bit_and_every_cut_is_refused() {
        let bytes = encode(&sample()).expect("encode");
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(decode(&b).is_err(), "bit {i} flipped was accepted");
        }
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "cut at {n} was accepted");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    #[test]
    fn lengths_are_checked_even_when_the_sum_matches() {
        // A well-summed body whose blob length claims more than is there.
        let mut bytes = encode(&sample()).expect("encode");
        bytes.truncate(bytes.len() - SUM_LEN);
        let at = bytes.len() - 8 - 8;
        bytes[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        let sum = blake3::hash(&bytes);
        bytes.extend_from_slice(sum.as_bytes());
        assert_eq!(decode(&bytes), Err(Corrupt::Truncated));
    }
}
