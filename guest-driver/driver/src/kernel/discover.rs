// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Finding the accel nodes of the `virtio_accel` driver: sysfs lists every
//! accel device in `class/accel/accelN`, whose `device` is the virtio device
//! the driver is bound to (`virtioM`, a child of its PCI function); the
//! node is `/dev/accel/accelN` (accel-uapi §1).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{Error, Result, DRIVER_NAME};

/// Where device nodes live.
pub const DEV_ROOT: &str = "/dev";

/// An accel device of the `virtio_accel` driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelNode {
    /// `accelN`.
    pub name: String,
    /// Its device node, `<dev>/accel/accelN`.
    pub node: PathBuf,
    /// The virtio device it drives, `virtioM`.
    pub virtio: Option<String>,
    /// The PCI function of that virtio device, if it is on PCI.
    pub pci: Option<String>,
}

/// `N` of `accelN`.
fn minor(name: &str) -> Option<u32> {
    name.strip_prefix("accel")?.parse().ok()
}

/// The last component of the target of the link `path`, if it is one.
fn link_name(path: &Path) -> Option<String> {
    let target = fs::read_link(path).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// Whether `name` looks like a PCI address, `0000:00:04.0`.
fn is_bdf(name: &str) -> bool {
    let parts: Vec<&str> = name.split([':', '.']).collect();
    parts.len() == 4
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The node `name` if its device's driver is `virtio_accel`.
fn node_of(class: &Path, name: &str, dev_root: &Path) -> Option<KernelNode> {
    let device = class.join(name).join("device");
    if link_name(&device.join("driver")).as_deref() != Some(DRIVER_NAME) {
        return None;
    }
    let virtio = fs::canonicalize(&device).ok();
    let name_of = |path: &Path| Some(path.file_name()?.to_string_lossy().into_owned());
    let pci = virtio
        .as_deref()
        .and_then(Path::parent)
        .and_then(name_of)
        .filter(|parent| is_bdf(parent));
    Some(KernelNode {
        name: name.to_string(),
        node: dev_root.join("accel").join(name),
        virtio: virtio.as_deref().and_then(name_of),
        pci,
    })
}

/// The accel devices of the `virtio_accel` driver under `sys_root` (`/sys`),
/// by number, with their nodes under `dev_root` (`/dev`). None when the
/// kernel has no accel class (no accel device at all).
pub fn list_nodes(sys_root: &Path, dev_root: &Path) -> Result<Vec<KernelNode>> {
    let class = sys_root.join("class/accel");
    let entries = match fs::read_dir(&class) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Sysfs {
                path: class,
                source,
            })
        }
    };
    let mut nodes = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Sysfs {
            path: class.clone(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if minor(&name).is_some() {
            nodes.extend(node_of(&class, &name, dev_root));
        }
    }
    nodes.sort_by_key(|node| minor(&node.name));
    Ok(nodes)
}

/// A fake sysfs and /dev tree.
#[cfg(test)]
pub(crate) mod fake {
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::{Path, PathBuf};

    /// A sysfs root and a /dev root in a fresh temporary directory,
    /// removed on drop.
    #[derive(Debug)]
    pub(crate) struct FakeTree {
        /// The directory holding both.
        pub(crate) dir: PathBuf,
    }

    impl FakeTree {
        /// An empty tree, `tag` naming it among concurrent tests.
        pub(crate) fn new(tag: &str) -> std::io::Result<Self> {
            let dir = std::env::temp_dir().join(format!(
                "accel-kernel-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(dir.join("sys/class"))?;
            fs::create_dir_all(dir.join("dev"))?;
            Ok(FakeTree { dir })
        }

        /// The sysfs root.
        pub(crate) fn sys(&self) -> PathBuf {
            self.dir.join("sys")
        }

        /// The /dev root.
        pub(crate) fn dev(&self) -> PathBuf {
            self.dir.join("dev")
        }

        /// Adds `accel<n>` on virtio device `virtio<n>` of the PCI function
        /// `bdf`, bound to `driver`, with its node in /dev, as the kernel
        /// lays them out (`class/accel/accelN` links into `devices/`).
        pub(crate) fn add_accel(&self, n: u32, bdf: &str, driver: &str) -> std::io::Result<()> {
            let sys = self.sys();
            let virtio = sys
                .join("devices/pci0000:00")
                .join(bdf)
                .join(format!("virtio{n}"));
            let accel = virtio.join("accel").join(format!("accel{n}"));
            fs::create_dir_all(&accel)?;
            let drivers = sys.join("bus/virtio/drivers").join(driver);
            fs::create_dir_all(&drivers)?;
            symlink(
                Path::new("../../../../bus/virtio/drivers").join(driver),
                virtio.join("driver"),
            )?;
            symlink(Path::new("../.."), accel.join("device"))?;
            fs::create_dir_all(sys.join("class/accel"))?;
            let relative = Path::new("../../devices/pci0000:00")
                .join(bdf)
                .join(format!("virtio{n}/accel/accel{n}"));
            symlink(relative, sys.join("class/accel").join(format!("accel{n}")))?;
            fs::create_dir_all(self.dev().join("accel"))?;
            fs::write(self.dev().join("accel").join(format!("accel{n}")), "")
        }
    }

    impl Drop for FakeTree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeTree;
    use super::*;

    #[test]
    fn finds_the_nodes_of_the_driver_only_in_order() {
        let tree = FakeTree::new("nodes").unwrap();
        assert!(list_nodes(&tree.sys(), &tree.dev()).unwrap().is_empty());
        tree.add_accel(10, "0000:00:05.0", DRIVER_NAME).unwrap();
        tree.add_accel(1, "0000:00:06.0", "intel_vpu").unwrap();
        tree.add_accel(2, "0000:00:04.0", DRIVER_NAME).unwrap();
        let nodes = list_nodes(&tree.sys(), &tree.dev()).unwrap();
        assert_eq!(
            nodes,
            [
                KernelNode {
                    name: "accel2".into(),
                    node: tree.dev().join("accel/accel2"),
                    virtio: Some("virtio2".into()),
                    pci: Some("0000:00:04.0".into()),
                },
                KernelNode {
                    name: "accel10".into(),
                    node: tree.dev().join("accel/accel10"),
                    virtio: Some("virtio10".into()),
                    pci: Some("0000:00:05.0".into()),
                },
            ]
        );
    }

    #[test]
    fn only_accel_entries_count() {
        assert_eq!(minor("accel0"), Some(0));
        assert_eq!(minor("accel"), None);
        assert_eq!(minor("card0"), None);
        assert!(is_bdf("0000:00:04.0"));
        assert!(!is_bdf("virtio1"));
        assert!(!is_bdf("pci0000:00"));
    }
}
