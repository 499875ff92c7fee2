// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The tenant process sandbox in force (`vhost_user_accel::sandbox`).
//!
//! A sandbox cannot be lifted, so each case re-executes this binary as a
//! child (selected by [`CHILD_ENV`]) that applies the sandbox, or one layer
//! of it, and then tries something; the parent checks how the child ended.
//! Every child first starts a thread, as the engine's workers run before a
//! tenant process applies its sandbox, and checks that thread too. Each case
//! fails when the layer it is about is missing: with
//! `SANDBOX_TEST_UNSANDBOXED=1` the children apply nothing, and every case
//! must fail. A case that cannot run here (not root, no Landlock) says
//! SKIPPED, loudly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use accel_driver::{Buffer, Device, DmaMemory, Request, VhostUserTransport, DEFAULT_FEATURES};
use virtio_accel_spec::Op;

/// Environment variable selecting the child's case.
const CHILD_ENV: &str = "SANDBOX_TEST_CHILD";
/// Environment variable that makes children skip the sandbox (to see every
/// case fail without it).
const UNSANDBOXED_ENV: &str = "SANDBOX_TEST_UNSANDBOXED";
/// Environment variable naming the socket of the daemon child.
const SOCKET_ENV: &str = "SANDBOX_TEST_SOCKET";
/// Exit status of a child whose case cannot run on this machine.
const SKIP: i32 = 77;

/// A parent-side case: its name and its check.
type Case = (&'static str, fn() -> Outcome);

/// How a case went, when it did not panic.
enum Outcome {
    Passed,
    Skipped(String),
}

const CASES: &[Case] = &[
    ("seccomp_traps_execve_and_names_it", parent::execve),
    ("seccomp_traps_inet_sockets", parent::inet_socket),
    ("seccomp_refuses_clone_without_thread_flags", parent::fork),
    (
        "seccomp_refuses_executable_mappings",
        parent::executable_mapping,
    ),
    (
        "seccomp_covers_threads_started_before",
        parent::early_thread,
    ),
    ("seccomp_refuses_opening_paths_with_eacces", parent::open),
    ("landlock_alone_refuses_paths_and_tcp", parent::landlock),
    ("status_shows_no_new_privs_and_seccomp", parent::status),
    ("what_a_tenant_does_still_works", parent::allowed),
    ("user_switch_is_permanent_on_every_thread", parent::user),
    ("user_switch_with_the_whole_sandbox", parent::user_full),
    ("the_daemon_serves_in_the_sandbox", parent::daemon),
];

fn main() -> ExitCode {
    if let Ok(case) = std::env::var(CHILD_ENV) {
        child::run(&case);
    }
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let selected = CASES.iter().filter(|(name, _)| {
        filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
    });
    // A failed check prints its message under its case, without a backtrace.
    std::panic::set_hook(Box::new(|info| println!("    {info}")));
    let mut failed = Vec::new();
    let mut count = 0;
    for (name, check) in selected {
        count += 1;
        match std::panic::catch_unwind(check) {
            Ok(Outcome::Passed) => println!("test {name} ... ok"),
            Ok(Outcome::Skipped(why)) => {
                println!("test {name} ... SKIPPED ({why}): NOT TESTED HERE")
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    if failed.is_empty() {
        println!("\ntest result: ok. {count} cases");
        ExitCode::SUCCESS
    } else {
        println!(
            "\ntest result: FAILED. {} of {count} cases: {failed:?}",
            failed.len()
        );
        ExitCode::FAILURE
    }
}

/// Runs `case` in a child process.
fn run_child(case: &str) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, case)
        .output()
        .unwrap()
}

/// The child's stdout and stderr, for assertion messages.
fn describe(output: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Checks that the child ended well, or skipped with a reason.
fn passed(output: &Output) -> Outcome {
    if output.status.code() == Some(SKIP) {
        return Outcome::Skipped(String::from_utf8_lossy(&output.stdout).trim().to_owned());
    }
    assert!(output.status.success(), "{}", describe(output));
    passed_lines(output);
    Outcome::Passed
}

/// Shows what the child printed (the sandbox it applied).
fn passed_lines(output: &Output) {
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        println!("    child: {line}");
    }
}

/// Checks that the child was killed by SIGSYS after reporting `expected`.
fn trapped(output: &Output, expected: &str) -> Outcome {
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGSYS),
        "{}",
        describe(output)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(expected) && stderr.contains("the process ends (SIGSYS)"),
        "stderr lacks {expected:?}: {}",
        describe(output)
    );
    Outcome::Passed
}

mod parent {
    use super::*;

    pub fn execve() -> Outcome {
        let expected = format!(
            "made system call {} (execve), which the sandbox refuses",
            libc::SYS_execve
        );
        trapped(&run_child("execve"), &expected)
    }

    pub fn inet_socket() -> Outcome {
        let expected = format!("made system call {} (socket), which", libc::SYS_socket);
        trapped(&run_child("inet-socket"), &expected)
    }

    pub fn fork() -> Outcome {
        let expected = format!(
            "made system call {} (clone) with arguments the sandbox refuses",
            libc::SYS_clone
        );
        trapped(&run_child("fork"), &expected)
    }

    pub fn executable_mapping() -> Outcome {
        let expected = format!(
            "made system call {} (mmap) with arguments the sandbox refuses",
            libc::SYS_mmap
        );
        trapped(&run_child("executable-mapping"), &expected)
    }

    pub fn early_thread() -> Outcome {
        let expected = format!(
            "thread early made system call {} (socket)",
            libc::SYS_socket
        );
        trapped(&run_child("early-thread-socket"), &expected)
    }

    pub fn open() -> Outcome {
        passed(&run_child("open"))
    }

    pub fn landlock() -> Outcome {
        passed(&run_child("landlock"))
    }

    pub fn status() -> Outcome {
        passed(&run_child("status"))
    }

    pub fn allowed() -> Outcome {
        passed(&run_child("allowed"))
    }

    pub fn user() -> Outcome {
        passed(&run_child("user"))
    }

    pub fn user_full() -> Outcome {
        passed(&run_child("user-full"))
    }

    /// Connects as a VM would and checks a CRC32C job end to end.
    fn crc_through(socket: &Path) {
        let memory = DmaMemory::new(4 << 20).unwrap();
        let transport = VhostUserTransport::connect(socket, &memory).unwrap();
        let device = Device::open(transport, DEFAULT_FEATURES).unwrap();
        let data = memory.alloc(9).unwrap();
        memory.write(&data, 0, b"123456789").unwrap();
        let completion = device
            .run(0, &Request::new(Op::Crc32c).input(Buffer::direct(&data)))
            .unwrap()
            .check()
            .unwrap();
        assert_eq!(completion.result_u32(), 0xe306_9283);
        device.into_transport().disconnect();
    }

    /// The daemon's server, sandboxed once bound (its engine running), serves
    /// VMs that connect, disconnect and come back.
    pub fn daemon() -> Outcome {
        let socket = std::env::temp_dir().join(format!(
            "vhost-user-accel-sandbox-{}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&socket);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(CHILD_ENV, "daemon")
            .env(SOCKET_ENV, &socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let served = std::panic::catch_unwind(|| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !socket.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            for _ in 0..3 {
                crc_through(&socket);
            }
        });
        let running = child.try_wait().unwrap().is_none();
        let _ = child.kill();
        let output = child.wait_with_output().unwrap();
        let _ = std::fs::remove_file(&socket);
        assert!(served.is_ok() && running, "{}", describe(&output));
        let sandboxed = String::from_utf8_lossy(&output.stdout).contains("system calls allowed");
        let violated = String::from_utf8_lossy(&output.stderr).contains("seccomp");
        assert!(sandboxed && !violated, "{}", describe(&output));
        passed_lines(&output);
        Outcome::Passed
    }
}

/// The children: each applies a sandbox and tries something; a failed
/// assertion exits with status 101 (a panic), a case that cannot run here
/// with [`SKIP`].
mod child {
    use std::fs::File;
    use std::io::{ErrorKind, Read};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::sync::mpsc;
    use std::thread;

    use vhost_user_accel::sandbox::{
        self, LandlockOutcome, SandboxConfig, SandboxReport, UserOutcome, UserSpec,
    };

    use vhost_user_accel::{Config, Server, SocketSource, TenantConfig};

    use super::{SKIP, SOCKET_ENV, UNSANDBOXED_ENV};

    pub fn run(case: &str) -> ! {
        let early = Early::start();
        match case {
            "execve" => execve(),
            "inet-socket" => inet_socket(),
            "fork" => fork(),
            "executable-mapping" => executable_mapping(),
            "early-thread-socket" => early_thread_socket(&early),
            "open" => open(),
            "landlock" => landlock(&early),
            "status" => status(&early),
            "allowed" => allowed(),
            "user" => user(&early),
            "user-full" => user_full(),
            "daemon" => daemon(),
            _ => panic!("unknown case {case}"),
        }
        std::process::exit(0)
    }

    /// Applies `config`, unless the run is unsandboxed.
    fn apply(config: &SandboxConfig) -> SandboxReport {
        if std::env::var_os(UNSANDBOXED_ENV).is_some() {
            return SandboxReport {
                user: UserOutcome::NotConfigured,
                landlock: LandlockOutcome::Disabled,
                seccomp_allowed: None,
            };
        }
        let report = sandbox::apply(config)
            .unwrap_or_else(|e| panic!("apply: {}", vhost_user_accel::error_chain(&e)));
        println!("sandbox: {report}");
        report
    }

    fn full() -> SandboxReport {
        apply(&SandboxConfig::new(None))
    }

    /// A thread started before the sandbox, which runs jobs on request.
    struct Early {
        jobs: mpsc::Sender<Box<dyn FnOnce() + Send>>,
        tid: libc::pid_t,
    }

    impl Early {
        fn start() -> Early {
            let (jobs, queue) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
            let (tid_sender, tid) = mpsc::channel();
            thread::Builder::new()
                .name(String::from("early"))
                .spawn(move || {
                    // SAFETY: gettid has no preconditions.
                    tid_sender.send(unsafe { libc::gettid() }).unwrap();
                    for job in queue {
                        job();
                    }
                })
                .unwrap();
            Early {
                jobs,
                tid: tid.recv().unwrap(),
            }
        }

        fn run<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> T {
            let (sender, result) = mpsc::channel();
            self.jobs
                .send(Box::new(move || sender.send(job()).unwrap()))
                .unwrap();
            result.recv().unwrap()
        }
    }

    fn execve() {
        full();
        let program = c"/bin/true";
        let argv = [program.as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null()];
        // SAFETY: NUL-terminated path and argument and environment arrays.
        unsafe { libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        panic!(
            "execve was not refused: {}",
            std::io::Error::last_os_error()
        );
    }

    fn inet_socket() {
        full();
        // SAFETY: creates a socket, closed by the exit.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        panic!("socket(AF_INET) was not trapped: {fd}");
    }

    fn fork() {
        full();
        // SAFETY: the child, if any, only exits.
        match unsafe { libc::fork() } {
            // SAFETY: _exit is async-signal-safe.
            0 => unsafe { libc::_exit(0) },
            pid => panic!("fork was not trapped: {pid}"),
        }
    }

    fn executable_mapping() {
        full();
        // SAFETY: maps one new anonymous page, left mapped until the exit.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        panic!("an executable mapping was not trapped: {page:?}");
    }

    fn early_thread_socket(early: &Early) {
        full();
        // SAFETY: creates a socket, closed by the exit.
        let fd = early.run(|| unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) });
        panic!("socket(AF_INET) on a thread started before was not trapped: {fd}");
    }

    fn assert_refused<T: std::fmt::Debug>(what: &str, result: std::io::Result<T>) {
        match result {
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {}
            other => panic!("{what}: expected EACCES, got {other:?}"),
        }
    }

    /// seccomp alone refuses to open paths, quietly.
    fn open() {
        File::open("/etc/passwd").unwrap();
        apply(&SandboxConfig {
            landlock: false,
            ..SandboxConfig::new(None)
        });
        assert_refused("open /etc/passwd", File::open("/etc/passwd"));
        assert_refused(
            "create in /tmp",
            File::create(std::env::temp_dir().join("x")),
        );
    }

    /// Landlock alone, without seccomp: no path, no TCP connection; on the
    /// calling thread, a thread it starts, and (with ABI 8) the early one.
    fn landlock(early: &Early) {
        let tcp = || std::net::TcpStream::connect(("127.0.0.1", 9)).map(drop);
        assert!(
            File::open("/etc/passwd").is_ok(),
            "/etc/passwd is not readable"
        );
        assert_eq!(tcp().unwrap_err().kind(), ErrorKind::ConnectionRefused);
        let report = apply(&SandboxConfig {
            seccomp: false,
            ..SandboxConfig::new(None)
        });
        let all_threads = match report.landlock {
            LandlockOutcome::Enforced {
                complete,
                all_threads,
                ..
            } => {
                assert!(complete, "{report}");
                all_threads
            }
            LandlockOutcome::Unsupported(why) => {
                println!("Landlock is not supported by this kernel: {why}");
                std::process::exit(SKIP);
            }
            LandlockOutcome::Disabled => panic!("Landlock was not applied: {report}"),
        };
        assert_refused("open /etc/passwd", File::open("/etc/passwd"));
        assert_refused("read_dir /", std::fs::read_dir("/"));
        assert_refused(
            "create in /tmp",
            File::create(std::env::temp_dir().join("x")),
        );
        assert_refused("TCP connect", tcp());
        let later = thread::spawn(|| File::open("/etc/passwd")).join().unwrap();
        assert_refused("open on a thread started after", later);
        let before = early.run(|| File::open("/etc/passwd").map(drop));
        if all_threads {
            assert_refused("open on a thread started before", before);
        } else {
            assert!(
                before.is_ok(),
                "the report says Landlock is not on every thread"
            );
            println!("Landlock covers only the threads started after apply on this kernel");
        }
    }

    /// Reads a file opened before the sandbox (no `lseek`, `statx`).
    fn read_opened(mut file: &File) -> String {
        let mut text = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match file.read(&mut chunk).unwrap() {
                0 => break,
                n => text.extend_from_slice(&chunk[..n]),
            }
        }
        String::from_utf8(text).unwrap()
    }

    fn status(early: &Early) {
        let own = File::open("/proc/thread-self/status").unwrap();
        let early_status = File::open(format!("/proc/self/task/{}/status", early.tid)).unwrap();
        full();
        for (thread, file) in [("main", &own), ("early", &early_status)] {
            let text = read_opened(file);
            for line in ["NoNewPrivs:\t1", "Seccomp:\t2"] {
                assert!(
                    text.contains(line),
                    "{thread} thread lacks {line:?}:\n{text}"
                );
            }
        }
    }

    /// A descriptor passed with SCM_RIGHTS over `socket`.
    fn send_fd(socket: RawFd, fd: RawFd) {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        // 8-byte aligned room for one descriptor's control message.
        let mut control = [0u64; 4];
        // SAFETY: an all-zero msghdr is valid; its pointers are set below.
        let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        message.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
        // SAFETY: the control buffer holds one header and one descriptor.
        unsafe {
            let header = libc::CMSG_FIRSTHDR(&message);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(4) as usize;
            libc::CMSG_DATA(header).cast::<RawFd>().write_unaligned(fd);
        }
        // SAFETY: the message and its buffers are valid for the call.
        assert_eq!(unsafe { libc::sendmsg(socket, &message, 0) }, 1);
    }

    /// The descriptor received by [`send_fd`].
    fn receive_fd(socket: RawFd) -> OwnedFd {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut control = [0u64; 4];
        // SAFETY: as in send_fd.
        let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: the message and its buffers are valid for the call.
        let received = unsafe { libc::recvmsg(socket, &mut message, libc::MSG_CMSG_CLOEXEC) };
        assert_eq!(received, 1);
        // SAFETY: the kernel wrote one SCM_RIGHTS header and descriptor,
        // which from now on only the returned OwnedFd owns.
        unsafe {
            let header = libc::CMSG_FIRSTHDR(&message);
            assert_eq!((*header).cmsg_type, libc::SCM_RIGHTS);
            OwnedFd::from_raw_fd(libc::CMSG_DATA(header).cast::<RawFd>().read_unaligned())
        }
    }

    /// What a tenant process does after the sandbox: threads, descriptors
    /// received over a unix socket, guest memory mapped from a sealed
    /// memfd, eventfds in an epoll, allocations large and small, sleeps,
    /// a caught panic, logging, and a normal exit.
    fn allowed() {
        const SIZE: usize = 1 << 20;
        // The VMM's side, made before: guest memory and the connection.
        // SAFETY: creates a memfd, owned below.
        let memfd = unsafe { libc::memfd_create(c"guest".as_ptr(), libc::MFD_ALLOW_SEALING) };
        // SAFETY: a new descriptor that nothing else owns.
        let memory = File::from(unsafe { OwnedFd::from_raw_fd(memfd) });
        memory.set_len(SIZE as u64).unwrap();
        // SAFETY: adds a seal to the memfd above.
        let sealed = unsafe { libc::fcntl(memfd, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
        assert_eq!(sealed, 0);
        let (vmm, daemon) = std::os::unix::net::UnixStream::pair().unwrap();
        let report = full();
        assert!(report.seccomp_allowed.is_some(), "{report}");

        let sender = thread::Builder::new()
            .name(String::from("vmm"))
            .spawn(move || send_fd(vmm.as_raw_fd(), memory.as_raw_fd()))
            .unwrap();
        let received = File::from(receive_fd(daemon.as_raw_fd()));
        sender.join().unwrap();
        assert_eq!(received.metadata().unwrap().len(), SIZE as u64);
        // SAFETY: reads the seals of a descriptor this function owns.
        let seals = unsafe { libc::fcntl(received.as_raw_fd(), libc::F_GET_SEALS) };
        assert_eq!(seals & libc::F_SEAL_SHRINK, libc::F_SEAL_SHRINK);
        let protection = libc::PROT_READ | libc::PROT_WRITE;
        // SAFETY: maps the whole memfd, shared; unmapped below.
        let guest = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SIZE,
                protection,
                libc::MAP_SHARED,
                received.as_raw_fd(),
                0,
            )
        };
        assert_ne!(guest, libc::MAP_FAILED);
        // SAFETY: the mapping is SIZE bytes, readable and writable.
        let bytes = unsafe { std::slice::from_raw_parts_mut(guest.cast::<u8>(), SIZE) };
        bytes[SIZE - 1] = 0x5a;
        assert_eq!(bytes[SIZE - 1], 0x5a);
        // SAFETY: unmaps the mapping above; `bytes` is not used after.
        assert_eq!(unsafe { libc::munmap(guest, SIZE) }, 0);

        let kick = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let call = kick.try_clone().unwrap();
        let epoll = vmm_sys_util::epoll::Epoll::new().unwrap();
        let event = vmm_sys_util::epoll::EpollEvent::new(vmm_sys_util::epoll::EventSet::IN, 7);
        epoll
            .ctl(
                vmm_sys_util::epoll::ControlOperation::Add,
                kick.as_raw_fd(),
                event,
            )
            .unwrap();
        let kicker = thread::spawn(move || call.write(3).unwrap());
        let mut events = [vmm_sys_util::epoll::EpollEvent::default(); 2];
        assert_eq!(epoll.wait(5000, &mut events).unwrap(), 1);
        assert_eq!(events[0].data(), 7);
        assert_eq!(kick.read().unwrap(), 3);
        kicker.join().unwrap();

        let workers: Vec<_> = (0..4)
            .map(|i| {
                thread::Builder::new()
                    .name(format!("worker-{i}"))
                    .spawn(move || {
                        let mut map = std::collections::HashMap::new();
                        map.insert(i, vec![i; 1 << 16]);
                        let mut big = vec![0u8; 32 << 20];
                        big.resize(80 << 20, 1);
                        thread::sleep(std::time::Duration::from_millis(1));
                        map.len() + big.len()
                    })
                    .unwrap()
            })
            .collect();
        for worker in workers {
            assert_eq!(worker.join().unwrap(), 1 + (80 << 20));
        }
        let panicked = std::panic::catch_unwind(|| panic!("a caught panic"));
        assert!(panicked.is_err());
        eprintln!("a log line after the sandbox");
    }

    fn nobody() -> UserSpec {
        "nobody".parse().unwrap()
    }

    /// Skips unless the process runs as root.
    fn require_root() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("the --user switch needs root");
            std::process::exit(SKIP);
        }
    }

    fn ids() -> [libc::uid_t; 6] {
        let mut ids = [0; 6];
        let [ruid, euid, suid, rgid, egid, sgid] = &mut ids;
        // SAFETY: six valid out pointers.
        unsafe {
            libc::getresuid(ruid, euid, suid);
            libc::getresgid(rgid, egid, sgid);
        }
        ids
    }

    /// The user alone: every ID of every thread, no supplementary group,
    /// no way back.
    fn user(early: &Early) {
        require_root();
        let nobody = nobody();
        let report = apply(&SandboxConfig {
            landlock: false,
            seccomp: false,
            ..SandboxConfig::new(Some(nobody.clone()))
        });
        assert_eq!(report.user, UserOutcome::Switched(nobody.clone()));
        let expected = [
            nobody.uid, nobody.uid, nobody.uid, nobody.gid, nobody.gid, nobody.gid,
        ];
        assert_eq!(ids(), expected);
        assert_eq!(early.run(ids), expected, "the early thread kept its IDs");
        let mut groups = [0 as libc::gid_t; 8];
        // SAFETY: `groups` has room for 8 entries.
        let count = unsafe { libc::getgroups(8, groups.as_mut_ptr()) };
        assert_eq!(&groups[..usize::try_from(count).unwrap()], &[nobody.gid]);
        // SAFETY: tries to become root again; must fail.
        assert_eq!(unsafe { libc::setuid(0) }, -1, "root regained");
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EPERM)
        );
        let regain = || {
            // SAFETY: as above, for the early thread.
            unsafe { libc::setuid(0) }
        };
        assert_eq!(early.run(regain), -1, "root regained");
    }

    /// The user with every other layer (the order matters: the switch
    /// comes before seccomp refuses it).
    fn user_full() {
        require_root();
        let nobody = nobody();
        let own = File::open("/proc/thread-self/status").unwrap();
        let report = apply(&SandboxConfig::new(Some(nobody.clone())));
        assert_eq!(report.user, UserOutcome::Switched(nobody.clone()));
        assert!(report.seccomp_allowed.is_some(), "{report}");
        // Real, effective, saved and file-system IDs.
        let uid = format!("\nUid:\t{0}\t{0}\t{0}\t{0}\n", nobody.uid);
        let text = read_opened(&own);
        assert!(text.contains(&uid), "not {uid:?}:\n{text}");
        assert_refused("open /etc/passwd", File::open("/etc/passwd"));
    }

    /// A one-tenant daemon on the socket of [`SOCKET_ENV`], sandboxed
    /// between binding (the engine's threads running) and serving.
    fn daemon() {
        let socket = std::env::var_os(SOCKET_ENV).unwrap();
        let tenant = TenantConfig::new("0", SocketSource::Path(socket.into()));
        // The default engine priority: the workers have lowered theirs by
        // the time `bind` returns, before the sandbox refuses `setpriority`.
        let config = Config::with_tenants(vec![tenant]);
        let server = Server::bind(config)
            .unwrap_or_else(|e| panic!("bind: {}", vhost_user_accel::error_chain(&e)));
        full();
        let stopped = server.serve_forever();
        panic!("the daemon stopped: {stopped:?}");
    }
}
