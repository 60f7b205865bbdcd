//! `lb-protoc`: the part of `protoc`'s command line that prost-build runs
//! (`--include_imports`, `--include_source_info`, `-o FILE`, `-I DIR`, the
//! `.proto` files), answered by protox, the pure-Rust compiler our own
//! protos use. `.cargo/config.toml` points `PROTOC` at `scripts/protoc`,
//! which builds this once, so crates whose build scripts run protoc
//! (etcd-client) build on a machine without one. A `PROTOC` set in the
//! environment wins.
//!
//! Source of the command line: prost-build's `Config::load_fds` and
//! protoc's `--help` (protobuf.dev, "Protocol Buffer Compiler").

use std::path::PathBuf;
use std::process::ExitCode;

/// What the command line asked for.
#[derive(Debug, Default)]
struct Args {
    includes: Vec<PathBuf>,
    files: Vec<PathBuf>,
    output: Option<PathBuf>,
    imports: bool,
    source_info: bool,
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args::default();
    while let Some(arg) = argv.next() {
        let mut value = |flag: &str| argv.next().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--include_imports" => a.imports = true,
            "--include_source_info" => a.source_info = true,
            "-o" | "--descriptor_set_out" => a.output = Some(value(&arg)?.into()),
            "-I" | "--proto_path" => a.includes.push(value(&arg)?.into()),
            "--version" => return Err("libprotoc 3.21 (lb-protoc, by protox)".into()),
            _ => {
                if let Some(v) = arg.strip_prefix("--descriptor_set_out=") {
                    a.output = Some(v.into());
                } else if let Some(v) = arg.strip_prefix("--proto_path=") {
                    a.includes.push(v.into());
                } else if let Some(v) = arg.strip_prefix("-I").filter(|v| !v.is_empty()) {
                    a.includes.push(v.into());
                } else if let Some(v) = arg.strip_prefix("-o").filter(|v| !v.is_empty()) {
                    a.output = Some(v.into());
                } else if arg.starts_with('-') {
                    return Err(format!(
                        "lb-protoc does not support {arg:?} (only what prost-build passes)"
                    ));
                } else {
                    a.files.push(arg.into());
                }
            }
        }
    }
    if a.includes.is_empty() {
        a.includes.push(".".into());
    }
    Ok(a)
}

fn compile(a: &Args) -> Result<(), String> {
    let mut compiler = protox::Compiler::new(&a.includes).map_err(|e| e.to_string())?;
    compiler.include_imports(a.imports);
    compiler.include_source_info(a.source_info);
    for f in &a.files {
        compiler
            .open_file(f)
            .map_err(|e| format!("{}: {e}", f.display()))?;
    }
    if let Some(out) = &a.output {
        std::fs::write(out, compiler.encode_file_descriptor_set())
            .map_err(|e| format!("{}: {e}", out.display()))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    match parse(std::env::args().skip(1)).and_then(|a| compile(&a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Args, String> {
        parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn reads_what_prost_build_passes() {
        let a = args("--include_imports --include_source_info -o /t/fds -I proto -Iextra --proto_path=more proto/a.proto b.proto").unwrap();
        assert!(a.imports && a.source_info);
        assert_eq!(a.output, Some("/t/fds".into()));
        assert_eq!(
            a.includes,
            [PathBuf::from("proto"), "extra".into(), "more".into()]
        );
        assert_eq!(a.files, [PathBuf::from("proto/a.proto"), "b.proto".into()]);
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        assert!(args("--rust_out=x a.proto")
            .unwrap_err()
            .contains("--rust_out"));
        assert!(args("-o").unwrap_err().contains("needs a value"));
    }

    #[test]
    fn compiles_a_file_into_a_descriptor_set() {
        let dir = std::env::temp_dir().join(format!("lb-protoc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("a.proto"),
            "syntax = \"proto3\"; package p; message M { int32 x = 1; }",
        )
        .unwrap();
        let out = dir.join("fds");
        let a = Args {
            includes: vec![dir.clone()],
            files: vec![dir.join("a.proto")],
            output: Some(out.clone()),
            imports: true,
            source_info: false,
        };
        compile(&a).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert!(bytes.windows(1).count() > 10);
        assert!(String::from_utf8_lossy(&bytes).contains("a.proto"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
