//! The integration tests of the example consumer, linked into one binary.

mod crash;
