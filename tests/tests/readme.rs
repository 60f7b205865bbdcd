//! The README cannot drift from the CLI: every `lb-server ctl` line in its
//! `sh` code blocks runs, in order, against a real daemon (with
//! authentication on, so the token commands work as written), and must
//! succeed.
//!
//! The README's examples assume services that already have instances, as a
//! running deployment has; before the lines run, each service they name
//! gets a static placeholder instance (`seed-0`), and each instance a
//! `set-weight`/`drain`/`undrain` line names is put in place as a static
//! instance too. A service whose first line creates it (`--create`) is left
//! alone, so that line runs on a fresh service as the README shows it.

use std::collections::BTreeSet;
use std::path::Path;

use lb_tests::harness::{ctl_command, succeeded, wait_until, Daemon, WAIT};

/// The `ctl` lines of the README's `sh` blocks, each split into words
/// (after `lb-server ctl`), comments dropped.
fn readme_ctl_lines(readme: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut in_sh = false;
    for line in readme.lines() {
        let t = line.trim_start();
        if let Some(lang) = t.strip_prefix("```") {
            in_sh = !in_sh && (lang == "sh" || lang == "bash");
            continue;
        }
        if !in_sh {
            continue;
        }
        if let Some(rest) = t.strip_prefix("lb-server ctl ") {
            out.push(words(rest));
        }
    }
    out
}

/// Shell-like words: whitespace separates, `'…'` and `"…"` quote, an
/// unquoted `#` starts a comment.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word: Option<String> = None;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_with(String::new).push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            (None, '#') if word.is_none() => break,
            (None, c) if c.is_whitespace() => out.extend(word.take()),
            (None, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    out.extend(word);
    out
}

/// The service a command names (its first argument), for the commands that
/// take one.
fn service_of(args: &[String]) -> Option<&str> {
    match args.first()?.as_str() {
        "services" | "token" => None,
        _ => args.get(1).map(String::as_str),
    }
}

fn ctl_ok(d: &Daemon, args: &[String]) -> String {
    let out = ctl_command(&d.addr(), &d.data_dir)
        .args(args)
        .output()
        .expect("run lb-server ctl");
    succeeded(out, &format!("lb-server ctl {}", args.join(" ")))
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_readme_words_are_split_as_a_shell_would() {
    assert_eq!(
        words("token create --service 'shop-*' --name a   # prints it"),
        strings(&["token", "create", "--service", "shop-*", "--name", "a"])
    );
    assert_eq!(words(r#"get "a b" x#y"#), strings(&["get", "a b", "x#y"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ctl_line_in_the_readme_runs() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let lines = readme_ctl_lines(&readme);
    assert!(lines.len() >= 30, "found only {} ctl lines", lines.len());

    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("data"), "127.0.0.1:0", &["--auth"]).expect("daemon");
    let token = d.data_dir.join("admin.token");
    assert!(
        wait_until(WAIT, || std::fs::metadata(&token)
            .is_ok_and(|m| m.len() > 0))
        .await,
        "the daemon writes its admin token"
    );

    // What the examples take for granted: their services, and the
    // instances they act on.
    let mut seeded: BTreeSet<String> = BTreeSet::new();
    let mut created_by_line: BTreeSet<String> = BTreeSet::new();
    let mut instances: BTreeSet<(String, String)> = BTreeSet::new();
    for args in &lines {
        let Some(service) = service_of(args) else {
            continue;
        };
        if !seeded.contains(service) && !created_by_line.contains(service) {
            if args.iter().any(|a| a == "--create") {
                created_by_line.insert(service.to_string());
            } else {
                seeded.insert(service.to_string());
            }
        }
        if matches!(args[0].as_str(), "set-weight" | "drain" | "undrain") {
            if let Some(id) = args.get(2) {
                instances.insert((service.to_string(), id.clone()));
            }
        }
    }
    for (n, service) in seeded.iter().enumerate() {
        ctl_ok(
            &d,
            &strings(&[
                "put-static",
                service,
                "seed-0",
                &format!("127.0.0.1:{}", 20_000 + n),
                "--create",
            ]),
        );
    }
    for (n, (service, id)) in instances.iter().enumerate() {
        ctl_ok(
            &d,
            &strings(&[
                "put-static",
                service,
                id,
                &format!("127.0.0.1:{}", 21_000 + n),
            ]),
        );
    }

    for args in &lines {
        ctl_ok(&d, args);
    }
}
