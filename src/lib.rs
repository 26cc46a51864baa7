//! rustshim: a containerd runtime v2 shim (`io.containerd.rustshim.v2`).
//!
//! The library holds the whole shim so unit tests (and the end-to-end tests' helpers) can drive
//! its parts through seams; `src/main.rs` only maps argv to an action.

pub mod bootstrap;
pub mod bundle;
pub mod call;
pub mod cgroups;
pub mod cli;
pub mod container;
pub mod error;
pub mod events;
pub mod idle;
pub mod logger;
pub mod mount;
pub mod options;
pub mod process;
pub mod protos;
pub mod reaper;
pub mod runtime;
pub mod server;
pub mod signals;
pub mod stdio;
pub mod supervisor;
pub mod task_service;
pub mod version;

/// A pid above the kernel's PID_MAX_LIMIT (4194304): no process ever has it. Tests use it (and
/// neighbours) for processes that must read as gone.
#[doc(hidden)]
pub const PID_NEVER_USED: u32 = 5_000_000;

/// Helpers for the unit tests.
#[cfg(test)]
pub(crate) mod testing {
    /// `SKIPPED: <test>: <reason>` straight to fd 2, named as libtest names the running test (its
    /// thread), like tests/common's print_skip: libtest would hide an eprintln! of a passing test,
    /// and scripts/test.sh counts these lines as skipped rather than passed.
    pub fn print_skip(reason: &str) {
        use std::io::Write as _;
        let current = std::thread::current();
        let name = current.name().unwrap_or("unknown test");
        let _ = writeln!(std::io::stderr(), "\nSKIPPED: {name}: {reason}");
    }
}
