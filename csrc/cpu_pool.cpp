// A CPU block pool for the span of an encode or decode call (see vaekernels/engine.py).
//
// Chunks repeat the same tensor shapes, so within a span a freed block of 1 MiB or more is kept and handed to
// the next allocation of the same size; blocks are mapped from the OS directly and unmapped when the span
// ends (blocks still in use then are unmapped when freed). Why: glibc raises its mmap threshold (up to
// 32 MiB) as large blocks are freed and then serves these sizes from its heap, which fragments; measured
// on 17x128x128 clips, resident peaks were 2-3x the live tensors. Reuse also spares the page faults a
// fresh mapping costs (glibc with a fixed mmap threshold: 30% slower).
#include <c10/core/CPUAllocator.h>
#include <sys/mman.h>

#include <mutex>
#include <unordered_map>

#include "vaekernels.h"

namespace vaekernels {
namespace {

constexpr size_t kMinBytes = size_t(1) << 20;
constexpr size_t kPage = 4096;

struct Block {
  void* data;
  size_t bytes;
};

// Installed once, at the first enter, and kept: a tensor's memory may be freed through the allocator current
// at that time (oneDNN frees raw blocks so), so blocks from this pool and from torch's allocator must both be
// freed correctly whenever that happens. Outside a span every request goes to torch's allocator.
class PoolAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    void* data = nullptr;
    size_t bytes = (n + kPage - 1) / kPage * kPage;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (depth_ == 0 || n < kMinBytes) {
        data = nullptr;
      } else if (auto it = free_.find(bytes); it != free_.end()) {
        data = it->second;
        free_.erase(it);
      } else {
        // a size not seen lately (a new chunk length): the unused blocks are of sizes gone out of use
        release_free();
        data = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        TORCH_CHECK_WITH(OutOfMemoryError, data != MAP_FAILED, "vaekernels CPU pool: cannot map ", bytes, " bytes");
        blocks_.emplace(data, bytes);
      }
    }
    if (!data) return base_->allocate(n);
    return {data, data, &release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }
  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }

  void enter() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!base_) {
      base_ = c10::GetCPUAllocator();
      TORCH_CHECK(base_->raw_deleter(), "vaekernels CPU pool: torch's CPU allocator has no raw deleter");
      c10::SetCPUAllocator(this, kPriority);
    }
    ++depth_;
  }

  void exit() {
    std::lock_guard<std::mutex> lock(mutex_);
    TORCH_CHECK(depth_ > 0, "vaekernels CPU pool: exit without enter");
    if (--depth_ == 0) release_free();
  }

  static PoolAllocator& instance() {
    static PoolAllocator* pool = new PoolAllocator();  // never destroyed: tensors may outlive static destruction
    return *pool;
  }

 private:
  static constexpr uint8_t kPriority = 1;  // above torch's own registration (0)

  void release_free() {  // with mutex_ held
    for (const auto& [bytes, data] : free_) {
      munmap(data, bytes);
      blocks_.erase(data);
    }
    free_.clear();
  }

  static void release(void* data) {
    PoolAllocator& pool = instance();
    {
      std::lock_guard<std::mutex> lock(pool.mutex_);
      auto it = pool.blocks_.find(data);
      if (it != pool.blocks_.end()) {
        if (pool.depth_ > 0) {
          pool.free_.emplace(it->second, data);
        } else {
          munmap(data, it->second);
          pool.blocks_.erase(it);
        }
        return;
      }
    }
    pool.base_->raw_deleter()(data);  // a block of torch's allocator
  }

  std::mutex mutex_;
  int depth_ = 0;
  c10::Allocator* base_ = nullptr;
  std::unordered_map<void*, size_t> blocks_;     // every mapped block -> bytes
  std::unordered_multimap<size_t, void*> free_;  // bytes -> unused blocks
};

}  // namespace

void cpu_pool_enter() { PoolAllocator::instance().enter(); }
void cpu_pool_exit() { PoolAllocator::instance().exit(); }

}  // namespace vaekernels
