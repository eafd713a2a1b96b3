//! Whether several models fit on the pool at once (a group of models that
//! may stay loaded together): each is planned in turn on what the ones
//! before it left. Pure logic over plain data, like [`plan`].

use super::{plan, Plan, PlanRequest, WorkerSpec};

/// How models loaded together share workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// One machine's memory, a worker per model (the embedded workers of
    /// `strata serve`): a model's stages take their bytes off every
    /// worker of the same name for the models after it.
    Memory,
    /// A worker holds one stage (remote workers): a worker used by one
    /// model is not there for the next.
    Workers,
}

/// One model of a group, with the workers (indices into the pool) it may use.
#[derive(Debug, Clone)]
pub struct GroupMember {
    pub name: String,
    pub request: PlanRequest,
    pub workers: Vec<usize>,
}

/// Plans every member in order; the plans, or why member `k` does not fit
/// next to the ones before it.
pub fn plan_together(
    members: &[GroupMember],
    pool: &[WorkerSpec],
    sharing: Sharing,
) -> Result<Vec<Plan>, String> {
    let mut free: Vec<u64> = pool.iter().map(|w| w.free_bytes).collect();
    let mut taken = vec![false; pool.len()];
    let mut plans = Vec::with_capacity(members.len());
    for (k, m) in members.iter().enumerate() {
        let usable: Vec<usize> = m
            .workers
            .iter()
            .copied()
            .filter(|&w| w < pool.len() && !taken[w])
            .collect();
        let specs: Vec<WorkerSpec> = usable
            .iter()
            .map(|&w| WorkerSpec {
                free_bytes: free[w],
                ..pool[w].clone()
            })
            .collect();
        let before: Vec<&str> = members[..k].iter().map(|m| m.name.as_str()).collect();
        let next_to = if before.is_empty() {
            String::new()
        } else {
            format!(" next to {}", before.join(" and "))
        };
        if specs.is_empty() {
            return Err(format!(
                "{} has no worker left{next_to} (a worker holds one model's stage)",
                m.name
            ));
        }
        let p = plan(&m.request, &specs)
            .map_err(|e| format!("{} does not fit{next_to}: {e}", m.name))?;
        for s in &p.stages {
            let w = usable[s.worker];
            match sharing {
                Sharing::Memory => free[w] = free[w].saturating_sub(s.total_bytes()),
                Sharing::Workers => taken[w] = true,
            }
        }
        plans.push(p);
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::synth_profile::synth_profile;
    use crate::planner::Backend;
    use strata_model::arch::Architecture;
    use strata_model::profile::KvType;
    use strata_model::synth::{QuantScheme, SynthSpec};

    const MIB: u64 = 1 << 20;

    fn member(name: &str, workers: Vec<usize>) -> GroupMember {
        let spec = SynthSpec::from_preset(
            Architecture::Llama,
            "tiny",
            QuantScheme::parse("Q4_K_M").unwrap(),
        )
        .unwrap();
        let (hp, profile) = synth_profile(&spec).unwrap();
        GroupMember {
            name: name.into(),
            request: PlanRequest::new(profile, hp.d_model, 256, KvType::F16),
            workers,
        }
    }

    fn cpu(name: &str, bytes: u64) -> WorkerSpec {
        WorkerSpec::new(name, Backend::Cpu, "host", bytes)
    }

    #[test]
    fn members_share_one_machines_memory() {
        let one = plan_together(
            &[member("a", vec![0])],
            &[cpu("w", 1 << 30)],
            Sharing::Memory,
        )
        .unwrap();
        let need = one[0].stages[0].total_bytes();
        // Free memory whose usable part (less 5% and 64 MiB) is `usable`.
        let free_for = |usable: u64| ((usable + 64 * MIB) as f64 / 0.95) as u64;
        // Room for one and a half: one, not two.
        let pool = [cpu("w", free_for(need * 3 / 2))];
        assert!(plan_together(&[member("a", vec![0])], &pool, Sharing::Memory).is_ok());
        let e = plan_together(
            &[member("a", vec![0]), member("b", vec![0])],
            &pool,
            Sharing::Memory,
        )
        .unwrap_err();
        assert!(e.starts_with("b does not fit next to a: "), "{e}");
        // Room for two and a bit more than the second one's margin.
        let pool = [cpu("w", free_for(need * 22 / 10))];
        let both = plan_together(
            &[member("a", vec![0]), member("b", vec![0])],
            &pool,
            Sharing::Memory,
        )
        .unwrap();
        assert_eq!(both.len(), 2);
    }

    #[test]
    fn a_worker_holds_one_models_stage() {
        let pool = [cpu("w0", 1 << 30), cpu("w1", 1 << 30)];
        let e = plan_together(
            &[member("a", vec![0]), member("b", vec![0])],
            &pool,
            Sharing::Workers,
        )
        .unwrap_err();
        assert!(e.contains("b has no worker left next to a"), "{e}");
        let plans = plan_together(
            &[member("a", vec![0, 1]), member("b", vec![0, 1])],
            &pool,
            Sharing::Workers,
        );
        // a takes one worker (it fits there), b the other.
        let plans = plans.unwrap();
        assert_eq!(plans[0].stages.len(), 1);
        assert_eq!(plans[1].stages.len(), 1);
    }
}
