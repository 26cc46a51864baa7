//! Error kinds of the shim, and the one place where they become ttrpc status codes.

use ttrpc::{Code, Error as TtrpcError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The caller went away (its connection closed, or it gave up) before the work finished.
    #[error("{0}")]
    Cancelled(String),
    /// The OCI runtime refused or failed; the message is runc's own error text.
    #[error("{verb}: {message}")]
    Runtime { verb: &'static str, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }

    pub fn code(&self) -> Code {
        match self {
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            Error::DeadlineExceeded(_) => Code::DEADLINE_EXCEEDED,
            Error::Cancelled(_) => Code::CANCELLED,
            // Only where "gone" is an answer containerd expects (Kill and Delete of a process
            // that already exited): `executable file not found` at create or exec must not read
            // as NotFound, which containerd takes for "already gone".
            Error::Runtime { verb: "kill" | "delete" | "state", message } if runtime_says_gone(message) => {
                Code::NOT_FOUND
            }
            // A path the request named (bundle, FIFO, log file) that does not exist is a bad
            // argument, not a process that is gone.
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => Code::INVALID_ARGUMENT,
            _ => Code::UNKNOWN,
        }
    }
}

/// runc (and crun) word "the process is gone" several ways; containerd reads NotFound from Kill
/// and Delete as "already gone", so these must map to it.
pub fn runtime_says_gone(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    ["not running", "no such process", "does not exist", "not found", "esrch"]
        .iter()
        .any(|s| m.contains(s))
}

impl From<Error> for TtrpcError {
    fn from(e: Error) -> Self {
        TtrpcError::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

impl From<nix::Error> for Error {
    fn from(e: nix::Error) -> Self {
        Error::io("system call", std::io::Error::from(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(Error::NotFound("x".into()).code(), Code::NOT_FOUND);
        assert_eq!(Error::Unimplemented("x".into()).code(), Code::UNIMPLEMENTED);
        let gone = Error::Runtime { verb: "kill", message: "container not running".into() };
        assert_eq!(gone.code(), Code::NOT_FOUND);
        let other = Error::Runtime { verb: "create", message: "exec format error".into() };
        assert_eq!(other.code(), Code::UNKNOWN);
        for verb in ["create", "exec", "start"] {
            let e = Error::Runtime { verb, message: "exec: \"nope\": executable file not found in $PATH".into() };
            assert_eq!(e.code(), Code::UNKNOWN, "{verb}: not found is not 'gone'");
        }
        let gone = Error::Runtime { verb: "delete", message: "container does not exist".into() };
        assert_eq!(gone.code(), Code::NOT_FOUND);
        assert_eq!(Error::Cancelled("x".into()).code(), Code::CANCELLED);
    }
}
