//! Writes a seed corpus for the `api_request` target:
//! `cargo run --bin request_seeds -- corpus/api_request`.
//! Request bodies as OpenAI clients send them, valid and refused.
use std::path::PathBuf;

const SEEDS: &[(&str, &str)] = &[
    ("chat-min", r#"{"messages":[{"role":"user","content":"Hi"}]}"#),
    ("chat-full", r#"{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hi"}]}],"temperature":0.7,"top_p":0.9,"top_k":20,"min_p":0.1,"seed":42,"presence_penalty":0.5,"frequency_penalty":-0.5,"repetition_penalty":1.1,"stop":["\n\n","END"],"max_tokens":64,"n":1,"stream":true,"stream_options":{"include_usage":true},"logprobs":true,"top_logprobs":5,"ignore_eos":false}"#),
    ("chat-max-completion", r#"{"messages":[{"role":"assistant","content":null}],"max_completion_tokens":1,"stop":"x"}"#),
    ("chat-tools", r#"{"messages":[],"tools":[{"type":"function"}],"tool_choice":"auto","response_format":{"type":"json_object"},"logit_bias":{"1":2}}"#),
    ("chat-bad-ranges", r#"{"messages":[{"role":"user","content":"x"}],"temperature":1e39,"top_k":-1,"max_tokens":0,"n":2,"stop":["","a","b","c","d","e","f","g","h","i","j","k","l","m","n","o","p"]}"#),
    ("completion-text", r#"{"model":"m","prompt":"Once upon a time","max_tokens":16,"logprobs":3,"echo":true,"suffix":"","best_of":1}"#),
    ("completion-texts", r#"{"prompt":["a"],"temperature":0,"grammar":null,"json_schema":{}}"#),
    ("completion-tokens", r#"{"prompt":[1,2,3,4294967295],"seed":18446744073709551615,"top_k":9223372036854775807}"#),
    ("completion-nested", r#"{"prompt":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],"stop":{"a":1}}"#),
];

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus/api_request".into()));
    std::fs::create_dir_all(&dir)?;
    for (name, body) in SEEDS {
        std::fs::write(dir.join(format!("{name}.json")), body)?;
    }
    println!("wrote {} seeds to {}", SEEDS.len(), dir.display());
    Ok(())
}
