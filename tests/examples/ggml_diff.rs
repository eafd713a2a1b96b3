//! Op-by-op comparison with llama.cpp: feeds each op of every layer the
//! inputs llama.cpp gave it (tensors dumped by a ggml eval callback, one
//! file per graph node: `NNNN.name.bin`, a text header line `OP TYPE ne0
//! ne1 ne2 ne3`, then f32 values) and counts the output values that differ
//! from llama.cpp's, bit for bit.
//!
//! `cargo run --release -p strata-tests --example ggml_diff -- DUMP_DIR MODEL`
//! (`PER_LAYER=1` prints the layers where an op differs.)

use std::collections::BTreeMap;
use std::path::Path;

use strata_kernels::cpu::{CpuAct, CpuBackend};
use strata_kernels::{AttentionBatch, Backend, KvGeometry, RopeConfig};
use strata_model::arch::{layer_tensor, ModelSpec};
use strata_model::profile::KvType;
use strata_model::GgufFile;

struct Node {
    name: String,
    op: String,
    data: Vec<f32>,
}

fn load_nodes(dir: &Path) -> Vec<Node> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("dump dir")
        .map(|e| e.expect("dump entry").path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).expect("dump file");
            let nl = bytes.iter().position(|&b| b == b'\n').expect("header");
            let head = std::str::from_utf8(&bytes[..nl]).expect("header text");
            let fname = p.file_name().and_then(|f| f.to_str()).expect("name");
            Node {
                name: fname[5..fname.len() - 4].to_string(),
                op: head.split(' ').next().unwrap_or_default().to_string(),
                data: bytes[nl + 1..]
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            }
        })
        .collect()
}

/// The nodes of one layer, found by name and op, or by op after another node.
struct Layer<'a>(&'a [Node]);

impl<'a> Layer<'a> {
    fn named(&self, name: &str, op: &str) -> Option<&'a Node> {
        self.0.iter().find(|n| n.name == name && n.op == op)
    }
    /// The first `op` node after the node `after`.
    fn after(&self, after: &Node, op: &str) -> Option<&'a Node> {
        let i = self.0.iter().position(|n| std::ptr::eq(n, after))?;
        self.0[i + 1..].iter().find(|n| n.op == op)
    }
    fn op(&self, op: &str) -> Option<&'a Node> {
        self.0.iter().find(|n| n.op == op)
    }
}

fn act(n: &Node, cols: usize) -> CpuAct {
    CpuAct {
        data: n.data.clone(),
        rows: n.data.len() / cols,
        cols,
    }
}

#[derive(Default)]
struct Tally(BTreeMap<String, (usize, usize, f32)>);

impl Tally {
    fn compare(&mut self, il: usize, op: &str, ours: &[f32], theirs: Option<&Node>) {
        let Some(theirs) = theirs else {
            println!("  layer {il}: no llama.cpp node for {op}");
            return;
        };
        let theirs = &theirs.data;
        if ours.len() != theirs.len() {
            println!(
                "  layer {il} {op}: {} values vs {}",
                ours.len(),
                theirs.len()
            );
            return;
        }
        let e = self.0.entry(op.to_string()).or_default();
        let mut bad = 0;
        for (a, b) in ours.iter().zip(theirs) {
            e.1 += 1;
            if a.to_bits() != b.to_bits() {
                bad += 1;
                e.2 = e.2.max((a - b).abs());
            }
        }
        e.0 += bad;
        if bad > 0 && std::env::var_os("PER_LAYER").is_some() {
            println!("  layer {il} {op}: {bad} of {} differ", ours.len());
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, model] = &args[..] else {
        eprintln!("usage: ggml_diff DUMP_DIR MODEL");
        std::process::exit(2);
    };
    let nodes = load_nodes(Path::new(dir));
    let file = GgufFile::open(model).expect("model");
    let hp = ModelSpec::from_gguf(&file).expect("hyper-parameters");
    let be = CpuBackend::new();
    let w = |name: &str| {
        let info = file
            .tensor(name)
            .unwrap_or_else(|| panic!("no tensor {name}"));
        be.load_weight(name, info.dtype, &info.dims, file.tensor_data(info))
            .expect("weight")
    };
    let d = hp.d_model;
    let mut tally = Tally::default();

    // Embedding (and its scale).
    let all = Layer(&nodes);
    let embd = all.named("embd", "GET_ROWS").expect("embd");
    let ids_n = embd.data.len() / d;
    let mut x0 = embd.data.clone();
    if let Some(scale) = hp.embedding_scale {
        x0.iter_mut().for_each(|v| *v *= scale);
        tally.compare(0, "embedding scale", &x0, all.named("inp_scaled", "SCALE"));
    }

    let start_pos: usize = std::env::var("START_POS").map_or(0, |v| v.parse().expect("START_POS"));
    let mut start = 0;
    for il in 0..hp.n_layers {
        let a = hp
            .attention(il)
            .expect("ggml_diff compares attention layers only");
        let end = nodes
            .iter()
            .position(|n| n.name == format!("l_out-{il}"))
            .expect("l_out")
            + 1;
        let l = Layer(&nodes[start..end]);
        start = end;
        let t = |n: &str| layer_tensor(il, n);
        let s = |n: &str| format!("{n}-{il}");
        let mut cmp = |op: &str, ours: &CpuAct, theirs: Option<&Node>| {
            tally.compare(il, op, &ours.data, theirs)
        };

        let input = if il == 0 {
            CpuAct {
                data: x0.clone(),
                rows: ids_n,
                cols: d,
            }
        } else {
            act(
                Layer(&nodes)
                    .named(&format!("l_out-{}", il - 1), "ADD")
                    .expect("l_out"),
                d,
            )
        };
        let attn_norm = l.named(&s("attn_norm"), "MUL").expect("attn_norm");
        cmp(
            "attn_norm",
            &be.rms_norm(&input, &w(&t("attn_norm.weight")), hp.rms_eps)
                .unwrap(),
            Some(attn_norm),
        );
        let h = act(attn_norm, d);
        let q_mm = l.named(&s("Qcur"), "MUL_MAT").expect("Q");
        let k_mm = l.named(&s("Kcur"), "MUL_MAT").expect("K");
        let v_mm = l.named(&s("Vcur"), "MUL_MAT").expect("V");
        cmp(
            "matmul q",
            &be.matmul(&w(&t("attn_q.weight")), &h).unwrap(),
            Some(q_mm),
        );
        cmp(
            "matmul k",
            &be.matmul(&w(&t("attn_k.weight")), &h).unwrap(),
            Some(k_mm),
        );
        cmp(
            "matmul v",
            &be.matmul(&w(&t("attn_v.weight")), &h).unwrap(),
            Some(v_mm),
        );

        let mut q = act(q_mm, a.q_dim());
        let mut k = act(k_mm, a.k_dim());
        if a.qk_norm {
            let qn = l.named(&s("Qcur_normed"), "MUL");
            let kn = l.named(&s("Kcur_normed"), "MUL");
            cmp(
                "q_norm",
                &be.rms_norm(&q, &w(&t("attn_q_norm.weight")), hp.rms_eps)
                    .unwrap(),
                qn,
            );
            cmp(
                "k_norm",
                &be.rms_norm(&k, &w(&t("attn_k_norm.weight")), hp.rms_eps)
                    .unwrap(),
                kn,
            );
            q = act(qn.expect("Qcur_normed"), a.q_dim());
            k = act(kn.expect("Kcur_normed"), a.k_dim());
        }
        let rope = RopeConfig {
            style: a.rope.style,
            head_dim: a.head_dim,
            dims: a.rope.dims,
            freq_base: a.rope.freq_base,
            freq_scale: a.rope.freq_scale,
            yarn: None,
        };
        let n = q.rows;
        let positions: Vec<u32> = (start_pos as u32..(start_pos + n) as u32).collect();
        be.rope(&mut q, &positions, &rope, None).unwrap();
        be.rope(&mut k, &positions, &rope, None).unwrap();
        let q_rope = l.named(&s("Qcur"), "ROPE");
        let k_rope = l.named(&s("Kcur"), "ROPE");
        cmp("rope q", &q, q_rope);
        cmp("rope k", &k, k_rope);

        // Attention on llama.cpp's Q (as it enters the op), K and V.
        let fa = l.op("FLASH_ATTN_EXT").expect("flash attention");
        let fa_at =
            l.0.iter()
                .position(|x| std::ptr::eq(x, fa))
                .expect("fa index");
        let q_in = l.0[..fa_at]
            .iter()
            .rev()
            .find(|x| x.op == "SCALE" || (x.op == "ROPE" && x.name == s("Qcur")));
        let q_in = act(q_in.expect("Q into attention"), a.q_dim());
        let q_scaled = q_in.data != q_rope.expect("rope q").data;
        let geo = KvGeometry {
            n_layers: 1,
            n_kv_heads: a.n_kv_heads,
            head_dim_k: a.head_dim,
            head_dim_v: a.head_dim_v,
            kv_type: KvType::F16,
            n_blocks: n.div_ceil(strata_kernels::KV_BLOCK_TOKENS),
        };
        let geo = KvGeometry {
            n_blocks: (start_pos + n).div_ceil(strata_kernels::KV_BLOCK_TOKENS),
            ..geo
        };
        let mut cache = be.new_kv_cache(geo).expect("kv cache");
        let table: Vec<u32> = (0..geo.n_blocks as u32).collect();
        let tables = [&table[..]];
        let scale = if q_scaled { 1.0 } else { a.scale };
        // The cache as llama.cpp holds it after this batch (earlier
        // positions come from its cache view), then this batch's queries.
        let total = start_pos + n;
        let (k_all, v_all) = if start_pos == 0 {
            (
                act(k_rope.expect("rope k"), a.k_dim()),
                act(v_mm, a.v_dim()),
            )
        } else {
            let view = |name: String, cols: usize| {
                let node =
                    l.0.iter()
                        .find(|x| x.name == name && x.op == "VIEW")
                        .expect("cache view");
                CpuAct {
                    data: node.data[..total * cols].to_vec(),
                    rows: total,
                    cols,
                }
            };
            (
                view(format!("cache_k_l{il}_(view)"), a.k_dim()),
                view(format!("cache_v_l{il}_(view)"), a.v_dim()),
            )
        };
        let all_pos: Vec<u32> = (0..total as u32).collect();
        let seq = vec![0u32; total];
        let batch_for = |positions| AttentionBatch {
            positions,
            token_seq: &seq,
            block_tables: &tables,
            n_heads: a.n_heads,
            scale,
            scale_query: false,
            window: a.window,
            sinks: None,
            decode: &[],
            tiled: &[],
        };
        cache.write(0, &k_all, &v_all, &batch_for(&all_pos));
        let att = cache.attend(0, &q_in, &batch_for(&positions));
        cmp("attention", &att, Some(fa));

        let kqv = act(l.after(fa, "RESHAPE").expect("kqv_out"), a.out_dim());
        let o_mm = l.after(fa, "MUL_MAT").expect("attn_output");
        cmp(
            "matmul o",
            &be.matmul(&w(&t("attn_output.weight")), &kqv).unwrap(),
            Some(o_mm),
        );
        let mut o = act(o_mm, d);
        if hp.layers[il].post_norms {
            let pn = l.named(&s("attn_post_norm"), "MUL");
            cmp(
                "post_attn_norm",
                &be.rms_norm(&o, &w(&t("post_attention_norm.weight")), hp.rms_eps)
                    .unwrap(),
                pn,
            );
            o = act(pn.expect("attn_post_norm"), d);
        }
        let ffn_inp = l.after(o_mm, "ADD").expect("residual add");
        let mut sum = input.clone();
        if sum.rows != o.rows {
            // The last layer keeps only the output rows after attention.
            continue;
        }
        be.add_assign(&mut sum, &o).unwrap();
        cmp("residual add", &sum, Some(ffn_inp));

        let ffn_in = act(ffn_inp, d);
        let ffn_norm = l.named(&s("ffn_norm"), "MUL");
        cmp(
            "ffn_norm",
            &be.rms_norm(&ffn_in, &w(&t("ffn_norm.weight")), hp.rms_eps)
                .unwrap(),
            ffn_norm,
        );
        let h = act(ffn_norm.expect("ffn_norm"), d);
        let gate = l.named(&s("ffn_gate"), "MUL_MAT").expect("gate");
        let up = l.named(&s("ffn_up"), "MUL_MAT").expect("up");
        cmp(
            "matmul gate",
            &be.matmul(&w(&t("ffn_gate.weight")), &h).unwrap(),
            Some(gate),
        );
        cmp(
            "matmul up",
            &be.matmul(&w(&t("ffn_up.weight")), &h).unwrap(),
            Some(up),
        );
        let glu = l
            .after(up, "SWIGLU")
            .or_else(|| l.after(up, "GEGLU"))
            .expect("glu");
        cmp(
            "gated",
            &be.gated(
                &act(gate, ffn_width(&hp, il)),
                &act(up, ffn_width(&hp, il)),
                ffn_activation(&hp, il),
            )
            .unwrap(),
            Some(glu),
        );
        let down = l.named(&s("ffn_out"), "MUL_MAT").expect("down");
        cmp(
            "matmul down",
            &be.matmul(&w(&t("ffn_down.weight")), &act(glu, ffn_width(&hp, il)))
                .unwrap(),
            Some(down),
        );
        if hp.layers[il].post_norms {
            let pn = l.named(&s("ffn_post_norm"), "MUL");
            cmp(
                "post_ffn_norm",
                &be.rms_norm(&act(down, d), &w(&t("post_ffw_norm.weight")), hp.rms_eps)
                    .unwrap(),
                pn,
            );
        }
    }

    // Output head.
    let result_norm = all.named("result_norm", "MUL").expect("result_norm");
    let out_name = if file.tensor("output.weight").is_some() {
        "output.weight"
    } else {
        "token_embd.weight"
    };
    let logits = be.matmul(&w(out_name), &act(result_norm, d)).unwrap();
    tally.compare(
        hp.n_layers,
        "output head",
        &logits.data,
        all.named("result_output", "MUL_MAT"),
    );

    // The whole forward pass on the prompt (`IDS="1 2 3"`), chained.
    if let Ok(ids) = std::env::var("IDS") {
        let ids: Vec<u32> = ids
            .split_whitespace()
            .map(|v| v.parse().expect("id"))
            .collect();
        let range = strata_model::LayerRange {
            first: 0,
            end: hp.n_layers,
        };
        let mut stage =
            strata_worker::Stage::load(CpuBackend::new(), &file, range, 256).expect("stage");
        let logits =
            strata_worker::generate::prefill(&mut stage, 0, 0, &ids, None).expect("prefill");
        tally.compare(
            hp.n_layers,
            "whole forward",
            &logits[0],
            all.named("result_output", "MUL_MAT"),
        );
    }

    for (op, (bad, total, max)) in tally.0 {
        println!("{op:16} {bad:8} / {total:8} differ, max |diff| {max:e}");
    }
}

/// The dense feed-forward of layer `il` (this tool compares dense models).
fn dense(hp: &ModelSpec, il: usize) -> &strata_model::arch::DenseSpec {
    match &hp.layers[il].ffn {
        strata_model::arch::FeedForward::Dense(d) => d,
        strata_model::arch::FeedForward::Moe(_) => panic!("ggml_diff compares dense models only"),
    }
}

fn ffn_width(hp: &ModelSpec, il: usize) -> usize {
    dense(hp, il).d_ff
}

fn ffn_activation(hp: &ModelSpec, il: usize) -> strata_model::arch::Activation {
    dense(hp, il).activation
}
