#include "reverie/ring.h"

#include <sched.h>

#include "reverie/region.h"

namespace reverie {

bool Ring::Acquire(int64_t key, int64_t slot, uint32_t pid, uint64_t* previous) {
  std::atomic<uint64_t>& stamp = stamps_[slot];
  const uint64_t mine = Stamp::Writing(pid);
  uint64_t seen = stamp.load(std::memory_order_acquire);
  for (int spins = 0;; ++spins) {
    if (Stamp::IsWriting(seen)) {
      // A writer one lap behind is still copying this slot. Wait while its process lives;
      // take the slot over when it died (its row is discarded, never published).
      const bool dead = spins >= 64 && spins % 64 == 0 && !ProcessAlive(Stamp::WriterOf(seen));
      if (!dead) {
        if (spins >= 64) sched_yield();
        seen = stamp.load(std::memory_order_acquire);
        continue;
      }
    } else if (seen != Stamp::kEmpty && Stamp::KeyOf(seen) >= key) {
      return false;  // lapped: a newer item already holds the slot
    }
    if (stamp.compare_exchange_weak(seen, mine, std::memory_order_acq_rel,
                                    std::memory_order_acquire)) {
      // A dead writer's WRITING stamp replaced counts as empty: its row never was an item.
      if (previous != nullptr) *previous = Stamp::IsWriting(seen) ? Stamp::kEmpty : seen;
      // Orders the WRITING stamp before every byte of the copy that follows (see ring.h).
      std::atomic_thread_fence(std::memory_order_release);
      return true;
    }
  }
}

}  // namespace reverie
