//! The shim's own log: logfmt lines on fd 2, which is the bundle's `log` FIFO in the daemon, so
//! containerd copies them into its own log.
//!
//! Writes are single non-blocking `write(2)` calls whose errors are ignored: when containerd is
//! down the FIFO fills up, and a shim must drop its log lines rather than block or spin on EPIPE.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

struct ShimLogger {
    level: log::LevelFilter,
    /// ` runtime=... namespace=... id=... shim_pid=...`, fixed for the process lifetime.
    suffix: String,
}

pub fn init(debug: bool, namespace: &str, id: &str) {
    let level = if debug { log::LevelFilter::Debug } else { log::LevelFilter::Info };
    let suffix = format!(
        " runtime=io.containerd.rustshim.v2 namespace={} id={} shim_pid={}",
        namespace,
        id,
        std::process::id()
    );
    if log::set_logger(Box::leak(Box::new(ShimLogger { level, suffix }))).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod filter_tests {
    use super::*;
    use log::Log as _;

    #[test]
    fn ttrpc_warnings_pass_its_debug_does_not() {
        let l = ShimLogger { level: log::LevelFilter::Debug, suffix: String::new() };
        let m = |target, level| log::Metadata::builder().target(target).level(level).build();
        assert!(l.enabled(&m("ttrpc::asynchronous::server", log::Level::Warn)));
        assert!(l.enabled(&m("ttrpc::asynchronous::server", log::Level::Error)));
        assert!(!l.enabled(&m("ttrpc::asynchronous::server", log::Level::Debug)));
        assert!(l.enabled(&m("rustshim::supervisor", log::Level::Debug)));
        let quiet = ShimLogger { level: log::LevelFilter::Info, suffix: String::new() };
        assert!(!quiet.enabled(&m("rustshim::supervisor", log::Level::Debug)));
    }
}

impl log::Log for ShimLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        // The ttrpc crate's own lines: its warnings and errors ("timed out", a broken
        // connection) are what an operator needs; its debug chatter is one line per frame.
        let limit = if m.target().starts_with("ttrpc") { self.level.min(log::LevelFilter::Warn) } else { self.level };
        m.level() <= limit
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Error => "error",
            log::Level::Warn => "warning",
            log::Level::Info => "info",
            log::Level::Debug => "debug",
            log::Level::Trace => "trace",
        };
        let mut line = String::with_capacity(160);
        let msg = record.args().to_string();
        let _ = writeln!(
            line,
            "time=\"{}\" level={} msg={:?}{}",
            rfc3339(SystemTime::now()),
            level,
            msg,
            self.suffix
        );
        // SAFETY: writing a valid buffer to fd 2; a short or failed write only loses the line.
        unsafe {
            libc::write(2, line.as_ptr().cast(), line.len());
        }
    }

    fn flush(&self) {}
}

/// UTC time as RFC 3339 with nanoseconds, the form containerd's own log uses.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, dd) = civil_from_days(days);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        y,
        m,
        dd,
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc() {
        let t = UNIX_EPOCH + Duration::new(1_795_000_000, 5);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.000000005Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        // a leap day
        assert_eq!(&rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400))[..10], "2000-02-29");
    }
}
