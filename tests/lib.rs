//! End-to-end tests of the whole fleet live in `tests/*.rs`; this library is empty.
