//! (filled in by the output work)
