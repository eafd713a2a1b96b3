//! Quantized dot products: activations quantized once per row, weights read in place.
