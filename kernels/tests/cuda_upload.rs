//! Weights larger than the pinned staging buffers (16 MiB each, used in
//! turn) arrive whole: every row of a 42 MiB table, read back through the
//! embedding kernel, is the row that was loaded.

use strata_kernels::Backend;
use strata_model::GgmlType;

mod common;
use common::*;

#[test]
fn a_weight_larger_than_the_staging_buffers_arrives_whole() {
    let g = gpu();
    let (rows, cols) = (2600usize, 4096usize);
    // Row r holds r * cols + c: any misplaced or missing piece shows.
    let table: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
    let w = g
        .load_weight(
            "big",
            GgmlType::F32,
            &[cols as u64, rows as u64],
            bytemuck_f32(&table),
        )
        .unwrap();
    let ids: Vec<u32> = (0..rows as u32).collect();
    let got = g.act_to_host(&g.embed(&w, &ids, 1.0).unwrap()).unwrap();
    assert!(got == table, "the table read back differs");
}
