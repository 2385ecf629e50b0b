//! Register and capability layouts of the cxl-accel device: constants, field
//! accessors and the spec sections they come from. No behaviour, no I/O.
//!
//! Spec references are to CXL r3.1 (and r4.0 where it adds fields) and to the
//! PCI Express Base Specification r6.x.

#![no_std]

pub mod component;
pub mod device;
pub mod dvsec;
pub mod hdm;
pub mod layout;
pub mod mailbox;
pub mod pci;
