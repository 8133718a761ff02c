//! The integration tests of `cache-invalidator`, one module per area, linked into one binary.

mod cli;
mod coalescing;
mod common;
mod faults;
mod invalidation;
