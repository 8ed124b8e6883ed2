// Fused uint8 kernels that round exactly like torch's x86 quantized CPU kernels (torch 2.13).
//
// Each function is one pass over its tensor and computes, element for element, the float32
// arithmetic that the ONNX functions of export/torch_kernels.py spell out op by op (see that
// module's docstring for the formulas and for where each comes from in fbgemm / ATen).
// fma() below is a true float32 fused multiply-add (std::fmaf), as the compiled kernels use;
// the file is compiled with -ffp-contract=off so that no other a * b + c is fused.
//
// Rounding: rint() in the default round-to-nearest-even mode, as onnxruntime's QuantizeLinear
// and fbgemm's nearbyint; saturation to [0, 255].
//
// The functions take raw pointers and sizes; rows are the leading dimensions flattened, cols
// the last dimension. Every kernel processes rows [row_begin, row_end) so a caller may split
// the rows between threads.
//
// Column tiles: rows are short (the hidden width, 50 in SASRec), too short for a vector loop
// per row (AVX-512 code leaves a 50-element row to its scalar remainder). So the kernels run
// one flat loop over a block of whole rows, with every per-column constant repeated over the
// block ("tiled": tile_rows x cols values). The caller builds the tiles once
// (sq_tile_columns, sq_layer_norm_tiles; ort_ops.cc does it when the kernel is created).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// Elements per block of rows, about. Long enough for the vector loop, small enough that the
// tiles of all ops of a model stay in cache: with 4096 a batch-1 call on a cold cache (other
// models timed in between) was 10% slower, with 512 batch 256 was 3% slower.
constexpr int64_t kTileElements = 1024;

// steps is already an integer value (rint), possibly outside [0, 255]
inline float clamp_u8(float steps) {
  return steps < 0.0f ? 0.0f : (steps > 255.0f ? 255.0f : steps);
}

inline uint8_t saturate_u8(float steps) { return static_cast<uint8_t>(clamp_u8(steps)); }

// The vectorised quantized::add on two uint8 values (as floats):
// c = fma(a, s_a, s_a * -z_a) + fma(b, s_b, s_b * -z_b), sat(rint(c * inv_s) + z).
struct QuantizedAdd {
  float s_a, off_a, s_b, off_b, inv_s, zf;

  QuantizedAdd(float s_a, uint8_t z_a, float s_b, uint8_t z_b, float inv_s, uint8_t z)
      : s_a(s_a), off_a(s_a * -static_cast<float>(z_a)), s_b(s_b),
        off_b(s_b * -static_cast<float>(z_b)), inv_s(inv_s), zf(static_cast<float>(z)) {}

  uint8_t operator()(float a, float b) const {
    const float c = std::fmaf(a, s_a, off_a) + std::fmaf(b, s_b, off_b);
    return saturate_u8(std::rint(c * inv_s) + zf);
  }
};

}  // namespace

extern "C" {

// sat(rint(fma(x, inv_s, z))): fbgemm Quantize (torch.quantize_per_tensor, quint8).
void sq_quantize_per_tensor(const float* x, int64_t begin, int64_t end, float inv_s,
                            uint8_t z, uint8_t* out) {
  const float zf = static_cast<float>(z);
  for (int64_t i = begin; i < end; ++i) {
    out[i] = saturate_u8(std::rint(std::fmaf(x[i], inv_s, zf)));
  }
}

// Rows per tile for rows of `cols` columns: about 1024 elements, at least one row.
int64_t sq_tile_rows(int64_t cols) { return cols >= kTileElements ? 1 : kTileElements / cols; }

// out[r * cols + j] = per_column[j] for r < rows.
void sq_tile_columns(const float* per_column, int64_t cols, int64_t rows, float* out) {
  for (int64_t r = 0; r < rows; ++r) std::memcpy(out + r * cols, per_column, cols * sizeof(float));
}

// LayerNorm's tiles: gamma, beta, and where the output zero point z is added. The vectorised
// columns (the first vector_cols) round sat(rint(v) + z), the scalar remainder sat(rint(v + z));
// with z_before = 0 / z_after = z there and z_before = z / z_after = 0 here, one loop computes
// sat(rint(v + z_before) + z_after) for both (v + 0 is v exactly).
void sq_layer_norm_tiles(const float* gamma, const float* beta, int64_t cols,
                         int64_t vector_cols, uint8_t z, int64_t rows, float* g, float* b,
                         float* z_before, float* z_after) {
  const float zf = static_cast<float>(z);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < cols; ++j) {
      g[r * cols + j] = gamma[j];
      b[r * cols + j] = beta[j];
      z_before[r * cols + j] = j < vector_cols ? 0.0f : zf;
      z_after[r * cols + j] = j < vector_cols ? zf : 0.0f;
    }
  }
}

}  // extern "C"

namespace {

// quantized::linear's float-bias output stage, per column j (bias_acc[j] = b[j] / m[j],
// multiplier[j] = m[j] / s with m[j] = s_x * s_w[j], all float32, precomputed by the caller):
// u = sat(rint([relu]((float(acc) + bias_acc) * multiplier)) + z); store(i, u) writes it
// (u as a float holding the integer, so a dequantizing store needs no int round trip).
//
// Rows are short (the hidden width), so the loop runs over blocks of whole rows as one flat
// range, with the per-column constants tiled to the block's length: the vector loop then
// spans many rows instead of leaving each row's tail to scalar code.
template <bool relu, typename Store>
void requantize_rows(const int32_t* acc, int64_t row_begin, int64_t row_end, int64_t cols,
                     const float* tiled_bias, const float* tiled_mult, int64_t tile_rows,
                     uint8_t z, Store store) {
  const float zf = static_cast<float>(z);
  const float* __restrict tb = tiled_bias;
  const float* __restrict tm = tiled_mult;
  for (int64_t r = row_begin; r < row_end; r += tile_rows) {
    const int64_t n = (r + tile_rows < row_end ? tile_rows : row_end - r) * cols;
    const int32_t* __restrict a = acc + r * cols;
    const int64_t offset = r * cols;
    for (int64_t i = 0; i < n; ++i) {
      float steps = (static_cast<float>(a[i]) + tb[i]) * tm[i];
      if (relu) steps = steps > 0.0f ? steps : 0.0f;
      store(offset + i, clamp_u8(std::rint(steps) + zf));
    }
  }
}

}  // namespace

extern "C" {

// Requantize[Relu]: the uint8 output of quantized::linear[_relu].
// (tiled_bias, tiled_mult: bias_acc and multiplier tiled over tile_rows rows.)
void sq_requantize(const int32_t* acc, int64_t row_begin, int64_t row_end, int64_t cols,
                   const float* tiled_bias, const float* tiled_mult, int64_t tile_rows,
                   uint8_t z, int relu, uint8_t* out) {
  uint8_t* __restrict o = out;
  auto store = [o](int64_t i, float u) { o[i] = static_cast<uint8_t>(u); };
  if (relu) {
    requantize_rows<true>(acc, row_begin, row_end, cols, tiled_bias, tiled_mult, tile_rows, z,
                          store);
  } else {
    requantize_rows<false>(acc, row_begin, row_end, cols, tiled_bias, tiled_mult, tile_rows, z,
                           store);
  }
}

// RequantizeDequantize: quantized::linear's uint8 output u, dequantized at once as the next
// op (DeQuantStub, DequantizeLinear) does: (u - z) * s, one rounding.
void sq_requantize_dequantize(const int32_t* acc, int64_t row_begin, int64_t row_end,
                              int64_t cols, const float* tiled_bias, const float* tiled_mult,
                              int64_t tile_rows, uint8_t z, float s, float* out) {
  float* __restrict o = out;
  const float zf = static_cast<float>(z);
  auto store = [o, zf, s](int64_t i, float u) { o[i] = (u - zf) * s; };
  requantize_rows<false>(acc, row_begin, row_end, cols, tiled_bias, tiled_mult, tile_rows, z,
                         store);
}

// RequantizeAdd: a residual add whose second operand is a Linear's output, in one pass:
// u = Requantize(acc) (the Linear's uint8 output, zero point z_b, scale s_b), then
// quantized::add(residual, u) as sq_add computes it.
void sq_requantize_add(const int32_t* acc, int64_t row_begin, int64_t row_end, int64_t cols,
                       const float* tiled_bias, const float* tiled_mult, int64_t tile_rows,
                       const uint8_t* residual, float s_a, uint8_t z_a, float s_b, uint8_t z_b,
                       float inv_s, uint8_t z, uint8_t* out) {
  const QuantizedAdd add(s_a, z_a, s_b, z_b, inv_s, z);
  const uint8_t* __restrict res = residual;
  uint8_t* __restrict o = out;
  auto store = [=](int64_t i, float u) { o[i] = add(static_cast<float>(res[i]), u); };
  requantize_rows<false>(acc, row_begin, row_end, cols, tiled_bias, tiled_mult, tile_rows, z_b,
                         store);
}

// EmbedQuantize: the INT8 model's input, quantize(item_emb[ids] * emb_scale + pos_emb[pos]),
// with weight-only int8 tables (row scales): item = (float(table[id]) * scale[id]) * emb_scale,
// position = float(pos_table[p]) * pos_scale[p], sat(rint(fma(item + position, inv_s, z))).
// Returns the index of the first out-of-range id or position, or -1.
int64_t sq_embed_quantize(const int64_t* ids, const int64_t* positions, int64_t begin,
                          int64_t end, const int8_t* item_table, const float* item_scale,
                          int64_t num_items, float emb_scale, const int8_t* pos_table,
                          const float* pos_scale, int64_t num_positions, int64_t cols,
                          float inv_s, uint8_t z, uint8_t* out) {
  for (int64_t i = begin; i < end; ++i) {  // check every id first: nothing is read out of range
    if (ids[i] < 0 || ids[i] >= num_items || positions[i] < 0 || positions[i] >= num_positions)
      return i;
  }
  const float zf = static_cast<float>(z);
  // Blocks of tokens: their table rows gathered side by side with their row scales tiled, so
  // one flat loop covers the block (rows are short; see the column tiles above).
  const int64_t block = sq_tile_rows(cols);
  thread_local std::vector<float> items, item_s, pos, pos_s;
  if (static_cast<int64_t>(items.size()) < block * cols) {
    items.resize(block * cols), item_s.resize(block * cols);
    pos.resize(block * cols), pos_s.resize(block * cols);
  }
  for (int64_t t0 = begin; t0 < end; t0 += block) {
    const int64_t tokens = t0 + block < end ? block : end - t0;
    for (int64_t t = 0; t < tokens; ++t) {
      const int64_t id = ids[t0 + t], p = positions[t0 + t];
      const int8_t* item = item_table + id * cols;
      const int8_t* position = pos_table + p * cols;
      float* ii = &items[t * cols];
      float* pp = &pos[t * cols];
      for (int64_t j = 0; j < cols; ++j) ii[j] = static_cast<float>(item[j]);
      for (int64_t j = 0; j < cols; ++j) pp[j] = static_cast<float>(position[j]);
      std::fill_n(&item_s[t * cols], cols, item_scale[id]);
      std::fill_n(&pos_s[t * cols], cols, pos_scale[p]);
    }
    const float* __restrict ii = items.data();
    const float* __restrict is = item_s.data();
    const float* __restrict pp = pos.data();
    const float* __restrict ps = pos_s.data();
    uint8_t* __restrict o = out + t0 * cols;
    for (int64_t i = 0; i < tokens * cols; ++i) {
      const float x = (ii[i] * is[i]) * emb_scale + pp[i] * ps[i];
      o[i] = saturate_u8(std::rint(std::fmaf(x, inv_s, zf)));
    }
  }
  return -1;
}

}  // extern "C"

// quantized::layer_norm (x86 kernel) over the last axis: the first 32 * floor(cols / 32)
// columns take the vectorised rounding sat(rint(y / s) + z), the rest the scalar remainder's
// sat(rint(y / s + z)) (encoded in the tiles, see sq_layer_norm_tiles).
//
// Row statistics: integer sums per row, then the float mean, variance and
// 1/std of a block of rows in one loop; the per-row values are tiled like the per-column ones
// and one flat loop normalises the block.
namespace {

inline void row_sums(const uint8_t* __restrict x, int64_t cols, int32_t* sum_out,
                     int32_t* sum_sq_out) {
  // a plain loop: measured faster than 16-wide chunks for 50-column rows (0.06 vs 0.12 ms for
  // 12,800 rows); the sums of uint8 values and squares fit uint32 for any width below 66,000
  uint32_t sum = 0, sum_sq = 0;
  for (int64_t j = 0; j < cols; ++j) {
    const uint32_t v = x[j];
    sum += v;
    sum_sq += v * v;
  }
  *sum_out = static_cast<int32_t>(sum);
  *sum_sq_out = static_cast<int32_t>(sum_sq);
}

// mean, variance and 1/std of `rows` rows from their integer sums; a plain loop over rows,
// so the divisions and square roots of many rows run side by side in vector registers.
inline void row_norms(const int32_t* __restrict sum, const int32_t* __restrict sum_sq,
                      int64_t rows, float n, float zxf, float s_x, double eps,
                      float* __restrict mean_centred, float* __restrict ratio) {
  for (int64_t r = 0; r < rows; ++r) {
    const float mean = static_cast<float>(sum[r]) / n;
    float var = std::fmaf(-mean, mean, static_cast<float>(sum_sq[r]) / n);
    var = var > 0.0f ? var : 0.0f;
    const float var_x = (var * s_x) * s_x;
    mean_centred[r] = mean - zxf;
    ratio[r] = static_cast<float>(static_cast<double>(s_x) /
                                  std::sqrt(static_cast<double>(var_x) + eps));
  }
}

}  // namespace

extern "C" {

// (g, b, z_before, z_after: sq_layer_norm_tiles over tile_rows rows.)
void sq_layer_norm(const uint8_t* u, int64_t row_begin, int64_t row_end, int64_t cols,
                   const float* g, const float* b, const float* z_before, const float* z_after,
                   int64_t tile_rows, float s_x, uint8_t z_x, double eps, float inv_s,
                   uint8_t* out) {
  const float n = static_cast<float>(cols);
  const float zxf = static_cast<float>(z_x);
  // per-thread scratch, reused between calls: row statistics and their tiles
  thread_local std::vector<int32_t> sum, sum_sq;
  thread_local std::vector<float> row_mean_c, row_ratio, mean_c, ratio;
  if (static_cast<int64_t>(sum.size()) < tile_rows) {
    sum.resize(tile_rows), sum_sq.resize(tile_rows);
    row_mean_c.resize(tile_rows), row_ratio.resize(tile_rows);
  }
  if (static_cast<int64_t>(mean_c.size()) < tile_rows * cols) {
    mean_c.resize(tile_rows * cols), ratio.resize(tile_rows * cols);
  }
  const float* __restrict gg = g;
  const float* __restrict bb = b;
  const float* __restrict zb = z_before;
  const float* __restrict za = z_after;
  for (int64_t r0 = row_begin; r0 < row_end; r0 += tile_rows) {
    const int64_t rows = r0 + tile_rows < row_end ? tile_rows : row_end - r0;
    const uint8_t* __restrict x = u + r0 * cols;
    uint8_t* __restrict o = out + r0 * cols;
    for (int64_t r = 0; r < rows; ++r) row_sums(x + r * cols, cols, &sum[r], &sum_sq[r]);
    row_norms(sum.data(), sum_sq.data(), rows, n, zxf, s_x, eps, row_mean_c.data(),
              row_ratio.data());
    for (int64_t r = 0; r < rows; ++r) {
      std::fill_n(&mean_c[r * cols], cols, row_mean_c[r]);
      std::fill_n(&ratio[r * cols], cols, row_ratio[r]);
    }
    const float* __restrict mc = mean_c.data();
    const float* __restrict rt = ratio.data();
    const int64_t count = rows * cols;
    for (int64_t i = 0; i < count; ++i) {
      const float centred = (static_cast<float>(x[i]) - zxf) - mc[i];
      const float y = std::fmaf(centred * rt[i], gg[i], bb[i]);
      o[i] = saturate_u8(std::rint(y * inv_s + zb[i]) + za[i]);
    }
  }
}

// The vectorised quantized::add (QuantizedAdd) element by element.
void sq_add(const uint8_t* a, const uint8_t* b, int64_t begin, int64_t end, float s_a,
            uint8_t z_a, float s_b, uint8_t z_b, float inv_s, uint8_t z, uint8_t* out) {
  const QuantizedAdd add(s_a, z_a, s_b, z_b, inv_s, z);
  for (int64_t i = begin; i < end; ++i) {
    out[i] = add(static_cast<float>(a[i]), static_cast<float>(b[i]));
  }
}

}  // extern "C"
