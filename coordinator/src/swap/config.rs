//! The models file of `strata serve --config` (TOML; llama-swap's config is
//! the model): every model the server may load, its flags and aliases, and
//! groups of models that may stay loaded together.
//!
//! ```toml
//! [models.smollm2]
//! file = "SmolLM2-135M-Instruct.Q4_1.gguf"   # relative to this file
//! aliases = ["smol", "gpt-4o-mini"]
//! ctx_size = 2048
//! parallel = 2
//! cache_type = "q8_0"
//! ttl = 300                                  # seconds idle, then unloaded
//!
//! [groups.small]
//! members = ["smollm2", "gemma3"]            # may stay loaded together
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use strata_model::profile::KvType;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    #[serde(default)]
    models: BTreeMap<String, ModelToml>,
    #[serde(default)]
    groups: BTreeMap<String, GroupToml>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelToml {
    file: PathBuf,
    #[serde(default)]
    aliases: Vec<String>,
    ctx_size: Option<usize>,
    parallel: Option<usize>,
    batch_size: Option<usize>,
    cache_type: Option<String>,
    ttl: Option<u64>,
    workers: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupToml {
    members: Vec<String>,
}

/// What a model's entry says, with the defaults the command line gave.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntry {
    pub name: String,
    pub file: PathBuf,
    pub aliases: Vec<String>,
    pub ctx_size: usize,
    pub parallel: usize,
    pub batch_tokens: usize,
    pub kv_type: KvType,
    /// Idle this long, it is unloaded; `None`: it stays.
    pub ttl: Option<Duration>,
    /// `host:port[#sha256:…]` of the workers it may use; `None`: all of
    /// the server's.
    pub workers: Option<Vec<String>>,
}

/// The whole file.
#[derive(Debug, Clone, PartialEq)]
pub struct SwapConfig {
    /// In the file's order by name.
    pub models: Vec<ModelEntry>,
    /// Group name → member model names.
    pub groups: BTreeMap<String, Vec<String>>,
}

/// Flags from the command line that a model entry may override.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    pub ctx_size: usize,
    pub parallel: usize,
    pub batch_tokens: usize,
    pub kv_type: KvType,
}

impl SwapConfig {
    pub fn load(path: &Path, defaults: Defaults) -> Result<SwapConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, dir, defaults).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            ConfigError::Invalid { message, .. } => ConfigError::Invalid {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses `text`; relative model files are taken from `dir`.
    pub fn parse(text: &str, dir: &Path, defaults: Defaults) -> Result<SwapConfig, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: PathBuf::new(),
            message,
        };
        let raw: FileToml = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        if raw.models.is_empty() {
            return Err(invalid("no [models.NAME] entry".into()));
        }
        let mut names = BTreeSet::new();
        let mut models = Vec::new();
        for (name, m) in raw.models {
            for id in std::iter::once(&name).chain(&m.aliases) {
                if id.trim().is_empty() {
                    return Err(invalid(format!("model {name:?}: an empty name or alias")));
                }
                if !names.insert(id.clone()) {
                    return Err(invalid(format!("{id:?} names two models")));
                }
            }
            let kv_type = match &m.cache_type {
                None => defaults.kv_type,
                Some(t) => KvType::from_name(t).ok_or_else(|| {
                    invalid(format!(
                        "model {name:?}: unknown cache_type {t:?} (f16, q8_0 or q4_0)"
                    ))
                })?,
            };
            let positive = |what: &str, v: Option<usize>, default: usize| match v {
                Some(0) => Err(invalid(format!("model {name:?}: {what} must be positive"))),
                Some(v) => Ok(v),
                None => Ok(default),
            };
            let ctx_size = positive("ctx_size", m.ctx_size, defaults.ctx_size)?;
            if ctx_size < 2 {
                return Err(invalid(format!(
                    "model {name:?}: ctx_size must be at least 2"
                )));
            }
            if m.workers.as_ref().is_some_and(|w| w.is_empty()) {
                return Err(invalid(format!("model {name:?}: workers is empty")));
            }
            models.push(ModelEntry {
                file: dir.join(&m.file),
                aliases: m.aliases,
                ctx_size,
                parallel: positive("parallel", m.parallel, defaults.parallel)?,
                batch_tokens: positive("batch_size", m.batch_size, defaults.batch_tokens)?,
                kv_type,
                ttl: m.ttl.filter(|&s| s > 0).map(Duration::from_secs),
                workers: m.workers,
                name,
            });
        }
        let mut groups = BTreeMap::new();
        for (group, g) in raw.groups {
            let mut seen = BTreeSet::new();
            for member in &g.members {
                if !models.iter().any(|m| &m.name == member) {
                    return Err(invalid(format!(
                        "group {group:?}: no model named {member:?} (members are model names, not aliases)"
                    )));
                }
                if !seen.insert(member) {
                    return Err(invalid(format!("group {group:?}: {member:?} twice")));
                }
            }
            groups.insert(group, g.members);
        }
        Ok(SwapConfig { models, groups })
    }

    /// The model `id` names (its name or an alias).
    pub fn find(&self, id: &str) -> Option<usize> {
        self.models
            .iter()
            .position(|m| m.name == id || m.aliases.iter().any(|a| a == id))
    }

    /// Whether models `a` and `b` may stay loaded together (a group holds both).
    pub fn together(&self, a: &str, b: &str) -> bool {
        a == b
            || self
                .groups
                .values()
                .any(|g| g.iter().any(|m| m == a) && g.iter().any(|m| m == b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Defaults = Defaults {
        ctx_size: 4096,
        parallel: 4,
        batch_tokens: 512,
        kv_type: KvType::F16,
    };

    fn parse(text: &str) -> Result<SwapConfig, ConfigError> {
        SwapConfig::parse(text, Path::new("/models"), DEFAULTS)
    }

    #[test]
    fn models_aliases_flags_and_groups() {
        let c = parse(
            r#"
            [models.smol]
            file = "smol.gguf"
            aliases = ["gpt-4o-mini"]
            ctx_size = 1024
            cache_type = "q8_0"
            ttl = 30
            [models.big]
            file = "/elsewhere/big.gguf"
            parallel = 1
            workers = ["10.0.0.2:7070"]
            [models.other]
            file = "other.gguf"
            [groups.pair]
            members = ["smol", "big"]
            "#,
        )
        .unwrap();
        let names: Vec<&str> = c.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["big", "other", "smol"]);
        let smol = &c.models[c.find("gpt-4o-mini").unwrap()];
        assert_eq!(smol.name, "smol");
        assert_eq!(smol.file, Path::new("/models/smol.gguf"));
        assert_eq!((smol.ctx_size, smol.parallel), (1024, 4));
        assert_eq!(smol.kv_type, KvType::Q8_0);
        assert_eq!(smol.ttl, Some(Duration::from_secs(30)));
        let big = &c.models[c.find("big").unwrap()];
        assert_eq!(big.file, Path::new("/elsewhere/big.gguf"));
        assert_eq!(big.ttl, None);
        assert_eq!(
            big.workers.as_deref(),
            Some(&["10.0.0.2:7070".to_string()][..])
        );
        assert!(c.together("smol", "big"));
        assert!(!c.together("smol", "other"));
        assert!(c.find("nope").is_none());
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let cases = [
            ("", "no [models.NAME]"),
            ("[models.a]\nfile = \"a\"\nctx = 4\n", "unknown field `ctx`"),
            (
                "[models.a]\nfile = \"a\"\ncache_type = \"q5_1\"\n",
                "unknown cache_type",
            ),
            (
                "[models.a]\nfile = \"a\"\nparallel = 0\n",
                "parallel must be positive",
            ),
            (
                "[models.a]\nfile = \"a\"\n[models.b]\nfile = \"b\"\naliases = [\"a\"]\n",
                "\"a\" names two models",
            ),
            (
                "[models.a]\nfile = \"a\"\n[groups.g]\nmembers = [\"a\", \"zz\"]\n",
                "no model named \"zz\"",
            ),
            ("[models.a]\nfile = 3\n", "invalid type"),
            ("[models.a\n", "TOML"),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                e.contains(want)
                    || (want == "TOML" && matches!(parse(text), Err(ConfigError::Parse { .. }))),
                "{text:?}: {e}"
            );
        }
    }
}
