//! `BPF_PROG_TEST_RUN` on a loaded XDP program: the kernel runs the program once on a frame we
//! hand it (with the real maps) and returns the XDP action, without any interface. aya 0.14
//! does not wrap this command, so it is one raw `bpf(2)` call here.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `BPF_PROG_TEST_RUN` in `enum bpf_cmd` (`linux/bpf.h`).
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The `test` member of `union bpf_attr` (`linux/bpf.h`), field for field. Fields the kernel
/// does not know must be zero, which `Default` guarantees.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

// The kernel's layout: 8-byte aligned pointers at offsets 16, 24, 48, 56; 80 bytes in all.
const _: () = assert!(std::mem::size_of::<TestRunAttr>() == 80);
const _: () = assert!(std::mem::offset_of!(TestRunAttr, data_in) == 16);
const _: () = assert!(std::mem::offset_of!(TestRunAttr, ctx_in) == 48);
const _: () = assert!(std::mem::offset_of!(TestRunAttr, flags) == 64);

/// Runs the XDP program `prog` once on `frame`; returns the XDP action it chose.
///
/// The kernel refuses frames shorter than an Ethernet header (14 bytes) or longer than a page
/// minus XDP head- and tailroom with `EINVAL`.
pub(crate) fn test_run(prog: BorrowedFd<'_>, frame: &[u8]) -> io::Result<u32> {
    test_run_repeat(prog, frame, 1).map(|(action, _)| action)
}

/// Runs `prog` on `frame` `repeat` times in a row in the kernel; returns the XDP action of the
/// last run and the kernel's measured average time per run in nanoseconds (what `bpftool prog
/// run ... repeat N` prints as "duration (average)").
pub(crate) fn test_run_repeat(
    prog: BorrowedFd<'_>,
    frame: &[u8],
    repeat: u32,
) -> io::Result<(u32, u32)> {
    let data_size_in = u32::try_from(frame.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
    let mut attr = TestRunAttr {
        prog_fd: u32::try_from(prog.as_raw_fd()).map_err(|_| io::ErrorKind::InvalidInput)?,
        data_size_in,
        data_in: frame.as_ptr() as u64,
        repeat: repeat.max(1),
        ..TestRunAttr::default()
    };
    // SAFETY: `attr` is a properly laid out, zero-padded `bpf_attr.test` (size and offsets are
    // asserted above) that lives across the call; the kernel reads `data_size_in` bytes from
    // `data_in`, which points into `frame`, borrowed for the whole call; `data_out` and
    // `ctx_in`/`ctx_out` are null with zero sizes, so the kernel writes only into `attr`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((attr.retval, attr.duration))
}
