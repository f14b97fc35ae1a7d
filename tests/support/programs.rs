//! Finding the external programs the test servers need.

use std::path::PathBuf;

/// `name` on PATH, or in /usr/bin or /usr/sbin (which a root-less PATH may lack).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Like [`which`], but a missing program fails the test, saying how to install it (`install`).
pub fn require(name: &str, install: &str) -> PathBuf {
    which(name).unwrap_or_else(|| panic!("{name} not found on PATH: {install}"))
}
