//! `sbc-benches`: criterion micro-benchmarks (`benches/`) and the load generator
//! (`src/bin/loadgen.rs`) with its pure parts here: the probe that rides inside each audio
//! payload ([`load::probe`]), latency histograms ([`load::hist`]), the few SIP messages a carrier
//! trunk sends and the fields it reads back ([`load::sip`]), and `/proc` readings ([`load::proc`]).
#![forbid(unsafe_code)]

pub mod load;
