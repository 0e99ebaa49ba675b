// Host-only driver of the launch arithmetic and input rules of csrc/bigbird_attn.h (no GPU, no CUDA
// runtime calls): tests/test_cuda_compile.py builds it with g++ and feeds it one query per line on
// stdin; it answers one JSON object per line.
//   fwd B H S D W G kv_split sm90          -> the forward's launches (plan_fwd)
//   bwd B H S D W G kv_split q_split       -> the backward's launches (plan_bwd)
//   mask B S                               -> the mask packer's grid
//   input ptr s0 s1 s2 s3 t0 t1 t2 t3 elem -> readable_in_place and kernel_strides of a (B, H, S, D) tensor
#include <cstdio>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>

#include "bigbird_attn.h"

namespace {

void print_grid(const char* name, const bigbird::Grid& g, bool launched, int threads, size_t smem, bool last) {
  std::printf("\"%s\": {\"x\": %llu, \"y\": %llu, \"z\": %llu, \"launched\": %s, \"threads\": %d, \"smem\": %zu}%s", name,
              static_cast<unsigned long long>(g.x), static_cast<unsigned long long>(g.y),
              static_cast<unsigned long long>(g.z), launched ? "true" : "false", threads, smem, last ? "" : ", ");
}

bigbird::LayoutArgs layout_with(int G) {
  bigbird::LayoutArgs lay;
  std::memset(&lay, 0, sizeof(lay));
  lay.num_global = G;
  return lay;
}

}  // namespace

int main() {
  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string kind;
    in >> kind;
    if (kind == "fwd") {
      int B, H, S, D, W, G, kv_split, sm90;
      in >> B >> H >> S >> D >> W >> G >> kv_split >> sm90;
      bigbird::FwdParams p;
      std::memset(&p, 0, sizeof(p));
      p.lay = layout_with(G);
      bigbird::set_fwd_shape(p, B, H, S, D, W, kv_split);
      const bigbird::FwdPlan f = bigbird::plan_fwd(p, sm90 != 0);
      std::printf("{");
      print_grid("main", f.main, true, f.main_threads, f.main_smem, false);
      print_grid("merge", f.merge, f.merge_needed, bigbird::kAuxThreads, 0, true);
      std::printf("}\n");
    } else if (kind == "bwd") {
      int B, H, S, D, W, G, kv_split, q_split;
      in >> B >> H >> S >> D >> W >> G >> kv_split >> q_split;
      bigbird::BwdParams p;
      std::memset(&p, 0, sizeof(p));
      p.lay = layout_with(G);
      bigbird::set_bwd_shape(p, B, H, S, D, W, kv_split, q_split);
      const bigbird::BwdPlan f = bigbird::plan_bwd(p);
      std::printf("{");
      print_grid("preprocess", f.preprocess, true, bigbird::kAuxThreads, 0, false);
      print_grid("dq", f.dq, true, bigbird::kBwdThreads, f.dq_smem, false);
      print_grid("dkdv", f.dkdv, true, bigbird::kBwdThreads, f.dkdv_smem, false);
      print_grid("reduce", f.reduce, f.reduce_dq_needed || f.reduce_dkdv_needed, bigbird::kAuxThreads, 0, true);
      std::printf("}\n");
    } else if (kind == "mask") {
      int B, S;
      in >> B >> S;
      std::printf("{");
      print_grid("pack_mask", bigbird::grid_pack_mask(B, S), true, bigbird::kAuxThreads, 0, true);
      std::printf("}\n");
    } else if (kind == "input") {
      unsigned long long ptr;
      int64_t sizes[4], strides[4];
      int elem;
      in >> ptr >> sizes[0] >> sizes[1] >> sizes[2] >> sizes[3] >> strides[0] >> strides[1] >> strides[2] >> strides[3] >> elem;
      const bool ok = bigbird::readable_in_place(ptr, sizes, strides, elem);
      const bigbird::Strides st = bigbird::kernel_strides(sizes, strides);
      std::printf("{\"in_place\": %s, \"strides\": [%lld, %lld, %lld]}\n", ok ? "true" : "false", static_cast<long long>(st.b),
                  static_cast<long long>(st.h), static_cast<long long>(st.s));
    } else {
      std::printf("{\"error\": \"unknown query '%s'\"}\n", kind.c_str());
    }
    std::fflush(stdout);
  }
  return 0;
}
