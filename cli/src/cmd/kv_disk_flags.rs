//! `--kv-cache-dir` / `--kv-cache-size`: sessions on disk (a worker's kept
//! KV blocks also written to a directory, read back after a restart).

use std::path::PathBuf;

use strata_worker::service::kv_sessions::KvDiskConfig;

/// The flags of `worker` and of `serve`'s embedded worker.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct KvDiskArgs {
    /// Also keep finished sequences' KV blocks on disk in DIR, so that a
    /// conversation continues after a restart without computing its
    /// prompt again. Off by default: it writes users' conversations (as
    /// KV) to disk, which a user must choose.
    #[arg(long, value_name = "DIR")]
    pub kv_cache_dir: Option<PathBuf>,
    /// Most bytes of KV blocks in --kv-cache-dir; the oldest go first.
    #[arg(long, value_parser = super::parse_size, default_value = "16GiB")]
    pub kv_cache_size: u64,
}

impl KvDiskArgs {
    pub fn config(&self) -> Option<KvDiskConfig> {
        self.kv_cache_dir.as_ref().map(|dir| KvDiskConfig {
            dir: dir.clone(),
            max_bytes: self.kv_cache_size,
        })
    }

    /// One of `n` stages in this process (`--devices`): the same folder
    /// (each stage owns the folders of its layers, so it finds them
    /// whichever stage held them before) and an even share of the size.
    pub fn stage_config(&self, n: usize) -> Option<KvDiskConfig> {
        let mut c = self.config()?;
        c.max_bytes /= n.max(1) as u64;
        Some(c)
    }
}
