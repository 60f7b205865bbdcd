//! `lb-server --config lb.toml`: every daemon flag, in a TOML file.
//!
//! A file's value is given to the flag's environment variable (`LB_*`)
//! when the environment does not already set it, before the flags are
//! parsed; so the order clap applies is: a flag on the command line, then
//! the environment, then the file, then the default (the precedence of
//! Consul's and etcd's configuration files under their flags). Keys are
//! the flags' long names, with `-` or `_` (`report-interval` or
//! `report_interval`); a key that is no daemon flag is an error naming it.
//! Values are strings, numbers or booleans; a list is joined with commas
//! (the flags that take several values split on them).

use std::collections::BTreeSet;
use std::path::Path;

/// The flags a file may set: each long name with its environment variable.
pub type Known<'a> = &'a [(String, String)];

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// It could not be read.
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// It is not TOML.
    #[error("the configuration file {path} is not valid TOML: {why}")]
    Syntax {
        /// The file.
        path: String,
        /// Where and why.
        why: String,
    },
    /// A key names no daemon flag, or its value has no flag form.
    #[error("the configuration file {path}: {why}")]
    Key {
        /// The file.
        path: String,
        /// The key and what is wrong.
        why: String,
    },
}

/// The flag settings of a TOML document, as (environment variable, value).
pub fn settings(
    text: &str,
    path: &str,
    known: Known<'_>,
) -> Result<Vec<(String, String)>, FileError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| FileError::Syntax {
            path: path.to_string(),
            why: lb_core::model::bounded(e.to_string(), 512),
        })?;
    let mut out = Vec::with_capacity(table.len());
    for (key, value) in table {
        let name = key.replace('_', "-");
        let Some((_, env)) = known.iter().find(|(long, _)| *long == name) else {
            return Err(FileError::Key {
                path: path.to_string(),
                why: format!(
                    "{:?} is not an lb-server flag (`lb-server --help` lists them)",
                    lb_core::model::bounded(key, 64)
                ),
            });
        };
        let text = flag_text(&value).ok_or_else(|| FileError::Key {
            path: path.to_string(),
            why: format!(
                "{name}: a table is no flag value (give a string, number, boolean or list)"
            ),
        })?;
        out.push((env.clone(), text));
    }
    Ok(out)
}

fn flag_text(v: &toml::Value) -> Option<String> {
    Some(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(items) => items
            .iter()
            .map(flag_text)
            .collect::<Option<Vec<_>>>()?
            .join(","),
        toml::Value::Table(_) => return None,
    })
}

/// Reads `path` and sets, for each flag it names, the flag's environment
/// variable unless the environment already has it. Returns the variables
/// it set. Call before the runtime starts threads (it changes the
/// process's environment).
pub fn apply(path: &Path, known: Known<'_>) -> Result<BTreeSet<String>, FileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: shown.clone(),
        source,
    })?;
    let mut set = BTreeSet::new();
    for (env, value) in settings(&text, &shown, known)? {
        if std::env::var_os(&env).is_none() {
            std::env::set_var(&env, value);
            set.insert(env);
        }
    }
    Ok(set)
}

/// A value as TOML (what `--print-config` prints): bare for numbers and
/// booleans, quoted otherwise.
pub fn toml_value(raw: &str) -> String {
    // A TOML integer or decimal that reads back as the same text.
    let number = |s: &str| {
        let s = s.strip_prefix('-').unwrap_or(s);
        let (int, frac) = s.split_once('.').map_or((s, None), |(i, f)| (i, Some(f)));
        let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
        digits(int)
            && (int == "0" || !int.starts_with('0'))
            && frac.is_none_or(|f| digits(f) && !f.ends_with('0'))
    };
    let bare = raw == "true" || raw == "false" || number(raw);
    if bare {
        raw.to_string()
    } else {
        toml::Value::String(raw.to_string()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<(String, String)> {
        [
            ("listen", "LB_LISTEN"),
            ("report-interval", "LB_REPORT_INTERVAL"),
            ("auth", "LB_AUTH"),
            ("grpclb-anonymous", "LB_GRPCLB_ANONYMOUS"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
    }

    #[test]
    fn keys_are_flags_and_values_their_text() {
        let text = "listen = \"0.0.0.0:7400\"\nreport_interval = \"100ms\"\nauth = true\ngrpclb-anonymous = [\"shop-*\", \"web\"]\n";
        let got = settings(text, "lb.toml", &known()).unwrap();
        assert_eq!(
            got,
            [
                ("LB_AUTH".to_string(), "true".to_string()),
                ("LB_GRPCLB_ANONYMOUS".into(), "shop-*,web".into()),
                ("LB_LISTEN".into(), "0.0.0.0:7400".into()),
                ("LB_REPORT_INTERVAL".into(), "100ms".into()),
            ]
        );
    }

    #[test]
    fn an_unknown_key_or_a_table_is_refused_by_name() {
        let e = settings("lisen = \"x\"", "lb.toml", &known())
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"lisen\" is not an lb-server flag"), "{e}");
        let e = settings("[listen]\na = 1", "lb.toml", &known())
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen: a table"), "{e}");
        let e = settings("listen = ", "lb.toml", &known())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid TOML"), "{e}");
    }

    #[test]
    fn printed_values_read_back() {
        for raw in [
            "127.0.0.1:7400",
            "250ms",
            "true",
            "1024",
            "0.5",
            "a \"q\" b",
            "+1",
            "007",
            "1e3",
            "1.50",
            "-3",
        ] {
            let line = format!("k = {}", toml_value(raw));
            let t: toml::Table = line.parse().expect(&line);
            assert_eq!(flag_text(&t["k"]).unwrap(), raw, "{line}");
        }
    }
}
