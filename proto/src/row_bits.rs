//! `BatchEntry.tiled_rows`: one bit per row of a run, least significant
//! bit first, packed by the coordinator and read by every stage.

/// `rows` as bits (empty when none is set).
pub fn pack(rows: impl ExactSizeIterator<Item = bool>) -> Vec<u8> {
    let mut bits = vec![0u8; rows.len().div_ceil(8)];
    let mut any = false;
    for (i, set) in rows.enumerate() {
        if set {
            bits[i / 8] |= 1 << (i % 8);
            any = true;
        }
    }
    if any {
        bits
    } else {
        Vec::new()
    }
}

/// The `n` rows `bits` packs: empty for no bits, `None` when `bits` is
/// neither empty nor `ceil(n / 8)` bytes.
pub fn unpack(bits: &[u8], n: usize) -> Option<Vec<bool>> {
    match bits.len() {
        0 => Some(Vec::new()),
        len if len == n.div_ceil(8) => {
            Some((0..n).map(|i| bits[i / 8] >> (i % 8) & 1 == 1).collect())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_least_significant_bit_first() {
        let rows: Vec<bool> = (0..10).map(|i| [0, 2, 9].contains(&i)).collect();
        let bits = pack(rows.iter().copied());
        assert_eq!(bits, [0b101, 0b10]);
        assert_eq!(unpack(&bits, 10), Some(rows));
        assert!(pack([false; 9].into_iter()).is_empty());
        assert_eq!(unpack(&[], 10), Some(Vec::new()));
        assert_eq!(unpack(&[1], 10), None, "one byte for ten rows");
        assert_eq!(unpack(&[1, 0, 0], 10), None, "three bytes for ten rows");
    }
}
