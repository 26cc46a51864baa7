//! What this build is: version, git revision and how it was built, for `-v`, `-info` and the
//! daemon's first log line (an operator comparing shims across nodes needs all three).

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_REVISION: &str = env!("RUSTSHIM_GIT_REV");

/// The build profile. `static_build` comes from the binary's own compile flags (the library
/// is built without them): scripts/build-release.sh links statically and non-PIE.
pub fn profile(static_build: bool) -> String {
    let opt = if cfg!(debug_assertions) { "debug" } else { "release" };
    let link = if static_build { "static, non-PIE (scripts/build-release.sh)" } else { "plain cargo build (PIE, dynamic glibc)" };
    format!("{opt}, {link}")
}

/// One line: `0.1.0 (git 1234abcd, release, static, non-PIE ...)`.
pub fn describe(static_build: bool) -> String {
    format!("{VERSION} (git {GIT_REVISION}, {})", profile(static_build))
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_version_revision_and_profile() {
        let d = super::describe(true);
        assert!(d.starts_with(super::VERSION), "{d}");
        assert!(d.contains(&format!("git {}", super::GIT_REVISION)), "{d}");
        assert!(d.contains("static") && !super::describe(false).contains("static,"), "{d}");
        assert!(!super::GIT_REVISION.is_empty());
    }
}
