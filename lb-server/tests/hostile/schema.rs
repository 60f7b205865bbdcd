//! The request messages' fields, read from the `.proto` files themselves
//! (compiled with protox, as `lb-proto`'s build does), so "the error names a
//! real field" is checked against the API's definition, not a copy of it.
//!
//! A field path is what a [`FieldError`] names: dotted field names from the
//! request root, each optionally followed by a subscript (`[3]` into a
//! repeated field, `["key"]` or `[14]` into a map), e.g.
//! `cluster.methods["/p.S/m"].retry_on[0]`. Two more forms occur: a map of
//! strings followed by `.KEY` (`policy.params.max_list_len`: the
//! parameter's name) and a oneof's name (`msg`: none of its fields was
//! set). Subscripts quote input and may have been cut by
//! [`lb_core::model::bounded`]; a cut ends the subscript.
//!
//! [`FieldError`]: lb_core::model::FieldError

use std::collections::HashMap;
use std::sync::OnceLock;

use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto};

/// Every message of `lb.v1` and `grpc.lb.v1`, by full name (`.lb.v1.Instance`).
pub struct Schema {
    messages: HashMap<String, DescriptorProto>,
    /// Every RPC: its method name and its request's full name.
    methods: Vec<(String, String)>,
}

impl Schema {
    /// The schema, compiled once per process.
    pub fn get() -> &'static Schema {
        static SCHEMA: OnceLock<Schema> = OnceLock::new();
        SCHEMA.get_or_init(|| {
            let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");
            let fds = protox::compile(["lb/v1/lb.proto", "grpc/lb/v1/load_balancer.proto"], [root])
                .expect("the .proto files compile");
            let mut messages = HashMap::new();
            let mut methods = Vec::new();
            for file in fds.file {
                let package = file.package().to_string();
                for m in file.message_type {
                    add(&mut messages, &format!(".{package}"), m);
                }
                for s in &file.service {
                    for m in &s.method {
                        methods.push((m.name().to_string(), m.input_type().to_string()));
                    }
                }
            }
            Schema { messages, methods }
        })
    }

    /// Every RPC of the API: its method name (`ReportLoad`) and its
    /// request's full name (`.lb.v1.ReportLoadRequest`).
    pub fn methods(&self) -> &[(String, String)] {
        &self.methods
    }

    /// Checks that `path` names a field of `message` (a full name such as
    /// `.lb.v1.RegisterRequest`); the error says where it stops making sense.
    pub fn check(&self, message: &str, path: &str) -> Result<(), String> {
        if path.is_empty() {
            return Err("empty field path".into());
        }
        let mut msg = self
            .messages
            .get(message)
            .ok_or_else(|| format!("no message {message}"))?;
        let mut rest = path;
        loop {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let (name, after) = rest.split_at(end);
            if name.is_empty() {
                return Err(format!("{path:?}: expected a field name at {rest:?}"));
            }
            let Some(field) = msg.field.iter().find(|f| f.name() == name) else {
                // A oneof's name: none of its fields was set.
                if msg.oneof_decl.iter().any(|o| o.name() == name) && after.is_empty() {
                    return Ok(());
                }
                return Err(format!("{path:?}: {} has no field {name:?}", msg.name()));
            };
            rest = after;
            // What the path continues into after this field (and a subscript).
            let map_value = self.map_value(field);
            let subscripted = if rest.starts_with('[') {
                if field.label() != Label::Repeated {
                    return Err(format!("{path:?}: {name} is not repeated or a map"));
                }
                rest = subscript(&rest[1..]).ok_or_else(|| format!("{path:?}: bad subscript"))?;
                true
            } else {
                false
            };
            if rest.is_empty() {
                return Ok(());
            }
            let Some(tail) = rest.strip_prefix('.') else {
                return Err(format!("{path:?}: unexpected {rest:?}"));
            };
            let next = match map_value {
                // A map of strings followed by `.KEY`: the key, verbatim.
                Some(v) if !subscripted && v.r#type() == Type::String => return Ok(()),
                Some(v) if subscripted && v.r#type() == Type::Message => v.type_name(),
                Some(_) => return Err(format!("{path:?}: nothing inside {name}'s values")),
                None if field.r#type() == Type::Message
                    && (subscripted || field.label() != Label::Repeated) =>
                {
                    field.type_name()
                }
                None => return Err(format!("{path:?}: {name} has no fields")),
            };
            msg = self
                .messages
                .get(next)
                .ok_or_else(|| format!("no message {next}"))?;
            rest = tail;
        }
    }

    /// The value field of a map field's entry message, if `field` is a map.
    fn map_value(&self, field: &FieldDescriptorProto) -> Option<&FieldDescriptorProto> {
        if field.r#type() != Type::Message || field.label() != Label::Repeated {
            return None;
        }
        let entry = self.messages.get(field.type_name())?;
        entry
            .options
            .as_ref()
            .is_some_and(|o| o.map_entry())
            .then(|| entry.field.iter().find(|f| f.number() == 2))
            .flatten()
    }
}

fn add(messages: &mut HashMap<String, DescriptorProto>, scope: &str, m: DescriptorProto) {
    let name = format!("{scope}.{}", m.name());
    for nested in m.nested_type.clone() {
        add(messages, &name, nested);
    }
    messages.insert(name, m);
}

/// The rest of a path after a subscript's `[` (and its `]`), or `None` if
/// the subscript is malformed. A quoted key is a Rust debug string; a cut
/// (`… (N bytes)`) ends the subscript wherever it is.
fn subscript(s: &str) -> Option<&str> {
    if let Some(quoted) = s.strip_prefix('"') {
        let mut i = 0;
        let bytes = quoted.as_bytes();
        while i < bytes.len() {
            if let Some(after) = cut(&quoted[i..]) {
                return Some(after);
            }
            match bytes[i] {
                b'\\' => {
                    if let Some(after) = cut(&quoted[i + 1..]) {
                        return Some(after);
                    }
                    i += 1;
                    // Skip the escaped character, whatever its length.
                    i += quoted[i..].chars().next().map_or(0, char::len_utf8);
                }
                b'"' => {
                    let after = &quoted[i + 1..];
                    return after.strip_prefix(']').or_else(|| cut(after));
                }
                _ => i += quoted[i..].chars().next().map_or(1, char::len_utf8),
            }
        }
        // Cut off before its end.
        Some("")
    } else {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        if end == 0 {
            return None;
        }
        let after = &s[end..];
        after.strip_prefix(']').or_else(|| cut(after))
    }
}

/// The rest after a cut marker (`… (N bytes)`) at the start of `s`.
fn cut(s: &str) -> Option<&str> {
    let s = s.strip_prefix("… (")?;
    let end = s.find(|c: char| !c.is_ascii_digit())?;
    if end == 0 {
        return None;
    }
    s[end..].strip_prefix(" bytes)")
}

#[test]
fn paths_are_checked_against_the_proto() {
    let s = Schema::get();
    let ok = [
        (".lb.v1.RegisterRequest", "instance"),
        (".lb.v1.RegisterRequest", "instance.weight"),
        (".lb.v1.RegisterRequest", "instance.labels[\"a\\\"]b\"]"),
        (".lb.v1.RegisterRequest", "ttl_ms"),
        (".lb.v1.ReportLoadRequest", "msg"),
        (".lb.v1.ReportLoadRequest", "register.instance.address"),
        (".lb.v1.ReportLoadRequest", "report.named_metrics[\"x\"]"),
        (
            ".lb.v1.SubscribeRequest",
            "stats.instances[3].failed_by_code[17]",
        ),
        (".lb.v1.SetPolicyRequest", "policy.params.max_list_len"),
        (
            ".lb.v1.SetClusterRequest",
            "cluster.methods[\"/p.S/m\"].retry_on[0]",
        ),
        (
            ".lb.v1.SetClusterRequest",
            "cluster.methods[\"/ssss… (300 bytes).retry_on[0]",
        ),
        (
            ".lb.v1.PutRuleRequest",
            "rule.when_request[\"kkk… (900 bytes)",
        ),
        (
            ".grpc.lb.v1.LoadBalanceRequest",
            "client_stats.calls_finished_with_drop[2].load_balance_token",
        ),
    ];
    for (m, p) in ok {
        assert_eq!(s.check(m, p), Ok(()), "{m} {p}");
    }
    let bad = [
        (".lb.v1.RegisterRequest", ""),
        (".lb.v1.RegisterRequest", "labels"),
        (".lb.v1.RegisterRequest", "instance.weight.x"),
        (".lb.v1.RegisterRequest", "ttl_ms[0]"),
        (".lb.v1.PutRuleRequest", "rule.when.request"),
        (".lb.v1.PutRuleRequest", "rule.target.selector"),
        (".lb.v1.SetClusterRequest", "cluster.methods.x"),
        (".lb.v1.SetClusterRequest", "rules"),
    ];
    for (m, p) in bad {
        assert!(s.check(m, p).is_err(), "{m} {p}");
    }
}
