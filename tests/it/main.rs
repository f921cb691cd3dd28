//! One integration test crate (one link step); a module per capability.
//! Unix only: it drives a real `sshd`, `sh` and a systemd container.
#![cfg(unix)]

mod after_switch;
mod core;
mod crlf;
mod delta;
mod docs;
mod ecosystem;
mod envfile;
mod faults;
mod first_hour;
mod first_hour_check;
mod gates;
mod harness;
mod integrity;
mod layers;
mod locks;
mod model;
mod reconnect;
mod siblings;
mod ssh;
mod ssh_oracle;
mod systemd;
mod terminal;
mod watchdog;
mod wine;
