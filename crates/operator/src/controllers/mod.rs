//! The controllers: I/O around the pure decisions in `vworkspace_reconcile`.

pub mod application_instance;
pub mod cluster;
pub mod operation;
pub mod written;
