// Scoring and top-k selection in one pass, for the INT8 serving graph (op ScoreTopK, ort_ops.cc).
//
// For each user row r of the uint8 final hidden state h (zero point z_h) and each item i of the
// int8 item table W (rows 0..N, row 0 the padding item), the score is what the exact INT8 graph
// computes (export/int8_emitters/common.py, Int8Emitter.score):
//
//     acc[r, i]   = sum_j (h[r, j] - z_h) * W[i, j]          exact int32
//     score[r, i] = float(acc[r, i]) * scale[i],  scale[i] = float32(s_h * row_scale[i])
//
// float(acc) is exact (|acc| <= d * 255 * 127 < 2^24 for d < 518, checked by the caller) and the
// product is one float32 rounding, so every score equals the graph's bit for bit. Only the k best
// items per row are kept (never the B x (N + 1) matrix): items are visited in increasing id, and an
// item enters the sorted list only when its score beats the k-th best so far (strictly), so equal
// scores keep the lower id first (the project's tie rule, numpy's stable argsort). Excluded items
// (the padding item 0 and the caller's per-row sorted list) never enter; rows with fewer than k
// admissible items leave id 0 and score -inf in the slots past them.
//
// sq_score_all writes the same scores for every item instead (op Score: the full-score graph's
// scoring in one pass, without the int32 matrix and the Cast and Mul passes over it).
//
// Arithmetic: the products are int16 x int16 pairs summed into int32 (x86 vpmaddwd: 16
// multiply-adds per instruction, twice the float32 FMA rate of AVX2), exact for uint8 - z (9 bits)
// times int8. The table is packed once (sq_score_pack) as blocks of 8 items: for each pair of
// columns (2p, 2p + 1), 8 items x 2 int8 (16 bytes, sign-extended to one 256-bit vector of int16
// when loaded, so the table streams at int8 size). A block of 4 users x 16 items stays in 8 vector
// registers for the whole row; items are visited in chunks that fit in L2, each chunk serving
// every user of the call. Without AVX2 the same integers are summed by scalar code.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kBlockItems = 8;     // items per packed block (one 256-bit vector of pairs)
constexpr int64_t kUsers = 4;          // users per register block
constexpr int64_t kChunkItems = 4096;  // items per L2 chunk (4096 x 50 int8 = 200 KB at d = 50)

inline int64_t pairs_of(int64_t cols) { return (cols + 1) / 2; }
inline int64_t blocks_of(int64_t rows) { return (rows + kBlockItems - 1) / kBlockItems; }

// The k best (score, id) of one row so far, best first.
//
// When one row's items are split into ranges scored by separate calls (sq_score_top_k with an
// item range, possibly on other threads), the calls share the row's `floor`: the highest k-th
// best score any range's full list has reached. k items already score >= floor, so an item below
// it cannot be among the row's k best and is skipped; an item equal to it may be (ties go to the
// lower id), so it is still offered. Ranges run in sequence then skip as much as one pass would.
struct TopK {
  float* scores;
  int64_t* ids;
  int64_t k, count = 0;
  const int64_t* excluded;  // sorted ascending
  int64_t excluded_count;
  float* floor = nullptr;   // shared with the row's other item ranges (atomic access), or none

  float threshold() const {
    return count < k ? -std::numeric_limits<float>::infinity() : scores[k - 1];
  }

  float floor_value() const {
    if (floor == nullptr) return -std::numeric_limits<float>::infinity();
    float value;
    __atomic_load(floor, &value, __ATOMIC_RELAXED);
    return value;
  }

  // Raises the shared floor to this list's k-th best once the list is full.
  void publish() const {
    if (floor == nullptr || count < k) return;
    float kth = scores[k - 1], seen = floor_value();
    while (kth > seen &&
           !__atomic_compare_exchange(floor, &seen, &kth, true, __ATOMIC_RELAXED,
                                      __ATOMIC_RELAXED)) {
    }
  }

  bool is_excluded(int64_t id) const {
    return id == 0 || std::binary_search(excluded, excluded + excluded_count, id);
  }

  // Called in increasing id order; `score` > threshold() already checked by the caller.
  void offer(float score, int64_t id) {
    if (!(score > threshold()) || is_excluded(id)) return;
    // the new entry starts in the first free slot, or in place of the last (which falls off),
    // and moves up past every worse entry; equal scores stay ahead (lower id first)
    int64_t at = count < k ? count : k - 1;
    while (at > 0 && scores[at - 1] < score) {
      scores[at] = scores[at - 1];
      ids[at] = ids[at - 1];
      --at;
    }
    scores[at] = score;
    ids[at] = id;
    if (count < k) ++count;
  }

  void finish() {
    for (int64_t i = count; i < k; ++i) {
      scores[i] = -std::numeric_limits<float>::infinity();
      ids[i] = 0;
    }
  }
};

// (h - z_h) of one row as int16 pairs packed in int32 (column 2p low, 2p + 1 high; odd d: 0).
void pack_user(const uint8_t* h, int64_t cols, uint8_t z, int32_t* out) {
  for (int64_t p = 0; p < pairs_of(cols); ++p) {
    const int32_t lo = static_cast<int32_t>(h[2 * p]) - z;
    const int32_t hi = 2 * p + 1 < cols ? static_cast<int32_t>(h[2 * p + 1]) - z : 0;
    out[p] = static_cast<int32_t>((static_cast<uint32_t>(hi) << 16) |
                                  (static_cast<uint32_t>(lo) & 0xffffu));
  }
}

#if defined(__AVX2__)
// 16 int8 (8 items x one pair of columns) sign-extended to 16 int16.
inline __m256i widen(const int8_t* pairs) {
  return _mm256_cvtepi8_epi16(_mm_load_si128(reinterpret_cast<const __m128i*>(pairs)));
}
#endif

// scores[u][0..16) of users [0, users) against the 16 items of blocks b and b + 1 (b + 1 may be
// past the table's end when `two` is false: only the first 8 are then valid).
template <int kRows>
__attribute__((always_inline)) inline void block_scores(
    const int32_t* const* users, const int8_t* packed, int64_t b, int64_t pairs,
    const float* scale, bool two, float (*scores)[16]) {
#if defined(__AVX2__)
  __m256i acc0[kRows], acc1[kRows];
  for (int u = 0; u < kRows; ++u) acc0[u] = acc1[u] = _mm256_setzero_si256();
  const int8_t* t0 = packed + b * pairs * 16;
  const int8_t* t1 = t0 + pairs * 16;
  if (two) {
    for (int64_t p = 0; p < pairs; ++p) {
      const __m256i w0 = widen(t0 + p * 16);
      const __m256i w1 = widen(t1 + p * 16);
      for (int u = 0; u < kRows; ++u) {
        const __m256i a = _mm256_set1_epi32(users[u][p]);
        acc0[u] = _mm256_add_epi32(acc0[u], _mm256_madd_epi16(a, w0));
        acc1[u] = _mm256_add_epi32(acc1[u], _mm256_madd_epi16(a, w1));
      }
    }
  } else {
    for (int64_t p = 0; p < pairs; ++p) {
      const __m256i w0 = widen(t0 + p * 16);
      for (int u = 0; u < kRows; ++u)
        acc0[u] = _mm256_add_epi32(acc0[u], _mm256_madd_epi16(_mm256_set1_epi32(users[u][p]), w0));
    }
  }
  const __m256 s0 = _mm256_loadu_ps(scale + b * kBlockItems);
  const __m256 s1 = two ? _mm256_loadu_ps(scale + (b + 1) * kBlockItems) : _mm256_setzero_ps();
  for (int u = 0; u < kRows; ++u) {
    _mm256_storeu_ps(scores[u], _mm256_mul_ps(_mm256_cvtepi32_ps(acc0[u]), s0));
    _mm256_storeu_ps(scores[u] + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(acc1[u]), s1));
  }
#else
  const int blocks = two ? 2 : 1;
  for (int u = 0; u < kRows; ++u) {
    for (int half = 0; half < 2; ++half) {
      for (int64_t lane = 0; lane < kBlockItems; ++lane) {
        if (half >= blocks) {
          scores[u][half * 8 + lane] = 0.0f;
          continue;
        }
        const int8_t* t = packed + (b + half) * pairs * 16 + lane * 2;
        int32_t acc = 0;
        for (int64_t p = 0; p < pairs; ++p) {
          const int32_t pair = users[u][p];
          const int16_t lo = static_cast<int16_t>(pair & 0xffff);
          const int16_t hi = static_cast<int16_t>(pair >> 16);
          acc += static_cast<int32_t>(lo) * t[p * 16] + static_cast<int32_t>(hi) * t[p * 16 + 1];
        }
        scores[u][half * 8 + lane] =
            static_cast<float>(acc) * scale[(b + half) * kBlockItems + lane];
      }
    }
  }
#endif
}

// Offer the valid items of a 16-item block to each user's list: a vector compare against the
// user's threshold first, the scalar insertion only for the items that beat it.
template <int kRows>
void offer_block(TopK* lists, float (*scores)[16], int64_t first_id, int64_t valid) {
  for (int u = 0; u < kRows; ++u) {
    TopK& list = lists[u];
    uint32_t mask;
    // offered: above the list's k-th best and not below the row's shared floor
#if defined(__AVX2__)
    const __m256 t = _mm256_set1_ps(list.threshold()), f = _mm256_set1_ps(list.floor_value());
    const __m256 lo = _mm256_loadu_ps(scores[u]), hi = _mm256_loadu_ps(scores[u] + 8);
    mask = static_cast<uint32_t>(
        _mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(lo, t, _CMP_GT_OQ),
                                         _mm256_cmp_ps(lo, f, _CMP_GE_OQ))) |
        (_mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(hi, t, _CMP_GT_OQ),
                                          _mm256_cmp_ps(hi, f, _CMP_GE_OQ))) << 8));
#else
    mask = 0;
    const float t = list.threshold(), f = list.floor_value();
    for (int lane = 0; lane < 16; ++lane)
      mask |= static_cast<uint32_t>(scores[u][lane] > t && scores[u][lane] >= f) << lane;
#endif
    if (valid < 16) mask &= (1u << valid) - 1u;
    if (mask == 0) continue;
    while (mask != 0) {
      const int lane = __builtin_ctz(mask);
      mask &= mask - 1;
      list.offer(scores[u][lane], first_id + lane);
    }
    list.publish();
  }
}

// Writes the valid items of a 16-item block into each user's score row.
template <int kRows>
void store_block(float* const* rows, float (*scores)[16], int64_t first_id, int64_t valid) {
  for (int u = 0; u < kRows; ++u) {
    if (valid == 16) {  // a constant size: inlined as two vector stores
      std::memcpy(rows[u] + first_id, scores[u], 16 * sizeof(float));
    } else {
      std::memcpy(rows[u] + first_id, scores[u], valid * sizeof(float));
    }
  }
}

// Items [item_begin, item_end) (a multiple of 16 apart from the table's end) for kRows users;
// each 16-item block's scores go to sink(block scores, first id, valid items).
template <int kRows, typename Sink>
void rows_chunk(const int32_t* const* users, const int8_t* packed, int64_t pairs,
                const float* scale, int64_t table_rows, int64_t item_begin, int64_t item_end,
                const Sink& sink) {
  alignas(32) float scores[kUsers][16];
  const int64_t total_blocks = blocks_of(table_rows);
  for (int64_t first = item_begin; first < item_end; first += 2 * kBlockItems) {
    const int64_t b = first / kBlockItems;
    const bool two = b + 1 < total_blocks;
    block_scores<kRows>(users, packed, b, pairs, scale, two, scores);
    sink(scores, first, std::min<int64_t>(2 * kBlockItems, table_rows - first));
  }
}

// Every L2 chunk of items [item_begin, item_end) (item_begin a multiple of 16) against every
// block of 4 users of [0, rows): user u's packed row is users + u * pairs; make_sink(first user,
// users in the block) gives the block's sink.
template <typename MakeSink>
void score_rows(const std::vector<int32_t>& users, int64_t rows, int64_t pairs,
                const int8_t* packed, const float* scale, int64_t table_rows,
                int64_t item_begin, int64_t item_end, const MakeSink& make_sink) {
  for (int64_t chunk = item_begin; chunk < item_end; chunk += kChunkItems) {
    const int64_t chunk_end = std::min(item_end, chunk + kChunkItems);
    for (int64_t r = 0; r < rows; r += kUsers) {
      const int32_t* block_users[kUsers];
      const int64_t n = std::min<int64_t>(kUsers, rows - r);
      for (int64_t u = 0; u < n; ++u) block_users[u] = users.data() + (r + u) * pairs;
      const auto run = [&](auto users_in_block) {  // std::integral_constant<int, n>
        rows_chunk<decltype(users_in_block)::value>(block_users, packed, pairs, scale,
                                                    table_rows, chunk, chunk_end,
                                                    make_sink(r, users_in_block));
      };
      switch (n) {
        case 4: run(std::integral_constant<int, 4>()); break;
        case 3: run(std::integral_constant<int, 3>()); break;
        case 2: run(std::integral_constant<int, 2>()); break;
        default: run(std::integral_constant<int, 1>()); break;
      }
    }
  }
}

std::vector<int32_t> pack_users(const uint8_t* hidden, int64_t row_begin, int64_t row_end,
                                int64_t cols, uint8_t z) {
  const int64_t pairs = pairs_of(cols);
  std::vector<int32_t> users((row_end - row_begin) * pairs);
  for (int64_t row = row_begin; row < row_end; ++row)
    pack_user(hidden + row * cols, cols, z, users.data() + (row - row_begin) * pairs);
  return users;
}

}  // namespace

extern "C" {

// Bytes of the packed table of `rows` items of `cols` columns (whole blocks of 8 items).
int64_t sq_score_pack_size(int64_t rows, int64_t cols) {  // int8 elements
  return blocks_of(rows) * pairs_of(cols) * kBlockItems * 2;
}

// Packs the int8 table (rows x cols, row-major) as described at the top; items past `rows` and
// the missing column of an odd `cols` are 0. `packed` must be 16-byte aligned.
void sq_score_pack(const int8_t* table, int64_t rows, int64_t cols, int8_t* packed) {
  const int64_t pairs = pairs_of(cols);
  std::memset(packed, 0, sq_score_pack_size(rows, cols));
  for (int64_t i = 0; i < rows; ++i) {
    int8_t* block = packed + (i / kBlockItems) * pairs * kBlockItems * 2 + (i % kBlockItems) * 2;
    for (int64_t j = 0; j < cols; ++j)
      block[(j / 2) * kBlockItems * 2 + (j % 2)] = table[i * cols + j];
  }
}

// Top-k of rows [row_begin, row_end) of `hidden` (rows x cols uint8, zero point z) among items
// [item_begin, item_end) (item_begin a multiple of 16; the whole table: 0, table_rows): for row r,
// out_scores[r * k ..] / out_ids[r * k ..] get its k best items, best first. `scale` holds
// blocks_of(table_rows) * 8 float32 products s_h * row_scale (0 past the table); `excluded`
// holds excluded_width sorted ids per row. Lists of consecutive item ranges merge into the whole
// table's list by sq_merge_top_k; `floors` (one float per row, -inf at first, shared by the calls
// of one row's ranges and accessed atomically; nullptr for a whole-table call) lets each range
// skip items that another range's full list already rules out (TopK).
void sq_score_top_k(const uint8_t* hidden, int64_t row_begin, int64_t row_end, int64_t cols,
                    uint8_t z, const int8_t* packed, const float* scale, int64_t table_rows,
                    int64_t item_begin, int64_t item_end,
                    const int64_t* excluded, int64_t excluded_width,
                    int64_t k, float* floors, float* out_scores, int64_t* out_ids) {
  const int64_t rows = row_end - row_begin;
  const std::vector<int32_t> users = pack_users(hidden, row_begin, row_end, cols, z);
  std::vector<TopK> lists;
  lists.reserve(rows);
  for (int64_t row = row_begin; row < row_end; ++row)
    lists.push_back(TopK{out_scores + row * k, out_ids + row * k, k, 0,
                         excluded + row * excluded_width, excluded_width,
                         floors == nullptr ? nullptr : floors + row});
  score_rows(users, rows, pairs_of(cols), packed, scale, table_rows, item_begin, item_end,
             [&](int64_t r, auto n) {
               TopK* block = &lists[r];
               return [block](float (*scores)[16], int64_t first, int64_t valid) {
                 offer_block<decltype(n)::value>(block, scores, first, valid);
               };
             });
  for (TopK& list : lists) list.finish();
}

// Scores of rows [row_begin, row_end) of `hidden` against every item: out[r * table_rows + i]
// (the full-score graph's scores, bit for bit; arguments as sq_score_top_k).
void sq_score_all(const uint8_t* hidden, int64_t row_begin, int64_t row_end, int64_t cols,
                  uint8_t z, const int8_t* packed, const float* scale, int64_t table_rows,
                  float* out) {
  const int64_t rows = row_end - row_begin;
  const std::vector<int32_t> users = pack_users(hidden, row_begin, row_end, cols, z);
  score_rows(users, rows, pairs_of(cols), packed, scale, table_rows, 0, table_rows,
             [&](int64_t r, auto n) {
               constexpr int kRows = decltype(n)::value;
               std::array<float*, kUsers> block{};
               for (int u = 0; u < kRows; ++u) block[u] = out + (row_begin + r + u) * table_rows;
               return [block](float (*scores)[16], int64_t first, int64_t valid) {
                 store_block<kRows>(block.data(), scores, first, valid);
               };
             });
}

// Merges `parts` lists per row (part p of row r at scores[(p * rows + r) * k ..], the lists of
// consecutive item ranges, each best first and filled with id 0 / -inf past its items) into
// out_scores / out_ids[r * k ..]: the k best of their union, equal scores by lower id. Ranges
// are in increasing id order, so among equal scores the lower part holds the lower id; only
// real entries (score > -inf) are taken, the slots past them get id 0 and -inf.
void sq_merge_top_k(const float* scores, const int64_t* ids, int64_t parts, int64_t rows,
                    int64_t k, float* out_scores, int64_t* out_ids) {
  std::vector<int64_t> head(parts);
  for (int64_t r = 0; r < rows; ++r) {
    std::fill(head.begin(), head.end(), 0);
    for (int64_t slot = 0; slot < k; ++slot) {
      int64_t best = -1;
      float best_score = -std::numeric_limits<float>::infinity();
      for (int64_t p = 0; p < parts; ++p) {
        if (head[p] == k) continue;
        const float s = scores[(p * rows + r) * k + head[p]];
        if (s > best_score) {  // strictly: a tie keeps the lower part, the lower id
          best = p;
          best_score = s;
        }
      }
      if (best < 0) {
        out_scores[r * k + slot] = -std::numeric_limits<float>::infinity();
        out_ids[r * k + slot] = 0;
        continue;
      }
      out_scores[r * k + slot] = best_score;
      out_ids[r * k + slot] = ids[(best * rows + r) * k + head[best]];
      ++head[best];
    }
  }
}

}  // extern "C"
