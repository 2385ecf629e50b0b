//! cxl-accel-backend: serves the `accel-type2` device over vfio-user.
pub mod vfio_user;
