//! The names the watchdog and the launcher show in `ps`, so that an operator can tell them from
//! elect: `elect: watchdog for LOCK` and `elect: launcher` (the command line, which `ps -f` and
//! `pgrep -f` read), and `lease-watchdog` and `lease-launcher` (the short name, which `ps -e`,
//! `top`, `pgrep` and `killall` read). Both are forks of elect, and would show elect's own
//! command line and name otherwise.
//!
//! # Why the short names do not say `elect`
//! `pkill -9 elect` and `killall -9 elect` match short names. Were the watchdog's `elect…`, they
//! would kill elect and its watchdog together, the one process failure that on a network backend
//! leaves the job's background processes unguarded (see the README's "Two guards"). As it is,
//! they kill elect alone, and the watchdog stops the job.

use std::ffi::CString;

/// Sets the short name and the command line of the calling process. The command line is
/// rewritten in place, in the argument area the kernel set up at exec (its bytes are what
/// `/proc/<pid>/cmdline` shows); a longer title is cut to fit. Must be called only in a process
/// that reads its own arguments no more.
pub fn set(name: &str, title: &str) {
    if let Ok(name) = CString::new(name) {
        let _ = nix::sys::prctl::set_name(&name);
    }
    let Some((start, end)) = argument_area() else {
        return;
    };
    let Some(len) = end.checked_sub(start).filter(|len| *len >= 2) else {
        return;
    };
    // SAFETY: [start, end) is this process's argument area (from /proc/self/stat), mapped
    // writable by the kernel at exec for the life of the process. The caller no longer reads its
    // arguments, so nothing else reads these bytes while they change.
    let area = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, len) };
    let n = title.len().min(len - 1);
    area[..n].copy_from_slice(&title.as_bytes()[..n]);
    area[n..].fill(0);
}

/// Where the arguments lie: fields 48 and 49 of `/proc/self/stat`.
fn argument_area() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // Field 3 (the state) is the first after the name.
    let start = fields.get(48 - 3)?.parse().ok()?;
    let end = fields.get(49 - 3)?.parse().ok()?;
    Some((start, end))
}
