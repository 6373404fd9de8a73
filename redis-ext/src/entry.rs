//! A cache entry: the value of one Redis key of the module's data type.
//!
//! One allocation holds a fixed header and the value bytes, and Redis keeps a
//! thin pointer to it. Two allocations (a boxed struct plus a byte buffer)
//! would cost a pointer and an allocator header more per entry, and SPEC 6 caps
//! the overhead over a plain string key at 32 bytes.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ffi::c_void;
use std::ptr::NonNull;

use crate::keyname::KeyForm;
use crate::namespace::Namespace;

/// A generation no namespace ever reaches: entries loaded as invalidated carry it.
pub const NEVER_CURRENT: u64 = u64::MAX;

/// Top bit of `len_and_form`: the key was stored with its own hash tag.
const TAGGED_BIT: u32 = 1 << 31;

#[repr(C)]
struct Header {
    namespace: &'static Namespace,
    generation: u64,
    len_and_form: u32,
    /// Bytes charged to the namespace's `bytes` counter when the entry was made,
    /// so that freeing, even on the lazy-free thread, gives back exactly that.
    charged: u32,
}

const HEADER: usize = std::mem::size_of::<Header>();

/// An owned entry; dropping it gives its count and bytes back to its namespace.
pub struct Entry(NonNull<Header>);

// SAFETY: an entry is plain owned memory; the namespace it points to is Sync.
unsafe impl Send for Entry {}

impl Entry {
    /// Builds an entry and charges it to `namespace` (one entry, `charged` bytes).
    pub fn new(
        namespace: &'static Namespace,
        generation: u64,
        form: KeyForm,
        value: &[u8],
        charged: u32,
    ) -> Entry {
        assert!(
            value.len() < TAGGED_BIT as usize,
            "value length checked by caller"
        );
        let layout = layout_for(value.len());
        // SAFETY: the layout has a non-zero size (the header).
        let raw = unsafe { alloc(layout) };
        let Some(ptr) = NonNull::new(raw.cast::<Header>()) else {
            handle_alloc_error(layout)
        };
        let form_bit = match form {
            KeyForm::Tagged => TAGGED_BIT,
            KeyForm::Wrapped => 0,
        };
        // SAFETY: `ptr` is fresh, aligned for Header and large enough for the
        // header followed by `value.len()` bytes.
        unsafe {
            ptr.as_ptr().write(Header {
                namespace,
                generation,
                len_and_form: value.len() as u32 | form_bit,
                charged,
            });
            std::ptr::copy_nonoverlapping(value.as_ptr(), raw.add(HEADER), value.len());
        }
        namespace.entry_created(generation, charged);
        Entry(ptr)
    }

    /// Bytes of the allocation of an entry holding `value_len` bytes.
    pub fn alloc_len_for(value_len: usize) -> usize {
        HEADER + value_len
    }

    /// Hands the allocation to Redis as a module value pointer.
    pub fn into_raw(self) -> *mut c_void {
        let ptr = self.0.as_ptr().cast();
        std::mem::forget(self);
        ptr
    }

    /// Takes back ownership of a pointer made by [`Entry::into_raw`].
    ///
    /// # Safety
    /// `raw` must come from `into_raw` and not be used again by its previous owner.
    pub unsafe fn from_raw(raw: *mut c_void) -> Option<Entry> {
        NonNull::new(raw.cast::<Header>()).map(Entry)
    }

    /// Borrows the entry.
    pub fn view(&self) -> EntryRef<'_> {
        EntryRef {
            header: self.0,
            _life: std::marker::PhantomData,
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let view = self.view();
        let (namespace, generation, charged) =
            (view.namespace(), view.generation(), view.charged());
        let layout = layout_for(view.len());
        // SAFETY: the pointer was allocated in `new` with this layout.
        unsafe { dealloc(self.0.as_ptr().cast(), layout) };
        namespace.entry_freed(generation, charged);
    }
}

/// A borrowed entry (from Redis's module value pointer or an owned [`Entry`]).
#[derive(Clone, Copy)]
pub struct EntryRef<'a> {
    header: NonNull<Header>,
    _life: std::marker::PhantomData<&'a Header>,
}

impl<'a> EntryRef<'a> {
    /// Borrows the entry behind a module value pointer.
    ///
    /// # Safety
    /// `raw` must be a live pointer made by [`Entry::into_raw`], valid for `'a`.
    pub unsafe fn from_raw(raw: *const c_void) -> Option<EntryRef<'a>> {
        NonNull::new(raw.cast_mut().cast::<Header>()).map(|header| EntryRef {
            header,
            _life: std::marker::PhantomData,
        })
    }

    fn header(&self) -> &'a Header {
        // SAFETY: the pointer is live for 'a by construction.
        unsafe { self.header.as_ref() }
    }

    /// The namespace the entry was written in.
    pub fn namespace(&self) -> &'static Namespace {
        self.header().namespace
    }

    /// The namespace generation the entry was written in.
    pub fn generation(&self) -> u64 {
        self.header().generation
    }

    /// How the stored name was derived from the user's key.
    pub fn form(&self) -> KeyForm {
        if self.header().len_and_form & TAGGED_BIT != 0 {
            KeyForm::Tagged
        } else {
            KeyForm::Wrapped
        }
    }

    /// Length of the value in bytes.
    pub fn len(&self) -> usize {
        (self.header().len_and_form & !TAGGED_BIT) as usize
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes charged to the namespace for this entry.
    pub fn charged(&self) -> u32 {
        self.header().charged
    }

    /// The value bytes.
    pub fn value(&self) -> &'a [u8] {
        // SAFETY: `len` bytes follow the header in the same allocation.
        unsafe {
            std::slice::from_raw_parts(self.header.as_ptr().cast::<u8>().add(HEADER), self.len())
        }
    }

    /// Whether the entry is live in `generation` (not invalidated since written).
    pub fn is_current(&self, generation: u64) -> bool {
        self.generation() == generation
    }

    /// Bytes of the allocation (header and value), before allocator rounding.
    pub fn alloc_len(&self) -> usize {
        HEADER + self.len()
    }
}

fn layout_for(len: usize) -> Layout {
    match Layout::from_size_align(HEADER + len, std::mem::align_of::<Header>()) {
        Ok(layout) => layout,
        // Unreachable: len < 2^31 keeps the size far from isize::MAX.
        Err(_) => handle_alloc_error(Layout::new::<Header>()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace() -> &'static Namespace {
        Box::leak(Box::new(Namespace::new("test", 4)))
    }

    #[test]
    fn header_is_24_bytes() {
        assert_eq!(HEADER, 24);
    }

    #[test]
    fn entry_keeps_value_and_metadata() {
        let ns = namespace();
        let entry = Entry::new(ns, 7, KeyForm::Tagged, b"a\0b\r\n", 40);
        let view = entry.view();
        assert_eq!(view.value(), b"a\0b\r\n");
        assert_eq!(view.generation(), 7);
        assert_eq!(view.form(), KeyForm::Tagged);
        assert_eq!(view.charged(), 40);
        assert!(std::ptr::eq(view.namespace(), ns));
        assert!(view.is_current(7) && !view.is_current(8));
    }

    #[test]
    fn counts_follow_create_and_drop() {
        let ns = namespace();
        let a = Entry::new(ns, 0, KeyForm::Wrapped, b"", 10);
        let raw = Entry::new(ns, 0, KeyForm::Wrapped, b"xyz", 20).into_raw();
        assert_eq!((ns.entries(), ns.bytes()), (2, 30));
        drop(a);
        assert_eq!((ns.entries(), ns.bytes()), (1, 20));
        // SAFETY: raw came from into_raw above.
        let b = unsafe { Entry::from_raw(raw) }.expect("non-null");
        assert_eq!(b.view().value(), b"xyz");
        drop(b);
        assert_eq!((ns.entries(), ns.bytes()), (0, 0));
    }
}
