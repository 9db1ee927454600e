//! Bench-only builds (features `bench-noop-cipher`, `bench-no-audit`) store data without
//! encryption or without audit. Such a build refuses every command that stores real data,
//! except the server, the client provisioning and the import that `phivault bench http` and
//! `phivault bench import` start themselves on their temporary stores, which they mark with
//! [`BENCH_CHILD_ENV`].
//!
//! In a normal build none of this applies: [`BENCH_ONLY_BUILD`] is false at compile time and
//! the environment variable is never read.

use anyhow::{Result, bail};

/// Set (to `1`) by `phivault bench http` and `bench import` on the processes they start.
pub(crate) const BENCH_CHILD_ENV: &str = "PHIVAULT_BENCH_CHILD";

/// True when this build does not encrypt or does not audit.
pub(crate) const BENCH_ONLY_BUILD: bool =
    phivault_crypto::NOOP_CIPHER || phivault_audit::BENCH_NO_AUDIT;

/// What the bench-only features switch off, for messages.
fn switched_off() -> &'static str {
    match (phivault_crypto::NOOP_CIPHER, phivault_audit::BENCH_NO_AUDIT) {
        (true, true) => {
            "does not encrypt and does not audit (features bench-noop-cipher, \
                         bench-no-audit)"
        }
        (true, false) => "does not encrypt (feature bench-noop-cipher)",
        _ => "does not audit (feature bench-no-audit)",
    }
}

/// Refuses in a bench-only build, always (commands `phivault bench http` never starts).
pub(crate) fn refuse_bench_only_build() -> Result<()> {
    if BENCH_ONLY_BUILD {
        bail!(
            "this is a bench-only build that {}; it refuses to store data. Rebuild without \
             the bench-only features.",
            switched_off()
        );
    }
    Ok(())
}

/// Refuses in a bench-only build unless started by `phivault bench http` or `bench import`.
pub(crate) fn refuse_unless_bench_child() -> Result<()> {
    if BENCH_ONLY_BUILD && !started_by_bench() {
        bail!(
            "this is a bench-only build that {}; it refuses to store data (only `phivault \
             bench http` and `bench import` run it, on a temporary store). Rebuild without the \
             bench-only features.",
            switched_off()
        );
    }
    Ok(())
}

fn started_by_bench() -> bool {
    std::env::var_os(BENCH_CHILD_ENV).is_some_and(|v| v == "1")
}
