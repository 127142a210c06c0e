//! opdbus-blockchain: a tamper-evident, durable audit trail for op-dbus.

pub mod btrfs;
pub mod chain;
pub mod snapshot;
