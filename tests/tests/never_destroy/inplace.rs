//! (filled in by the inplace work)
