//! The synthetic models' tokenizer: GPT-2 byte-level BPE over the 256
//! bytes, three ChatML specials, and filler up to the vocabulary size.

use crate::gguf::{GgufWriter, MetaValue};

/// GPT-2 byte-level BPE with one merge ("ĠĠ", two spaces): each byte is a
/// token; the rest of the vocabulary is filler so the embedding and head
/// have the real size. (One merge, not none: an empty array has no element
/// type, and llama.cpp refuses merges that are not strings.)
pub(super) fn add_tokenizer(w: &mut GgufWriter, vocab_size: usize, chat_template: Option<&str>) {
    let byte_chars = gpt2_byte_chars();
    let mut tokens = Vec::with_capacity(vocab_size);
    let mut types = Vec::with_capacity(vocab_size);
    for c in byte_chars {
        tokens.push(MetaValue::String(c.to_string()));
        types.push(MetaValue::I32(1));
    }
    for name in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
        tokens.push(MetaValue::String(name.into()));
        types.push(MetaValue::I32(3));
    }
    tokens.push(MetaValue::String("ĠĠ".into()));
    types.push(MetaValue::I32(1));
    while tokens.len() < vocab_size {
        tokens.push(MetaValue::String(format!("<synth_{}>", tokens.len())));
        types.push(MetaValue::I32(4));
    }
    tokens.truncate(vocab_size);
    types.truncate(vocab_size);
    w.add_metadata("tokenizer.ggml.model", MetaValue::String("gpt2".into()));
    w.add_metadata("tokenizer.ggml.pre", MetaValue::String("gpt-2".into()));
    w.add_metadata("tokenizer.ggml.tokens", MetaValue::Array(tokens));
    w.add_metadata("tokenizer.ggml.token_type", MetaValue::Array(types));
    w.add_metadata(
        "tokenizer.ggml.merges",
        MetaValue::Array(vec![MetaValue::String("Ġ Ġ".into())]),
    );
    w.add_metadata("tokenizer.ggml.bos_token_id", MetaValue::U32(256));
    w.add_metadata("tokenizer.ggml.eos_token_id", MetaValue::U32(258));
    w.add_metadata("tokenizer.ggml.add_bos_token", MetaValue::Bool(false));
    w.add_metadata(
        "tokenizer.chat_template",
        MetaValue::String(chat_template.map_or_else(
            || {
                "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}\
             {% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
                    .into()
            },
            str::to_string,
        )),
    );
}

/// GPT-2's printable stand-ins for the 256 byte values.
fn gpt2_byte_chars() -> Vec<char> {
    let mut chars = vec!['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        chars[b as usize] = if printable {
            char::from_u32(b).unwrap_or('?')
        } else {
            let c = char::from_u32(next).unwrap_or('?');
            next += 1;
            c
        };
    }
    chars
}
