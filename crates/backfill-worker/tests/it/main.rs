//! The integration tests of `backfill-worker`, one module per area, linked into one binary.

mod bad_specs;
mod chunks;
mod cli;
mod common;
mod control;
mod copy_to_tenant;
mod exactly_once;
mod finalize;
mod mapping_files;
mod named_database;
mod reports;
mod tenant_codes;
mod throttle;
