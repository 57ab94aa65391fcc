//! (filled in by the mkpatch work)
