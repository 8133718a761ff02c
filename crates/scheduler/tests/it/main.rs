//! The integration tests of `scheduler`, one module per area, linked into one binary.

mod cli;
mod clocked;
mod common;
mod dynamic;
mod fanout;
mod leadership;
mod policies;
mod rollout;
