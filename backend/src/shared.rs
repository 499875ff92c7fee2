//! Memory shared between the supervisor and a tenant's process: a sealed
//! memfd mapped by both, holding plain atomics (the tenant's counters).
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

/// A `T` in a memfd mapped shared, readable and writable.
pub struct SharedMemory<T: SharedPlain> {
    ptr: NonNull<T>,
    file: OwnedFd,
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
        let size = libc::off_t::try_from(std::mem::size_of::<T>())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: plain calls on a descriptor this function owns.
        if unsafe { libc::ftruncate(file.as_raw_fd(), size) } != 0
            // SAFETY: as above.
            || unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, SIZE_SEALS) } != 0
        {
            return Err(io::Error::last_os_error());
        }
        Self::map(file)
    }

    /// Maps the shared `T` of `file`, a memfd made by [`SharedMemory::create`]
    /// (in this process or the one that handed it over); refused unless its
    /// size is sealed at exactly the size of `T`.
    pub fn attach(file: OwnedFd) -> io::Result<Self> {
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
        if usize::try_from(size).ok() != Some(std::mem::size_of::<T>()) {
            return Err(invalid("shared memory file has the wrong size"));
        }
        Self::map(file)
    }

    fn map(file: OwnedFd) -> io::Result<Self> {
        // SAFETY: a new shared mapping of the whole file (whose size is
        // `size_of::<T>()`, fixed by seals), at an address the kernel picks.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                std::mem::size_of::<T>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(addr.cast::<T>()).ok_or_else(io::Error::last_os_error)?;
        Ok(SharedMemory {
            ptr,
            file,
            _marker: PhantomData,
        })
    }
}

impl<T: SharedPlain> AsFd for SharedMemory<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl<T: SharedPlain> std::ops::Deref for SharedMemory<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the mapping is page-aligned, as large as `T`, lives as long
        // as `self`, and any bytes in it are a valid `T` (`SharedPlain`).
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: SharedPlain> Drop for SharedMemory<T> {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`, which no
        // reference outlives (they borrow `self`).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), std::mem::size_of::<T>()) };
    }
}

impl<T: SharedPlain> std::fmt::Debug for SharedMemory<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMemory")
            .field("fd", &self.file.as_raw_fd())
            .finish()
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
