// Stand-in for the one libtorch_cuda.so symbol that the CUDA build of torchvision links against.
#include <cstdio>
#include <cstdlib>

namespace at {
namespace cuda {

void* getCurrentDeviceProperties() {
  std::fprintf(stderr, "lyrics torchvision CPU shim: at::cuda::getCurrentDeviceProperties called, but this torch has no CUDA\n");
  std::abort();
}

}  // namespace cuda
}  // namespace at
