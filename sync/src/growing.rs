//! A served image's tree while it is being hashed, shared by every session
//! that syncs it (spec/SYNC.md section 7): one hashing pass, whose groups
//! each session sends as they come, so that no receiver waits for the
//! whole image to be hashed before it can compare, and sixteen receivers
//! of one uncached image do not hash it sixteen times.

use std::fs::File;
use std::sync::{Arc, Mutex, MutexGuard};

use anypatch_hash_cache::Cache;

use crate::tree::{leaf_count, Value};

/// What a watcher of a [`GrowingTree`] is told, in order.
#[derive(Debug, Clone)]
pub enum Growth {
    /// The values of the next leaves (whole groups, or the image's tail).
    Leaves(Vec<Value>),
    /// Every leaf was given; the image's BLAKE3.
    Root(blake3::Hash),
    /// The hashing failed; a sentence for the user.
    Failed(String),
}

/// A watcher: returns false once it no longer wants to hear (its session
/// ended), and is then dropped.
type Watcher = Box<dyn FnMut(&Growth) -> bool + Send>;

/// An image's leaf values as they are computed, and its BLAKE3 once they
/// all are.
pub struct GrowingTree {
    len: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    leaves: Vec<Value>,
    end: Option<Result<blake3::Hash, String>>,
    watchers: Vec<Watcher>,
}

impl std::fmt::Debug for GrowingTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("GrowingTree")
            .field("len", &self.len)
            .field("leaves", &s.leaves.len())
            .field("end", &s.end)
            .finish_non_exhaustive()
    }
}

impl GrowingTree {
    /// The tree of an image of `len` bytes, with no leaf hashed yet.
    pub fn new(len: u64) -> Arc<Self> {
        Arc::new(Self {
            len,
            state: Mutex::default(),
        })
    }

    /// A tree already whole (from a cache): `leaves` are all its leaves.
    pub fn whole(len: u64, leaves: Vec<Value>, root: blake3::Hash) -> Arc<Self> {
        let t = Self::new(len);
        {
            let mut s = t.lock();
            s.leaves = leaves;
            s.end = Some(Ok(root));
        }
        t
    }

    /// The image's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the image is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells `watcher` everything so far, at once, then each growth as it
    /// comes, until it returns false or the tree ends.
    pub fn watch(&self, mut watcher: impl FnMut(&Growth) -> bool + Send + 'static) {
        let mut s = self.lock();
        if !s.leaves.is_empty() && !watcher(&Growth::Leaves(s.leaves.clone())) {
            return;
        }
        match &s.end {
            Some(Ok(root)) => {
                watcher(&Growth::Root(*root));
            }
            Some(Err(why)) => {
                watcher(&Growth::Failed(why.clone()));
            }
            None => s.watchers.push(Box::new(watcher)),
        }
    }

    /// The next leaves' values, in order.
    pub fn grow(&self, values: &[Value]) {
        let mut s = self.lock();
        s.leaves.extend_from_slice(values);
        let g = Growth::Leaves(values.to_vec());
        s.watchers.retain_mut(|w| w(&g));
    }

    /// The hashing ended: with the image's BLAKE3, or why it failed.
    pub fn end(&self, result: Result<blake3::Hash, String>) {
        let mut s = self.lock();
        let g = match &result {
            Ok(root) => Growth::Root(*root),
            Err(why) => Growth::Failed(why.clone()),
        };
        for mut w in std::mem::take(&mut s.watchers) {
            w(&g);
        }
        s.end = Some(result);
    }

    /// Whether the hashing failed (a new session should hash again).
    pub fn failed(&self) -> bool {
        matches!(self.lock().end, Some(Err(_)))
    }

    /// The leaf values and BLAKE3, once whole.
    pub fn finished(&self) -> Option<(Vec<Value>, blake3::Hash)> {
        let s = self.lock();
        match s.end {
            Some(Ok(root)) => Some((s.leaves.clone(), root)),
            _ => None,
        }
    }

    /// Fills the tree from `file` (`len` bytes): from `cache` when it
    /// vouches for the file's state, else by hashing it on `threads`
    /// threads, group by group, keeping the result in `cache`.
    pub fn fill(&self, file: &File, threads: usize, cache: Option<&Cache>) {
        let result = self.fill_inner(file, threads, cache);
        self.end(result.map_err(|e| format!("cannot hash the image: {e}")));
    }

    fn fill_inner(
        &self,
        file: &File,
        threads: usize,
        cache: Option<&Cache>,
    ) -> std::io::Result<blake3::Hash> {
        let len = self.len;
        // Stat before reading: the identity must be no younger than the bytes.
        let id = crate::cache::identity(file)?;
        let cached = cache
            .zip(id.as_ref())
            .and_then(|(c, id)| crate::cache::lookup(c, id, len));
        let Some(leaves) = cached else {
            let leaves = crate::hash_leaves(file, len, threads, |_, values| {
                self.grow(values);
                true
            })?;
            let root = crate::sender::image_root(file, len, &leaves)?;
            // An image written while it was hashed gives a tree of no
            // version of it, which a receiver would then be told it holds.
            if let Some(before) = &id {
                let now = crate::cache::identity(file)?;
                if !now.is_some_and(|now| now.same_state(before)) {
                    return Err(std::io::Error::other(
                        "it changed while it was being hashed (is it still being written?); sync again once it is complete",
                    ));
                }
            }
            if let (Some(c), Some(id)) = (cache, &id) {
                crate::cache::store(c, file, id, len, &leaves);
            }
            return Ok(root);
        };
        self.grow(&leaves);
        debug_assert_eq!(leaves.len() as u64, leaf_count(len));
        crate::sender::image_root(file, len, &leaves)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A watcher that writes to the image while it is hashed: the tree
    /// must fail, not end with a root of no version of the file.
    #[test]
    fn an_image_written_while_it_is_hashed_fails_its_tree() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("image");
        let len = 8 * crate::tree::GROUP;
        std::fs::write(&path, vec![7u8; len as usize]).expect("write");
        let file = File::open(&path).expect("open");
        // The stat's times must move on with the write below.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let tree = GrowingTree::new(len);
        let mut written = false;
        let writer = path.clone();
        tree.watch(move |g| {
            if matches!(g, Growth::Leaves(_)) && !written {
                written = true;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&writer)
                    .expect("open to write");
                f.write_all(b"changed").expect("write");
            }
            true
        });
        tree.fill(&file, 1, None);
        assert!(tree.failed(), "the tree ended: {tree:?}");
        let ends = tree.lock().end.clone();
        let why = ends.and_then(|e| e.err()).expect("a reason");
        assert!(why.contains("changed while it was being hashed"), "{why}");

        // Left alone, the same file hashes whole.
        let again = GrowingTree::new(len);
        again.fill(&file, 2, None);
        assert!(again.finished().is_some(), "{again:?}");
    }
}
