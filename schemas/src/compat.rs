//! Backward compatibility between two versions of a contract.
//!
//! A new version must read every event the old one accepted, so that a
//! source can move to the new version (and the batch layer can re-read the
//! whole archive with it) without dead-lettering history. The rules:
//! - every old field still exists, with the same type or a widening one
//!   (int → float);
//! - a field required only in the new version, or an added field, must be
//!   optional or defaulted, because old events do not carry it;
//! - coercions and timestamp formats the old version accepted stay accepted;
//! - a string field's `max_length` may grow, never shrink;
//! - a field removed in the new version is only allowed when the new version
//!   ignores unknown fields (old events still carry it).

use crate::contract::{Contract, UnknownFieldPolicy};

/// Every reason `new` cannot read all events `old` accepted (empty: compatible).
pub fn check(old: &Contract, new: &Contract) -> Vec<String> {
    let mut problems = Vec::new();
    let label = format!("{} → v{}", old.label(), new.version);
    if new.version <= old.version {
        problems.push(format!(
            "{label}: the new version number must be greater than {}",
            old.version
        ));
    }
    for o in &old.fields {
        let Some(n) = new.field(&o.name) else {
            if new.unknown_fields == UnknownFieldPolicy::Reject {
                problems.push(format!(
                    "{label}: field {:?} was removed, so v{} would reject old events that carry it; keep the field (optional) or set \"unknown_fields\": \"ignore\"",
                    o.name, new.version
                ));
            }
            continue;
        };
        if !o.ty.widens_to(n.ty) {
            problems.push(format!(
                "{label}: field {:?} changed type {} → {}; only widening changes (int → float) keep old events readable",
                o.name, o.ty, n.ty
            ));
        }
        if n.required && !o.required {
            problems.push(format!(
                "{label}: field {:?} became required, but old events may lack it; keep it optional or give it a default",
                o.name
            ));
        }
        if o.coerce && !n.coerce {
            problems.push(format!(
                "{label}: field {:?} no longer coerces, so old events sending it as a string would be rejected; keep \"coerce\": true",
                o.name
            ));
        }
        for format in &o.formats {
            if o.ty == crate::value::FieldType::Timestamp && !n.formats.contains(format) {
                problems.push(format!(
                    "{label}: field {:?} no longer accepts timestamp format {}; keep every format the old version accepted",
                    o.name,
                    format.name()
                ));
            }
        }
        match (o.max_length, n.max_length) {
            (None, Some(max)) => problems.push(format!(
                "{label}: field {:?} gained max_length {max}, which old events may exceed; remove it",
                o.name
            )),
            (Some(old_max), Some(new_max)) if new_max < old_max => problems.push(format!(
                "{label}: field {:?} max_length shrank {old_max} → {new_max}; it may only grow",
                o.name
            )),
            _ => {}
        }
    }
    for n in &new.fields {
        if old.field(&n.name).is_none() && n.required {
            problems.push(format!(
                "{label}: added field {:?} is required, but old events do not carry it; make it optional or give it a default",
                n.name
            ));
        }
    }
    if old.unknown_fields == UnknownFieldPolicy::Ignore
        && new.unknown_fields == UnknownFieldPolicy::Reject
    {
        problems.push(format!(
            "{label}: unknown_fields changed ignore → reject, so old events with extra keys would be rejected; keep \"ignore\""
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contract(version: u32, fields: &str, extra: &str) -> Contract {
        let text = format!(r#"{{"name":"c","version":{version}{extra},"fields":[{fields}]}}"#);
        Contract::from_json(&text, "c.json", None).unwrap()
    }

    const BASE: &str = r#"{"name":"t","type":"timestamp","required":true},{"name":"n","type":"int","coerce":true}"#;

    #[test]
    fn optional_addition_and_widening_are_compatible() {
        let old = contract(1, BASE, "");
        let new = contract(
            2,
            r#"{"name":"t","type":"timestamp","required":true},{"name":"n","type":"float","coerce":true},{"name":"r","type":"string"}"#,
            "",
        );
        assert!(check(&old, &new).is_empty(), "{:?}", check(&old, &new));
    }

    #[test]
    fn breaking_changes_are_named() {
        let old = contract(1, BASE, "");
        let new = contract(
            2,
            r#"{"name":"t","type":"timestamp","required":true},{"name":"n","type":"string"},{"name":"x","type":"int","required":true}"#,
            "",
        );
        let problems = check(&old, &new).join("\n");
        assert!(
            problems.contains("field \"n\" changed type int → string"),
            "{problems}"
        );
        assert!(
            problems.contains("field \"n\" no longer coerces"),
            "{problems}"
        );
        assert!(
            problems.contains("added field \"x\" is required"),
            "{problems}"
        );

        let removed = contract(2, r#"{"name":"t","type":"timestamp","required":true}"#, "");
        assert!(
            check(&old, &removed)
                .join("")
                .contains("field \"n\" was removed")
        );
        let removed_ignored = contract(
            2,
            r#"{"name":"t","type":"timestamp","required":true}"#,
            r#","unknown_fields":"ignore""#,
        );
        assert!(check(&old, &removed_ignored).is_empty());
    }
}
