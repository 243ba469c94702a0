//! System calls for a child between clone and exec, made without libc.
//!
//! A child made with `CLONE_VM` shares the supervisor's memory, and so its
//! thread-local storage: glibc's wrappers store a failure in `errno`, which
//! is the supervisor's own errno. While the supervisor runs on (no
//! `CLONE_VFORK`), a wrapper failing in the child could change the errno
//! the supervisor is about to read, or the other way round. These calls
//! return `-errno` in the result instead and touch no memory but their
//! arguments.

/// One system call: the result, or `-errno` on failure.
///
/// # Safety
/// The arguments must be valid for syscall `n` (pointers readable or
/// writable as the call requires).
#[inline(always)]
pub unsafe fn call(n: libc::c_long, a: [usize; 6]) -> isize {
    let ret: isize;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the Linux x86-64 syscall ABI; rcx and r11 are clobbered.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") n as isize => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: the Linux arm64 syscall ABI (x8 = number, x0..x5 = args).
    unsafe {
        std::arch::asm!(
            "svc 0",
            in("x8") n,
            inlateout("x0") a[0] as isize => ret,
            in("x1") a[1],
            in("x2") a[2],
            in("x3") a[3],
            in("x4") a[4],
            in("x5") a[5],
            options(nostack),
        );
    }
    ret
}

/// `call` with fewer arguments.
///
/// # Safety
/// As for [`call`].
#[inline(always)]
pub unsafe fn call3(n: libc::c_long, a0: usize, a1: usize, a2: usize) -> isize {
    // SAFETY: forwarded.
    unsafe { call(n, [a0, a1, a2, 0, 0, 0]) }
}

/// Ends the (child) process at once.
pub fn exit(code: i32) -> ! {
    loop {
        // SAFETY: exit_group(2) takes an int and does not return.
        unsafe { call3(libc::SYS_exit_group, code as usize, 0, 0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_and_errors_come_back_without_errno() {
        // SAFETY: getpid takes no arguments.
        let me = unsafe { call3(libc::SYS_getpid, 0, 0, 0) };
        assert_eq!(me as u32, std::process::id());
        // SAFETY: close(2) of a descriptor that is not open.
        let r = unsafe { call3(libc::SYS_close, 100_000, 0, 0) };
        assert_eq!(r, -(libc::EBADF as isize));
    }
}
