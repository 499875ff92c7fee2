// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A vhost-user front-end for the `vhost_user` fuzz target, written from the
//! vhost-user specification rather than with the `vhost` crate's front-end
//! (which cannot send malformed messages): the steps a fuzz input decodes
//! into ([`Step`]), the framing of messages with their descriptors
//! (SCM_RIGHTS) on a Unix stream socket ([`Frontend`]), and the replies read
//! back, each checked to be well formed ([`Reply`]).

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use crate::input::{Reader, Writer};
use crate::ring::ChainSpec;

/// The most steps one input runs.
pub const MAX_STEPS: usize = 64;
/// The largest message body vhost-user allows (`MAX_MSG_SIZE` of the
/// `vhost` crate); a header announcing more is refused.
pub const MAX_MSG_SIZE: usize = 0x1000;
/// Longest body of a configuration or garbage message the input asks for:
/// a little past [`MAX_MSG_SIZE`], so that oversized headers are tried too.
const MAX_BODY: u16 = 0x1100;
/// The most regions of a SET_MEM_TABLE the input lays out.
const MAX_REGIONS: u8 = 4;
/// Where the VMM's own mapping of guest memory lies in its address space
/// (the `user_addr` of the regions, which SET_VRING_ADDR addresses refer to).
pub const VMM_BASE: u64 = 0x7f00_0000_0000;

/// Front-end request codes (vhost-user specification, "Front-end message
/// types").
pub mod code {
    /// VHOST_USER_GET_FEATURES.
    pub const GET_FEATURES: u32 = 1;
    /// VHOST_USER_SET_FEATURES.
    pub const SET_FEATURES: u32 = 2;
    /// VHOST_USER_SET_OWNER.
    pub const SET_OWNER: u32 = 3;
    /// VHOST_USER_RESET_OWNER.
    pub const RESET_OWNER: u32 = 4;
    /// VHOST_USER_SET_MEM_TABLE.
    pub const SET_MEM_TABLE: u32 = 5;
    /// VHOST_USER_SET_VRING_NUM.
    pub const SET_VRING_NUM: u32 = 8;
    /// VHOST_USER_SET_VRING_ADDR.
    pub const SET_VRING_ADDR: u32 = 9;
    /// VHOST_USER_SET_VRING_BASE.
    pub const SET_VRING_BASE: u32 = 10;
    /// VHOST_USER_GET_VRING_BASE.
    pub const GET_VRING_BASE: u32 = 11;
    /// VHOST_USER_SET_VRING_KICK.
    pub const SET_VRING_KICK: u32 = 12;
    /// VHOST_USER_SET_VRING_CALL.
    pub const SET_VRING_CALL: u32 = 13;
    /// VHOST_USER_SET_VRING_ERR.
    pub const SET_VRING_ERR: u32 = 14;
    /// VHOST_USER_GET_PROTOCOL_FEATURES.
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    /// VHOST_USER_SET_PROTOCOL_FEATURES.
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    /// VHOST_USER_GET_QUEUE_NUM.
    pub const GET_QUEUE_NUM: u32 = 17;
    /// VHOST_USER_SET_VRING_ENABLE.
    pub const SET_VRING_ENABLE: u32 = 18;
    /// VHOST_USER_GET_CONFIG.
    pub const GET_CONFIG: u32 = 24;
    /// VHOST_USER_SET_CONFIG.
    pub const SET_CONFIG: u32 = 25;
    /// VHOST_USER_RESET_DEVICE.
    pub const RESET_DEVICE: u32 = 34;
    /// VHOST_USER_GET_MAX_MEM_SLOTS.
    pub const GET_MAX_MEM_SLOTS: u32 = 36;
    /// VHOST_USER_ADD_MEM_REG.
    pub const ADD_MEM_REG: u32 = 37;
    /// VHOST_USER_REM_MEM_REG.
    pub const REM_MEM_REG: u32 = 38;
}

/// Header flags: protocol version 1.
pub const FLAG_VERSION: u32 = 0x1;
/// Header flags: a reply.
pub const FLAG_REPLY: u32 = 0x4;
/// Header flags: the sender wants an acknowledgement (REPLY_ACK).
pub const FLAG_NEED_REPLY: u32 = 0x8;
/// The payload bit of SET_VRING_KICK/CALL/ERR saying no descriptor comes.
pub const VRING_NOFD: u64 = 0x100;

/// A feature word a SET_FEATURES or SET_PROTOCOL_FEATURES sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Features {
    /// The bits of this mask that the back-end offers.
    Offered(u64),
    /// Exactly these bits, offered or not.
    Raw(u64),
}

impl Features {
    fn read(r: &mut Reader<'_>) -> Self {
        let mode = r.u8();
        let value = r.u64();
        if mode & 1 == 0 {
            Features::Offered(value)
        } else {
            Features::Raw(value)
        }
    }

    fn write(&self, w: &mut Writer) {
        match *self {
            Features::Offered(mask) => w.u8(0).u64(mask),
            Features::Raw(value) => w.u8(1).u64(value),
        };
    }

    /// The word, given what the back-end offers.
    pub fn value(&self, offered: u64) -> u64 {
        match *self {
            Features::Offered(mask) => mask & offered,
            Features::Raw(value) => value,
        }
    }
}

/// The file behind a memory region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionFile {
    /// The guest memory the harness lays rings in (sealed against
    /// shrinking).
    Guest,
    /// A memfd of its own of this many pages, sealed against shrinking or
    /// not.
    Fresh {
        /// Its size in pages.
        pages: u16,
        /// Whether it carries `F_SEAL_SHRINK`.
        sealed: bool,
    },
}

/// One region of a SET_MEM_TABLE or ADD_MEM_REG/REM_MEM_REG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionSpec {
    /// Region 0 or 1 of the guest memory exactly as it is laid out.
    Guest(u8),
    /// A region with fields of the input's choosing.
    Custom {
        /// Its file.
        file: RegionFile,
        /// Guest-physical address.
        guest_addr: u64,
        /// Size in bytes (any, larger than the file included).
        size: u32,
        /// Offset in the file (any, past its end included).
        offset: u32,
        /// The VMM's address of it; `VMM_BASE + guest_addr` when `None`.
        user_addr: Option<u64>,
    },
}

impl RegionSpec {
    /// Reads a region: a kind byte (bits 0-1: 0 and 1 guest region 0 and 1
    /// as laid out, 2 custom on the guest memory, 3 custom on a memfd of its
    /// own; bit 2: a raw VMM address follows; bit 3: that memfd is sealed),
    /// then for a custom region u64 guest address, u32 size, u32 offset,
    /// [u64 VMM address], [u16 pages of its memfd].
    fn read(r: &mut Reader<'_>) -> Self {
        let kind = r.u8();
        if kind & 3 < 2 {
            return RegionSpec::Guest(kind & 1);
        }
        let guest_addr = r.u64();
        let size = r.u32();
        let offset = r.u32();
        let user_addr = (kind & 4 != 0).then(|| r.u64());
        let file = if kind & 3 == 3 {
            RegionFile::Fresh {
                pages: r.u16(),
                sealed: kind & 8 != 0,
            }
        } else {
            RegionFile::Guest
        };
        RegionSpec::Custom {
            file,
            guest_addr,
            size,
            offset,
            user_addr,
        }
    }

    fn write(&self, w: &mut Writer) {
        match *self {
            RegionSpec::Guest(index) => {
                w.u8(index & 1);
            }
            RegionSpec::Custom {
                file,
                guest_addr,
                size,
                offset,
                user_addr,
            } => {
                let (fresh, sealed, pages) = match file {
                    RegionFile::Guest => (0, 0, None),
                    RegionFile::Fresh { pages, sealed } => (1, u8::from(sealed) << 3, Some(pages)),
                };
                let raw_addr = u8::from(user_addr.is_some()) << 2;
                w.u8(2 | fresh | raw_addr | sealed)
                    .u64(guest_addr)
                    .u32(size)
                    .u32(offset);
                if let Some(addr) = user_addr {
                    w.u64(addr);
                }
                if let Some(pages) = pages {
                    w.u16(pages);
                }
            }
        }
    }
}

/// The ring addresses of a SET_VRING_ADDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingAddr {
    /// Where the harness lays out the rings of that queue
    /// (`ring::SplitRing::new`), as VMM addresses.
    Laid,
    /// Any flags and addresses.
    Raw {
        /// Flags (bit 0: log).
        flags: u32,
        /// Descriptor table.
        desc: u64,
        /// Used ring.
        used: u64,
        /// Available ring.
        avail: u64,
        /// Log address.
        log: u64,
    },
}

/// What SET_VRING_KICK/CALL/ERR pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdMode {
    /// An eventfd, as a VMM does.
    Event,
    /// No descriptor, with the no-descriptor bit (polling).
    NoFd,
    /// The no-descriptor bit, but a descriptor anyway.
    NoFdButAttached,
    /// Neither bit nor descriptor.
    Missing,
}

/// One step of an input: a message to the back-end, or the guest kicking a
/// queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// GET_FEATURES.
    GetFeatures,
    /// SET_FEATURES.
    SetFeatures(Features),
    /// SET_OWNER.
    SetOwner,
    /// RESET_OWNER.
    ResetOwner,
    /// GET_PROTOCOL_FEATURES.
    GetProtocolFeatures,
    /// SET_PROTOCOL_FEATURES.
    SetProtocolFeatures(Features),
    /// GET_QUEUE_NUM.
    GetQueueNum,
    /// SET_MEM_TABLE with these regions (none: a malformed table) and one
    /// descriptor per region, give or take `fd_delta`.
    SetMemTable {
        /// The regions.
        regions: Vec<RegionSpec>,
        /// -1: one descriptor fewer than regions, +1: one more.
        fd_delta: i8,
    },
    /// SET_VRING_NUM.
    SetVringNum {
        /// Queue index.
        index: u8,
        /// Queue size.
        num: u16,
    },
    /// SET_VRING_ADDR.
    SetVringAddr {
        /// Queue index.
        index: u8,
        /// Addresses.
        addr: RingAddr,
    },
    /// SET_VRING_BASE.
    SetVringBase {
        /// Queue index.
        index: u8,
        /// Next available index.
        num: u32,
    },
    /// GET_VRING_BASE.
    GetVringBase {
        /// Queue index.
        index: u8,
    },
    /// SET_VRING_KICK, SET_VRING_CALL or SET_VRING_ERR.
    SetVringFd {
        /// Which of the three.
        code: u32,
        /// Queue index.
        index: u8,
        /// What is passed.
        fd: FdMode,
    },
    /// SET_VRING_ENABLE.
    SetVringEnable {
        /// Queue index.
        index: u8,
        /// 1 enables, 0 disables, anything else is invalid.
        num: u8,
    },
    /// GET_CONFIG of `size` bytes at `offset`.
    GetConfig {
        /// Offset.
        offset: u32,
        /// Size (the payload sent is as long).
        size: u16,
        /// Flags.
        flags: u32,
    },
    /// SET_CONFIG.
    SetConfig {
        /// Offset.
        offset: u32,
        /// Flags.
        flags: u32,
        /// The bytes.
        data: Vec<u8>,
    },
    /// RESET_DEVICE.
    ResetDevice,
    /// GET_MAX_MEM_SLOTS.
    GetMaxMemSlots,
    /// ADD_MEM_REG.
    AddMemReg(RegionSpec),
    /// REM_MEM_REG.
    RemMemReg(RegionSpec),
    /// The guest places a chain on a queue's rings, makes it available and
    /// kicks the queue's kick eventfd (no message).
    Kick {
        /// Queue index.
        index: u8,
        /// The chain.
        chain: ChainSpec,
    },
    /// Any header (code, flags, size) with a body of that size and a few
    /// eventfds attached.
    Garbage {
        /// Request code (never GET_PROTOCOL_FEATURES, the harness's probe).
        code: u32,
        /// Flags.
        flags: u32,
        /// The body, as long as the header says.
        body: Vec<u8>,
        /// How many eventfds go with it.
        fds: u8,
    },
}

/// An action and whether its message asks for an acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Sets NEED_REPLY in the header.
    pub need_reply: bool,
    /// The action.
    pub action: Action,
}

/// Number of action kinds: the tag byte's low 7 bits pick one modulo this.
const ACTIONS: u8 = 24;

/// Reads a body length (below [`MAX_BODY`]) and that many bytes, zeros once
/// the input ends.
fn read_body(r: &mut Reader<'_>) -> Vec<u8> {
    let len = usize::from(r.u16() % MAX_BODY);
    let mut body = r.bytes(len).to_vec();
    body.resize(len, 0);
    body
}

impl Step {
    /// Reads a step: a tag byte (bit 7: NEED_REPLY; bits 0-6 modulo 24:
    /// the action, numbered as in [`Step::write`]), then the action's
    /// fields.
    pub fn read(r: &mut Reader<'_>) -> Self {
        let tag = r.u8();
        let action = match (tag & 0x7f) % ACTIONS {
            0 => Action::GetFeatures,
            1 => Action::SetFeatures(Features::read(r)),
            2 => Action::SetOwner,
            3 => Action::ResetOwner,
            4 => Action::GetProtocolFeatures,
            5 => Action::SetProtocolFeatures(Features::read(r)),
            6 => Action::GetQueueNum,
            7 => {
                let head = r.u8();
                let count = (head & 7) % (MAX_REGIONS + 1);
                let fd_delta = match (head >> 4) % 3 {
                    0 => 0,
                    1 => -1,
                    _ => 1,
                };
                let regions = (0..count).map(|_| RegionSpec::read(r)).collect();
                Action::SetMemTable { regions, fd_delta }
            }
            8 => Action::SetVringNum {
                index: r.u8(),
                num: r.u16(),
            },
            9 => {
                let index = r.u8();
                let addr = if r.u8() & 1 == 0 {
                    RingAddr::Laid
                } else {
                    RingAddr::Raw {
                        flags: r.u32(),
                        desc: r.u64(),
                        used: r.u64(),
                        avail: r.u64(),
                        log: r.u64(),
                    }
                };
                Action::SetVringAddr { index, addr }
            }
            10 => Action::SetVringBase {
                index: r.u8(),
                num: r.u32(),
            },
            11 => Action::GetVringBase { index: r.u8() },
            tag @ 12..=14 => {
                let index = r.u8();
                let fd = match r.u8() % 4 {
                    0 => FdMode::Event,
                    1 => FdMode::NoFd,
                    2 => FdMode::NoFdButAttached,
                    _ => FdMode::Missing,
                };
                let code = match tag {
                    12 => code::SET_VRING_KICK,
                    13 => code::SET_VRING_CALL,
                    _ => code::SET_VRING_ERR,
                };
                Action::SetVringFd { code, index, fd }
            }
            15 => Action::SetVringEnable {
                index: r.u8(),
                num: r.u8(),
            },
            16 => Action::GetConfig {
                offset: r.u32(),
                size: r.u16() % MAX_BODY,
                flags: r.u32(),
            },
            17 => Action::SetConfig {
                offset: r.u32(),
                flags: r.u32(),
                data: read_body(r),
            },
            18 => Action::ResetDevice,
            19 => Action::GetMaxMemSlots,
            20 => Action::AddMemReg(RegionSpec::read(r)),
            21 => Action::RemMemReg(RegionSpec::read(r)),
            22 => Action::Kick {
                index: r.u8(),
                chain: ChainSpec::read(r),
            },
            _ => {
                let selector = r.u8();
                let code = if selector < 0xc0 {
                    u32::from(selector % 48)
                } else {
                    r.u32()
                };
                let flag_selector = r.u8();
                let flags = if flag_selector < 0x80 {
                    FLAG_VERSION | u32::from(flag_selector & 0x0c)
                } else {
                    r.u32()
                };
                let fds = r.u8() % 4;
                Action::Garbage {
                    code: probe_safe(code),
                    flags,
                    body: read_body(r),
                    fds,
                }
            }
        };
        Step {
            need_reply: tag & 0x80 != 0,
            action,
        }
    }

    /// Writes the step as [`Step::read`] reads it.
    pub fn write(&self, w: &mut Writer) {
        let reply = if self.need_reply { 0x80 } else { 0 };
        let tag = |w: &mut Writer, number: u8| {
            w.u8(number | reply);
        };
        match &self.action {
            Action::GetFeatures => tag(w, 0),
            Action::SetFeatures(features) => {
                tag(w, 1);
                features.write(w);
            }
            Action::SetOwner => tag(w, 2),
            Action::ResetOwner => tag(w, 3),
            Action::GetProtocolFeatures => tag(w, 4),
            Action::SetProtocolFeatures(features) => {
                tag(w, 5);
                features.write(w);
            }
            Action::GetQueueNum => tag(w, 6),
            Action::SetMemTable { regions, fd_delta } => {
                tag(w, 7);
                let delta = match fd_delta {
                    0 => 0u8,
                    -1 => 1,
                    _ => 2,
                };
                w.u8(regions.len() as u8 | (delta << 4));
                regions.iter().for_each(|region| region.write(w));
            }
            Action::SetVringNum { index, num } => {
                tag(w, 8);
                w.u8(*index).u16(*num);
            }
            Action::SetVringAddr { index, addr } => {
                tag(w, 9);
                w.u8(*index);
                match *addr {
                    RingAddr::Laid => {
                        w.u8(0);
                    }
                    RingAddr::Raw {
                        flags,
                        desc,
                        used,
                        avail,
                        log,
                    } => {
                        w.u8(1).u32(flags).u64(desc).u64(used).u64(avail).u64(log);
                    }
                }
            }
            Action::SetVringBase { index, num } => {
                tag(w, 10);
                w.u8(*index).u32(*num);
            }
            Action::GetVringBase { index } => {
                tag(w, 11);
                w.u8(*index);
            }
            Action::SetVringFd { code, index, fd } => {
                let number = match *code {
                    code::SET_VRING_KICK => 12,
                    code::SET_VRING_CALL => 13,
                    _ => 14,
                };
                tag(w, number);
                let mode = match fd {
                    FdMode::Event => 0,
                    FdMode::NoFd => 1,
                    FdMode::NoFdButAttached => 2,
                    FdMode::Missing => 3,
                };
                w.u8(*index).u8(mode);
            }
            Action::SetVringEnable { index, num } => {
                tag(w, 15);
                w.u8(*index).u8(*num);
            }
            Action::GetConfig {
                offset,
                size,
                flags,
            } => {
                tag(w, 16);
                w.u32(*offset).u16(*size).u32(*flags);
            }
            Action::SetConfig {
                offset,
                flags,
                data,
            } => {
                tag(w, 17);
                w.u32(*offset)
                    .u32(*flags)
                    .u16(data.len() as u16)
                    .bytes(data);
            }
            Action::ResetDevice => tag(w, 18),
            Action::GetMaxMemSlots => tag(w, 19),
            Action::AddMemReg(region) => {
                tag(w, 20);
                region.write(w);
            }
            Action::RemMemReg(region) => {
                tag(w, 21);
                region.write(w);
            }
            Action::Kick { index, chain } => {
                tag(w, 22);
                w.u8(*index);
                chain.write(w);
            }
            Action::Garbage {
                code,
                flags,
                body,
                fds,
            } => {
                tag(w, 23);
                w.u8(0xff).u32(*code).u8(0xff).u32(*flags).u8(*fds);
                w.u16(body.len() as u16).bytes(body);
            }
        }
    }
}

/// GET_PROTOCOL_FEATURES is the harness's probe (see [`Frontend::probe`]):
/// garbage never uses its code, so that the probe's reply is told apart.
fn probe_safe(code: u32) -> u32 {
    if code == code::GET_PROTOCOL_FEATURES {
        code | 0x100
    } else {
        code
    }
}

/// A message read from the back-end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Request code.
    pub code: u32,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as one u64 (VhostUserU64), checked to be exactly that.
    pub fn u64(&self) -> u64 {
        let bytes: [u8; 8] = self.body.as_slice().try_into().unwrap_or_else(|_| {
            panic!(
                "reply to {} has a body of {} bytes, not a u64",
                self.code,
                self.body.len()
            )
        });
        u64::from_le_bytes(bytes)
    }

    /// The little-endian u32 at `offset` of the body.
    pub fn u32_at(&self, offset: usize) -> u32 {
        let bytes = self
            .body
            .get(offset..offset + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .unwrap_or_else(|| panic!("reply to {} too short: {:?}", self.code, self.body));
        u32::from_le_bytes(bytes)
    }
}

/// The connection is over: the back-end closed it (or reset it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended;

/// The front-end's end of a vhost-user connection.
pub struct Frontend {
    socket: UnixStream,
}

/// Room for the descriptors of one message (at most 8 here).
const MAX_FDS: usize = 8;

impl Frontend {
    /// The front-end on `socket`.
    pub fn new(socket: UnixStream) -> Self {
        Frontend { socket }
    }

    /// Sends a message (header and body in one `sendmsg`, the descriptors
    /// with its first byte). `Err(Ended)` once the back-end has closed the
    /// connection.
    pub fn send(&self, code: u32, flags: u32, body: &[u8], fds: &[RawFd]) -> Result<(), Ended> {
        let size = u32::try_from(body.len()).unwrap_or(u32::MAX);
        let mut message = Vec::with_capacity(12 + body.len());
        message.extend_from_slice(&code.to_le_bytes());
        message.extend_from_slice(&flags.to_le_bytes());
        message.extend_from_slice(&size.to_le_bytes());
        message.extend_from_slice(body);
        let sent = self.sendmsg(&message, fds)?;
        // A stream socket may take a message in pieces; the rest goes
        // without descriptors.
        let mut rest = &message[sent..];
        while !rest.is_empty() {
            let sent = self.sendmsg(rest, &[])?;
            rest = &rest[sent..];
        }
        Ok(())
    }

    fn sendmsg(&self, bytes: &[u8], fds: &[RawFd]) -> Result<usize, Ended> {
        assert!(fds.len() <= MAX_FDS, "too many descriptors for one message");
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr().cast_mut().cast(),
            iov_len: bytes.len(),
        };
        // u64 elements keep the control buffer aligned for cmsghdr.
        let mut control = [0u64; 8];
        // SAFETY: an all-zero msghdr is valid (no name, no buffers).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            let fds_len = std::mem::size_of_val(fds) as u32;
            // SAFETY: CMSG_SPACE only computes a size.
            let space = unsafe { libc::CMSG_SPACE(fds_len) } as usize;
            assert!(space <= std::mem::size_of_val(&control));
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space;
            // SAFETY: `msg` points at `control`, which has room for one
            // header and `fds` (checked above), so CMSG_FIRSTHDR is non-null
            // and CMSG_DATA lies inside `control`.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(fds_len) as usize;
                std::ptr::copy_nonoverlapping(
                    fds.as_ptr(),
                    libc::CMSG_DATA(cmsg).cast::<RawFd>(),
                    fds.len(),
                );
            }
        }
        loop {
            // SAFETY: `msg` describes `bytes` and `control`, both alive for
            // the call; MSG_NOSIGNAL: a closed peer gives EPIPE, not SIGPIPE.
            let sent = unsafe { libc::sendmsg(self.socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
            if sent >= 0 {
                return Ok(sent as usize);
            }
            match io::Error::last_os_error().kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => return Err(Ended),
                kind => panic!("sendmsg on the vhost-user socket: {kind:?}"),
            }
        }
    }

    /// Fills `buf` from the socket; `Ok(false)` at the end of the
    /// connection before any byte. A message cut short is malformed.
    fn read_full(&self, buf: &mut [u8]) -> Result<bool, Ended> {
        let mut filled = 0;
        while filled < buf.len() {
            match (&self.socket).read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(Ended),
                Err(e) => panic!("read from the vhost-user socket: {e}"),
            }
        }
        assert!(
            filled == 0 || filled == buf.len(),
            "the back-end sent {filled} bytes of a {}-byte message, then closed",
            buf.len()
        );
        Ok(filled != 0)
    }

    /// Reads one message from the back-end, checking its header: version
    /// 1, the REPLY flag and nothing else, a size within MAX_MSG_SIZE.
    /// `Err(Ended)` if the back-end has closed the connection instead.
    pub fn read_reply(&self) -> Result<Reply, Ended> {
        let mut header = [0u8; 12];
        if !self.read_full(&mut header)? {
            return Err(Ended);
        }
        let field =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let (code, flags, size) = (field(0), field(4), field(8));
        assert_eq!(
            flags,
            FLAG_VERSION | FLAG_REPLY,
            "reply to {code} with flags {flags:#x}"
        );
        let size = size as usize;
        assert!(size <= MAX_MSG_SIZE, "reply to {code} of {size} bytes");
        let mut body = vec![0u8; size];
        if size > 0 && !self.read_full(&mut body)? {
            panic!("reply to {code} without its body of {size} bytes");
        }
        Ok(Reply { code, body })
    }

    /// Reads the reply to request `code`, which must come next.
    pub fn expect_reply(&self, code: u32) -> Result<Reply, Ended> {
        let reply = self.read_reply()?;
        assert_eq!(
            reply.code, code,
            "a reply to {} where one to {code} was due",
            reply.code
        );
        Ok(reply)
    }

    /// Reads the acknowledgement of `code`: a u64, 0 (success) or 1 (the
    /// request failed).
    pub fn expect_ack(&self, code: u32) -> Result<u64, Ended> {
        let value = self.expect_reply(code)?.u64();
        assert!(value <= 1, "acknowledgement of {code} is {value}");
        Ok(value)
    }

    /// After a message whose reply cannot be foretold (`code`), sends
    /// GET_PROTOCOL_FEATURES, which has no effect and is always answered,
    /// and reads up to its reply: at most one reply to `code` may come
    /// first. Returns the probe's reply.
    pub fn probe(&self, code: u32) -> Result<Reply, Ended> {
        self.send(code::GET_PROTOCOL_FEATURES, FLAG_VERSION, &[], &[])?;
        let mut replies_to_code = 0;
        loop {
            let reply = self.read_reply()?;
            if reply.code == code::GET_PROTOCOL_FEATURES {
                return Ok(reply);
            }
            replies_to_code += 1;
            assert!(
                reply.code == code && replies_to_code == 1,
                "reply to {} (number {replies_to_code}) after a message {code}",
                reply.code
            );
        }
    }

    /// Ends the front-end's side (as a VMM that quits) and checks that
    /// nothing but the end of the connection follows.
    pub fn finish(&self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Write);
        self.expect_end();
    }

    /// Checks that the back-end sends nothing more and closes the
    /// connection.
    pub fn expect_end(&self) {
        if let Ok(reply) = self.read_reply() {
            panic!("a reply to {} that nobody asked for", reply.code);
        }
    }
}
