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
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <tuple>
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
  TORCH_CHECK(q.size(0) <= 65535 && q.size(1) <= 65535, "bigbird_kernels_cuda: B and H must be <= 65535");
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

// Fills the layout part of the params; `keep` holds a device copy of the global list when it is long.
bigbird::LayoutArgs make_layout_args(const Tensor& q, int64_t nb, const Tensor& kv_indices, const Tensor& kv_num_blocks,
                                     const Tensor* q_offsets, const Tensor* q_indices, at::IntArrayRef global_blocks,
                                     Tensor& keep) {
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
  if (G > bigbird::kMaxGlobalInline) {
    std::vector<int> host(global_blocks.begin(), global_blocks.end());
    keep = at::tensor(host, at::TensorOptions().dtype(at::kInt)).to(q.device());
    lay.global_dev = keep.data_ptr<int>();
  }
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
  const Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const Tensor kv_indices = kv_indices_in.contiguous(), kv_num_blocks = kv_num_blocks_in.contiguous();

  Tensor out = at::empty_like(q);
  Tensor lse = at::empty({B, H, S}, q.options().dtype(at::kFloat));
  if (B == 0 || H == 0 || S == 0) return {out, lse};

  Tensor keep_globals;
  bigbird::FwdParams p;
  std::memset(&p, 0, sizeof(p));
  p.lay = make_layout_args(q, nb, kv_indices, kv_num_blocks, nullptr, nullptr, global_blocks, keep_globals);
  const Tensor bits = pack_mask(attention_mask, q);
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.block_bits = bits.defined() ? reinterpret_cast<const unsigned long long*>(bits.data_ptr<int64_t>()) : nullptr;
  p.B = static_cast<int>(B);
  p.H = static_cast<int>(H);
  p.S = static_cast<int>(S);
  p.D = static_cast<int>(D);
  p.nb = static_cast<int>(nb);
  p.W = static_cast<int>(kv_indices.size(2));
  p.kv_split = env_int("BIGBIRD_CUDA_KV_SPLIT", 16);
  p.num_splits = static_cast<int>((nb + p.kv_split - 1) / p.kv_split);
  p.sched_cap = std::max(2 * p.W, p.kv_split);
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  p.is_bf16 = q.scalar_type() == at::kBFloat16;
  const int64_t G = static_cast<int64_t>(global_blocks.size());
  Tensor ws_o, ws_lse;
  if (G > 0 && p.num_splits > 1) {
    ws_o = at::empty({B, H, G, p.num_splits, block_size, D}, q.options().dtype(at::kFloat));
    ws_lse = at::empty({B, H, G, p.num_splits, block_size}, q.options().dtype(at::kFloat));
    p.ws_o = ws_o.data_ptr<float>();
    p.ws_lse = ws_lse.data_ptr<float>();
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int dev = q.device().index();
  if (!sm90_disabled() && bigbird::bigbird_fwd_sm90_supported(dev)) {
    C10_CUDA_CHECK(bigbird::bigbird_fwd_sm90(p, stream));
  } else {
    C10_CUDA_CHECK(bigbird::bigbird_fwd_sm80(p, stream));
  }
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

  const Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const Tensor out = out_in.contiguous(), lse = lse_in.contiguous();
  const Tensor dout = dout_in.to(q.scalar_type()).contiguous();
  const Tensor kv_indices = kv_indices_in.contiguous(), kv_num_blocks = kv_num_blocks_in.contiguous();
  const Tensor q_offsets = q_offsets_in.contiguous(), q_indices = q_indices_in.contiguous();
  Tensor dlse;
  if (dlse_in.has_value() && dlse_in->defined()) {
    TORCH_CHECK(dlse_in->sizes() == lse_in.sizes(), "bigbird_kernels_cuda: dlse must have lse's shape");
    dlse = dlse_in->to(at::kFloat).contiguous();
  }

  Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  if (B == 0 || H == 0 || S == 0) return {dq, dk, dv};

  Tensor keep_globals;
  bigbird::BwdParams p;
  std::memset(&p, 0, sizeof(p));
  p.lay = make_layout_args(q, nb, kv_indices, kv_num_blocks, &q_offsets, &q_indices, global_blocks, keep_globals);
  const Tensor bits = pack_mask(attention_mask, q);
  Tensor delta = at::empty({B, H, S}, q.options().dtype(at::kFloat));
  Tensor lse2 = at::empty({B, H, S}, q.options().dtype(at::kFloat));
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out.data_ptr();
  p.dout = dout.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.dlse = dlse.defined() ? dlse.data_ptr<float>() : nullptr;
  p.dq = dq.data_ptr();
  p.dk = dk.data_ptr();
  p.dv = dv.data_ptr();
  p.delta = delta.data_ptr<float>();
  p.lse2 = lse2.data_ptr<float>();
  p.block_bits = bits.defined() ? reinterpret_cast<const unsigned long long*>(bits.data_ptr<int64_t>()) : nullptr;
  p.B = static_cast<int>(B);
  p.H = static_cast<int>(H);
  p.S = static_cast<int>(S);
  p.D = static_cast<int>(D);
  p.nb = static_cast<int>(nb);
  p.W = static_cast<int>(kv_indices.size(2));
  p.kv_split = env_int("BIGBIRD_CUDA_KV_SPLIT", 16);
  p.num_kv_splits = static_cast<int>((nb + p.kv_split - 1) / p.kv_split);
  p.q_split = env_int("BIGBIRD_CUDA_Q_SPLIT", 16);
  p.num_q_splits = static_cast<int>((nb + p.q_split - 1) / p.q_split);
  p.sched_cap = std::max(2 * p.W, p.kv_split);
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  p.is_bf16 = q.scalar_type() == at::kBFloat16;
  const int64_t G = static_cast<int64_t>(global_blocks.size());
  Tensor ws_dq, ws_dk, ws_dv;
  const auto f32 = q.options().dtype(at::kFloat);
  if (G > 0 && p.num_kv_splits > 1) {
    ws_dq = at::empty({B, H, G, p.num_kv_splits, block_size, D}, f32);
    p.ws_dq = ws_dq.data_ptr<float>();
  }
  if (G > 0 && p.num_q_splits > 1) {
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
