// A CPU block pool for the span of an encode or decode call (see vaekernels/engine.py).
//
// Chunks repeat the same tensor shapes, so within a span a freed block of 1 MiB or more is kept and handed to
// the next allocation of the same size. A size with no free block evicts the least recently freed blocks
// until kept plus live bytes are within the span's peak of live bytes, so keeping blocks never raises the peak.
// Blocks are mapped from the OS directly and unmapped when evicted or when the span ends (blocks still in use
// then are unmapped when freed). Why: glibc raises its mmap threshold (up to 32 MiB) as large blocks are
// freed and then serves these sizes from its heap, which fragments; measured on 17x128x128 clips, resident
// peaks were 2-3x the live tensors. Reuse also spares the page faults of fresh mappings: evicting every free
// block at each new size instead made a bf16 encode + decode 12% slower (2.42 + 3.9 s against 2.16 + 3.46 s).
// Blocks of 2 MiB and more start on a 2 MiB boundary and ask for transparent huge pages (advise_huge_pages); the
// weights the convs derive at a model's first call are such blocks too. Zen 3, bf16 at 17x128x128, interleaved A/B
// in two runs: encode 0.93-0.97x and decode 0.95-0.98x the time, same peaks.
#include <c10/core/CPUAllocator.h>
#include <sys/mman.h>

#include <atomic>
#include <list>
#include <mutex>
#include <unordered_map>

#include "vaekernels.h"

namespace vaekernels {
namespace {

constexpr size_t kMinBytes = size_t(1) << 20;
constexpr size_t kPage = 4096;
constexpr size_t kHugePage = size_t(2) << 20;

// Asks the kernel for transparent huge pages (where its THP mode is "madvise" or "always") on the whole 2 MiB pages
// inside [data, data + bytes), before they are first written: one page fault per 2 MiB instead of 512, and one TLB
// entry per 2 MiB for the transforms' reads a plane's row apart. No peak grows: a huge page is placed only where
// the whole 2 MiB lies inside the range.
void advise_huge_pages(void* data, size_t bytes) {
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHugePage - 1) / kHugePage * kHugePage;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) / kHugePage * kHugePage;
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // a hint: errors are moot
}

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
      } else if (auto it = by_size_.find(bytes); it != by_size_.end()) {
        data = it->second->data;
        unlist(it);
      } else {
        // a size not seen lately: the least recently freed blocks go first, until live + kept + this block is
        // within the span's peak of live bytes so far (so the pool's own footprint adds nothing to the peak)
        while (!lru_.empty() && live_ + free_bytes_ + bytes > std::max(peak_live_, live_ + bytes)) unmap(pop_oldest());
        data = map_block(bytes);
        blocks_.emplace(data, bytes);
      }
      if (data) {
        live_ += bytes;
        peak_live_ = std::max(peak_live_, live_);
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
    if (--depth_ == 0) {
      release_free();
      peak_live_ = 0;
    }
  }

  static PoolAllocator& instance() {
    static PoolAllocator* pool = new PoolAllocator();  // never destroyed: tensors may outlive static destruction
    return *pool;
  }

 private:
  static constexpr uint8_t kPriority = 1;  // above torch's own registration (0)

  // a mapping of `bytes` that starts on a huge-page boundary where it is at least one huge page, so that all its
  // whole huge pages can be huge (advise_huge_pages)
  static void* map_block(size_t bytes) {
    const size_t slack = bytes >= kHugePage ? kHugePage - kPage : 0, mapped = bytes + slack;
    char* raw = static_cast<char*>(mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    TORCH_CHECK_WITH(OutOfMemoryError, raw != MAP_FAILED, "vaekernels CPU pool: cannot map ", bytes, " bytes");
    char* data = slack ? raw + (kHugePage - reinterpret_cast<uintptr_t>(raw) % kHugePage) % kHugePage : raw;
    if (data > raw) munmap(raw, data - raw);  // the slack before and after the block
    if (raw + mapped > data + bytes) munmap(data + bytes, raw + mapped - (data + bytes));
    advise_huge_pages(data, bytes);
    return data;
  }

  Block pop_oldest() {  // with mutex_ held
    const Block oldest = lru_.front();
    auto it = by_size_.equal_range(oldest.bytes).first;
    while (it->second != lru_.begin()) ++it;
    unlist(it);
    return oldest;
  }

  void unlist(std::unordered_multimap<size_t, std::list<Block>::iterator>::iterator it) {  // with mutex_ held
    free_bytes_ -= it->first;
    lru_.erase(it->second);
    by_size_.erase(it);
  }

  void unmap(const Block& b) {  // with mutex_ held
    munmap(b.data, b.bytes);
    blocks_.erase(b.data);
  }

  void release_free() {  // with mutex_ held
    for (const Block& b : lru_) unmap(b);
    lru_.clear();
    by_size_.clear();
    free_bytes_ = 0;
  }

  static void release(void* data) {
    PoolAllocator& pool = instance();
    {
      std::lock_guard<std::mutex> lock(pool.mutex_);
      auto it = pool.blocks_.find(data);
      if (it != pool.blocks_.end()) {
        const Block b{data, it->second};
        pool.live_ -= b.bytes;
        if (pool.depth_ > 0) {
          pool.by_size_.emplace(b.bytes, pool.lru_.insert(pool.lru_.end(), b));
          pool.free_bytes_ += b.bytes;
        } else {
          pool.unmap(b);
        }
        return;
      }
    }
    pool.base_->raw_deleter()(data);  // a block of torch's allocator
  }

  std::mutex mutex_;
  int depth_ = 0;
  c10::Allocator* base_ = nullptr;
  std::unordered_map<void*, size_t> blocks_;  // every mapped block -> bytes
  std::list<Block> lru_;                      // unused blocks, least recently freed first
  std::unordered_multimap<size_t, std::list<Block>::iterator> by_size_;  // bytes -> unused blocks
  size_t live_ = 0, peak_live_ = 0, free_bytes_ = 0;  // bytes of blocks in use, their peak in the span, unused
};

}  // namespace

// Span numbers per thread (ops run on the thread of their encode or decode call): another thread's span, or
// overlapping calls on several threads, must not stretch this thread's
std::atomic<uint64_t> spans{0};
thread_local int span_depth = 0;
thread_local uint64_t span_number = 0;

void cpu_pool_enter() {
  PoolAllocator::instance().enter();
  if (span_depth++ == 0) span_number = ++spans;
}
void cpu_pool_exit() {
  PoolAllocator::instance().exit();
  --span_depth;
}
uint64_t weight_epoch() { return span_depth > 0 ? span_number : 0; }

}  // namespace vaekernels
