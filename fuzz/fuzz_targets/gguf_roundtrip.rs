//! Fuzzes writer and reader together: metadata and tensors built from the
//! input, written, and read back must come back exactly.
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use strata_model::gguf::{GgufFile, GgufWriter, MetaValue};
use strata_model::GgmlType;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok((w, expected)) = build(&mut u) else { return };
    let fill = |i: usize, spec: &strata_model::gguf::TensorSpec, out: &mut dyn std::io::Write| {
        out.write_all(&vec![i as u8; spec.size_bytes as usize])
    };
    let Ok(bytes) = w.to_bytes(fill) else { return };
    let f = match GgufFile::from_bytes("roundtrip.gguf", &bytes) {
        Ok(f) => f,
        Err(e) => panic!("writer output does not read back: {e}"),
    };
    for (k, v) in &expected {
        let got = f.get(k).expect("key lost");
        assert!(same(got, v), "{k}: wrote {v:?}, read {got:?}");
    }
    assert_eq!(f.tensors.len(), w.tensors().len());
    for (i, (t, spec)) in f.tensors.iter().zip(w.tensors()).enumerate() {
        assert_eq!((&t.name, &t.dims, t.dtype), (&spec.name, &spec.dims, spec.dtype));
        assert!(f.tensor_data(t).iter().all(|&b| b == i as u8));
    }
});

/// Equality with floats compared by bits (NaN round-trips too).
fn same(a: &MetaValue, b: &MetaValue) -> bool {
    match (a, b) {
        (MetaValue::F32(x), MetaValue::F32(y)) => x.to_bits() == y.to_bits(),
        (MetaValue::F64(x), MetaValue::F64(y)) => x.to_bits() == y.to_bits(),
        (MetaValue::Array(x), MetaValue::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        _ => a == b,
    }
}

fn scalar(u: &mut Unstructured<'_>, type_id: u32) -> Result<MetaValue> {
    use MetaValue::*;
    Ok(match type_id {
        0 => U8(u.arbitrary()?),
        1 => I8(u.arbitrary()?),
        2 => U16(u.arbitrary()?),
        3 => I16(u.arbitrary()?),
        4 => U32(u.arbitrary()?),
        5 => I32(u.arbitrary()?),
        6 => F32(u.arbitrary()?),
        7 => Bool(u.arbitrary()?),
        8 => String(u.arbitrary()?),
        10 => U64(u.arbitrary()?),
        11 => I64(u.arbitrary()?),
        _ => F64(u.arbitrary()?),
    })
}

fn value(u: &mut Unstructured<'_>, depth: u32) -> Result<MetaValue> {
    let type_id = u.int_in_range(0..=12u32)?;
    if type_id != 9 {
        return scalar(u, type_id);
    }
    let n = u.int_in_range(0..=8usize)?;
    if depth == 0 && u.arbitrary()? {
        let mut items = Vec::new();
        for _ in 0..n {
            let elem = *u.choose(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12])?;
            let m = u.int_in_range(0..=4usize)?;
            items.push(MetaValue::Array((0..m).map(|_| scalar(u, elem)).collect::<Result<_>>()?));
        }
        return Ok(MetaValue::Array(items));
    }
    let elem = *u.choose(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12])?;
    Ok(MetaValue::Array((0..n).map(|_| scalar(u, elem)).collect::<Result<_>>()?))
}

fn build(u: &mut Unstructured<'_>) -> Result<(GgufWriter, Vec<(String, MetaValue)>)> {
    let mut w = GgufWriter::new();
    let mut expected: Vec<(String, MetaValue)> = Vec::new();
    for _ in 0..u.int_in_range(0..=8)? {
        let key: String = u.arbitrary()?;
        // The alignment is set below; split keys make a file a shard.
        if key == "general.alignment" || key.starts_with("split.") {
            continue;
        }
        let v = value(u, 0)?;
        expected.retain(|(k, _)| *k != key);
        expected.push((key.clone(), v.clone()));
        w.add_metadata(key, v);
    }
    if u.arbitrary()? {
        w.set_alignment(1 << u.int_in_range(0..=12)?);
    }
    for _ in 0..u.int_in_range(0..=4)? {
        let dtype = *u.choose(&GgmlType::ALL)?;
        let n_dims = u.int_in_range(1..=4usize)?;
        let mut dims = vec![dtype.block_elems() as u64 * u.int_in_range(1..=3u64)?];
        for _ in 1..n_dims {
            dims.push(u.int_in_range(1..=3u64)?);
        }
        let name: String = u.arbitrary()?;
        // Duplicate names are refused by add_tensor; skip them.
        let _ = w.add_tensor(name, &dims, dtype);
    }
    Ok((w, expected))
}
