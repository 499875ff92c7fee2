// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! INTx interrupts through `uio_pci_generic`, shared by every virtqueue.
//!
//! `uio_pci_generic` masks INTx (command register bit 10, INTX_DISABLE) when
//! the function raises it and counts the interrupt; `read(2)` on `/dev/uioN`
//! returns the 32-bit count. It has no `irqcontrol` (writing to `/dev/uioN`
//! fails with ENOSYS): userspace unmasks by clearing INTX_DISABLE in the
//! configuration space, as DPDK does. The device keeps the line asserted
//! until the driver reads the ISR status register (§4.1.4.5), so the
//! acknowledgement is: read the count, read ISR, unmask.
//!
//! One INTx line serves every queue, and reading ISR clears it for everyone.
//! `Intx` therefore lets one waiting thread at a time (the leader) wait on
//! the line and acknowledge; each acknowledged interrupt bumps an epoch, and
//! each queue wakes when the epoch moved since that queue last woke. A queue
//! may wake without having work (the driver core then checks its used ring and
//! waits again), but never misses an interrupt: the epoch moves after the ISR
//! read, and the device asserts again after unmasking if it raised more.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use thiserror::Error;

use super::layout::pci_header;
use super::regs;
use crate::transport::poll_readable;

/// Errors of interrupt handling.
#[derive(Debug, Error)]
pub enum Error {
    /// Waiting on, reading or re-enabling the interrupt line failed.
    #[error("INTx line {what} failed")]
    Line {
        /// What was done.
        what: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The ISR status register could not be read.
    #[error("cannot read the ISR status register")]
    Ack(#[source] regs::Error),
}

/// Result of this module's operations.
pub type Result<T> = std::result::Result<T, Error>;

/// An interrupt line that masks itself when it fires.
pub(crate) trait IrqLine: fmt::Debug + Send + Sync {
    /// Waits until the line fired or `deadline` passes; consumes the event.
    /// `Ok(false)` on timeout.
    fn wait(&self, deadline: Option<Instant>) -> io::Result<bool>;

    /// Unmasks the line after the device was acknowledged.
    fn unmask(&self) -> io::Result<()>;
}

/// `/dev/uioN`, opened non-blocking, and the function's sysfs `config`.
#[derive(Debug)]
pub(crate) struct UioLine {
    file: File,
    config: File,
}

impl UioLine {
    pub(crate) fn new(file: File, config: File) -> Self {
        UioLine { file, config }
    }
}

/// Offset of the command register's high byte, which holds INTX_DISABLE.
const COMMAND_HIGH: u64 = pci_header::COMMAND as u64 + 1;
/// INTX_DISABLE within that byte.
const INTX_DISABLE_IN_HIGH: u8 = (pci_header::COMMAND_INTX_DISABLE >> 8) as u8;

/// The command register's high byte with INTX_DISABLE cleared, or `None` if
/// it is clear already.
pub(crate) fn unmasked_high_byte(high: u8) -> Option<u8> {
    (high & INTX_DISABLE_IN_HIGH != 0).then_some(high & !INTX_DISABLE_IN_HIGH)
}

impl IrqLine for UioLine {
    fn wait(&self, deadline: Option<Instant>) -> io::Result<bool> {
        if !poll_readable(self.file.as_raw_fd(), deadline)? {
            return Ok(false);
        }
        let mut count = [0u8; 4];
        match (&self.file).read(&mut count) {
            Ok(4) => Ok(true),
            Ok(n) => Err(io::Error::other(format!(
                "short read of {n} bytes from the uio device"
            ))),
            // Readable but already consumed: harmless, report a (spurious) interrupt.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
            Err(e) => Err(e),
        }
    }

    fn unmask(&self) -> io::Result<()> {
        // Only the high byte is written: the kernel sets INTX_DISABLE only
        // from its handler, which cannot run while the line is masked, so
        // this read-modify-write races with nothing.
        let mut high = [0u8; 1];
        self.config.read_exact_at(&mut high, COMMAND_HIGH)?;
        match unmasked_high_byte(high[0]) {
            Some(byte) => self.config.write_all_at(&[byte], COMMAND_HIGH),
            None => Ok(()),
        }
    }
}

fn lock(m: &Mutex<bool>) -> MutexGuard<'_, bool> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One shared INTx line demultiplexed to per-queue waiters.
#[derive(Debug)]
pub(crate) struct Intx {
    line: Box<dyn IrqLine>,
    /// Interrupts acknowledged so far.
    epoch: AtomicU64,
    /// Per queue: the epoch when that queue last woke.
    seen: Vec<AtomicU64>,
    /// Whether a thread is waiting on the line.
    leader: Mutex<bool>,
    cond: Condvar,
}

impl Intx {
    /// Demultiplexes `line` to `queues` queues; unmasks the line.
    pub(crate) fn new(line: Box<dyn IrqLine>, queues: u16) -> Result<Self> {
        line.unmask().map_err(|source| Error::Line {
            what: "unmask",
            source,
        })?;
        Ok(Intx {
            line,
            epoch: AtomicU64::new(0),
            seen: (0..queues).map(|_| AtomicU64::new(0)).collect(),
            leader: Mutex::new(false),
            cond: Condvar::new(),
        })
    }

    /// Interrupts acknowledged so far.
    #[cfg(test)]
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Waits until an interrupt arrived since `queue` last woke, or `deadline`.
    /// `ack` reads (and so clears) the ISR status register.
    pub(crate) fn wait(
        &self,
        queue: u16,
        deadline: Option<Instant>,
        ack: &dyn Fn() -> regs::Result<u8>,
    ) -> Result<bool> {
        let Some(seen) = self.seen.get(usize::from(queue)) else {
            return Ok(false);
        };
        let mut leading = lock(&self.leader);
        loop {
            // Checked under the lock: a leader bumps the epoch before it takes
            // the lock to step down, so this check cannot miss its wake-up.
            let epoch = self.epoch.load(Ordering::SeqCst);
            if seen.load(Ordering::SeqCst) != epoch {
                seen.store(epoch, Ordering::SeqCst);
                return Ok(true);
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Ok(false);
            }
            if *leading {
                leading = match deadline {
                    None => self
                        .cond
                        .wait(leading)
                        .unwrap_or_else(PoisonError::into_inner),
                    Some(d) => {
                        self.cond
                            .wait_timeout(leading, d - now)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0
                    }
                };
                continue;
            }
            *leading = true;
            drop(leading);
            let led = self.lead(deadline, ack);
            leading = lock(&self.leader);
            *leading = false;
            self.cond.notify_all();
            led?;
        }
    }

    fn lead(&self, deadline: Option<Instant>, ack: &dyn Fn() -> regs::Result<u8>) -> Result<()> {
        let fired = self.line.wait(deadline).map_err(|source| Error::Line {
            what: "wait",
            source,
        })?;
        if !fired {
            return Ok(());
        }
        let acked = ack();
        match &acked {
            Ok(isr) => log::trace!("INTx: ISR {isr:#x}"),
            Err(e) => log::warn!("INTx: cannot read ISR: {e}"),
        }
        // Even if the ISR read failed: the line fired, so a queue may have
        // work, and it must be unmasked or no interrupt would ever come again
        // (if the device still asserts it, it fires again at once).
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let unmasked = self.line.unmask().map_err(|source| Error::Line {
            what: "unmask",
            source,
        });
        acked.map_err(Error::Ack)?;
        unmasked
    }
}

/// A fake self-masking interrupt line, for tests of this crate.
#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use std::sync::Arc;

    #[derive(Debug, Default)]
    struct LineState {
        pending: bool,
        masked: bool,
        fired: u32,
        unmasks: u32,
    }

    /// A level-triggered line: `raise` while masked stays pending until unmasked.
    #[derive(Debug, Default)]
    pub(crate) struct FakeLine {
        state: Mutex<LineState>,
        cond: Condvar,
    }

    impl FakeLine {
        pub(crate) fn new() -> Arc<Self> {
            Arc::new(FakeLine::default())
        }

        /// The device asserts the line.
        pub(crate) fn raise(&self) {
            let mut st = self.state.lock().unwrap();
            st.pending = true;
            self.cond.notify_all();
        }

        /// (interrupts delivered, unmasks).
        pub(crate) fn counts(&self) -> (u32, u32) {
            let st = self.state.lock().unwrap();
            (st.fired, st.unmasks)
        }
    }

    impl IrqLine for Arc<FakeLine> {
        fn wait(&self, deadline: Option<Instant>) -> io::Result<bool> {
            let mut st = self.state.lock().unwrap();
            loop {
                if st.pending && !st.masked {
                    st.pending = false;
                    st.masked = true;
                    st.fired += 1;
                    return Ok(true);
                }
                match deadline {
                    None => st = self.cond.wait(st).unwrap(),
                    Some(d) => {
                        let now = Instant::now();
                        if now >= d {
                            return Ok(false);
                        }
                        st = self.cond.wait_timeout(st, d - now).unwrap().0;
                    }
                }
            }
        }

        fn unmask(&self) -> io::Result<()> {
            let mut st = self.state.lock().unwrap();
            st.masked = false;
            st.unmasks += 1;
            self.cond.notify_all();
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeLine;
    use super::*;
    use std::sync::atomic::AtomicU8;
    use std::sync::Arc;
    use std::time::Duration;

    fn soon(ms: u64) -> Option<Instant> {
        Some(Instant::now() + Duration::from_millis(ms))
    }

    #[test]
    fn wakes_on_interrupt_acks_and_unmasks() {
        let line = FakeLine::new();
        let intx = Intx::new(Box::new(Arc::clone(&line)), 2).unwrap();
        let isr = AtomicU8::new(0);
        let ack = || Ok(isr.swap(0, Ordering::SeqCst));
        assert!(!intx.wait(0, soon(20), &ack).unwrap());
        isr.store(1, Ordering::SeqCst);
        line.raise();
        assert!(intx.wait(0, soon(1000), &ack).unwrap());
        assert_eq!(isr.load(Ordering::SeqCst), 0, "ISR read to acknowledge");
        assert_eq!(
            line.counts(),
            (1, 2),
            "one interrupt, unmasked at start and after it"
        );
        // Queue 1 has not woken since: the same interrupt wakes it once.
        assert!(intx.wait(1, soon(1000), &ack).unwrap());
        assert!(!intx.wait(1, soon(10), &ack).unwrap());
        assert!(!intx.wait(0, soon(10), &ack).unwrap());
        // Unknown queues never wake.
        assert!(!intx.wait(9, None, &ack).unwrap());
    }

    #[test]
    fn threads_share_one_line() {
        let line = FakeLine::new();
        let intx = Arc::new(Intx::new(Box::new(Arc::clone(&line)), 4).unwrap());
        let waiters: Vec<_> = (0..4u16)
            .map(|q| {
                let intx = Arc::clone(&intx);
                std::thread::spawn(move || intx.wait(q, soon(5000), &|| Ok(1)).unwrap())
            })
            .collect();
        std::thread::sleep(Duration::from_millis(30));
        line.raise();
        for w in waiters {
            assert!(
                w.join().unwrap(),
                "every waiter wakes on the shared interrupt"
            );
        }
        assert_eq!(intx.epoch(), 1);
    }

    #[test]
    fn ack_failures_are_reported() {
        let line = FakeLine::new();
        let intx = Intx::new(Box::new(Arc::clone(&line)), 1).unwrap();
        line.raise();
        let err = intx
            .wait(0, soon(1000), &|| {
                Err(regs::Error::Misaligned {
                    offset: 1,
                    width: 2,
                })
            })
            .unwrap_err();
        assert!(matches!(err, Error::Ack(_)));
        assert_eq!(
            line.counts(),
            (1, 2),
            "unmasked again although the acknowledgement failed"
        );
        // The interrupt still counts (the queue may have work)...
        assert!(intx.wait(0, soon(10), &|| Ok(1)).unwrap());
        // ...and the line works afterwards.
        line.raise();
        assert!(intx.wait(0, soon(1000), &|| Ok(1)).unwrap());
        assert_eq!(line.counts(), (2, 3));
    }

    #[test]
    fn unmasking_clears_only_intx_disable() {
        assert_eq!(super::unmasked_high_byte(0x04), Some(0x00));
        assert_eq!(super::unmasked_high_byte(0x05), Some(0x01), "SERR stays");
        assert_eq!(super::unmasked_high_byte(0x01), None, "already unmasked");
    }

    #[test]
    fn uio_line_unmasks_through_the_config_space() {
        use std::os::unix::fs::FileExt;
        let dir = std::env::temp_dir().join(format!("uio-line-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (node, config) = (dir.join("uio0"), dir.join("config"));
        std::fs::write(&node, [0u8; 4]).unwrap();
        // COMMAND = memory | bus master | INTX_DISABLE | SERR.
        let mut space = vec![0u8; 64];
        space[4] = 0x06;
        space[5] = 0x05;
        std::fs::write(&config, &space).unwrap();
        let open = |p: &std::path::Path| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .unwrap()
        };
        let line = super::UioLine::new(open(&node), open(&config));
        line.unmask().unwrap();
        let mut command = [0u8; 2];
        open(&config).read_exact_at(&mut command, 4).unwrap();
        assert_eq!(command, [0x06, 0x01], "only INTX_DISABLE cleared");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn poll_times_out() {
        let (r, _w) = std::os::unix::net::UnixStream::pair().unwrap();
        let start = Instant::now();
        assert!(!poll_readable(r.as_raw_fd(), soon(20)).unwrap());
        assert!(start.elapsed() >= Duration::from_millis(20));
    }
}
