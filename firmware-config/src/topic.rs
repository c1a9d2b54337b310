//! MQTT topic filters, and tag names taken from topic levels: a tag on `plant/+/+/temp` named
//! `{2}_{3}_temp` reads `plant/line3/press1/temp` as `line3_press1_temp`. Levels count from 1.

/// Whether `topic` matches `filter`: `+` is one level, `#` (last) any number, none included
/// (MQTT 3.1.1, 4.7). A wildcard first level does not match a `$` topic.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut levels = topic.split('/');
    for part in filter.split('/') {
        match (part, levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (p, Some(level)) if p == level => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

/// One piece of a tag name template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamePart {
    /// Taken as written.
    Text(String),
    /// The topic's level at this position (1-based).
    Level(usize),
}

/// Splits a name template at its `{n}`: `None` if a brace does not close on a number from 1
/// to 99.
pub fn name_parts(template: &str) -> Option<Vec<NamePart>> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return None;
        }
        if open > 0 {
            parts.push(NamePart::Text(rest[..open].to_owned()));
        }
        let after = &rest[open + 1..];
        let close = after.find('}')?;
        let n: usize = after[..close]
            .parse()
            .ok()
            .filter(|n| (1..100).contains(n))?;
        if after[..close].starts_with(['+', '0']) {
            return None;
        }
        parts.push(NamePart::Level(n));
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(NamePart::Text(rest.to_owned()));
    }
    Some(parts)
}

/// Whether `c` may be part of a tag name.
pub fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// The name `parts` make of `topic`; an error names a level that cannot be part of a tag name
/// (or is missing).
pub fn expand(parts: &[NamePart], topic: &str) -> Result<String, String> {
    let levels: Vec<&str> = topic.split('/').collect();
    let mut name = String::new();
    for part in parts {
        match part {
            NamePart::Text(t) => name.push_str(t),
            NamePart::Level(n) => {
                let level = n
                    .checked_sub(1)
                    .and_then(|i| levels.get(i))
                    .ok_or_else(|| format!("the topic has no level {n}"))?;
                if level.is_empty() || level.len() > 128 || !level.chars().all(name_char) {
                    return Err(format!(
                        "its level {n}, `{}`, cannot be part of a tag name (letters, digits, '-' and '_' only)",
                        level.chars().take(128).collect::<String>()
                    ));
                }
                name.push_str(level);
            }
        }
    }
    Ok(name)
}

/// Whether `name` is one that `parts` can make (each level one or more name characters).
/// Linear in the parts times the name's length squared at worst: what failed is remembered.
pub fn could_make(parts: &[NamePart], name: &str) -> bool {
    fn go(
        parts: &[NamePart],
        name: &str,
        at: usize,
        failed: &mut std::collections::HashSet<(usize, usize)>,
    ) -> bool {
        let rest = &name[at..];
        let key = (parts.len(), at);
        if failed.contains(&key) {
            return false;
        }
        let made = match parts.split_first() {
            None => rest.is_empty(),
            Some((NamePart::Text(t), more)) => {
                rest.starts_with(t.as_str()) && go(more, name, at + t.len(), failed)
            }
            Some((NamePart::Level(_), more)) => {
                let longest = rest.find(|c| !name_char(c)).unwrap_or(rest.len());
                (1..=longest).any(|cut| go(more, name, at + cut, failed))
            }
        };
        if !made {
            failed.insert(key);
        }
        made
    }
    go(parts, name, 0, &mut std::collections::HashSet::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_as_mqtt_says() {
        assert!(matches("plant/+/temp", "plant/line3/temp"));
        assert!(!matches("plant/+/temp", "plant/line3/x/temp"));
        assert!(!matches("plant/+/temp", "plant/temp"));
        assert!(matches("plant/+", "plant/"), "an empty level is a level");
        assert!(matches("plant/#", "plant/a/b"));
        assert!(matches("plant/#", "plant"), "# includes the parent");
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
    }

    #[test]
    fn names_are_made_from_levels() {
        let parts = name_parts("{2}_{3}_temp").unwrap();
        assert_eq!(
            parts,
            vec![
                NamePart::Level(2),
                NamePart::Text("_".into()),
                NamePart::Level(3),
                NamePart::Text("_temp".into())
            ]
        );
        assert_eq!(
            expand(&parts, "plant/line3/press1/temp"),
            Ok("line3_press1_temp".into())
        );
        assert!(
            expand(&parts, "plant/line 3/press1/temp")
                .unwrap_err()
                .contains("level 2, `line 3`")
        );
        assert!(
            expand(&parts, "plant/line3/")
                .unwrap_err()
                .contains("level 3")
        );
        assert!(
            expand(&name_parts("{4}").unwrap(), "a/b")
                .unwrap_err()
                .contains("no level 4")
        );
        for bad in ["{", "{x}", "{0}", "{100}", "a}", "{+1}", "{01}"] {
            assert_eq!(name_parts(bad), None, "{bad}");
        }
        assert!(could_make(&parts, "line3_press1_temp"));
        assert!(could_make(&parts, "a_b_c_temp"), "a level may hold '_'");
        assert!(!could_make(&parts, "line3_temp"));
        assert!(!could_make(&parts, "line.3_press1_temp"));
        assert!(could_make(&name_parts("temp").unwrap(), "temp"));
        // Many levels against a long name that does not fit: answered at once.
        let many = name_parts(&format!(
            "{}x",
            (1..=20).map(|n| format!("{{{n}}}")).collect::<String>()
        ))
        .unwrap();
        assert!(!could_make(&many, &"a".repeat(60)));
        assert!(could_make(&many, &format!("{}x", "a".repeat(40))));
    }
}
