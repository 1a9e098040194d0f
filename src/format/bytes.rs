//! Shared, immutable byte buffers that weight views can outlive their file struct with.
//!
//! A model file is read once into a [`Bytes`] (a memory map or an owned buffer) and the loader
//! hands out [`TensorBytes`]: a cheap, `Send + Sync` view of one range of it. Every view holds a
//! reference count on the backing, so the map stays alive as long as any weight does, even after
//! the parsed file struct is dropped.
//!
//! Invariants:
//! - The start of every backing is at least 64-byte aligned: maps are page aligned, and owned
//!   buffers are stored as 64-byte lines. A view therefore starts as aligned as its offset in
//!   the file, so formats that align tensor data (GGUF: 32 bytes by default) give aligned views.
//! - A `TensorBytes` range always lies inside its backing; constructors check it once, so
//!   dereferencing never fails.
//!
//! ```
//! use ballast::format::bytes::TensorBytes;
//! let all = TensorBytes::from_vec(vec![1, 2, 3, 4, 5]);
//! let tail = all.slice(2..5).unwrap();
//! drop(all);
//! assert_eq!(&*tail, &[3, 4, 5]);
//! ```

use std::fmt;
use std::ops::{Deref, Range};
use std::sync::Arc;

use bytemuck::{Pod, Zeroable};
use memmap2::Mmap;

/// Alignment of the start of an owned buffer: a cache line, enough for any SIMD load.
pub const OWNED_ALIGN: usize = 64;

/// One cache line; owned buffers are a `Vec` of these so their start is 64-byte aligned.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(64))]
struct Line([u8; OWNED_ALIGN]);

const _: () = assert!(std::mem::size_of::<Line>() == OWNED_ALIGN);
const _: () = assert!(std::mem::align_of::<Line>() == OWNED_ALIGN);

/// An owned buffer with an aligned start; `len` bytes of `lines` are meaningful.
struct Owned {
    lines: Vec<Line>,
    len: usize,
}

/// Where the bytes live. Cloning bumps a reference count; it never copies data.
#[derive(Clone)]
enum Backing {
    Mmap(Arc<Mmap>),
    Owned(Arc<Owned>),
}

impl Backing {
    fn as_slice(&self) -> &[u8] {
        match self {
            Backing::Mmap(map) => map,
            Backing::Owned(owned) => &bytemuck::cast_slice(&owned.lines)[..owned.len],
        }
    }

    fn from_vec(bytes: &[u8]) -> Backing {
        let mut lines = vec![Line([0; OWNED_ALIGN]); bytes.len().div_ceil(OWNED_ALIGN)];
        bytemuck::cast_slice_mut::<Line, u8>(&mut lines)[..bytes.len()].copy_from_slice(bytes);
        Backing::Owned(Arc::new(Owned { lines, len: bytes.len() }))
    }
}

/// A whole file's bytes, shared. Cheap to clone.
#[derive(Clone)]
pub struct Bytes {
    backing: Backing,
}

impl Bytes {
    /// Shares a read-only memory map.
    pub fn from_mmap(map: Arc<Mmap>) -> Bytes {
        Bytes { backing: Backing::Mmap(map) }
    }

    /// Copies `bytes` into an owned buffer whose start is [`OWNED_ALIGN`]-byte aligned (a
    /// `Vec<u8>` only promises 1-byte alignment, and ggml blocks hold f16/f32 fields).
    pub fn from_vec(bytes: Vec<u8>) -> Bytes {
        Bytes { backing: Backing::from_vec(&bytes) }
    }

    /// A view of `range`, or `None` if it does not lie inside the buffer.
    pub fn slice(&self, range: Range<usize>) -> Option<TensorBytes> {
        let in_bounds = range.start <= range.end && range.end <= self.len();
        in_bounds.then(|| TensorBytes { backing: self.backing.clone(), range })
    }
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.backing.as_slice()
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({} bytes)", self.len())
    }
}

/// An owned view of a range of a shared buffer (typically one tensor's data). Cheap to clone;
/// keeps the backing alive on its own.
#[derive(Clone)]
pub struct TensorBytes {
    backing: Backing,
    /// Always inside `backing` (checked by every constructor).
    range: Range<usize>,
}

impl TensorBytes {
    /// A view of `range` of a shared memory map.
    ///
    /// # Panics
    /// If `range` does not lie inside the map, like slice indexing. Loaders validate ranges
    /// against the file first and report a typed error; use [`Bytes::slice`] for a checked view.
    pub fn from_mmap(map: Arc<Mmap>, range: Range<usize>) -> TensorBytes {
        let len = map.len();
        Bytes::from_mmap(map)
            .slice(range.clone())
            .unwrap_or_else(|| panic!("TensorBytes::from_mmap: range {range:?} outside a map of {len} bytes"))
    }

    /// A view of all of `bytes`, copied into an aligned owned buffer (see [`Bytes::from_vec`]).
    pub fn from_vec(bytes: Vec<u8>) -> TensorBytes {
        let range = 0..bytes.len();
        TensorBytes { backing: Backing::from_vec(&bytes), range }
    }

    /// A sub-view of `range` (relative to this view), or `None` if it does not lie inside it.
    pub fn slice(&self, range: Range<usize>) -> Option<TensorBytes> {
        if range.start > range.end || range.end > self.range.len() {
            return None;
        }
        let start = self.range.start + range.start;
        let end = self.range.start + range.end;
        Some(TensorBytes { backing: self.backing.clone(), range: start..end })
    }

    /// The range this view covers in its backing buffer.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }
}

impl Deref for TensorBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // In bounds by construction, so this never fails.
        &self.backing.as_slice()[self.range.clone()]
    }
}

impl AsRef<[u8]> for TensorBytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for TensorBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TensorBytes({}..{})", self.range.start, self.range.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}

    #[test]
    fn views_are_send_sync_and_static() {
        assert_send_sync::<TensorBytes>();
        assert_send_sync::<Bytes>();
    }

    #[test]
    fn owned_start_is_aligned_for_every_length() {
        for len in [0, 1, 3, 63, 64, 65, 1000] {
            let view = TensorBytes::from_vec((0..len).map(|i| i as u8).collect());
            assert_eq!(view.as_ptr() as usize % OWNED_ALIGN, 0, "len {len}");
            assert_eq!(view.len(), len);
            assert!(view.iter().enumerate().all(|(i, &b)| b == i as u8));
        }
    }

    #[test]
    fn slices_check_bounds_and_outlive_the_parent() {
        let bytes = Bytes::from_vec(vec![10, 11, 12, 13]);
        assert!(bytes.slice(0..5).is_none());
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = bytes.slice(3..2);
        assert!(reversed.is_none());
        let view = bytes.slice(1..4).unwrap();
        drop(bytes);
        assert_eq!(&*view, &[11, 12, 13]);
        assert_eq!(&*view.slice(1..2).unwrap(), &[12]);
        assert!(view.slice(2..4).is_none());
        assert_eq!(view.slice(3..3).unwrap().len(), 0);
    }

    #[test]
    fn mmap_views() {
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, b"hello world").unwrap();
        // SAFETY: the temporary file is private to this test and not modified while mapped.
        let map = Arc::new(unsafe { Mmap::map(&file) }.unwrap());
        let view = TensorBytes::from_mmap(map, 6..11);
        assert_eq!(&*view, b"world");
    }
}
