//! The exact dynamic programme over contiguous layer ranges for one worker
//! order, and the search over worker orders that keep hosts together.

use std::cmp::Ordering;

use strata_model::profile::{StageMemory, StageMemoryTable};
use strata_model::LayerRange;

use super::{noise, Link, Plan, PlanRequest, StagePlan, WorkerSpec, NOMINAL_BANDWIDTH_BYTES_PER_S};

/// Orders of groups and of workers within groups tried exhaustively up to
/// this many orders.
const MAX_ORDERS: usize = 720;
/// Beyond that, host groups up to this many are tried in every order (6! =
/// 720 orders, members in given order, those keeping layers on disk first
/// by the first such layer); beyond it a few heuristic orders.
const MAX_PERMUTED_GROUPS: usize = 6;

/// Relative tolerance under which two times count as equal (then the
/// layers given back to the workers that saved them, then memory balance,
/// decide).
const TIME_TIE_REL: f64 = 1e-9;

/// What the DP minimises: time first, then layers not given back to the
/// worker that saved them, then the fullest stage's fill.
#[derive(Debug, Clone, Copy)]
struct Cost {
    /// Hops from a worker to one it could not connect to: any plan with
    /// fewer is better, whatever its time (0 wherever one avoids them).
    blocked_hops: usize,
    time_s: f64,
    /// Layers placed on a worker that keeps their KV blocks on disk: at
    /// equal time, more is better (the sessions it saved stay found).
    saved_layers: usize,
    worst_fill: f64,
}

impl Cost {
    fn then(self, time_s: f64, fill: f64) -> Cost {
        Cost {
            time_s: self.time_s + time_s,
            worst_fill: self.worst_fill.max(fill),
            ..self
        }
    }
    fn with_saved(self, layers: usize) -> Cost {
        Cost {
            saved_layers: self.saved_layers + layers,
            ..self
        }
    }
    fn blocked(self, blocked: bool) -> Cost {
        Cost {
            blocked_hops: self.blocked_hops + usize::from(blocked),
            ..self
        }
    }
    fn cmp(&self, other: &Cost) -> Ordering {
        if self.blocked_hops != other.blocked_hops {
            return self.blocked_hops.cmp(&other.blocked_hops);
        }
        let scale = self.time_s.abs().max(other.time_s.abs());
        if (self.time_s - other.time_s).abs() > TIME_TIE_REL * scale {
            self.time_s.total_cmp(&other.time_s)
        } else if self.saved_layers != other.saved_layers {
            other.saved_layers.cmp(&self.saved_layers)
        } else {
            self.worst_fill.total_cmp(&other.worst_fill)
        }
    }
    fn better_than(&self, other: &Option<Cost>) -> bool {
        other.as_ref().is_none_or(|o| self.cmp(o) == Ordering::Less)
    }
}

/// Per-request sums, so a stage's bytes are O(1). Memory is the model
/// crate's [`StageMemoryTable`] (what the worker admits by); the read sums
/// are the planner's cost model.
pub(super) struct Sizes {
    n: usize,
    memory: StageMemoryTable,
    /// Weights a token reads per layer: the dense part and the experts it is
    /// routed to.
    active_prefix: Vec<u64>,
    /// KV read per token of one sequence at full context (sliding layers
    /// read their window).
    kv_read_prefix: Vec<u64>,
    head: u64,
    /// Layers a stage may end before (every one but those a KV-sharing
    /// layer ties to the layer before it).
    cut_ok: Vec<bool>,
    /// The embedding every stage after the first holds (per-layer
    /// embeddings), else 0.
    embedding_per_extra_stage: u64,
}

impl Sizes {
    pub(super) fn new(req: &PlanRequest) -> Sizes {
        let p = &req.profile;
        let prefix = |f: &dyn Fn(usize) -> u64| {
            let mut v = Vec::with_capacity(p.layers.len() + 1);
            v.push(0u64);
            for il in 0..p.layers.len() {
                v.push(v[il].saturating_add(f(il)));
            }
            v
        };
        Sizes {
            n: p.layers.len(),
            memory: p.stage_memory_table(&req.stage_load()),
            active_prefix: prefix(&|il| p.layers[il].active_bytes_per_token),
            kv_read_prefix: prefix(&|il| p.layers[il].kv_read_bytes(req.kv_type, req.ctx_size)),
            head: p.head_bytes,
            cut_ok: (0..=p.layers.len()).map(|c| p.cut_allowed(c)).collect(),
            embedding_per_extra_stage: if p.embedding_on_every_stage {
                p.embedding_bytes
            } else {
                0
            },
        }
    }

    pub(super) fn stage(&self, a: usize, b: usize) -> StageMemory {
        self.memory.stage(LayerRange { first: a, end: b })
    }
    pub(super) fn weights(&self, a: usize, b: usize) -> u64 {
        self.stage(a, b).weight_bytes
    }
    pub(super) fn kv(&self, a: usize, b: usize) -> u64 {
        self.stage(a, b).kv_bytes
    }
    pub(super) fn state(&self, a: usize, b: usize) -> u64 {
        self.stage(a, b).state_bytes
    }
    pub(super) fn scratch_per_stage(&self) -> u64 {
        self.memory.scratch_bytes_per_stage()
    }
    pub(super) fn memory(&self, a: usize, b: usize) -> u64 {
        self.stage(a, b).total_bytes
    }
    /// Weight bytes a stage reads per token: active experts only, the head
    /// on the last stage (the embedding lookup reads one row).
    fn read_weights_per_token(&self, a: usize, b: usize) -> u64 {
        self.active_prefix[b] - self.active_prefix[a] + if b == self.n { self.head } else { 0 }
    }
    fn read_kv_per_token(&self, a: usize, b: usize) -> u64 {
        self.kv_read_prefix[b] - self.kv_read_prefix[a]
    }
    fn read_per_token(&self, a: usize, b: usize) -> u64 {
        self.read_weights_per_token(a, b) + self.read_kv_per_token(a, b)
    }
    /// Everything the model needs on `stages` stages: each stage after the
    /// first adds its scratch, and with per-layer embeddings its embedding.
    pub(super) fn total_with_stages(&self, stages: usize) -> u64 {
        let per_stage = self.scratch_per_stage() + self.embedding_per_extra_stage;
        self.memory(0, self.n) + per_stage * (stages.max(1) as u64 - 1)
    }
}

/// Bandwidth of each worker (unknown = mean of the known ones, or nominal).
pub(super) fn bandwidths(workers: &[WorkerSpec]) -> Vec<f64> {
    let known: Vec<f64> = workers
        .iter()
        .filter_map(|w| w.matvec_bandwidth_bytes_per_s)
        .collect();
    let fallback = if known.is_empty() {
        NOMINAL_BANDWIDTH_BYTES_PER_S
    } else {
        known.iter().sum::<f64>() / known.len() as f64
    };
    workers
        .iter()
        .map(|w| w.matvec_bandwidth_bytes_per_s.unwrap_or(fallback))
        .collect()
}

/// A hop from `a` to `b`: a same-host link, the link measured between
/// their hosts (steadied: `noise::steady_links`), or the larger latency and
/// smaller bandwidth of their links to the coordinator.
fn hop_s(a: &WorkerSpec, b: &WorkerSpec, bytes: u64) -> f64 {
    let link = if a.host == b.host {
        Link::SAME_HOST
    } else if let Some(measured) = a.peer_links.get(&b.name) {
        *measured
    } else {
        Link {
            latency_s: a.link.latency_s.max(b.link.latency_s),
            bandwidth_bytes_per_s: a
                .link
                .bandwidth_bytes_per_s
                .min(b.link.bandwidth_bytes_per_s),
        }
    };
    link.transfer_s(bytes)
}

/// Worker orders to try, always with each host's workers adjacent: every
/// order of host groups and of the workers inside each group while that is
/// at most [`MAX_ORDERS`] orders; else every order of groups (members in
/// given order) up to [`MAX_PERMUTED_GROUPS`] groups; else a few heuristic
/// orders (given, fastest host first, largest host first).
pub(super) fn worker_orders(workers: &[WorkerSpec], bw: &[f64], usable: &[u64]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, w) in workers.iter().enumerate() {
        match groups.iter_mut().find(|g| workers[g[0]].host == w.host) {
            Some(g) => g.push(i),
            None => groups.push(vec![i]),
        }
    }
    // Members by the first layer they keep on disk (the others after, in
    // given order): where not every order is tried, workers that came back
    // in another name order still meet their saved layers.
    let saved_from = |i: usize| {
        workers[i]
            .saved_layers
            .first()
            .copied()
            .unwrap_or(usize::MAX)
    };
    for g in &mut groups {
        g.sort_by_key(|&i| saved_from(i));
    }
    let factorial = |k: usize| (1..=k).try_fold(1usize, |acc, x| acc.checked_mul(x));
    let n_orders = factorial(groups.len()).and_then(|n| {
        groups
            .iter()
            .try_fold(n, |acc: usize, g| acc.checked_mul(factorial(g.len())?))
    });
    let mut idx: Vec<usize> = (0..groups.len()).collect();
    if n_orders.is_some_and(|n| n <= MAX_ORDERS) {
        let member_orders: Vec<Vec<Vec<usize>>> = groups
            .iter()
            .map(|g| {
                let mut out = Vec::new();
                permutations(&mut g.clone(), 0, &mut |p| out.push(p.to_vec()));
                out
            })
            .collect();
        let mut out = Vec::new();
        permutations(&mut idx, 0, &mut |gp| {
            let mut choice = vec![0usize; gp.len()];
            loop {
                out.push(
                    gp.iter()
                        .zip(&choice)
                        .flat_map(|(&g, &c)| member_orders[g][c].iter().copied())
                        .collect(),
                );
                // Next combination of member orders (odometer).
                let mut k = 0;
                while k < gp.len() {
                    choice[k] += 1;
                    if choice[k] < member_orders[gp[k]].len() {
                        break;
                    }
                    choice[k] = 0;
                    k += 1;
                }
                if k == gp.len() {
                    break;
                }
            }
        });
        return out;
    }
    let flatten = |order: &[usize]| {
        order
            .iter()
            .flat_map(|&g| groups[g].iter().copied())
            .collect::<Vec<_>>()
    };
    if groups.len() <= MAX_PERMUTED_GROUPS {
        let mut out = Vec::new();
        permutations(&mut idx, 0, &mut |p| out.push(flatten(p)));
        return out;
    }
    let group_bw = |g: usize| groups[g].iter().map(|&i| bw[i]).fold(0.0, f64::max);
    let group_mem = |g: usize| groups[g].iter().map(|&i| usable[i]).sum::<u64>();
    let mut out = vec![flatten(&idx)];
    idx.sort_by(|&a, &b| group_bw(b).total_cmp(&group_bw(a)));
    out.push(flatten(&idx));
    idx.sort_by_key(|&g| std::cmp::Reverse(group_mem(g)));
    out.push(flatten(&idx));
    idx.sort_by_key(|&g| saved_from(groups[g][0]));
    out.push(flatten(&idx));
    out
}

fn permutations(v: &mut [usize], k: usize, f: &mut dyn FnMut(&[usize])) {
    if k == v.len() {
        f(v);
        return;
    }
    for i in k..v.len() {
        v.swap(k, i);
        permutations(v, k + 1, f);
        v.swap(k, i);
    }
}

/// The best plan over all tried orders, `None` if nothing fits.
pub(super) fn best_plan(req: &PlanRequest, workers: &[WorkerSpec]) -> Option<Plan> {
    let workers = &noise::steady_links(workers);
    let sizes = Sizes::new(req);
    let bw = noise::steady_bandwidths(workers);
    let usable: Vec<u64> = workers.iter().map(|w| req.margin.usable_bytes(w)).collect();
    let room = Room {
        fits: usable.clone(),
        balance: noise::steady_capacities(&usable),
        saved_prefix: workers
            .iter()
            .map(|w| {
                let mut prefix = vec![0usize; sizes.n + 1];
                for l in 0..sizes.n {
                    prefix[l + 1] = prefix[l] + usize::from(w.saved_layers.contains(&l));
                }
                prefix
            })
            .collect(),
    };
    let mut best: Option<(Cost, Vec<StageRange>)> = None;
    for order in worker_orders(workers, &bw, &usable) {
        if let Some((cost, stages)) = plan_order(req, workers, &sizes, &bw, &room, &order) {
            if cost.better_than(&best.as_ref().map(|b| b.0)) {
                best = Some((cost, stages));
            }
        }
    }
    let (cost, stages) = best?;
    let stages = stages
        .into_iter()
        .map(|(worker, a, b)| {
            let m = sizes.stage(a, b);
            StagePlan {
                worker,
                first_layer: a,
                end_layer: b,
                has_embedding: a == 0 || req.profile.embedding_on_every_stage,
                has_head: b == sizes.n,
                weight_bytes: m.weight_bytes,
                expert_bytes: m.expert_bytes,
                kv_bytes: m.kv_bytes,
                state_bytes: m.state_bytes,
                scratch_bytes: m.scratch_bytes,
                free_after: workers[worker].free_bytes.saturating_sub(m.total_bytes),
                read_weight_bytes_per_token: sizes.read_weights_per_token(a, b),
                read_kv_bytes_per_token: sizes.read_kv_per_token(a, b),
                time_per_token_s: sizes.read_per_token(a, b) as f64 / bw[worker],
            }
        })
        .collect::<Vec<_>>();
    let bandwidth_measured = stages
        .iter()
        .all(|s| workers[s.worker].matvec_bandwidth_bytes_per_s.is_some());
    Some(Plan {
        stages,
        est_time_per_token_s: cost.time_s,
        bandwidth_measured,
        blocked_hops: cost.blocked_hops,
    })
}

/// `(worker index, first layer, end layer)`.
type StageRange = (usize, usize, usize);

/// Each worker's usable bytes: the real number a stage must fit in, and the
/// steadied one memory balance is measured against (noise.rs).
struct Room {
    fits: Vec<u64>,
    balance: Vec<u64>,
    /// Per worker, how many of layers `[0, l)` it keeps on disk.
    saved_prefix: Vec<Vec<usize>>,
}

#[derive(Clone, Copy)]
struct Entry {
    cost: Cost,
    /// First layer of the stage ending here.
    first: usize,
    /// Position of the previous stage's worker (None: this is the first stage).
    prev: Option<usize>,
}

/// Exact DP for one worker order: `end[p][l]` is the best way to place layers
/// `[0, l)` with the last stage on position `p`. Workers may be skipped.
/// Returns the cost and stages as `(worker index, first, end)`.
fn plan_order(
    req: &PlanRequest,
    workers: &[WorkerSpec],
    sizes: &Sizes,
    bw: &[f64],
    room: &Room,
    order: &[usize],
) -> Option<(Cost, Vec<StageRange>)> {
    let n = sizes.n;
    let m = order.len();
    let mut end: Vec<Vec<Option<Entry>>> = vec![vec![None; n + 1]; m];
    for p in 0..m {
        let wi = order[p];
        // The hop from each earlier position to this one: its time, and
        // whether its worker cannot connect to this one. The same for every
        // layer bound, so worked out once.
        let hops: Vec<(f64, bool)> = order[..p]
            .iter()
            .map(|&from| {
                let (from, to) = (&workers[from], &workers[wi]);
                let time_s = hop_s(from, to, req.activation_bytes_per_token);
                (time_s, from.unreachable.contains(&to.name))
            })
            .collect();
        // Best way to arrive at position p with layers [0, a) done.
        let arrive: Vec<Option<(Cost, usize)>> = (0..=n)
            .map(|a| {
                if a == 0 {
                    // The coordinator's hop to the first stage (token ids).
                    return Some((
                        Cost {
                            blocked_hops: 0,
                            time_s: workers[wi].link.latency_s,
                            saved_layers: 0,
                            worst_fill: 0.0,
                        },
                        usize::MAX,
                    ));
                }
                let mut best: Option<(Cost, usize)> = None;
                for (q, &(hop_time_s, blocked)) in hops.iter().enumerate() {
                    if let Some(e) = end[q][a] {
                        let c = e.cost.then(hop_time_s, 0.0).blocked(blocked);
                        if c.better_than(&best.map(|b| b.0)) {
                            best = Some((c, q));
                        }
                    }
                }
                best
            })
            .collect();
        let (cap, balance_cap) = (room.fits[wi], room.balance[wi]);
        for (a, arrived) in arrive.iter().enumerate().take(n) {
            let Some((start, q)) = *arrived else { continue };
            #[allow(clippy::needless_range_loop)] // b is a layer bound, not only an index
            for b in a + 1..=n {
                let mem = sizes.memory(a, b);
                if mem > cap {
                    break; // every term only grows with b (head and logits at b == n too)
                }
                if b < n && !sizes.cut_ok[b] {
                    continue; // a KV-sharing layer after b reads a layer before it
                }
                let fill = if balance_cap == 0 {
                    1.0
                } else {
                    mem as f64 / balance_cap as f64
                };
                let saved = room.saved_prefix[wi][b] - room.saved_prefix[wi][a];
                let c = start
                    .then(sizes.read_per_token(a, b) as f64 / bw[wi], fill)
                    .with_saved(saved);
                if c.better_than(&end[p][b].map(|e| e.cost)) {
                    end[p][b] = Some(Entry {
                        cost: c,
                        first: a,
                        prev: if a == 0 { None } else { Some(q) },
                    });
                }
            }
        }
    }
    // The last stage's hop back to the coordinator (its reply line).
    let (mut p, mut best) = (usize::MAX, None::<(Entry, Cost)>);
    for (q, row) in end.iter().enumerate() {
        if let Some(e) = row[n] {
            let c = e.cost.then(workers[order[q]].link.latency_s, 0.0);
            if c.better_than(&best.map(|b| b.1)) {
                p = q;
                best = Some((e, c));
            }
        }
    }
    let cost = best?.1;
    let mut stages = Vec::new();
    let mut l = n;
    while l > 0 {
        let e = end[p][l]?;
        stages.push((order[p], e.first, l));
        l = e.first;
        match e.prev {
            Some(q) => p = q,
            None => break,
        }
    }
    stages.reverse();
    Some((cost, stages))
}
