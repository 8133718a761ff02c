//! End-to-end tests of the whole fleet, one module per area, linked into one binary.

mod cluster;
mod control_plane;
mod health;
mod hostile;
mod lifecycle;
mod nats_auth;
mod worker_loop;
