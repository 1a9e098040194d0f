//! ballast
pub mod error;
pub mod format;
pub mod quant;
