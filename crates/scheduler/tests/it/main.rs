//! The integration tests of `scheduler`, one module per area, linked into one binary.

mod common;
mod fanout;
mod leadership;
mod policies;
