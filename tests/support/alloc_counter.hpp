#pragma once
// Counts the bytes and calls of the global operator new while `rlpo_test::alloc::counting` is
// on. Include in exactly one translation unit of a test executable: it replaces every
// non-aligned form of the global operator new / delete (plain, array, nothrow, sized), all on
// malloc / free, so that no allocation made through one form is released through another
// (AddressSanitizer reports a mismatch when, e.g., a nothrow new of the runtime meets this
// delete). The aligned forms keep the runtime's own pair.
#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>

namespace rlpo_test::alloc {
inline std::atomic<bool> counting{false};
inline std::atomic<long long> bytes{0}, calls{0};

inline void* allocate(std::size_t n) noexcept {
    if (counting.load(std::memory_order_relaxed)) {
        bytes += static_cast<long long>(n);
        ++calls;
    }
    return std::malloc(n ? n : 1);
}
inline void* allocate_or_throw(std::size_t n) {
    if (void* p = allocate(n)) return p;
    throw std::bad_alloc();
}
}  // namespace rlpo_test::alloc

// (GCC pairs the malloc inside these operators with the free of the deletes below when both
// are inlined into a caller, and reports a false mismatch)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void* operator new(std::size_t n) { return rlpo_test::alloc::allocate_or_throw(n); }
void* operator new[](std::size_t n) { return rlpo_test::alloc::allocate_or_throw(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
    return rlpo_test::alloc::allocate(n);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
    return rlpo_test::alloc::allocate(n);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
