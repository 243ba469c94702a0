//! Stacks for children that run before exec while the supervisor goes on
//! (`ExecPlan::spawn`): one per child in flight, reused.

use std::io;
use std::sync::Mutex;

/// Usable size: the pre-exec code needs a few KiB; pages never touched
/// cost nothing.
const SIZE: usize = 128 * 1024;
/// One page below the stack is left inaccessible: an overflow faults.
const GUARD: usize = 4096;
/// Stacks kept for reuse (500 instances starting at once need at most as
/// many children in flight as the exec rate lets pile up).
const KEEP: usize = 64;

static FREE: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// A stack mapping; back to the free list when dropped.
pub struct Stack {
    base: usize,
}

impl Stack {
    pub fn take() -> io::Result<Stack> {
        if let Some(base) = FREE.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(Stack { base });
        }
        // SAFETY: an anonymous private mapping we own.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                GUARD + SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the lowest page of our own mapping.
        unsafe { libc::mprotect(base, GUARD, libc::PROT_NONE) };
        Ok(Stack {
            base: base as usize,
        })
    }

    /// The initial stack pointer (stacks grow down; 16-byte aligned).
    pub fn top(&self) -> *mut libc::c_void {
        ((self.base + GUARD + SIZE) & !15) as *mut libc::c_void
    }

    /// The usable region, as clone3 takes it: lowest address and size
    /// (`low + size` is `top`).
    pub fn region(&self) -> (usize, usize) {
        (self.base + GUARD, SIZE)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let mut free = FREE.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < KEEP {
            free.push(self.base);
            return;
        }
        drop(free);
        // SAFETY: our mapping; no child uses it any more (see Child).
        unsafe { libc::munmap(self.base as *mut libc::c_void, GUARD + SIZE) };
    }
}
