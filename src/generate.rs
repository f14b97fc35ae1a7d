//! The man page and shell completions, generated from the clap definition.
//!
//! `elect generate DIR` writes `DIR/man/elect.1` and `DIR/completions/{elect.bash,_elect,elect.fish}`.
//! The generated files are committed; a test fails when they differ from what this code generates,
//! so they cannot drift from the flags.

use std::io;
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// Every generated file: its path under the output directory, and its content.
pub fn files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("man/elect.1", man_page()),
        ("completions/elect.bash", completion(Shell::Bash)),
        ("completions/_elect", completion(Shell::Zsh)),
        ("completions/elect.fish", completion(Shell::Fish)),
    ]
}

pub fn write_all(dir: &Path) -> io::Result<()> {
    for (path, content) in files() {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, content)?;
    }
    Ok(())
}

fn completion(shell: Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "elect", &mut out);
    out
}

/// One page for the whole tool: the top-level description, each subcommand's options, then the
/// sections a user looks for in a man page (exit status, environment, backends, examples).
fn man_page() -> Vec<u8> {
    let cmd = Cli::command();
    let man = clap_mangen::Man::new(cmd.clone()).date("");
    let mut out = Vec::new();
    let render = |f: &dyn Fn(&mut Vec<u8>) -> io::Result<()>| {
        let mut buf = Vec::new();
        f(&mut buf).expect("rendering to memory cannot fail");
        buf
    };
    out.extend(render(&|w| man.render_title(w)));
    out.extend(render(&|w| man.render_name_section(w)));
    out.extend(b".SH SYNOPSIS\n");
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let synopsis = render(&|w| clap_mangen::Man::new(sub.clone()).render_synopsis_section(w));
        let synopsis = String::from_utf8_lossy(&synopsis)
            .replacen(".SH SYNOPSIS\n", "", 1)
            .replacen("\\fB", "\\fBelect ", 1);
        out.extend(synopsis.into_bytes());
        out.extend(b".br\n");
    }
    out.extend(render(&|w| man.render_description_section(w)));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name().to_uppercase();
        let sub_man = clap_mangen::Man::new(sub.clone());
        let about = render(&|w| sub_man.render_description_section(w));
        let about = String::from_utf8_lossy(&about).replacen(
            ".SH DESCRIPTION",
            &format!(".SH ELECT {name}"),
            1,
        );
        out.extend(about.into_bytes());
        let options = render(&|w| sub_man.render_options_section(w));
        let options = String::from_utf8_lossy(&options).replacen(
            ".SH OPTIONS",
            &format!(".SS \"elect {} options\"", sub.get_name()),
            1,
        );
        out.extend(options.into_bytes());
    }
    out.extend(crate::manual::SECTIONS.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_page_names_every_flag_and_variable() {
        let page = String::from_utf8(man_page()).unwrap();
        for word in [
            "ttl",
            "renew",
            "grace",
            "wait",
            "conflict",
            "backend",
            "ELECT_TTL",
            "EXIT STATUS",
            "ENVIRONMENT",
            "EXAMPLES",
        ] {
            assert!(page.contains(word), "the man page lacks {word}");
        }
    }
}
