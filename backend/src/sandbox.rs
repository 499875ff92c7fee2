// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The sandbox of a tenant's process: what the process can still do once it
//! is set up, so that a memory-safety bug one guest can reach (in a codec
//! crate, in the vhost-user handling) gives an attacker a process that holds
//! that guest's memory and little else: no files, no network, no new
//! programs, no other process, no privileges (spec §12).
//!
//! [`apply`] takes four steps, in this order, each narrowing what the next
//! ones may need:
//!
//! 1. **User** ([`UserSpec`], `--user`): when the process runs as root and a
//!    user is configured, it drops its supplementary groups and takes the
//!    user's GID, then UID, as real, effective and saved IDs (glibc makes each
//!    change on every thread); then regaining root must fail.
//! 2. **`PR_SET_NO_NEW_PRIVS`**: no `execve` can grant privileges any more
//!    (set-user-ID files, file capabilities); it is also what lets an
//!    unprivileged process install the next two.
//! 3. **Landlock**: a ruleset that handles every file-system access right,
//!    TCP bind and connect, and the abstract-unix-socket and signal scopes
//!    the running kernel knows of, with no rule granting any of them: no
//!    path can be opened, created, removed or executed. Best effort: a kernel
//!    without Landlock, or with an older ABI, enforces what it can and
//!    [`SandboxReport::landlock`] says so. A Landlock domain belongs to a
//!    thread and the threads it starts; kernels with Landlock ABI 8 (Linux
//!    7.0) put every thread of the process in it at once, older ones only the
//!    calling thread and the threads it starts from then on, so threads
//!    started earlier (the engine's) stay outside Landlock there; seccomp
//!    refuses every path lookup on every thread anyway.
//! 4. **seccomp**: an allow-list of system calls (`ALLOWED`, some with
//!    argument checks), installed on every thread of the process at once
//!    (`SECCOMP_FILTER_FLAG_TSYNC`), since the engine's threads already run.
//!    Any other call raises SIGSYS: a handler writes the call to stderr and
//!    the process ends, killed by SIGSYS. A few calls get an error instead
//!    (`REFUSED_WITH_ERROR`), because the code that makes them copes:
//!    `clone3` fails with ENOSYS (glibc then starts threads with `clone`,
//!    whose flags the filter can check, while those of `clone3` lie in
//!    memory out of its reach), and every path lookup (`openat`, `stat` of a
//!    path, `readlink`, `getcwd`) fails with EACCES, as Landlock refuses
//!    paths: glibc's malloc reads `/proc/sys/vm/overcommit_memory` the first
//!    time it shrinks a thread's heap, and Rust's panic handler, with
//!    `RUST_BACKTRACE` set, looks for the binary and its debug information;
//!    both do without.
//!
//! The allow-list is what the daemon was seen to call (under `strace -f`)
//! while serving the device, reset and malformed-input test suites over its
//! socket, after set-up; each group of `ALLOWED` says what needs it.
//!
//! # What a tenant process does before [`apply`]
//!
//! After `apply` the process cannot open a path, create a socket other than
//! by `accept4` on a socket it holds, execute a program, send a signal to
//! another process, change its limits or priorities, or `ioctl` anything but
//! `UDMABUF_CREATE_LIST` (which makes an object a dma-buf; an engine whose
//! driver needs its device's ioctls, a hardware GPU's, has them all, and
//! one that imports dma-bufs has `lseek`: [`SandboxConfig::driver_calls`]).
//! So before it:
//! - initialise logging: it goes to the inherited stderr;
//! - open `/dev/udmabuf` ([`crate::dmabuf::DmaBufMaker::open`]);
//! - start the engine, and let its workers lower their priority
//!   (`setpriority` is refused afterwards, so that a tenant cannot undo the
//!   priority that weighs it against the others);
//! - hold the listening socket as a descriptor (`socket`, `bind`, `listen`
//!   are refused), and map or open whatever is shared with the supervisor;
//! - read any file it needs (configuration, `/proc`, `/sys`): with no
//!   `openat`, no `readlink`, no `lseek` (but to offset 0, for an engine
//!   that imports dma-bufs), `std::thread::available_parallelism` and
//!   `std::fs::read_to_string` no longer work;
//! - leave socket files to the supervisor (`unlink` is refused).
//!
//! Call `apply` from the thread that starts the connections' threads, so
//! that on kernels before Landlock ABI 8 the vhost-user handling and its
//! vring workers are inside the Landlock domain.
//!
//! # Reading a violation
//!
//! A system call outside the allow-list ends the tenant's process with a line
//! on its stderr such as
//!
//! ```text
//! vhost-user-accel: seccomp: thread vring_worker made system call 41 (socket), which the sandbox refuses; the process ends (SIGSYS)
//! ```
//!
//! and the supervisor then reports the process as killed by SIGSYS and
//! starts it again. The number is the system call's number on the machine's
//! architecture (`ausyscall 41`, or `grep -w 41
//! /usr/include/x86_64-linux-gnu/asm/unistd_64.h`); the name is given when
//! the sandbox knows it. "with arguments the sandbox refuses" means the call
//! itself is allowed but not as made (a `clone` that is not a thread, an
//! executable mapping, an `fcntl` command outside the list). A process
//! killed by SIGSYS without such a line made the call with SIGSYS blocked
//! (glibc blocks every signal while it starts a thread). A violation is
//! either a bug (a code path that needs a call the list lacks: add it with
//! its reason) or an attack on that tenant.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::io;
use std::str::FromStr;

use landlock::{
    Access, AccessFs, AccessNet, LandlockStatus, RestrictSelfAttr, RestrictionStatus, Ruleset,
    RulesetAttr, RulesetStatus, Scope, ABI,
};
use log::{info, warn};
use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use thiserror::Error;

use crate::engine::DriverCalls;

/// Errors of the sandbox: of `--user` at configuration time, then of each
/// step of [`apply`].
#[derive(Debug, Error)]
pub enum SandboxError {
    /// `--user` is neither a user name nor `UID:GID`.
    #[error("invalid user {0:?}: expected a user name or UID:GID")]
    InvalidUser(String),
    /// No such user in the user database.
    #[error("no user named {0:?}")]
    UnknownUser(String),
    /// The user database could not be read.
    #[error("cannot look up user {name:?}")]
    LookupUser {
        /// The user name.
        name: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The user is root, or has root's group: it would sandbox nothing.
    #[error("user {0} is privileged (UID or GID 0): name an unprivileged user")]
    PrivilegedUser(String),
    /// A step of the switch to the user failed.
    #[error("cannot switch to user {user}: {step} failed")]
    SwitchUser {
        /// The user.
        user: String,
        /// The call that failed.
        step: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// After switching to the user, the process could become root again.
    #[error("after switching to user {0}, root privileges could be regained")]
    RegainedRoot(String),
    /// The process that started this one ended while it switched users.
    #[error("the supervisor ended while the process switched users")]
    Orphaned,
    /// `PR_SET_NO_NEW_PRIVS` failed.
    #[error("cannot set no_new_privs")]
    NoNewPrivs(#[source] io::Error),
    /// The Landlock ruleset could not be built or enforced.
    #[error("cannot restrict the file system with Landlock")]
    Landlock(#[from] landlock::RulesetError),
    /// The SIGSYS handler could not be installed.
    #[error("cannot install the SIGSYS handler")]
    SigsysHandler(#[source] io::Error),
    /// The seccomp filter could not be compiled.
    #[error("cannot build the seccomp filter")]
    Filter(#[from] BackendError),
    /// The seccomp filter could not be installed on every thread.
    #[error("cannot install the seccomp filter")]
    Seccomp(#[from] seccompiler::Error),
}

/// The unprivileged user a tenant process started as root switches to
/// (`--user`, `user =`): a user name, looked up with its primary group when
/// parsed, or `UID:GID`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserSpec {
    /// The user name, or `UID:GID` as given.
    pub name: String,
    /// User ID.
    pub uid: libc::uid_t,
    /// Group ID (the only group the process keeps).
    pub gid: libc::gid_t,
}

impl FromStr for UserSpec {
    type Err = SandboxError;

    /// Resolves a user name with `getpwnam_r` (which may read the user
    /// database: at configuration time, not in a sandbox), or parses
    /// `UID:GID`. Root (UID or GID 0) is refused.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || SandboxError::InvalidUser(text.to_owned());
        let (uid, gid) = match text.split_once(':') {
            Some((uid, gid)) => (
                uid.parse().map_err(|_| invalid())?,
                gid.parse().map_err(|_| invalid())?,
            ),
            None if text.is_empty() => return Err(invalid()),
            None => look_up_user(text)?,
        };
        if uid == 0 || gid == 0 {
            return Err(SandboxError::PrivilegedUser(text.to_owned()));
        }
        Ok(UserSpec {
            name: text.to_owned(),
            uid,
            gid,
        })
    }
}

impl fmt::Display for UserSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name == format!("{}:{}", self.uid, self.gid) {
            write!(f, "{}", self.name)
        } else {
            write!(f, "{} ({}:{})", self.name, self.uid, self.gid)
        }
    }
}

/// The UID and primary GID of user `name`.
fn look_up_user(name: &str) -> Result<(libc::uid_t, libc::gid_t), SandboxError> {
    /// Largest buffer offered to `getpwnam_r` for one entry.
    const MAX_BUFFER: usize = 1 << 20;
    let c_name = CString::new(name).map_err(|_| SandboxError::InvalidUser(name.to_owned()))?;
    let mut buffer = vec![0u8; 1024];
    loop {
        // SAFETY: an all-zero passwd (null pointers, zero IDs) is a valid
        // value for getpwnam_r to overwrite.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: the name is NUL-terminated, `entry` and `found` are valid
        // out pointers and `buffer` is writable for its length; the strings
        // of `entry` point into `buffer`, which outlives their (unused) use.
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &mut entry,
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                &mut found,
            )
        };
        match rc {
            0 if found.is_null() => return Err(SandboxError::UnknownUser(name.to_owned())),
            0 => return Ok((entry.pw_uid, entry.pw_gid)),
            libc::ERANGE if buffer.len() < MAX_BUFFER => buffer.resize(buffer.len() * 2, 0),
            errno => {
                return Err(SandboxError::LookupUser {
                    name: name.to_owned(),
                    source: io::Error::from_raw_os_error(errno),
                })
            }
        }
    }
}

/// What [`apply`] puts in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// The user to become when the process runs as root.
    pub user: Option<UserSpec>,
    /// Restrict the file system, TCP and scopes with Landlock.
    pub landlock: bool,
    /// Install the seccomp allow-list.
    pub seccomp: bool,
    /// What the engine's driver calls while it runs
    /// ([`crate::engine::Engine::driver_calls`]): every `ioctl` (a
    /// hardware GPU's Vulkan driver on its render node; otherwise only
    /// `UDMABUF_CREATE_LIST` is allowed), `lseek` (a driver that imports
    /// dma-bufs).
    pub driver_calls: DriverCalls,
}

impl SandboxConfig {
    /// Every layer, switching to `user` when the process runs as root. (The
    /// daemon uses nothing else; tests turn layers off to see each alone.)
    pub fn new(user: Option<UserSpec>) -> Self {
        SandboxConfig {
            user,
            landlock: true,
            seccomp: true,
            driver_calls: DriverCalls::default(),
        }
    }
}

/// What became of the configured user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserOutcome {
    /// No user configured: the process keeps its IDs.
    NotConfigured,
    /// The process is now this user, and cannot become root again.
    Switched(UserSpec),
    /// The process is not root, so it keeps its own (unprivileged) IDs.
    NotRoot(UserSpec),
}

/// How far Landlock is in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandlockOutcome {
    /// Not asked for ([`SandboxConfig::landlock`] off).
    Disabled,
    /// The kernel has no Landlock: why.
    Unsupported(&'static str),
    /// A domain is in force.
    Enforced {
        /// The Landlock ABI the ruleset was built for (the lower of the
        /// kernel's and the newest this crate knows).
        abi: i32,
        /// Every requested access right and scope is enforced (else the
        /// kernel lacks some).
        complete: bool,
        /// Every thread of the process is in the domain; otherwise only the
        /// calling thread and the threads it starts from now on.
        all_threads: bool,
    },
}

/// What [`apply`] put in force, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxReport {
    /// The user.
    pub user: UserOutcome,
    /// Landlock.
    pub landlock: LandlockOutcome,
    /// The number of system calls the seccomp filter allows on every thread,
    /// some with some arguments only (`None`: no filter).
    pub seccomp_allowed: Option<usize>,
}

impl fmt::Display for SandboxReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.user {
            UserOutcome::NotConfigured => write!(f, "user unchanged")?,
            UserOutcome::Switched(user) => write!(f, "user {user}")?,
            UserOutcome::NotRoot(user) => write!(f, "not root, so not switching to user {user}")?,
        }
        write!(f, "; no_new_privs; ")?;
        match self.landlock {
            LandlockOutcome::Disabled => write!(f, "no Landlock")?,
            LandlockOutcome::Unsupported(why) => write!(f, "no Landlock ({why})")?,
            LandlockOutcome::Enforced {
                abi,
                complete,
                all_threads,
            } => {
                let extent = if complete { "fully" } else { "partially" };
                let threads = if all_threads {
                    "every thread"
                } else {
                    "this thread and those it starts (the kernel's Landlock ABI predates TSYNC)"
                };
                write!(f, "Landlock ABI {abi} {extent} enforced on {threads}")?;
            }
        }
        match self.seccomp_allowed {
            Some(count) => write!(f, "; seccomp: {count} system calls allowed on every thread"),
            None => write!(f, "; no seccomp"),
        }
    }
}

/// Puts `config` in force for the rest of the process's life, in the order
/// of the module's documentation: user, no_new_privs, Landlock, seccomp.
/// Logs what it did (a warning when a layer is weaker than asked for).
///
/// Call it once set-up is done (see the module's documentation for what must
/// come before); on error the process is partly sandboxed and should exit.
pub fn apply(config: &SandboxConfig) -> Result<SandboxReport, SandboxError> {
    let user = match &config.user {
        Some(user) => switch_user(user)?,
        None => UserOutcome::NotConfigured,
    };
    set_no_new_privs()?;
    let landlock = if config.landlock {
        restrict_file_system()?
    } else {
        LandlockOutcome::Disabled
    };
    let seccomp_allowed = if config.seccomp {
        Some(install_seccomp(config.driver_calls)?)
    } else {
        None
    };
    let report = SandboxReport {
        user,
        landlock,
        seccomp_allowed,
    };
    let weak = matches!(report.user, UserOutcome::NotRoot(_))
        || matches!(
            report.landlock,
            LandlockOutcome::Unsupported(_)
                | LandlockOutcome::Enforced {
                    complete: false,
                    ..
                }
        );
    if weak {
        warn!("sandbox: {report}");
    } else {
        info!("sandbox: {report}");
    }
    Ok(report)
}

/// Converts a C return value (0 or -1 with errno) into a result.
fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn switch_user(user: &UserSpec) -> Result<UserOutcome, SandboxError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(UserOutcome::NotRoot(user.clone()));
    }
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    let failed = |step| {
        move |source| SandboxError::SwitchUser {
            user: user.to_string(),
            step,
            source,
        }
    };
    // SAFETY: the group list is one valid gid_t, read during the call.
    check(unsafe { libc::setgroups(1, &user.gid) }).map_err(failed("setgroups"))?;
    // SAFETY: changes the process's group IDs only (glibc: on every thread).
    check(unsafe { libc::setresgid(user.gid, user.gid, user.gid) }).map_err(failed("setresgid"))?;
    // SAFETY: changes the process's user IDs only (glibc: on every thread).
    check(unsafe { libc::setresuid(user.uid, user.uid, user.uid) }).map_err(failed("setresuid"))?;
    // SAFETY: as above; expected to fail now that no ID is 0.
    if unsafe { libc::setuid(0) } == 0 {
        return Err(SandboxError::RegainedRoot(user.to_string()));
    }
    // Changing the user cleared the death signal the supervisor armed:
    // arm it again, and end if the supervisor died meanwhile.
    // SAFETY: sets a flag of the calling process; no memory is involved.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) })
        .map_err(failed("PR_SET_PDEATHSIG"))?;
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != parent {
        return Err(SandboxError::Orphaned);
    }
    Ok(UserOutcome::Switched(user.clone()))
}

fn set_no_new_privs() -> Result<(), SandboxError> {
    // SAFETY: sets a flag of the calling thread; no memory is involved.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
        .map_err(SandboxError::NoNewPrivs)
}

/// The Landlock ABI whose access rights and scopes are requested: the newest
/// this module was tested with. Newer rights need a review (and a test)
/// before they are added; older kernels get what they support.
const LANDLOCK_ABI: ABI = ABI::V6;

/// A Landlock domain that refuses everything it can handle: no rule is added.
fn restrict_file_system() -> Result<LandlockOutcome, SandboxError> {
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))?
        .handle_access(AccessNet::from_all(LANDLOCK_ABI))?
        .scope(Scope::from_all(LANDLOCK_ABI))?
        .create()?
        .all_threads(true)?
        .restrict_self()?;
    Ok(landlock_outcome(&status))
}

fn landlock_outcome(status: &RestrictionStatus) -> LandlockOutcome {
    let abi = match status.landlock {
        LandlockStatus::NotEnabled => return LandlockOutcome::Unsupported("disabled at boot"),
        LandlockStatus::NotImplemented => {
            return LandlockOutcome::Unsupported("not built into the kernel")
        }
        LandlockStatus::Available { effective_abi, .. } => effective_abi,
    };
    if status.ruleset == RulesetStatus::NotEnforced {
        return LandlockOutcome::Unsupported("no requested right supported");
    }
    LandlockOutcome::Enforced {
        abi: abi as i32,
        // The crate calls the ruleset partial when the kernel lacks the
        // all-threads flag too, which `all_threads` reports on its own.
        complete: abi >= LANDLOCK_ABI,
        all_threads: status.all_threads,
    }
}

/// A system call, by number on the build's architecture and by name.
#[derive(Debug, Clone, Copy)]
struct Syscall {
    number: i64,
    /// `SYS_` and the name.
    constant: &'static str,
}

impl Syscall {
    fn name(&self) -> &'static str {
        self.constant.strip_prefix("SYS_").unwrap_or(self.constant)
    }
}

/// The system call of libc's constant `SYS_...`.
macro_rules! syscall {
    ($constant:ident) => {
        Syscall {
            number: libc::$constant,
            constant: stringify!($constant),
        }
    };
}

/// An argument of a system call, as the filter compares it.
#[derive(Debug, Clone, Copy)]
enum Arg {
    /// A C `int` (the kernel ignores the upper half of the register).
    Int(u8),
    /// A C `long` or pointer-sized value.
    Long(u8),
}

impl Arg {
    fn condition(self, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, BackendError> {
        let (index, width) = match self {
            Arg::Int(index) => (index, SeccompCmpArgLen::Dword),
            Arg::Long(index) => (index, SeccompCmpArgLen::Qword),
        };
        SeccompCondition::new(index, width, op, value)
    }
}

/// The arguments an allowed system call may have.
#[derive(Debug, Clone, Copy)]
enum Check {
    /// Any.
    Any,
    /// The argument is one of the values.
    OneOf(Arg, &'static [u64]),
    /// The bits of the mask are clear in the argument.
    Clear(Arg, u64),
    /// The argument is this process's ID: signals to itself only.
    OwnProcess(Arg),
    /// A `*at` call that looks a path up: the directory argument is
    /// `AT_FDCWD`, or the flags argument lacks `AT_EMPTY_PATH`.
    ByPath {
        /// The directory descriptor.
        dir: Arg,
        /// The flags.
        flags: Arg,
    },
}

/// The flags glibc's `pthread_create` passes to `clone`: a thread of this
/// process, never a new process or namespace.
const THREAD_CLONE_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_SETTLS
    | libc::CLONE_PARENT_SETTID
    | libc::CLONE_CHILD_CLEARTID) as u64;

/// `AT_FDCWD` as the filter sees an `int` argument.
const AT_FDCWD_ARG: u64 = libc::AT_FDCWD as u32 as u64;

/// The system calls a set-up tenant process may make, by what needs them.
const ALLOWED: &[(Syscall, Check)] = &[
    // Memory: the allocator, thread stacks, guest memory (MAP_SHARED of the
    // VMM's descriptors); never executable.
    (
        syscall!(SYS_mmap),
        Check::Clear(Arg::Long(2), libc::PROT_EXEC as u64),
    ),
    (
        syscall!(SYS_mprotect),
        Check::Clear(Arg::Long(2), libc::PROT_EXEC as u64),
    ),
    (syscall!(SYS_munmap), Check::Any),
    (syscall!(SYS_mremap), Check::Any),
    (syscall!(SYS_madvise), Check::Any),
    (syscall!(SYS_brk), Check::Any),
    // Threads: a connection starts a thread for the VMM's messages and one
    // for its rings (vhost_user/connection.rs); they name themselves, set up their guard and signal
    // stacks (Rust's std reads its stack with pthread_getattr_np, hence
    // sched_getaffinity) and wait on futexes.
    (
        syscall!(SYS_clone),
        Check::OneOf(Arg::Long(0), &[THREAD_CLONE_FLAGS]),
    ),
    (syscall!(SYS_set_robust_list), Check::Any),
    (syscall!(SYS_rseq), Check::Any),
    (syscall!(SYS_futex), Check::Any),
    (syscall!(SYS_gettid), Check::Any),
    (syscall!(SYS_sched_getaffinity), Check::Any),
    (syscall!(SYS_sigaltstack), Check::Any),
    (syscall!(SYS_rt_sigprocmask), Check::Any),
    (
        syscall!(SYS_prctl),
        Check::OneOf(
            Arg::Int(0),
            &[libc::PR_SET_NAME as u64, libc::PR_GET_NAME as u64],
        ),
    ),
    (syscall!(SYS_exit), Check::Any),
    // Signals within the process: Rust's SIGSEGV/SIGBUS handler restores the
    // default action and returns, so that a fault on guest memory is reported
    // as itself; abort() and the SIGSYS handler signal their own thread; a
    // thread may wait for the exit signals.
    (syscall!(SYS_rt_sigaction), Check::Any),
    (syscall!(SYS_rt_sigreturn), Check::Any),
    (syscall!(SYS_rt_sigtimedwait), Check::Any),
    (syscall!(SYS_getpid), Check::Any),
    (syscall!(SYS_tgkill), Check::OwnProcess(Arg::Int(0))),
    // The vhost-user connection: accepted on the inherited listening socket;
    // messages with descriptors (memory regions, kick and call eventfds).
    (syscall!(SYS_accept4), Check::Any),
    (syscall!(SYS_recvmsg), Check::Any),
    (syscall!(SYS_sendmsg), Check::Any),
    (syscall!(SYS_shutdown), Check::Any),
    (syscall!(SYS_close), Check::Any),
    // Event loops, eventfds (kicks, calls, completions) and stderr.
    (syscall!(SYS_read), Check::Any),
    (syscall!(SYS_write), Check::Any),
    (syscall!(SYS_epoll_create1), Check::Any),
    (syscall!(SYS_epoll_ctl), Check::Any),
    (syscall!(SYS_eventfd2), Check::Any),
    // The timer of a device waiting to resume after a restart (vhost_user/dispatch.rs).
    (syscall!(SYS_timerfd_create), Check::Any),
    (syscall!(SYS_timerfd_settime), Check::Any),
    // Descriptors: duplicated (EventFd::try_clone), a memory region's file
    // examined (its size and seals, see memory.rs; `statx` and `newfstatat`
    // of a descriptor are allowed by REFUSED_WITH_ERROR), and checked open
    // before it is closed (F_GETFD: the standard library does so in builds
    // with debug assertions).
    (
        syscall!(SYS_fcntl),
        Check::OneOf(
            Arg::Int(1),
            &[
                libc::F_DUPFD_CLOEXEC as u64,
                libc::F_GET_SEALS as u64,
                libc::F_GETFD as u64,
            ],
        ),
    ),
    (syscall!(SYS_fstat), Check::Any),
    // Objects as dma-bufs (dmabuf.rs): made by the udmabuf device opened
    // before the sandbox, and polled for other drivers' fences.
    (
        syscall!(SYS_ioctl),
        Check::OneOf(Arg::Int(1), &[crate::dmabuf::UDMABUF_CREATE_LIST]),
    ),
    (syscall!(SYS_ppoll), Check::Any),
    // Time (clock_gettime when the vDSO falls back to the kernel), sleeps
    // (retry pauses), HashMap keys, and the end.
    (syscall!(SYS_clock_gettime), Check::Any),
    (syscall!(SYS_clock_nanosleep), Check::Any),
    // Older glibc sleeps with nanosleep.
    (syscall!(SYS_nanosleep), Check::Any),
    // A timed wait (a condition variable's, a sleep) that a stop and
    // continue interrupted (SIGSTOP/SIGCONT, a debugger, the cgroup freezer)
    // is resumed with restart_syscall.
    (syscall!(SYS_restart_syscall), Check::Any),
    (syscall!(SYS_getrandom), Check::Any),
    (syscall!(SYS_exit_group), Check::Any),
    #[cfg(target_arch = "x86_64")]
    (syscall!(SYS_epoll_wait), Check::Any),
    #[cfg(not(target_arch = "x86_64"))]
    (syscall!(SYS_epoll_pwait), Check::Any),
];

/// Calls refused with an error rather than SIGSYS when their arguments
/// match the check, because the code that makes them copes with the refusal
/// (see the module's documentation); with other arguments they are allowed.
const REFUSED_WITH_ERROR: &[(Syscall, Check, i32)] = &[
    // glibc starts threads with clone3 first, and with clone on ENOSYS.
    (syscall!(SYS_clone3), Check::Any, libc::ENOSYS),
    // The vhost crate checks a socket a VMM hands over (GPU_SET_SOCKET,
    // which this device refuses anyway) with getsockopt: the VMM then gets
    // an error reply, and its bad message costs no process.
    (syscall!(SYS_getsockopt), Check::Any, libc::EACCES),
    // Paths, as Landlock refuses them (which it cannot for stat, readlink
    // and getcwd): glibc's malloc probes /proc/sys/vm/overcommit_memory
    // once, Rust's backtrace printer (RUST_BACKTRACE) the working directory,
    // the binary and its debug files; both carry on without.
    (syscall!(SYS_openat), Check::Any, libc::EACCES),
    (syscall!(SYS_openat2), Check::Any, libc::EACCES),
    (syscall!(SYS_getcwd), Check::Any, libc::EACCES),
    (syscall!(SYS_readlinkat), Check::Any, libc::EACCES),
    (
        syscall!(SYS_statx),
        Check::ByPath {
            dir: Arg::Int(0),
            flags: Arg::Int(2),
        },
        libc::EACCES,
    ),
    (
        syscall!(SYS_newfstatat),
        Check::ByPath {
            dir: Arg::Int(0),
            flags: Arg::Int(3),
        },
        libc::EACCES,
    ),
    #[cfg(target_arch = "x86_64")]
    (syscall!(SYS_open), Check::Any, libc::EACCES),
    #[cfg(target_arch = "x86_64")]
    (syscall!(SYS_readlink), Check::Any, libc::EACCES),
];

/// Refused calls an attacker (or a forgotten code path) would most likely
/// make, named in the violation message.
const NAMED_REFUSALS: &[Syscall] = &[
    syscall!(SYS_execve),
    syscall!(SYS_execveat),
    syscall!(SYS_socket),
    syscall!(SYS_socketpair),
    syscall!(SYS_connect),
    syscall!(SYS_bind),
    syscall!(SYS_listen),
    syscall!(SYS_ptrace),
    syscall!(SYS_kill),
    syscall!(SYS_unlinkat),
    syscall!(SYS_lseek),
    syscall!(SYS_memfd_create),
    syscall!(SYS_setpriority),
    syscall!(SYS_prlimit64),
    syscall!(SYS_process_vm_readv),
    syscall!(SYS_process_vm_writev),
    #[cfg(target_arch = "x86_64")]
    syscall!(SYS_unlink),
    #[cfg(target_arch = "x86_64")]
    syscall!(SYS_fork),
    #[cfg(target_arch = "x86_64")]
    syscall!(SYS_poll),
];

/// The rules of the allow-list filter: every [`ALLOWED`] call with its
/// checks, and the [`REFUSED_WITH_ERROR`] calls with any arguments (their
/// own filter turns those it refuses into the error, which takes
/// precedence).
fn allow_list(
    pid: u32,
    driver_calls: DriverCalls,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, BackendError> {
    let mut rules = BTreeMap::new();
    for (syscall, check) in ALLOWED {
        rules.insert(syscall.number, argument_rules(*check, pid)?);
    }
    if driver_calls.device_ioctls {
        rules.insert(syscall!(SYS_ioctl).number, Vec::new());
    }
    if driver_calls.lseek {
        // To a dma-buf's end, for its size, or back to its start.
        let to_offset_0 = Check::OneOf(Arg::Long(1), &[0]);
        rules.insert(
            syscall!(SYS_lseek).number,
            argument_rules(to_offset_0, pid)?,
        );
    }
    for (syscall, _, _) in REFUSED_WITH_ERROR {
        rules.insert(syscall.number, Vec::new());
    }
    Ok(rules)
}

/// The rules (any one of which allows the call) for `check`; none for any
/// arguments.
fn argument_rules(check: Check, pid: u32) -> Result<Vec<SeccompRule>, BackendError> {
    let rule = |conditions| SeccompRule::new(conditions);
    match check {
        Check::Any => Ok(Vec::new()),
        Check::OneOf(arg, values) => values
            .iter()
            .map(|value| rule(vec![arg.condition(SeccompCmpOp::Eq, *value)?]))
            .collect(),
        Check::Clear(arg, mask) => Ok(vec![rule(vec![
            arg.condition(SeccompCmpOp::MaskedEq(mask), 0)?
        ])?]),
        Check::OwnProcess(arg) => Ok(vec![rule(vec![
            arg.condition(SeccompCmpOp::Eq, u64::from(pid))?
        ])?]),
        Check::ByPath { dir, flags } => {
            let empty_path = libc::AT_EMPTY_PATH as u64;
            Ok(vec![
                rule(vec![dir.condition(SeccompCmpOp::Eq, AT_FDCWD_ARG)?])?,
                rule(vec![flags.condition(SeccompCmpOp::MaskedEq(empty_path), 0)?])?,
            ])
        }
    }
}

/// The compiled filters, in the order of installation: one per error of
/// [`REFUSED_WITH_ERROR`], then the allow-list (anything else traps), last
/// because it refuses the `prctl` and `seccomp` calls that install a filter.
fn filters(pid: u32, driver_calls: DriverCalls) -> Result<Vec<BpfProgram>, BackendError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)?;
    let mut errors: BTreeMap<i32, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
    for (syscall, check, errno) in REFUSED_WITH_ERROR {
        errors
            .entry(*errno)
            .or_default()
            .insert(syscall.number, argument_rules(*check, pid)?);
    }
    let refuse = errors.into_iter().map(|(errno, rules)| {
        let action = SeccompAction::Errno(errno.unsigned_abs());
        SeccompFilter::new(rules, SeccompAction::Allow, action, arch)
    });
    let allow = SeccompFilter::new(
        allow_list(pid, driver_calls)?,
        SeccompAction::Trap,
        SeccompAction::Allow,
        arch,
    );
    refuse
        .chain(std::iter::once(allow))
        .map(|filter| BpfProgram::try_from(filter?))
        .collect()
}

/// Installs the SIGSYS handler, then the filters on every thread; returns
/// the number of system calls allowed (some with some arguments only).
fn install_seccomp(driver_calls: DriverCalls) -> Result<usize, SandboxError> {
    let programs = filters(std::process::id(), driver_calls)?;
    install_sigsys_handler().map_err(SandboxError::SigsysHandler)?;
    for program in &programs {
        seccompiler::apply_filter_all_threads(program)?;
    }
    let allowed_sometimes = REFUSED_WITH_ERROR
        .iter()
        .filter(|(_, check, _)| !matches!(check, Check::Any));
    Ok(ALLOWED.len() + allowed_sometimes.count())
}

fn install_sigsys_handler() -> io::Result<()> {
    // SAFETY: an all-zero sigaction (no flags, empty mask) is a valid value,
    // completed below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = report_violation as *const () as libc::sighandler_t;
    // The handler runs once: the SIGSYS it raises then takes the default
    // action and ends the process.
    action.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND;
    // SAFETY: `action` is valid, its handler is async-signal-safe (it only
    // reads its arguments and static tables, and calls prctl, write, raise).
    check(unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) })
}

/// The part of `siginfo_t` that the kernel fills for a seccomp SIGSYS
/// (`_sigsys` in `struct siginfo`, 64-bit Linux).
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _padding: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// `si_code` of a SIGSYS raised by a seccomp filter.
const SYS_SECCOMP: libc::c_int = 1;

/// The SIGSYS handler: writes the blocked system call to stderr and ends
/// the process with SIGSYS. Async-signal-safe: no allocation, no lock.
extern "C" fn report_violation(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    // SAFETY: the kernel hands a SA_SIGINFO handler a valid siginfo_t,
    // whose SIGSYS fields SigsysInfo lays out.
    let info = unsafe { &*info.cast::<SigsysInfo>() };
    let mut thread = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL included, to `thread`.
    unsafe { libc::prctl(libc::PR_GET_NAME, thread.as_mut_ptr()) };
    let thread_len = thread.iter().position(|&b| b == 0).unwrap_or(thread.len());
    let syscall = (info.code == SYS_SECCOMP).then_some(i64::from(info.syscall));
    let line = violation_line(syscall, &thread[..thread_len]);
    let bytes = line.as_bytes();
    // SAFETY: writes the initialised bytes of `line` to stderr; a failure
    // is ignored (nothing better can be done).
    unsafe { libc::write(libc::STDERR_FILENO, bytes.as_ptr().cast(), bytes.len()) };
    // SAFETY: raise is async-signal-safe. SIGSYS is blocked until this
    // handler returns, and its action is the default again (SA_RESETHAND):
    // it ends the process then, before the refused call's caller resumes.
    unsafe { libc::raise(libc::SIGSYS) };
}

/// The message of a violation by `thread`: system call `syscall` (`None`:
/// a SIGSYS not from seccomp).
fn violation_line(syscall: Option<i64>, thread: &[u8]) -> Line {
    let mut line = Line::default();
    line.push(b"vhost-user-accel: seccomp: thread ");
    line.push(thread);
    let Some(number) = syscall else {
        line.push(b" received SIGSYS from outside the sandbox; the process ends (SIGSYS)\n");
        return line;
    };
    line.push(b" made system call ");
    line.push_number(number);
    if let Some((known, _)) = ALLOWED.iter().find(|(s, _)| s.number == number) {
        line.push(b" (");
        line.push(known.name().as_bytes());
        line.push(b") with arguments the sandbox refuses");
    } else {
        if let Some(known) = NAMED_REFUSALS.iter().find(|s| s.number == number) {
            line.push(b" (");
            line.push(known.name().as_bytes());
            line.push(b")");
        }
        line.push(b", which the sandbox refuses");
    }
    line.push(b"; the process ends (SIGSYS)\n");
    line
}

/// A line of text built without allocating, truncated at its capacity.
struct Line {
    bytes: [u8; 192],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Line {
            bytes: [0; 192],
            len: 0,
        }
    }
}

impl Line {
    fn push(&mut self, text: &[u8]) {
        let free = &mut self.bytes[self.len..];
        let count = text.len().min(free.len());
        free[..count].copy_from_slice(&text[..count]);
        self.len += count;
    }

    fn push_number(&mut self, number: i64) {
        if number < 0 {
            self.push(b"-");
        }
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        let mut rest = number.unsigned_abs();
        loop {
            start -= 1;
            // A remainder of 10 is below 256.
            digits[start] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        self.push(&digits[start..]);
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_user_is_a_name_or_uid_and_gid_never_root() {
        let numeric: UserSpec = "1000:1001".parse().unwrap();
        assert_eq!((numeric.uid, numeric.gid), (1000, 1001));
        assert_eq!(numeric.to_string(), "1000:1001");
        for bad in ["", "x:1", "1:", ":1", "1:2:3", "-1:5"] {
            assert!(
                matches!(bad.parse::<UserSpec>(), Err(SandboxError::InvalidUser(_))),
                "{bad:?}"
            );
        }
        for root in ["root", "0:0", "0:1000", "1000:0"] {
            assert!(
                matches!(
                    root.parse::<UserSpec>(),
                    Err(SandboxError::PrivilegedUser(_))
                ),
                "{root:?}"
            );
        }
        let unknown = "no-such-user-vhost-user-accel".parse::<UserSpec>();
        assert!(matches!(unknown, Err(SandboxError::UnknownUser(_))));
    }

    #[test]
    fn a_user_name_is_resolved_with_its_primary_group() {
        // Debian and most distributions have `nobody` as 65534:65534.
        let nobody: UserSpec = "nobody".parse().unwrap();
        assert_eq!((nobody.uid, nobody.gid), (65534, 65534));
        assert_eq!(nobody.to_string(), "nobody (65534:65534)");
    }

    #[test]
    fn violation_lines_name_the_call_and_say_why() {
        let text = |number, thread: &[u8]| {
            String::from_utf8(violation_line(number, thread).as_bytes().to_vec()).unwrap()
        };
        assert_eq!(
            text(Some(libc::SYS_execve), b"vring_worker"),
            format!(
                "vhost-user-accel: seccomp: thread vring_worker made system call {} (execve), \
                 which the sandbox refuses; the process ends (SIGSYS)\n",
                libc::SYS_execve
            )
        );
        assert!(text(Some(libc::SYS_clone), b"t")
            .contains("(clone) with arguments the sandbox refuses;"));
        assert!(text(Some(9999), b"t").contains("system call 9999, which"));
        assert!(text(Some(-1), b"t").contains("system call -1, which"));
        assert!(text(None, b"t").contains("received SIGSYS from outside"));
    }

    #[test]
    fn a_line_is_truncated_not_overrun() {
        let mut line = Line::default();
        line.push(&[b'x'; 300]);
        line.push_number(i64::MIN);
        assert_eq!(line.as_bytes(), &[b'x'; 192][..]);
    }

    #[test]
    fn the_filters_compile_and_every_call_is_listed_once() {
        let none = DriverCalls::default();
        let all = DriverCalls {
            device_ioctls: true,
            lseek: true,
        };
        assert_eq!(filters(1, none).unwrap().len(), 3);
        assert_eq!(filters(1, all).unwrap().len(), 3);
        let (ioctl, lseek) = (syscall!(SYS_ioctl).number, syscall!(SYS_lseek).number);
        let allowed = |calls| allow_list(1, calls).unwrap();
        let (without, with) = (allowed(none), allowed(all));
        assert!(!without.contains_key(&lseek) && !with[&lseek].is_empty());
        // UDMABUF_CREATE_LIST alone, or every ioctl (no condition).
        assert!(!without[&ioctl].is_empty() && with[&ioctl].is_empty());
        let mut numbers: Vec<i64> = ALLOWED
            .iter()
            .map(|(s, _)| s.number)
            .chain(REFUSED_WITH_ERROR.iter().map(|(s, _, _)| s.number))
            .chain(NAMED_REFUSALS.iter().map(|s| s.number))
            .collect();
        let count = numbers.len();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), count, "a system call is listed twice");
    }
}
