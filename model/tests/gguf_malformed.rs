//! Malformed GGUF input: every corruption gives a specific `GgufError` that
//! names the file and the problem, never a panic.
use strata_model::gguf::{GgufError, GgufFile, GgufWriter, MetaValue};
use strata_model::GgmlType;

const NAME: &str = "corrupt.gguf";

/// A small valid file: four metadata keys, an F32 tensor (256 bytes at data
/// offset 0) and a Q8_0 tensor (68 bytes at data offset 256).
fn valid() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", MetaValue::String("llama".into()));
    w.add_metadata("test.u32", MetaValue::U32(7));
    w.add_metadata(
        "test.array",
        MetaValue::Array(vec![
            MetaValue::U32(1),
            MetaValue::U32(2),
            MetaValue::U32(3),
        ]),
    );
    w.add_metadata("test.str", MetaValue::String("hello".into()));
    w.add_metadata("test.bool", MetaValue::Bool(true));
    w.add_tensor("a.weight", &[32, 2], GgmlType::F32).unwrap();
    w.add_tensor("b.weight", &[64], GgmlType::Q8_0).unwrap();
    w.to_bytes(|i, spec, out| out.write_all(&vec![i as u8 + 1; spec.size_bytes as usize]))
        .unwrap()
}

fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{needle:?} not in file"))
}

/// Offset of a length-prefixed string (its u64 length) in the file.
fn string_at(bytes: &[u8], s: &str) -> usize {
    let mut needle = (s.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(s.as_bytes());
    find(bytes, &needle)
}

/// Offset just past a metadata key: its u32 value type.
fn key_type_at(bytes: &[u8], key: &str) -> usize {
    string_at(bytes, key) + 8 + key.len()
}

/// Offsets of a tensor info's fields: (n_dims, first dim, type, offset).
fn tensor_fields(bytes: &[u8], name: &str) -> (usize, usize, usize, usize) {
    let n_dims_at = string_at(bytes, name) + 8 + name.len();
    let n_dims = u32::from_le_bytes(bytes[n_dims_at..n_dims_at + 4].try_into().unwrap()) as usize;
    let dims_at = n_dims_at + 4;
    let type_at = dims_at + 8 * n_dims;
    (n_dims_at, dims_at, type_at, type_at + 4)
}

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn parse(bytes: &[u8]) -> GgufError {
    match GgufFile::from_bytes(NAME, bytes) {
        Ok(f) => panic!("corrupt file parsed: {f:?}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with(NAME), "error does not name the file: {msg}");
            e
        }
    }
}

/// Asserts the error message mentions every one of `words`.
fn mentions(e: &GgufError, words: &[&str]) {
    let msg = e.to_string();
    for w in words {
        assert!(msg.contains(w), "{msg:?} does not mention {w:?}");
    }
}

#[test]
fn valid_file_parses() {
    let f = GgufFile::from_bytes(NAME, &valid()).unwrap();
    assert_eq!(f.tensors.len(), 2);
    assert_eq!(f.tensor_data(f.tensor("b.weight").unwrap()), &[2u8; 68][..]);
    assert_eq!(f.get_bool("test.bool"), Some(true));
}

#[test]
fn bad_magic() {
    let mut b = valid();
    b[..4].copy_from_slice(b"GGML");
    let e = parse(&b);
    assert!(
        matches!(e, GgufError::BadMagic { magic, .. } if &magic == b"GGML"),
        "{e}"
    );
    mentions(&e, &["not a GGUF file"]);
}

#[test]
fn unsupported_versions() {
    for version in [0, 1, 4, u32::MAX] {
        let mut b = valid();
        put_u32(&mut b, 4, version);
        let e = parse(&b);
        assert!(
            matches!(e, GgufError::UnsupportedVersion { version: v, .. } if v == version),
            "{e}"
        );
        mentions(&e, &["unsupported GGUF version", &version.to_string()]);
    }
}

#[test]
fn truncated_header() {
    let b = valid();
    for (len, what) in [
        (0, "magic"),
        (3, "magic"),
        (6, "version"),
        (12, "tensor count"),
        (20, "metadata count"),
    ] {
        let e = parse(&b[..len]);
        assert!(
            matches!(&e, GgufError::Truncated { what: w, .. } if w == what),
            "{len}: {e}"
        );
        mentions(&e, &["truncated", what]);
    }
}

#[test]
fn truncated_metadata() {
    let b = valid();
    // Cut inside the value "hello" of test.str.
    let cut = string_at(&b, "hello") + 10;
    let e = parse(&b[..cut]);
    assert!(
        matches!(&e, GgufError::Truncated { what, .. } if what.contains("test.str")),
        "{e}"
    );
    mentions(&e, &["truncated", "test.str"]);
    // Cut inside a key.
    let cut = string_at(&b, "test.bool") + 10;
    let e = parse(&b[..cut]);
    assert!(
        matches!(&e, GgufError::Truncated { what, .. } if what == "metadata key"),
        "{e}"
    );
}

#[test]
fn truncated_tensor_infos() {
    let b = valid();
    let (_, dims_at, type_at, offset_at) = tensor_fields(&b, "b.weight");
    for (cut, what) in [
        (dims_at + 3, "tensor dim"),
        (type_at + 1, "tensor type"),
        (offset_at + 7, "tensor offset"),
    ] {
        let e = parse(&b[..cut]);
        assert!(
            matches!(&e, GgufError::Truncated { what: w, .. } if w == what),
            "{e}"
        );
        mentions(&e, &["truncated", what]);
    }
}

#[test]
fn truncated_data() {
    let b = valid();
    let data_start = b.len() - 352;
    // b.weight occupies data [256, 324).
    let e = parse(&b[..data_start + 300]);
    assert!(
        matches!(&e, GgufError::BadTensor { tensor, .. } if tensor == "b.weight"),
        "{e}"
    );
    mentions(&e, &["b.weight", "outside", "truncated"]);
    // No data section at all: the file ends right after the tensor infos.
    let (_, _, _, offset_at) = tensor_fields(&b, "b.weight");
    let e = parse(&b[..offset_at + 8]);
    let ok = match &e {
        GgufError::Truncated { what, .. } => what == "tensor data section",
        GgufError::BadTensor { what, .. } => what.contains("outside"),
        _ => false,
    };
    assert!(ok, "{e}");
}

#[test]
fn corrupted_header_counts() {
    let b = valid();
    let mut t = b.clone();
    put_u64(&mut t, 8, u64::MAX);
    let e = parse(&t);
    assert!(matches!(e, GgufError::Invalid { .. }), "{e}");
    mentions(&e, &["tensor count", &u64::MAX.to_string(), "cannot fit"]);

    let mut t = b.clone();
    put_u64(&mut t, 16, 1 << 40);
    let e = parse(&t);
    assert!(matches!(e, GgufError::Invalid { .. }), "{e}");
    mentions(&e, &["metadata count", "cannot fit"]);

    // Off by one: the parser reads past the real entries and must still fail cleanly.
    for (at, delta) in [(8, 1), (16, 1), (8, 3)] {
        let mut t = b.clone();
        let v = u64::from_le_bytes(t[at..at + 8].try_into().unwrap());
        put_u64(&mut t, at, v + delta);
        parse(&t);
    }
    // One tensor fewer leaves the second tensor's info read as padding: still an error.
    let mut t = b.clone();
    put_u64(&mut t, 16, 4);
    parse(&t);
}

#[test]
fn absurd_string_lengths() {
    let b = valid();
    let at = string_at(&b, "test.str");
    let mut t = b.clone();
    put_u64(&mut t, at, 1 << 62);
    let e = parse(&t);
    assert!(matches!(e, GgufError::Invalid { .. }), "{e}");
    mentions(
        &e,
        &["metadata key", "absurd length", &(1u64 << 62).to_string()],
    );

    // Under the limit but longer than the file.
    let mut t = b.clone();
    put_u64(&mut t, at, 1 << 20);
    let e = parse(&t);
    assert!(
        matches!(e, GgufError::Truncated { needed, .. } if needed == 1 << 20),
        "{e}"
    );

    // A string value and a tensor name.
    let mut t = b.clone();
    put_u64(&mut t, string_at(&b, "hello"), u64::MAX);
    mentions(&parse(&t), &["test.str", "absurd length"]);
    let mut t = b.clone();
    put_u64(&mut t, string_at(&b, "a.weight"), u64::MAX - 7);
    mentions(&parse(&t), &["tensor name", "absurd length"]);
}

#[test]
fn absurd_array_counts() {
    let b = valid();
    let count_at = key_type_at(&b, "test.array") + 4 + 4;
    for (count, words) in [
        (u64::MAX, &["beyond the limit"][..]),
        (1 << 20, &["cannot fit"][..]),
    ] {
        let mut t = b.clone();
        put_u64(&mut t, count_at, count);
        let e = parse(&t);
        assert!(
            matches!(&e, GgufError::BadMetadata { key, .. } if key == "test.array"),
            "{e}"
        );
        mentions(&e, words);
        mentions(&e, &[&count.to_string()]);
    }
}

#[test]
fn unknown_metadata_value_types() {
    let b = valid();
    let mut t = b.clone();
    put_u32(&mut t, key_type_at(&b, "test.u32"), 99);
    let e = parse(&t);
    assert!(
        matches!(&e, GgufError::BadMetadata { key, .. } if key == "test.u32"),
        "{e}"
    );
    mentions(&e, &["unknown value type 99"]);

    let mut t = b.clone();
    put_u32(&mut t, key_type_at(&b, "test.array") + 4, 77);
    let e = parse(&t);
    assert!(
        matches!(&e, GgufError::BadMetadata { key, .. } if key == "test.array"),
        "{e}"
    );
    mentions(&e, &["unknown array element type 77"]);
}

#[test]
fn bad_metadata_values() {
    let b = valid();
    let mut t = b.clone();
    let bool_at = key_type_at(&b, "test.bool") + 4;
    t[bool_at] = 2;
    mentions(&parse(&t), &["test.bool", "bool byte 2"]);

    let mut t = b.clone();
    let h = string_at(&b, "hello") + 8;
    t[h] = 0xff;
    let e = parse(&t);
    assert!(matches!(e, GgufError::Invalid { .. }), "{e}");
    mentions(&e, &["test.str", "UTF-8"]);
}

#[test]
fn bad_alignment() {
    for a in [0u32, 3, 48, 1 << 21] {
        let mut w = GgufWriter::new();
        w.add_metadata("general.alignment", MetaValue::U32(a));
        // The writer refuses it too; patch it into a valid file instead.
        assert!(w.to_bytes(|_, _, _| Ok(())).is_err());
        let mut w = GgufWriter::new();
        w.set_alignment(64);
        let mut b = w.to_bytes(|_, _, _| Ok(())).unwrap();
        let at = key_type_at(&b, "general.alignment") + 4;
        put_u32(&mut b, at, a);
        let e = parse(&b);
        assert!(
            matches!(&e, GgufError::BadMetadata { key, .. } if key == "general.alignment"),
            "{e}"
        );
        mentions(&e, &["power of two"]);
    }
}

#[test]
fn unknown_tensor_types() {
    let b = valid();
    let (_, _, type_at, _) = tensor_fields(&b, "a.weight");
    for id in [4u32, 5, 16, 29, 31, u32::MAX] {
        let mut t = b.clone();
        put_u32(&mut t, type_at, id);
        let e = parse(&t);
        assert!(
            matches!(&e, GgufError::BadTensor { tensor, .. } if tensor == "a.weight"),
            "{e}"
        );
        mentions(&e, &[&format!("unknown tensor type id {id}")]);
    }
}

#[test]
fn tensor_data_outside_file() {
    let b = valid();
    let (_, _, _, offset_at) = tensor_fields(&b, "b.weight");
    for offset in [1 << 20, u64::MAX - 31, 320] {
        let mut t = b.clone();
        put_u64(&mut t, offset_at, offset);
        let e = parse(&t);
        assert!(
            matches!(&e, GgufError::BadTensor { tensor, .. } if tensor == "b.weight"),
            "{offset}: {e}"
        );
        mentions(&e, &["outside"]);
    }
}

#[test]
fn overlapping_tensors() {
    let b = valid();
    let (_, _, _, offset_at) = tensor_fields(&b, "b.weight");
    for offset in [0, 224] {
        let mut t = b.clone();
        put_u64(&mut t, offset_at, offset);
        let e = parse(&t);
        assert!(matches!(&e, GgufError::BadTensor { .. }), "{e}");
        mentions(&e, &["overlaps", "a.weight"]);
    }
}

#[test]
fn misaligned_offsets() {
    let b = valid();
    let (_, _, _, offset_at) = tensor_fields(&b, "b.weight");
    let mut t = b.clone();
    put_u64(&mut t, offset_at, 257);
    let e = parse(&t);
    assert!(
        matches!(&e, GgufError::BadTensor { tensor, .. } if tensor == "b.weight"),
        "{e}"
    );
    mentions(&e, &["offset 257", "not aligned to 32"]);
}

#[test]
fn duplicate_names() {
    let b = valid();
    let mut t = b.clone();
    let at = string_at(&b, "b.weight") + 8;
    t[at] = b'a';
    let e = parse(&t);
    assert!(
        matches!(&e, GgufError::BadTensor { tensor, .. } if tensor == "a.weight"),
        "{e}"
    );
    mentions(&e, &["appears twice"]);

    let mut t = b.clone();
    let at = string_at(&b, "test.str") + 8;
    t[at..at + 8].copy_from_slice(b"test.u32");
    let e = parse(&t);
    assert!(
        matches!(&e, GgufError::BadMetadata { key, .. } if key == "test.u32"),
        "{e}"
    );
    mentions(&e, &["appears twice"]);
}

#[test]
fn bad_dims() {
    let b = valid();
    let (n_dims_at, dims_at, _, _) = tensor_fields(&b, "a.weight");
    let mut t = b.clone();
    put_u64(&mut t, dims_at, 1 << 40);
    put_u64(&mut t, dims_at + 8, 1 << 40);
    let e = parse(&t);
    assert!(
        matches!(&e, GgufError::BadTensor { tensor, .. } if tensor == "a.weight"),
        "{e}"
    );
    mentions(&e, &["overflow"]);

    // Elements fit in u64 but bytes do not.
    let mut t = b.clone();
    put_u64(&mut t, dims_at, 1 << 32);
    put_u64(&mut t, dims_at + 8, 1 << 31);
    mentions(&parse(&t), &["a.weight", "overflow"]);

    let mut t = b.clone();
    put_u64(&mut t, dims_at, 0);
    mentions(&parse(&t), &["a.weight", "zero-sized dimension"]);

    for n in [0, 5, u32::MAX] {
        let mut t = b.clone();
        put_u32(&mut t, n_dims_at, n);
        mentions(&parse(&t), &["a.weight", &format!("{n} dimensions")]);
    }

    // A Q8_0 row must be whole blocks of 32.
    let (_, dims_at, _, _) = tensor_fields(&b, "b.weight");
    let mut t = b.clone();
    put_u64(&mut t, dims_at, 48);
    mentions(
        &parse(&t),
        &["b.weight", "not a whole number of Q8_0 blocks"],
    );
}

#[test]
fn no_panic_on_any_truncation() {
    let b = valid();
    let data_end = b.len() - 352 + 324;
    for len in 0..b.len() {
        let r = GgufFile::from_bytes(NAME, &b[..len]);
        if len < data_end {
            let e = r.expect_err(&format!("truncated to {len} bytes parsed"));
            assert!(e.to_string().starts_with(NAME));
        } else {
            // Only trailing padding is missing: still a complete file.
            assert_eq!(r.expect("padding-only truncation").tensors.len(), 2);
        }
    }
}

#[test]
fn no_panic_on_any_byte_flip() {
    let b = valid();
    for at in 0..b.len() {
        for v in [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff] {
            let mut t = b.clone();
            t[at] = v;
            if let Ok(f) = GgufFile::from_bytes(NAME, &t) {
                for info in &f.tensors {
                    assert_eq!(f.tensor_data(info).len() as u64, info.size_bytes);
                }
            }
        }
    }
}

#[test]
fn missing_file_names_the_path() {
    let path = std::env::temp_dir().join("strata-no-such-model.gguf");
    let e = GgufFile::open(&path).unwrap_err();
    assert!(matches!(e, GgufError::Io { .. }), "{e}");
    mentions(&e, &["strata-no-such-model.gguf"]);
}

#[test]
fn corrupt_shard_is_named() {
    use strata_model::gguf::SplitLimits;
    let dir =
        std::env::temp_dir().join(format!("strata-gguf-corrupt-shard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut w = GgufWriter::new();
    for i in 0..3 {
        w.add_tensor(format!("t{i}"), &[32], GgmlType::F32).unwrap();
    }
    let limits = SplitLimits {
        max_tensors: Some(1),
        max_bytes: None,
    };
    let paths = w
        .write_split(dir.join("m"), limits, |_, s, out| {
            out.write_all(&vec![0; s.size_bytes as usize])
        })
        .unwrap();
    let mut bytes = std::fs::read(&paths[2]).unwrap();
    bytes.truncate(bytes.len() - 100);
    std::fs::write(&paths[2], &bytes).unwrap();
    let e = GgufFile::open(&paths[0]).unwrap_err();
    assert!(
        matches!(&e, GgufError::BadTensor { path, tensor, .. } if path == &paths[2] && tensor == "t2"),
        "{e}"
    );
    mentions(&e, &["m-00003-of-00003.gguf", "outside"]);
    std::fs::remove_dir_all(&dir).unwrap();
}
