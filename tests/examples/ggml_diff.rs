//! Op-by-op comparison with llama.cpp: feeds each op the inputs llama.cpp
//! gave it (tensors dumped by a ggml eval callback) and counts how many
//! output values differ from llama.cpp's, bit for bit.
//!
//! `cargo run --release -p strata-tests --example ggml_diff -- DUMP_DIR MODEL`

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use strata_kernels::cpu::{CpuAct, CpuBackend};
use strata_kernels::KvGeometry;
use strata_kernels::{AttentionBatch, Backend, RopeConfig};
use strata_model::arch::{layer_tensor, HyperParams};
use strata_model::profile::KvType;
use strata_model::GgufFile;

struct Dump {
    op: String,
    ne: [usize; 4],
    data: Vec<f32>,
}

fn load_dumps(dir: &Path) -> Vec<(String, Dump)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            let nl = bytes.iter().position(|&b| b == b'\n').unwrap();
            let head = std::str::from_utf8(&bytes[..nl]).unwrap();
            let f: Vec<&str> = head.split(' ').collect();
            let ne = [1, 2, 3, 4].map(|i| f[1 + i].parse::<usize>().unwrap());
            let data = bytes[nl + 1..]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let fname = p.file_name().unwrap().to_str().unwrap();
            let name = fname[5..fname.len() - 4].to_string();
            (name, Dump { op: f[0].to_string(), ne, data })
        })
        .collect()
}

struct Dumps(Vec<(String, Dump)>);

impl Dumps {
    fn get(&self, name: &str, op: &str) -> Option<&Dump> {
        self.0.iter().find(|(n, d)| n == name && d.op == op).map(|(_, d)| d)
    }
    fn act(&self, name: &str, op: &str, cols: usize) -> Option<CpuAct> {
        let d = self.get(name, op)?;
        Some(CpuAct { data: d.data.clone(), rows: d.data.len() / cols, cols })
    }
}

#[derive(Default)]
struct Tally(HashMap<String, (usize, usize, f32)>);

impl Tally {
    fn compare(&mut self, op: &str, ours: &[f32], theirs: &[f32]) {
        assert_eq!(ours.len(), theirs.len(), "{op}: lengths");
        if std::env::var("PER_LAYER").is_ok() {
            let bad = ours.iter().zip(theirs).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            if bad > 0 {
                println!("  {op}: {bad} differ of {}", ours.len());
            }
        }
        let e = self.0.entry(op.to_string()).or_default();
        for (a, b) in ours.iter().zip(theirs) {
            e.1 += 1;
            if a.to_bits() != b.to_bits() {
                e.0 += 1;
                e.2 = e.2.max((a - b).abs());
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dumps = Dumps(load_dumps(Path::new(&args[1])));
    let file = GgufFile::open(&args[2]).unwrap();
    let hp = HyperParams::from_gguf(&file).unwrap();
    let be = CpuBackend::new();
    let w = |name: &str| {
        let info = file.tensor(name).unwrap_or_else(|| panic!("{name}"));
        be.load_weight(name, info.dtype, &info.dims, file.tensor_data(info)).unwrap()
    };
    let d = hp.d_model;
    let mut tally = Tally::default();
    for il in 0..hp.n_layers {
        let t = |n: &str| layer_tensor(il, n);
        let s = |n: &str| format!("{n}-{il}");
        if std::env::var("PER_LAYER").is_ok() {
            println!("layer {il}");
        }
        let input = if il == 0 {
            dumps.act("embd", "GET_ROWS", d)
        } else {
            dumps.act(&format!("l_out-{}", il - 1), "ADD", d)
        }
        .unwrap();
        let n = input.rows;
        if n == 1 && il > 0 && dumps.get(&s("attn_norm"), "MUL").map(|x| x.ne[1]) != Some(1) {
            continue;
        }
        let an = be.rms_norm(&input, &w(&t("attn_norm.weight")), hp.rms_eps);
        tally.compare("attn_norm", &an.data, &dumps.get(&s("attn_norm"), "MUL").unwrap().data);
        let an = dumps.act(&s("attn_norm"), "MUL", d).unwrap();
        let q = be.matmul(&w(&t("attn_q.weight")), &an);
        tally.compare("matmul q", &q.data, &dumps.get(&s("Qcur"), "MUL_MAT").unwrap().data);
        let k = be.matmul(&w(&t("attn_k.weight")), &an);
        tally.compare("matmul k", &k.data, &dumps.get(&s("Kcur"), "MUL_MAT").unwrap().data);
        let v = be.matmul(&w(&t("attn_v.weight")), &an);
        tally.compare("matmul v", &v.data, &dumps.get(&s("Vcur"), "MUL_MAT").unwrap().data);
        let rope = RopeConfig {
            style: hp.rope.style,
            head_dim: hp.head_dim,
            dims: hp.rope.dims,
            freq_base: hp.rope_base(il),
            freq_scale: hp.rope.freq_scale,
        };
        let positions: Vec<u32> = (0..n as u32).collect();
        let mut qr = dumps.act(&s("Qcur"), "MUL_MAT", hp.q_dim()).unwrap();
        be.rope(&mut qr, &positions, &rope, None);
        tally.compare("rope q", &qr.data, &dumps.get(&s("Qcur"), "ROPE").unwrap().data);
        let mut kr = dumps.act(&s("Kcur"), "MUL_MAT", hp.k_dim()).unwrap();
        be.rope(&mut kr, &positions, &rope, None);
        tally.compare("rope k", &kr.data, &dumps.get(&s("Kcur"), "ROPE").unwrap().data);
        // attention on llama.cpp's roped Q, K and V
        let qr = dumps.act(&s("Qcur"), "ROPE", hp.q_dim()).unwrap();
        let kr = dumps.act(&s("Kcur"), "ROPE", hp.k_dim()).unwrap();
        let vv = dumps.act(&s("Vcur"), "MUL_MAT", hp.v_dim()).unwrap();
        let geo = KvGeometry {
            n_layers: 1,
            n_kv_heads: hp.n_kv_heads,
            head_dim_k: hp.head_dim,
            head_dim_v: hp.head_dim_v,
            kv_type: KvType::F16,
            n_blocks: 4,
        };
        let mut cache = be.new_kv_cache(geo).unwrap();
        let seq = vec![0u32; n];
        let table: Vec<u32> = (0..4).collect();
        let tables = [&table[..]];
        let batch = AttentionBatch {
            positions: &positions,
            token_seq: &seq,
            block_tables: &tables,
            n_heads: hp.n_heads,
            scale: 1.0 / (hp.head_dim as f32).sqrt(),
            window: None,
        };
        let att = be.attention(&mut cache, 0, &qr, &kr, &vv, &batch);
        let fa = dumps.0.iter().filter(|(_, x)| x.op == "FLASH_ATTN_EXT").nth(il).unwrap();
        tally.compare("attention", &att.data, &fa.1.data);
        let kqv = dumps.act(&s("kqv_out"), "RESHAPE", d).unwrap();
        let o = be.matmul(&w(&t("attn_output.weight")), &kqv);
        tally.compare("matmul o", &o.data, &dumps.get(&s("attn_out"), "MUL_MAT").unwrap().data);
        let Some(ffn_inp) = dumps.act(&s("ffn_inp"), "ADD", d) else { continue };
        let fnorm = be.rms_norm(&ffn_inp, &w(&t("ffn_norm.weight")), hp.rms_eps);
        tally.compare("ffn_norm", &fnorm.data, &dumps.get(&s("ffn_norm"), "MUL").unwrap().data);
        let fnorm = dumps.act(&s("ffn_norm"), "MUL", d).unwrap();
        let gate = be.matmul(&w(&t("ffn_gate.weight")), &fnorm);
        tally.compare("matmul gate", &gate.data, &dumps.get(&s("ffn_gate"), "MUL_MAT").unwrap().data);
        let up = be.matmul(&w(&t("ffn_up.weight")), &fnorm);
        tally.compare("matmul up", &up.data, &dumps.get(&s("ffn_up"), "MUL_MAT").unwrap().data);
        let gate = dumps.act(&s("ffn_gate"), "MUL_MAT", hp.d_ff).unwrap();
        let up = dumps.act(&s("ffn_up"), "MUL_MAT", hp.d_ff).unwrap();
        let act = be.gated(&gate, &up, hp.activation);
        let sw = dumps.0.iter().find(|(nm, x)| nm.starts_with("ffn_") && nm.ends_with(&format!("-{il}")) && (x.op == "SWIGLU" || x.op == "GEGLU")).unwrap();
        tally.compare("gated", &act.data, &sw.1.data);
        let act = CpuAct { data: sw.1.data.clone(), rows: sw.1.data.len() / hp.d_ff, cols: hp.d_ff };
        let down = be.matmul(&w(&t("ffn_down.weight")), &act);
        tally.compare("matmul down", &down.data, &dumps.get(&s("ffn_out"), "MUL_MAT").unwrap().data);
    }
    let mut ops: Vec<_> = tally.0.into_iter().collect();
    ops.sort_by(|a, b| a.0.cmp(&b.0));
    for (op, (bad, total, max)) in ops {
        println!("{op:14} {bad:8} / {total:8} differ, max |diff| {max:e}");
    }
}
