//! Where a value is written in a configuration file: the dotted path at a byte offset
//! (for the parser's errors, which know only an offset) and the offset of a dotted path
//! (for errors found after parsing, which know only the field). Read from the file's TOML
//! syntax tree (`toml_edit`, which keeps every key's and value's position), so tables,
//! arrays of tables, inline tables and dotted keys are all found where they are written.

use toml_edit::{ImDocument, Item, Table};

/// One step of a dotted path (`providers[1].timeout_ms`): a key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// `providers[1].timeout_ms` as steps; `None` when it is not such a path.
fn steps(field: &str) -> Option<Vec<Step>> {
    let mut out = Vec::new();
    for part in field.split('.') {
        let (key, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if key.is_empty() {
            return None;
        }
        out.push(Step::Key(key.to_string()));
        while let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            out.push(Step::Index(r[..end].parse().ok()?));
            rest = &r[end + 1..];
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(out)
}

/// The items along `steps`, as far as they are written (the root excluded).
fn walk<'a>(root: &'a Item, steps: &[Step]) -> Vec<&'a Item> {
    let mut out = Vec::new();
    let mut item = root;
    for step in steps {
        let next = match step {
            Step::Key(k) => item.get(k.as_str()),
            Step::Index(i) => item.get(*i),
        };
        let Some(next) = next else { break };
        out.push(next);
        item = next;
    }
    out
}

/// The byte offset where `field`'s value is written (`true`), or else where its nearest
/// written parent is (`false`: the `[[providers]]` entry, the `[server]` header; a field
/// that is itself a table counts as a parent, so that a caller may point at a value more
/// telling than the header). `None` when nothing of it is written or the text is not TOML.
pub fn find(text: &str, field: &str) -> Option<(usize, bool)> {
    let steps = steps(field)?;
    let doc = ImDocument::parse(text).ok()?;
    let items = walk(doc.as_item(), &steps);
    let exact = items.len() == steps.len() && items.last().is_some_and(|i| i.is_value());
    items.iter().enumerate().rev().find_map(|(i, item)| {
        item.span()
            .map(|s| (s.start, exact && i + 1 == steps.len()))
    })
}

/// The `bin` of the innermost array entry on `field`'s path (`providers[1]` of
/// `providers[1].timeout_ms`), when it has one: the entry an error belongs to, by name.
pub fn entry_bin(text: &str, field: &str) -> Option<String> {
    let steps = steps(field)?;
    let doc = ImDocument::parse(text).ok()?;
    let items = walk(doc.as_item(), &steps);
    steps
        .iter()
        .zip(items)
        .filter(|(step, _)| matches!(step, Step::Index(_)))
        .filter_map(|(_, entry)| entry.get("bin").and_then(Item::as_str))
        .next_back()
        .map(str::to_string)
}

/// The dotted path of the narrowest key or value written at byte `offset`
/// (`providers[1].timeout_ms`), or `None`.
pub fn path_at(text: &str, offset: usize) -> Option<String> {
    let doc = ImDocument::parse(text).ok()?;
    let mut best = Best {
        offset,
        found: None,
    };
    best.table(doc.as_table(), "");
    best.found.map(|(_, path)| path)
}

/// The narrowest span found so far that holds the offset, and its path.
struct Best {
    offset: usize,
    found: Option<(usize, String)>,
}

impl Best {
    fn consider(&mut self, span: Option<std::ops::Range<usize>>, path: &str) {
        let Some(span) = span else { return };
        let holds = span.contains(&self.offset) || span.start == self.offset;
        let width = span.end.saturating_sub(span.start);
        if holds && self.found.as_ref().is_none_or(|(w, _)| width <= *w) {
            self.found = Some((width, path.to_string()));
        }
    }

    fn table(&mut self, t: &Table, path: &str) {
        for (k, _) in t.iter() {
            if let Some((key, item)) = t.get_key_value(k) {
                let here = join(path, k);
                self.consider(key.span(), &here);
                self.item(item, &here);
            }
        }
    }

    fn item(&mut self, item: &Item, path: &str) {
        self.consider(item.span(), path);
        match item {
            Item::Table(t) => self.table(t, path),
            Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    let here = format!("{path}[{i}]");
                    self.consider(t.span(), &here);
                    self.table(t, &here);
                }
            }
            Item::Value(toml_edit::Value::InlineTable(t)) => {
                for (k, _) in t.iter() {
                    if let Some((key, item)) = t.get_key_value(k) {
                        let here = join(path, k);
                        self.consider(key.span(), &here);
                        self.item(item, &here);
                    }
                }
            }
            Item::Value(toml_edit::Value::Array(a)) => {
                for (i, v) in a.iter().enumerate() {
                    self.item(&Item::Value(v.clone()), &format!("{path}[{i}]"));
                }
            }
            Item::Value(_) | Item::None => {}
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[server]\nlisten = \"127.0.0.1:1\"\n\n[[providers]]\nbin = \"990340000011\"\nupstreams = [\n  \"https://a:1\",\n  \"https://b:2\",\n]\n\n[[providers]]\nbin = \"990340000022\"\ntimeout_ms = -5\nlimits = { per_second = 3 }\n";

    fn line(offset: usize) -> usize {
        TEXT[..offset].matches('\n').count() + 1
    }

    #[test]
    fn a_path_is_found_where_it_is_written_or_at_its_nearest_written_parent() {
        let at = |f: &str| find(TEXT, f).map(|(o, exact)| (line(o), exact));
        assert_eq!(at("server.listen"), Some((2, true)));
        assert_eq!(at("providers[1].timeout_ms"), Some((13, true)));
        assert_eq!(at("providers[0].upstreams[1]"), Some((8, true)));
        assert_eq!(at("providers[1].limits.per_second"), Some((14, true)));
        assert_eq!(
            at("server.grace_period_secs"),
            Some((1, false)),
            "the header"
        );
        assert_eq!(
            at("providers[1].eject_secs"),
            Some((11, false)),
            "the entry"
        );
        assert_eq!(at("tokens.issuer"), None, "nothing written");
        assert_eq!(at("not a [path"), None);
    }

    #[test]
    fn an_offset_is_named_by_its_full_path_and_its_entry_by_its_bin() {
        let offset = TEXT.find("-5").unwrap();
        assert_eq!(
            path_at(TEXT, offset).as_deref(),
            Some("providers[1].timeout_ms")
        );
        let key = TEXT.find("timeout_ms").unwrap();
        assert_eq!(
            path_at(TEXT, key).as_deref(),
            Some("providers[1].timeout_ms")
        );
        let url = TEXT.find("https://b:2").unwrap();
        assert_eq!(
            path_at(TEXT, url).as_deref(),
            Some("providers[0].upstreams[1]")
        );
        assert_eq!(
            entry_bin(TEXT, "providers[1].timeout_ms").as_deref(),
            Some("990340000022")
        );
        assert_eq!(entry_bin(TEXT, "server.listen"), None);
    }
}
