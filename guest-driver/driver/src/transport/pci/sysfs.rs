// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! PCI functions through sysfs: finding virtio-accel functions, binding them
//! to `uio_pci_generic`, reading configuration space and BAR sizes.
//!
//! Every function takes the sysfs root (normally [`SYSFS_ROOT`]) so that tests
//! can build a fake tree in a temporary directory.
//!
//! Binding follows the kernel's documented sequence (Documentation/ABI,
//! `driver_override`): load the module, write the driver name to the device's
//! `driver_override`, unbind the current driver, then ask the PCI core to probe
//! the device again (`/sys/bus/pci/drivers_probe`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

use super::layout::{pci_header, ACCEL_PCI_DEVICE_ID, VIRTIO_PCI_VENDOR_ID};

/// Where sysfs is mounted.
pub const SYSFS_ROOT: &str = "/sys";
/// The driver that gives userspace the device's interrupt and BARs.
pub const UIO_DRIVER: &str = "uio_pci_generic";
/// The kernel's virtio-pci driver, which this crate may unbind.
pub const VIRTIO_PCI_DRIVER: &str = "virtio-pci";
/// `flags` bit of an I/O-port resource in the sysfs `resource` file.
pub const IORESOURCE_IO: u64 = 0x100;

/// Errors of sysfs operations.
#[derive(Debug, Error)]
pub enum Error {
    /// The address is not `domain:bus:device.function`.
    #[error("'{0}' is not a PCI address like 0000:00:04.0 (domain:bus:device.function)")]
    InvalidBdf(String),
    /// No such PCI function.
    #[error("no PCI device {bdf}: {} does not exist (list virtio-accel devices first)", path.display())]
    DeviceNotFound {
        /// The address.
        bdf: String,
        /// The sysfs directory looked for.
        path: PathBuf,
    },
    /// The function is not a virtio-accel function.
    #[error(
        "PCI device {bdf} is {vendor:04x}:{device:04x}, not a virtio-accel device (1af4:107f)"
    )]
    NotAccel {
        /// The address.
        bdf: String,
        /// Its vendor ID.
        vendor: u16,
        /// Its device ID.
        device: u16,
    },
    /// EACCES or EPERM on a sysfs file.
    #[error("permission denied on {}: run as root", path.display())]
    PermissionDenied {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Another I/O failure on a sysfs file.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// "read", "write", "list" or "lock".
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A sysfs file does not hold what the kernel writes there.
    #[error("unexpected contents in {}: {what}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was expected.
        what: &'static str,
    },
    /// The function is bound to a driver this crate does not unbind by itself.
    #[error(
        "PCI device {bdf} is bound to driver {driver}; refusing to unbind it \
         (unbind it yourself, or allow rebinding)"
    )]
    BoundElsewhere {
        /// The address.
        bdf: String,
        /// The current driver.
        driver: String,
    },
    /// `modprobe` could not be started.
    #[error("cannot run {program} to load {UIO_DRIVER}")]
    ModprobeSpawn {
        /// The program.
        program: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// `modprobe uio_pci_generic` failed.
    #[error(
        "'modprobe {UIO_DRIVER}' failed ({status}): {stderr}; the module is missing \
         (install the kernel's modules package; it needs CONFIG_UIO_PCI_GENERIC) \
         or you are not root"
    )]
    ModprobeFailed {
        /// Exit status.
        status: String,
        /// What modprobe printed.
        stderr: String,
    },
    /// The module loaded but its driver did not appear.
    #[error("{UIO_DRIVER} is not registered ({} is missing) after modprobe", path.display())]
    ModuleMissing {
        /// The driver directory.
        path: PathBuf,
    },
    /// After the probe the function is not bound to `uio_pci_generic`.
    #[error(
        "after probing, PCI device {bdf} is bound to {}, not {UIO_DRIVER} (see dmesg)",
        driver.as_deref().unwrap_or("no driver")
    )]
    ProbeFailed {
        /// The address.
        bdf: String,
        /// The driver bound after the probe.
        driver: Option<String>,
    },
    /// `uio_pci_generic` is bound but no `uioN` device exists.
    #[error("PCI device {bdf} is bound to {UIO_DRIVER} but {} has no uioN entry", path.display())]
    NoUio {
        /// The address.
        bdf: String,
        /// The `uio` directory looked in.
        path: PathBuf,
    },
    /// Another process (or another transport in this one) holds the function.
    #[error(
        "device {bdf} is in use by another process (it holds a lock on {}); \
         close it first",
        path.display()
    )]
    InUse {
        /// The address.
        bdf: String,
        /// The file locked.
        path: PathBuf,
    },
    /// The function must be bound to `uio_pci_generic` first.
    #[error(
        "PCI device {bdf} is bound to {}, not {UIO_DRIVER}; bind it first (pci::bind_uio), \
         i.e. as root: {commands}",
        driver.as_deref().unwrap_or("no driver")
    )]
    NotBoundToUio {
        /// The address.
        bdf: String,
        /// The current driver.
        driver: Option<String>,
        /// The shell commands that bind it, joined with "; ".
        commands: String,
    },
}

/// Result of this module's operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Classifies an I/O error on `path`: EACCES/EPERM become [`Error::PermissionDenied`].
pub fn io_error(op: &'static str, path: &Path, source: io::Error) -> Error {
    let path = path.to_path_buf();
    if source.kind() == io::ErrorKind::PermissionDenied {
        Error::PermissionDenied { path, source }
    } else {
        Error::Io { op, path, source }
    }
}

fn read_string(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| io_error("read", path, e))
}

fn write_file(path: &Path, data: &str) -> Result<()> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(data.as_bytes()))
        .map_err(|e| io_error("write", path, e))
}

/// A virtio-accel PCI function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciDeviceInfo {
    /// Address, `domain:bus:device.function`.
    pub bdf: String,
    /// PCI vendor ID.
    pub vendor: u16,
    /// PCI device ID.
    pub device: u16,
    /// Name of the bound driver, if any (`virtio-pci`, `uio_pci_generic`, ...).
    pub driver: Option<String>,
    /// `/dev/uioN` when bound to `uio_pci_generic`.
    pub uio: Option<PathBuf>,
}

/// Checks that `bdf` looks like `0000:00:04.0`.
pub fn check_bdf(bdf: &str) -> Result<()> {
    let bad = || Error::InvalidBdf(bdf.to_string());
    let (domain, rest) = bdf.split_once(':').ok_or_else(bad)?;
    let (bus, rest) = rest.split_once(':').ok_or_else(bad)?;
    let (dev, func) = rest.split_once('.').ok_or_else(bad)?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if hex(domain, 4) && hex(bus, 2) && hex(dev, 2) && matches!(func.as_bytes(), [b'0'..=b'7']) {
        Ok(())
    } else {
        Err(bad())
    }
}

/// `<root>/bus/pci/devices/<bdf>`.
pub fn device_dir(root: &Path, bdf: &str) -> PathBuf {
    root.join("bus/pci/devices").join(bdf)
}

/// `<root>/bus/pci/devices/<bdf>/resource<bar>`.
pub fn resource_path(root: &Path, bdf: &str, bar: u8) -> PathBuf {
    device_dir(root, bdf).join(format!("resource{bar}"))
}

fn parse_hex_u16(path: &Path, text: &str) -> Result<u16> {
    let t = text.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    u16::from_str_radix(t, 16).map_err(|_| Error::Parse {
        path: path.to_path_buf(),
        what: "a 16-bit hexadecimal ID",
    })
}

/// Name of the driver bound to the function at `dir`, if any.
fn driver_of(dir: &Path) -> Result<Option<String>> {
    let link = dir.join("driver");
    match fs::read_link(&link) {
        Ok(target) => Ok(target.file_name().map(|n| n.to_string_lossy().into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("read", &link, e)),
    }
}

/// `/dev/uioN` of the function at `dir`, if it has a `uio/uioN` entry.
fn uio_of(dir: &Path) -> Result<Option<PathBuf>> {
    let uio = dir.join("uio");
    let entries = match fs::read_dir(&uio) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("list", &uio, e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.strip_prefix("uio")
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    names.sort();
    Ok(names.first().map(|n| Path::new("/dev").join(n)))
}

fn info_at(dir: &Path, bdf: &str) -> Result<PciDeviceInfo> {
    let vendor_path = dir.join("vendor");
    let device_path = dir.join("device");
    Ok(PciDeviceInfo {
        bdf: bdf.to_string(),
        vendor: parse_hex_u16(&vendor_path, &read_string(&vendor_path)?)?,
        device: parse_hex_u16(&device_path, &read_string(&device_path)?)?,
        driver: driver_of(dir)?,
        uio: uio_of(dir)?,
    })
}

fn is_accel(info: &PciDeviceInfo) -> bool {
    info.vendor == VIRTIO_PCI_VENDOR_ID && info.device == ACCEL_PCI_DEVICE_ID
}

/// The PCI function `bdf`, which must exist and be a virtio-accel function.
pub fn device_info(root: &Path, bdf: &str) -> Result<PciDeviceInfo> {
    check_bdf(bdf)?;
    let dir = device_dir(root, bdf);
    if !dir.exists() {
        return Err(Error::DeviceNotFound {
            bdf: bdf.to_string(),
            path: dir,
        });
    }
    let info = info_at(&dir, bdf)?;
    if !is_accel(&info) {
        return Err(Error::NotAccel {
            bdf: bdf.to_string(),
            vendor: info.vendor,
            device: info.device,
        });
    }
    Ok(info)
}

/// Every virtio-accel function (vendor 0x1af4, device 0x107f) under
/// `<root>/bus/pci/devices`, sorted by address.
pub fn list_devices(root: &Path) -> Result<Vec<PciDeviceInfo>> {
    let devices = root.join("bus/pci/devices");
    let entries = fs::read_dir(&devices).map_err(|e| io_error("list", &devices, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error("list", &devices, e))?;
        let bdf = entry.file_name().to_string_lossy().into_owned();
        let info = info_at(&entry.path(), &bdf)?;
        if is_accel(&info) {
            out.push(info);
        }
    }
    out.sort_by(|a, b| a.bdf.cmp(&b.bdf));
    Ok(out)
}

/// The shell commands that bind `bdf`, currently bound to `driver`, to
/// `uio_pci_generic` (what [`bind_uio`] does).
pub fn commands_for(root: &Path, bdf: &str, driver: Option<&str>) -> Vec<String> {
    let dir = device_dir(root, bdf);
    let mut cmds = vec![
        format!("modprobe {UIO_DRIVER}"),
        format!(
            "echo {UIO_DRIVER} > {}",
            dir.join("driver_override").display()
        ),
    ];
    if driver.is_some() {
        cmds.push(format!(
            "echo {bdf} > {}",
            dir.join("driver/unbind").display()
        ));
    }
    cmds.push(format!(
        "echo {bdf} > {}",
        root.join("bus/pci/drivers_probe").display()
    ));
    cmds
}

/// The exact shell commands [`bind_uio`] would run for `bdf` in its current
/// state (empty if already bound to `uio_pci_generic`), for a dry run.
pub fn bind_commands(root: &Path, bdf: &str) -> Result<Vec<String>> {
    let info = device_info(root, bdf)?;
    Ok(match info.driver.as_deref() {
        Some(UIO_DRIVER) => Vec::new(),
        driver => commands_for(root, bdf, driver),
    })
}

/// Loads `uio_pci_generic` with `program` (normally `modprobe`).
pub(crate) fn load_module(program: &str) -> Result<()> {
    let out = Command::new(program)
        .arg(UIO_DRIVER)
        .output()
        .map_err(|source| Error::ModprobeSpawn {
            program: program.to_string(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::ModprobeFailed {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Binds `bdf` to `uio_pci_generic` and returns its `/dev/uioN`.
///
/// Loads the module if its driver is not registered, sets `driver_override`,
/// unbinds the current driver (only `virtio-pci`, unless `allow_rebind`) and
/// probes the device again. Does nothing but look up `/dev/uioN` if the
/// device is already bound to `uio_pci_generic`. Needs root.
pub fn bind_uio(root: &Path, bdf: &str, allow_rebind: bool) -> Result<PathBuf> {
    bind_uio_with(root, bdf, allow_rebind, "modprobe")
}

pub(crate) fn bind_uio_with(
    root: &Path,
    bdf: &str,
    allow_rebind: bool,
    modprobe: &str,
) -> Result<PathBuf> {
    let info = device_info(root, bdf)?;
    let dir = device_dir(root, bdf);
    match info.driver.as_deref() {
        Some(UIO_DRIVER) => return require_uio_dev(root, bdf),
        Some(VIRTIO_PCI_DRIVER) | None => {}
        Some(other) if allow_rebind => log::info!("{bdf}: unbinding {other}"),
        Some(other) => {
            return Err(Error::BoundElsewhere {
                bdf: bdf.to_string(),
                driver: other.to_string(),
            })
        }
    }
    let uio_driver = root.join("bus/pci/drivers").join(UIO_DRIVER);
    if !uio_driver.exists() {
        load_module(modprobe)?;
        if !uio_driver.exists() {
            return Err(Error::ModuleMissing { path: uio_driver });
        }
    }
    write_file(&dir.join("driver_override"), UIO_DRIVER)?;
    if info.driver.is_some() {
        write_file(&dir.join("driver/unbind"), bdf)?;
    }
    write_file(&root.join("bus/pci/drivers_probe"), bdf)?;
    let driver = driver_of(&dir)?;
    if driver.as_deref() != Some(UIO_DRIVER) {
        return Err(Error::ProbeFailed {
            bdf: bdf.to_string(),
            driver,
        });
    }
    require_uio_dev(root, bdf)
}

fn require_uio_dev(root: &Path, bdf: &str) -> Result<PathBuf> {
    let dir = device_dir(root, bdf);
    uio_of(&dir)?.ok_or_else(|| Error::NoUio {
        bdf: bdf.to_string(),
        path: dir.join("uio"),
    })
}

/// Checks that `bdf` is a virtio-accel function bound to `uio_pci_generic`;
/// returns its `/dev/uioN`.
pub fn require_uio(root: &Path, bdf: &str) -> Result<PathBuf> {
    let info = device_info(root, bdf)?;
    if info.driver.as_deref() != Some(UIO_DRIVER) {
        return Err(Error::NotBoundToUio {
            bdf: bdf.to_string(),
            commands: commands_for(root, bdf, info.driver.as_deref()).join("; "),
            driver: info.driver,
        });
    }
    require_uio_dev(root, bdf)
}

/// The function's configuration space (256 bytes or 4 KiB as root, 64 otherwise).
pub fn read_config(root: &Path, bdf: &str) -> Result<Vec<u8>> {
    let path = device_dir(root, bdf).join("config");
    fs::read(&path).map_err(|e| io_error("read", &path, e))
}

/// The IRQ the kernel gave the function's INTx pin: its sysfs `irq`
/// (`pci_dev->irq`, 0 when none; with MSI enabled it would be the first MSI
/// vector, which `uio_pci_generic` never enables). `uio_pci_generic` takes
/// INTx only when this is neither 0 nor `IRQ_NOTCONNECTED`, so it is what
/// decides whether `/dev/uioN` can ever deliver an interrupt.
pub fn intx_irq(root: &Path, bdf: &str) -> Result<u32> {
    let path = device_dir(root, bdf).join("irq");
    read_string(&path)?
        .trim()
        .parse()
        .map_err(|_| Error::Parse {
            path,
            what: "a decimal IRQ number",
        })
}

/// The bytes to write to set `bits` (in the low byte) in a command register
/// reading `old`: `None` if they are set already, else the new low byte, to
/// be written alone at [`pci_header::COMMAND`].
///
/// Only the low byte is written: the high byte holds INTX_DISABLE (bit 10),
/// which `uio_pci_generic` toggles from its interrupt handler and
/// `irqcontrol`; a read-modify-write of the whole register could write back a
/// stale INTX_DISABLE and mask INTx forever (or unmask it under the kernel's
/// feet). sysfs `config` writes of one byte are single byte-enabled
/// configuration writes, so the high byte is never touched. The other bits of
/// the low byte are written back as read; nothing else changes them while the
/// function is bound to `uio_pci_generic` and locked by this process.
pub fn command_low_byte(old: u16, bits: u8) -> Option<u8> {
    let [low, _] = old.to_le_bytes();
    (low & bits != bits).then_some(low | bits)
}

/// Sets `bits` (memory space, bus master, ...: bits 0..=7) in the command
/// register with a one-byte write (see [`command_low_byte`]); returns the
/// previous value of the register.
pub fn set_command_bits(root: &Path, bdf: &str, bits: u16) -> Result<u16> {
    let path = device_dir(root, bdf).join("config");
    let Ok(low_bits) = u8::try_from(bits) else {
        return Err(Error::Io {
            op: "write",
            path,
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "only command register bits 0..=7 can be set",
            ),
        });
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| io_error("write", &path, e))?;
    let at = pci_header::COMMAND as u64;
    let mut cmd = [0u8; 2];
    file.read_exact_at(&mut cmd, at)
        .map_err(|e| io_error("read", &path, e))?;
    let old = u16::from_le_bytes(cmd);
    if let Some(low) = command_low_byte(old, low_bits) {
        file.write_all_at(&[low], at)
            .map_err(|e| io_error("write", &path, e))?;
    }
    Ok(old)
}

/// Takes an exclusive, non-blocking `flock(2)` on `file` (at `path`) for the
/// function `bdf`; it lasts as long as `file` (its open file description)
/// stays open. Held elsewhere: [`Error::InUse`].
pub fn lock_file(file: &File, path: &Path, bdf: &str) -> Result<()> {
    loop {
        // SAFETY: flock on a descriptor `file` owns and keeps open for the
        // call; it touches no memory. The result is checked.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => {
                return Err(Error::InUse {
                    bdf: bdf.to_string(),
                    path: path.to_path_buf(),
                })
            }
            _ => return Err(io_error("lock", path, e)),
        }
    }
}

/// Opens the function's sysfs `config` file and locks it exclusively (see
/// [`lock_file`]): one driver at a time, whether it polls or takes INTx.
/// The lock is released when the returned file is closed.
pub fn lock_device(root: &Path, bdf: &str) -> Result<File> {
    let path = device_dir(root, bdf).join("config");
    let file = File::open(&path).map_err(|e| io_error("read", &path, e))?;
    lock_file(&file, &path, bdf)?;
    Ok(file)
}

/// Type of the default domain of the function's IOMMU group (`identity`,
/// `DMA`, `DMA-FQ`, `unmanaged`, `blocked`): `None` if the function has no
/// IOMMU group (no IOMMU), `Some("unknown")` if the kernel does not say
/// (no `iommu_group/type` before Linux 5.11).
pub fn iommu_domain_type(root: &Path, bdf: &str) -> Result<Option<String>> {
    let group = device_dir(root, bdf).join("iommu_group");
    match fs::symlink_metadata(&group) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("read", &group, e)),
    }
    let path = group.join("type");
    match fs::read_to_string(&path) {
        Ok(t) => Ok(Some(t.trim().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Some("unknown".to_string())),
        Err(e) => Err(io_error("read", &path, e)),
    }
}

/// Whether a device's DMA addresses are physical addresses: no IOMMU group,
/// or an identity (passthrough) domain. Only then do the guest-physical
/// addresses this crate hands out reach the right memory.
pub fn dma_is_direct(domain_type: Option<&str>) -> bool {
    matches!(domain_type, None | Some("identity"))
}

/// One BAR as described by the sysfs `resource` file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BarInfo {
    /// Size in bytes, 0 if not implemented.
    pub size: u64,
    /// Resource flags (`IORESOURCE_*`).
    pub flags: u64,
}

impl BarInfo {
    /// Whether this is an I/O-port BAR (which sysfs cannot map).
    pub fn is_io(&self) -> bool {
        self.flags & IORESOURCE_IO != 0
    }
}

/// Parses the sysfs `resource` file: one `start end flags` line per resource,
/// in hexadecimal; the first six are the BARs.
pub fn parse_resource(path: &Path, text: &str) -> Result<[BarInfo; 6]> {
    let bad = || Error::Parse {
        path: path.to_path_buf(),
        what: "six lines of three hexadecimal numbers",
    };
    let mut bars = [BarInfo::default(); 6];
    let mut lines = text.lines();
    for bar in &mut bars {
        let line = lines.next().ok_or_else(bad)?;
        let mut nums = line
            .split_whitespace()
            .map(|w| u64::from_str_radix(w.strip_prefix("0x").unwrap_or(w), 16).map_err(|_| bad()));
        let mut next = || nums.next().ok_or_else(bad)?;
        let (start, end, flags) = (next()?, next()?, next()?);
        let size = if start == 0 && end == 0 {
            0
        } else {
            end.checked_sub(start)
                .and_then(|d| d.checked_add(1))
                .ok_or_else(bad)?
        };
        *bar = BarInfo { size, flags };
    }
    Ok(bars)
}

/// The function's BARs, from its `resource` file.
pub fn bars(root: &Path, bdf: &str) -> Result<[BarInfo; 6]> {
    let path = device_dir(root, bdf).join("resource");
    parse_resource(&path, &read_string(&path)?)
}

/// Builders of fake sysfs trees, for tests of this crate.
#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake sysfs root in a fresh temporary directory, removed on drop.
    pub(crate) struct FakeSysfs {
        pub root: PathBuf,
    }

    impl Drop for FakeSysfs {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    impl FakeSysfs {
        pub(crate) fn new(tag: &str) -> Self {
            let root = std::env::temp_dir().join(format!(
                "accel-sysfs-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(root.join("bus/pci/devices")).unwrap();
            fs::create_dir_all(root.join("bus/pci/drivers")).unwrap();
            fs::write(root.join("bus/pci/drivers_probe"), "").unwrap();
            FakeSysfs { root }
        }

        pub(crate) fn add_driver(&self, name: &str) -> PathBuf {
            let dir = self.root.join("bus/pci/drivers").join(name);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("unbind"), "").unwrap();
            dir
        }

        /// Adds a function; `driver` is linked (and created) if given, `uio` adds `uio/uio<N>`.
        pub(crate) fn add_device(
            &self,
            bdf: &str,
            vendor: u16,
            device: u16,
            driver: Option<&str>,
            uio: Option<u32>,
        ) -> PathBuf {
            let dir = device_dir(&self.root, bdf);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("vendor"), format!("{vendor:#06x}\n")).unwrap();
            fs::write(dir.join("device"), format!("{device:#06x}\n")).unwrap();
            fs::write(dir.join("driver_override"), "").unwrap();
            if let Some(driver) = driver {
                let target = self.add_driver(driver);
                symlink(target, dir.join("driver")).unwrap();
            }
            if let Some(n) = uio {
                fs::create_dir_all(dir.join("uio").join(format!("uio{n}"))).unwrap();
            }
            dir
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeSysfs;
    use super::*;

    const ACCEL: u16 = ACCEL_PCI_DEVICE_ID;
    const VENDOR: u16 = VIRTIO_PCI_VENDOR_ID;

    #[test]
    fn bdf_syntax() {
        assert!(check_bdf("0000:00:04.0").is_ok());
        assert!(check_bdf("0001:af:1f.7").is_ok());
        for bad in [
            "00:04.0",
            "0000:00:04",
            "0000:00:04.8",
            "0000:0g:04.0",
            "",
            "a:b:c.d",
        ] {
            assert!(matches!(check_bdf(bad), Err(Error::InvalidBdf(_))), "{bad}");
        }
    }

    #[test]
    fn lists_only_accel_devices_with_driver_and_uio() {
        let fake = FakeSysfs::new("list");
        fake.add_device("0000:00:05.0", VENDOR, ACCEL, Some(UIO_DRIVER), Some(2));
        fake.add_device("0000:00:04.0", VENDOR, ACCEL, Some(VIRTIO_PCI_DRIVER), None);
        fake.add_device(
            "0000:00:03.0",
            VENDOR,
            0x1041,
            Some(VIRTIO_PCI_DRIVER),
            None,
        );
        fake.add_device("0000:00:02.0", 0x8086, 0x1237, None, None);
        fake.add_device("0000:00:06.0", VENDOR, ACCEL, None, None);
        let list = list_devices(&fake.root).unwrap();
        assert_eq!(
            list,
            vec![
                PciDeviceInfo {
                    bdf: "0000:00:04.0".into(),
                    vendor: VENDOR,
                    device: ACCEL,
                    driver: Some(VIRTIO_PCI_DRIVER.into()),
                    uio: None,
                },
                PciDeviceInfo {
                    bdf: "0000:00:05.0".into(),
                    vendor: VENDOR,
                    device: ACCEL,
                    driver: Some(UIO_DRIVER.into()),
                    uio: Some(PathBuf::from("/dev/uio2")),
                },
                PciDeviceInfo {
                    bdf: "0000:00:06.0".into(),
                    vendor: VENDOR,
                    device: ACCEL,
                    driver: None,
                    uio: None,
                },
            ]
        );
        assert!(matches!(
            list_devices(Path::new("/nonexistent-sysfs")),
            Err(Error::Io { op: "list", .. })
        ));
    }

    #[test]
    fn malformed_id_files() {
        let fake = FakeSysfs::new("parse");
        let dir = fake.add_device("0000:00:04.0", VENDOR, ACCEL, None, None);
        fs::write(dir.join("vendor"), "garbage\n").unwrap();
        assert!(matches!(list_devices(&fake.root), Err(Error::Parse { .. })));
    }

    #[test]
    fn device_lookup_errors() {
        let fake = FakeSysfs::new("lookup");
        fake.add_device("0000:00:03.0", VENDOR, 0x1041, None, None);
        assert!(matches!(
            device_info(&fake.root, "0000:00:09.0"),
            Err(Error::DeviceNotFound { .. })
        ));
        assert!(matches!(
            device_info(&fake.root, "0000:00:03.0"),
            Err(Error::NotAccel { device: 0x1041, .. })
        ));
        assert!(matches!(
            device_info(&fake.root, "nope"),
            Err(Error::InvalidBdf(_))
        ));
    }

    #[test]
    fn permission_errors_say_run_as_root() {
        for errno in [libc::EACCES, libc::EPERM] {
            let e = io_error(
                "write",
                Path::new("/sys/x"),
                io::Error::from_raw_os_error(errno),
            );
            assert!(matches!(e, Error::PermissionDenied { .. }));
            assert!(e.to_string().contains("run as root"), "{e}");
        }
        let e = io_error(
            "write",
            Path::new("/sys/x"),
            io::Error::from_raw_os_error(libc::ENODEV),
        );
        assert!(matches!(e, Error::Io { op: "write", .. }));
    }

    #[test]
    fn commands_for_a_virtio_pci_device() {
        let fake = FakeSysfs::new("cmds");
        fake.add_device("0000:00:04.0", VENDOR, ACCEL, Some(VIRTIO_PCI_DRIVER), None);
        fake.add_device("0000:00:05.0", VENDOR, ACCEL, Some(UIO_DRIVER), Some(0));
        fake.add_device("0000:00:06.0", VENDOR, ACCEL, None, None);
        let r = fake.root.display();
        assert_eq!(
            bind_commands(&fake.root, "0000:00:04.0").unwrap(),
            vec![
                "modprobe uio_pci_generic".to_string(),
                format!("echo uio_pci_generic > {r}/bus/pci/devices/0000:00:04.0/driver_override"),
                format!("echo 0000:00:04.0 > {r}/bus/pci/devices/0000:00:04.0/driver/unbind"),
                format!("echo 0000:00:04.0 > {r}/bus/pci/drivers_probe"),
            ]
        );
        assert!(bind_commands(&fake.root, "0000:00:05.0")
            .unwrap()
            .is_empty());
        assert_eq!(bind_commands(&fake.root, "0000:00:06.0").unwrap().len(), 3);
        let real = commands_for(Path::new(SYSFS_ROOT), "0000:00:04.0", Some("virtio-pci"));
        assert_eq!(
            real[2],
            "echo 0000:00:04.0 > /sys/bus/pci/devices/0000:00:04.0/driver/unbind"
        );
    }

    #[test]
    fn bind_when_already_bound() {
        let fake = FakeSysfs::new("bound");
        fake.add_device("0000:00:05.0", VENDOR, ACCEL, Some(UIO_DRIVER), Some(3));
        assert_eq!(
            bind_uio(&fake.root, "0000:00:05.0", false).unwrap(),
            PathBuf::from("/dev/uio3")
        );
        assert_eq!(
            require_uio(&fake.root, "0000:00:05.0").unwrap(),
            PathBuf::from("/dev/uio3")
        );
        fake.add_device("0000:00:06.0", VENDOR, ACCEL, Some(UIO_DRIVER), None);
        assert!(matches!(
            bind_uio(&fake.root, "0000:00:06.0", false),
            Err(Error::NoUio { .. })
        ));
    }

    #[test]
    fn bind_writes_the_sysfs_sequence() {
        let fake = FakeSysfs::new("bind");
        let dir = fake.add_device("0000:00:04.0", VENDOR, ACCEL, Some(VIRTIO_PCI_DRIVER), None);
        fake.add_driver(UIO_DRIVER);
        // The fake kernel does not rebind, so the probe "fails"; the writes happened.
        let err = bind_uio_with(&fake.root, "0000:00:04.0", false, "/nonexistent").unwrap_err();
        assert!(
            matches!(&err, Error::ProbeFailed { driver: Some(d), .. } if d == VIRTIO_PCI_DRIVER),
            "{err}"
        );
        let read = |p: PathBuf| fs::read_to_string(p).unwrap();
        assert_eq!(read(dir.join("driver_override")), UIO_DRIVER);
        assert_eq!(read(dir.join("driver/unbind")), "0000:00:04.0");
        assert_eq!(
            read(fake.root.join("bus/pci/drivers_probe")),
            "0000:00:04.0"
        );
    }

    #[test]
    fn bind_refuses_foreign_drivers_and_reports_module_problems() {
        let fake = FakeSysfs::new("refuse");
        fake.add_device("0000:00:04.0", VENDOR, ACCEL, Some("vfio-pci"), None);
        let err = bind_uio(&fake.root, "0000:00:04.0", false).unwrap_err();
        assert!(
            matches!(&err, Error::BoundElsewhere { driver, .. } if driver == "vfio-pci"),
            "{err}"
        );
        // Allowed to rebind, but uio_pci_generic is not registered and modprobe fails.
        let err =
            bind_uio_with(&fake.root, "0000:00:04.0", true, "/nonexistent/modprobe").unwrap_err();
        assert!(matches!(err, Error::ModprobeSpawn { .. }), "{err}");
        let err = bind_uio_with(&fake.root, "0000:00:04.0", true, "false").unwrap_err();
        assert!(matches!(err, Error::ModprobeFailed { .. }), "{err}");
        // modprobe "succeeds" but the driver does not appear.
        let err = bind_uio_with(&fake.root, "0000:00:04.0", true, "true").unwrap_err();
        assert!(matches!(err, Error::ModuleMissing { .. }), "{err}");
    }

    #[test]
    fn require_uio_explains_how_to_bind() {
        let fake = FakeSysfs::new("require");
        fake.add_device("0000:00:04.0", VENDOR, ACCEL, Some(VIRTIO_PCI_DRIVER), None);
        let err = require_uio(&fake.root, "0000:00:04.0").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::NotBoundToUio { .. }));
        assert!(msg.contains("virtio-pci"), "{msg}");
        assert!(msg.contains("modprobe uio_pci_generic"), "{msg}");
        assert!(msg.contains("drivers_probe"), "{msg}");
    }

    #[test]
    fn resource_file() {
        let text = "\
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x00000000febd1000 0x00000000febd1fff 0x0000000000040200
0x000000000000c000 0x000000000000c03f 0x0000000000040101
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x00000000fe000000 0x00000000fe003fff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
";
        let bars = parse_resource(Path::new("resource"), text).unwrap();
        assert_eq!(bars[0].size, 0);
        assert_eq!(bars[1].size, 0x1000);
        assert!(bars[2].is_io());
        assert_eq!(bars[4].size, 0x4000);
        assert!(!bars[4].is_io());
        assert!(parse_resource(Path::new("r"), "0x0 0x0\n").is_err());
        assert!(parse_resource(Path::new("r"), "0x10 0x0 0x0\n".repeat(6).as_str()).is_err());
    }

    #[test]
    fn command_writes_leave_intx_disable_alone() {
        use pci_header::{COMMAND_BUS_MASTER, COMMAND_INTX_DISABLE, COMMAND_MEMORY};
        let bm = COMMAND_BUS_MASTER as u8;
        // Only the low byte is written, whatever INTX_DISABLE reads.
        assert_eq!(
            command_low_byte(COMMAND_MEMORY | COMMAND_INTX_DISABLE, bm),
            Some(0x06)
        );
        assert_eq!(command_low_byte(COMMAND_MEMORY, bm), Some(0x06));
        // Already set: nothing is written.
        assert_eq!(
            command_low_byte(
                COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE,
                bm
            ),
            None
        );
        // On a file: the high byte is never written (a stale INTX_DISABLE
        // cannot be written back, and a byte the kernel changes is kept).
        let fake = FakeSysfs::new("intx");
        let dir = fake.add_device("0000:00:04.0", VENDOR, ACCEL, None, None);
        let mut config = vec![0u8; 256];
        config[4] = 0x02;
        config[5] = 0x04; // INTX_DISABLE, set by uio_pci_generic
        fs::write(dir.join("config"), &config).unwrap();
        let before = fs::metadata(dir.join("config")).unwrap().len();
        let old = set_command_bits(&fake.root, "0000:00:04.0", COMMAND_BUS_MASTER).unwrap();
        assert_eq!(old, 0x0402);
        let after = read_config(&fake.root, "0000:00:04.0").unwrap();
        assert_eq!(after.len() as u64, before);
        assert_eq!(&after[4..6], &[0x06, 0x04]);
        assert!(set_command_bits(&fake.root, "0000:00:04.0", COMMAND_INTX_DISABLE).is_err());
    }

    #[test]
    fn device_lock_is_exclusive() {
        let fake = FakeSysfs::new("lock");
        let dir = fake.add_device("0000:00:04.0", VENDOR, ACCEL, None, None);
        fs::write(dir.join("config"), vec![0u8; 256]).unwrap();
        let held = lock_device(&fake.root, "0000:00:04.0").unwrap();
        let err = lock_device(&fake.root, "0000:00:04.0").unwrap_err();
        assert!(matches!(err, Error::InUse { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("device 0000:00:04.0 is in use by another process"),
            "{err}"
        );
        drop(held);
        assert!(lock_device(&fake.root, "0000:00:04.0").is_ok());
    }

    #[test]
    fn iommu_domain_types() {
        let fake = FakeSysfs::new("iommu");
        let dir = fake.add_device("0000:00:04.0", VENDOR, ACCEL, None, None);
        let bdf = "0000:00:04.0";
        assert_eq!(iommu_domain_type(&fake.root, bdf).unwrap(), None);
        let group = fake.root.join("kernel/iommu_groups/3");
        fs::create_dir_all(&group).unwrap();
        std::os::unix::fs::symlink(&group, dir.join("iommu_group")).unwrap();
        assert_eq!(
            iommu_domain_type(&fake.root, bdf).unwrap().as_deref(),
            Some("unknown")
        );
        fs::write(group.join("type"), "DMA-FQ\n").unwrap();
        assert_eq!(
            iommu_domain_type(&fake.root, bdf).unwrap().as_deref(),
            Some("DMA-FQ")
        );
        fs::write(group.join("type"), "identity\n").unwrap();
        assert_eq!(
            iommu_domain_type(&fake.root, bdf).unwrap().as_deref(),
            Some("identity")
        );
        assert!(dma_is_direct(None));
        assert!(dma_is_direct(Some("identity")));
        for t in ["DMA", "DMA-FQ", "unmanaged", "blocked", "unknown"] {
            assert!(!dma_is_direct(Some(t)), "{t}");
        }
    }

    #[test]
    fn intx_irq_from_the_irq_file() {
        let fake = FakeSysfs::new("irq");
        let dir = fake.add_device("0000:00:04.0", VENDOR, ACCEL, None, None);
        let bdf = "0000:00:04.0";
        assert!(matches!(
            intx_irq(&fake.root, bdf),
            Err(Error::Io { op: "read", .. })
        ));
        for (text, irq) in [("11\n", 11), ("0\n", 0), ("2147483648\n", 1 << 31)] {
            fs::write(dir.join("irq"), text).unwrap();
            assert_eq!(intx_irq(&fake.root, bdf).unwrap(), irq, "{text:?}");
        }
        fs::write(dir.join("irq"), "0x0b\n").unwrap();
        assert!(matches!(
            intx_irq(&fake.root, bdf),
            Err(Error::Parse { .. })
        ));
    }

    #[test]
    fn command_register_bits() {
        let fake = FakeSysfs::new("cmd");
        let dir = fake.add_device("0000:00:04.0", VENDOR, ACCEL, None, None);
        let mut config = vec![0u8; 256];
        config[4] = 0x02; // memory enabled
        fs::write(dir.join("config"), &config).unwrap();
        let old =
            set_command_bits(&fake.root, "0000:00:04.0", pci_header::COMMAND_BUS_MASTER).unwrap();
        assert_eq!(old, 0x02);
        let config = read_config(&fake.root, "0000:00:04.0").unwrap();
        assert_eq!(config.len(), 256);
        assert_eq!(config[4], 0x06);
    }
}
