//! Model file formats: shared byte buffers ([`bytes`]) and the GGUF reader/writer ([`gguf`]).

pub mod bytes;
pub mod gguf;
