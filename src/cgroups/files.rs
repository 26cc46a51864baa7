//! Reading cgroup files: best effort per file, shared by the metrics and OOM modules.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use crate::error::{Error, Result};

/// A cgroup file's contents; None when missing or unreadable (a cgroup being torn down answers
/// ENODEV, a disabled feature EOPNOTSUPP...): metrics are best effort per file.
pub(super) fn read_file(dir: &Path, name: &str) -> Option<String> {
    let p = dir.join(name);
    match std::fs::read_to_string(&p) {
        Ok(s) => Some(s),
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                log::debug!("cgroup stats: read {}: {e}", p.display());
            }
            None
        }
    }
}

/// A single-number file. `max_as` is what the literal "max" stands for.
pub(super) fn read_u64(dir: &Path, name: &str, max_as: u64) -> Option<u64> {
    parse_u64(read_file(dir, name)?.trim(), max_as)
}

pub(super) fn parse_u64(s: &str, max_as: u64) -> Option<u64> {
    if s == "max" {
        return Some(max_as);
    }
    // Some v1 counters can be negative transiently (e.g. after a reset); clamp to zero.
    s.parse::<u64>().ok().or_else(|| s.parse::<i64>().ok().map(|v| v.max(0) as u64))
}

/// A flat keyed file (`key value` per line).
pub(super) fn read_kv(dir: &Path, name: &str) -> Option<HashMap<String, u64>> {
    read_file(dir, name).map(|s| parse_kv(&s))
}

pub(super) fn parse_kv(s: &str) -> HashMap<String, u64> {
    s.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?;
            let v = parse_u64(it.next()?, u64::MAX)?;
            Some((k.to_string(), v))
        })
        .collect()
}

pub(super) fn ensure_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(Error::NotFound(format!("cgroup {} does not exist", dir.display())))
    }
}

/// Names of the page sizes that have a `hugetlb.<size>.<suffix>` file in `dir`, sorted.
pub(super) fn hugetlb_sizes(dir: &Path, suffix: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut sizes: Vec<String> = rd
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let size = name.strip_prefix("hugetlb.")?.strip_suffix(suffix)?.strip_suffix('.')?;
            (!size.is_empty() && !size.contains('.')).then(|| size.to_string())
        })
        .collect();
    sizes.sort_by_key(|s| (hugepage_bytes(s), s.clone()));
    sizes
}

pub(super) fn hugepage_bytes(size: &str) -> u64 {
    let digits: String = size.chars().take_while(|c| c.is_ascii_digit()).collect();
    let n: u64 = digits.parse().unwrap_or(0);
    match &size[digits.len()..] {
        "KB" => n << 10,
        "MB" => n << 20,
        "GB" => n << 30,
        "TB" => n << 40,
        _ => n,
    }
}
