//! Stock gRPC clients (grpcio, gRPC's C-core) driven over stdin/stdout:
//! `tests/python/*_client.py` print one JSON object per line (a hello, then
//! one [`Batch`] per `calls` command). Their virtualenv comes from
//! `scripts/python-env.sh` ([`crate::harness::stock_python`]).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// How long [`StockClient::until`] waits for a batch that satisfies it.
pub const CONVERGE: Duration = Duration::from_secs(30);

/// The result of one batch of calls.
#[derive(Debug, Deserialize, Default)]
pub struct Batch {
    /// Successful calls, by the instance that answered.
    pub ok: BTreeMap<String, u64>,
    /// The `lb-token` each instance saw (grpclb only).
    #[serde(default)]
    pub tokens: BTreeMap<String, String>,
    /// Failed calls, by status code name.
    pub errors: BTreeMap<String, u64>,
    /// The first few failures' messages.
    pub details: Vec<String>,
}

impl Batch {
    /// Failed calls.
    pub fn errors(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Successful calls answered by `instance`.
    pub fn on(&self, instance: &str) -> u64 {
        self.ok.get(instance).copied().unwrap_or(0)
    }
}

/// One client process.
pub struct StockClient {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Its first line.
    pub hello: serde_json::Value,
}

impl StockClient {
    /// Starts `tests/python/SCRIPT` with `args` and reads its hello line.
    pub fn start(script: &str, args: &[String]) -> StockClient {
        let root = crate::harness::repo_root();
        let mut child = Command::new(crate::harness::stock_python())
            .arg(root.join("tests/python").join(script))
            .args(args)
            // C-core's info lines (fallback entered and left, xDS resources
            // that do not exist yet) are expected here.
            .env("GRPC_VERBOSITY", "ERROR")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the grpcio client");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut c = StockClient {
            child,
            stdin,
            stdout,
            hello: serde_json::Value::Null,
        };
        c.hello = serde_json::from_str(&c.line()).expect("a JSON hello");
        c
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).expect("read the client");
        assert!(n > 0, "the grpcio client exited");
        line
    }

    /// `n` sequential calls.
    pub fn calls(&mut self, n: u64) -> Batch {
        self.command(&format!(r#"{{"cmd":"calls","n":{n}}}"#))
    }

    /// Sends one command line and parses its one-line answer.
    pub fn command<T: serde::de::DeserializeOwned>(&mut self, line: &str) -> T {
        writeln!(self.stdin, "{line}").expect("write the client");
        self.stdin.flush().expect("flush");
        serde_json::from_str(&self.line()).expect("a JSON answer")
    }

    /// Makes batches of `n` calls until one satisfies `pred`, within
    /// [`CONVERGE`]; returns it, or fails with the last batch.
    pub fn until(&mut self, what: &str, n: u64, pred: impl Fn(&Batch) -> bool) -> Batch {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let b = self.calls(n);
            if pred(&b) {
                return b;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not seen within {CONVERGE:?}; last batch of {n}: {b:?}"
            );
        }
    }
}

impl Drop for StockClient {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, r#"{{"cmd":"quit"}}"#);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
