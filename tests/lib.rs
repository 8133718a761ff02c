//! End-to-end tests of the whole fleet live in `tests/it/` (one binary); this library is empty.
