//! `ctl token create|list|revoke`: the tokens callers authenticate with.

use clap::Subcommand;
use lb_proto::v1 as pb;

use super::{say, show, About, Ctx, Failure};

/// `ctl token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it (once: the daemon keeps only its digest;
    /// json: the daemon's answer, the secret in `token`).
    ///
    /// Example: `ctl token create --role backend --service 'shop-*' --name shop-deploy`
    Create {
        /// backend (register and report), client (subscribe, grpclb),
        /// admin-read-only, or admin.
        #[arg(long)]
        role: String,
        /// A service it covers, a name or a glob such as `shop-*`
        /// (repeatable; backend and client roles need at least one).
        #[arg(long = "service")]
        services: Vec<String>,
        /// A unique name: what audit logs, `token list` and `token revoke`
        /// call it.
        #[arg(long)]
        name: String,
        /// Instead of a secret, grant the role to client certificates with
        /// this identity (SPIFFE ID or subject; mTLS).
        #[arg(long)]
        identity: Option<String>,
    },
    /// List tokens: name, role, services, created, last used.
    List,
    /// Revoke a token: calls with it are refused and the streams it opened
    /// end within a second.
    Revoke {
        /// The token's name.
        name: String,
    },
}

pub(crate) async fn run(ctx: &mut Ctx, cmd: TokenCommand) -> Result<(), Failure> {
    match cmd {
        TokenCommand::Create {
            role,
            services,
            name,
            identity,
        } => {
            let r = ctx
                .admin
                .create_token(pb::CreateTokenRequest {
                    name,
                    role,
                    services,
                    identity: identity.unwrap_or_default(),
                })
                .await
                .map_err(|s| ctx.refused(s))?
                .into_inner();
            ctx.answer(&r, || {
                if r.token.is_empty() {
                    if let Some(i) = &r.info {
                        say!("bound certificate identity {:?} to {}", i.identity, i.name);
                    }
                } else {
                    // Only the token on stdout, so that `> file` captures it.
                    say!("{}", r.token);
                    eprintln!("(shown once: the daemon keeps only its digest)");
                }
            })
        }
        TokenCommand::List => {
            let r = ctx
                .admin
                .list_tokens(pb::ListTokensRequest {})
                .await
                .map_err(|s| ctx.refused(s))?
                .into_inner();
            ctx.answer(&r, || list(&r.tokens))
        }
        TokenCommand::Revoke { name } => {
            let r = ctx
                .admin
                .revoke_token(pb::RevokeTokenRequest { name: name.clone() })
                .await
                .map_err(|s| ctx.refused(s))?
                .into_inner();
            ctx.answer(&About::new(&[("name", &name)], &r), || {
                if r.existed {
                    say!("revoked {name}");
                } else {
                    say!("no token named {name}");
                }
            })
        }
    }
}

/// What `token list` prints: one line per token.
fn list(tokens: &[pb::TokenInfo]) {
    say!(
        "{:<24} {:<16} {:<28} {:<20} {:<20} {}",
        "NAME",
        "ROLE",
        "SERVICES",
        "CREATED",
        "LAST USED",
        "IDENTITY"
    );
    for t in tokens {
        say!(
            "{:<24} {:<16} {:<28} {:<20} {:<20} {}",
            t.name,
            t.role,
            if t.services.is_empty() {
                "-".into()
            } else {
                t.services.join(",")
            },
            show::time(t.created_unix_ms),
            show::time(t.last_used_unix_ms),
            if t.identity.is_empty() {
                "-"
            } else {
                &t.identity
            },
        );
    }
}
