// bigbird-kernels: forward on the portable path (sm_80 and later): mma.sync m16n8k16 tensor-core MMA
// on ldmatrix fragments, a cp.async multi-stage K/V ring, online softmax in fp32.
//
// One CTA = 8 warps = two query blocks ("slots", 4 warps x 16 rows each). Both slots walk one merged
// schedule of key blocks (see bigbird_attn.h); a warp skips the steps its slot does not list, and a
// block listed c times is processed once with the score bias log2(c).
// Padded keys: their K and V rows are loaded as zeros and their scores selected to -inf.
// Also here: the mask packer and the merge of the split-KV partials of the global query rows.
#include "bigbird_attn.h"

namespace bigbird {
namespace {

using namespace dev;

template <int D>
struct FwdSm80Cfg {
  static constexpr int kThreads = kFwdSm80Threads;
  static constexpr int kStages = fwd_sm80_stages(D);
  static constexpr int kTile = 64 * D;      // elements of one 64 x D tile
  static constexpr bool kQInRegs = false;
  static constexpr int kMinBlocks = (D == 64) ? 2 : 1;
};

template <bool kBF16, int D>
__global__ void __launch_bounds__(FwdSm80Cfg<D>::kThreads, FwdSm80Cfg<D>::kMinBlocks)
    bigbird_fwd_sm80_kernel(const FwdParams p) {
  using C = FwdSm80Cfg<D>;
  constexpr int kStages = C::kStages;
  constexpr int kTile = C::kTile;
  constexpr int NT = D / 8;   // n8 tiles of the output
  constexpr int KS = D / 16;  // k16 steps of Q K^T

  extern __shared__ __align__(128) unsigned char smem_raw[];
  uint16_t* sQ = reinterpret_cast<uint16_t*>(align_smem_128(smem_raw));
  uint16_t* sKV = sQ + 2 * kTile;
  int* sMeta = reinterpret_cast<int*>(sKV + 2 * kStages * kTile);
  int* sGlob = sMeta + 4;
  const int G = p.lay.num_global;
  SchedEntry* sSched = reinterpret_cast<SchedEntry*>(sGlob + ((G + 1) & ~1));

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int h = blockIdx.y, b = blockIdx.z;
  const int nb = p.nb;
  const unsigned long long* row_bits = p.block_bits ? p.block_bits + static_cast<size_t>(b) * nb : nullptr;

  for (int i = tid; i < G; i += C::kThreads) sGlob[i] = global_at(p.lay, i);
  __syncthreads();

  const Task task = decode_row_task(p.lay, sGlob, nb, p.W, h, blockIdx.x, p.kv_split, p.num_splits);
  const size_t bh = static_cast<size_t>(b) * p.H + h;
  const int64_t ldq = p.sq.s, ldk = p.sk.s, ldv = p.sv.s;
  const uint16_t* qg = static_cast<const uint16_t*>(p.q) + b * p.sq.b + h * p.sq.h;
  const uint16_t* kg = static_cast<const uint16_t*>(p.k) + b * p.sk.b + h * p.sk.h;
  const uint16_t* vg = static_cast<const uint16_t*>(p.v) + b * p.sv.b + h * p.sv.h;

  // Q tiles of both slots: the first cp.async group
#pragma unroll
  for (int s = 0; s < 2; ++s)
    if (task.slot[s] >= 0) load_tile_async<D, C::kThreads>(sQ + s * kTile, qg + task.slot[s] * 64 * ldq, ldq, tid);
  cp_async_commit();

  if (warp == 0) {
    int cursor = 0;
    const int n = build_schedule<false>(task.L, cursor, sSched, p.sched_cap, lane, row_bits);
    if (lane == 0) {
      sMeta[0] = n;
      sMeta[1] = task.slot[0];  // re-read by the epilogue: nothing of the task stays live in registers
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
    load_tile_async<D, C::kThreads>(sK, kg + id * 64 * ldk, ldk, tid, bits);
    load_tile_async<D, C::kThreads>(sK + kTile, vg + id * 64 * ldv, ldv, tid, bits);
  };

#pragma unroll
  for (int t = 0; t < kStages - 1; ++t) {
    if (t < n) load_step(t);
    cp_async_commit();
  }

  const int slot = warp >> 2;
  const int wrow = (warp & 3) * 16;
  constexpr uint32_t RB = 2 * D;  // bytes per tile row
  const uint32_t off_a = frag_off_a<D>(lane), off_b = frag_off_b<D>(lane);
  const uint32_t q_base = smem_u32(sQ + slot * kTile) + wrow * RB + off_a;

  uint32_t qf[C::kQInRegs ? KS : 1][4];
  if constexpr (C::kQInRegs) {
    cp_async_wait<kStages - 1>();  // the Q group (committed first) is complete
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) ldsm_a(qf[kk], frag_addr(q_base, 2 * kk));
  }

  float o[NT][4];
#pragma unroll
  for (int i = 0; i < NT; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY};
  float l[2] = {0.f, 0.f};
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
    const uint32_t k_base = smem_u32(sKV + st * 2 * kTile) + off_b;
    const uint32_t v_base = smem_u32(sKV + st * 2 * kTile + kTile) + off_a;

    // S = Q K^T (16 x 64 per warp)
    float s[8][4];
#pragma unroll
    for (int i = 0; i < 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
      uint32_t a[4];
      if constexpr (C::kQInRegs) {
        a[0] = qf[kk][0]; a[1] = qf[kk][1]; a[2] = qf[kk][2]; a[3] = qf[kk][3];
      } else {
        ldsm_a(a, frag_addr(q_base, 2 * kk));
      }
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t bb[4];
        ldsm_b_nk(bb, frag_addr(k_base, 2 * kk) + np * 16 * RB);
        mma16816<kBF16>(s[2 * np], a, bb[0], bb[1]);
        mma16816<kBF16>(s[2 * np + 1], a, bb[2], bb[3]);
      }
    }

    // scale (log2 domain), multiplicity bias, key padding; row max over the quad
    float mx[2] = {-INFINITY, -INFINITY};
    const bool partial = bits != ~0ull;
    // this thread's keys are nt * 8 + 2 * (lane % 4) + (j % 2): shift once, test constant bit positions
    const unsigned long long tb = bits >> (2 * (lane & 3));
    const uint32_t tb_lo = static_cast<uint32_t>(tb), tb_hi = static_cast<uint32_t>(tb >> 32);
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        float x = fmaf(s[nt][j], scale_log2, bias);
        if (partial && !(((nt < 4 ? tb_lo : tb_hi) >> ((nt & 3) * 8 + (j & 1))) & 1u)) x = -INFINITY;
        s[nt][j] = x;
        mx[j >> 1] = fmaxf(mx[j >> 1], x);
      }
    }
    float alpha[2], mu[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float mn = fmaxf(m[r], mx[r]);
      mu[r] = (mn == -INFINITY) ? 0.f : mn;  // rows without a valid key so far: keep p = 0, no NaN
      alpha[r] = exp2f(m[r] - mu[r]);
      m[r] = mn;
    }
    float rs[2] = {0.f, 0.f};
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float pv = exp2f(s[nt][j] - mu[j >> 1]);
        s[nt][j] = pv;
        rs[j >> 1] += pv;
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) l[r] = fmaf(l[r], alpha[r], rs[r]);
#pragma unroll
    for (int dt = 0; dt < NT; ++dt) {
      o[dt][0] *= alpha[0];
      o[dt][1] *= alpha[0];
      o[dt][2] *= alpha[1];
      o[dt][3] *= alpha[1];
    }

    // O += P V
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      uint32_t a[4];
      a[0] = pack2<kBF16>(s[2 * kk][0], s[2 * kk][1]);
      a[1] = pack2<kBF16>(s[2 * kk][2], s[2 * kk][3]);
      a[2] = pack2<kBF16>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      a[3] = pack2<kBF16>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t bb[4];
        ldsm_b_kn(bb, frag_addr(v_base, 2 * dp) + kk * 16 * RB);
        mma16816<kBF16>(o[2 * dp], a, bb[0], bb[1]);
        mma16816<kBF16>(o[2 * dp + 1], a, bb[2], bb[3]);
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // all copies into the Q tiles landed (they are reused to stage the output)

  // ---- epilogue --------------------------------------------------------------------------------------
  const int qblk = sMeta[1 + slot];
  const int split = sMeta[3];
  if (qblk < 0) return;
  const unsigned long long qbits = row_bits ? row_bits[qblk] : ~0ull;
  float lse[2];
  const float one[2] = {1.f, 1.f};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    const int row = wrow + (lane >> 2) + 8 * r;
    // padded query rows and rows without a valid key: exactly 0 (a select: their o may hold NaN)
    const bool ok = ((qbits >> row) & 1ull) && l[r] > 0.f;
    const float inv = 1.f / l[r];
#pragma unroll
    for (int dt = 0; dt < NT; ++dt) {
      o[dt][2 * r] = ok ? o[dt][2 * r] * inv : 0.f;
      o[dt][2 * r + 1] = ok ? o[dt][2 * r + 1] * inv : 0.f;
    }
    lse[r] = ok ? (m[r] + __log2f(l[r])) * kLn2 : -INFINITY;
  }

  if (split >= 0 && p.num_splits > 1) {
    const int gidx = 2 * (static_cast<int>(blockIdx.x) / p.num_splits) + slot;
    const size_t base = ((bh * G + gidx) * p.num_splits + split) * 64;
    store_rows_f32<D>(p.ws_o + base * D, wrow, o, one, lane);
    if ((lane & 3) == 0) {
#pragma unroll
      for (int r = 0; r < 2; ++r) p.ws_lse[base + wrow + (lane >> 2) + 8 * r] = lse[r];
    }
    return;
  }
  uint16_t* og = static_cast<uint16_t*>(p.out) + (bh * p.S + static_cast<size_t>(qblk) * 64) * D;
  // Only this warp reads rows wrow..wrow+15 of its slot's Q tile: reuse them to stage the output.
  store_rows_via_smem<kBF16, D>(sQ + slot * kTile, wrow, o, one, og, lane);
  if ((lane & 3) == 0) {
#pragma unroll
    for (int r = 0; r < 2; ++r) p.lse[bh * p.S + qblk * 64 + wrow + (lane >> 2) + 8 * r] = lse[r];
  }
}

// Merge of the split-KV partials of the global query rows: one CTA per (b*H + h, global block)
// (grid of plan_fwd); 4 threads per row, each D/4 columns.
template <bool kBF16, int D>
__global__ void __launch_bounds__(kAuxThreads) bigbird_fwd_merge_kernel(const FwdParams p) {
  constexpr int kCols = D / 4;
  const size_t bh = blockIdx.x;
  const int g = blockIdx.y;
  const int b = static_cast<int>(bh / p.H);
  const int G = p.lay.num_global;
  const int qblk = global_at(p.lay, g);
  const int row = threadIdx.x >> 2;
  const int c0 = (threadIdx.x & 3) * kCols;
  const int ns = p.num_splits;
  const size_t base = (bh * G + g) * ns * 64;
  const bool valid = p.block_bits == nullptr || ((p.block_bits[static_cast<size_t>(b) * p.nb + qblk] >> row) & 1ull);

  float M = -INFINITY;
  for (int s = 0; s < ns; ++s) M = fmaxf(M, p.ws_lse[base + s * 64 + row]);
  float acc[kCols];
#pragma unroll
  for (int c = 0; c < kCols; ++c) acc[c] = 0.f;
  float lse = -INFINITY;
  if (valid && M != -INFINITY) {
    float L = 0.f;
    for (int s = 0; s < ns; ++s) {
      const float ls = p.ws_lse[base + s * 64 + row];
      const float wgt = __expf(ls - M);  // 0 for empty splits (ls = -inf)
      if (wgt == 0.f) continue;
      L += wgt;
      const float4* src = reinterpret_cast<const float4*>(p.ws_o + ((base + s * 64 + row) * D + c0));
#pragma unroll
      for (int c = 0; c < kCols / 4; ++c) {
        const float4 v4 = src[c];
        acc[4 * c + 0] = fmaf(wgt, v4.x, acc[4 * c + 0]);
        acc[4 * c + 1] = fmaf(wgt, v4.y, acc[4 * c + 1]);
        acc[4 * c + 2] = fmaf(wgt, v4.z, acc[4 * c + 2]);
        acc[4 * c + 3] = fmaf(wgt, v4.w, acc[4 * c + 3]);
      }
    }
    const float invL = 1.f / L;
#pragma unroll
    for (int c = 0; c < kCols; ++c) acc[c] *= invL;
    lse = M + __logf(L);
  }
  uint16_t* og = static_cast<uint16_t*>(p.out) + (bh * p.S + static_cast<size_t>(qblk) * 64 + row) * D + c0;
#pragma unroll
  for (int c = 0; c < kCols / 8; ++c) {
    uint4 v;
    v.x = pack2<kBF16>(acc[8 * c + 0], acc[8 * c + 1]);
    v.y = pack2<kBF16>(acc[8 * c + 2], acc[8 * c + 3]);
    v.z = pack2<kBF16>(acc[8 * c + 4], acc[8 * c + 5]);
    v.w = pack2<kBF16>(acc[8 * c + 6], acc[8 * c + 7]);
    reinterpret_cast<uint4*>(og)[c] = v;
  }
  if ((threadIdx.x & 3) == 0) p.lse[bh * p.S + static_cast<size_t>(qblk) * 64 + row] = lse;
}

// One warp per 64-token block: two ballots give the 64 validity bits.
__global__ void __launch_bounds__(kAuxThreads) bigbird_pack_mask_kernel(const uint8_t* __restrict__ mask,
                                                                unsigned long long* __restrict__ bits, int total_blocks) {
  const int wid = blockIdx.x * 8 + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (wid >= total_blocks) return;  // warp-uniform
  const uint8_t* m = mask + static_cast<size_t>(wid) * 64;
  const unsigned lo = __ballot_sync(0xffffffffu, m[lane] != 0);
  const unsigned hi = __ballot_sync(0xffffffffu, m[32 + lane] != 0);
  if (lane == 0) bits[wid] = static_cast<unsigned long long>(lo) | (static_cast<unsigned long long>(hi) << 32);
}

template <bool kBF16, int D>
cudaError_t launch_fwd_sm80(const FwdParams& p, cudaStream_t stream) {
  auto kernel = bigbird_fwd_sm80_kernel<kBF16, D>;
  const FwdPlan plan = plan_fwd(p, false);
  if (!plan.main.ok()) return cudaErrorInvalidConfiguration;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(plan.main_smem));
  if (err != cudaSuccess) return err;
  kernel<<<plan.main.dim(), plan.main_threads, plan.main_smem, stream>>>(p);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  return bigbird_fwd_merge(p, stream);
}

template <bool kBF16, int D>
cudaError_t launch_fwd_merge(const FwdParams& p, cudaStream_t stream) {
  const Grid grid = plan_fwd(p, false).merge;
  if (!grid.ok()) return cudaErrorInvalidConfiguration;
  bigbird_fwd_merge_kernel<kBF16, D><<<grid.dim(), kAuxThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t bigbird_pack_mask(const uint8_t* mask, unsigned long long* bits, int B, int S, cudaStream_t stream) {
  const int total = B * (S / kBlock);
  if (total == 0) return cudaSuccess;
  const Grid grid = grid_pack_mask(B, S);
  if (!grid.ok()) return cudaErrorInvalidConfiguration;
  bigbird_pack_mask_kernel<<<grid.dim(), kAuxThreads, 0, stream>>>(mask, bits, total);
  return cudaGetLastError();
}

cudaError_t bigbird_fwd_merge(const FwdParams& p, cudaStream_t stream) {
  if (!plan_fwd(p, false).merge_needed) return cudaSuccess;
  if (p.is_bf16) return p.D == 64 ? launch_fwd_merge<true, 64>(p, stream) : launch_fwd_merge<true, 128>(p, stream);
  return p.D == 64 ? launch_fwd_merge<false, 64>(p, stream) : launch_fwd_merge<false, 128>(p, stream);
}

cudaError_t bigbird_fwd_sm80(const FwdParams& p, cudaStream_t stream) {
  if (p.D != 64 && p.D != 128) return cudaErrorInvalidValue;
  if (p.is_bf16) return p.D == 64 ? launch_fwd_sm80<true, 64>(p, stream) : launch_fwd_sm80<true, 128>(p, stream);
  return p.D == 64 ? launch_fwd_sm80<false, 64>(p, stream) : launch_fwd_sm80<false, 128>(p, stream);
}

}  // namespace bigbird
