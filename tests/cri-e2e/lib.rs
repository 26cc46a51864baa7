//! Empty: the package exists for tests/e2e_cri.rs (see Cargo.toml).
