// libtorch wrapper smoke test: tensors work and c10d's Gloo process group (USE_C10D_GLOO,
// libgloo) can be created over a FileStore and run a collective, single rank.
#include <torch/torch.h>
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>

int main() {
  at::Tensor t = torch::arange(6, torch::kFloat32).reshape({2, 3});
  if (t.sum().item<float>() != 15.0f) {
    std::fprintf(stderr, "tensor sum wrong\n");
    return 1;
  }
  const char* tmp = std::getenv("TEST_TMPDIR");
  std::string path = std::string(tmp ? tmp : "/tmp") + "/torch_smoke_store";
  std::remove(path.c_str());
  auto store = c10::make_intrusive<c10d::FileStore>(path, 1);
  auto opts = c10d::ProcessGroupGloo::Options::create();
  opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, 0, 1, opts);
  std::vector<at::Tensor> v = {t.clone()};
  pg->allreduce(v)->wait();
  if (!v[0].equal(t)) {
    std::fprintf(stderr, "allreduce over one rank changed the tensor\n");
    return 1;
  }
  std::printf("1 passed, 0 failed\n");
  return 0;
}
