//! Intel VT-x backend.
pub mod caps;
