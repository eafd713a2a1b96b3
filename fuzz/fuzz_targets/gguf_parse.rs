//! Fuzzes the GGUF parser: any bytes must give a `GgufFile` whose every
//! tensor's data can be borrowed, or an error; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_model::gguf::{GgufFile, MetaValue};

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = GgufFile::from_bytes("fuzz.gguf", data) {
        touch(&f);
    }
    // The same bytes cut into two shards of a split model, at a point the
    // first byte chooses.
    if let Some((&first, rest)) = data.split_first() {
        let cut = (first as usize * rest.len() / 255).min(rest.len());
        let (a, b) = rest.split_at(cut);
        if let Ok(f) = GgufFile::from_shard_bytes(&[("a.gguf", a), ("b.gguf", b)]) {
            touch(&f);
        }
    }
});

fn touch(f: &GgufFile) {
    let _ = format!("{f:?}");
    let mut sum = 0u64;
    for t in &f.tensors {
        let bytes = f.tensor_data(t);
        assert_eq!(bytes.len() as u64, t.size_bytes);
        sum = sum.wrapping_add(bytes.iter().map(|&b| b as u64).sum::<u64>());
        assert_eq!(t.n_elements(), t.row_len() * t.n_rows());
        assert!(f.tensor(&t.name).is_some());
        assert_eq!(t.offset % f.alignment.max(1), 0);
    }
    std::hint::black_box(sum);
    for (k, v) in &f.metadata {
        touch_value(v);
        let _ = (f.get_str(k), f.get_u64(k), f.get_f64(k), f.get_bool(k));
    }
    let _ = (f.architecture(), f.tensor_bytes(), f.shard_paths());
}

fn touch_value(v: &MetaValue) {
    std::hint::black_box(v.to_string());
    let _ = (v.as_u64(), v.as_i64(), v.as_f64(), v.as_bool(), v.as_str(), v.type_id());
    if let Some(items) = v.as_array() {
        items.iter().for_each(touch_value);
    }
}
