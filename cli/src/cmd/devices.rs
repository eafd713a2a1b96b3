//! `strata serve --devices`: the stages run in this process, one per entry,
//! and what share of the host each CPU stage gets.

use super::DeviceArgs;

/// One `--devices` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalDevice {
    Cpu,
    Cuda(usize),
}

/// The `--devices` list, in stage order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceList(pub Vec<LocalDevice>);

/// `cpu,cpu,cuda:0`: at least one entry, each `cpu` or `cuda:N`.
pub fn parse_devices(s: &str) -> Result<DeviceList, String> {
    let devices = s
        .split(',')
        .map(|entry| match entry.trim() {
            "cpu" => Ok(LocalDevice::Cpu),
            e => e
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(LocalDevice::Cuda)
                .ok_or_else(|| format!("{e:?} is neither `cpu` nor `cuda:N`")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DeviceList(devices))
}

impl LocalDevice {
    /// The device selection `strata worker` would get with `--cpu` / `--gpu N`.
    pub fn device_args(self) -> DeviceArgs {
        match self {
            LocalDevice::Cpu => DeviceArgs {
                gpu: None,
                cpu: true,
            },
            LocalDevice::Cuda(n) => DeviceArgs {
                gpu: Some(n),
                cpu: false,
            },
        }
    }
}

/// What one embedded stage may use of the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StageShare {
    pub mem_budget_bytes: Option<u64>,
    pub threads: usize,
    /// A thread pool of its own (`threads` big) or the process's; `None`
    /// decides by backend (`WorkerConfig::own_thread_pool`).
    pub own_thread_pool: Option<bool>,
}

/// Splits `memory_bytes` (`--mem-budget`, else the host's available memory)
/// and `threads` evenly between the CPU entries, so the planner sees each
/// CPU stage as the part of the host it really gets. A CUDA entry offers
/// its device's memory and computes on the process's thread pool.
pub fn split_host(devices: &[LocalDevice], memory_bytes: u64, threads: usize) -> Vec<StageShare> {
    let n_cpu = devices.iter().filter(|d| **d == LocalDevice::Cpu).count();
    let mut cpu_index = 0;
    devices
        .iter()
        .map(|d| match d {
            LocalDevice::Cuda(_) => StageShare {
                mem_budget_bytes: None,
                threads,
                // The GPUs of a process share its pool.
                own_thread_pool: Some(false),
            },
            LocalDevice::Cpu => {
                // The first `threads % n_cpu` stages take one more thread.
                let extra = usize::from(cpu_index < threads % n_cpu);
                cpu_index += 1;
                StageShare {
                    mem_budget_bytes: Some(memory_bytes / n_cpu as u64),
                    threads: (threads / n_cpu + extra).max(1),
                    own_thread_pool: Some(true),
                }
            }
        })
        .collect()
}

/// Each device with its share of the host ([`split_host`]): `mem_budget`
/// (else the host's available memory, read only when a CPU stage needs it)
/// and `threads`, split between the CPU entries.
pub fn host_shares(
    devices: &[LocalDevice],
    mem_budget: Option<u64>,
    threads: usize,
) -> anyhow::Result<Vec<(DeviceArgs, StageShare)>> {
    use anyhow::Context;
    let has_cpu = devices.contains(&LocalDevice::Cpu);
    if mem_budget.is_some() && !has_cpu {
        tracing::warn!(
            "--mem-budget caps the CPU stages; each GPU stage offers its device's memory \
             (--gpu N runs one stage on one GPU under the cap)"
        );
    }
    let memory_bytes = match mem_budget {
        Some(b) => b,
        None if has_cpu => super::local_devices::host_memory()
            .context("splitting the host's memory between the CPU stages (give --mem-budget)")?,
        None => 0,
    };
    let shares = split_host(devices, memory_bytes, threads);
    Ok(devices
        .iter()
        .map(|d| d.device_args())
        .zip(shares)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_cuda_entries() {
        assert_eq!(
            parse_devices("cpu, cuda:1,cpu"),
            Ok(DeviceList(vec![
                LocalDevice::Cpu,
                LocalDevice::Cuda(1),
                LocalDevice::Cpu
            ]))
        );
        assert!(parse_devices("gpu").is_err());
        assert!(parse_devices("cuda:x").is_err());
        assert!(parse_devices("cpu,").is_err());
    }

    #[test]
    fn cpu_stages_split_memory_and_threads() {
        use LocalDevice::*;
        let shares = split_host(&[Cpu, Cuda(0), Cpu, Cpu], 3000, 8);
        let cpu: Vec<_> = [0, 2, 3].iter().map(|&i| shares[i]).collect();
        assert!(cpu.iter().all(|s| s.mem_budget_bytes == Some(1000)));
        assert!(cpu.iter().all(|s| s.own_thread_pool == Some(true)));
        assert_eq!(
            cpu.iter().map(|s| s.threads).collect::<Vec<_>>(),
            vec![3, 3, 2]
        );
        assert_eq!(shares[1].mem_budget_bytes, None);
        assert_eq!(shares[1].own_thread_pool, Some(false));
        // More stages than threads: each still gets one.
        assert!(split_host(&[Cpu, Cpu, Cpu], 300, 2)
            .iter()
            .all(|s| s.threads == 1));
    }
}
