//! One sequence's constraint: the token mask for its next step, and the
//! grammar state advanced over what it generated.

use llguidance::Matcher;

use super::ConstraintError;

pub struct TokenConstraint {
    matcher: Matcher,
    /// Position of the first constrained token (the end of the prompt).
    start: usize,
    /// Positions up to here were fed to the matcher.
    consumed_to: usize,
}

impl TokenConstraint {
    pub(super) fn new(matcher: Matcher, start: usize) -> Self {
        TokenConstraint {
            matcher,
            start,
            consumed_to: start,
        }
    }

    /// Feeds the generated tokens the matcher has not seen. `history` holds
    /// positions `offset..`; after a failover the replayed prompt carries
    /// the tokens generated before, so this catches up the same way.
    pub fn follow(&mut self, history: &[u32], offset: usize) -> Result<(), ConstraintError> {
        let end = offset + history.len();
        if end <= self.consumed_to {
            return Ok(());
        }
        if offset > self.consumed_to {
            return Err(ConstraintError::Compile(format!(
                "constrained tokens from position {} are not in the stage's history (it starts at {offset})",
                self.consumed_to
            )));
        }
        let new = &history[self.consumed_to - offset..];
        self.consumed_to = end;
        self.matcher.consume_tokens(new).map_err(|e| {
            ConstraintError::Compile(format!("generated tokens leave the grammar: {e}"))
        })
    }

    /// Sets every logit the grammar forbids at this step to -inf (once the
    /// grammar is complete only end-of-generation tokens are left). Logits
    /// past the vocabulary (padded output heads) are forbidden too.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), ConstraintError> {
        let allowed = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| ConstraintError::Compile(format!("computing the token mask: {e}")))?;
        for (i, l) in logits.iter_mut().enumerate() {
            if i >= allowed.len() || !allowed.is_allowed(i as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    pub fn start(&self) -> usize {
        self.start
    }
}
