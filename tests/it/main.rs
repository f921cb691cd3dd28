//! One integration test crate (one link step); a module per capability.

mod core;
mod ecosystem;
mod faults;
mod gates;
mod harness;
mod ssh;
mod systemd;
