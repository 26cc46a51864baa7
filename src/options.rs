//! Runtime options: the Any containerd sends on `start`'s stdin and in Create, decoded by type
//! URL into one struct, and persisted in the bundle so `delete` finds the same runtime.

use std::path::Path;

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::{Message, UnknownValueRef};
use containerd_shim_protos::shim::oci::{CheckpointOptions, Options as RuncOptions};
use serde_json::json;

use crate::bundle::{open_regular, write_atomic};
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
        // criu_path (field 8) is reserved in containerd 2.x's proto, so the generated type keeps it
        // among the unknown fields.
        let criu_path = match o.special_fields.unknown_fields().get(8) {
            Some(UnknownValueRef::LengthDelimited(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        };
        ShimOptions {
            binary_name: o.binary_name.clone(),
            root: o.root.clone(),
            systemd_cgroup: o.systemd_cgroup,
            no_pivot_root: o.no_pivot_root,
            no_new_keyring: o.no_new_keyring,
            io_uid: o.io_uid,
            io_gid: o.io_gid,
            shim_cgroup: o.shim_cgroup.clone(),
            criu_path,
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

fn read_regular_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    open_regular(std::fs::OpenOptions::new().read(true), path)?.read_to_string(&mut text)?;
    Ok(text)
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
        // What containerd's CRI sends for a runtime_type other than io.containerd.runc.*.
        "runtimeoptions.v1.Options" => decode_runtimeoptions(&any.value),
        // What containerd 1.6's client sends for runtime names outside io.containerd.runc.*.
        "containerd.linux.runc.CreateOptions" => decode_legacy_create_options(&any.value),
        other => Err(Error::InvalidArgument(format!("unsupported runtime options type {other:?}"))),
    }
}

/// The fields of a message we have no generated type for, by number (parsed as an Empty
/// message, every field is unknown).
fn fields(value: &[u8], what: &str) -> Result<Empty> {
    Empty::parse_from_bytes(value).map_err(|e| Error::InvalidArgument(format!("bad {what}: {e}")))
}

fn field_str(m: &Empty, n: u32) -> String {
    match m.special_fields.unknown_fields().get(n) {
        Some(UnknownValueRef::LengthDelimited(b)) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    }
}

fn field_u64(m: &Empty, n: u32) -> u64 {
    match m.special_fields.unknown_fields().get(n) {
        Some(UnknownValueRef::Varint(v)) => v,
        _ => 0,
    }
}

/// `runtimeoptions.v1.Options{type_url=1, config_path=2, config_body=3}`: a TOML document of
/// runc option names (BinaryName, SystemdCgroup, ...), inline (1.7+) or in a file.
fn decode_runtimeoptions(value: &[u8]) -> Result<ShimOptions> {
    let m = fields(value, "runtimeoptions.v1.Options")?;
    let (path, body) = (field_str(&m, 2), field_str(&m, 3));
    let text = if !body.is_empty() {
        body
    } else if !path.is_empty() {
        read_regular_file(Path::new(&path))
            .map_err(|e| Error::InvalidArgument(format!("runtime options ConfigPath {path:?}: {e}")))?
    } else {
        return Ok(ShimOptions::default());
    };
    from_toml(&text).map_err(|e| {
        let origin = if path.is_empty() { "ConfigBody".to_string() } else { format!("ConfigPath {path:?}") };
        Error::InvalidArgument(format!("runtime options {origin}: {e}"))
    })
}

/// `containerd.linux.runc.CreateOptions` (runtime v1's type; the Go shim refuses it).
fn decode_legacy_create_options(value: &[u8]) -> Result<ShimOptions> {
    let m = fields(value, "containerd.linux.runc.CreateOptions")?;
    Ok(ShimOptions {
        no_pivot_root: field_u64(&m, 1) != 0,
        no_new_keyring: field_u64(&m, 8) != 0,
        shim_cgroup: field_str(&m, 9),
        io_uid: field_u64(&m, 10) as u32,
        io_gid: field_u64(&m, 11) as u32,
        criu_work_path: field_str(&m, 12),
        criu_image_path: field_str(&m, 13),
        ..Default::default()
    })
}

/// Decode Checkpoint's options Any: runc v2's `containerd.runc.v1.CheckpointOptions`, or the
/// legacy type containerd 1.6's client sends to a runtime whose name does not start with
/// io.containerd.runc. Empty means defaults; any other type is refused by name.
pub fn decode_checkpoint(any: Option<&Any>) -> Result<CheckpointOptions> {
    let Some(any) = any.filter(|a| !a.type_url.is_empty() || !a.value.is_empty()) else {
        return Ok(CheckpointOptions::new());
    };
    match bare(&any.type_url) {
        "containerd.runc.v1.CheckpointOptions" => CheckpointOptions::parse_from_bytes(&any.value)
            .map_err(|e| Error::InvalidArgument(format!("checkpoint: bad containerd.runc.v1.CheckpointOptions: {e}"))),
        "containerd.linux.runc.CheckpointOptions" => decode_legacy_checkpoint_options(&any.value),
        other => Err(Error::InvalidArgument(format!("checkpoint: unsupported options type {other:?}"))),
    }
}

/// LEGACY DECODER, to be replaced by the generated type once protos/ carries it (branch
/// `protos`): `containerd.linux.runc.CheckpointOptions` from containerd's
/// runtime/linux/runctypes/runc.proto. Same fields as the runc v1 type except that
/// work_path (8) and image_path (9) are swapped.
fn decode_legacy_checkpoint_options(value: &[u8]) -> Result<CheckpointOptions> {
    let what = "containerd.linux.runc.CheckpointOptions";
    let m = fields(value, what)?;
    let mut empty_namespaces = Vec::new();
    for f in m.special_fields.unknown_fields().iter().filter(|(n, _)| *n == 6) {
        match f.1 {
            UnknownValueRef::LengthDelimited(b) => empty_namespaces.push(String::from_utf8_lossy(b).into_owned()),
            _ => return Err(Error::InvalidArgument(format!("bad {what}: empty_namespaces is not a string"))),
        }
    }
    let mut o = CheckpointOptions::new();
    o.exit = field_u64(&m, 1) != 0;
    o.open_tcp = field_u64(&m, 2) != 0;
    o.external_unix_sockets = field_u64(&m, 3) != 0;
    o.terminal = field_u64(&m, 4) != 0;
    o.file_locks = field_u64(&m, 5) != 0;
    o.empty_namespaces = empty_namespaces;
    o.cgroups_mode = field_str(&m, 7);
    o.work_path = field_str(&m, 8);
    o.image_path = field_str(&m, 9);
    Ok(o)
}

/// The flat TOML CRI writes for runtime options: `Key = value` lines with strings, booleans and
/// integers. A small reader instead of a TOML crate keeps the binary small; anything outside
/// this subset is refused with the line that has it.
pub fn from_toml(text: &str) -> std::result::Result<ShimOptions, String> {
    let mut o = ShimOptions::default();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |m: &str| format!("line {}: {m}: {raw:?}", n + 1);
        if line.starts_with('[') {
            return Err(err("tables are not supported"));
        }
        let (key, value) = line.split_once('=').ok_or_else(|| err("expected Key = value"))?;
        let key = key.trim().trim_matches('"');
        let value = value.trim();
        let string = || -> std::result::Result<String, String> {
            let v = strip_comment(value);
            if let Some(inner) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                Ok(inner.replace("\\\"", "\"").replace("\\\\", "\\"))
            } else if let Some(inner) = v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
                Ok(inner.to_string())
            } else {
                Err(err("expected a quoted string"))
            }
        };
        let boolean = || match strip_comment(value) {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(err("expected true or false")),
        };
        let int = || strip_comment(value).parse::<u32>().map_err(|_| err("expected a whole number"));
        match key {
            "BinaryName" => o.binary_name = string()?,
            "Root" => o.root = string()?,
            "SystemdCgroup" => o.systemd_cgroup = boolean()?,
            "NoPivotRoot" => o.no_pivot_root = boolean()?,
            "NoNewKeyring" => o.no_new_keyring = boolean()?,
            "IoUid" => o.io_uid = int()?,
            "IoGid" => o.io_gid = int()?,
            "ShimCgroup" => o.shim_cgroup = string()?,
            "CriuPath" => o.criu_path = string()?,
            "CriuImagePath" => o.criu_image_path = string()?,
            "CriuWorkPath" => o.criu_work_path = string()?,
            // Accepted and unused by a runc-style shim.
            "TypeUrl" | "TaskAPIAddress" | "TaskAPIVersion" => {}
            other => return Err(err(&format!("unknown option {other:?}"))),
        }
    }
    Ok(o)
}

fn strip_comment(v: &str) -> &str {
    // A '#' outside quotes starts a comment.
    let mut quote = None;
    for (i, c) in v.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') => return v[..i].trim_end(),
            _ => {}
        }
    }
    v
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

    fn any(url: &str, value: Vec<u8>) -> Any {
        let mut a = Any::new();
        a.type_url = url.into();
        a.value = value;
        a
    }

    /// Protobuf wire bytes: (field, string) and (field, varint) pairs.
    fn wire(strings: &[(u32, &str)], ints: &[(u32, u64)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, s) in strings {
            out.push((n << 3 | 2) as u8);
            out.push(s.len() as u8);
            out.extend_from_slice(s.as_bytes());
        }
        for (n, v) in ints {
            out.push((n << 3) as u8);
            out.push(*v as u8);
        }
        out
    }

    #[test]
    fn runtimeoptions_with_config_path_and_body() {
        let dir = std::env::temp_dir().join(format!("rs-opts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("runc.toml");
        std::fs::write(&path, "# CRI options\nBinaryName = \"/usr/local/bin/youki\"\nSystemdCgroup = true # yes\nIoUid = 1000\nRoot = '/run/youki'\n").unwrap();
        let d = decode(Some(&any("runtimeoptions.v1.Options", wire(&[(2, path.to_str().unwrap())], &[])))).unwrap();
        assert_eq!(d.binary(), "/usr/local/bin/youki");
        assert!(d.systemd_cgroup);
        assert_eq!(d.io_uid, 1000);
        assert_eq!(d.root(), "/run/youki");
        let d = decode(Some(&any("runtimeoptions.v1.Options", wire(&[(3, "NoPivotRoot = true")], &[])))).unwrap();
        assert!(d.no_pivot_root);
        let missing = decode(Some(&any("runtimeoptions.v1.Options", wire(&[(2, "/nonexistent/x.toml")], &[]))));
        assert!(missing.unwrap_err().to_string().contains("/nonexistent/x.toml"));
        // a FIFO where the TOML should be is refused at once instead of blocking the shim
        let fifo = dir.join("fifo.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = decode(Some(&any("runtimeoptions.v1.Options", wire(&[(2, fifo.to_str().unwrap())], &[])))).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn toml_errors_name_the_line() {
        assert!(from_toml("Bogus = 1").unwrap_err().contains("Bogus"));
        assert!(from_toml("SystemdCgroup = maybe").unwrap_err().contains("line 1"));
        assert!(from_toml("[plugins]").unwrap_err().contains("tables"));
        assert_eq!(from_toml("BinaryName = \"a#b\" # c").unwrap().binary_name, "a#b");
    }

    #[test]
    fn legacy_create_options_and_criu_path() {
        let d = decode(Some(&any(
            "containerd.linux.runc.CreateOptions",
            wire(&[(9, "/shims"), (13, "/img")], &[(1, 1), (8, 1), (10, 7), (11, 8)]),
        )))
        .unwrap();
        assert!(d.no_pivot_root && d.no_new_keyring);
        assert_eq!((d.shim_cgroup.as_str(), d.io_uid, d.io_gid), ("/shims", 7, 8));
        assert_eq!(d.criu_image_path, "/img");
        // runc Options with the reserved criu_path field 8
        let d = decode(Some(&any("containerd.runc.v1.Options", wire(&[(8, "/usr/sbin/criu"), (6, "crun")], &[])))).unwrap();
        assert_eq!((d.criu_path.as_str(), d.binary()), ("/usr/sbin/criu", "crun"));
    }

    #[test]
    fn checkpoint_options_runc_and_legacy() {
        assert_eq!(decode_checkpoint(None).unwrap(), CheckpointOptions::new());
        let mut o = CheckpointOptions::new();
        o.exit = true;
        o.image_path = "/img".into();
        o.work_path = "/work".into();
        let d = decode_checkpoint(Some(&any("containerd.runc.v1.CheckpointOptions", o.write_to_bytes().unwrap()))).unwrap();
        assert_eq!(d, o);
        // legacy: work_path is field 8, image_path field 9
        let v = wire(&[(8, "/work"), (9, "/img"), (6, "network"), (6, "uts"), (7, "soft")], &[(1, 1), (2, 1), (5, 1)]);
        let d = decode_checkpoint(Some(&any("containerd.linux.runc.CheckpointOptions", v))).unwrap();
        assert!(d.exit && d.open_tcp && d.file_locks && !d.terminal && !d.external_unix_sockets);
        assert_eq!((d.image_path.as_str(), d.work_path.as_str()), ("/img", "/work"));
        assert_eq!(d.empty_namespaces, ["network", "uts"]);
        assert_eq!(d.cgroups_mode, "soft");
        let e = decode_checkpoint(Some(&any("containerd.runc.v1.Options", vec![]))).unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("containerd.runc.v1.Options")), "{e}");
        let e = decode_checkpoint(Some(&any("containerd.linux.runc.CheckpointOptions", vec![0xff]))).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)));
    }

    #[test]
    fn json_round_trip() {
        let o = ShimOptions { binary_name: "youki".into(), io_uid: 7, no_pivot_root: true, ..Default::default() };
        assert_eq!(ShimOptions::from_json(&o.to_json()), o);
    }
}
