// Memory read bandwidth, stream-style: sums a 1 GiB buffer with 1..N threads, best of 7.
// What the weight-streaming decode of a large model can reach at most on this machine.
//   g++ -O2 -pthread bench/stream-bandwidth.cpp -o /tmp/stream && /tmp/stream 1 && /tmp/stream 2
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>
#include <immintrin.h>
__attribute__((target("avx2"))) static long long sum_range(const __m256i* p, size_t n) {
  __m256i a = _mm256_setzero_si256(), b = a;
  for (size_t i = 0; i < n; i += 2) { a = _mm256_add_epi64(a, _mm256_load_si256(p + i)); b = _mm256_xor_si256(b, _mm256_load_si256(p + i + 1)); }
  a = _mm256_add_epi64(a, b);
  return _mm256_extract_epi64(a, 0);
}
int main(int argc, char** argv) {
  size_t bytes = 1ull << 30; int threads = argc > 1 ? atoi(argv[1]) : 1;
  char* buf = (char*)aligned_alloc(64, bytes); memset(buf, 1, bytes);
  size_t n = bytes / 32;
  double best = 1e9;
  for (int rep = 0; rep < 7; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> ts; volatile long long sink = 0;
    for (int t = 0; t < threads; ++t) ts.emplace_back([&, t] { sink += sum_range((const __m256i*)buf + n / threads * t, n / threads); });
    for (auto& th : ts) th.join();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s < best) best = s;
  }
  printf("threads %d: read %.1f GB/s (best of 7, 1 GiB)\n", threads, bytes / best / 1e9);
}
