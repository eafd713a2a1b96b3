//! `--cache-type-k` / `--cache-type-v`: how K and V are cached (llama-server's
//! flags and names).

use strata_model::profile::KvType;

/// The KV cache type flags of `serve`, `plan`, `generate`, `bench` and
/// `perplexity`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct KvCacheArgs {
    /// K cache type: f16 (default), q8_0 or q4_0 (q8_0/q4_0 need heads of
    /// a multiple of 32 values). Must equal --cache-type-v for now.
    #[arg(long, visible_alias = "ctk", value_name = "TYPE")]
    pub cache_type_k: Option<String>,
    /// V cache type: f16 (default), q8_0 or q4_0. Must equal --cache-type-k.
    #[arg(long, visible_alias = "ctv", value_name = "TYPE")]
    pub cache_type_v: Option<String>,
}

impl KvCacheArgs {
    /// The one type K and V are cached as; `both` (plan's `--kv-type`)
    /// stands for either flag not given.
    pub fn kv_type(&self, both: Option<&str>) -> anyhow::Result<KvType> {
        let parse = |flag: &str, name: Option<&str>| -> anyhow::Result<KvType> {
            let name = name.or(both).unwrap_or("f16");
            KvType::from_name(name)
                .ok_or_else(|| anyhow::anyhow!("unknown {flag} {name:?} (f16, q8_0 or q4_0)"))
        };
        let k = parse("--cache-type-k", self.cache_type_k.as_deref())?;
        let v = parse("--cache-type-v", self.cache_type_v.as_deref())?;
        anyhow::ensure!(
            k == v,
            "--cache-type-k {} and --cache-type-v {} differ: strata caches K and V as one type for now (give both the same)",
            k.name(),
            v.name()
        );
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(k: Option<&str>, v: Option<&str>) -> KvCacheArgs {
        KvCacheArgs {
            cache_type_k: k.map(str::to_string),
            cache_type_v: v.map(str::to_string),
        }
    }

    #[test]
    fn kv_types_from_flags() {
        assert_eq!(args(None, None).kv_type(None).unwrap(), KvType::F16);
        let q8 = args(Some("q8_0"), Some("Q8_0")).kv_type(None).unwrap();
        assert_eq!(q8, KvType::Q8_0);
        let q4 = args(None, None).kv_type(Some("q4_0")).unwrap();
        assert_eq!(q4, KvType::Q4_0);
        let e = args(Some("q8_0"), None).kv_type(None).unwrap_err();
        assert!(e.to_string().contains("differ"), "{e}");
        let e = args(Some("q5_1"), Some("q5_1")).kv_type(None).unwrap_err();
        assert!(e.to_string().contains("unknown --cache-type-k"), "{e}");
    }
}
