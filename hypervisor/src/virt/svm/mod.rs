//! AMD-V (SVM) backend.
pub mod caps;
