//! Runtime options: the Any containerd sends on `start`'s stdin and in Create, decoded by type
//! URL into one struct, and persisted in the bundle so `delete` finds the same runtime.

use std::path::Path;

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::oci::CheckpointOptions;
use serde_json::json;

use crate::bundle::{open_regular, write_atomic};
use crate::error::{Error, Result};
pub use crate::protos::bare_type_url;
use crate::protos::runc_options::Options as RuncOptions;
use crate::protos::runctypes::{CheckpointOptions as LegacyCheckpointOptions, CreateOptions as LegacyCreateOptions};
use crate::protos::runtimeoptions::Options as RuntimeOptions;
use crate::runtime::CriuOpts;

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
            criu_path: o.criu_path.clone(),
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

/// Decode the options Any. Empty means defaults; an unknown type is refused by name.
pub fn decode(any: Option<&Any>) -> Result<ShimOptions> {
    let Some(any) = any else { return Ok(ShimOptions::default()) };
    if any.type_url.is_empty() && any.value.is_empty() {
        return Ok(ShimOptions::default());
    }
    match bare_type_url(&any.type_url) {
        "containerd.runc.v1.Options" => parse::<RuncOptions>(&any.value, "containerd.runc.v1.Options")
            .map(|o| ShimOptions::from_runc(&o)),
        // What containerd's CRI sends for a runtime_type other than io.containerd.runc.*.
        "runtimeoptions.v1.Options" => decode_runtimeoptions(&any.value),
        // What containerd 1.6's client sends for runtime names outside io.containerd.runc.*.
        "containerd.linux.runc.CreateOptions" => {
            parse::<LegacyCreateOptions>(&any.value, "containerd.linux.runc.CreateOptions").map(|o| ShimOptions {
                no_pivot_root: o.no_pivot_root,
                no_new_keyring: o.no_new_keyring,
                shim_cgroup: o.shim_cgroup,
                io_uid: o.io_uid,
                io_gid: o.io_gid,
                criu_work_path: o.criu_work_path,
                criu_image_path: o.criu_image_path,
                ..Default::default()
            })
        }
        other => Err(Error::InvalidArgument(format!("unsupported runtime options type {other:?}"))),
    }
}

fn parse<M: Message>(value: &[u8], what: &str) -> Result<M> {
    M::parse_from_bytes(value).map_err(|e| Error::InvalidArgument(format!("bad {what}: {e}")))
}

/// `runtimeoptions.v1.Options`: a TOML document of runc option names (BinaryName,
/// SystemdCgroup, ...), inline (ConfigBody, 1.7+) or in a file (ConfigPath).
fn decode_runtimeoptions(value: &[u8]) -> Result<ShimOptions> {
    let m = parse::<RuntimeOptions>(value, "runtimeoptions.v1.Options")?;
    let path = m.config_path;
    let text = if !m.config_body.is_empty() {
        String::from_utf8(m.config_body)
            .map_err(|_| Error::InvalidArgument("runtime options ConfigBody is not UTF-8".into()))?
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

/// What a Checkpoint request's options ask of CRIU, and whether the task exits after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointRequest {
    pub criu: CriuOpts,
    pub exit: bool,
}

/// The two checkpoint option types have the same fields (only their numbers differ), but no
/// common trait: one expansion for both.
macro_rules! checkpoint_request {
    ($o:expr) => {{
        let o = $o;
        CheckpointRequest {
            criu: CriuOpts {
                image_path: o.image_path.into(),
                work_path: o.work_path.into(),
                parent_path: None,
                open_tcp: o.open_tcp,
                external_unix_sockets: o.external_unix_sockets,
                shell_job: o.terminal,
                file_locks: o.file_locks,
                empty_namespaces: o.empty_namespaces,
                cgroups_mode: o.cgroups_mode,
            },
            exit: o.exit,
        }
    }};
}

/// Decode a Checkpoint request's options: `containerd.runc.v1.CheckpointOptions` (1.7+), or the
/// legacy `containerd.linux.runc.CheckpointOptions` that containerd 1.6's client sends (note
/// its image and work paths are numbered the other way round; the generated types hide that).
/// Empty means defaults. The options' image path wins over `path`, the request's own:
/// containerd 1.6 fills `path` with a temporary directory of its own when it cannot read the
/// options (a runtime not named io.containerd.runc.*), while the options carry the client's.
pub fn decode_checkpoint(any: Option<&Any>, path: &str) -> Result<CheckpointRequest> {
    let any = any.filter(|a| !a.type_url.is_empty() || !a.value.is_empty());
    let mut req = match any.map(|a| (bare_type_url(&a.type_url), &a.value)) {
        None => CheckpointRequest::default(),
        Some(("containerd.runc.v1.CheckpointOptions", v)) => {
            checkpoint_request!(parse::<CheckpointOptions>(v, "containerd.runc.v1.CheckpointOptions")?)
        }
        Some(("containerd.linux.runc.CheckpointOptions", v)) => {
            checkpoint_request!(parse::<LegacyCheckpointOptions>(v, "containerd.linux.runc.CheckpointOptions")?)
        }
        Some((other, _)) => {
            return Err(Error::InvalidArgument(format!("checkpoint: unsupported options type {other:?}")))
        }
    };
    if req.criu.image_path.as_os_str().is_empty() {
        req.criu.image_path = path.into();
    }
    Ok(req)
}

/// The TOML CRI writes for runtime options (`BinaryName = "..."`, `SystemdCgroup = true`, ...),
/// read with the `basic-toml` crate (docs/dependencies.md) into a JSON map, which serde_json
/// already gives the shim. An unknown key or a value of the wrong type is refused by name.
pub fn from_toml(text: &str) -> std::result::Result<ShimOptions, String> {
    let table: serde_json::Map<String, serde_json::Value> = basic_toml::from_str(text).map_err(|e| e.to_string())?;
    let mut o = ShimOptions::default();
    for (key, value) in &table {
        let string = || value.as_str().map(str::to_string).ok_or_else(|| format!("{key}: expected a string, got {value}"));
        let boolean = || value.as_bool().ok_or_else(|| format!("{key}: expected true or false, got {value}"));
        let id = || {
            value
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| format!("{key}: expected a whole number from 0 to {}, got {value}", u32::MAX))
        };
        match key.as_str() {
            "BinaryName" => o.binary_name = string()?,
            "Root" => o.root = string()?,
            "SystemdCgroup" => o.systemd_cgroup = boolean()?,
            "NoPivotRoot" => o.no_pivot_root = boolean()?,
            "NoNewKeyring" => o.no_new_keyring = boolean()?,
            "IoUid" => o.io_uid = id()?,
            "IoGid" => o.io_gid = id()?,
            "ShimCgroup" => o.shim_cgroup = string()?,
            "CriuPath" => o.criu_path = string()?,
            "CriuImagePath" => o.criu_image_path = string()?,
            "CriuWorkPath" => o.criu_work_path = string()?,
            // Accepted and unused by a runc-style shim.
            "TypeUrl" | "TaskAPIAddress" | "TaskAPIVersion" => {}
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_runc_options_with_and_without_prefix() {
        let mut o = containerd_shim_protos::shim::oci::Options::new();
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

    fn runtimeoptions(path: &str, body: &str) -> Any {
        let mut o = RuntimeOptions::new();
        o.config_path = path.into();
        o.config_body = body.as_bytes().to_vec();
        any("runtimeoptions.v1.Options", o.write_to_bytes().unwrap())
    }

    #[test]
    fn runtimeoptions_with_config_path_and_body() {
        let dir = std::env::temp_dir().join(format!("rs-opts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("runc.toml");
        std::fs::write(&path, "# CRI options\nBinaryName = \"/usr/local/bin/youki\"\nSystemdCgroup = true # yes\nIoUid = 1000\nRoot = '/run/youki'\n").unwrap();
        let d = decode(Some(&runtimeoptions(path.to_str().unwrap(), ""))).unwrap();
        assert_eq!(d.binary(), "/usr/local/bin/youki");
        assert!(d.systemd_cgroup);
        assert_eq!(d.io_uid, 1000);
        assert_eq!(d.root(), "/run/youki");
        let d = decode(Some(&runtimeoptions("", "NoPivotRoot = true"))).unwrap();
        assert!(d.no_pivot_root);
        let missing = decode(Some(&runtimeoptions("/nonexistent/x.toml", "")));
        assert!(missing.unwrap_err().to_string().contains("/nonexistent/x.toml"));
        // a FIFO where the TOML should be is refused at once instead of blocking the shim
        let fifo = dir.join("fifo.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = decode(Some(&runtimeoptions(fifo.to_str().unwrap(), ""))).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn toml_errors_name_what_is_wrong() {
        assert!(from_toml("Bogus = 1").unwrap_err().contains("Bogus"));
        let e = from_toml("SystemdCgroup = maybe").unwrap_err();
        assert!(e.contains("line 1") && !e.contains('\n'), "{e}");
        let e = from_toml("SystemdCgroup = \"yes\"").unwrap_err();
        assert!(e.contains("SystemdCgroup") && e.contains("\"yes\""), "{e}");
        assert!(from_toml("IoUid = -1").unwrap_err().contains("IoUid"));
        assert!(from_toml("IoUid = 4294967296").unwrap_err().contains("IoUid"));
        assert!(from_toml("[plugins]\nx = 1").unwrap_err().contains("plugins"));
        assert!(from_toml("BinaryName = \"a\"\nBinaryName = \"b\"").is_err());
        assert_eq!(from_toml("").unwrap(), ShimOptions::default());
    }

    #[test]
    fn toml_strings_comments_and_escapes() {
        // what the hand-written reader got wrong: escapes, and comments after quoted strings
        assert_eq!(from_toml("BinaryName = \"a#b\" # c").unwrap().binary_name, "a#b");
        assert_eq!(from_toml("BinaryName = \"/opt/x\\ty\" # \"quoted\"").unwrap().binary_name, "/opt/x\ty");
        assert_eq!(from_toml("Root = \"/run/\\u00e9\"").unwrap().root, "/run/\u{e9}");
        assert_eq!(from_toml("Root = '/run/lit\\n' # 'x'").unwrap().root, "/run/lit\\n");
        assert_eq!(from_toml("\"BinaryName\" = \"crun\"").unwrap().binary_name, "crun");
        let o = from_toml("IoUid = 1_000 # uid\nIoGid = 0x10\nTypeUrl = \"x\"").unwrap();
        assert_eq!((o.io_uid, o.io_gid), (1000, 16));
    }

    #[test]
    fn legacy_create_options_and_criu_path() {
        let mut o = LegacyCreateOptions::new();
        (o.no_pivot_root, o.no_new_keyring, o.io_uid, o.io_gid) = (true, true, 7, 8);
        (o.shim_cgroup, o.criu_image_path) = ("/shims".into(), "/img".into());
        let d = decode(Some(&any("containerd.linux.runc.CreateOptions", o.write_to_bytes().unwrap()))).unwrap();
        assert!(d.no_pivot_root && d.no_new_keyring);
        assert_eq!((d.shim_cgroup.as_str(), d.io_uid, d.io_gid), ("/shims", 7, 8));
        assert_eq!(d.criu_image_path, "/img");
        // criu_path is reserved in containerd 2.x's proto; 1.6/1.7 clients still send it
        let mut o = RuncOptions::new();
        (o.criu_path, o.binary_name) = ("/usr/sbin/criu".into(), "crun".into());
        let d = decode(Some(&any("containerd.runc.v1.Options", o.write_to_bytes().unwrap()))).unwrap();
        assert_eq!((d.criu_path.as_str(), d.binary()), ("/usr/sbin/criu", "crun"));
        // the vendored runc Options and the crate's are the same message on the wire
        let theirs = containerd_shim_protos::shim::oci::Options::parse_from_bytes(&o.write_to_bytes().unwrap()).unwrap();
        assert_eq!(theirs.binary_name, "crun");
        let mut bad = any("containerd.linux.runc.CreateOptions", vec![0xff, 0xff]);
        assert!(decode(Some(&bad)).unwrap_err().to_string().contains("containerd.linux.runc.CreateOptions"));
        bad.type_url = "runtimeoptions.v1.Options".into();
        assert!(decode(Some(&bad)).unwrap_err().to_string().contains("runtimeoptions.v1.Options"));
    }

    #[test]
    fn checkpoint_options_current_and_legacy() {
        assert_eq!(decode_checkpoint(None, "").unwrap(), CheckpointRequest::default());
        assert_eq!(decode_checkpoint(Some(&Any::new()), "/req").unwrap().criu.image_path, Path::new("/req"));

        let mut o = CheckpointOptions::new();
        (o.exit, o.open_tcp, o.terminal, o.image_path, o.work_path) = (true, true, true, "/img".into(), "/work".into());
        o.empty_namespaces = vec!["network".into()];
        let d = decode_checkpoint(Some(&any("containerd.runc.v1.CheckpointOptions", o.write_to_bytes().unwrap())), "").unwrap();
        assert!(d.exit && d.criu.open_tcp && d.criu.shell_job && !d.criu.file_locks);
        assert_eq!((d.criu.image_path.to_str(), d.criu.work_path.to_str()), (Some("/img"), Some("/work")));
        assert_eq!(d.criu.empty_namespaces, ["network"]);

        // containerd 1.6's client: image_path and work_path are numbered the other way round
        let mut o = LegacyCheckpointOptions::new();
        (o.file_locks, o.external_unix_sockets, o.cgroups_mode) = (true, true, "soft".into());
        (o.image_path, o.work_path) = ("/img".into(), "/work".into());
        let bytes = o.write_to_bytes().unwrap();
        let url = "type.googleapis.com/containerd.linux.runc.CheckpointOptions";
        let d = decode_checkpoint(Some(&any(url, bytes.clone())), "").unwrap();
        assert!(!d.exit && d.criu.file_locks && d.criu.external_unix_sockets && !d.criu.open_tcp);
        assert_eq!((d.criu.image_path.to_str(), d.criu.work_path.to_str()), (Some("/img"), Some("/work")));
        assert_eq!(d.criu.cgroups_mode, "soft");
        // the options' path is the client's; 1.6 puts a temporary dir of its own in `path`
        let d = decode_checkpoint(Some(&any(url, bytes)), "/containerd-tmp").unwrap();
        assert_eq!(d.criu.image_path, Path::new("/img"));

        let e = decode_checkpoint(Some(&any("example.Bogus", vec![])), "").unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("example.Bogus")), "{e}");
        let e = decode_checkpoint(Some(&any("containerd.linux.runc.CheckpointOptions", vec![0xff])), "").unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("containerd.linux.runc.CheckpointOptions")), "{e}");
    }

    #[test]
    fn json_round_trip() {
        let o = ShimOptions { binary_name: "youki".into(), io_uid: 7, no_pivot_root: true, ..Default::default() };
        assert_eq!(ShimOptions::from_json(&o.to_json()), o);
    }
}
