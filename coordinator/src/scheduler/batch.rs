//! One scheduling step: the entries of the next micro-batch of a group.

/// Where a sequence is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqPhase {
    /// `done` prompt tokens are in the KV cache; more remain.
    Prefill { done: usize },
    /// The whole prompt is cached; the last sampled token is to be fed.
    Decode,
}

/// What the scheduler needs to know of one live sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqProgress {
    pub seq: u64,
    /// Micro-batch group (0..S) the sequence travels in.
    pub group: usize,
    pub prompt_tokens: usize,
    pub phase: SeqPhase,
    /// Tokens in the KV cache (prompt done + generated fed back).
    pub cached_tokens: usize,
    /// A prompt chunk ends here rather than run past it (a state snapshot
    /// is saved at this position).
    pub cut_at: Option<usize>,
}

/// Limits of one micro-batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Tokens per micro-batch (decode tokens + prompt chunks).
    pub max_batch_tokens: usize,
    /// Largest prompt chunk of one sequence in one step.
    pub max_prefill_chunk: usize,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy {
            max_batch_tokens: 512,
            max_prefill_chunk: 256,
        }
    }
}

/// One sequence's share of a step: feed `n_tokens` tokens starting at
/// position `start_pos`. `last_of_prompt` is true when the chunk finishes
/// the prompt, so the step yields the sequence's first sampled token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepEntry {
    pub seq: u64,
    pub start_pos: usize,
    pub n_tokens: usize,
    pub samples: bool,
}

/// Plans the next micro-batch of `group`. `seqs` is in arrival order.
/// Decoding sequences always get their token (a decode must never wait
/// behind a prompt); prompt chunks fill the rest of the budget.
pub fn plan_step(seqs: &[SeqProgress], group: usize, policy: &BatchPolicy) -> Vec<StepEntry> {
    let mut entries = Vec::new();
    let mut budget = policy.max_batch_tokens.max(1);
    for s in seqs
        .iter()
        .filter(|s| s.group == group && s.phase == SeqPhase::Decode)
    {
        entries.push(StepEntry {
            seq: s.seq,
            start_pos: s.cached_tokens,
            n_tokens: 1,
            samples: true,
        });
        budget = budget.saturating_sub(1);
    }
    for s in seqs.iter().filter(|s| s.group == group) {
        if budget == 0 {
            break;
        }
        if let SeqPhase::Prefill { done } = s.phase {
            let left = s.prompt_tokens - done;
            let mut n = left.min(policy.max_prefill_chunk.max(1)).min(budget);
            if let Some(cut) = s.cut_at.filter(|&c| c > done) {
                n = n.min(cut - done);
            }
            entries.push(StepEntry {
                seq: s.seq,
                start_pos: done,
                n_tokens: n,
                samples: n == left,
            });
            budget -= n;
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(seq: u64, group: usize, prompt: usize, phase: SeqPhase, cached: usize) -> SeqProgress {
        SeqProgress {
            seq,
            group,
            prompt_tokens: prompt,
            phase,
            cached_tokens: cached,
            cut_at: None,
        }
    }

    #[test]
    fn decodes_first_then_prompt_chunks_within_budget() {
        let seqs = [
            seq(1, 0, 10, SeqPhase::Decode, 12),
            seq(2, 0, 1000, SeqPhase::Prefill { done: 0 }, 0),
            seq(3, 0, 5, SeqPhase::Decode, 7),
            seq(4, 0, 100, SeqPhase::Prefill { done: 90 }, 90),
        ];
        let policy = BatchPolicy {
            max_batch_tokens: 300,
            max_prefill_chunk: 256,
        };
        let step = plan_step(&seqs, 0, &policy);
        assert_eq!(
            step,
            vec![
                StepEntry {
                    seq: 1,
                    start_pos: 12,
                    n_tokens: 1,
                    samples: true
                },
                StepEntry {
                    seq: 3,
                    start_pos: 7,
                    n_tokens: 1,
                    samples: true
                },
                StepEntry {
                    seq: 2,
                    start_pos: 0,
                    n_tokens: 256,
                    samples: false
                },
                StepEntry {
                    seq: 4,
                    start_pos: 90,
                    n_tokens: 10,
                    samples: true
                },
            ]
        );
        assert!(step.iter().map(|e| e.n_tokens).sum::<usize>() <= policy.max_batch_tokens);
    }

    #[test]
    fn only_the_requested_group() {
        let seqs = [
            seq(1, 0, 3, SeqPhase::Decode, 4),
            seq(2, 1, 3, SeqPhase::Decode, 4),
        ];
        let step = plan_step(&seqs, 1, &BatchPolicy::default());
        assert_eq!(step.len(), 1);
        assert_eq!(step[0].seq, 2);
    }

    #[test]
    fn long_prompt_is_chunked_and_never_starves_decoders() {
        // A 2000-token prompt arrives while two sequences decode: every
        // step still carries both decode tokens.
        let policy = BatchPolicy {
            max_batch_tokens: 128,
            max_prefill_chunk: 128,
        };
        let mut done = 0;
        let mut steps = 0;
        while done < 2000 {
            let seqs = [
                seq(1, 0, 4, SeqPhase::Decode, 4 + steps),
                seq(2, 0, 2000, SeqPhase::Prefill { done }, done),
                seq(3, 0, 4, SeqPhase::Decode, 4 + steps),
            ];
            let step = plan_step(&seqs, 0, &policy);
            assert_eq!(
                step.iter().filter(|e| e.n_tokens == 1 && e.samples).count(),
                2
            );
            let chunk = step.iter().find(|e| e.seq == 2).unwrap();
            assert_eq!(chunk.start_pos, done);
            assert!(chunk.n_tokens <= 126);
            done += chunk.n_tokens;
            steps += 1;
        }
        assert_eq!(steps, 2000usize.div_ceil(126));
    }

    #[test]
    fn a_prompt_chunk_stops_at_its_cut_once() {
        let policy = BatchPolicy {
            max_batch_tokens: 512,
            max_prefill_chunk: 256,
        };
        let mut s = seq(1, 0, 300, SeqPhase::Prefill { done: 0 }, 0);
        s.cut_at = Some(96);
        let chunk = |s: &SeqProgress| plan_step(std::slice::from_ref(s), 0, &policy)[0];
        assert_eq!((chunk(&s).n_tokens, chunk(&s).samples), (96, false));
        // Past the cut, chunks are as before.
        s.phase = SeqPhase::Prefill { done: 96 };
        assert_eq!((chunk(&s).n_tokens, chunk(&s).samples), (204, true));
    }
}
