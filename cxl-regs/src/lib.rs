//! Register and capability layouts of the cxl-accel device: constants, field
//! accessors and the spec sections they come from. No behaviour, no I/O; besides
//! the layouts, only [`units`], the one parser of numbers and sizes that every crate
//! and the harness share, and [`le`], bounds-checked little-endian field reads.
//!
//! Spec references are to CXL r3.1 (and r4.0 where it adds fields) and to the
//! PCI Express Base Specification r6.x.

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod cdat;
pub mod component;
pub mod device;
pub mod doe;
pub mod dvsec;
pub mod hdm;
pub mod layout;
pub mod le;
pub mod mailbox;
pub mod pci;
pub mod units;
