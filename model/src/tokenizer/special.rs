//! Which tokens end a turn or generation, and per-token strip attributes,
//! found by token text as llama.cpp's `llama_vocab::impl::load` finds them.

use std::collections::{BTreeSet, HashMap};

use super::{attr, TokenData};
use crate::gguf::GgufFile;

/// Token texts that end a turn (llama.cpp's EOT auto-detection list).
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];

/// Token texts that end generation (llama.cpp's EOG list).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// FIM pad / repo / file-separator texts, which llama.cpp also treats as EOG.
const FIM_EOG_TEXTS: &[&[&str]] = &[
    &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    &[
        "<|fim_repo|>",
        "<|repo_name|>",
        "<fim-repo>",
        "<REPO>",
        "<reponame>",
    ],
    &["<|file_sep|>"],
];

/// The end-of-turn token (the metadata's, else found by text) and the set of
/// end-of-generation tokens; the tokens found by text become control tokens.
pub(super) fn end_tokens(
    tokens: &mut [TokenData],
    token_to_id: &HashMap<String, u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
) -> (Option<u32>, BTreeSet<u32>) {
    let eot = eot.or_else(|| {
        let id = EOT_TEXTS
            .iter()
            .find_map(|t| token_to_id.get(*t).copied())?;
        tokens[id as usize].attr |= attr::CONTROL;
        Some(id)
    });
    let mut eog = BTreeSet::new();
    for group in FIM_EOG_TEXTS {
        if let Some(id) = group.iter().find_map(|t| token_to_id.get(*t).copied()) {
            eog.insert(id);
        }
    }
    for text in EOG_TEXTS {
        if let Some(&id) = token_to_id.get(*text) {
            eog.insert(id);
        }
    }
    for &id in &eog {
        tokens[id as usize].attr |= attr::CONTROL;
    }
    // gpt-oss: these are always rendered.
    for text in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
        if let Some(&id) = token_to_id.get(text) {
            tokens[id as usize].attr = attr::USER_DEFINED;
        }
    }
    eog.extend(eos.iter().chain(eot.iter()).chain(eom.iter()).copied());
    prune_end_tokens(tokens, &mut eog);
    (eot, eog)
}

/// llama.cpp's two exceptions to its EOG list: with `<|return|>` and
/// `<|call|>` (gpt-oss) or `<|calls|>` and `<|flush|>` (solar-open), `<|end|>`
/// ends a message, not generation, and is rendered; with `<|tool_response>`
/// (Gemma 4) or `<|plamo:eos|>`, `</s>` is an ordinary token.
fn prune_end_tokens(tokens: &mut [TokenData], eog: &mut BTreeSet<u32>) {
    let by_text: HashMap<String, u32> = eog
        .iter()
        .map(|&id| (tokens[id as usize].text.clone(), id))
        .collect();
    let has = |text: &str| by_text.contains_key(text);
    let has_call = has("<|call|>") || has("<|calls|>");
    let mut demote = |text: &str, to: u32| {
        if let Some(&id) = by_text.get(text) {
            eog.remove(&id);
            tokens[id as usize].attr = to;
        }
    };
    if has_call && (has("<|return|>") || has("<|flush|>")) {
        demote("<|end|>", attr::USER_DEFINED);
    }
    if has("<|tool_response>") || has("<|plamo:eos|>") {
        demote("</s>", attr::NORMAL);
    }
}

/// Per-token strip attributes llama.cpp sets by model name (Phi-3: special
/// tokens swallow the whitespace after them, except `<unk>`, `<s>`, `<|endoftext|>`).
pub(super) fn set_strip_attrs(
    f: &GgufFile,
    tokens: &mut [TokenData],
    token_to_id: &HashMap<String, u32>,
    special: &[u32],
) {
    let name = f
        .get_str("general.name")
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !(name.contains("phi-3") || name.contains("phi3")) {
        return;
    }
    for &id in special {
        tokens[id as usize].attr |= attr::RSTRIP;
    }
    if let Some(&id) = token_to_id.get("</s>") {
        tokens[id as usize].attr |= attr::RSTRIP;
    }
    for text in ["<unk>", "<s>", "<|endoftext|>"] {
        if let Some(&id) = token_to_id.get(text) {
            tokens[id as usize].attr &= !attr::RSTRIP;
        }
    }
}
