// Stand-ins for the libc10_cuda.so symbols that the CUDA build of torchvision links against.
// With a CPU-only torch these libraries do not exist, so torchvision's ops fail to load. Every
// function here aborts with a message except device_count(), which truthfully reports no GPU.
#include <cstdio>
#include <cstdlib>

namespace c10 {
namespace cuda {

[[noreturn]] static void unavailable(const char* what) {
  std::fprintf(stderr, "lyrics torchvision CPU shim: %s called, but this torch has no CUDA\n", what);
  std::abort();
}

class CUDAStream {
 public:
  void synchronize() const;
  bool query() const;
  void* stream() const;
  long long opaque[2];
};

signed char device_count() noexcept { return 0; }
signed char current_device() { unavailable("c10::cuda::current_device"); }
int ExchangeDevice(signed char) { unavailable("c10::cuda::ExchangeDevice"); }
int MaybeSetDevice(signed char) { unavailable("c10::cuda::MaybeSetDevice"); }
int GetDevice(signed char*) { unavailable("c10::cuda::GetDevice"); }
int SetDevice(signed char, bool) { unavailable("c10::cuda::SetDevice"); }
CUDAStream getStreamFromPool(bool, signed char) { unavailable("c10::cuda::getStreamFromPool"); }
CUDAStream getStreamFromPool(int, signed char) { unavailable("c10::cuda::getStreamFromPool"); }
CUDAStream getCurrentCUDAStream(signed char) { unavailable("c10::cuda::getCurrentCUDAStream"); }
CUDAStream getDefaultCUDAStream(signed char) { unavailable("c10::cuda::getDefaultCUDAStream"); }
void setCurrentCUDAStream(CUDAStream) { unavailable("c10::cuda::setCurrentCUDAStream"); }
void c10_cuda_check_implementation(int, const char*, const char*, unsigned int, bool) {
  unavailable("c10::cuda::c10_cuda_check_implementation");
}
void CUDAStream::synchronize() const { unavailable("c10::cuda::CUDAStream::synchronize"); }
bool CUDAStream::query() const { unavailable("c10::cuda::CUDAStream::query"); }
void* CUDAStream::stream() const { unavailable("c10::cuda::CUDAStream::stream"); }

namespace CUDACachingAllocator {
void* allocator = nullptr;
}  // namespace CUDACachingAllocator

}  // namespace cuda
}  // namespace c10
