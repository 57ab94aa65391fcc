//! Issue 13, "Never destroy a disk": one test per defect, each driving the
//! real binaries the way a user would, on files, FIFOs, loop devices and
//! char devices. Every test here failed on the commit before its fix.

mod common;
mod inplace;
mod mkpatch;
mod output;
