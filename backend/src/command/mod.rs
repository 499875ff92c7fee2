// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Requests and control commands decoded from the bytes of a chain (§6, §7),
//! their operations and parameters included ([`operation`], §8): all the
//! decoding of the request path is here.
//!
//! Each header is copied out of guest memory exactly once into a typed value;
//! everything after that works on the copy. Nothing here knows about virtio
//! queues: the input is a [`SgList`] of readable bytes, so the decoders can be
//! tested on plain byte buffers.

use smallvec::SmallVec;
use thiserror::Error;
use virtio_accel_spec::op::UnknownOp;
use virtio_accel_spec::{
    BufRef, ControlCommand, CtrlReq, Fence, MemSeg, Op, Req, Status, DIRECT_HANDLE,
    VIRTIO_ACCEL_F_FENCES, VIRTIO_ACCEL_F_OBJECTS,
};
use vm_memory::ByteValued;

use crate::config::Limits;
use crate::sg::{SgList, SgReader};

pub mod operation;

pub use operation::{GcmKey, Operation, ParamsError};

/// Why a request or command could not be decoded; [`DecodeError::status`] maps
/// each case to the status of §9.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The readable part ends inside a header or an array.
    #[error("readable part too short for {0}")]
    Short(&'static str),
    /// Unknown operation code.
    #[error(transparent)]
    UnknownOp(#[from] UnknownOp),
    /// Unknown control command.
    #[error(transparent)]
    UnknownCommand(#[from] virtio_accel_spec::control::UnknownCommand),
    /// `num_in`/`num_out` differ from the operation's arity.
    #[error("{op:?} takes {expected:?} buffers, request has {got:?}")]
    Arity {
        /// The operation.
        op: Op,
        /// (inputs, outputs) it takes.
        expected: (u8, u8),
        /// (inputs, outputs) the request has.
        got: (u8, u8),
    },
    /// A reserved field is not zero.
    #[error("reserved field of {0} is not zero")]
    Reserved(&'static str),
    /// The parameter block is invalid.
    #[error(transparent)]
    Params(#[from] ParamsError),
    /// More fences than `max_deps`.
    #[error("{got} fences, limit {limit}")]
    TooManyFences {
        /// Fences listed.
        got: u32,
        /// The limit.
        limit: u32,
    },
    /// More object segments than `max_segments`.
    #[error("{got} segments, limit {limit}")]
    TooManySegments {
        /// Segments listed.
        got: u32,
        /// The limit.
        limit: u32,
    },
    /// A count that must not be zero is zero.
    #[error("{0} is empty")]
    Empty(&'static str),
    /// An object segment of length zero.
    #[error("object segment {0} has length zero")]
    EmptySegment(usize),
    /// The handle of OBJECT_DESTROY is not a possible handle.
    #[error("handle {0:#x} does not fit 32 bits")]
    HandleRange(u64),
}

impl DecodeError {
    /// The status the device returns for this error (§9).
    pub fn status(&self) -> Status {
        match self {
            DecodeError::UnknownOp(_) | DecodeError::UnknownCommand(_) => Status::Unsupported,
            DecodeError::TooManyFences { .. } | DecodeError::TooManySegments { .. } => {
                Status::Limit
            }
            DecodeError::HandleRange(_) => Status::NoObject,
            DecodeError::Short(_)
            | DecodeError::Arity { .. }
            | DecodeError::Reserved(_)
            | DecodeError::Params(_)
            | DecodeError::Empty(_)
            | DecodeError::EmptySegment(_) => Status::Invalid,
        }
    }
}

/// A fence named by a request or a command: (request queue, sequence number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FenceId {
    /// Request queue index.
    pub queue: u16,
    /// Sequence number.
    pub seqno: u64,
}

/// Where one buffer of a request lives (§6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufSpec {
    /// `len` bytes of the chain's direct data area.
    Direct {
        /// Length.
        len: u64,
    },
    /// `len` bytes at `offset` of object `handle`.
    Object {
        /// Object handle.
        handle: u32,
        /// Offset in the object.
        offset: u64,
        /// Length.
        len: u64,
    },
}

impl BufSpec {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match *self {
            BufSpec::Direct { len } | BufSpec::Object { len, .. } => len,
        }
    }

    /// Whether the buffer has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The dependencies of a request (most have none or a few).
pub type Deps = SmallVec<[FenceId; 4]>;
/// The buffer references of one side of a request (at most two, §8).
pub type BufSpecs = SmallVec<[BufSpec; 2]>;

/// A decoded request (§6.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRequest {
    /// What to do.
    pub operation: Operation,
    /// Fences that must signal first.
    pub deps: Deps,
    /// Input buffers.
    pub inputs: BufSpecs,
    /// Output buffers.
    pub outputs: BufSpecs,
}

/// A decoded control command (§7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// §7.5: the capability bits the driver asks for.
    Capabilities(u64),
    /// §7.1: (guest-physical address, length) segments.
    ObjectCreate(Vec<(u64, u64)>),
    /// §7.2.
    ObjectDestroy(u32),
    /// §7.3.
    FenceQuery(FenceId),
    /// §7.4.
    FenceWait(Vec<FenceId>),
}

impl Control {
    /// The capability (feature bit number, §3) the command needs, if any.
    pub fn capability(&self) -> Option<u32> {
        match self {
            Control::Capabilities(_) => None,
            Control::ObjectCreate(_) | Control::ObjectDestroy(_) => Some(VIRTIO_ACCEL_F_OBJECTS),
            Control::FenceQuery(_) | Control::FenceWait(_) => Some(VIRTIO_ACCEL_F_FENCES),
        }
    }
}

/// Copies the next `T` from `reader`.
fn take<T: ByteValued + Default>(
    reader: &mut SgReader<'_>,
    what: &'static str,
) -> Result<T, DecodeError> {
    reader.read_obj().ok_or(DecodeError::Short(what))
}

/// Decodes what `decode` reads from the front of `list`, then drops those
/// bytes from it; on an error the list is left as it was. The fields are
/// read through one reader and the list is cut once, not once per field.
/// The result is returned as `decode` made it: taking a decoded request out
/// and wrapping it again would copy it.
fn consume<T>(
    list: &mut SgList,
    decode: impl FnOnce(&mut SgReader<'_>) -> Result<T, DecodeError>,
) -> Result<T, DecodeError> {
    let mut reader = list.reader();
    let decoded = decode(&mut reader);
    let read = list.len() - reader.len();
    if decoded.is_ok() {
        // The reader read no more than the list holds: this cannot fail.
        list.advance(read).ok_or(DecodeError::Short("header"))?;
    }
    decoded
}

fn take_fences<C: FromIterator<FenceId>>(
    list: &mut SgReader<'_>,
    count: u32,
) -> Result<C, DecodeError> {
    (0..count)
        .map(|_| {
            let fence: Fence = take(list, "fence")?;
            if fence.reserved != [0; 6] {
                return Err(DecodeError::Reserved("fence"));
            }
            Ok(FenceId {
                queue: fence.queue.into(),
                seqno: fence.seqno.into(),
            })
        })
        .collect()
}

fn take_buf(list: &mut SgReader<'_>) -> Result<BufSpec, DecodeError> {
    let buf: BufRef = take(list, "buffer reference")?;
    if u32::from(buf.reserved) != 0 {
        return Err(DecodeError::Reserved("buffer reference"));
    }
    let handle = u32::from(buf.handle);
    let (offset, len) = (u64::from(buf.offset), u64::from(buf.len));
    if handle == DIRECT_HANDLE {
        if offset != 0 {
            return Err(DecodeError::Reserved("direct buffer offset"));
        }
        return Ok(BufSpec::Direct { len });
    }
    Ok(BufSpec::Object {
        handle,
        offset,
        len,
    })
}

/// The next `count` buffer references (a plain loop: collecting a
/// `Result` iterator into a `SmallVec` costs more than the decoding).
fn take_bufs(list: &mut SgReader<'_>, count: u8) -> Result<BufSpecs, DecodeError> {
    let mut bufs = BufSpecs::new();
    for _ in 0..count {
        bufs.push(take_buf(list)?);
    }
    Ok(bufs)
}

fn check_count(
    got: u32,
    limit: u32,
    too_many: fn(u32, u32) -> DecodeError,
) -> Result<(), DecodeError> {
    if got > limit {
        Err(too_many(got, limit))
    } else {
        Ok(())
    }
}

/// Decodes a request from the front of `readable` (§6.1); what remains of
/// `readable` afterwards is the direct input data.
// A stage of the instruction budget (`accel-budget`): kept out of line so
// that callgrind counts it.
#[inline(never)]
pub fn decode_request(
    readable: &mut SgList,
    limits: &Limits,
) -> Result<DecodedRequest, DecodeError> {
    consume(readable, |reader| read_request(reader, limits))
}

fn read_request(
    readable: &mut SgReader<'_>,
    limits: &Limits,
) -> Result<DecodedRequest, DecodeError> {
    let req: Req = take(readable, "request header")?;
    let op = Op::try_from(u32::from(req.op))?;
    if req.reserved != [0; 8] {
        return Err(DecodeError::Reserved("request header"));
    }
    let expected = op.arity();
    let got = (req.num_in, req.num_out);
    if got != expected {
        return Err(DecodeError::Arity { op, expected, got });
    }
    let operation = Operation::decode(op, &req.params)?;
    let num_deps = u32::from(u16::from(req.num_deps));
    check_count(num_deps, limits.max_deps, |got, limit| {
        DecodeError::TooManyFences { got, limit }
    })?;
    let deps = take_fences(readable, num_deps)?;
    let inputs = take_bufs(readable, req.num_in)?;
    let outputs = take_bufs(readable, req.num_out)?;
    Ok(DecodedRequest {
        operation,
        deps,
        inputs,
        outputs,
    })
}

/// Decodes a control command from `readable` (§7).
pub fn decode_control(readable: &mut SgList, limits: &Limits) -> Result<Control, DecodeError> {
    consume(readable, |reader| read_control(reader, limits))
}

fn read_control(readable: &mut SgReader<'_>, limits: &Limits) -> Result<Control, DecodeError> {
    let req: CtrlReq = take(readable, "control header")?;
    let command = ControlCommand::try_from(u32::from(req.cmd))?;
    let count = u32::from(req.count);
    let arg = u64::from(req.arg);
    let no_arg = |what| {
        if arg == 0 {
            Ok(())
        } else {
            Err(DecodeError::Reserved(what))
        }
    };
    match command {
        ControlCommand::Capabilities => {
            if count != 0 {
                return Err(DecodeError::Reserved("CAPABILITIES count"));
            }
            Ok(Control::Capabilities(arg))
        }
        ControlCommand::ObjectCreate => {
            no_arg("OBJECT_CREATE arg")?;
            if count == 0 {
                return Err(DecodeError::Empty("OBJECT_CREATE segment list"));
            }
            check_count(count, limits.max_segments, |got, limit| {
                DecodeError::TooManySegments { got, limit }
            })?;
            let segs = (0..count)
                .map(|_| take::<MemSeg>(readable, "memory segment"))
                .collect::<Result<Vec<_>, _>>()?;
            let segs: Vec<(u64, u64)> =
                segs.iter().map(|s| (s.addr.into(), s.len.into())).collect();
            if let Some(index) = segs.iter().position(|&(_, len)| len == 0) {
                return Err(DecodeError::EmptySegment(index));
            }
            Ok(Control::ObjectCreate(segs))
        }
        ControlCommand::ObjectDestroy => {
            if count != 0 {
                return Err(DecodeError::Reserved("OBJECT_DESTROY count"));
            }
            let handle = u32::try_from(arg).map_err(|_| DecodeError::HandleRange(arg))?;
            Ok(Control::ObjectDestroy(handle))
        }
        ControlCommand::FenceQuery => {
            no_arg("FENCE_QUERY arg")?;
            if count != 1 {
                return Err(DecodeError::Reserved("FENCE_QUERY count"));
            }
            let fence: Deps = take_fences(readable, 1)?;
            fence
                .first()
                .copied()
                .map(Control::FenceQuery)
                .ok_or(DecodeError::Short("fence"))
        }
        ControlCommand::FenceWait => {
            no_arg("FENCE_WAIT arg")?;
            if count == 0 {
                return Err(DecodeError::Empty("FENCE_WAIT fence list"));
            }
            check_count(count, limits.max_deps, |got, limit| {
                DecodeError::TooManyFences { got, limit }
            })?;
            Ok(Control::FenceWait(take_fences(readable, count)?))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::sg::OwnedBuffers;
    use virtio_accel_spec::{Crc32cParams, FillParams};

    fn decode(bytes: Vec<u8>, seg: usize) -> (Result<DecodedRequest, DecodeError>, usize) {
        let owned = OwnedBuffers::new(vec![bytes]);
        let mut list = owned.sg(0, seg).unwrap();
        let result = decode_request(&mut list, &Limits::default());
        (result, list.len())
    }

    fn request_bytes(req: Req, deps: &[Fence], bufs: &[BufRef], data: &[u8]) -> Vec<u8> {
        let mut bytes = req.as_slice().to_vec();
        deps.iter()
            .for_each(|f| bytes.extend_from_slice(f.as_slice()));
        bufs.iter()
            .for_each(|b| bytes.extend_from_slice(b.as_slice()));
        bytes.extend_from_slice(data);
        bytes
    }

    #[test]
    fn decodes_a_crc_request_split_across_tiny_segments() {
        let params = Crc32cParams {
            seed: 7.into(),
            ..Default::default()
        };
        let req = Req::new(Op::Crc32c).with_params(&params);
        let mut with_dep = req;
        with_dep.num_deps = 1.into();
        let bytes = request_bytes(with_dep, &[Fence::new(1, 9)], &[BufRef::direct(3)], b"abc");
        let (request, rest) = decode(bytes, 5);
        let request = request.unwrap();
        assert_eq!(request.operation, Operation::Crc32c { seed: 7 });
        assert_eq!(request.deps.as_slice(), [FenceId { queue: 1, seqno: 9 }]);
        assert_eq!(request.inputs.as_slice(), [BufSpec::Direct { len: 3 }]);
        assert!(request.outputs.is_empty());
        assert_eq!(rest, 3, "the direct data stays in the list");
    }

    /// A request cut short in its buffer references is refused and leaves
    /// the list whole: nothing of it counts as read.
    #[test]
    fn a_short_request_leaves_the_list_as_it_was() {
        let req = Req::new(Op::Crc32c).with_params(&Crc32cParams::default());
        let mut bytes = request_bytes(req, &[], &[BufRef::direct(3)], b"");
        bytes.truncate(bytes.len() - 1);
        let len = bytes.len();
        let (request, rest) = decode(bytes, 5);
        assert_eq!(request, Err(DecodeError::Short("buffer reference")));
        assert_eq!(rest, len);
    }

    #[test]
    fn rejects_malformed_headers_with_the_right_status() {
        let fill = Req::new(Op::Fill).with_params(&FillParams {
            pattern: 1,
            ..Default::default()
        });
        let cases: Vec<(Vec<u8>, Status)> = vec![
            (vec![0; 10], Status::Invalid),
            (
                request_bytes(
                    Req {
                        op: 99.into(),
                        ..Req::new(Op::Copy)
                    },
                    &[],
                    &[],
                    &[],
                ),
                Status::Unsupported,
            ),
            (
                request_bytes(
                    Req { num_in: 1, ..fill },
                    &[],
                    &[BufRef::direct(1), BufRef::direct(1)],
                    &[],
                ),
                Status::Invalid,
            ),
            (
                request_bytes(
                    Req {
                        reserved: [1; 8],
                        ..fill
                    },
                    &[],
                    &[BufRef::direct(1)],
                    &[],
                ),
                Status::Invalid,
            ),
            (
                request_bytes(
                    Req {
                        num_deps: 17.into(),
                        ..fill
                    },
                    &[],
                    &[],
                    &[],
                ),
                Status::Limit,
            ),
            (
                request_bytes(
                    Req {
                        num_deps: 1.into(),
                        ..fill
                    },
                    &[],
                    &[],
                    &[],
                ),
                Status::Invalid,
            ),
            (
                request_bytes(
                    fill,
                    &[],
                    &[BufRef {
                        offset: 4.into(),
                        ..BufRef::direct(1)
                    }],
                    &[],
                ),
                Status::Invalid,
            ),
            (
                request_bytes(
                    fill,
                    &[],
                    &[BufRef {
                        reserved: 1.into(),
                        ..BufRef::object(3, 0, 1)
                    }],
                    &[],
                ),
                Status::Invalid,
            ),
            (request_bytes(fill, &[], &[], &[]), Status::Invalid),
        ];
        for (index, (bytes, status)) in cases.into_iter().enumerate() {
            let (result, _) = decode(bytes, 7);
            assert_eq!(
                result.map_err(|e| e.status()).err(),
                Some(status),
                "case {index}"
            );
        }
    }

    #[test]
    fn decodes_control_commands() {
        let decode = |bytes: Vec<u8>| {
            let owned = OwnedBuffers::new(vec![bytes]);
            let mut list = owned.sg(0, 3).unwrap();
            decode_control(&mut list, &Limits::default())
        };
        let mut create = CtrlReq::new(ControlCommand::ObjectCreate, 2, 0)
            .as_slice()
            .to_vec();
        create.extend_from_slice(MemSeg::new(0x1000, 10).as_slice());
        create.extend_from_slice(MemSeg::new(0x3000, 20).as_slice());
        assert_eq!(
            decode(create).unwrap(),
            Control::ObjectCreate(vec![(0x1000, 10), (0x3000, 20)])
        );

        let mut empty_seg = CtrlReq::new(ControlCommand::ObjectCreate, 1, 0)
            .as_slice()
            .to_vec();
        empty_seg.extend_from_slice(MemSeg::new(0x1000, 0).as_slice());
        assert_eq!(decode(empty_seg).unwrap_err().status(), Status::Invalid);

        let too_many = CtrlReq::new(ControlCommand::ObjectCreate, 65, 0)
            .as_slice()
            .to_vec();
        assert_eq!(decode(too_many).unwrap_err().status(), Status::Limit);

        let destroy = CtrlReq::new(ControlCommand::ObjectDestroy, 0, 5)
            .as_slice()
            .to_vec();
        assert_eq!(decode(destroy).unwrap(), Control::ObjectDestroy(5));
        let huge = CtrlReq::new(ControlCommand::ObjectDestroy, 0, 1 << 40)
            .as_slice()
            .to_vec();
        assert_eq!(decode(huge).unwrap_err().status(), Status::NoObject);

        let mut wait = CtrlReq::new(ControlCommand::FenceWait, 1, 0)
            .as_slice()
            .to_vec();
        wait.extend_from_slice(Fence::new(0, 3).as_slice());
        assert_eq!(
            decode(wait).unwrap(),
            Control::FenceWait(vec![FenceId { queue: 0, seqno: 3 }])
        );

        let unknown = CtrlReq {
            cmd: 0x999.into(),
            ..CtrlReq::default()
        }
        .as_slice()
        .to_vec();
        assert_eq!(decode(unknown).unwrap_err().status(), Status::Unsupported);
    }
}
