//! Errors, one enum per layer. Each layer's enum lives beside its code (`GgufError` in
//! `format::gguf`, ...); this module gathers them for callers that cross layers.
