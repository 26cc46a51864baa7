//! The flags and environment containerd passes to a shim binary.
//!
//! containerd's Go shims parse flags with Go's `flag` package: `-x v`, `--x v`, `-x=v`, boolean
//! `-debug` / `-debug=true`, and parsing stops at the first word that is not a flag (the action).

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// No action word: run as the long-lived daemon (only ever started by our own `start`).
    Serve,
    Start,
    Delete,
    Version,
    Info,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flags {
    pub namespace: String,
    pub id: String,
    pub address: String,
    pub publish_binary: String,
    pub bundle: Option<PathBuf>,
    pub socket: Option<String>,
    pub debug: bool,
    pub action: Action,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlagError {
    #[error("flag provided but not defined: -{0}")]
    Unknown(String),
    #[error("flag needs an argument: -{0}")]
    MissingValue(String),
    #[error("invalid boolean value {1:?} for -{0}")]
    BadBool(String, String),
    #[error("unknown action {0:?} (expected start or delete)")]
    UnknownAction(String),
    #[error("-{0} is required")]
    Required(&'static str),
}

pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Flags, FlagError> {
    let mut f = Flags {
        namespace: String::new(),
        id: String::new(),
        address: String::new(),
        publish_binary: String::new(),
        bundle: None,
        socket: None,
        debug: false,
        action: Action::Serve,
    };
    let mut version = false;
    let mut info = false;
    let mut it = args.into_iter().peekable();
    let mut rest = Vec::new();
    while let Some(arg) = it.next() {
        if arg == "--" {
            rest.extend(it.by_ref());
            break;
        }
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            rest.push(arg);
            rest.extend(it.by_ref());
            break;
        };
        if flag.is_empty() {
            rest.push(arg);
            rest.extend(it.by_ref());
            break;
        }
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (flag.to_string(), None),
        };
        match name.as_str() {
            "debug" | "v" | "info" => {
                let value = match inline.as_deref() {
                    None | Some("true") | Some("1") | Some("t") | Some("T") | Some("TRUE") => true,
                    Some("false") | Some("0") | Some("f") | Some("F") | Some("FALSE") => false,
                    Some(v) => return Err(FlagError::BadBool(name, v.to_string())),
                };
                match name.as_str() {
                    "debug" => f.debug = value,
                    "v" => version = value,
                    _ => info = value,
                }
            }
            "namespace" | "id" | "address" | "publish-binary" | "bundle" | "socket" => {
                let value = match inline {
                    Some(v) => v,
                    None => it.next().ok_or_else(|| FlagError::MissingValue(name.clone()))?,
                };
                match name.as_str() {
                    "namespace" => f.namespace = value,
                    "id" => f.id = value,
                    "address" => f.address = value,
                    "publish-binary" => f.publish_binary = value,
                    "bundle" => f.bundle = Some(PathBuf::from(value)),
                    _ => f.socket = Some(value),
                }
            }
            _ => return Err(FlagError::Unknown(name)),
        }
    }
    f.action = if version {
        Action::Version
    } else if info {
        Action::Info
    } else {
        match rest.first().map(String::as_str) {
            None => Action::Serve,
            Some("start") => Action::Start,
            Some("delete") => Action::Delete,
            Some(other) => return Err(FlagError::UnknownAction(other.to_string())),
        }
    };
    if matches!(f.action, Action::Serve | Action::Start | Action::Delete) {
        if f.namespace.is_empty() {
            return Err(FlagError::Required("namespace"));
        }
        if f.id.is_empty() {
            return Err(FlagError::Required("id"));
        }
    }
    Ok(f)
}

/// containerd's ttrpc address for events: TTRPC_ADDRESS, else the gRPC address + ".ttrpc".
pub fn ttrpc_address(flags: &Flags) -> String {
    std::env::var("TTRPC_ADDRESS")
        .ok()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| format!("{}.ttrpc", flags.address))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Flags, FlagError> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn start_as_containerd_16_sends_it() {
        let f = p(&[
            "-namespace", "default", "-address", "/run/containerd/containerd.sock",
            "-publish-binary", "/usr/bin/containerd", "-id", "c1", "-debug", "start",
        ])
        .unwrap();
        assert_eq!(f.action, Action::Start);
        assert_eq!(f.namespace, "default");
        assert_eq!(f.id, "c1");
        assert!(f.debug);
        assert_eq!(f.publish_binary, "/usr/bin/containerd");
    }

    #[test]
    fn delete_with_bundle_and_double_dash_flags() {
        let f = p(&["--namespace=k8s.io", "--id", "x", "-bundle", "/b", "-debug=false", "delete"]).unwrap();
        assert_eq!(f.action, Action::Delete);
        assert_eq!(f.bundle.as_deref(), Some(std::path::Path::new("/b")));
        assert!(!f.debug);
    }

    #[test]
    fn serve_when_no_action() {
        let f = p(&["-namespace", "n", "-id", "i", "-address", "/a"]).unwrap();
        assert_eq!(f.action, Action::Serve);
    }

    #[test]
    fn version_needs_nothing_else() {
        assert_eq!(p(&["-v"]).unwrap().action, Action::Version);
        assert_eq!(p(&["--info"]).unwrap().action, Action::Info);
    }

    #[test]
    fn errors_are_named() {
        assert_eq!(p(&["-bogus"]), Err(FlagError::Unknown("bogus".into())));
        assert_eq!(p(&["-id"]), Err(FlagError::MissingValue("id".into())));
        assert_eq!(p(&["-namespace", "n", "-id", "i", "stop"]), Err(FlagError::UnknownAction("stop".into())));
        assert_eq!(p(&["-id", "i", "start"]), Err(FlagError::Required("namespace")));
        assert_eq!(p(&["-debug=maybe"]), Err(FlagError::BadBool("debug".into(), "maybe".into())));
    }
}
