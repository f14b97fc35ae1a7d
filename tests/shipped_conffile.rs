//! The `/etc/elect.conf` that the Debian package ships (packaging/deb/elect.conf): elect reads
//! it as it is; it lists every key elect knows, each once, commented out, with elect's own
//! default; and with every line uncommented it still reads and changes nothing.

mod support {
    pub mod env;
    pub mod process;
}

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use support::env::TestEnv;

const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/deb/elect.conf");

/// `elect config` with this file: KEY -> (VALUE, SOURCE).
fn config_with(env: &TestEnv, file: &Path) -> BTreeMap<String, (String, String)> {
    let mut cmd = env.elect();
    cmd.env_remove("ELECT_LOCK_DIR").args([
        "--config".as_ref(),
        file.as_os_str(),
        "config".as_ref(),
    ]);
    let out = env.run_command(cmd);
    out.assert_code(0);
    out.stdout
        .lines()
        .skip(1)
        .map(|line| {
            let mut cols = line.split_whitespace();
            let key = cols.next().unwrap_or_default().to_owned();
            let cols: Vec<&str> = cols.collect();
            // VALUE may be blank (an empty setting); SOURCE is the last column or two.
            let (value, source) = match cols.as_slice() {
                [v, "file", path] => (v.to_string(), format!("file {path}")),
                ["file", path] => (String::new(), format!("file {path}")),
                [v, s] => (v.to_string(), s.to_string()),
                [s] => (String::new(), s.to_string()),
                other => panic!("unexpected row {line:?}: {other:?}"),
            };
            (key, (value, source))
        })
        .collect()
}

/// The `#KEY=VALUE` lines of the shipped file, in order.
fn commented_settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("#ELECT_"))
        .map(|l| {
            let (key, value) = l.split_once('=').expect("#KEY=VALUE");
            (format!("ELECT_{key}"), value.to_owned())
        })
        .collect()
}

#[test]
fn the_shipped_conffile_reads_as_is_and_sets_nothing() {
    let env = TestEnv::new();
    let rows = config_with(&env, Path::new(SHIPPED));
    for (key, (_, source)) in &rows {
        assert!(
            source == "default" || source == "unset",
            "{key} comes from {source}: the shipped file must set nothing"
        );
    }
}

#[test]
fn the_shipped_conffile_lists_every_key_once_with_its_default() {
    let env = TestEnv::new();
    let text = std::fs::read_to_string(SHIPPED).expect("packaging/deb/elect.conf");
    let settings = commented_settings(&text);
    let empty = env.file("empty.conf");
    std::fs::write(&empty, "").unwrap();
    let defaults = config_with(&env, &empty);

    let mut listed: Vec<&str> = settings.iter().map(|(k, _)| k.as_str()).collect();
    listed.sort_unstable();
    let before = listed.len();
    listed.dedup();
    assert_eq!(before, listed.len(), "a key is listed twice");
    let known: Vec<&str> = defaults.keys().map(String::as_str).collect();
    assert_eq!(
        listed, known,
        "the shipped file must list exactly the keys elect knows"
    );

    for (key, value) in &settings {
        let (default, source) = &defaults[key];
        match source.as_str() {
            "default" => assert_eq!(value, default, "{key}: the shipped default is elect's"),
            _ => assert!(
                value.is_empty(),
                "{key} has no default value, so the shipped file leaves it empty, not {value:?}"
            ),
        }
    }

    // Uncommented, every line still parses, and those with a value change nothing.
    let uncommented = env.file("uncommented.conf");
    std::fs::write(&uncommented, text.replace("\n#ELECT_", "\nELECT_")).unwrap();
    // It names the password keys, so only its owner may read it.
    std::fs::set_permissions(&uncommented, std::fs::Permissions::from_mode(0o600)).unwrap();
    let rows = config_with(&env, &uncommented);
    for (key, value) in settings.iter().filter(|(_, v)| !v.is_empty()) {
        let (shown, source) = &rows[key];
        assert_eq!(shown, value, "{key}");
        assert!(source.starts_with("file "), "{key} comes from {source}");
    }
}
