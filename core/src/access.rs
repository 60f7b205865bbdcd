//! Who may do what: roles, service scopes, and the decision for one call.
//! Pure: the daemon authenticates a caller (a bearer token, or a client
//! certificate's identity) into a [`Grant`], and asks [`Grant::allows`]
//! whether it covers what a call [`Need`]s.
//!
//! The model is role-based access control as in Kubernetes RBAC (a subject
//! bound to a role) and etcd's auth (read or read-write roles), with Consul's
//! ACL service rules for scope: a backend or client grant names the services
//! it covers, by exact name or glob (`shop-*`). Globs follow fnmatch(3)
//! restricted to `*` (any run of characters, including none); service names
//! cannot contain `*`, so a pattern without one is an exact name.
//!
//! Roles:
//! - `backend`: register, report and deregister instances of its services;
//! - `client`: subscribe to its services (lb-client, grpclb);
//! - `admin-read-only`: every read of the operator API;
//! - `admin`: everything, on every service.

use std::fmt;

use crate::model::{bounded, FieldError};

/// Longest token name.
pub const MAX_NAME_LEN: usize = 64;
/// Most service patterns on one grant.
pub const MAX_PATTERNS: usize = 64;
/// Longest service pattern.
pub const MAX_PATTERN_LEN: usize = crate::model::MAX_SERVICE_LEN;

/// What a grant lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Register and report for its services.
    Backend,
    /// Subscribe to its services.
    Client,
    /// Read the operator API.
    AdminReadOnly,
    /// Everything.
    Admin,
}

impl Role {
    /// Every role, in the order `token list` shows them.
    pub const ALL: [Role; 4] = [
        Role::Admin,
        Role::AdminReadOnly,
        Role::Backend,
        Role::Client,
    ];

    /// The role's name (`backend`, `client`, `admin-read-only`, `admin`).
    pub fn name(self) -> &'static str {
        match self {
            Role::Backend => "backend",
            Role::Client => "client",
            Role::AdminReadOnly => "admin-read-only",
            Role::Admin => "admin",
        }
    }

    /// The role named `name`.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Whether grants of this role name their services (admins cover all).
    pub fn is_scoped(self) -> bool {
        matches!(self, Role::Backend | Role::Client)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A service name or a glob over service names (`shop-*`, `*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pattern(String);

impl Pattern {
    /// Checks `text` (service-name characters and `*`).
    pub fn parse(text: &str, field: &str) -> Result<Pattern, FieldError> {
        if text.is_empty() || text.len() > MAX_PATTERN_LEN {
            return Err(FieldError::new(
                field,
                format!("must be 1..={MAX_PATTERN_LEN} bytes"),
            ));
        }
        if let Some(c) = text
            .chars()
            .find(|&c| !(c == '*' || c.is_ascii_alphanumeric() || "._-/".contains(c)))
        {
            return Err(FieldError::new(
                field,
                format!(
                    "{:?} holds {c:?}; use service-name characters [A-Za-z0-9._-/] and * for any run of them",
                    bounded(text.to_string(), 64)
                ),
            ));
        }
        Ok(Pattern(text.to_string()))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `service` matches: `*` stands for any run of characters.
    /// Linear backtracking over the last `*` (the classic wildcard matcher),
    /// O(len(pattern) · len(service)) at worst.
    pub fn matches(&self, service: &str) -> bool {
        let (p, s) = (self.0.as_bytes(), service.as_bytes());
        let (mut pi, mut si) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while si < s.len() {
            if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, si));
                pi += 1;
            } else if pi < p.len() && p[pi] == s[si] {
                pi += 1;
                si += 1;
            } else if let Some((sp, ss)) = star {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&c| c == b'*')
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A role over some services: what one token or certificate identity may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The role.
    pub role: Role,
    /// The services it covers (empty for admins, who cover all).
    pub services: Vec<Pattern>,
}

impl Grant {
    /// Checks a grant as an operator asked for it: backend and client grants
    /// name at least one service pattern, admin grants none.
    pub fn new(role: Role, services: Vec<Pattern>) -> Result<Grant, FieldError> {
        if role.is_scoped() && services.is_empty() {
            return Err(FieldError::new(
                "services",
                format!("a {role} token must name its services (a name or a glob such as shop-*; * for all)"),
            ));
        }
        if !role.is_scoped() && !services.is_empty() {
            return Err(FieldError::new(
                "services",
                format!("a {role} token covers every service; name none"),
            ));
        }
        if services.len() > MAX_PATTERNS {
            return Err(FieldError::new(
                "services",
                format!("at most {MAX_PATTERNS} patterns"),
            ));
        }
        Ok(Grant { role, services })
    }

    /// An admin grant.
    pub fn admin() -> Grant {
        Grant {
            role: Role::Admin,
            services: Vec::new(),
        }
    }

    /// A grant from its wire or stored form: a role's name and service
    /// patterns (a bad one is named `services[i]`).
    pub fn parse(role: &str, services: &[String]) -> Result<Grant, FieldError> {
        let role = Role::parse(role).ok_or_else(|| {
            FieldError::new(
                "role",
                format!(
                    "{:?} is not a role; use one of backend, client, admin-read-only, admin",
                    bounded(role.to_string(), 32)
                ),
            )
        })?;
        let services = services
            .iter()
            .enumerate()
            .map(|(i, s)| Pattern::parse(s, &format!("services[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Grant::new(role, services)
    }

    /// Whether this grant covers `need`; if not, why, in words that name the
    /// missing role or scope.
    pub fn allows(&self, need: &Need) -> Result<(), Denied> {
        let role_ok = match (need, self.role) {
            (_, Role::Admin) => return Ok(()),
            (Need::Backend(_), r) => r == Role::Backend,
            (Need::Client(_), r) => r == Role::Client || r == Role::AdminReadOnly,
            (Need::AdminRead, r) => r == Role::AdminReadOnly,
            (Need::AdminWrite, _) => false,
        };
        if !role_ok {
            return Err(Denied::Role {
                needs: need.roles(),
                has: self.role,
            });
        }
        match need.service() {
            Some(service) if self.role.is_scoped() => {
                if self.services.iter().any(|p| p.matches(service)) {
                    Ok(())
                } else {
                    Err(Denied::Scope {
                        role: self.role,
                        covers: bounded(self.scope(), 256),
                        service: bounded(service.to_string(), 64),
                    })
                }
            }
            _ => Ok(()),
        }
    }

    /// The scope as `token list` shows it (`*` for admins).
    pub fn scope(&self) -> String {
        if self.role.is_scoped() {
            self.services
                .iter()
                .map(Pattern::as_str)
                .collect::<Vec<_>>()
                .join(",")
        } else {
            "*".to_string()
        }
    }
}

/// What one call needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Register, report for or deregister an instance of this service.
    Backend(String),
    /// Subscribe to this service.
    Client(String),
    /// Read the operator API.
    AdminRead,
    /// Change anything through the operator API.
    AdminWrite,
}

impl Need {
    /// The service the call is about, if any.
    pub fn service(&self) -> Option<&str> {
        match self {
            Need::Backend(s) | Need::Client(s) => Some(s),
            Need::AdminRead | Need::AdminWrite => None,
        }
    }

    /// The roles that satisfy it, for error messages.
    fn roles(&self) -> &'static str {
        match self {
            Need::Backend(_) => "backend (or admin)",
            Need::Client(_) => "client (or admin)",
            Need::AdminRead => "admin-read-only or admin",
            Need::AdminWrite => "admin",
        }
    }
}

/// Why a grant does not cover a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The grant's role cannot make this call.
    #[error("this call needs the {needs} role; the caller has {has}")]
    Role {
        /// Roles that could.
        needs: &'static str,
        /// The caller's.
        has: Role,
    },
    /// The grant's role fits, but not for this service.
    #[error("the caller's {role} grant covers {covers}, not service {service:?}")]
    Scope {
        /// The caller's role.
        role: Role,
        /// The services the grant covers (bounded).
        covers: String,
        /// The service asked for (bounded).
        service: String,
    },
}

impl Denied {
    /// A short label for metrics (`role`, `scope`).
    pub fn reason(&self) -> &'static str {
        match self {
            Denied::Role { .. } => "role",
            Denied::Scope { .. } => "scope",
        }
    }
}

/// Checks a token's name: 1..=64 bytes of `[A-Za-z0-9._-]`.
pub fn check_name(name: &str, field: &str) -> Result<(), FieldError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(FieldError::new(
            field,
            format!("must be 1..={MAX_NAME_LEN} bytes"),
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(FieldError::new(
            field,
            format!("{:?}: use [A-Za-z0-9._-]", bounded(name.to_string(), 64)),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s, "p").unwrap()
    }

    fn grant(role: Role, pats: &[&str]) -> Grant {
        Grant::new(role, pats.iter().map(|s| p(s)).collect()).unwrap()
    }

    #[test]
    fn globs_match_like_fnmatch_with_star_only() {
        assert!(p("shop-*").matches("shop-cart"));
        assert!(p("shop-*").matches("shop-"));
        assert!(!p("shop-*").matches("shop"));
        assert!(!p("shop-*").matches("xshop-cart"));
        assert!(p("*").matches("anything"));
        assert!(p("a*b*c").matches("aXXbYYc"));
        assert!(p("a*b*c").matches("abc"));
        assert!(!p("a*b*c").matches("aXXbYY"));
        assert!(p("*-prod").matches("shop-prod"));
        assert!(!p("*-prod").matches("shop-prod2"));
        assert!(p("echo").matches("echo"));
        assert!(!p("echo").matches("echo2"));
        assert!(p("**").matches(""));
    }

    #[test]
    fn patterns_refuse_other_characters_and_say_which() {
        let e = Pattern::parse("shop?", "services[0]").unwrap_err();
        assert_eq!(e.field, "services[0]");
        assert!(e.reason.contains("'?'"), "{e}");
        assert!(Pattern::parse("", "s").is_err());
        assert!(Pattern::parse(&"a".repeat(254), "s").is_err());
    }

    #[test]
    fn a_backend_grant_covers_its_services_only() {
        let g = grant(Role::Backend, &["shop-*"]);
        assert_eq!(g.allows(&Need::Backend("shop-cart".into())), Ok(()));
        let e = g.allows(&Need::Backend("billing".into())).unwrap_err();
        assert_eq!(e.reason(), "scope");
        assert!(e.to_string().contains("\"billing\""), "{e}");
        let e = g.allows(&Need::Client("shop-cart".into())).unwrap_err();
        assert_eq!(e.reason(), "role");
        assert!(e.to_string().contains("needs the client"), "{e}");
        assert_eq!(g.allows(&Need::AdminRead).unwrap_err().reason(), "role");
        assert_eq!(g.allows(&Need::AdminWrite).unwrap_err().reason(), "role");
    }

    #[test]
    fn admins_read_or_write_everything_as_their_role_says() {
        let ro = grant(Role::AdminReadOnly, &[]);
        assert_eq!(ro.allows(&Need::AdminRead), Ok(()));
        assert_eq!(ro.allows(&Need::Client("x".into())), Ok(()));
        assert_eq!(ro.allows(&Need::AdminWrite).unwrap_err().reason(), "role");
        assert_eq!(
            ro.allows(&Need::Backend("x".into())).unwrap_err().reason(),
            "role"
        );
        let rw = Grant::admin();
        for need in [
            Need::AdminRead,
            Need::AdminWrite,
            Need::Backend("x".into()),
            Need::Client("y".into()),
        ] {
            assert_eq!(rw.allows(&need), Ok(()), "{need:?}");
        }
    }

    #[test]
    fn grants_are_checked_as_asked_for() {
        assert!(Grant::new(Role::Backend, vec![]).is_err());
        assert!(Grant::new(Role::Admin, vec![p("x")]).is_err());
        assert_eq!(grant(Role::Client, &["a", "b*"]).scope(), "a,b*");
        assert_eq!(Grant::admin().scope(), "*");
        for r in Role::ALL {
            assert_eq!(Role::parse(r.name()), Some(r));
        }
        assert!(check_name("shop-deploy.v2", "name").is_ok());
        assert!(check_name("", "name").is_err());
        assert!(check_name("a b", "name").is_err());
    }
}
