// bigbird-kernels: shared declarations of the CUDA kernels (plain CUDA C++, no torch includes).
//
// The .cu files implement host launchers declared here; csrc/bigbird_attn.cpp (the only file that
// includes torch) fills the parameter structs, allocates outputs and workspaces, and calls them.
//
// Work decomposition (shared by every kernel, see docs/design.md section 2 for the contract):
//
// * "row tasks" (forward, dQ): one CTA handles TWO query blocks ("slots") of one (batch, head) and
//   walks the union of their key-block lists once, so the window/global key blocks they share are
//   loaded once. A list entry that appears c times is processed once with the additive score bias
//   log2(c) (dense-attention-with-log(count)-bias identity), for each slot separately.
//   Tasks [0, gpairs * num_splits) are the global query blocks (paired), each reading the key range
//   [s * kv_split, (s + 1) * kv_split) ("split-KV"; partials merged by LSE / summed afterwards);
//   the remaining tasks are pairs of consecutive non-global query blocks.
// * "column tasks" (dK/dV): one CTA handles two key blocks and walks the union of the query blocks
//   that read them (layout.transpose() CSR lists with multiplicity, plus every global query block).
//   Global key blocks (read by every row) are split over query-block ranges of q_split blocks;
//   their partial dK/dV are summed by a small kernel in a fixed order (deterministic).
// Grid: x = task, y = head, z = batch: CTAs of one head run together, so the random key blocks of
// that head are L2 hits ("head-major"). The small merge / reduce kernels put b * H + h on x (B * H may
// exceed the 65535 limit of y and z). Every grid is computed by plan_fwd / plan_bwd below (plain C++,
// unit-tested on the host) and checked against the hardware limits before any launch.
//
// Inputs q, k, v (and dout, out in the backward) are read in place through their strides: the last
// dimension must be contiguous, the data pointer and every other stride 16-byte aligned
// (readable_in_place); the binding copies anything else. Outputs are contiguous (B, H, S, D).
//
// Padding: the schedule carries each listed block's validity bits (gathered when it is built). Rows of
// padded keys / values (and, in dK/dV, of padded queries / dout) are loaded as zeros and every padded
// contribution is removed with a select, never a multiply by 0, so NaN / Inf stored in padded
// positions cannot reach a real row.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

namespace bigbird {

constexpr int kBlock = 64;              // tokens per layout block (the only block size compiled)
constexpr int kMaxGlobalInline = 64;    // global block ids passed by value; more go through global_dev
constexpr int kDkdvSchedCap = 64;       // schedule entries per round of the dK/dV kernel
constexpr int kSchedEntryBytes = 16;    // sizeof(dev::SchedEntry): block id, multiplicities, validity bits

// Element strides of a (B, H, S, D) tensor read in place; the D stride is 1.
struct Strides {
  int64_t b, h, s;
};

// Layout arguments shared by forward and backward (all device pointers, int32, contiguous).
struct LayoutArgs {
  const int* kv_indices;     // (H, nb, W): key blocks of each non-global query block
  const int* kv_num_blocks;  // (H, nb): valid entries per row, 0 for global rows
  const int* q_offsets;      // (H, nb + 1): CSR offsets of layout.transpose() (backward only)
  const int* q_indices;      // (H, nnz): non-global query blocks reading each key block, ascending
  int nnz;                   // row stride of q_indices
  int num_global;            // G
  const int* global_dev;     // (G,) ascending, used when G > kMaxGlobalInline (else null)
  int global_inline[kMaxGlobalInline];  // ascending global block ids (first min(G, 64))
};

struct FwdParams {
  const void* q;  // (B, H, S, D) with strides sq, fp16 or bf16
  const void* k;
  const void* v;
  Strides sq, sk, sv;
  void* out;      // (B, H, S, D) contiguous
  float* lse;     // (B, H, S) natural-log LSE, -inf for padded queries / rows without a valid key
  const unsigned long long* block_bits;  // (B, nb): bit t of word [b, j] = token j*64+t is real; null = no padding
  float* ws_o;    // (B, H, G, num_splits, 64, D) normalised partial outputs of the global rows (num_splits > 1)
  float* ws_lse;  // (B, H, G, num_splits, 64)
  LayoutArgs lay;
  int B, H, S, D, nb, W;
  int kv_split;    // key blocks per split task of the global rows
  int num_splits;  // ceil(nb / kv_split)
  int sched_cap;   // schedule entries per CTA: >= max(2 * W, kv_split)
  float scale;       // multiplies q.k
  float scale_log2;  // scale * log2(e)
  int is_bf16;
};

struct BwdParams {
  const void* q;     // (B, H, S, D) with strides sq
  const void* k;
  const void* v;
  const void* out;   // forward output
  const void* dout;  // gradient of out
  Strides sq, sk, sv, so, sdo;
  const float* lse;   // (B, H, S) forward LSE
  const float* dlse;  // (B, H, S) gradient of lse, or null
  void* dq;  // (B, H, S, D) contiguous
  void* dk;
  void* dv;
  float* delta;  // (B, H, S) workspace: rowsum(dout * out) - dlse
  float* lse2;   // (B, H, S) workspace: lse * log2(e), +inf where lse == -inf (so that P == 0 there)
  float* ws_dq;  // (B, H, G, num_kv_splits, 64, D) partial dQ of the global query rows (num_kv_splits > 1)
  float* ws_dk;  // (B, H, G, num_q_splits, 64, D) partial dK of the global key blocks (num_q_splits > 1)
  float* ws_dv;
  const unsigned long long* block_bits;  // as in FwdParams
  LayoutArgs lay;
  int B, H, S, D, nb, W;
  int kv_split, num_kv_splits;  // dQ of global query rows: key blocks per split
  int q_split, num_q_splits;    // dK/dV of global key blocks: query blocks per split
  int sched_cap;                // dQ kernel schedule entries: >= max(2 * W, kv_split)
  float scale, scale_log2;
  int is_bf16;
};

// ---- host launchers (return the first CUDA error; they never synchronise) -------------------------

// Packs a (B, S) uint8/bool mask into (B, S/64) 64-bit words (bit t of word j = token j*64+t).
cudaError_t bigbird_pack_mask(const uint8_t* mask, unsigned long long* bits, int B, int S, cudaStream_t stream);

// Forward on the portable path (mma.sync, cp.async; sm_80 and later), including the split merge.
cudaError_t bigbird_fwd_sm80(const FwdParams& p, cudaStream_t stream);
// Merges the split partials of the global query rows into out / lse (used by both forward paths).
cudaError_t bigbird_fwd_merge(const FwdParams& p, cudaStream_t stream);

// Forward on the Hopper path (TMA + mbarrier ring + wgmma, warp-specialised). Only valid when
// bigbird_fwd_sm90_supported(device) returns 1 (this build holds sm_90a code and the device is sm_90).
cudaError_t bigbird_fwd_sm90(const FwdParams& p, cudaStream_t stream);
int bigbird_fwd_sm90_supported(int device);

// Backward (preprocess, dQ, dK/dV and the split reductions); deterministic by construction.
cudaError_t bigbird_bwd_sm80(const BwdParams& p, cudaStream_t stream);

// ---- sizes shared by host and device --------------------------------------------------------------

inline int ceil_div_int(int a, int b) { return (a + b - 1) / b; }
// CTAs per (batch, head) of a row-task kernel (forward, dQ) or a column-task kernel (dK/dV).
inline int num_row_tasks(int nb, int G, int num_splits) {
  return ((G + 1) / 2) * (G > 0 ? num_splits : 0) + (nb - G + 1) / 2;
}

// Threads and pipeline stages of each kernel.
constexpr int kFwdSm80Threads = 256;
constexpr int kFwdSm90Threads = 288;  // two consumer warpgroups + one producer warp
constexpr int kBwdThreads = 256;
constexpr int kAuxThreads = 256;      // mask packing, split merge / reductions, backward preprocess
constexpr int fwd_sm80_stages(int D) { return D == 64 ? 3 : 2; }
constexpr int kFwdSm90Stages = 4;
constexpr int kBwdStages = 2;

// Bytes of the global-block list and the schedule in shared memory (the list padded to an even count so
// that the 8-byte aligned schedule follows it).
constexpr size_t lists_smem_bytes(int G, int cap) {
  return 16 + 4 * static_cast<size_t>((G + 1) & ~1) + static_cast<size_t>(kSchedEntryBytes) * cap;
}
// Dynamic shared memory of each main kernel (the launchers request exactly this).
constexpr size_t fwd_sm80_smem_bytes(int D, int G, int cap) {  // 128 B alignment slack, Q[2], stages x {K, V}
  return 128 + static_cast<size_t>(2 + 2 * fwd_sm80_stages(D)) * 64 * D * 2 + lists_smem_bytes(G, cap);
}
constexpr size_t fwd_sm90_smem_bytes(int D, int G, int cap) {  // 1 KB alignment slack, Q[2], stages x {K, V}, barriers
  return 1024 + static_cast<size_t>(2 + 2 * kFwdSm90Stages) * 64 * D * 2 + 8 * (2 * kFwdSm90Stages + 1) +
         lists_smem_bytes(G, cap);
}
constexpr size_t bwd_dq_smem_bytes(int D, int G, int cap) {  // Q[2], dO[2], stages x {K, V}
  return 128 + static_cast<size_t>(4 + 2 * kBwdStages) * 64 * D * 2 + lists_smem_bytes(G, cap);
}
constexpr size_t bwd_dkdv_smem_bytes(int D, int G) {  // K[2], V[2], stages x {Q, dO}, stages x {lse2, delta}
  return 128 + static_cast<size_t>(4 + 2 * kBwdStages) * 64 * D * 2 + static_cast<size_t>(kBwdStages) * 2 * 64 * 4 +
         lists_smem_bytes(G, kDkdvSchedCap);
}

// Shape fields of the params (everything but pointers and layout): kv_split / q_split are the key
// blocks per split of a global query row and the query blocks per split of a global key block.
inline void set_fwd_shape(FwdParams& p, int B, int H, int S, int D, int W, int kv_split) {
  p.B = B;
  p.H = H;
  p.S = S;
  p.D = D;
  p.nb = S / kBlock;
  p.W = W;
  p.kv_split = kv_split;
  p.num_splits = ceil_div_int(p.nb, kv_split);
  p.sched_cap = 2 * W > kv_split ? 2 * W : kv_split;
}
inline void set_bwd_shape(BwdParams& p, int B, int H, int S, int D, int W, int kv_split, int q_split) {
  p.B = B;
  p.H = H;
  p.S = S;
  p.D = D;
  p.nb = S / kBlock;
  p.W = W;
  p.kv_split = kv_split;
  p.num_kv_splits = ceil_div_int(p.nb, kv_split);
  p.q_split = q_split;
  p.num_q_splits = ceil_div_int(p.nb, q_split);
  p.sched_cap = 2 * W > kv_split ? 2 * W : kv_split;
}

// A launch grid computed in 64 bits, so that an oversized dimension is caught instead of wrapping.
struct Grid {
  uint64_t x, y, z;
  // CUDA's limits: x <= 2^31 - 1, y and z <= 65535, none empty.
  bool ok() const { return x >= 1 && x <= 0x7fffffffull && y >= 1 && y <= 65535 && z >= 1 && z <= 65535; }
  dim3 dim() const { return dim3(static_cast<unsigned>(x), static_cast<unsigned>(y), static_cast<unsigned>(z)); }
};

// Every launch of a forward (main kernel, then the split merge when needed).
struct FwdPlan {
  Grid main;
  int main_threads;
  size_t main_smem;
  bool merge_needed;
  Grid merge;  // x = b * H + h, y = global query block
};
inline FwdPlan plan_fwd(const FwdParams& p, bool sm90) {
  const int G = p.lay.num_global;
  FwdPlan f;
  f.main = Grid{static_cast<uint64_t>(num_row_tasks(p.nb, G, p.num_splits)), static_cast<uint64_t>(p.H),
                static_cast<uint64_t>(p.B)};
  f.main_threads = sm90 ? kFwdSm90Threads : kFwdSm80Threads;
  f.main_smem = sm90 ? fwd_sm90_smem_bytes(p.D, G, p.sched_cap) : fwd_sm80_smem_bytes(p.D, G, p.sched_cap);
  f.merge_needed = G > 0 && p.num_splits > 1;
  f.merge = Grid{static_cast<uint64_t>(p.B) * p.H, static_cast<uint64_t>(G > 0 ? G : 1), 1};
  return f;
}

// Every launch of a backward: preprocess, dQ, dK/dV, then the split reductions when needed.
struct BwdPlan {
  Grid preprocess, dq, dkdv;
  size_t dq_smem, dkdv_smem;
  bool reduce_dq_needed, reduce_dkdv_needed;
  Grid reduce;  // x = b * H + h, y = global block
};
inline int bwd_preprocess_rows_per_cta(int D) { return kAuxThreads / (D / 8); }
inline BwdPlan plan_bwd(const BwdParams& p) {
  const int G = p.lay.num_global;
  const uint64_t rows = static_cast<uint64_t>(p.B) * p.H * p.S;
  const uint64_t rpc = static_cast<uint64_t>(bwd_preprocess_rows_per_cta(p.D));
  BwdPlan f;
  f.preprocess = Grid{(rows + rpc - 1) / rpc, 1, 1};
  f.dq = Grid{static_cast<uint64_t>(num_row_tasks(p.nb, G, p.num_kv_splits)), static_cast<uint64_t>(p.H),
              static_cast<uint64_t>(p.B)};
  f.dkdv = Grid{static_cast<uint64_t>(num_row_tasks(p.nb, G, p.num_q_splits)), static_cast<uint64_t>(p.H),
                static_cast<uint64_t>(p.B)};
  f.dq_smem = bwd_dq_smem_bytes(p.D, G, p.sched_cap);
  f.dkdv_smem = bwd_dkdv_smem_bytes(p.D, G);
  f.reduce_dq_needed = G > 0 && p.num_kv_splits > 1;
  f.reduce_dkdv_needed = G > 0 && p.num_q_splits > 1;
  f.reduce = Grid{static_cast<uint64_t>(p.B) * p.H, static_cast<uint64_t>(G > 0 ? G : 1), 1};
  return f;
}
// The mask packer: one warp per 64-token block, 8 warps per CTA.
inline Grid grid_pack_mask(int B, int S) {
  const uint64_t blocks = static_cast<uint64_t>(B) * (S / kBlock);
  return Grid{(blocks + 7) / 8, 1, 1};
}

// ---- inputs read in place -------------------------------------------------------------------------

// Whether the kernels can read a (B, H, S, D) tensor of elem_bytes-byte elements in place: last
// dimension contiguous, data pointer 16-byte aligned, and the stride of every other dimension longer
// than 1 a positive multiple of 16 bytes (cp.async copies 16 bytes; TMA needs 16-byte aligned
// addresses and strides). A contiguous tensor at a storage offset that is not a multiple of 16 bytes
// fails this (`.contiguous()` does not fix it): the binding copies such inputs.
inline bool readable_in_place(uint64_t data_ptr, const int64_t (&sizes)[4], const int64_t (&strides)[4], int elem_bytes) {
  if (data_ptr % 16 != 0 || (sizes[3] > 1 && strides[3] != 1) || (sizes[3] * elem_bytes) % 16 != 0) return false;
  for (int d = 0; d < 3; ++d) {
    if (sizes[d] > 1 && (strides[d] <= 0 || (strides[d] * elem_bytes) % 16 != 0)) return false;
  }
  return true;
}
// The (b, h, s) strides the kernels use. A dimension of size 1 may carry any stride in torch; it is
// replaced by the extent of the dimensions inside it, which is aligned like them (TMA checks every
// stride, used or not).
inline Strides kernel_strides(const int64_t (&sizes)[4], const int64_t (&strides)[4]) {
  int64_t st[3];
  int64_t inner = sizes[3];  // extent in elements of dims d+1..3, the D stride being 1
  for (int d = 2; d >= 0; --d) {
    st[d] = sizes[d] > 1 ? strides[d] : inner;
    const int64_t ext = st[d] * sizes[d];
    inner = ext > inner ? ext : inner;
  }
  return Strides{st[0], st[1], st[2]};
}

}  // namespace bigbird

// ====================================================================================================
// Device helpers shared by the .cu files
// ====================================================================================================
#if defined(__CUDACC__)

namespace bigbird {
namespace dev {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

struct SchedEntry {
  int id;  // block id (key block for row tasks, query block for column tasks)
  int w;   // multiplicity for slot 0 in the low 16 bits, for slot 1 in the high 16 bits
  unsigned long long bits;  // validity of the block's 64 tokens (bit t = token id*64+t is real); ~0 without a mask
};
static_assert(sizeof(SchedEntry) == kSchedEntryBytes, "host-side shared-memory sizes assume 16-byte entries");

__device__ __forceinline__ uint32_t smem_u32(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

__device__ __forceinline__ int global_at(const LayoutArgs& lay, int i) {
  return lay.global_dev ? lay.global_dev[i] : lay.global_inline[i];
}

// ---- conversions ------------------------------------------------------------------------------------
template <bool kBF16>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  uint32_t r;
  if constexpr (kBF16) {
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  } else {
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  }
  return r;
}

template <bool kBF16>
__device__ __forceinline__ float to_float(uint16_t x) {
  if constexpr (kBF16) {
    return __uint_as_float(static_cast<uint32_t>(x) << 16);
  } else {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x));
    return f;
  }
}

// ---- cp.async -------------------------------------------------------------------------------------------
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
}
// Copies 16 bytes, or writes 16 zero bytes without reading global memory when `keep` is false.
__device__ __forceinline__ void cp_async16_zfill(uint32_t dst, const void* src, bool keep) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(keep ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// ---- ldmatrix / mma.sync ----------------------------------------------------------------------------
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// d += a (16x16, row) * b (16x8, col), fp32 accumulators
template <bool kBF16>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (kBF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// ---- swizzled 64 x D tiles in shared memory -----------------------------------------------------
// Element (row, col) of a [64][D] 16-bit tile lives at row * D + (((col / 8) ^ (row % 8)) * 8) + col % 8:
// 16-byte chunks are XOR-swizzled with the row, so that the 8 rows read by one ldmatrix 8x8 matrix
// (and the 8 chunks of one 128-byte row written by cp.async) fall in distinct bank groups.
template <int D>
__device__ __forceinline__ int swz(int row, int chunk) {
  return row * D + ((chunk ^ (row & 7)) << 3);
}

// All kThreads threads of the CTA copy a 64 x D tile from global memory (16 B per cp.async): row r starts
// at g + r * ld (elements). Rows whose bit in `rows` is 0 are written as zeros instead (padded tokens:
// whatever they hold, NaN included, never enters a tensor-core product).
template <int D, int kThreads>
__device__ __forceinline__ void load_tile_async(uint16_t* s, const uint16_t* g, int64_t ld, int tid,
                                                unsigned long long rows = ~0ull) {
  constexpr int kChunks = D / 8;
  constexpr int kTotal = 64 * kChunks;
  static_assert(kTotal % kThreads == 0, "tile chunks must divide evenly among threads");
#pragma unroll
  for (int i = 0; i < kTotal / kThreads; ++i) {
    const int c = tid + i * kThreads;
    const int row = c / kChunks, ch = c % kChunks;
    cp_async16_zfill(smem_u32(s + swz<D>(row, ch)), g + row * ld + ch * 8, (rows >> row) & 1ull);
  }
}

// ldmatrix addressing. A tile starts at a 1024-byte aligned shared address and its rows are RB = 2 * D
// bytes (a multiple of 128), so the swizzle only touches address bits 4..6: the address of chunk c of
// row r is (tile + r * RB + ((r % 8) << 4)) ^ ((c % 8) << 4), plus (c / 8) * 128. Each thread keeps one
// base per operand kind (row part + its own lane chunk), and the k / n position of a fragment is a
// compile-time XOR and add on it (no per-fragment address registers).
//
// Per-lane byte offsets inside a tile (lane -> row within the 16-row group, chunk 0/1 of the 16x16):
//   kFragA: A operands (16 x 16 at rows m0.., cols k0..) and trans-B operands (rows k0.., cols n0..)
//   kFragB: non-trans B operands of two n8 tiles (rows n0..n0+15, cols k0..k0+15)
template <int D>
__device__ __forceinline__ uint32_t frag_off_a(int lane) {
  const int r7 = lane & 7;
  return static_cast<uint32_t>((r7 + ((lane >> 3) & 1) * 8) * (2 * D) + ((((lane >> 4) & 1) ^ r7) << 4));
}
template <int D>
__device__ __forceinline__ uint32_t frag_off_b(int lane) {
  const int r7 = lane & 7;
  return static_cast<uint32_t>((r7 + ((lane >> 4) & 1) * 8) * (2 * D) + ((((lane >> 3) & 1) ^ r7) << 4));
}
// base = tile address + row0 * RB + frag_off_*(lane) (row0 a multiple of 8); chunk0 = col0 / 8 (even,
// compile-time after unrolling).
__device__ __forceinline__ uint32_t frag_addr(uint32_t base, int chunk0) {
  return (base ^ static_cast<uint32_t>((chunk0 & 7) << 4)) + static_cast<uint32_t>((chunk0 & ~7) << 4);
}
// Fragment loads; addr = frag_addr(base, chunk0) + (extra rows) * RB. Adding whole rows after the XOR is
// exact because rows are multiples of 128 bytes (bits 4..6 untouched).
// A operand (16 x 16) as mma expects (base from frag_off_a).
__device__ __forceinline__ void ldsm_a(uint32_t (&a)[4], uint32_t addr) { ldsm_x4(a, addr); }
// B operands of two n8 tiles from a tile stored [n][k] (e.g. K for Q K^T; base from frag_off_b):
// b[0], b[1]: n-tile n0; b[2], b[3]: n-tile n0 + 8.
__device__ __forceinline__ void ldsm_b_nk(uint32_t (&b)[4], uint32_t addr) { ldsm_x4(b, addr); }
// B operands of two n8 tiles from a tile stored [k][n] (e.g. V for P V; base from frag_off_a), transposed
// by ldmatrix: b[0], b[1]: n-tile n0; b[2], b[3]: n-tile n0 + 8.
__device__ __forceinline__ void ldsm_b_kn(uint32_t (&b)[4], uint32_t addr) { ldsm_x4_t(b, addr); }

// Rounds the dynamic shared memory base up to 128 bytes (launchers allocate 128 extra bytes).
__device__ __forceinline__ unsigned char* align_smem_128(unsigned char* p) {
  const uint32_t a = smem_u32(p);
  return p + ((128u - (a & 127u)) & 127u);
}

// Stores a warp's 16 x D fp32 accumulator block (mma C layout, scaled by rs[r] per row half) into
// rows row0..row0+15 of a swizzled tile as 16-bit values, then copies those rows to global memory
// with 16-byte coalesced stores. Only the calling warp touches those tile rows.
template <bool kBF16, int D>
__device__ __forceinline__ void store_rows_via_smem(uint16_t* tile, int row0, const float (&acc)[D / 8][4],
                                                    const float (&rs)[2], uint16_t* gdst_tile, int lane) {
  __syncwarp();
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = row0 + (lane >> 2) + 8 * r;
      const int col = dt * 8 + 2 * (lane & 3);
      *reinterpret_cast<uint32_t*>(tile + swz<D>(row, col >> 3) + (col & 7)) =
          pack2<kBF16>(acc[dt][2 * r] * rs[r], acc[dt][2 * r + 1] * rs[r]);
    }
  }
  __syncwarp();
  constexpr int kChunks = D / 8;
#pragma unroll
  for (int i = 0; i < 16 * kChunks / 32; ++i) {
    const int c = lane + 32 * i;
    const int row = row0 + c / kChunks, ch = c % kChunks;
    const uint4 val = *reinterpret_cast<const uint4*>(tile + swz<D>(row, ch));
    *reinterpret_cast<uint4*>(gdst_tile + row * D + ch * 8) = val;
  }
}

// Writes a warp's 16 x D fp32 accumulators (scaled by rs[r]) to an fp32 [64][D] partial buffer.
template <int D>
__device__ __forceinline__ void store_rows_f32(float* dst_tile, int row0, const float (&acc)[D / 8][4],
                                               const float (&rs)[2], int lane) {
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = row0 + (lane >> 2) + 8 * r;
      const int col = dt * 8 + 2 * (lane & 3);
      *reinterpret_cast<float2*>(dst_tile + row * D + col) =
          make_float2(acc[dt][2 * r] * rs[r], acc[dt][2 * r + 1] * rs[r]);
    }
  }
}

// ---- list searches ----------------------------------------------------------------------------------
__device__ __forceinline__ int lower_bound_i(const int* x, int n, int v) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (x[mid] < v) lo = mid + 1; else hi = mid;
  }
  return lo;
}
__device__ __forceinline__ int upper_bound_i(const int* x, int n, int v) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (x[mid] <= v) lo = mid + 1; else hi = mid;
  }
  return lo;
}
__device__ __forceinline__ int count_eq(const int* x, int n, int v) {
  int c = 0;
  for (int j = 0; j < n; ++j) c += (x[j] == v);
  return c;
}
__device__ __forceinline__ bool found_before(const int* x, int n, int v) {
  for (int j = 0; j < n; ++j)
    if (x[j] == v) return true;
  return false;
}

// ---- the two-slot schedule ----------------------------------------------------------------------
// The blocks a CTA walks: phase 0 = n0 entries read by both slots once (ids p0[i], or base0 + i when
// p0 is null), then the list of slot 0 (a, na) and the list of slot 1 (b, nbl), deduplicated into
// (id, multiplicity per slot) entries. kSorted: a and b are ascending (CSR lists; binary searches),
// otherwise they are short unsorted rows (linear scans).
struct ListSpec {
  const int* p0;
  int base0, n0;
  const int* a;
  int na;
  const int* b;
  int nbl;
  int has_b;
};

// One warp fills out[0..count) from the virtual list [phase 0 | a | b] starting at `cursor`, taking
// 32 elements at a time while the next chunk is sure to fit in `cap`. Returns count, advances cursor.
// row_bits: this batch row's (nb,) validity words, or null without a mask; each entry gets its block's
// word here, once, instead of a global load in the pipelined loop. Warp-uniform: call with all 32 lanes.
template <bool kSorted>
__device__ __forceinline__ int build_schedule(const ListSpec& L, int& cursor, SchedEntry* out, int cap, int lane,
                                              const unsigned long long* row_bits) {
  const int total = L.n0 + L.na + L.nbl;
  int count = 0;
  while (cursor < total && count + min(32, total - cursor) <= cap) {
    const int e = cursor + lane;
    bool emit = false;
    int id = 0, wa = 0, wb = 0;
    if (e < total) {
      if (e < L.n0) {
        id = L.p0 ? L.p0[e] : L.base0 + e;
        emit = true;
        wa = 1;
        wb = L.has_b;
      } else if (e < L.n0 + L.na) {
        const int i = e - L.n0;
        id = L.a[i];
        if constexpr (kSorted) {
          emit = (i == 0) || (L.a[i - 1] != id);
          if (emit) {
            wa = upper_bound_i(L.a, L.na, id) - i;
            wb = L.nbl ? upper_bound_i(L.b, L.nbl, id) - lower_bound_i(L.b, L.nbl, id) : 0;
          }
        } else {
          emit = !found_before(L.a, i, id);
          if (emit) {
            wa = count_eq(L.a, L.na, id);
            wb = count_eq(L.b, L.nbl, id);
          }
        }
      } else {
        const int i = e - L.n0 - L.na;
        id = L.b[i];
        if constexpr (kSorted) {
          emit = ((i == 0) || (L.b[i - 1] != id)) &&
                 (L.na == 0 || upper_bound_i(L.a, L.na, id) == lower_bound_i(L.a, L.na, id));
          if (emit) wb = upper_bound_i(L.b, L.nbl, id) - i;
        } else {
          emit = !found_before(L.b, i, id) && !found_before(L.a, L.na, id);
          if (emit) wb = count_eq(L.b, L.nbl, id);
        }
      }
    }
    const unsigned m = __ballot_sync(0xffffffffu, emit);
    if (emit) {
      const int pos = count + __popc(m & ((1u << lane) - 1u));
      out[pos].id = id;
      out[pos].w = min(wa, 0xffff) | (min(wb, 0xffff) << 16);
      out[pos].bits = row_bits ? row_bits[id] : ~0ull;
    }
    count += __popc(m);
    cursor = min(cursor + 32, total);
  }
  return count;
}

// k-th non-global block (sorted globals in smem)
__device__ __forceinline__ int nonglobal_block(const int* glob, int G, int k) {
  int n = k;
  for (int i = 0; i < G; ++i) {
    if (glob[i] <= n) ++n; else break;
  }
  return n;
}

struct Task {
  int slot[2];   // block of each slot (query blocks for row tasks, key blocks for column tasks), -1 = none
  int gidx[2];   // index into the global list (split tasks only)
  int split;     // split index, -1 for pair tasks
  ListSpec L;
};

// Row task `t` of head h (forward, dQ). glob: the sorted global blocks (shared memory).
__device__ __forceinline__ Task decode_row_task(const LayoutArgs& lay, const int* glob, int nb, int W, int h, int t,
                                                int kv_split, int num_splits) {
  Task task;
  const int G = lay.num_global;
  const int gtasks = ((G + 1) >> 1) * (G > 0 ? num_splits : 0);
  if (t < gtasks) {
    const int gp = t / num_splits, s = t % num_splits;
    task.gidx[0] = 2 * gp;
    task.gidx[1] = 2 * gp + 1;
    task.slot[0] = glob[2 * gp];
    task.slot[1] = (2 * gp + 1 < G) ? glob[2 * gp + 1] : -1;
    task.split = s;
    const int k0 = s * kv_split, k1 = min(nb, k0 + kv_split);
    task.L = ListSpec{nullptr, k0, k1 - k0, nullptr, 0, nullptr, 0, task.slot[1] >= 0 ? 1 : 0};
  } else {
    const int k = t - gtasks;
    const int NG = nb - G;
    task.gidx[0] = task.gidx[1] = -1;
    task.split = -1;
    task.slot[0] = nonglobal_block(glob, G, 2 * k);
    task.slot[1] = (2 * k + 1 < NG) ? nonglobal_block(glob, G, 2 * k + 1) : -1;
    const int* rowa = lay.kv_indices + (static_cast<size_t>(h) * nb + task.slot[0]) * W;
    const int na = lay.kv_num_blocks[h * nb + task.slot[0]];
    const int* rowb = rowa;
    int nbl = 0;
    if (task.slot[1] >= 0) {
      rowb = lay.kv_indices + (static_cast<size_t>(h) * nb + task.slot[1]) * W;
      nbl = lay.kv_num_blocks[h * nb + task.slot[1]];
    }
    task.L = ListSpec{nullptr, 0, 0, rowa, na, rowb, nbl, task.slot[1] >= 0 ? 1 : 0};
  }
  return task;
}

// Column task `t` of head h (dK/dV): slots are key blocks, schedule entries query blocks.
__device__ __forceinline__ Task decode_col_task(const LayoutArgs& lay, const int* glob, int nb, int h, int t,
                                                int q_split, int num_q_splits) {
  Task task;
  const int G = lay.num_global;
  const int gtasks = ((G + 1) >> 1) * (G > 0 ? num_q_splits : 0);
  const int* offs = lay.q_offsets + static_cast<size_t>(h) * (nb + 1);
  const int* qidx = lay.q_indices + static_cast<size_t>(h) * lay.nnz;
  if (t < gtasks) {
    const int gp = t / num_q_splits, s = t % num_q_splits;
    task.gidx[0] = 2 * gp;
    task.gidx[1] = 2 * gp + 1;
    task.slot[0] = glob[2 * gp];
    task.slot[1] = (2 * gp + 1 < G) ? glob[2 * gp + 1] : -1;
    task.split = s;
    const int q0 = s * q_split, q1 = min(nb, q0 + q_split);
    const int g0 = lower_bound_i(glob, G, q0), g1 = lower_bound_i(glob, G, q1);
    const int* sa = qidx + offs[task.slot[0]];
    const int la = offs[task.slot[0] + 1] - offs[task.slot[0]];
    const int a0 = lower_bound_i(sa, la, q0), a1 = lower_bound_i(sa, la, q1);
    const int* sb = sa;
    int b0 = 0, b1 = 0;
    if (task.slot[1] >= 0) {
      sb = qidx + offs[task.slot[1]];
      const int lb = offs[task.slot[1] + 1] - offs[task.slot[1]];
      b0 = lower_bound_i(sb, lb, q0);
      b1 = lower_bound_i(sb, lb, q1);
    }
    task.L = ListSpec{glob + g0, 0, g1 - g0, sa + a0, a1 - a0, sb + b0, b1 - b0, task.slot[1] >= 0 ? 1 : 0};
  } else {
    const int k = t - gtasks;
    const int NG = nb - G;
    task.gidx[0] = task.gidx[1] = -1;
    task.split = -1;
    task.slot[0] = nonglobal_block(glob, G, 2 * k);
    task.slot[1] = (2 * k + 1 < NG) ? nonglobal_block(glob, G, 2 * k + 1) : -1;
    const int* sa = qidx + offs[task.slot[0]];
    const int la = offs[task.slot[0] + 1] - offs[task.slot[0]];
    const int* sb = sa;
    int lb = 0;
    if (task.slot[1] >= 0) {
      sb = qidx + offs[task.slot[1]];
      lb = offs[task.slot[1] + 1] - offs[task.slot[1]];
    }
    task.L = ListSpec{glob, 0, G, sa, la, sb, lb, task.slot[1] >= 0 ? 1 : 0};
  }
  return task;
}

}  // namespace dev
}  // namespace bigbird

#endif  // __CUDACC__
