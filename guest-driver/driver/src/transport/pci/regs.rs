// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Register access to a BAR window: 8/16/32/64-bit little-endian reads and
//! writes at offsets, bounds and alignment checked.
//!
//! [`MmioBar`] maps a sysfs `resourceN` file (uncached, as the kernel maps PCI
//! resources) and accesses it with volatile loads and stores. [`Window`] is a
//! bounded view of part of a BAR (one virtio structure). Tests implement
//! [`Registers`] with an in-memory device model.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use thiserror::Error;

/// Errors of register accesses and BAR mapping.
#[derive(Debug, Error)]
pub enum Error {
    /// The access falls outside the window.
    #[error("{width}-byte register access at {offset:#x} is outside a window of {len:#x} bytes")]
    OutOfBounds {
        /// Offset in the window.
        offset: u64,
        /// Access width in bytes.
        width: u8,
        /// Window length.
        len: u64,
    },
    /// The access is not naturally aligned.
    #[error("{width}-byte register access at {offset:#x} is not aligned")]
    Misaligned {
        /// Offset in the window.
        offset: u64,
        /// Access width in bytes.
        width: u8,
    },
    /// A resource file could not be opened or mapped.
    #[error("cannot map PCI resource {path}")]
    Map {
        /// The sysfs `resourceN` file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A resource file is empty (the BAR is not implemented).
    #[error("PCI resource {0} is empty")]
    EmptyResource(PathBuf),
}

/// Result of this module's operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Width of a register access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    /// 8 bits.
    W8 = 1,
    /// 16 bits.
    W16 = 2,
    /// 32 bits.
    W32 = 4,
    /// 64 bits.
    W64 = 8,
}

impl Width {
    /// Bytes accessed.
    pub fn bytes(self) -> u8 {
        self as u8
    }
}

/// Checks that a `width` access at `offset` is aligned and within `len` bytes.
pub fn check_access(len: u64, offset: u64, width: Width) -> Result<()> {
    let w = u64::from(width.bytes());
    if offset.checked_add(w).is_none_or(|end| end > len) {
        return Err(Error::OutOfBounds {
            offset,
            width: width.bytes(),
            len,
        });
    }
    if offset % w != 0 {
        return Err(Error::Misaligned {
            offset,
            width: width.bytes(),
        });
    }
    Ok(())
}

fn low_bytes<const N: usize>(value: u64) -> [u8; N] {
    let all = value.to_le_bytes();
    let mut out = [0u8; N];
    out.copy_from_slice(&all[..N]);
    out
}

/// A window of device registers. Values are little-endian, as on the bus.
///
/// Accesses take `&self`: registers have their own (device-side) state.
pub trait Registers: fmt::Debug + Send + Sync {
    /// Length of the window in bytes.
    fn len(&self) -> u64;

    /// Whether the window is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads a `width` register at `offset`; the value is zero-extended.
    fn read(&self, offset: u64, width: Width) -> Result<u64>;

    /// Writes the low `width` bytes of `value` at `offset`.
    fn write(&self, offset: u64, width: Width, value: u64) -> Result<()>;

    /// Reads an 8-bit register.
    fn read8(&self, offset: u64) -> Result<u8> {
        self.read(offset, Width::W8).map(|v| low_bytes::<1>(v)[0])
    }

    /// Reads a 16-bit register.
    fn read16(&self, offset: u64) -> Result<u16> {
        self.read(offset, Width::W16)
            .map(|v| u16::from_le_bytes(low_bytes(v)))
    }

    /// Reads a 32-bit register.
    fn read32(&self, offset: u64) -> Result<u32> {
        self.read(offset, Width::W32)
            .map(|v| u32::from_le_bytes(low_bytes(v)))
    }

    /// Reads a 64-bit register in one access.
    fn read64(&self, offset: u64) -> Result<u64> {
        self.read(offset, Width::W64)
    }

    /// Writes an 8-bit register.
    fn write8(&self, offset: u64, value: u8) -> Result<()> {
        self.write(offset, Width::W8, value.into())
    }

    /// Writes a 16-bit register.
    fn write16(&self, offset: u64, value: u16) -> Result<()> {
        self.write(offset, Width::W16, value.into())
    }

    /// Writes a 32-bit register.
    fn write32(&self, offset: u64, value: u32) -> Result<()> {
        self.write(offset, Width::W32, value.into())
    }

    /// Writes a 64-bit register in one access.
    fn write64(&self, offset: u64, value: u64) -> Result<()> {
        self.write(offset, Width::W64, value)
    }
}

/// `len` bytes at `base` of a register set: one virtio structure in its BAR.
#[derive(Debug, Clone)]
pub struct Window {
    regs: Arc<dyn Registers>,
    base: u64,
    len: u64,
}

impl Window {
    /// A view of `len` bytes at `base` of `regs`, which must contain it.
    pub fn new(regs: Arc<dyn Registers>, base: u64, len: u64) -> Result<Self> {
        if base.checked_add(len).is_none_or(|end| end > regs.len()) {
            return Err(Error::OutOfBounds {
                offset: base,
                width: 0,
                len: regs.len(),
            });
        }
        Ok(Window { regs, base, len })
    }
}

impl Registers for Window {
    fn len(&self) -> u64 {
        self.len
    }

    fn read(&self, offset: u64, width: Width) -> Result<u64> {
        check_access(self.len, offset, width)?;
        self.regs.read(self.base + offset, width)
    }

    fn write(&self, offset: u64, width: Width, value: u64) -> Result<()> {
        check_access(self.len, offset, width)?;
        self.regs.write(self.base + offset, width, value)
    }
}

/// A memory BAR mapped from its sysfs `resourceN` file.
pub struct MmioBar {
    path: PathBuf,
    base: NonNull<u8>,
    len: usize,
    _file: File,
}

// SAFETY: the mapping is owned by this value and only accessed through
// volatile loads and stores of whole registers; device registers tolerate
// concurrent accesses from several threads (the device serialises them).
unsafe impl Send for MmioBar {}
// SAFETY: as for `Send`: `&MmioBar` only allows volatile register accesses.
unsafe impl Sync for MmioBar {}

impl fmt::Debug for MmioBar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MmioBar")
            .field("path", &self.path)
            .field("len", &format_args!("{:#x}", self.len))
            .finish()
    }
}

impl MmioBar {
    /// Maps the whole of `path` (a sysfs `resourceN` file, or any file in tests).
    pub fn open(path: &Path) -> Result<Self> {
        let map_err = |source| Error::Map {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(map_err)?;
        let size = file.metadata().map_err(map_err)?.len();
        let len = usize::try_from(size)
            .map_err(|_| map_err(io::Error::from(io::ErrorKind::InvalidInput)))?;
        if len == 0 {
            return Err(Error::EmptyResource(path.to_path_buf()));
        }
        // SAFETY: a fresh shared mapping of an open file, at an address the
        // kernel chooses; nothing else in the process refers to that range.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(map_err(io::Error::last_os_error()));
        }
        let base = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| map_err(io::Error::from(io::ErrorKind::InvalidData)))?;
        Ok(MmioBar {
            path: path.to_path_buf(),
            base,
            len,
            _file: file,
        })
    }

    /// The mapped file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn ptr(&self, offset: u64, width: Width) -> Result<*mut u8> {
        check_access(self.len as u64, offset, width)?;
        // Below `len`, a usize, so the conversion cannot fail.
        let offset = usize::try_from(offset).map_err(|_| Error::OutOfBounds {
            offset,
            width: width.bytes(),
            len: self.len as u64,
        })?;
        // SAFETY: `offset + width <= len`, so the result stays inside the mapping.
        Ok(unsafe { self.base.as_ptr().add(offset) })
    }
}

impl Registers for MmioBar {
    fn len(&self) -> u64 {
        self.len as u64
    }

    fn read(&self, offset: u64, width: Width) -> Result<u64> {
        let p = self.ptr(offset, width)?;
        // SAFETY: `p` is inside the live mapping and aligned to `width`
        // (checked by `ptr`, and the mapping is page aligned).
        let value = unsafe {
            match width {
                Width::W8 => u64::from(p.read_volatile()),
                Width::W16 => u64::from(u16::from_le(p.cast::<u16>().read_volatile())),
                Width::W32 => u64::from(u32::from_le(p.cast::<u32>().read_volatile())),
                Width::W64 => u64::from_le(p.cast::<u64>().read_volatile()),
            }
        };
        Ok(value)
    }

    fn write(&self, offset: u64, width: Width, value: u64) -> Result<()> {
        let p = self.ptr(offset, width)?;
        // SAFETY: as in `read`; writing device registers has no effect on
        // Rust-visible memory.
        unsafe {
            match width {
                Width::W8 => p.write_volatile(low_bytes::<1>(value)[0]),
                Width::W16 => p
                    .cast::<u16>()
                    .write_volatile(u16::from_le_bytes(low_bytes(value)).to_le()),
                Width::W32 => p
                    .cast::<u32>()
                    .write_volatile(u32::from_le_bytes(low_bytes(value)).to_le()),
                Width::W64 => p.cast::<u64>().write_volatile(value.to_le()),
            }
        }
        Ok(())
    }
}

impl Drop for MmioBar {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly the mapping made in `open`, which
        // nothing uses after this value is dropped.
        let rc = unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
        if rc != 0 {
            log::warn!(
                "munmap of {} failed: {}",
                self.path.display(),
                io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn access_checks() {
        assert!(check_access(8, 0, Width::W64).is_ok());
        assert!(check_access(8, 4, Width::W32).is_ok());
        assert!(matches!(
            check_access(8, 6, Width::W32),
            Err(Error::OutOfBounds { .. })
        ));
        assert!(matches!(
            check_access(8, 2, Width::W32),
            Err(Error::Misaligned { .. })
        ));
        assert!(matches!(
            check_access(8, u64::MAX, Width::W8),
            Err(Error::OutOfBounds { .. })
        ));
    }

    fn temp_file(len: usize) -> (PathBuf, File) {
        let path = std::env::temp_dir().join(format!(
            "accel-regs-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let mut f = File::create(&path).unwrap();
        f.write_all(&vec![0u8; len]).unwrap();
        (path, f)
    }

    #[test]
    fn file_backed_bar_and_windows() {
        let (path, _f) = temp_file(0x2000);
        let bar = Arc::new(MmioBar::open(&path).unwrap());
        assert_eq!(bar.len(), 0x2000);
        bar.write32(0x10, 0xdead_beef).unwrap();
        assert_eq!(bar.read16(0x10).unwrap(), 0xbeef);
        assert_eq!(bar.read8(0x13).unwrap(), 0xde);
        bar.write64(0x18, 0x0102_0304_0506_0708).unwrap();
        assert_eq!(bar.read32(0x1c).unwrap(), 0x0102_0304);
        assert!(bar.read32(0x2000).is_err());
        assert!(bar.write16(0x11, 1).is_err());

        let window = Window::new(bar.clone(), 0x1000, 0x100).unwrap();
        window.write16(0xfe, 0x1234).unwrap();
        assert_eq!(bar.read16(0x10fe).unwrap(), 0x1234);
        assert!(window.read32(0xfe).is_err());
        assert!(window.read8(0x100).is_err());
        assert!(Window::new(bar.clone(), 0x1f00, 0x200).is_err());
        drop(window);
        drop(bar);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn empty_and_missing_resources() {
        let (path, _f) = temp_file(0);
        assert!(matches!(MmioBar::open(&path), Err(Error::EmptyResource(_))));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            MmioBar::open(Path::new("/nonexistent/resource4")),
            Err(Error::Map { .. })
        ));
    }
}
