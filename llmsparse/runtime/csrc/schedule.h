// Work splitting for the sparse kernels that stays steady when other processes share the cores.
//
// A static split (OpenMP's default, at::parallel_for) gives each thread a fixed half of the rows: when
// the OS preempts one thread for another process, the call waits for that thread's whole share, and
// the idle threads spin meanwhile. Here rows are cut into small chunks that the threads claim from an
// atomic counter (a thread that is running takes the next chunk, so a preempted one delays the call
// by at most the chunk it holds), and the thread count itself is chosen per call: every shape keeps
// an average time per call for one thread and for all threads, runs the faster, and re-measures the
// other every `kProbe` calls. On a busy machine one thread then wins (no rendezvous with a thread
// that is not running, no spinning beside the other process) and on an idle one all threads win.

#pragma once

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>

namespace llmsparse {

class Pacer {
 public:
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t>;
  static constexpr int kProbe = 32;

  // Threads to use for the next call of shape `key` when `most` are available (1 or `most`).
  int choose(const Key& key, int most) {
    if (most <= 1 || !adaptive_) return std::max(1, most);
    std::lock_guard<std::mutex> lock(mutex_);
    Stats& s = stats_[key];
    ++s.calls;
    if (s.ns[1] < 0) return most;
    if (s.ns[0] < 0) return 1;
    const int best = s.ns[0] <= s.ns[1] ? 0 : 1;
    const int pick = s.calls % kProbe == 0 ? 1 - best : best;
    return pick ? most : 1;
  }

  void record(const Key& key, int threads, double ns) {
    if (!adaptive_) return;
    std::lock_guard<std::mutex> lock(mutex_);
    double& avg = stats_[key].ns[threads > 1];
    avg = avg < 0 ? ns : 0.7 * avg + 0.3 * ns;
  }

  void set_adaptive(bool on) {
    std::lock_guard<std::mutex> lock(mutex_);
    adaptive_ = on;
    stats_.clear();
  }

  // The process's one pacer (the kernels' calls come from the Python thread, a mutex guards the rest).
  static Pacer& get() {
    static Pacer pacer;
    return pacer;
  }

 private:
  struct Stats {
    double ns[2] = {-1.0, -1.0};  // one thread, all threads
    int64_t calls = 0;
  };
  std::mutex mutex_;
  std::map<Key, Stats> stats_;
  bool adaptive_ = true;
};

// fn(r0, r1) over [0, n) in chunks of `chunk` rows claimed by `threads` threads (the caller is one).
template <class F>
void run_chunks(int64_t n, int64_t chunk, int threads, F&& fn) {
  const int64_t chunks = (n + chunk - 1) / std::max<int64_t>(1, chunk);
  if (threads <= 1 || chunks <= 1) {
    if (n > 0) fn(int64_t{0}, n);
    return;
  }
  std::atomic<int64_t> next{0};
#pragma omp parallel num_threads(static_cast<int>(std::min<int64_t>(threads, chunks)))
  {
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks;) fn(c * chunk, std::min(n, (c + 1) * chunk));
  }
}

// run_chunks with the thread count chosen by the Pacer for `key`, the call timed for it.
template <class F>
void paced_chunks(const Pacer::Key& key, int64_t n, int64_t chunk, int most, F&& fn) {
  const bool several = n > chunk;
  Pacer& pacer = Pacer::get();
  const int threads = several ? pacer.choose(key, most) : 1;
  const auto t0 = std::chrono::steady_clock::now();
  run_chunks(n, chunk, threads, fn);
  if (several) pacer.record(key, threads, std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count());
}

}  // namespace llmsparse
