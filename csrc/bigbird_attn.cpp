// bigbird-kernels: torch binding of the CUDA kernels (the only C++ file that includes torch).
//
// Registers two ops in the `bigbird_kernels_cuda` namespace (schemas below); their fake (meta)
// implementations and autograd formula are registered from Python (bigbird_kernels/backends/cuda.py).
//   fwd(q, k, v, kv_indices, kv_num_blocks, q_offsets?, q_indices?, global_blocks, attention_mask?,
//       scale, block_size, deterministic) -> (out, lse)
//   bwd(dout, dlse?, q, k, v, out, lse, kv_indices, kv_num_blocks, q_offsets, q_indices, global_blocks,
//       attention_mask?, scale, block_size, deterministic) -> (dq, dk, dv)
// The forward runs the Hopper kernel (TMA + wgmma) on sm_90 devices when this build holds it, else the
// portable mma.sync kernel; BIGBIRD_CUDA_DISABLE_SM90=1 forces the portable one. The backward is
// always deterministic (no atomics), so `deterministic` changes nothing today.
// q, k, v (and dout, out) are read in place through their strides when bigbird::readable_in_place
// allows it (BSHD views included), else copied; outputs are contiguous. Nothing here synchronises
// with the host: every call can be captured in a CUDA graph.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "bigbird_attn.h"

#ifdef TORCH_EXTENSION_NAME
#include <Python.h>
#endif

namespace {

using at::Tensor;

// Key blocks per split task of the global query rows (forward and dQ) and query blocks per split of the
// global key blocks (dK/dV). About the length of a non-global row's merged pair schedule, so that split
// tasks and pair tasks take similar time. Overridable for tuning.
int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  const int x = std::atoi(v);
  return x > 0 ? x : fallback;
}

bool sm90_disabled() {
  const char* v = std::getenv("BIGBIRD_CUDA_DISABLE_SM90");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

void check_qkv(const Tensor& q, const Tensor& k, const Tensor& v, int64_t block_size) {
  TORCH_CHECK(q.is_cuda() && k.is_cuda() && v.is_cuda(), "bigbird_kernels_cuda: q, k, v must be CUDA tensors, got ",
              q.device(), ", ", k.device(), ", ", v.device());
  TORCH_CHECK(q.device() == k.device() && q.device() == v.device(), "bigbird_kernels_cuda: q, k, v must be on one device");
  TORCH_CHECK(q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16,
              "bigbird_kernels_cuda: q, k, v must be float16 or bfloat16, got ", q.scalar_type());
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "bigbird_kernels_cuda: q, k, v must have the same dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ",
              v.scalar_type());
  TORCH_CHECK(q.dim() == 4, "bigbird_kernels_cuda: q, k, v must be (B, H, S, D), got ", q.dim(), " dims");
  TORCH_CHECK(q.sizes() == k.sizes() && q.sizes() == v.sizes(), "bigbird_kernels_cuda: q, k, v must have one shape, got ",
              q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK(block_size == bigbird::kBlock, "bigbird_kernels_cuda: only block_size 64 is compiled, got ", block_size);
  const int64_t D = q.size(3), S = q.size(2);
  TORCH_CHECK(D == 64 || D == 128, "bigbird_kernels_cuda: head dim must be 64 or 128, got ", D);
  TORCH_CHECK(S % block_size == 0, "bigbird_kernels_cuda: S=", S, " is not a multiple of block_size=", block_size);
  TORCH_CHECK(q.numel() < (int64_t(1) << 31) * D, "bigbird_kernels_cuda: B*H*S must be < 2^31");
  int major = 0, minor = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, q.device().index()));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, q.device().index()));
  TORCH_CHECK(major >= 8, "bigbird_kernels_cuda: needs compute capability >= 8.0, device ", q.device().index(), " has ", major,
              ".", minor);
}

void check_layout_tensor(const Tensor& t, const char* name, const Tensor& q, std::vector<int64_t> shape) {
  TORCH_CHECK(t.device() == q.device(), "bigbird_kernels_cuda: ", name, " is on ", t.device(), " but q is on ", q.device());
  TORCH_CHECK(t.scalar_type() == at::kInt, "bigbird_kernels_cuda: ", name, " must be int32, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == static_cast<int64_t>(shape.size()), "bigbird_kernels_cuda: ", name, " must have ", shape.size(),
              " dims, got ", t.sizes());
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] >= 0)
      TORCH_CHECK(t.size(i) == shape[i], "bigbird_kernels_cuda: ", name, " has shape ", t.sizes(), ", expected dim ", i,
                  " = ", shape[i]);
  }
}

// A (B, H, S, D) input as the kernels read it: itself when bigbird::readable_in_place allows (any
// strides, BSHD views included), else a contiguous copy in fresh (aligned) memory: `.contiguous()`
// alone would keep a contiguous tensor whose data pointer is not 16-byte aligned.
Tensor kernel_input(const Tensor& t, const char* name) {
  const auto sizes = t.sizes();
  const auto strides = t.strides();
  const int64_t sz[4] = {sizes[0], sizes[1], sizes[2], sizes[3]};
  const int64_t st[4] = {strides[0], strides[1], strides[2], strides[3]};
  const auto ptr = reinterpret_cast<uint64_t>(t.data_ptr());
  if (bigbird::readable_in_place(ptr, sz, st, static_cast<int>(t.element_size()))) return t;
  Tensor c = t.clone(at::MemoryFormat::Contiguous);
  const auto cs = c.strides();
  const int64_t cst[4] = {cs[0], cs[1], cs[2], cs[3]};
  TORCH_CHECK(bigbird::readable_in_place(reinterpret_cast<uint64_t>(c.data_ptr()), sz, cst, static_cast<int>(c.element_size())),
              "bigbird_kernels_cuda: the contiguous copy of ", name, " is not 16-byte aligned");
  return c;
}

bigbird::Strides strides_of(const Tensor& t) {
  const auto sizes = t.sizes();
  const auto strides = t.strides();
  const int64_t sz[4] = {sizes[0], sizes[1], sizes[2], sizes[3]};
  const int64_t st[4] = {strides[0], strides[1], strides[2], strides[3]};
  return bigbird::kernel_strides(sz, st);
}

void check_grid(const bigbird::Grid& g, const char* kernel, int64_t B, int64_t H, int64_t S) {
  TORCH_CHECK(g.ok(), "bigbird_kernels_cuda: the ", kernel, " grid (", g.x, ", ", g.y, ", ", g.z,
              ") exceeds CUDA's limits (x < 2^31, y and z <= 65535) for B=", B, ", H=", H, ", S=", S);
}

// Device copy of a global-block list longer than kMaxGlobalInline: made once per (device, list) with a
// non-blocking copy from pinned memory and kept for the life of the process, so that no later call (and
// no CUDA-graph replay) synchronises or copies for it. A later call on another stream waits for the copy
// on the device (an event), never on the host; inside a capture it does not wait (torch.cuda.graph
// synchronises before capturing), and the first call for a list cannot be captured (one clear error:
// run it once before).
const int* device_global_list(const Tensor& q, at::IntArrayRef global_blocks) {
  struct Entry {
    Tensor host, dev;
    cudaEvent_t ready;
    cudaStream_t stream;
  };
  static std::mutex mu;
  static std::map<std::pair<int, std::vector<int64_t>>, Entry> cache;
  const std::lock_guard<std::mutex> lock(mu);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  const bool capturing = capture != cudaStreamCaptureStatusNone;
  auto key = std::make_pair(static_cast<int>(q.device().index()), global_blocks.vec());
  auto it = cache.find(key);
  if (it == cache.end()) {
    TORCH_CHECK(!capturing, "bigbird_kernels_cuda: the first call with more than ", bigbird::kMaxGlobalInline,
                " global blocks copies their list to the device and cannot be captured in a CUDA graph: run it once "
                "before capturing");
    Entry e;
    e.host = at::empty({static_cast<int64_t>(global_blocks.size())}, at::TensorOptions().dtype(at::kInt).pinned_memory(true));
    int* h = e.host.data_ptr<int>();
    for (size_t i = 0; i < global_blocks.size(); ++i) h[i] = static_cast<int>(global_blocks[i]);
    e.dev = e.host.to(at::TensorOptions().device(q.device()).dtype(at::kInt), /*non_blocking=*/true);
    C10_CUDA_CHECK(cudaEventCreateWithFlags(&e.ready, cudaEventDisableTiming));
    C10_CUDA_CHECK(cudaEventRecord(e.ready, stream));
    e.stream = stream;
    it = cache.emplace(std::move(key), std::move(e)).first;
  } else if (!capturing && it->second.stream != stream) {
    C10_CUDA_CHECK(cudaStreamWaitEvent(stream, it->second.ready, 0));
  }
  return it->second.dev.data_ptr<int>();
}

// Fills the layout part of the params.
bigbird::LayoutArgs make_layout_args(const Tensor& q, int64_t nb, const Tensor& kv_indices, const Tensor& kv_num_blocks,
                                     const Tensor* q_offsets, const Tensor* q_indices, at::IntArrayRef global_blocks) {
  bigbird::LayoutArgs lay;
  std::memset(&lay, 0, sizeof(lay));
  lay.kv_indices = kv_indices.data_ptr<int>();
  lay.kv_num_blocks = kv_num_blocks.data_ptr<int>();
  if (q_offsets != nullptr) {
    lay.q_offsets = q_offsets->data_ptr<int>();
    lay.q_indices = q_indices->data_ptr<int>();
    lay.nnz = static_cast<int>(q_indices->size(1));
  }
  const int64_t G = static_cast<int64_t>(global_blocks.size());
  TORCH_CHECK(G <= nb, "bigbird_kernels_cuda: ", G, " global blocks for ", nb, " blocks");
  for (int64_t i = 0; i < G; ++i) {
    TORCH_CHECK(global_blocks[i] >= 0 && global_blocks[i] < nb, "bigbird_kernels_cuda: global block ", global_blocks[i],
                " out of range [0, ", nb, ")");
    TORCH_CHECK(i == 0 || global_blocks[i] > global_blocks[i - 1],
                "bigbird_kernels_cuda: global_blocks must be strictly ascending, got ", global_blocks);
  }
  lay.num_global = static_cast<int>(G);
  for (int64_t i = 0; i < std::min<int64_t>(G, bigbird::kMaxGlobalInline); ++i) lay.global_inline[i] = static_cast<int>(global_blocks[i]);
  if (G > bigbird::kMaxGlobalInline) lay.global_dev = device_global_list(q, global_blocks);
  return lay;
}

// (B, S) mask -> (B, S/64) validity words, or an undefined tensor without a mask.
Tensor pack_mask(const std::optional<Tensor>& attention_mask, const Tensor& q) {
  if (!attention_mask.has_value() || !attention_mask->defined()) return Tensor();
  const Tensor& m = *attention_mask;
  const int64_t B = q.size(0), S = q.size(2);
  TORCH_CHECK(m.device() == q.device(), "bigbird_kernels_cuda: attention_mask is on ", m.device(), " but q is on ", q.device());
  TORCH_CHECK(m.dim() == 2 && m.size(0) == B && m.size(1) == S, "bigbird_kernels_cuda: attention_mask must be (B, S) = (", B,
              ", ", S, "), got ", m.sizes());
  TORCH_CHECK(m.scalar_type() == at::kBool || m.scalar_type() == at::kByte,
              "bigbird_kernels_cuda: attention_mask must be bool (True = real token), got ", m.scalar_type());
  check_grid(bigbird::grid_pack_mask(static_cast<int>(B), static_cast<int>(S)), "mask packing", B, q.size(1), S);
  const Tensor m8 = (m.scalar_type() == at::kBool ? m : m.ne(0)).contiguous().view(at::kByte);
  Tensor bits = at::empty({B, S / bigbird::kBlock}, q.options().dtype(at::kLong));
  C10_CUDA_CHECK(bigbird::bigbird_pack_mask(m8.data_ptr<uint8_t>(), reinterpret_cast<unsigned long long*>(bits.data_ptr<int64_t>()),
                                            static_cast<int>(B), static_cast<int>(S), c10::cuda::getCurrentCUDAStream()));
  return bits;
}

std::tuple<Tensor, Tensor> bigbird_fwd(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const Tensor& kv_indices_in,
                                       const Tensor& kv_num_blocks_in, const std::optional<Tensor>& q_offsets,
                                       const std::optional<Tensor>& q_indices, at::IntArrayRef global_blocks,
                                       const std::optional<Tensor>& attention_mask, double scale, int64_t block_size,
                                       bool deterministic) {
  (void)q_offsets;  // inputs of the forward only so that autograd saves them for the backward
  (void)q_indices;
  (void)deterministic;
  check_qkv(q_in, k_in, v_in, block_size);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const int64_t B = q_in.size(0), H = q_in.size(1), S = q_in.size(2), D = q_in.size(3);
  const int64_t nb = S / block_size;
  check_layout_tensor(kv_indices_in, "kv_indices", q_in, {H, nb, -1});
  check_layout_tensor(kv_num_blocks_in, "kv_num_blocks", q_in, {H, nb});
  const Tensor kv_indices = kv_indices_in.contiguous(), kv_num_blocks = kv_num_blocks_in.contiguous();

  Tensor out = at::empty({B, H, S, D}, q_in.options());
  Tensor lse = at::empty({B, H, S}, q_in.options().dtype(at::kFloat));
  if (B == 0 || H == 0 || S == 0) return {out, lse};
  const Tensor q = kernel_input(q_in, "q"), k = kernel_input(k_in, "k"), v = kernel_input(v_in, "v");

  bigbird::FwdParams p;
  std::memset(&p, 0, sizeof(p));
  p.lay = make_layout_args(q, nb, kv_indices, kv_num_blocks, nullptr, nullptr, global_blocks);
  bigbird::set_fwd_shape(p, static_cast<int>(B), static_cast<int>(H), static_cast<int>(S), static_cast<int>(D),
                         static_cast<int>(kv_indices.size(2)), env_int("BIGBIRD_CUDA_KV_SPLIT", 16));
  const Tensor bits = pack_mask(attention_mask, q);
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.sq = strides_of(q);
  p.sk = strides_of(k);
  p.sv = strides_of(v);
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.block_bits = bits.defined() ? reinterpret_cast<const unsigned long long*>(bits.data_ptr<int64_t>()) : nullptr;
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  p.is_bf16 = q.scalar_type() == at::kBFloat16;
  const bool sm90 = !sm90_disabled() && bigbird::bigbird_fwd_sm90_supported(q.device().index());
  const bigbird::FwdPlan plan = bigbird::plan_fwd(p, sm90);
  check_grid(plan.main, "forward", B, H, S);
  Tensor ws_o, ws_lse;
  if (plan.merge_needed) {
    check_grid(plan.merge, "split merge", B, H, S);
    const int64_t G = static_cast<int64_t>(global_blocks.size());
    ws_o = at::empty({B, H, G, p.num_splits, block_size, D}, q.options().dtype(at::kFloat));
    ws_lse = at::empty({B, H, G, p.num_splits, block_size}, q.options().dtype(at::kFloat));
    p.ws_o = ws_o.data_ptr<float>();
    p.ws_lse = ws_lse.data_ptr<float>();
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  C10_CUDA_CHECK(sm90 ? bigbird::bigbird_fwd_sm90(p, stream) : bigbird::bigbird_fwd_sm80(p, stream));
  return {out, lse};
}

std::tuple<Tensor, Tensor, Tensor> bigbird_bwd(const Tensor& dout_in, const std::optional<Tensor>& dlse_in, const Tensor& q_in,
                                               const Tensor& k_in, const Tensor& v_in, const Tensor& out_in, const Tensor& lse_in,
                                               const Tensor& kv_indices_in, const Tensor& kv_num_blocks_in,
                                               const Tensor& q_offsets_in, const Tensor& q_indices_in,
                                               at::IntArrayRef global_blocks, const std::optional<Tensor>& attention_mask,
                                               double scale, int64_t block_size, bool deterministic) {
  (void)deterministic;  // the backward has no atomics: every mode is bit-reproducible
  check_qkv(q_in, k_in, v_in, block_size);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const int64_t B = q_in.size(0), H = q_in.size(1), S = q_in.size(2), D = q_in.size(3);
  const int64_t nb = S / block_size;
  TORCH_CHECK(dout_in.sizes() == q_in.sizes() && out_in.sizes() == q_in.sizes(),
              "bigbird_kernels_cuda: dout and out must have q's shape ", q_in.sizes());
  TORCH_CHECK(dout_in.device() == q_in.device() && out_in.device() == q_in.device() && lse_in.device() == q_in.device(),
              "bigbird_kernels_cuda: dout, out, lse must be on q's device");
  TORCH_CHECK(lse_in.dim() == 3 && lse_in.size(0) == B && lse_in.size(1) == H && lse_in.size(2) == S &&
                  lse_in.scalar_type() == at::kFloat,
              "bigbird_kernels_cuda: lse must be float32 (B, H, S), got ", lse_in.scalar_type(), " ", lse_in.sizes());
  check_layout_tensor(kv_indices_in, "kv_indices", q_in, {H, nb, -1});
  check_layout_tensor(kv_num_blocks_in, "kv_num_blocks", q_in, {H, nb});
  check_layout_tensor(q_offsets_in, "q_offsets", q_in, {H, nb + 1});
  check_layout_tensor(q_indices_in, "q_indices", q_in, {H, -1});

  TORCH_CHECK(out_in.scalar_type() == q_in.scalar_type(), "bigbird_kernels_cuda: out must have q's dtype ",
              q_in.scalar_type(), ", got ", out_in.scalar_type());
  const Tensor lse = lse_in.contiguous();
  const Tensor kv_indices = kv_indices_in.contiguous(), kv_num_blocks = kv_num_blocks_in.contiguous();
  const Tensor q_offsets = q_offsets_in.contiguous(), q_indices = q_indices_in.contiguous();
  Tensor dlse;
  if (dlse_in.has_value() && dlse_in->defined()) {
    TORCH_CHECK(dlse_in->sizes() == lse_in.sizes(), "bigbird_kernels_cuda: dlse must have lse's shape");
    dlse = dlse_in->to(at::kFloat).contiguous();
  }

  const auto contiguous = q_in.options().memory_format(at::MemoryFormat::Contiguous);
  Tensor dq = at::empty({B, H, S, D}, contiguous), dk = at::empty({B, H, S, D}, contiguous), dv = at::empty({B, H, S, D}, contiguous);
  if (B == 0 || H == 0 || S == 0) return {dq, dk, dv};
  const Tensor q = kernel_input(q_in, "q"), k = kernel_input(k_in, "k"), v = kernel_input(v_in, "v");
  const Tensor out = kernel_input(out_in, "out"), dout = kernel_input(dout_in.to(q_in.scalar_type()), "dout");

  bigbird::BwdParams p;
  std::memset(&p, 0, sizeof(p));
  p.lay = make_layout_args(q, nb, kv_indices, kv_num_blocks, &q_offsets, &q_indices, global_blocks);
  bigbird::set_bwd_shape(p, static_cast<int>(B), static_cast<int>(H), static_cast<int>(S), static_cast<int>(D),
                         static_cast<int>(kv_indices.size(2)), env_int("BIGBIRD_CUDA_KV_SPLIT", 16),
                         env_int("BIGBIRD_CUDA_Q_SPLIT", 16));
  const Tensor bits = pack_mask(attention_mask, q);
  Tensor delta = at::empty({B, H, S}, q.options().dtype(at::kFloat));
  Tensor lse2 = at::empty({B, H, S}, q.options().dtype(at::kFloat));
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out.data_ptr();
  p.dout = dout.data_ptr();
  p.sq = strides_of(q);
  p.sk = strides_of(k);
  p.sv = strides_of(v);
  p.so = strides_of(out);
  p.sdo = strides_of(dout);
  p.lse = lse.data_ptr<float>();
  p.dlse = dlse.defined() ? dlse.data_ptr<float>() : nullptr;
  p.dq = dq.data_ptr();
  p.dk = dk.data_ptr();
  p.dv = dv.data_ptr();
  p.delta = delta.data_ptr<float>();
  p.lse2 = lse2.data_ptr<float>();
  p.block_bits = bits.defined() ? reinterpret_cast<const unsigned long long*>(bits.data_ptr<int64_t>()) : nullptr;
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  p.is_bf16 = q.scalar_type() == at::kBFloat16;
  const bigbird::BwdPlan plan = bigbird::plan_bwd(p);
  check_grid(plan.preprocess, "backward preprocess", B, H, S);
  check_grid(plan.dq, "dQ", B, H, S);
  check_grid(plan.dkdv, "dK/dV", B, H, S);
  if (plan.reduce_dq_needed || plan.reduce_dkdv_needed) check_grid(plan.reduce, "split reduction", B, H, S);
  const int64_t G = static_cast<int64_t>(global_blocks.size());
  Tensor ws_dq, ws_dk, ws_dv;
  const auto f32 = q.options().dtype(at::kFloat);
  if (plan.reduce_dq_needed) {
    ws_dq = at::empty({B, H, G, p.num_kv_splits, block_size, D}, f32);
    p.ws_dq = ws_dq.data_ptr<float>();
  }
  if (plan.reduce_dkdv_needed) {
    ws_dk = at::empty({B, H, G, p.num_q_splits, block_size, D}, f32);
    ws_dv = at::empty({B, H, G, p.num_q_splits, block_size, D}, f32);
    p.ws_dk = ws_dk.data_ptr<float>();
    p.ws_dv = ws_dv.data_ptr<float>();
  }
  C10_CUDA_CHECK(bigbird::bigbird_bwd_sm80(p, c10::cuda::getCurrentCUDAStream()));
  return {dq, dk, dv};
}

// What this build holds and which forward path a device would take (for `python -m bigbird_kernels.info`).
std::string bigbird_build_info() {
  std::string s = "bigbird_kernels_cuda: block_size 64, head dims 64/128, fp16/bf16; forward sm80 (mma.sync) + sm90 (TMA/wgmma)";
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    n = 0;
  }
  for (int d = 0; d < n; ++d) {
    s += "; device " + std::to_string(d) + ": forward " +
         ((!sm90_disabled() && bigbird::bigbird_fwd_sm90_supported(d)) ? "sm90 (TMA + wgmma)" : "sm80 (mma.sync)");
  }
  return s;
}

}  // namespace

TORCH_LIBRARY(bigbird_kernels_cuda, m) {
  m.def(
      "fwd(Tensor q, Tensor k, Tensor v, Tensor kv_indices, Tensor kv_num_blocks, Tensor? q_offsets, "
      "Tensor? q_indices, int[] global_blocks, Tensor? attention_mask, float scale, int block_size, "
      "bool deterministic) -> (Tensor, Tensor)");
  m.def(
      "bwd(Tensor dout, Tensor? dlse, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor kv_indices, "
      "Tensor kv_num_blocks, Tensor q_offsets, Tensor q_indices, int[] global_blocks, Tensor? attention_mask, "
      "float scale, int block_size, bool deterministic) -> (Tensor, Tensor, Tensor)");
  m.def("build_info() -> str", &bigbird_build_info);
}

TORCH_LIBRARY_IMPL(bigbird_kernels_cuda, CUDA, m) {
  m.impl("fwd", &bigbird_fwd);
  m.impl("bwd", &bigbird_bwd);
}

// Built as the Python extension module bigbird_kernels._C by setup.py: importing it registers the ops.
#ifdef TORCH_EXTENSION_NAME
#define BIGBIRD_STR_(x) #x
#define BIGBIRD_STR(x) BIGBIRD_STR_(x)
#define BIGBIRD_CONCAT_(a, b) a##b
#define BIGBIRD_CONCAT(a, b) BIGBIRD_CONCAT_(a, b)
extern "C" PyMODINIT_FUNC BIGBIRD_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, BIGBIRD_STR(TORCH_EXTENSION_NAME),
                                          "bigbird-kernels CUDA ops (registered in torch.ops.bigbird_kernels_cuda)", -1,
                                          nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module_def);
}
#endif
