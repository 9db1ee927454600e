//! Process hardening applied first thing in `main`, before any key is read or file made.
//!
//! - umask 077: every file and directory this process creates (the SQLite database and its
//!   `-wal`/`-shm` files, which SQLite creates with the database's mode, TLS keys and
//!   certificates, backups, exports, key files) is owner-only whatever mode the code or a
//!   library asks for and whatever umask the caller had.
//! - no core dumps: `RLIMIT_CORE` 0 (soft and hard, so it cannot be raised again without
//!   privilege) and, on Linux, `PR_SET_DUMPABLE` 0 (no core file even where a core pattern
//!   pipes to a helper, and no ptrace attach or `/proc/<pid>/mem` read by other processes of
//!   the same user). The master key, key-encryption keys and cached data keys live in this
//!   process's memory; a dump file would hold them in the clear.
//!
//! Failures are reported on stderr and do not stop the process (a container may forbid
//! `prctl`); memory can still be swapped, which is the operator's to prevent (encrypted swap
//! or none; see docs/keys.md).

use rustix::process::{Resource, Rlimit};

/// What could not be applied (empty when all was).
pub(crate) fn harden() -> Vec<String> {
    let mut failed = Vec::new();
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let none = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if let Err(e) = rustix::process::setrlimit(Resource::Core, none) {
        failed.push(format!("cannot disable core dumps (RLIMIT_CORE): {e}"));
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        failed.push(format!(
            "cannot mark the process not dumpable (PR_SET_DUMPABLE): {e}"
        ));
    }
    failed
}
