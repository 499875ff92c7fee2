// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Memory shared between the supervisor and a tenant's process: sealed
//! memfds mapped by both, holding plain atomics (the tenant's counters, a
//! [`SharedMemory`]; the record of its device, [`SharedWords`]).
//!
//! The supervisor creates the file, fixes its size with seals (a tenant's
//! process, which is not trusted, can then neither shrink it, which would
//! kill the supervisor with SIGBUS at its next read, nor grow it), and hands
//! the descriptor to the tenant's process, which maps it in turn. Whatever
//! values the tenant writes there are only numbers to the supervisor.

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

/// Types that may live in memory another process writes at any time.
///
/// # Safety
///
/// Every bit pattern, all zeros included, must be a valid value of the type,
/// all of its fields must be accessed only through atomic operations (so
/// that concurrent writes by another process are no data race), and it must
/// contain no pointer.
pub unsafe trait SharedPlain: Sync {}

/// Seals that fix a shared file's size for good.
const SIZE_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// A shared, readable and writable mapping of a whole memfd whose size is
/// sealed.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    file: OwnedFd,
}

impl Mapping {
    /// A zeroed memfd of `len` bytes named `name` (for /proc/PID/fd),
    /// sealed at its size, mapped.
    fn create(name: &str, len: usize) -> io::Result<Self> {
        let name = std::ffi::CString::new(format!("vhost-user-accel-{name}"))
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `name` is a valid C string; the flags are valid.
        let fd = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create returned a new descriptor that nothing else owns.
        let file = unsafe { OwnedFd::from_raw_fd(fd) };
        let size =
            libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: plain calls on a descriptor this function owns.
        if unsafe { libc::ftruncate(file.as_raw_fd(), size) } != 0
            // SAFETY: as above.
            || unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, SIZE_SEALS) } != 0
        {
            return Err(io::Error::last_os_error());
        }
        Self::map(file, len)
    }

    /// Maps `file`, a memfd made by [`Mapping::create`] (in this process or
    /// the one that handed it over); refused unless its size is sealed at
    /// exactly `len` bytes.
    fn attach(file: OwnedFd, len: usize) -> io::Result<Self> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
        // SAFETY: F_GET_SEALS only reads the descriptor's seals.
        let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 {
            return Err(io::Error::last_os_error());
        }
        if seals & SIZE_SEALS != SIZE_SEALS {
            return Err(invalid("shared memory file is not sealed at its size"));
        }
        let size = std::fs::File::from(file.try_clone()?).metadata()?.len();
        if usize::try_from(size).ok() != Some(len) {
            return Err(invalid("shared memory file has the wrong size"));
        }
        Self::map(file, len)
    }

    fn map(file: OwnedFd, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        // SAFETY: a new shared mapping of the whole file (whose size is
        // `len`, fixed by seals), at an address the kernel picks.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(addr.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Mapping { ptr, len, file })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`, which no
        // reference outlives (they borrow the value that owns `self`).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMemory")
            .field("fd", &self.file.as_raw_fd())
            .field("len", &self.len)
            .finish()
    }
}

/// A `T` in a memfd mapped shared, readable and writable.
#[derive(Debug)]
pub struct SharedMemory<T: SharedPlain> {
    mapping: Mapping,
    _marker: PhantomData<T>,
}

// SAFETY: the mapping is only reached through `&T`, and `T: Sync`; the
// mapping belongs to this value alone and is unmapped only when it drops.
unsafe impl<T: SharedPlain> Send for SharedMemory<T> {}
// SAFETY: as above.
unsafe impl<T: SharedPlain> Sync for SharedMemory<T> {}

impl<T: SharedPlain> SharedMemory<T> {
    /// A zeroed `T` in a new memfd named `name` (for /proc/PID/fd), sealed
    /// at its size.
    pub fn create(name: &str) -> io::Result<Self> {
        Mapping::create(name, std::mem::size_of::<T>()).map(Self::from_mapping)
    }

    /// Maps the shared `T` of `file`, a memfd made by [`SharedMemory::create`]
    /// (in this process or the one that handed it over); refused unless its
    /// size is sealed at exactly the size of `T`.
    pub fn attach(file: OwnedFd) -> io::Result<Self> {
        Mapping::attach(file, std::mem::size_of::<T>()).map(Self::from_mapping)
    }

    fn from_mapping(mapping: Mapping) -> Self {
        SharedMemory {
            mapping,
            _marker: PhantomData,
        }
    }
}

impl<T: SharedPlain> AsFd for SharedMemory<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.mapping.file.as_fd()
    }
}

impl<T: SharedPlain> std::ops::Deref for SharedMemory<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the mapping is page-aligned, as large as `T`, lives as long
        // as `self`, and any bytes in it are a valid `T` (`SharedPlain`).
        unsafe { self.mapping.ptr.cast::<T>().as_ref() }
    }
}

/// A run of 64-bit atomic words in a memfd mapped shared, readable and
/// writable, its length fixed when it is made.
#[derive(Debug)]
pub struct SharedWords {
    mapping: Mapping,
}

// SAFETY: the mapping is only reached through `&[AtomicU64]`, which is
// `Sync`; it belongs to this value alone and is unmapped when it drops.
unsafe impl Send for SharedWords {}
// SAFETY: as above.
unsafe impl Sync for SharedWords {}

const WORD: usize = std::mem::size_of::<AtomicU64>();

impl SharedWords {
    /// `words` zeroed words in a new memfd named `name`, sealed at its size.
    pub fn create(name: &str, words: usize) -> io::Result<Self> {
        let len = words.checked_mul(WORD).ok_or(io::ErrorKind::InvalidInput)?;
        Mapping::create(name, len).map(|mapping| SharedWords { mapping })
    }

    /// Maps the `words` words of `file`, made by [`SharedWords::create`];
    /// refused unless its size is sealed at exactly that many words.
    pub fn attach(file: OwnedFd, words: usize) -> io::Result<Self> {
        let len = words.checked_mul(WORD).ok_or(io::ErrorKind::InvalidInput)?;
        Mapping::attach(file, len).map(|mapping| SharedWords { mapping })
    }
}

impl AsFd for SharedWords {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.mapping.file.as_fd()
    }
}

impl std::ops::Deref for SharedWords {
    type Target = [AtomicU64];

    fn deref(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is page-aligned (so aligned for `AtomicU64`),
        // `len` bytes long, a multiple of the word's size (`create`,
        // `attach`), lives as long as `self`, and any bits are a valid
        // `AtomicU64`, accessed only atomically.
        unsafe {
            std::slice::from_raw_parts(
                self.mapping.ptr.cast::<AtomicU64>().as_ptr(),
                self.mapping.len / WORD,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Pair([AtomicU64; 2]);
    // SAFETY: two atomics: any bits are valid, only atomic access, no pointer.
    unsafe impl SharedPlain for Pair {}

    #[test]
    fn two_mappings_of_one_file_see_each_other() {
        let a = SharedMemory::<Pair>::create("test").unwrap();
        let b = SharedMemory::<Pair>::attach(a.as_fd().try_clone_to_owned().unwrap()).unwrap();
        a.0[1].store(7, Ordering::Relaxed);
        assert_eq!(b.0[1].load(Ordering::Relaxed), 7);
        assert_eq!(b.0[0].load(Ordering::Relaxed), 0);
        // The size is sealed: neither side can shrink it under the other.
        // SAFETY: a plain call on a descriptor of this test.
        let rc = unsafe { libc::ftruncate(b.as_fd().as_raw_fd(), 0) };
        assert_eq!(rc, -1);
    }

    #[test]
    fn unsealed_or_wrongly_sized_files_are_refused() {
        let file = tempfile_fd();
        assert!(SharedMemory::<Pair>::attach(file).is_err());
        let words = SharedWords::create("test", 3).unwrap();
        let other = || words.as_fd().try_clone_to_owned().unwrap();
        assert!(SharedWords::attach(other(), 4).is_err());
        assert!(SharedMemory::<Pair>::attach(other()).is_err());
        assert!(SharedWords::create("test", 0).is_err());
    }

    #[test]
    fn two_mappings_of_words_see_each_other() {
        let a = SharedWords::create("test", 1000).unwrap();
        let b = SharedWords::attach(a.as_fd().try_clone_to_owned().unwrap(), 1000).unwrap();
        assert_eq!(b.len(), 1000);
        a[999].store(u64::MAX, Ordering::Relaxed);
        assert_eq!(b[999].load(Ordering::Relaxed), u64::MAX);
        assert_eq!(b[0].load(Ordering::Relaxed), 0);
    }

    fn tempfile_fd() -> OwnedFd {
        // SAFETY: valid name and flags.
        let fd = unsafe { libc::memfd_create(c"plain".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a new descriptor owned by nothing else.
        let file = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::ftruncate(file.as_raw_fd(), 16) }, 0);
        file
    }
}
