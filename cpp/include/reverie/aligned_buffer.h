// Owned, 64-byte aligned, zero-initialised memory for columns and trees.
#pragma once

#include <cstddef>
#include <cstdint>

namespace reverie {

// Large buffers come from anonymous mmap: zero pages that only become resident when
// written, so an unfilled buffer costs no memory. Not copyable; movable.
// Thread-safety: the object itself is immutable after construction; its bytes are guarded
// by whoever owns it.
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  // O(1) (the kernel zeroes pages lazily). Throws std::bad_alloc when memory is exhausted.
  explicit AlignedBuffer(size_t bytes);
  ~AlignedBuffer();
  AlignedBuffer(AlignedBuffer&& other) noexcept;
  AlignedBuffer& operator=(AlignedBuffer&& other) noexcept;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;

  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return bytes_; }

  template <typename T>
  T* as() {
    return reinterpret_cast<T*>(data_);
  }
  template <typename T>
  const T* as() const {
    return reinterpret_cast<const T*>(data_);
  }

 private:
  void Release();
  uint8_t* data_ = nullptr;
  size_t bytes_ = 0;
  size_t mapped_ = 0;  // bytes mapped with mmap, 0 when the memory came from the heap
};

}  // namespace reverie
