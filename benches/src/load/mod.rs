//! Building blocks of the load generator; the I/O lives in `src/bin/loadgen.rs`.

pub mod hist;
pub mod probe;
pub mod proc;
pub mod sip;
