//! TLS certificates made at test time with the `openssl` command: a CA, and certificates it
//! signs, all in one directory (`ca.crt`/`ca.key`, `NAME.crt`/`NAME.key`), valid for two days.

// Each binary makes the certificates its servers need.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// The subjectAltName of a server reached on loopback by address or by name.
pub const LOOPBACK: &str = "IP:127.0.0.1,DNS:localhost";

/// Extensions of a client certificate.
pub const CLIENT_EXT: &str =
    "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
                              extendedKeyUsage=clientAuth\n";

/// Extensions of a server certificate for `san` (an openssl subjectAltName such as
/// `DNS:db.example`), with the extended key usage `usage` (such as `serverAuth`).
pub fn server_ext(san: &str, usage: &str) -> String {
    format!(
        "subjectAltName={san}\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage={usage}\n"
    )
}

/// A CA (`ca.crt`, `ca.key`) and a `server` certificate for `san` signed by it, common name `cn`.
pub fn ca_and_server(dir: &Path, cn: &str, san: &str) {
    ca(dir);
    sign(dir, "server", cn, &server_ext(san, "serverAuth"));
}

/// A self-signed CA: `ca.crt` and `ca.key` in `dir`.
pub fn ca(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=elect test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    );
}

/// `NAME.key` and `NAME.crt` (common name `cn`, extensions `ext`), signed by the CA in `dir`.
pub fn sign(dir: &Path, name: &str, cn: &str, ext: &str) {
    let ext_file = format!("{name}.ext");
    std::fs::write(dir.join(&ext_file), ext).unwrap_or_else(|e| panic!("write {ext_file}: {e}"));
    let (key, csr, crt) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext_file,
            "-out",
            &crt,
        ],
    );
}

/// Runs `openssl ARGS...` in `dir`; fails the test if it cannot run or fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run openssl ({e}): install the openssl package"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
