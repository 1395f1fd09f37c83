// A persistent pool of worker threads that join a caller's job: shared by the
// large-copy engine (copy.cpp) and the threads I/O engine (io.cpp).
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

namespace kvtier {

// Job must have `std::size_t seats; int active;` (guarded by the pool's mutex)
// and `void work() noexcept`, which claims tasks until none are left (each
// participant calls it; the tasks are handed out by an atomic counter).
template <class Job>
class WorkPool {
 public:
  explicit WorkPool(std::size_t workers) {
    try {
      threads_.reserve(workers);
      for (std::size_t i = 0; i < workers; ++i) threads_.emplace_back([this] { worker_loop(); });
    } catch (...) {
      shutdown();  // join the workers that did start before rethrowing
      throw;
    }
  }

  ~WorkPool() { shutdown(); }

  std::size_t workers() const { return threads_.size(); }

  // Runs job.work() on the calling thread and on up to tasks - 1 workers;
  // returns when every participant is done (the job lives on the caller's stack).
  void run(Job& job, std::size_t tasks) {
    std::size_t seats = std::min(tasks - 1, threads_.size());
    if (seats == 0) return job.work();
    {
      std::lock_guard<std::mutex> lock(mu_);
      job.seats = seats;
      queue_.push_back(&job);
    }
    while (seats--) work_cv_.notify_one();
    job.work();
    // Unpublish the job (no worker may join from now on), then wait for the
    // workers that joined.
    std::unique_lock<std::mutex> lock(mu_);
    auto it = std::find(queue_.begin(), queue_.end(), &job);
    if (it != queue_.end()) queue_.erase(it);
    done_cv_.wait(lock, [&] { return job.active == 0; });
  }

 private:
  void shutdown() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    work_cv_.notify_all();
    for (auto& t : threads_) t.join();
  }

  void worker_loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      work_cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      Job* job = queue_.front();
      if (--job->seats == 0) queue_.pop_front();
      ++job->active;
      lock.unlock();
      job->work();
      lock.lock();
      if (--job->active == 0) done_cv_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  std::deque<Job*> queue_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace kvtier
