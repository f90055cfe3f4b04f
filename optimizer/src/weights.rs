//! Weight-only quantization and magnitude pruning: the arithmetic stays float32; what changes is how weights are
//! stored.
//!
//! A quantized weight `W` becomes an integer initializer `W_quantized` and a float scale tensor `W_scale`, and a
//! `DequantizeLinear` node at the front of the graph produces `W` again under its own name — so every reader
//! (subgraphs included) is untouched, and ONNX Runtime folds the dequantization into its constants at load time
//! or fuses it with the consumer. Scales are symmetric (zero point 0, omitted): int8 per output channel; int4 per
//! output channel in blocks along the reduction axis (opset 21's blocked `DequantizeLinear`).

use crate::OptimizeError;
use crate::graph::{self, DataType, Names, WeightAxes, attr_int, element_count, float_tensor, raw_tensor};
use crate::onnx::ModelProto;

/// Weights smaller than this stay float: their scales would cost about what they save.
pub const MIN_WEIGHT_ELEMENTS: usize = 1024;
/// int4's block length along the reduction axis.
pub const INT4_BLOCK: usize = 32;
/// The operator set whose `DequantizeLinear` takes int4 and blocks.
pub const INT4_OPSET: i64 = 21;
/// Per-channel `DequantizeLinear` (its `axis`) came with opset 13.
pub const PER_CHANNEL_OPSET: i64 = 13;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bits {
    Eight,
    /// int8 storage with 7 bits of range (±63): what static QDQ uses, because x86 CPUs without VNNI multiply
    /// uint8 activations by int8 weights through 16-bit pair sums that saturate past that (255 · 63 · 2 fits).
    EightReduced,
    Four,
}

impl Bits {
    fn qmax(self) -> f32 {
        match self {
            Self::Eight => 127.0,
            Self::EightReduced => 63.0,
            Self::Four => 7.0,
        }
    }
}

/// A quantized tensor: integer values (one per element, in `[-qmax, qmax]`), the scales' shape and values.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    pub values: Vec<i8>,
    pub scale_dims: Vec<i64>,
    pub scales: Vec<f32>,
}

/// Which scale each element of a weight uses.
#[derive(Debug, Clone)]
pub struct Layout {
    bits: Bits,
    /// The axis the scales vary along (int8: the channel axis; int4: the reduction axis, in blocks).
    len: usize,
    stride: usize,
    blocks: usize,
    pub scale_dims: Vec<i64>,
}

impl Layout {
    /// int8: one scale per index of `axes.channel`; int4: one per element of `dims` with the reduction axis cut
    /// into blocks of [`INT4_BLOCK`].
    pub fn new(dims: &[i64], axes: WeightAxes, bits: Bits) -> Self {
        let d: Vec<usize> = dims.iter().map(|&x| x.max(0) as usize).collect();
        let axis = match bits {
            Bits::Eight | Bits::EightReduced => axes.channel,
            Bits::Four => axes.reduce,
        };
        let (len, stride) = (d[axis], d[axis + 1..].iter().product::<usize>());
        let (blocks, scale_dims) = match bits {
            Bits::Eight | Bits::EightReduced => (len, vec![len as i64]),
            Bits::Four => {
                let blocks = len.div_ceil(INT4_BLOCK);
                let mut sd: Vec<i64> = dims.to_vec();
                sd[axis] = blocks as i64;
                (blocks, sd)
            }
        };
        Self { bits, len, stride, blocks, scale_dims }
    }

    pub fn scales(&self) -> usize {
        element_count(&self.scale_dims)
    }

    /// The scale element `i` (row-major) uses.
    pub fn scale_of(&self, i: usize) -> usize {
        let along = (i / self.stride) % self.len;
        match self.bits {
            Bits::Eight | Bits::EightReduced => along,
            Bits::Four => {
                ((i / (self.stride * self.len)) * self.blocks + along / INT4_BLOCK) * self.stride + i % self.stride
            }
        }
    }
}

/// Symmetric quantization of `w` (dims `dims`) on `layout`'s scales.
pub fn quantize(w: &[f32], layout: &Layout) -> Quantized {
    let mut maxabs = vec![0f32; layout.scales()];
    for (i, v) in w.iter().enumerate() {
        let m = &mut maxabs[layout.scale_of(i)];
        *m = m.max(v.abs());
    }
    let qmax = layout.bits.qmax();
    let scales: Vec<f32> = maxabs.iter().map(|&m| if m > 0.0 && m.is_finite() { m / qmax } else { 1.0 }).collect();
    let values =
        w.iter().enumerate().map(|(i, v)| (v / scales[layout.scale_of(i)]).round().clamp(-qmax, qmax) as i8).collect();
    Quantized { values, scale_dims: layout.scale_dims.clone(), scales }
}

/// What `DequantizeLinear` computes from a quantized tensor.
#[cfg(test)]
pub fn dequantize(q: &Quantized, layout: &Layout) -> Vec<f32> {
    q.values.iter().enumerate().map(|(i, &v)| f32::from(v) * q.scales[layout.scale_of(i)]).collect()
}

/// int4 values two to a byte, the first in the low nibble (ONNX's packing).
pub fn pack_int4(values: &[i8]) -> Vec<u8> {
    values.chunks(2).map(|p| (p[0] as u8 & 0x0f) | ((p.get(1).copied().unwrap_or(0) as u8 & 0x0f) << 4)).collect()
}

/// Rewrites every weight of known layout into int8 or int4 with a `DequantizeLinear` before its readers.
pub fn weight_only(model: &mut ModelProto, bits: Bits) -> Result<(), OptimizeError> {
    let opset = graph::default_opset(model).unwrap_or(0);
    let need = if bits == Bits::Four { INT4_OPSET } else { PER_CHANNEL_OPSET };
    if opset < need {
        return Err(OptimizeError::Opset(format!(
            "per-channel DequantizeLinear needs opset {need}; the model imports opset {opset}"
        )));
    }
    let g = model.graph.as_mut().ok_or(OptimizeError::NoGraph)?;
    let found = graph::weights(g, MIN_WEIGHT_ELEMENTS);
    if found.is_empty() {
        return Err(OptimizeError::Nothing(format!(
            "no float weight of at least {MIN_WEIGHT_ELEMENTS} elements is read by MatMul, Gemm, Conv, ConvTranspose \
             or Gather"
        )));
    }
    let mut names = Names::of(g);
    let mut dq_nodes = Vec::new();
    for (i, axes) in found {
        let t = &g.initializer[i];
        let (name, dims) = (t.name().to_owned(), t.dims.clone());
        let w = graph::floats(t)?;
        let q = quantize(&w, &Layout::new(&dims, axes, bits));
        let q_name = names.fresh(&name, "_quantized");
        let s_name = names.fresh(&name, "_scale");
        let (data_type, raw, attrs) = match bits {
            Bits::Eight | Bits::EightReduced => (
                DataType::INT8,
                q.values.iter().map(|&v| v as u8).collect(),
                vec![attr_int("axis", axes.channel as i64)],
            ),
            Bits::Four => (
                DataType::INT4,
                pack_int4(&q.values),
                vec![attr_int("axis", axes.reduce as i64), attr_int("block_size", INT4_BLOCK as i64)],
            ),
        };
        g.initializer[i] = raw_tensor(&q_name, data_type, &dims, raw);
        g.initializer.push(float_tensor(&s_name, &q.scale_dims, &q.scales));
        let n_name = names.fresh(&name, "_dequantize");
        dq_nodes.push(graph::node("DequantizeLinear", n_name, &[&q_name, &s_name], &[&name], attrs));
    }
    dq_nodes.append(&mut g.node);
    g.node = dq_nodes;
    Ok(())
}

/// Sets the `percent` % smallest-magnitude values of every weight of known layout to zero. The model keeps its
/// shape and type; zeros cost little once the artifact is compressed, and sparse kernels can skip them.
pub fn prune(model: &mut ModelProto, percent: u8) -> Result<(), OptimizeError> {
    let g = model.graph.as_mut().ok_or(OptimizeError::NoGraph)?;
    let found = graph::weights(g, MIN_WEIGHT_ELEMENTS);
    if found.is_empty() {
        return Err(OptimizeError::Nothing("no float weight to prune".into()));
    }
    for (i, _) in found {
        let t = &mut g.initializer[i];
        let mut w = graph::floats(t)?;
        prune_values(&mut w, percent);
        *t = float_tensor(t.name(), &t.dims.clone(), &w);
    }
    Ok(())
}

/// Zeroes exactly `len * percent / 100` values of `w`, the smallest in magnitude.
pub fn prune_values(w: &mut [f32], percent: u8) {
    let k = w.len() * usize::from(percent) / 100;
    if k == 0 {
        return;
    }
    let mut order: Vec<usize> = (0..w.len()).collect();
    order.select_nth_unstable_by(k - 1, |&a, &b| w[a].abs().total_cmp(&w[b].abs()));
    for &i in &order[..k] {
        w[i] = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MATMUL: WeightAxes = WeightAxes { channel: 1, reduce: 0 };

    #[test]
    fn int8_scales_are_per_output_channel_and_round_trip_within_half_a_step() {
        // A 3x2 MatMul weight: columns are the output channels.
        let w = [1.0, -10.0, 0.5, 5.0, -2.0, 2.5];
        let layout = Layout::new(&[3, 2], MATMUL, Bits::Eight);
        let q = quantize(&w, &layout);
        assert_eq!(q.scale_dims, vec![2]);
        assert_eq!(q.scales, vec![2.0 / 127.0, 10.0 / 127.0]);
        assert_eq!(q.values, vec![64, -127, 32, 64, -127, 32]);
        let back = dequantize(&q, &layout);
        for (a, b) in w.iter().zip(&back) {
            assert!((a - b).abs() <= 10.0 / 127.0 / 2.0 + 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn int4_blocks_run_along_the_reduction_axis() {
        // 40 x 2: the reduction axis (0) is cut into blocks of 32 and 8; each block of each column its scale.
        let w: Vec<f32> = (0..80).map(|i| if i < 64 { 1.0 } else { 7.0 }).collect();
        let q = quantize(&w, &Layout::new(&[40, 2], MATMUL, Bits::Four));
        assert_eq!(q.scale_dims, vec![2, 2]);
        assert_eq!(q.scales, vec![1.0 / 7.0, 1.0 / 7.0, 1.0, 1.0]);
        assert!(q.values.iter().all(|&v| v == 7));
    }

    #[test]
    fn int4_packs_two_values_a_byte_low_nibble_first() {
        assert_eq!(pack_int4(&[1, -1, -8, 7, 3]), vec![0xf1, 0x78, 0x03]);
    }

    #[test]
    fn pruning_zeroes_exactly_the_smallest_share() {
        let mut w = [0.5, -0.1, 3.0, -0.2, 0.05, 1.0, -4.0, 0.3];
        prune_values(&mut w, 50);
        assert_eq!(w, [0.5, 0.0, 3.0, 0.0, 0.0, 1.0, -4.0, 0.0]);
    }

    proptest! {
        #[test]
        fn quantization_error_is_at_most_half_a_step(
            w in proptest::collection::vec(-100.0f32..100.0, 2 * 40),
            four in any::<bool>(),
        ) {
            let bits = if four { Bits::Four } else { Bits::Eight };
            let layout = Layout::new(&[40, 2], MATMUL, bits);
            let q = quantize(&w, &layout);
            let back = dequantize(&q, &layout);
            for (i, (a, b)) in w.iter().zip(&back).enumerate() {
                let step = q.scales[layout.scale_of(i)];
                prop_assert!((a - b).abs() <= step / 2.0 + 1e-4, "{} vs {} (step {})", a, b, step);
            }
        }
    }
}
