//! docs/configuration.md against the config structs, in both directions (issue 17, item 8):
//! every key server.toml and agent.toml accept has a row, and every row is a key they
//! accept. The keys come from the structs themselves: [`Probe`] is a `serde::Deserializer`
//! that answers `RawConfig`'s and `RawAgentConfig`'s `Deserialize` impls with nothing but
//! the field names they ask for, table by table. And deploy/server.toml and
//! deploy/agent.toml load with the real loader and show every key (commented or not).
//!
//! The doc's format, which this test reads: a `## server.toml` and a `## agent.toml`
//! part; in each, one `### ` heading per table (`### Top level`, `### [ca]`,
//! `### [[operator]]`, `### [[incident_source.route]]`, …) followed by a table whose rows
//! start with the key in backticks (`` | `data_dir` | … ``). Other `##` parts (such as
//! `## Logs`) are prose.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use writ::config::{RawAgentConfig, RawConfig};

/// A table of a config file: its path from the top (`["incident_source", "route"]`) and
/// whether it is an array of tables (`[[…]]`).
type Table = (Vec<&'static str>, bool);

/// What the probe found at the end of its path.
#[derive(Debug)]
enum Shape {
    /// A table with these keys; `array`: reached through a list (`[[…]]`).
    Table {
        keys: &'static [&'static str],
        array: bool,
    },
    /// A value: a string, number, list of values, enum, map of values, …
    Value,
}

/// A `Deserializer` that walks down `path`, one key per table, and records the shape of
/// what it finds there; then it stops the deserialization with an error (a config value
/// is never made). Options and lists are looked through.
struct Probe<'a> {
    path: &'a [&'static str],
    array: bool,
    found: &'a RefCell<Option<Shape>>,
}

impl Probe<'_> {
    fn value<T>(self) -> Result<T, de::value::Error> {
        if self.path.is_empty() {
            *self.found.borrow_mut() = Some(Shape::Value);
        }
        Err(de::Error::custom("probe: a value"))
    }
}

/// The one key of the path at this table, then its value (probed further).
struct OneKey<'a> {
    key: Option<&'static str>,
    value: Option<Probe<'a>>,
}

impl<'de> MapAccess<'de> for OneKey<'_> {
    type Error = de::value::Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        match self.key.take() {
            Some(key) => seed.deserialize(key.into_deserializer()).map(Some),
            None => Ok(None),
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        seed.deserialize(self.value.take().expect("one value per key"))
    }
}

/// One element of a list, probed.
struct OneElement<'a>(Option<Probe<'a>>);

impl<'de> SeqAccess<'de> for OneElement<'_> {
    type Error = de::value::Error;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        match self.0.take() {
            Some(probe) => seed.deserialize(probe).map(Some),
            None => Ok(None),
        }
    }
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = de::value::Error;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        keys: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let Some((&key, rest)) = self.path.split_first() else {
            *self.found.borrow_mut() = Some(Shape::Table {
                keys,
                array: self.array,
            });
            return Err(de::Error::custom("probe: found"));
        };
        visitor.visit_map(OneKey {
            key: Some(key),
            value: Some(Probe {
                path: rest,
                array: false,
                found: self.found,
            }),
        })
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_seq(OneElement(Some(Probe {
            array: true,
            ..self
        })))
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        self.value()
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.value()
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.value()
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.value()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.value()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit map identifier ignored_any
    }
}

/// The shape of what `T` holds at `path`.
fn shape<T: for<'de> serde::Deserialize<'de>>(path: &[&'static str]) -> Shape {
    let found = RefCell::new(None);
    let _ = T::deserialize(Probe {
        path,
        array: false,
        found: &found,
    });
    found
        .into_inner()
        .unwrap_or_else(|| panic!("the probe found nothing at {path:?}"))
}

/// Every table of `T`, and its keys: `T` itself and every table below it.
fn tables<T: for<'de> serde::Deserialize<'de>>() -> BTreeMap<Table, BTreeSet<&'static str>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![Vec::new()];
    while let Some(path) = todo.pop() {
        if let Shape::Table { keys, array } = shape::<T>(&path) {
            for key in keys {
                let mut below = path.clone();
                below.push(*key);
                todo.push(below);
            }
            out.insert((path, array), keys.iter().copied().collect());
        }
    }
    out
}

/// How a table is headed in the doc and in TOML: `Top level`, `[ca]`, `[[operator]]`.
fn heading((path, array): &Table) -> String {
    match (path.is_empty(), array) {
        (true, _) => "Top level".to_owned(),
        (false, false) => format!("[{}]", path.join(".")),
        (false, true) => format!("[[{}]]", path.join(".")),
    }
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)).unwrap()
}

/// The keys documented in `## FILE`, by `### ` heading; panics on a key listed twice.
fn documented(doc: &str, file: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut in_file = false;
    let mut section: Option<String> = None;
    for line in doc.lines() {
        if let Some(part) = line.strip_prefix("## ") {
            in_file = part.trim() == file;
            section = None;
        } else if let Some(heading) = line.strip_prefix("### ") {
            section = in_file.then(|| heading.trim().to_owned());
            if let Some(section) = &section {
                assert!(
                    out.insert(section.clone(), BTreeSet::new()).is_none(),
                    "docs/configuration.md: `### {section}` appears twice under `## {file}`"
                );
            }
        } else if let (Some(section), Some(row)) = (&section, line.strip_prefix("| `")) {
            let key = row.split('`').next().unwrap_or_default().to_owned();
            let keys = out.get_mut(section).unwrap();
            assert!(
                keys.insert(key.clone()),
                "docs/configuration.md: {file} {section} documents `{key}` twice"
            );
        }
    }
    out
}

/// Whether `key` of `table` is a table itself (its heading documents it, not a row).
fn is_table(structs: &BTreeMap<Table, BTreeSet<&'static str>>, table: &Table, key: &str) -> bool {
    let path: Vec<&str> = table.0.iter().copied().chain([key]).collect();
    structs
        .keys()
        .any(|(p, _)| p.len() == path.len() && p.iter().zip(&path).all(|(a, b)| a == b))
}

/// Both directions, every mismatch named.
fn check_reference(file: &str, structs: &BTreeMap<Table, BTreeSet<&'static str>>) -> Vec<String> {
    let doc = read("docs/configuration.md");
    let documented = documented(&doc, file);
    let mut problems = Vec::new();
    let accepted: BTreeMap<String, &BTreeSet<&str>> =
        structs.iter().map(|(t, keys)| (heading(t), keys)).collect();
    for (table, keys) in structs {
        let section = heading(table);
        let rows = documented.get(&section);
        if rows.is_none() {
            problems.push(format!(
                "{file} accepts the table {section}, which docs/configuration.md does not \
                 document: add `### {section}` under `## {file}` with a row per key"
            ));
        }
        for key in keys.iter().filter(|k| !is_table(structs, table, k)) {
            if !rows.is_some_and(|rows| rows.contains(*key)) {
                problems.push(format!(
                    "{file} accepts `{key}` in {section}, which docs/configuration.md does not \
                     document: add a row `` | `{key}` | type | default | meaning | `` under \
                     `### {section}` of `## {file}`"
                ));
            }
        }
    }
    for (section, rows) in &documented {
        let Some(keys) = accepted.get(section) else {
            problems.push(format!(
                "docs/configuration.md documents the table {section} under `## {file}`, which \
                 {file} does not accept"
            ));
            continue;
        };
        for row in rows {
            if !keys.contains(row.as_str()) {
                problems.push(format!(
                    "docs/configuration.md documents `{row}` in {file} {section}, which the \
                     config structs do not accept"
                ));
            }
        }
    }
    problems
}

/// The keys an example file mentions, commented out (`# key = …`) or not, by table.
fn example_keys(toml: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut section = "Top level".to_owned();
    out.insert(section.clone(), BTreeSet::new());
    for line in toml.lines() {
        let line = line.trim_start();
        let line = line.strip_prefix("# ").unwrap_or(line).trim_start();
        if line.starts_with('[') {
            section = line.split('#').next().unwrap_or_default().trim().to_owned();
            out.entry(section.clone()).or_default();
        } else if let Some((key, _)) = line.split_once(" = ")
            && !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            out.entry(section.clone())
                .or_default()
                .insert(key.to_owned());
        }
    }
    out
}

/// Every key the structs accept is in the example, under its table.
fn check_example(file: &str, structs: &BTreeMap<Table, BTreeSet<&'static str>>) -> Vec<String> {
    let example = example_keys(&read(&format!("deploy/{file}")));
    let mut problems = Vec::new();
    for (table, keys) in structs {
        let section = heading(table);
        for key in keys.iter().filter(|k| !is_table(structs, table, k)) {
            if !example
                .get(&section)
                .is_some_and(|keys| keys.contains(*key))
            {
                problems.push(format!(
                    "deploy/{file} does not show `{key}` in {section} (as `{key} = …` or \
                     `# {key} = …`, with its default)"
                ));
            }
        }
    }
    problems
}

#[test]
fn the_probe_finds_the_tables_and_their_keys() {
    let server = tables::<RawConfig>();
    let operator = &server[&(vec!["operator"], true)];
    assert_eq!(
        operator,
        &BTreeSet::from(["name", "uid", "roles"]),
        "{server:#?}"
    );
    assert!(server[&(vec!["ca"], false)].contains("ca_ttl"));
    assert!(server[&(vec!["incident_source", "route"], true)].contains("service"));
    assert!(server[&(vec![], false)].contains("log_format"));
    // Only a flag turns the demo on: it is no key.
    assert!(!server[&(vec!["remediation"], false)].contains("demo_single_user"));
    let agent = tables::<RawAgentConfig>();
    assert!(agent[&(vec![], false)].contains("server_address"));
    assert!(agent.contains_key(&(vec!["workload_api"], false)));
}

#[test]
fn every_server_key_is_documented_and_every_documented_key_exists() {
    let problems = check_reference("server.toml", &tables::<RawConfig>());
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn every_agent_key_is_documented_and_every_documented_key_exists() {
    let problems = check_reference("agent.toml", &tables::<RawAgentConfig>());
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_check_names_a_field_without_a_row_and_a_row_without_a_field() {
    let mut structs = tables::<RawAgentConfig>();
    structs
        .get_mut(&(vec!["workload_api"], false))
        .unwrap()
        .insert("metrics_listen_example");
    structs
        .get_mut(&(vec![], false))
        .unwrap()
        .remove("join_token");
    let problems = check_reference("agent.toml", &structs).join("\n");
    assert!(
        problems.contains("accepts `metrics_listen_example` in [workload_api]"),
        "{problems}"
    );
    assert!(
        problems.contains("documents `join_token` in agent.toml Top level"),
        "{problems}"
    );
}

#[test]
fn the_deploy_examples_load_and_show_every_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The real loader: the file parses into the structs (paths it names need not exist;
    // resolving them is the running server's business).
    RawConfig::load(&root.join("deploy/server.toml")).unwrap();
    RawAgentConfig::load(&root.join("deploy/agent.toml")).unwrap();
    RawConfig::load(&root.join("deploy/writ.toml")).unwrap();
    let mut problems = check_example("server.toml", &tables::<RawConfig>());
    problems.extend(check_example("agent.toml", &tables::<RawAgentConfig>()));
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}
