//! The committed man page and completions must be what the code generates.

use std::path::Path;

#[test]
fn committed_man_page_and_completions_are_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut stale = Vec::new();
    for (path, generated) in elect::generate::files() {
        match std::fs::read(root.join(path)) {
            Ok(committed) if committed == generated => {}
            _ => stale.push(path),
        }
    }
    assert!(
        stale.is_empty(),
        "{stale:?} differ from what the code generates; run `cargo run -- generate .` and commit them"
    );
}
