// onnxruntime custom ops (domain "sasrec_qat.fused") over the kernels of kernels.cc.
//
// Tensors are inputs; per-node constants are attributes, read once when onnxruntime creates
// the kernel (float attributes are float32, as the constants are; eps is a decimal string,
// parsed to the float64 it was written from):
//
//   QuantizePerTensor(x f32) {inv_s, z}                                    -> u8, x's shape
//   Requantize / RequantizeRelu(acc i32 [..., N], bias_acc f32 [N], multiplier f32 [N]) {z}
//                                                                          -> u8, acc's shape
//   RequantizeDequantize(acc, bias_acc, multiplier) {z, s}  -> f32, (Requantize(...) - z) * s
//   RequantizeAdd(acc i32 [..., N], bias_acc, multiplier, residual u8 [..., N])
//                 {s_a, z_a, s_b, z_b, inv_s, z} -> u8: Add(residual, Requantize(acc)), where
//                 (s_b, z_b) are the Linear output's qparams (Requantize's z is z_b)
//   RequantizeAddNorm, EmbedQuantizeNorm: the same, with gamma f32 [N], beta f32 [N] appended
//                 to the inputs and {norm_s_x, norm_z_x, norm_eps, norm_inv_s, norm_z} to the
//                 attributes: a second output, LayerNorm of the first (the next block's or
//                 the FFN's pre-norm), computed from each row right after it is written
//   LayerNorm(u u8 [..., N], gamma f32 [N], beta f32 [N]) {s_x, z_x, eps, inv_s, z}
//             -> u8, u's shape (the first 32 * floor(N / 32) columns take the vectorised
//             rounding, the rest the scalar remainder's, as torch's x86 kernel)
//   Add(a u8, b u8) {s_a, z_a, s_b, z_b, inv_s, z}                        -> u8, a's shape
//   EmbedQuantize(ids i64 [B, T], positions i64 [B, T], item_table i8 [I, N], item_scale f32
//                 [I], pos_table i8 [P, N], pos_scale f32 [P]) {emb_scale, inv_s, z}
//                 -> u8 [B, T, N]: QuantizePerTensor(item_emb[ids] * emb_scale + pos_emb[pos])
//   Score(hidden u8 [B, d], table i8 [N + 1, d], row_scale f32 [N + 1]) {s_h, z}
//                 -> f32 [B, N + 1]: the INT8 graph's scores (score_top_k.cc), bit for bit
//   ScoreTopK(hidden u8 [B, d], table i8 [N + 1, d], row_scale f32 [N + 1], item_seq i64 [B, T],
//             exclude i64 [B or 1, E], k i64 [1]) {s_h, z}
//                 -> top_k_scores f32 [B, k], top_k_items i64 [B, k]: the k best items of each
//                 row by the INT8 graph's scores, the padding item and every id of the row's
//                 item_seq and exclude left out (score_top_k.cc states the rules)
//
// The formulas are those of the ONNX functions in export/torch_kernels.py (Requantize's
// per-column float32 constants bias_acc = b / (s_x s_w), multiplier = s_x s_w / s are computed
// at export, export/int8_emitters/fused.py).
// Large tensors are split by rows over onnxruntime's
// intra-op threads (KernelContext_ParallelFor); rounding does not depend on the split.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "ort_abi.h"

extern "C" {
int64_t sq_tile_rows(int64_t cols);
void sq_tile_columns(const float* per_column, int64_t cols, int64_t rows, float* out);
void sq_layer_norm_tiles(const float* gamma, const float* beta, int64_t cols,
                         int64_t vector_cols, uint8_t z, int64_t rows, float* g, float* b,
                         float* z_before, float* z_after);
void sq_quantize_per_tensor(const float* x, int64_t begin, int64_t end, float inv_s,
                            uint8_t z, uint8_t* out);
void sq_requantize(const int32_t* acc, int64_t row_begin, int64_t row_end, int64_t cols,
                   const float* tiled_bias, const float* tiled_mult, int64_t tile_rows,
                   uint8_t z, int relu, uint8_t* out);
void sq_requantize_dequantize(const int32_t* acc, int64_t row_begin, int64_t row_end,
                              int64_t cols, const float* tiled_bias, const float* tiled_mult,
                              int64_t tile_rows, uint8_t z, float s, float* out);
void sq_requantize_add(const int32_t* acc, int64_t row_begin, int64_t row_end, int64_t cols,
                       const float* tiled_bias, const float* tiled_mult, int64_t tile_rows,
                       const uint8_t* residual, float s_a, uint8_t z_a, float s_b, uint8_t z_b,
                       float inv_s, uint8_t z, uint8_t* out);
int64_t sq_embed_quantize(const int64_t* ids, const int64_t* positions, int64_t begin,
                          int64_t end, const int8_t* item_table, const float* item_scale,
                          int64_t num_items, float emb_scale, const int8_t* pos_table,
                          const float* pos_scale, int64_t num_positions, int64_t cols,
                          float inv_s, uint8_t z, uint8_t* out);
void sq_layer_norm(const uint8_t* u, int64_t row_begin, int64_t row_end, int64_t cols,
                   const float* g, const float* b, const float* z_before, const float* z_after,
                   int64_t tile_rows, float s_x, uint8_t z_x, double eps, float inv_s,
                   uint8_t* out);
void sq_add(const uint8_t* a, const uint8_t* b, int64_t begin, int64_t end, float s_a,
            uint8_t z_a, float s_b, uint8_t z_b, float inv_s, uint8_t z, uint8_t* out);
int64_t sq_score_pack_size(int64_t rows, int64_t cols);
void sq_score_pack(const int8_t* table, int64_t rows, int64_t cols, int8_t* packed);
void sq_score_all(const uint8_t* hidden, int64_t row_begin, int64_t row_end, int64_t cols,
                  uint8_t z, const int8_t* packed, const float* scale, int64_t table_rows,
                  float* out);
void sq_score_top_k(const uint8_t* hidden, int64_t row_begin, int64_t row_end, int64_t cols,
                    uint8_t z, const int8_t* packed, const float* scale, int64_t table_rows,
                    int64_t item_begin, int64_t item_end,
                    const int64_t* excluded, int64_t excluded_width, int64_t k,
                    float* floors, float* out_scores, int64_t* out_ids);
void sq_merge_top_k(const float* scores, const int64_t* ids, int64_t parts, int64_t rows,
                    int64_t k, float* out_scores, int64_t* out_ids);
}

namespace {

using ort::ElementType;

constexpr int64_t kLayerNormVector = 32;      // columns per vectorised chunk (x86 kernel)
constexpr int64_t kSerialElements = 1 << 15;  // below this, one thread does the whole tensor
constexpr int64_t kChunkElements = 1 << 13;   // elements per parallel task, about
constexpr int64_t kTopKRowsPerTask = 16;       // ScoreTopK: users per task (each streams the table)
// ScoreTopK with fewer than kTopKSplitBelow user tasks (a small batch) and k <= kTopKSplitMaxK also
// splits the catalogue into equal ranges of at least kTopKMinItemsPerTask items (multiples of 16),
// one task each, and merges the ranges' lists, so one user's request uses the intra-op threads.
// Measured on a 2-core AVX2 EPYC, 100,000 items, d = 50, B = 1 or 8: 15-25% faster on 2 threads,
// the same on 1 (the ranges share a floor, TopK in score_top_k.cc, so they skip what one pass
// would); ranges of 4096 items cost up to 15% on 1 thread before the floor was shared.
constexpr int64_t kTopKSplitBelow = 4;
constexpr int64_t kTopKMinItemsPerTask = 8192;
constexpr int64_t kTopKSplitMaxK = 256;
constexpr int64_t kMaxScoreColumns = 517;      // d * 255 * 127 < 2^24: float(acc) stays exact

const ort::Api* g_api = nullptr;

enum class OpKind {
  kQuantize, kRequantize, kRequantizeRelu, kRequantizeDequantize, kRequantizeAdd, kLayerNorm,
  kAdd, kEmbedQuantize, kScore, kScoreTopK
};

struct OpSpec {
  ort::CustomOp record;  // first member: the runtime hands back a pointer to it
  OpKind kind;
  const char* name;
  std::vector<ElementType> inputs;
  std::vector<ElementType> outputs;
  bool norm;  // a second output: LayerNorm of the first (inputs end with gamma, beta)
};

// A quantized LayerNorm's constants: input scale / zero point, eps, output 1/s and zero point.
struct NormParams {
  float s_x = 0, inv_s = 0;
  uint8_t z_x = 0, z = 0;
  double eps = 0;
};

// Per-node constants (attributes), read when the kernel is created.
struct Params {
  float inv_s = 0, s = 0, s_a = 0, s_b = 0, emb_scale = 0, s_h = 0;
  uint8_t z = 0, z_a = 0, z_b = 0;
  NormParams norm;  // LayerNorm (attributes s_x, ...), or a *Norm op's (norm_s_x, ...)
};

// A tensor's dimensions, without heap allocation (the ops see rank <= 4).
struct Shape {
  static constexpr size_t kMaxRank = 8;
  int64_t dims[kMaxRank] = {};
  size_t rank = 0;

  const int64_t* data() const { return dims; }
  size_t size() const { return rank; }
  bool empty() const { return rank == 0; }
  int64_t back() const { return dims[rank - 1]; }
  int64_t operator[](size_t i) const { return dims[i]; }
  void push_back(int64_t d) {
    if (rank == kMaxRank) throw std::length_error("rank above 8");
    dims[rank++] = d;
  }
  bool operator==(const Shape& o) const {
    return rank == o.rank && std::equal(dims, dims + rank, o.dims);
  }
  bool operator!=(const Shape& o) const { return !(*this == o); }
};

struct Tensor {
  void* data = nullptr;
  ElementType type = ElementType::kFloat;
  Shape shape;
  int64_t size = 0;
};

// Per-column constants tiled over `rows` rows (kernels.cc): a Linear's bias_acc and
// multiplier, or a LayerNorm's gamma, beta, z_before, z_after.
struct Tiles {
  int64_t rows = 0, cols = 0;
  std::vector<float> a, b, c, d;

  static Tiles requantize(const float* bias_acc, const float* multiplier, int64_t cols) {
    Tiles t{sq_tile_rows(cols), cols, {}, {}, {}, {}};
    t.a.resize(t.rows * cols), t.b.resize(t.rows * cols);
    sq_tile_columns(bias_acc, cols, t.rows, t.a.data());
    sq_tile_columns(multiplier, cols, t.rows, t.b.data());
    return t;
  }

  static Tiles layer_norm(const float* gamma, const float* beta, int64_t cols, uint8_t z) {
    Tiles t{sq_tile_rows(cols), cols, {}, {}, {}, {}};
    for (auto* v : {&t.a, &t.b, &t.c, &t.d}) v->resize(t.rows * cols);
    sq_layer_norm_tiles(gamma, beta, cols, cols / kLayerNormVector * kLayerNormVector, z, t.rows,
                        t.a.data(), t.b.data(), t.c.data(), t.d.data());
    return t;
  }
};

// Score / ScoreTopK's item table packed for score_top_k.cc (32-byte aligned) and its per-item
// scales s_h * row_scale, padded to whole blocks with 0.
struct PackedTable {
  int64_t rows = 0, cols = 0;
  std::vector<int8_t> storage;
  int8_t* packed = nullptr;
  std::vector<float> scale;

  static PackedTable of(const Tensor& table, const Tensor& row_scale, float s_h) {
    PackedTable t;
    t.rows = table.shape[0], t.cols = table.shape[1];
    const int64_t size = sq_score_pack_size(t.rows, t.cols);
    t.storage.resize(size + 32);
    const uintptr_t address = reinterpret_cast<uintptr_t>(t.storage.data());
    t.packed = t.storage.data() + (32 - address % 32) % 32;
    sq_score_pack(static_cast<const int8_t*>(table.data), t.rows, t.cols, t.packed);
    t.scale.assign(size / (2 * ((t.cols + 1) / 2)), 0.0f);  // one per packed item
    const float* r = static_cast<const float*>(row_scale.data);
    for (int64_t i = 0; i < t.rows; ++i) t.scale[i] = s_h * r[i];  // float32, as the graph's Mul
    return t;
  }
};

struct Kernel {
  const OpSpec* op;
  Params p;
  Tiles requant, norm;  // built at creation when their inputs are initializers
  PackedTable table;    // ScoreTopK, built at creation when the table is an initializer
  std::vector<Tensor> constants;  // per input: read at creation if an initializer
  std::vector<bool> is_constant;
};

// ---- errors ----------------------------------------------------------------------------
struct Failure {
  std::string message;
};

// Releases `status`; true if it was an error (a null status is success).
bool failed(ort::Status* status) {
  if (status == nullptr) return false;
  ort::table_entry<ort::ReleaseStatusFn>(g_api, ort::kReleaseStatus)(status);
  return true;
}

void check(ort::Status* status, const char* what) {
  if (failed(status)) throw Failure{std::string("onnxruntime call failed: ") + what};
}

// ---- tensors ---------------------------------------------------------------------------
Tensor describe(const ort::Value* value) {
  Tensor t;
  ort::TypeAndShape* info = nullptr;
  check(ort::table_entry<ort::GetTensorTypeAndShapeFn>(g_api, ort::kGetTensorTypeAndShape)(
            value, &info), "GetTensorTypeAndShape");
  size_t rank = 0, count = 0;
  ort::Status* status =
      ort::table_entry<ort::GetTensorElementTypeFn>(g_api, ort::kGetTensorElementType)(info,
                                                                                      &t.type);
  if (status == nullptr)
    status = ort::table_entry<ort::GetDimensionsCountFn>(g_api, ort::kGetDimensionsCount)(
        info, &rank);
  if (status == nullptr && rank > Shape::kMaxRank) {
    ort::table_entry<ort::ReleaseTypeAndShapeFn>(g_api, ort::kReleaseTypeAndShape)(info);
    throw Failure{"sasrec_qat.fused: inputs of rank above 8 are not supported"};
  }
  if (status == nullptr) {
    t.shape.rank = rank;
    status = ort::table_entry<ort::GetDimensionsFn>(g_api, ort::kGetDimensions)(
        info, t.shape.dims, rank);
  }
  if (status == nullptr)
    status = ort::table_entry<ort::GetTensorShapeElementCountFn>(
        g_api, ort::kGetTensorShapeElementCount)(info, &count);
  ort::table_entry<ort::ReleaseTypeAndShapeFn>(g_api, ort::kReleaseTypeAndShape)(info);
  check(status, "reading an input's type and shape");
  t.size = static_cast<int64_t>(count);
  check(ort::table_entry<ort::GetTensorMutableDataFn>(g_api, ort::kGetTensorMutableData)(
            const_cast<ort::Value*>(value), &t.data), "GetTensorMutableData");
  return t;
}

// Input `index` of this run; initializers were read once when the kernel was created.
Tensor input(const Kernel& kernel, ort::KernelContext* context, size_t index) {
  if (kernel.is_constant[index]) return kernel.constants[index];
  const ort::Value* value = nullptr;
  check(ort::table_entry<ort::KernelContextGetInputFn>(g_api, ort::kKernelContextGetInput)(
            context, index, &value), "KernelContext_GetInput");
  return describe(value);
}

template <typename T = uint8_t>
T* output(ort::KernelContext* context, const Shape& shape, size_t index = 0) {
  ort::Value* value = nullptr;
  check(ort::table_entry<ort::KernelContextGetOutputFn>(g_api, ort::kKernelContextGetOutput)(
            context, index, shape.data(), shape.size(), &value), "KernelContext_GetOutput");
  void* data = nullptr;
  check(ort::table_entry<ort::GetTensorMutableDataFn>(g_api, ort::kGetTensorMutableData)(
            value, &data), "GetTensorMutableData");
  return static_cast<T*>(data);
}

uint8_t* output_like(ort::KernelContext* context, const Tensor& like) {
  return output<uint8_t>(context, like.shape);
}

int64_t last_dim(const Tensor& t, const char* op) {
  if (t.shape.empty() || t.shape.back() <= 0)
    throw Failure{std::string(op) + ": the input needs a non-empty last axis"};
  return t.shape.back();
}

void expect_columns(const Tensor& t, int64_t cols, const char* op, const char* what) {
  if (t.size != cols)
    throw Failure{std::string(op) + ": " + what + " must have one value per column (" +
                  std::to_string(cols) + "), got " + std::to_string(t.size)};
}

// ---- threading -------------------------------------------------------------------------
// Runs body(row_begin, row_end) over [0, rows), split into tasks of about kChunkElements
// elements on the session's intra-op threads when the tensor is large.
template <typename Body>
void for_row_tasks(ort::KernelContext* context, int64_t rows, int64_t rows_per_task,
                   const Body& body);

template <typename Body>
void for_rows(ort::KernelContext* context, int64_t rows, int64_t cols, const Body& body) {
  if (rows * cols < kSerialElements || rows < 2) {
    body(int64_t{0}, rows);
    return;
  }
  for_row_tasks(context, rows, cols >= kChunkElements ? 1 : kChunkElements / cols, body);
}

// Runs body(row_begin, row_end) over [0, rows) in tasks of rows_per_task rows on the session's
// intra-op threads (one call when that is a single task).
template <typename Body>
void for_row_tasks(ort::KernelContext* context, int64_t rows, int64_t rows_per_task,
                   const Body& body) {
  if (rows <= rows_per_task) {
    body(int64_t{0}, rows);
    return;
  }
  const int64_t tasks = (rows + rows_per_task - 1) / rows_per_task;
  struct Job {
    const Body* body;
    int64_t rows, rows_per_task;
  } job{&body, rows, rows_per_task};
  auto run = [](void* data, size_t task) {
    const Job* j = static_cast<const Job*>(data);
    const int64_t begin = static_cast<int64_t>(task) * j->rows_per_task;
    const int64_t end = begin + j->rows_per_task < j->rows ? begin + j->rows_per_task : j->rows;
    (*j->body)(begin, end);
  };
  ort::Status* status = ort::table_entry<ort::ParallelForFn>(
      g_api, ort::kKernelContextParallelFor)(context, run, static_cast<size_t>(tasks), 0, &job);
  if (failed(status)) body(int64_t{0}, rows);  // no thread pool available: do it here
}

// ---- tiles -----------------------------------------------------------------------------
// The kernel's cached tiles when they match, else tiles built now into `scratch`.
const Tiles& requant_tiles(const Kernel& kernel, const Tensor& bias_acc, const Tensor& multiplier,
                           int64_t cols, Tiles& scratch) {
  if (kernel.requant.cols == cols) return kernel.requant;
  scratch = Tiles::requantize(static_cast<const float*>(bias_acc.data),
                              static_cast<const float*>(multiplier.data), cols);
  return scratch;
}

const Tiles& norm_tiles(const Kernel& kernel, const Tensor& gamma, const Tensor& beta,
                        int64_t cols, Tiles& scratch) {
  if (kernel.norm.cols == cols) return kernel.norm;
  scratch = Tiles::layer_norm(static_cast<const float*>(gamma.data),
                              static_cast<const float*>(beta.data), cols, kernel.p.norm.z);
  return scratch;
}

// ---- LayerNorm, alone or as the second output of *Norm ops ------------------------------
// LayerNorm of rows [b, e) of `in` (cols wide) into output `index`, with p.norm and the op's
// last two inputs (gamma, beta). A *Norm op calls it right after writing the rows.
struct Norm {
  const Tiles* tiles = nullptr;
  Tiles scratch;
  uint8_t* out = nullptr;

  void rows(const NormParams& p, const uint8_t* in, int64_t b, int64_t e, int64_t cols) const {
    if (out == nullptr) return;
    const Tiles& t = *tiles;
    sq_layer_norm(in, b, e, cols, t.a.data(), t.b.data(), t.c.data(), t.d.data(), t.rows,
                  p.s_x, p.z_x, p.eps, p.inv_s, out);
  }
};

void prepare_norm(const Kernel& kernel, ort::KernelContext* context, const Shape& shape,
                  size_t index, Norm& norm) {
  const OpSpec& op = *kernel.op;
  const size_t n = op.inputs.size();
  const Tensor gamma = input(kernel, context, n - 2), beta = input(kernel, context, n - 1);
  expect_columns(gamma, shape.back(), op.name, "gamma");
  expect_columns(beta, shape.back(), op.name, "beta");
  norm.tiles = &norm_tiles(kernel, gamma, beta, shape.back(), norm.scratch);
  norm.out = output<uint8_t>(context, shape, index);
}

// ---- ScoreTopK ---------------------------------------------------------------------------
void check_score_table(const OpSpec& op, const Tensor& table, const Tensor& row_scale) {
  const std::string name = op.name;
  if (table.shape.size() != 2 || table.shape[0] < 2 || table.shape[1] < 1)
    throw Failure{name + ": the item table must be 2-d with the padding row and an item"};
  if (table.shape[1] > kMaxScoreColumns)
    throw Failure{name + ": hidden width " + std::to_string(table.shape[1]) + " is above " +
                  std::to_string(kMaxScoreColumns) + " (int32 sums would round in float32)"};
  expect_columns(row_scale, table.shape[0], op.name, "row_scale (per item)");
}

// The ids every row must not be given: its item_seq and its exclude row (or the shared one),
// each row sorted (width T + E); an id outside 0..num_items is an error.
std::vector<int64_t> excluded_rows(const Tensor& item_seq, const Tensor& exclude, int64_t batch,
                                   int64_t num_items, int64_t* width) {
  if (item_seq.shape.size() != 2 || item_seq.shape[0] != batch)
    throw Failure{"ScoreTopK: item_seq must be (batch, length) with the hidden state's batch"};
  if (exclude.shape.size() != 2 || (exclude.shape[0] != batch && exclude.shape[0] != 1))
    throw Failure{"ScoreTopK: exclude must be (batch, n) or (1, n), got rank " +
                  std::to_string(exclude.shape.size())};
  const int64_t t = item_seq.shape[1], e = exclude.shape[1];
  *width = t + e;
  std::vector<int64_t> out(batch * (t + e));
  const int64_t* seq = static_cast<const int64_t*>(item_seq.data);
  const int64_t* ex = static_cast<const int64_t*>(exclude.data);
  for (int64_t r = 0; r < batch; ++r) {
    int64_t* row = out.data() + r * (t + e);
    std::copy(seq + r * t, seq + (r + 1) * t, row);
    const int64_t* ex_row = ex + (exclude.shape[0] == 1 ? 0 : r * e);
    std::copy(ex_row, ex_row + e, row + t);
    for (int64_t i = 0; i < t + e; ++i)
      if (row[i] < 0 || row[i] > num_items)
        throw Failure{"ScoreTopK: item id " + std::to_string(row[i]) + " in " +
                      (i < t ? "item_seq" : "exclude") + " is outside 0.." +
                      std::to_string(num_items)};
    std::sort(row, row + t + e);
  }
  return out;
}

// Score (every item) or ScoreTopK (the k best admissible items).
void score(const Kernel& kernel, ort::KernelContext* context) {
  const Tensor hidden = input(kernel, context, 0);
  if (hidden.shape.size() != 2)
    throw Failure{std::string(kernel.op->name) + ": hidden must be (batch, d)"};
  const int64_t batch = hidden.shape[0], cols = hidden.shape[1];
  PackedTable scratch;
  const PackedTable* table = &kernel.table;
  if (table->rows == 0) {  // the table is a run-time input: pack it for this run
    const Tensor items = input(kernel, context, 1), row_scale = input(kernel, context, 2);
    check_score_table(*kernel.op, items, row_scale);
    scratch = PackedTable::of(items, row_scale, kernel.p.s_h);
    table = &scratch;
  }
  if (table->cols != cols)
    throw Failure{std::string(kernel.op->name) + ": hidden has " + std::to_string(cols) +
                  " columns, the table " +
                  std::to_string(table->cols)};
  const int64_t num_items = table->rows - 1;
  const uint8_t* h = static_cast<const uint8_t*>(hidden.data);
  if (kernel.op->kind == OpKind::kScore) {
    Shape shape;
    shape.push_back(batch);
    shape.push_back(table->rows);
    float* out = output<float>(context, shape, 0);
    for_row_tasks(context, batch, kTopKRowsPerTask, [&](int64_t b, int64_t e) {
      sq_score_all(h, b, e, cols, kernel.p.z, table->packed, table->scale.data(), table->rows,
                   out);
    });
    return;
  }
  const Tensor k_tensor = input(kernel, context, 5);
  if (k_tensor.size != 1) throw Failure{"ScoreTopK: k must hold one value"};
  const int64_t k = *static_cast<const int64_t*>(k_tensor.data);
  // as ONNX TopK over the num_items + 1 score columns: k = 0 gives empty lists, k = num_items + 1
  // ends with the padding item's slot (id 0, -inf), as every slot past the admissible items
  if (k < 0 || k > num_items + 1)
    throw Failure{"ScoreTopK: k must be in [0, " + std::to_string(num_items + 1) + "], got " +
                  std::to_string(k)};
  int64_t width = 0;
  const std::vector<int64_t> excluded = excluded_rows(
      input(kernel, context, 3), input(kernel, context, 4), batch, num_items, &width);
  Shape shape;
  shape.push_back(batch);
  shape.push_back(k);
  float* scores = output<float>(context, shape, 0);
  int64_t* ids = output<int64_t>(context, shape, 1);
  if (k == 0) return;
  const int64_t user_tasks = (batch + kTopKRowsPerTask - 1) / kTopKRowsPerTask;
  const int64_t parts = user_tasks < kTopKSplitBelow && k <= kTopKSplitMaxK
                            ? std::max<int64_t>(1, table->rows / kTopKMinItemsPerTask)
                            : 1;
  const int64_t part_items = ((table->rows + parts - 1) / parts + 15) / 16 * 16;
  if (parts == 1) {
    for_row_tasks(context, batch, kTopKRowsPerTask, [&](int64_t b, int64_t e) {
      sq_score_top_k(h, b, e, cols, kernel.p.z, table->packed, table->scale.data(), table->rows,
                     0, table->rows, excluded.data(), width, k, nullptr, scores, ids);
    });
    return;
  }
  // task t: users of user task t / parts, items of range t % parts; its lists go to part
  // (t % parts) of the scratch, merged per user afterwards (the same lists as one pass)
  std::vector<float> part_scores(parts * batch * k);
  std::vector<int64_t> part_ids(parts * batch * k);
  std::vector<float> floors(batch, -std::numeric_limits<float>::infinity());
  for_row_tasks(context, user_tasks * parts, 1, [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      const int64_t part = t % parts, user_begin = (t / parts) * kTopKRowsPerTask;
      const int64_t user_end = std::min(batch, user_begin + kTopKRowsPerTask);
      const int64_t item_begin = std::min(table->rows, part * part_items);
      const int64_t item_end = std::min(table->rows, item_begin + part_items);
      sq_score_top_k(h, user_begin, user_end, cols, kernel.p.z, table->packed,
                     table->scale.data(), table->rows, item_begin, item_end, excluded.data(),
                     width, k, floors.data(), part_scores.data() + part * batch * k,
                     part_ids.data() + part * batch * k);
    }
  });
  sq_merge_top_k(part_scores.data(), part_ids.data(), parts, batch, k, scores, ids);
}

// ---- the ops ----------------------------------------------------------------------------
void compute(const Kernel& kernel, ort::KernelContext* context) {
  const OpSpec& op = *kernel.op;
  const Params& p = kernel.p;
  switch (op.kind) {
    case OpKind::kQuantize: {
      const Tensor x = input(kernel, context, 0);
      uint8_t* out = output_like(context, x);
      const float* data = static_cast<const float*>(x.data);
      for_rows(context, x.size, 1, [&](int64_t b, int64_t e) {
        sq_quantize_per_tensor(data, b, e, p.inv_s, p.z, out);
      });
      return;
    }
    case OpKind::kRequantize:
    case OpKind::kRequantizeRelu:
    case OpKind::kRequantizeDequantize:
    case OpKind::kRequantizeAdd: {
      const Tensor acc = input(kernel, context, 0);
      const int64_t cols = last_dim(acc, op.name);
      const Tensor bias_acc = input(kernel, context, 1), multiplier = input(kernel, context, 2);
      expect_columns(bias_acc, cols, op.name, "bias_acc");
      expect_columns(multiplier, cols, op.name, "multiplier");
      const int32_t* a = static_cast<const int32_t*>(acc.data);
      Tiles scratch;
      const Tiles& t = requant_tiles(kernel, bias_acc, multiplier, cols, scratch);
      const float* bias = t.a.data();
      const float* mult = t.b.data();
      if (op.kind == OpKind::kRequantizeDequantize) {
        float* out = output<float>(context, acc.shape);
        for_rows(context, acc.size / cols, cols, [&](int64_t b, int64_t e) {
          sq_requantize_dequantize(a, b, e, cols, bias, mult, t.rows, p.z, p.s, out);
        });
        return;
      }
      if (op.kind == OpKind::kRequantizeAdd) {
        const Tensor residual = input(kernel, context, 3);
        if (residual.shape != acc.shape)
          throw Failure{"RequantizeAdd: the residual must have the matmul output's shape"};
        uint8_t* out = output_like(context, acc);
        Norm norm;
        if (op.norm) prepare_norm(kernel, context, acc.shape, 1, norm);
        const uint8_t* res = static_cast<const uint8_t*>(residual.data);
        for_rows(context, acc.size / cols, cols, [&](int64_t b, int64_t e) {
          sq_requantize_add(a, b, e, cols, bias, mult, t.rows, res, p.s_a, p.z_a, p.s_b, p.z_b,
                            p.inv_s, p.z, out);
          norm.rows(p.norm, out, b, e, cols);
        });
        return;
      }
      const int relu = op.kind == OpKind::kRequantizeRelu;
      uint8_t* out = output_like(context, acc);
      for_rows(context, acc.size / cols, cols, [&](int64_t b, int64_t e) {
        sq_requantize(a, b, e, cols, bias, mult, t.rows, p.z, relu, out);
      });
      return;
    }
    case OpKind::kEmbedQuantize: {
      const Tensor ids = input(kernel, context, 0), positions = input(kernel, context, 1);
      if (ids.shape != positions.shape)
        throw Failure{"EmbedQuantize: ids and positions must have the same shape"};
      const Tensor items = input(kernel, context, 2), item_scale = input(kernel, context, 3);
      const Tensor pos = input(kernel, context, 4), pos_scale = input(kernel, context, 5);
      if (items.shape.size() != 2 || pos.shape.size() != 2 || items.shape[1] != pos.shape[1])
        throw Failure{"EmbedQuantize: the tables must be 2-d with the same width"};
      const int64_t cols = items.shape[1];
      expect_columns(item_scale, items.shape[0], op.name, "item_scale (per row)");
      expect_columns(pos_scale, pos.shape[0], op.name, "pos_scale (per row)");
      Shape shape = ids.shape;
      shape.push_back(cols);
      uint8_t* out = output<uint8_t>(context, shape);
      Norm norm;
      if (op.norm) prepare_norm(kernel, context, shape, 1, norm);
      std::atomic<int64_t> bad{-1};
      for_rows(context, ids.size, cols, [&](int64_t b, int64_t e) {
        const int64_t at = sq_embed_quantize(
            static_cast<const int64_t*>(ids.data), static_cast<const int64_t*>(positions.data),
            b, e, static_cast<const int8_t*>(items.data),
            static_cast<const float*>(item_scale.data), items.shape[0], p.emb_scale,
            static_cast<const int8_t*>(pos.data), static_cast<const float*>(pos_scale.data),
            pos.shape[0], cols, p.inv_s, p.z, out);
        if (at >= 0) {
          bad.store(at);
        } else {
          norm.rows(p.norm, out, b, e, cols);
        }
      });
      const int64_t at = bad.load();
      if (at >= 0) {
        const int64_t id = static_cast<const int64_t*>(ids.data)[at];
        const int64_t q = static_cast<const int64_t*>(positions.data)[at];
        throw Failure{"EmbedQuantize: item id " + std::to_string(id) + " or position " +
                      std::to_string(q) + " is out of range (items 0.." +
                      std::to_string(items.shape[0] - 1) + ", positions 0.." +
                      std::to_string(pos.shape[0] - 1) + ")"};
      }
      return;
    }
    case OpKind::kLayerNorm: {
      const Tensor u = input(kernel, context, 0);
      const int64_t cols = last_dim(u, op.name);
      Norm norm;
      prepare_norm(kernel, context, u.shape, 0, norm);
      for_rows(context, u.size / cols, cols, [&](int64_t b, int64_t e) {
        norm.rows(p.norm, static_cast<const uint8_t*>(u.data), b, e, cols);
      });
      return;
    }
    case OpKind::kScore:
    case OpKind::kScoreTopK:
      score(kernel, context);
      return;
    case OpKind::kAdd: {
      const Tensor a = input(kernel, context, 0), b = input(kernel, context, 1);
      if (a.shape != b.shape) throw Failure{"Add: both operands must have the same shape"};
      uint8_t* out = output_like(context, a);
      for_rows(context, a.size, 1, [&](int64_t lo, int64_t hi) {
        sq_add(static_cast<const uint8_t*>(a.data), static_cast<const uint8_t*>(b.data), lo, hi,
               p.s_a, p.z_a, p.s_b, p.z_b, p.inv_s, p.z, out);
      });
      return;
    }
  }
}

// ---- attributes ------------------------------------------------------------------------
float attr_float(const ort::KernelInfo* info, const OpSpec& op, const char* name) {
  float value = 0;
  if (failed(ort::table_entry<ort::KernelInfoGetAttributeFloatFn>(
          g_api, ort::kKernelInfoGetAttributeFloat)(info, name, &value)))
    throw Failure{std::string(op.name) + ": needs the float attribute " + name};
  return value;
}

uint8_t attr_u8(const ort::KernelInfo* info, const OpSpec& op, const char* name) {
  int64_t value = -1;
  if (failed(ort::table_entry<ort::KernelInfoGetAttributeInt64Fn>(
          g_api, ort::kKernelInfoGetAttributeInt64)(info, name, &value)))
    throw Failure{std::string(op.name) + ": needs the int attribute " + name};
  if (value < 0 || value > 255)
    throw Failure{std::string(op.name) + ": attribute " + name +
                  " must be a uint8 zero point, got " + std::to_string(value)};
  return static_cast<uint8_t>(value);
}

double attr_decimal(const ort::KernelInfo* info, const OpSpec& op, const char* name) {
  auto get = ort::table_entry<ort::KernelInfoGetAttributeStringFn>(
      g_api, ort::kKernelInfoGetAttributeString);
  size_t size = 0;
  ort::Status* status = get(info, name, nullptr, &size);
  std::string text(size, '\0');
  if (status == nullptr) status = get(info, name, text.data(), &size);
  if (failed(status))
    throw Failure{std::string(op.name) + ": needs the string attribute " + name};
  const char* begin = text.c_str();
  char* end = nullptr;
  const double value = std::strtod(begin, &end);
  if (end == begin || *end != '\0')
    throw Failure{std::string(op.name) + ": attribute " + name + " is not a number: " + text};
  return value;
}

// A LayerNorm's attributes: s_x, z_x, eps, inv_s, z, each name after `prefix`.
NormParams read_norm(const ort::KernelInfo* info, const OpSpec& op, const std::string& prefix) {
  NormParams n;
  n.s_x = attr_float(info, op, (prefix + "s_x").c_str());
  n.z_x = attr_u8(info, op, (prefix + "z_x").c_str());
  n.eps = attr_decimal(info, op, (prefix + "eps").c_str());
  n.inv_s = attr_float(info, op, (prefix + "inv_s").c_str());
  n.z = attr_u8(info, op, (prefix + "z").c_str());
  return n;
}

Params read_params(const OpSpec& op, const ort::KernelInfo* info) {
  Params p;
  switch (op.kind) {
    case OpKind::kQuantize:
      p.inv_s = attr_float(info, op, "inv_s");
      p.z = attr_u8(info, op, "z");
      break;
    case OpKind::kRequantize:
    case OpKind::kRequantizeRelu:
      p.z = attr_u8(info, op, "z");
      break;
    case OpKind::kRequantizeDequantize:
      p.z = attr_u8(info, op, "z");
      p.s = attr_float(info, op, "s");
      break;
    case OpKind::kEmbedQuantize:
      p.emb_scale = attr_float(info, op, "emb_scale");
      p.inv_s = attr_float(info, op, "inv_s");
      p.z = attr_u8(info, op, "z");
      break;
    case OpKind::kLayerNorm:
      p.norm = read_norm(info, op, "");
      break;
    case OpKind::kScore:
    case OpKind::kScoreTopK:
      p.s_h = attr_float(info, op, "s_h");
      p.z = attr_u8(info, op, "z");
      break;
    case OpKind::kAdd:
    case OpKind::kRequantizeAdd:
      p.s_a = attr_float(info, op, "s_a");
      p.z_a = attr_u8(info, op, "z_a");
      p.s_b = attr_float(info, op, "s_b");
      p.z_b = attr_u8(info, op, "z_b");
      p.inv_s = attr_float(info, op, "inv_s");
      p.z = attr_u8(info, op, "z");
      break;
  }
  if (op.norm) p.norm = read_norm(info, op, "norm_");
  return p;
}

ort::Status* error_status(ort::ErrorCode code, const std::string& message) {
  return ort::table_entry<ort::CreateStatusFn>(g_api, ort::kCreateStatus)(code, message.c_str());
}

// ---- OrtCustomOp callbacks -------------------------------------------------------------
const OpSpec& spec(const ort::CustomOp* op) { return *reinterpret_cast<const OpSpec*>(op); }

Kernel* make_kernel(const OpSpec& op, const ort::KernelInfo* info) {
  std::unique_ptr<Kernel> kernel(new Kernel{&op, read_params(op, info), {}, {}, {}, {}, {}});
  const size_t count = op.inputs.size();
  kernel->constants.resize(count);
  kernel->is_constant.assign(count, false);
  auto get = ort::table_entry<ort::KernelInfoGetConstantInputTensorFn>(
      g_api, ort::kKernelInfoGetConstantInputTensor);
  for (size_t i = 0; i < count; ++i) {
    int constant = 0;
    const ort::Value* value = nullptr;
    if (failed(get(info, i, &constant, &value))) continue;  // read at run time instead
    if (constant && value != nullptr) {
      kernel->constants[i] = describe(value);
      kernel->is_constant[i] = true;
    }
  }
  // Constant per-column inputs: tile them once here instead of on every run.
  const auto& c = kernel->constants;
  const auto constant = [&](size_t i) { return kernel->is_constant[i]; };
  switch (op.kind) {
    case OpKind::kRequantize:
    case OpKind::kRequantizeRelu:
    case OpKind::kRequantizeDequantize:
    case OpKind::kRequantizeAdd:
      if (constant(1) && constant(2) && c[1].size == c[2].size && c[1].size > 0)
        kernel->requant = Tiles::requantize(static_cast<const float*>(c[1].data),
                                            static_cast<const float*>(c[2].data), c[1].size);
      break;
    case OpKind::kScore:
    case OpKind::kScoreTopK:
      if (constant(1) && constant(2)) {
        check_score_table(op, c[1], c[2]);
        kernel->table = PackedTable::of(c[1], c[2], kernel->p.s_h);
      }
      break;
    default:
      break;
  }
  if (op.kind == OpKind::kLayerNorm || op.norm) {  // gamma, beta: the last two inputs
    const size_t g = op.inputs.size() - 2, b = g + 1;
    if (constant(g) && constant(b) && c[g].size == c[b].size && c[g].size > 0)
      kernel->norm = Tiles::layer_norm(static_cast<const float*>(c[g].data),
                                       static_cast<const float*>(c[b].data), c[g].size,
                                       kernel->p.norm.z);
  }
  return kernel.release();
}

ort::Status* create_kernel(const ort::CustomOp* op, const ort::Api*,
                           const ort::KernelInfo* info, void** kernel) {
  try {
    *kernel = make_kernel(spec(op), info);
    return nullptr;
  } catch (const Failure& failure) {
    return error_status(ort::kInvalidArgument, failure.message);
  } catch (...) {
    return error_status(ort::kFail, "sasrec_qat.fused: cannot create the kernel");
  }
}

ort::Status* kernel_compute(void* kernel, ort::KernelContext* context) {
  try {
    compute(*static_cast<const Kernel*>(kernel), context);
    return nullptr;
  } catch (const Failure& failure) {
    return error_status(ort::kInvalidArgument, failure.message);
  } catch (...) {
    return error_status(ort::kFail, "sasrec_qat.fused: unexpected error");
  }
}

// Version 16 ops are created and run through the V2 callbacks; the V1 slots must be set.
void* create_kernel_v1(const ort::CustomOp*, const ort::Api*, const ort::KernelInfo*) {
  return nullptr;
}
void kernel_compute_v1(void*, ort::KernelContext*) {}
void kernel_destroy(void* kernel) { delete static_cast<Kernel*>(kernel); }
const char* get_name(const ort::CustomOp* op) { return spec(op).name; }
const char* get_provider(const ort::CustomOp*) { return "CPUExecutionProvider"; }
ElementType get_input_type(const ort::CustomOp* op, size_t i) { return spec(op).inputs[i]; }
size_t get_input_count(const ort::CustomOp* op) { return spec(op).inputs.size(); }
ElementType get_output_type(const ort::CustomOp* op, size_t i) { return spec(op).outputs[i]; }
size_t get_output_count(const ort::CustomOp* op) { return spec(op).outputs.size(); }
ort::Characteristic required(const ort::CustomOp*, size_t) { return ort::kRequired; }
ort::MemType default_memory(const ort::CustomOp*, size_t) { return ort::kMemDefault; }
int one(const ort::CustomOp*) { return 1; }

OpSpec make_op(OpKind kind, const char* name, std::vector<ElementType> inputs,
               ElementType output = ElementType::kUint8, bool norm = false) {
  OpSpec op{};
  std::memset(&op.record, 0, sizeof(op.record));
  op.record.version = ort::kCustomOpVersion;
  op.record.CreateKernel = create_kernel_v1;
  op.record.GetName = get_name;
  op.record.GetExecutionProviderType = get_provider;
  op.record.GetInputType = get_input_type;
  op.record.GetInputTypeCount = get_input_count;
  op.record.GetOutputType = get_output_type;
  op.record.GetOutputTypeCount = get_output_count;
  op.record.KernelCompute = kernel_compute_v1;
  op.record.KernelDestroy = kernel_destroy;
  op.record.GetInputCharacteristic = required;
  op.record.GetOutputCharacteristic = required;
  op.record.GetInputMemoryType = default_memory;
  op.record.GetVariadicInputMinArity = one;
  op.record.GetVariadicInputHomogeneity = one;
  op.record.GetVariadicOutputMinArity = one;
  op.record.GetVariadicOutputHomogeneity = one;
  op.record.CreateKernelV2 = create_kernel;
  op.record.KernelComputeV2 = kernel_compute;
  op.kind = kind;
  op.name = name;
  op.inputs = std::move(inputs);
  op.outputs = {output};
  op.norm = norm;
  if (norm) {
    op.outputs.push_back(ElementType::kUint8);  // the LayerNorm of the first
    op.inputs.push_back(ElementType::kFloat);  // gamma
    op.inputs.push_back(ElementType::kFloat);  // beta
  }
  return op;
}

std::vector<OpSpec>& ops() {
  using E = ElementType;
  static std::vector<OpSpec> all = [] {
    const std::vector<E> requant{E::kInt32, E::kFloat, E::kFloat};
    std::vector<OpSpec> v;
    v.reserve(12);  // no reallocation: the runtime keeps pointers to the records
    v.push_back(make_op(OpKind::kQuantize, "QuantizePerTensor", {E::kFloat}));
    v.push_back(make_op(OpKind::kRequantize, "Requantize", requant));
    v.push_back(make_op(OpKind::kRequantizeRelu, "RequantizeRelu", requant));
    v.push_back(make_op(OpKind::kRequantizeDequantize, "RequantizeDequantize", requant,
                        E::kFloat));
    const std::vector<E> add{E::kInt32, E::kFloat, E::kFloat, E::kUint8};
    const std::vector<E> embed{E::kInt64, E::kInt64, E::kInt8, E::kFloat, E::kInt8, E::kFloat};
    v.push_back(make_op(OpKind::kRequantizeAdd, "RequantizeAdd", add));
    v.push_back(make_op(OpKind::kRequantizeAdd, "RequantizeAddNorm", add, E::kUint8, true));
    v.push_back(make_op(OpKind::kEmbedQuantize, "EmbedQuantize", embed));
    v.push_back(make_op(OpKind::kEmbedQuantize, "EmbedQuantizeNorm", embed, E::kUint8, true));
    v.push_back(make_op(OpKind::kLayerNorm, "LayerNorm", {E::kUint8, E::kFloat, E::kFloat}));
    v.push_back(make_op(OpKind::kAdd, "Add", {E::kUint8, E::kUint8}));
    v.push_back(make_op(OpKind::kScore, "Score", {E::kUint8, E::kInt8, E::kFloat}, E::kFloat));
    v.push_back(make_op(OpKind::kScoreTopK, "ScoreTopK",
                        {E::kUint8, E::kInt8, E::kFloat, E::kInt64, E::kInt64, E::kInt64},
                        E::kFloat));
    v.back().outputs.push_back(E::kInt64);  // top_k_items beside top_k_scores
    return v;
  }();
  return all;
}

}  // namespace

// The C API version requested from onnxruntime: ort::kApiVersion, unless the build overrides it
// (-DSASREC_QAT_ORT_API_VERSION=9999 builds a library that every runtime refuses, which the
// tests use to check the error below).
#ifndef SASREC_QAT_ORT_API_VERSION
#define SASREC_QAT_ORT_API_VERSION ort::kApiVersion
#endif

extern "C" __attribute__((visibility("default"))) ort::Status* RegisterCustomOps(
    ort::SessionOptions* options, const ort::ApiBase* base) {
  const uint32_t version = SASREC_QAT_ORT_API_VERSION;
  const ort::Api* api = base->GetApi(version);
  if (api == nullptr) {
    // An older runtime: report it through version 1 of the table, which every runtime has
    // (CreateStatus is its first entry in every version), instead of registering nothing.
    const ort::Api* v1 = base->GetApi(1);
    if (v1 == nullptr) return nullptr;  // not an onnxruntime C API at all: nothing to report to
    const std::string message =
        "libsasrec_qat_ops needs onnxruntime C API version " + std::to_string(version) +
        " (onnxruntime >= 1." + std::to_string(version) + "); this onnxruntime (" +
        base->GetVersionString() + ") does not provide it: upgrade onnxruntime, or use the "
        "model exported without --fused";
    return ort::table_entry<ort::CreateStatusFn>(v1, ort::kCreateStatus)(ort::kFail,
                                                                         message.c_str());
  }
  g_api = api;
  ort::CustomOpDomain* domain = nullptr;  // kept for the process's lifetime, as sessions use it
  ort::Status* status = ort::table_entry<ort::CreateCustomOpDomainFn>(
      api, ort::kCreateCustomOpDomain)("sasrec_qat.fused", &domain);
  for (OpSpec& op : ops()) {
    if (status != nullptr) return status;
    status = ort::table_entry<ort::CustomOpDomainAddFn>(api, ort::kCustomOpDomainAdd)(
        domain, &op.record);
  }
  if (status != nullptr) return status;
  return ort::table_entry<ort::AddCustomOpDomainFn>(api, ort::kAddCustomOpDomain)(options,
                                                                                 domain);
}
