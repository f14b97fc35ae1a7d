//! The home directory whose files elect may read: `$HOME`, except as root, where it is root's own
//! home from the password database. `sudo -E` keeps the invoking user's `HOME`, and a file there
//! (a per-user config file, `~/.pgpass`, `~/.postgresql/root.crt`) must not decide what root's
//! leases trust.

use std::path::PathBuf;

pub fn dir() -> Option<PathBuf> {
    let euid = nix::unistd::geteuid();
    if euid.is_root() {
        return nix::unistd::User::from_uid(euid)
            .ok()
            .flatten()
            .map(|user| user.dir);
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}
