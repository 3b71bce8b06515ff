//! Layered configuration: built-in defaults, then a TOML file, then
//! `RUNNEL_<FIELD>` environment variables, then command-line flags; each layer
//! overrides the one before. Unknown keys in the file are errors (a typo
//! should not be silently ignored).

use std::path::Path;

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Loads a role's config. `overrides` holds the flags given on the command
/// line (fields left `None` are skipped when serialised).
pub fn load<T, O>(file: Option<&Path>, overrides: &O) -> anyhow::Result<T>
where
    T: Default + Serialize + DeserializeOwned,
    O: Serialize,
{
    let defaults = T::default();
    // Only variables naming a field of T apply, so RUNNEL_LOG_FORMAT and the
    // client's RUNNEL_COORDINATOR do not trip `deny_unknown_fields`.
    let fields: Vec<String> = match serde_json::to_value(&defaults)? {
        serde_json::Value::Object(map) => map.keys().cloned().collect(),
        _ => Vec::new(),
    };
    let mut figment = Figment::from(Serialized::defaults(&defaults));
    if let Some(path) = file {
        if !path.exists() {
            anyhow::bail!("config file {} does not exist", path.display());
        }
        figment = figment.merge(Toml::file(path));
    }
    figment = figment
        .merge(
            Env::prefixed("RUNNEL_")
                .filter(move |k| fields.iter().any(|f| k.as_str().eq_ignore_ascii_case(f))),
        )
        .merge(Serialized::defaults(overrides));
    figment.extract().with_context(|| match file {
        Some(p) => format!("invalid configuration (file {})", p.display()),
        None => "invalid configuration".to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::result_large_err)]
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Demo {
        listen: String,
        node_id: i32,
        flush: String,
    }

    #[derive(Serialize)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        node_id: Option<i32>,
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "listen = \"file:1\"\nnode_id = 2\nflush = \"os\"\n").unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("RUNNEL_NODE_ID", "3");
            jail.set_env("RUNNEL_UNRELATED", "x");
            let c: Demo = load(Some(&file), &Flags { node_id: None }).unwrap();
            assert_eq!(
                c,
                Demo {
                    listen: "file:1".into(),
                    node_id: 3,
                    flush: "os".into()
                }
            );
            let c: Demo = load(Some(&file), &Flags { node_id: Some(4) }).unwrap();
            assert_eq!(c.node_id, 4);
            Ok(())
        });
        std::fs::write(&file, "listn = \"typo\"\n").unwrap();
        assert!(load::<Demo, _>(Some(&file), &Flags { node_id: None }).is_err());
        assert!(
            load::<Demo, _>(
                Some(&dir.path().join("missing.toml")),
                &Flags { node_id: None }
            )
            .is_err()
        );
    }
}
