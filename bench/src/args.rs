//! Command-line arguments the tools share.

/// Which lb-server to use and which service of it: the backend model
/// registers in the service, the load generator calls it.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// lb-server address.
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub daemon: String,
    /// The service (backends register in it, clients call it).
    #[arg(long, default_value = DEFAULT_SERVICE)]
    pub service: String,
}

/// The benchmark's service unless a scenario or a flag names another.
pub const DEFAULT_SERVICE: &str = "work";
