//! Which recurrent state slot each sequence holds (Qwen3.5's DeltaNet
//! layers). A stage has one slot per sequence it serves at once; a
//! sequence takes one when it first appears (zeroed) and gives it back when
//! it is released, with its KV blocks. Unlike KV, the state cannot be
//! rewound: a run either continues its sequence or starts it over at
//! position 0 (the failover replay re-runs every token).

use std::collections::HashMap;

#[derive(Debug, Clone)]
pub struct StateSlots {
    free: Vec<u32>,
    held: HashMap<u64, u32>,
    capacity: usize,
}

/// One run of a batch, as admission sees it.
#[derive(Debug, Clone, Copy)]
pub struct RunStart {
    pub seq: u64,
    pub start_pos: usize,
    /// Positions the stage already holds for the sequence.
    pub cached: usize,
}

impl StateSlots {
    pub fn new(capacity: usize) -> Self {
        StateSlots {
            // Pop from the end: lowest slots first.
            free: (0..capacity as u32).rev().collect(),
            held: HashMap::new(),
            capacity,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The slot of each run's sequence (taking free ones for new
    /// sequences), and the slots to zero: those of runs that start at
    /// position 0. All or nothing: on an error no slot changes hands.
    pub fn admit(&mut self, runs: &[RunStart]) -> Result<(Vec<u32>, Vec<u32>), String> {
        let mut new = 0;
        for (i, r) in runs.iter().enumerate() {
            if runs[..i].iter().any(|o| o.seq == r.seq) {
                return Err(format!(
                    "sequence {} has two runs in one batch, which its recurrent state cannot take",
                    r.seq
                ));
            }
            let held = self.held.contains_key(&r.seq);
            if r.start_pos != 0 && (!held || r.start_pos != r.cached) {
                return Err(format!(
                    "sequence {} resumes at position {} but its recurrent state is after position {}: it cannot be rewound (start over from position 0)",
                    r.seq,
                    r.start_pos,
                    if held { r.cached } else { 0 }
                ));
            }
            new += usize::from(!held);
        }
        if new > self.free.len() {
            return Err(self.none_free());
        }
        let mut slots = Vec::with_capacity(runs.len());
        let mut fresh = Vec::new();
        for r in runs {
            let slot = match self.held.get(&r.seq) {
                Some(&s) => s,
                None => {
                    let s = self.free.pop().expect("counted above");
                    self.held.insert(r.seq, s);
                    s
                }
            };
            if r.start_pos == 0 {
                fresh.push(slot);
            }
            slots.push(slot);
        }
        Ok((slots, fresh))
    }

    /// The slot `seq` holds, if any.
    pub fn slot_of(&self, seq: u64) -> Option<u32> {
        self.held.get(&seq).copied()
    }

    /// A slot for the new sequence `seq`, whose state the caller sets (from
    /// a prefix-cache snapshot) rather than zeroes.
    pub fn hold(&mut self, seq: u64) -> Result<u32, String> {
        if self.held.contains_key(&seq) {
            return Err(format!(
                "sequence {seq} holds a recurrent state slot already"
            ));
        }
        let s = self.free.pop().ok_or_else(|| self.none_free())?;
        self.held.insert(seq, s);
        Ok(s)
    }

    fn none_free(&self) -> String {
        format!(
            "no free recurrent state slot: {} sequences hold all {} (raise the plan's parallel sequences)",
            self.held.len(),
            self.capacity
        )
    }

    /// Gives a sequence's slot back (nothing if it holds none).
    pub fn release(&mut self, seq: u64) {
        if let Some(s) = self.held.remove(&seq) {
            self.free.push(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seq: u64, start_pos: usize, cached: usize) -> RunStart {
        RunStart {
            seq,
            start_pos,
            cached,
        }
    }

    #[test]
    fn sequences_take_zeroed_slots_and_give_them_back() {
        let mut s = StateSlots::new(2);
        assert_eq!(
            s.admit(&[run(7, 0, 0), run(9, 0, 0)]).unwrap(),
            (vec![0, 1], vec![0, 1])
        );
        // Continuing keeps the slot and its state.
        assert_eq!(s.admit(&[run(9, 5, 5)]).unwrap(), (vec![1], vec![]));
        // A third sequence finds none free, and nothing changes.
        let err = s.admit(&[run(9, 6, 6), run(3, 0, 0)]).unwrap_err();
        assert!(err.contains("no free recurrent state slot"), "{err}");
        assert_eq!(s.held(), 2);
        s.release(7);
        assert_eq!(s.admit(&[run(3, 0, 0)]).unwrap(), (vec![0], vec![0]));
        // Starting over at 0 zeroes the held slot (a replay).
        assert_eq!(s.admit(&[run(9, 0, 6)]).unwrap(), (vec![1], vec![1]));
    }

    #[test]
    fn state_cannot_rewind_or_start_midway() {
        let mut s = StateSlots::new(2);
        s.admit(&[run(1, 0, 0)]).unwrap();
        let err = s.admit(&[run(1, 3, 8)]).unwrap_err();
        assert!(err.contains("cannot be rewound"), "{err}");
        let err = s.admit(&[run(2, 4, 0)]).unwrap_err();
        assert!(err.contains("cannot be rewound"), "{err}");
        let err = s.admit(&[run(1, 8, 8), run(1, 9, 9)]).unwrap_err();
        assert!(err.contains("two runs"), "{err}");
        assert_eq!(s.held(), 1);
    }
}
