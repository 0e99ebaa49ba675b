// bigbird-kernels: backward on the portable path (sm_80 and later; also the backward used on Hopper).
//
// Deterministic by construction: no atomics anywhere, every sum in a fixed order.
//   1. preprocess: delta = rowsum(dO * O) - dlse, lse2 = lse * log2(e) (+inf where lse = -inf so that
//      P = exp2(s - lse2) = 0 for padded query rows and rows without a valid key).
//   2. dQ kernel (row tasks, like the forward): per query block, over its key blocks:
//      S = Q K^T, P = exp2(S * scale_log2 + log2(count) - lse2), dP = dO V^T, dS = P (dP - delta),
//      dQ += dS K. The global query rows are split over key ranges; partials summed by dq_reduce.
//   3. dK/dV kernel (column tasks): per key block, over the query blocks that read it (CSR lists of
//      layout.transpose() with multiplicity, plus every global query block): dV += P^T dO,
//      dK += dS^T Q. Global key blocks are split over query ranges; partials summed by dkdv_reduce.
// Both main kernels handle two blocks per CTA (8 warps, 4 per block, 16 rows per warp) and walk the
// merged schedule of the pair once, loading the shared blocks once.
// Padding: rows of padded keys / values (dQ) and of padded queries / dout (dK/dV) are loaded as zeros,
// and P and dS of every padded pair are selected to 0, so NaN / Inf in padded positions (of any input)
// reach no real row and no gradient of a real position.
#include "bigbird_attn.h"

namespace bigbird {
namespace {

using namespace dev;

constexpr int kThreads = kBwdThreads;

template <int D>
struct BwdCfg {
  static constexpr int kTile = 64 * D;
  static constexpr int kStages = kBwdStages;
  static constexpr int kMinBlocks = 1;
};

// ---------------------------------------------------------------------------------------------------
// 1. preprocess
// ---------------------------------------------------------------------------------------------------
// D/8 threads per row, 16 bytes of dO and O each; row = (b * H + h) * S + s.
template <bool kBF16, int D>
__global__ void __launch_bounds__(kAuxThreads) bigbird_bwd_preprocess_kernel(const BwdParams p) {
  constexpr int kTpr = D / 8;  // threads per row
  constexpr int kRowsPerCta = kAuxThreads / kTpr;
  const size_t rows = static_cast<size_t>(p.B) * p.H * p.S;
  const size_t row = static_cast<size_t>(blockIdx.x) * kRowsPerCta + threadIdx.x / kTpr;
  const int part = threadIdx.x % kTpr;
  float acc = 0.f;
  if (row < rows) {
    const int64_t tok = static_cast<int64_t>(row % p.S), bh = static_cast<int64_t>(row / p.S);
    const int64_t hh = bh % p.H, bb = bh / p.H;
    const uint4 a = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(p.dout) + bb * p.sdo.b + hh * p.sdo.h +
                                                    tok * p.sdo.s + part * 8);
    const uint4 c = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(p.out) + bb * p.so.b + hh * p.so.h +
                                                    tok * p.so.s + part * 8);
    const uint32_t av[4] = {a.x, a.y, a.z, a.w};
    const uint32_t cv[4] = {c.x, c.y, c.z, c.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      acc = fmaf(to_float<kBF16>(static_cast<uint16_t>(av[i] & 0xffff)), to_float<kBF16>(static_cast<uint16_t>(cv[i] & 0xffff)), acc);
      acc = fmaf(to_float<kBF16>(static_cast<uint16_t>(av[i] >> 16)), to_float<kBF16>(static_cast<uint16_t>(cv[i] >> 16)), acc);
    }
  }
#pragma unroll
  for (int off = kTpr / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (row < rows && part == 0) {
    // rows without weight (padded queries, rows without a valid key): delta 0 (a select: their dout may
    // hold NaN) and lse2 = +inf, so that P = 0 there
    const float lse = p.lse[row];
    const bool live = lse != -INFINITY;
    p.delta[row] = live ? acc - (p.dlse ? p.dlse[row] : 0.f) : 0.f;
    p.lse2[row] = live ? lse * kLog2e : INFINITY;
  }
}

// ---------------------------------------------------------------------------------------------------
// 2. dQ
// ---------------------------------------------------------------------------------------------------
template <bool kBF16, int D>
__global__ void __launch_bounds__(kThreads, BwdCfg<D>::kMinBlocks) bigbird_bwd_dq_kernel(const BwdParams p) {
  using C = BwdCfg<D>;
  constexpr int kStages = C::kStages;
  constexpr int kTile = C::kTile;
  constexpr int NT = D / 8;
  constexpr int KS = D / 16;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  uint16_t* sQ = reinterpret_cast<uint16_t*>(align_smem_128(smem_raw));  // [2] Q tiles, then [2] dO tiles
  uint16_t* sdO = sQ + 2 * kTile;
  uint16_t* sKV = sdO + 2 * kTile;
  int* sMeta = reinterpret_cast<int*>(sKV + 2 * kStages * kTile);
  int* sGlob = sMeta + 4;
  const int G = p.lay.num_global;
  SchedEntry* sSched = reinterpret_cast<SchedEntry*>(sGlob + ((G + 1) & ~1));

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int h = blockIdx.y, b = blockIdx.z;
  const int nb = p.nb;
  const unsigned long long* row_bits = p.block_bits ? p.block_bits + static_cast<size_t>(b) * nb : nullptr;

  for (int i = tid; i < G; i += kThreads) sGlob[i] = global_at(p.lay, i);
  __syncthreads();
  const Task task = decode_row_task(p.lay, sGlob, nb, p.W, h, blockIdx.x, p.kv_split, p.num_kv_splits);
  const size_t bh = static_cast<size_t>(b) * p.H + h;
  const size_t off = bh * p.S * D;  // of the contiguous dq
  const int64_t ldq = p.sq.s, lddo = p.sdo.s, ldk = p.sk.s, ldv = p.sv.s;
  const uint16_t* qg = static_cast<const uint16_t*>(p.q) + b * p.sq.b + h * p.sq.h;
  const uint16_t* dog = static_cast<const uint16_t*>(p.dout) + b * p.sdo.b + h * p.sdo.h;
  const uint16_t* kg = static_cast<const uint16_t*>(p.k) + b * p.sk.b + h * p.sk.h;
  const uint16_t* vg = static_cast<const uint16_t*>(p.v) + b * p.sv.b + h * p.sv.h;

#pragma unroll
  for (int s = 0; s < 2; ++s) {
    if (task.slot[s] >= 0) {
      load_tile_async<D, kThreads>(sQ + s * kTile, qg + task.slot[s] * 64 * ldq, ldq, tid);
      load_tile_async<D, kThreads>(sdO + s * kTile, dog + task.slot[s] * 64 * lddo, lddo, tid);
    }
  }
  cp_async_commit();

  if (warp == 0) {
    int cursor = 0;
    const int n = build_schedule<false>(task.L, cursor, sSched, p.sched_cap, lane, row_bits);
    if (lane == 0) {
      sMeta[0] = n;
      sMeta[1] = task.slot[0];  // re-read by the epilogue
      sMeta[2] = task.slot[1];
      sMeta[3] = task.split;
    }
  }
  __syncthreads();
  const int n = sMeta[0];

  auto load_step = [&](int t) {
    const int id = sSched[t].id;
    const unsigned long long bits = sSched[t].bits;
    uint16_t* sK = sKV + (t % kStages) * 2 * kTile;
    load_tile_async<D, kThreads>(sK, kg + id * 64 * ldk, ldk, tid, bits);
    load_tile_async<D, kThreads>(sK + kTile, vg + id * 64 * ldv, ldv, tid, bits);
  };
#pragma unroll
  for (int t = 0; t < kStages - 1; ++t) {
    if (t < n) load_step(t);
    cp_async_commit();
  }

  const int slot = warp >> 2;
  const int wrow = (warp & 3) * 16;
  const int qblk = (slot ? task.slot[1] : task.slot[0]);
  constexpr uint32_t RB = 2 * D;
  const uint32_t off_a = frag_off_a<D>(lane), off_b = frag_off_b<D>(lane);
  const uint32_t q_base = smem_u32(sQ + slot * kTile) + wrow * RB + off_a;
  const uint32_t do_base = smem_u32(sdO + slot * kTile) + wrow * RB + off_a;
  float lse2[2] = {INFINITY, INFINITY}, dlt[2] = {0.f, 0.f};
  bool row_live[2] = {false, false};
  if (qblk >= 0) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const size_t row = bh * p.S + static_cast<size_t>(qblk) * 64 + wrow + (lane >> 2) + 8 * r;
      lse2[r] = p.lse2[row];
      dlt[r] = p.delta[row];
      row_live[r] = lse2[r] != INFINITY;
    }
  }

  float dq[NT][4];
#pragma unroll
  for (int i = 0; i < NT; ++i) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.f;
  const float scale_log2 = p.scale_log2;

  for (int t = 0; t < n; ++t) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    if (t + kStages - 1 < n) load_step(t + kStages - 1);
    cp_async_commit();

    const int st = t % kStages;
    const SchedEntry e = sSched[t];
    const int w = slot ? (e.w >> 16) : (e.w & 0xffff);
    const unsigned long long bits = e.bits;
    if (w == 0 || bits == 0ull) continue;
    const float bias = (w == 1) ? 0.f : __log2f(static_cast<float>(w));
    const uint32_t k_base_b = smem_u32(sKV + st * 2 * kTile) + off_b;   // K as [n][k] B operand
    const uint32_t k_base_t = smem_u32(sKV + st * 2 * kTile) + off_a;   // K as [k][n] B operand
    const uint32_t v_base_b = smem_u32(sKV + st * 2 * kTile + kTile) + off_b;
    const unsigned long long tb = bits >> (2 * (lane & 3));  // see the forward kernel
    const uint32_t tb_lo = static_cast<uint32_t>(tb), tb_hi = static_cast<uint32_t>(tb >> 32);

#pragma unroll
    for (int hk = 0; hk < 2; ++hk) {  // 32 keys at a time
      float s[4][4], dp[4][4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
        dp[i][0] = dp[i][1] = dp[i][2] = dp[i][3] = 0.f;
      }
#pragma unroll
      for (int kk = 0; kk < KS; ++kk) {
        uint32_t a[4], ad[4];
        ldsm_a(a, frag_addr(q_base, 2 * kk));
        ldsm_a(ad, frag_addr(do_base, 2 * kk));
#pragma unroll
        for (int np = 0; np < 2; ++np) {
          uint32_t bb[4];
          ldsm_b_nk(bb, frag_addr(k_base_b, 2 * kk) + (hk * 32 + np * 16) * RB);
          mma16816<kBF16>(s[2 * np], a, bb[0], bb[1]);
          mma16816<kBF16>(s[2 * np + 1], a, bb[2], bb[3]);
          ldsm_b_nk(bb, frag_addr(v_base_b, 2 * kk) + (hk * 32 + np * 16) * RB);
          mma16816<kBF16>(dp[2 * np], ad, bb[0], bb[1]);
          mma16816<kBF16>(dp[2 * np + 1], ad, bb[2], bb[3]);
        }
      }
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          // dS, selected to 0 for padded keys and padded query rows (lse2 = +inf), whatever they hold
          const bool live = row_live[j >> 1] && (((hk == 0 ? tb_lo : tb_hi) >> (nt * 8 + (j & 1))) & 1u);
          const float pv = exp2f(fmaf(s[nt][j], scale_log2, bias) - lse2[j >> 1]);
          s[nt][j] = live ? pv * (dp[nt][j] - dlt[j >> 1]) : 0.f;
        }
      }
      // dQ += dS K
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
        uint32_t a[4];
        a[0] = pack2<kBF16>(s[2 * kk][0], s[2 * kk][1]);
        a[1] = pack2<kBF16>(s[2 * kk][2], s[2 * kk][3]);
        a[2] = pack2<kBF16>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        a[3] = pack2<kBF16>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
        for (int dpi = 0; dpi < D / 16; ++dpi) {
          uint32_t bb[4];
          ldsm_b_kn(bb, frag_addr(k_base_t, 2 * dpi) + (hk * 32 + kk * 16) * RB);
          mma16816<kBF16>(dq[2 * dpi], a, bb[0], bb[1]);
          mma16816<kBF16>(dq[2 * dpi + 1], a, bb[2], bb[3]);
        }
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // all copies into the Q/dO tiles landed (they are reused to stage dQ)

  const int qblk_e = sMeta[1 + slot];
  const int split = sMeta[3];
  if (qblk_e < 0) return;
  const float rs[2] = {p.scale, p.scale};
  if (split >= 0 && p.num_kv_splits > 1) {
    const int gidx = 2 * (static_cast<int>(blockIdx.x) / p.num_kv_splits) + slot;
    const size_t base = ((bh * G + gidx) * p.num_kv_splits + split) * 64;
    store_rows_f32<D>(p.ws_dq + base * D, wrow, dq, rs, lane);
    return;
  }
  uint16_t* dst = static_cast<uint16_t*>(p.dq) + off + static_cast<size_t>(qblk_e) * kTile;
  store_rows_via_smem<kBF16, D>(sQ + slot * kTile, wrow, dq, rs, dst, lane);
}

// ---------------------------------------------------------------------------------------------------
// 3. dK / dV
// ---------------------------------------------------------------------------------------------------
template <bool kBF16, int D>
__global__ void __launch_bounds__(kThreads, BwdCfg<D>::kMinBlocks) bigbird_bwd_dkdv_kernel(const BwdParams p) {
  using C = BwdCfg<D>;
  constexpr int kStages = C::kStages;
  constexpr int kTile = C::kTile;
  constexpr int NT = D / 8;
  constexpr int KS = D / 16;
  constexpr int QC = 32;  // query columns per sub-step (bounds the transient registers)

  extern __shared__ __align__(128) unsigned char smem_raw[];
  uint16_t* sK = reinterpret_cast<uint16_t*>(align_smem_128(smem_raw));  // [2] K tiles, then [2] V tiles
  uint16_t* sV = sK + 2 * kTile;
  uint16_t* sQdO = sV + 2 * kTile;                        // stages x {Q, dO}
  float* sStat = reinterpret_cast<float*>(sQdO + 2 * kStages * kTile);  // stages x {lse2[64], delta[64]}
  int* sMeta = reinterpret_cast<int*>(sStat + kStages * 128);
  int* sGlob = sMeta + 4;
  const int G = p.lay.num_global;
  SchedEntry* sSched = reinterpret_cast<SchedEntry*>(sGlob + ((G + 1) & ~1));

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int h = blockIdx.y, b = blockIdx.z;
  const int nb = p.nb;
  const unsigned long long* row_bits = p.block_bits ? p.block_bits + static_cast<size_t>(b) * nb : nullptr;

  for (int i = tid; i < G; i += kThreads) sGlob[i] = global_at(p.lay, i);
  __syncthreads();
  const Task task = decode_col_task(p.lay, sGlob, nb, h, blockIdx.x, p.q_split, p.num_q_splits);
  const size_t bh = static_cast<size_t>(b) * p.H + h;
  const size_t off = bh * p.S * D;  // of the contiguous dk, dv
  const int64_t ldk = p.sk.s, ldv = p.sv.s;
  const uint16_t* kg = static_cast<const uint16_t*>(p.k) + b * p.sk.b + h * p.sk.h;
  const uint16_t* vg = static_cast<const uint16_t*>(p.v) + b * p.sv.b + h * p.sv.h;

#pragma unroll
  for (int s = 0; s < 2; ++s) {
    if (task.slot[s] >= 0) {
      const unsigned long long kbits = row_bits ? row_bits[task.slot[s]] : ~0ull;
      load_tile_async<D, kThreads>(sK + s * kTile, kg + task.slot[s] * 64 * ldk, ldk, tid, kbits);
      load_tile_async<D, kThreads>(sV + s * kTile, vg + task.slot[s] * 64 * ldv, ldv, tid, kbits);
    }
  }
  cp_async_commit();
  if (tid == 0) {
    sMeta[1] = task.slot[0];  // re-read by the epilogue
    sMeta[2] = task.slot[1];
    sMeta[3] = task.split;
  }

  const int slot = warp >> 2;
  const int wrow = (warp & 3) * 16;
  const int kblk = (slot ? task.slot[1] : task.slot[0]);
  constexpr uint32_t RB = 2 * D;
  const uint32_t off_a = frag_off_a<D>(lane), off_b = frag_off_b<D>(lane);
  const uint32_t k_base = smem_u32(sK + slot * kTile) + wrow * RB + off_a;
  const uint32_t v_base = smem_u32(sV + slot * kTile) + wrow * RB + off_a;
  bool key_ok[2] = {true, true};
  if (row_bits != nullptr && kblk >= 0) {
    const unsigned long long kb = row_bits[kblk];
#pragma unroll
    for (int r = 0; r < 2; ++r) key_ok[r] = (kb >> (wrow + (lane >> 2) + 8 * r)) & 1ull;
  }
  // warp-uniform: skip the steps when none of the warp's 16 keys is real
  const bool warp_has_keys = __any_sync(0xffffffffu, key_ok[0] || key_ok[1]);

  float dk[NT][4], dv[NT][4];
#pragma unroll
  for (int i = 0; i < NT; ++i) {
    dk[i][0] = dk[i][1] = dk[i][2] = dk[i][3] = 0.f;
    dv[i][0] = dv[i][1] = dv[i][2] = dv[i][3] = 0.f;
  }
  const float scale_log2 = p.scale_log2;

  auto load_step = [&](int t) {
    const int id = sSched[t].id;  // query block
    const unsigned long long qbits = sSched[t].bits;
    const int st = t % kStages;
    uint16_t* sQs = sQdO + st * 2 * kTile;
    // addresses re-derived from the (constant-bank) params at each step rather than kept live: the
    // D = 128 kernel holds 128 fp32 accumulators per thread and has no registers to spare
    const int64_t row = static_cast<int64_t>(id) * 64;
    load_tile_async<D, kThreads>(sQs, static_cast<const uint16_t*>(p.q) + b * p.sq.b + h * p.sq.h + row * p.sq.s, p.sq.s,
                                 tid, qbits);
    load_tile_async<D, kThreads>(sQs + kTile,
                                 static_cast<const uint16_t*>(p.dout) + b * p.sdo.b + h * p.sdo.h + row * p.sdo.s,
                                 p.sdo.s, tid, qbits);
    if (tid < 32) {
      const float* src = ((tid < 16) ? p.lse2 + tid * 4 : p.delta + (tid - 16) * 4) + bh * p.S + row;
      cp_async16(smem_u32(sStat + st * 128 + tid * 4), src);
    }
  };

  int cursor = 0;  // warp 0's position in the virtual list (uniform over its lanes)
  while (true) {
    if (warp == 0) {
      const int cnt = build_schedule<true>(task.L, cursor, sSched, kDkdvSchedCap, lane, row_bits);
      if (lane == 0) sMeta[0] = cnt;
    }
    __syncthreads();
    const int n = sMeta[0];
    if (n == 0) break;

#pragma unroll
    for (int t = 0; t < kStages - 1; ++t) {
      if (t < n) load_step(t);
      cp_async_commit();
    }
    for (int t = 0; t < n; ++t) {
      cp_async_wait<kStages - 2>();
      __syncthreads();
      if (t + kStages - 1 < n) load_step(t + kStages - 1);
      cp_async_commit();

      const int st = t % kStages;
      const SchedEntry e = sSched[t];
      const int w = slot ? (e.w >> 16) : (e.w & 0xffff);
      if (w == 0 || !warp_has_keys) continue;
      const float bias = (w == 1) ? 0.f : __log2f(static_cast<float>(w));
      const uint32_t q_base_b = smem_u32(sQdO + st * 2 * kTile) + off_b;
      const uint32_t q_base_t = smem_u32(sQdO + st * 2 * kTile) + off_a;
      const uint32_t do_base_b = smem_u32(sQdO + st * 2 * kTile + kTile) + off_b;
      const uint32_t do_base_t = smem_u32(sQdO + st * 2 * kTile + kTile) + off_a;
      const float* sL = sStat + st * 128;
      const float* sDl = sL + 64;

#pragma unroll 1  // not unrolled: interleaving the two halves costs the registers that D = 128 lacks (spills)
      for (int hq = 0; hq < 64 / QC; ++hq) {  // QC query rows at a time
        float sT[QC / 8][4], dpT[QC / 8][4];
#pragma unroll
        for (int i = 0; i < QC / 8; ++i) {
          sT[i][0] = sT[i][1] = sT[i][2] = sT[i][3] = 0.f;
          dpT[i][0] = dpT[i][1] = dpT[i][2] = dpT[i][3] = 0.f;
        }
        // S^T = K Q^T, dP^T = V dO^T (16 keys x QC queries per warp)
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {
          uint32_t ak[4], av[4];
          ldsm_a(ak, frag_addr(k_base, 2 * kk));
          ldsm_a(av, frag_addr(v_base, 2 * kk));
#pragma unroll
          for (int np = 0; np < QC / 16; ++np) {
            uint32_t bb[4];
            ldsm_b_nk(bb, frag_addr(q_base_b, 2 * kk) + (hq * QC + np * 16) * RB);
            mma16816<kBF16>(sT[2 * np], ak, bb[0], bb[1]);
            mma16816<kBF16>(sT[2 * np + 1], ak, bb[2], bb[3]);
            ldsm_b_nk(bb, frag_addr(do_base_b, 2 * kk) + (hq * QC + np * 16) * RB);
            mma16816<kBF16>(dpT[2 * np], av, bb[0], bb[1]);
            mma16816<kBF16>(dpT[2 * np + 1], av, bb[2], bb[3]);
          }
        }
        // P^T and dS^T
#pragma unroll
        for (int nt = 0; nt < QC / 8; ++nt) {
          const int q = hq * QC + nt * 8 + 2 * (lane & 3);
          const float2 l2 = *reinterpret_cast<const float2*>(sL + q);
          const float2 dl = *reinterpret_cast<const float2*>(sDl + q);
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const float lq = (j & 1) ? l2.y : l2.x;
            const float dq = (j & 1) ? dl.y : dl.x;
            // every operand is finite here: padded K / V rows (slot tiles) and padded Q / dO rows (stages)
            // were loaded as zeros, and delta is 0 on padded query rows; so P = exp2(x - inf) = 0 on
            // padded queries, and P of padded keys is selected to 0
            const float pv = key_ok[j >> 1] ? exp2f(fmaf(sT[nt][j], scale_log2, bias) - lq) : 0.f;
            sT[nt][j] = pv;
            dpT[nt][j] = pv * (dpT[nt][j] - dq);
          }
        }
        // dV += P^T dO, dK += dS^T Q
#pragma unroll
        for (int kk = 0; kk < QC / 16; ++kk) {
          uint32_t ap[4], ad[4];
          ap[0] = pack2<kBF16>(sT[2 * kk][0], sT[2 * kk][1]);
          ap[1] = pack2<kBF16>(sT[2 * kk][2], sT[2 * kk][3]);
          ap[2] = pack2<kBF16>(sT[2 * kk + 1][0], sT[2 * kk + 1][1]);
          ap[3] = pack2<kBF16>(sT[2 * kk + 1][2], sT[2 * kk + 1][3]);
          ad[0] = pack2<kBF16>(dpT[2 * kk][0], dpT[2 * kk][1]);
          ad[1] = pack2<kBF16>(dpT[2 * kk][2], dpT[2 * kk][3]);
          ad[2] = pack2<kBF16>(dpT[2 * kk + 1][0], dpT[2 * kk + 1][1]);
          ad[3] = pack2<kBF16>(dpT[2 * kk + 1][2], dpT[2 * kk + 1][3]);
#pragma unroll
          for (int dpi = 0; dpi < D / 16; ++dpi) {
            uint32_t bb[4];
            ldsm_b_kn(bb, frag_addr(do_base_t, 2 * dpi) + (hq * QC + kk * 16) * RB);
            mma16816<kBF16>(dv[2 * dpi], ap, bb[0], bb[1]);
            mma16816<kBF16>(dv[2 * dpi + 1], ap, bb[2], bb[3]);
            ldsm_b_kn(bb, frag_addr(q_base_t, 2 * dpi) + (hq * QC + kk * 16) * RB);
            mma16816<kBF16>(dk[2 * dpi], ad, bb[0], bb[1]);
            mma16816<kBF16>(dk[2 * dpi + 1], ad, bb[2], bb[3]);
          }
        }
      }
    }
    cp_async_wait<0>();
    __syncthreads();  // every warp is done with this round's schedule and stages
  }
  cp_async_wait<0>();  // the K/V slot tiles are complete even when the schedule was empty
  __syncthreads();

  const int kblk_e = sMeta[1 + slot];
  const int split = sMeta[3];
  if (kblk_e < 0) return;
  const float rk[2] = {p.scale, p.scale};
  const float rv[2] = {1.f, 1.f};
  if (split >= 0 && p.num_q_splits > 1) {
    const int gidx = 2 * (static_cast<int>(blockIdx.x) / p.num_q_splits) + slot;
    const size_t base = ((bh * G + gidx) * p.num_q_splits + split) * 64;
    store_rows_f32<D>(p.ws_dk + base * D, wrow, dk, rk, lane);
    store_rows_f32<D>(p.ws_dv + base * D, wrow, dv, rv, lane);
    return;
  }
  // rows wrow..wrow+15 of this slot's K and V tiles are read only by this warp: stage through them
  store_rows_via_smem<kBF16, D>(sK + slot * kTile, wrow, dk, rk,
                                static_cast<uint16_t*>(p.dk) + off + static_cast<size_t>(kblk_e) * kTile, lane);
  store_rows_via_smem<kBF16, D>(sV + slot * kTile, wrow, dv, rv,
                                static_cast<uint16_t*>(p.dv) + off + static_cast<size_t>(kblk_e) * kTile, lane);
}

// ---------------------------------------------------------------------------------------------------
// split reductions (fixed order over splits): one CTA per (b*H + h, global index) (grid of plan_bwd);
// 4 threads per row
// ---------------------------------------------------------------------------------------------------
template <bool kBF16, int D>
__device__ __forceinline__ void reduce_rows(const float* ws, int ns, uint16_t* dst_row, int row, int c0) {
  constexpr int kCols = D / 4;
  float acc[kCols];
#pragma unroll
  for (int c = 0; c < kCols; ++c) acc[c] = 0.f;
  for (int s = 0; s < ns; ++s) {
    const float4* src = reinterpret_cast<const float4*>(ws + (static_cast<size_t>(s) * 64 + row) * D + c0);
#pragma unroll
    for (int c = 0; c < kCols / 4; ++c) {
      const float4 v = src[c];
      acc[4 * c + 0] += v.x;
      acc[4 * c + 1] += v.y;
      acc[4 * c + 2] += v.z;
      acc[4 * c + 3] += v.w;
    }
  }
#pragma unroll
  for (int c = 0; c < kCols / 8; ++c) {
    uint4 v;
    v.x = pack2<kBF16>(acc[8 * c + 0], acc[8 * c + 1]);
    v.y = pack2<kBF16>(acc[8 * c + 2], acc[8 * c + 3]);
    v.z = pack2<kBF16>(acc[8 * c + 4], acc[8 * c + 5]);
    v.w = pack2<kBF16>(acc[8 * c + 6], acc[8 * c + 7]);
    reinterpret_cast<uint4*>(dst_row + c0)[c] = v;
  }
}

// which = 0: dQ of global query rows; which = 1: dK and dV of global key blocks
template <bool kBF16, int D>
__global__ void __launch_bounds__(kAuxThreads) bigbird_bwd_reduce_kernel(const BwdParams p, int which) {
  const size_t bh = blockIdx.x;
  const int g = blockIdx.y;
  const int G = p.lay.num_global;
  const int blk = global_at(p.lay, g);
  const int row = threadIdx.x >> 2;
  const int c0 = (threadIdx.x & 3) * (D / 4);
  const size_t dst = (bh * p.S + static_cast<size_t>(blk) * 64 + row) * D;
  if (which == 0) {
    const int ns = p.num_kv_splits;
    reduce_rows<kBF16, D>(p.ws_dq + (bh * G + g) * ns * 64 * D, ns, static_cast<uint16_t*>(p.dq) + dst, row, c0);
  } else {
    const int ns = p.num_q_splits;
    reduce_rows<kBF16, D>(p.ws_dk + (bh * G + g) * ns * 64 * D, ns, static_cast<uint16_t*>(p.dk) + dst, row, c0);
    reduce_rows<kBF16, D>(p.ws_dv + (bh * G + g) * ns * 64 * D, ns, static_cast<uint16_t*>(p.dv) + dst, row, c0);
  }
}

template <bool kBF16, int D>
cudaError_t launch_bwd(const BwdParams& p, cudaStream_t stream) {
  const BwdPlan plan = plan_bwd(p);
  if (!plan.preprocess.ok() || !plan.dq.ok() || !plan.dkdv.ok() || !plan.reduce.ok()) return cudaErrorInvalidConfiguration;
  cudaError_t err;
  bigbird_bwd_preprocess_kernel<kBF16, D><<<plan.preprocess.dim(), kAuxThreads, 0, stream>>>(p);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  {
    auto kernel = bigbird_bwd_dq_kernel<kBF16, D>;
    if ((err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(plan.dq_smem))) !=
        cudaSuccess)
      return err;
    kernel<<<plan.dq.dim(), kThreads, plan.dq_smem, stream>>>(p);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  {
    auto kernel = bigbird_bwd_dkdv_kernel<kBF16, D>;
    if ((err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(plan.dkdv_smem))) !=
        cudaSuccess)
      return err;
    kernel<<<plan.dkdv.dim(), kThreads, plan.dkdv_smem, stream>>>(p);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  if (plan.reduce_dq_needed) {
    bigbird_bwd_reduce_kernel<kBF16, D><<<plan.reduce.dim(), kAuxThreads, 0, stream>>>(p, 0);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  if (plan.reduce_dkdv_needed) {
    bigbird_bwd_reduce_kernel<kBF16, D><<<plan.reduce.dim(), kAuxThreads, 0, stream>>>(p, 1);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t bigbird_bwd_sm80(const BwdParams& p, cudaStream_t stream) {
  if (p.D != 64 && p.D != 128) return cudaErrorInvalidValue;
  if (p.is_bf16) return p.D == 64 ? launch_bwd<true, 64>(p, stream) : launch_bwd<true, 128>(p, stream);
  return p.D == 64 ? launch_bwd<false, 64>(p, stream) : launch_bwd<false, 128>(p, stream);
}

}  // namespace bigbird
