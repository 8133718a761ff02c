//! The integration tests of `scheduler`, one module per area, linked into one binary.

mod cli;
mod common;
mod fanout;
mod leadership;
mod policies;
mod rollout;
