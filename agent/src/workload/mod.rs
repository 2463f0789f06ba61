//! Workloads (issue 15): typed desired state from the operator, reconciled
//! on the device like a small kubelet. One signed manifest per device
//! (protocol/src/workload.rs); a pure decision core (`core`); one
//! reconciler per resource kind (`file`, `unit`, `container`); the service
//! that watches the manifest, runs passes on change and every drift
//! interval, and reports typed status (`service`). The upgrade health gate
//! reads the core's `Gate` (`upgrade/health.rs`).

pub mod config;
pub mod container;
pub mod core;
pub mod effects;
pub mod file;
pub mod objects;
pub mod reconciler;
pub mod service;
pub mod store;
pub mod systemd_interface;
pub mod unit;

pub use config::WorkloadConfig;
pub use core::Gate;
