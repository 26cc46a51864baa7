//! Runtime options: the Any containerd sends on `start`'s stdin and in Create, decoded by type
//! URL into one struct, and persisted in the bundle so `delete` finds the same runtime.

use std::path::Path;

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::oci::Options as RuncOptions;
use serde_json::json;

use crate::error::{Error, Result};

pub const DEFAULT_BINARY: &str = "runc";
pub const DEFAULT_ROOT: &str = "/run/containerd/runc";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShimOptions {
    pub binary_name: String,
    pub root: String,
    pub systemd_cgroup: bool,
    pub no_pivot_root: bool,
    pub no_new_keyring: bool,
    pub io_uid: u32,
    pub io_gid: u32,
    pub shim_cgroup: String,
    pub criu_path: String,
    pub criu_image_path: String,
    pub criu_work_path: String,
}

impl ShimOptions {
    pub fn binary(&self) -> &str {
        if self.binary_name.is_empty() { DEFAULT_BINARY } else { &self.binary_name }
    }

    pub fn root(&self) -> &str {
        if self.root.is_empty() { DEFAULT_ROOT } else { &self.root }
    }

    fn from_runc(o: &RuncOptions) -> Self {
        ShimOptions {
            binary_name: o.binary_name.clone(),
            root: o.root.clone(),
            systemd_cgroup: o.systemd_cgroup,
            no_pivot_root: o.no_pivot_root,
            no_new_keyring: o.no_new_keyring,
            io_uid: o.io_uid,
            io_gid: o.io_gid,
            shim_cgroup: o.shim_cgroup.clone(),
            criu_path: String::new(),
            criu_image_path: o.criu_image_path.clone(),
            criu_work_path: o.criu_work_path.clone(),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "binary_name": self.binary_name, "root": self.root,
            "systemd_cgroup": self.systemd_cgroup, "no_pivot_root": self.no_pivot_root,
            "no_new_keyring": self.no_new_keyring, "io_uid": self.io_uid, "io_gid": self.io_gid,
            "shim_cgroup": self.shim_cgroup, "criu_path": self.criu_path,
            "criu_image_path": self.criu_image_path, "criu_work_path": self.criu_work_path,
        })
    }

    pub fn from_json(v: &serde_json::Value) -> Self {
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_string();
        let b = |k: &str| v.get(k).and_then(|x| x.as_bool()).unwrap_or_default();
        let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or_default() as u32;
        ShimOptions {
            binary_name: s("binary_name"),
            root: s("root"),
            systemd_cgroup: b("systemd_cgroup"),
            no_pivot_root: b("no_pivot_root"),
            no_new_keyring: b("no_new_keyring"),
            io_uid: n("io_uid"),
            io_gid: n("io_gid"),
            shim_cgroup: s("shim_cgroup"),
            criu_path: s("criu_path"),
            criu_image_path: s("criu_image_path"),
            criu_work_path: s("criu_work_path"),
        }
    }

    /// Write `options.json` and `runtime` into the bundle, for `delete` after a shim crash.
    pub fn persist(&self, bundle: &Path) -> Result<()> {
        write_atomic(&bundle.join("options.json"), self.to_json().to_string().as_bytes())?;
        write_atomic(&bundle.join("runtime"), self.binary().as_bytes())
    }

    pub fn load(bundle: &Path) -> ShimOptions {
        std::fs::read(bundle.join("options.json"))
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
            .map(|v| ShimOptions::from_json(&v))
            .unwrap_or_default()
    }
}

pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| Error::io(format!("write {}", path.display()), e))
}

/// A type URL without the `type.googleapis.com/` style prefix some clients add.
fn bare(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

/// Decode the options Any. Empty means defaults; an unknown type is refused by name.
pub fn decode(any: Option<&Any>) -> Result<ShimOptions> {
    let Some(any) = any else { return Ok(ShimOptions::default()) };
    if any.type_url.is_empty() && any.value.is_empty() {
        return Ok(ShimOptions::default());
    }
    match bare(&any.type_url) {
        "containerd.runc.v1.Options" => RuncOptions::parse_from_bytes(&any.value)
            .map(|o| ShimOptions::from_runc(&o))
            .map_err(|e| Error::InvalidArgument(format!("bad containerd.runc.v1.Options: {e}"))),
        other => Err(Error::InvalidArgument(format!("unsupported runtime options type {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_runc_options_with_and_without_prefix() {
        let mut o = RuncOptions::new();
        o.binary_name = "/usr/bin/crun".into();
        o.systemd_cgroup = true;
        for url in ["containerd.runc.v1.Options", "type.googleapis.com/containerd.runc.v1.Options"] {
            let mut any = Any::new();
            any.type_url = url.into();
            any.value = o.write_to_bytes().unwrap();
            let d = decode(Some(&any)).unwrap();
            assert_eq!(d.binary(), "/usr/bin/crun");
            assert!(d.systemd_cgroup);
            assert_eq!(d.root(), DEFAULT_ROOT);
        }
    }

    #[test]
    fn empty_is_default_unknown_is_named() {
        assert_eq!(decode(None).unwrap(), ShimOptions::default());
        assert_eq!(decode(Some(&Any::new())).unwrap(), ShimOptions::default());
        let mut any = Any::new();
        any.type_url = "example.Bogus".into();
        let e = decode(Some(&any)).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)));
        assert!(e.to_string().contains("example.Bogus"));
        let mut any = Any::new();
        any.type_url = "containerd.runc.v1.Options".into();
        any.value = vec![0xff, 0xff, 0xff];
        assert!(matches!(decode(Some(&any)), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn json_round_trip() {
        let o = ShimOptions { binary_name: "youki".into(), io_uid: 7, no_pivot_root: true, ..Default::default() };
        assert_eq!(ShimOptions::from_json(&o.to_json()), o);
    }
}
