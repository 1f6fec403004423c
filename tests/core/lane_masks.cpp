// The lane masks of the SIMD layer (core/simd/packet.hpp: `mask_lt`, `mask_le`, `mask_eq`,
// `mask_neq`, `mask_not_nan`, `mask_and`, `mask_andnot`, `mask_any`, `mask_select`,
// `mask_zero_unless`, `mask_indicator`, `load_kept`) and the finiteness flag
// (`flag_non_finite`, `any_flagged`), float and double, against the
// scalar comparisons of every pair of a set of special values (±0, ±1, ±inf, NaN, the extreme
// finite and subnormal numbers) and, bit for bit, against Eigen's vector compares and
// `pselect`, which the kernels used before. Built for the baseline ISA (Eigen's vector masks)
// and again for fixed x86-64 instruction sets (tests/CMakeLists.txt: the AVX-512 variants take
// mask registers).
#include "support/catch.hpp"

#include <rlpo/core/simd/packet.hpp>

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

namespace ei = Eigen::internal;
namespace simd = rlpo::detail::simd;

template <class S>
std::vector<S> specials() {
    using L = std::numeric_limits<S>;
    return {S(0),
            -S(0),
            S(1),
            S(-1),
            S(0.5),
            S(-2.5),
            L::infinity(),
            -L::infinity(),
            L::quiet_NaN(),
            L::max(),
            L::lowest(),
            L::min(),
            L::denorm_min(),
            -L::denorm_min(),
            S(3)};
}

template <class S>
bool same_bits(S a, S b) {
    return std::memcmp(&a, &b, sizeof(S)) == 0;
}

// Every lane of the packet results for the pairs (x[j], y[j]), j over the lanes.
template <class S>
void check_lanes(const std::vector<S>& x, const std::vector<S>& y, int& checked) {
    using P = simd::Packet<S>;
    constexpr int W = simd::width<S>;
    alignas(64) S xb[W], yb[W], a[W], b[W], out[W], ref[W];
    for (int j = 0; j < W; ++j) {
        xb[j] = x[static_cast<std::size_t>(j)];
        yb[j] = y[static_cast<std::size_t>(j)];
        a[j] = S(10 + j);
        b[j] = S(-20 - j);
    }
    const P px = ei::pload<P>(xb), py = ei::pload<P>(yb), pa = ei::pload<P>(a),
            pb = ei::pload<P>(b);
    // select a where the mask holds: the scalar truth, and Eigen's vector mask
    const auto check = [&](const simd::LaneMask<S>& m, const P& eigen_mask, auto truth,
                           const char* what) {
        ei::pstore(out, simd::mask_select<S>(m, pa, pb));
        ei::pstore(ref, ei::pselect(eigen_mask, pa, pb));
        for (int j = 0; j < W; ++j) {
            INFO(what << " lane " << j << ": x = " << xb[j] << ", y = " << yb[j]);
            CHECK(out[j] == (truth(xb[j], yb[j]) ? a[j] : b[j]));
            CHECK(same_bits(out[j], ref[j]));
            ++checked;
        }
        ei::pstore(out, simd::mask_indicator<S>(m));
        ei::pstore(ref, ei::pand(eigen_mask, ei::pset1<P>(S(1))));
        for (int j = 0; j < W; ++j) {
            INFO(what << " indicator lane " << j << ": x = " << xb[j] << ", y = " << yb[j]);
            CHECK(same_bits(out[j], truth(xb[j], yb[j]) ? S(1) : S(0)));
            CHECK(same_bits(out[j], ref[j]));
        }
    };
    check(
        simd::mask_lt<S>(px, py), ei::pcmp_lt(px, py), [](S u, S v) { return u < v; }, "lt");
    check(
        simd::mask_le<S>(px, py), ei::pcmp_le(px, py), [](S u, S v) { return u <= v; }, "le");
    check(
        simd::mask_eq<S>(px, py), ei::pcmp_eq(px, py), [](S u, S v) { return u == v; }, "eq");
    check(
        simd::mask_not_nan<S>(px), ei::pcmp_eq(px, px), [](S u, S) { return !std::isnan(u); },
        "not_nan");
    check(
        simd::mask_and<S>(simd::mask_le<S>(px, py), simd::mask_not_nan<S>(py)),
        ei::pand(ei::pcmp_le(px, py), ei::pcmp_eq(py, py)),
        [](S u, S v) { return u <= v && !std::isnan(v); }, "and");
    // the token passes' `keep`: every lane but the equal ones (NaN included), as the vector
    // mask the kernels formed before, NOT(x == y)
    check(
        simd::mask_neq<S>(px, py), ei::pandnot(ei::ptrue(px), ei::pcmp_eq(px, py)),
        [](S u, S v) { return !(u == v); }, "neq");
    check(
        simd::mask_andnot<S>(simd::mask_not_nan<S>(px), simd::mask_lt<S>(px, py)),
        ei::pandnot(ei::pcmp_eq(px, px), ei::pcmp_lt(px, py)),
        [](S u, S v) { return !std::isnan(u) && !(u < v); }, "andnot");
    // zeroing the clear lanes (a loaded row's masked tokens), through `mask_zero_unless` and
    // `load_kept`; any lane set
    {
        const simd::LaneMask<S> m = simd::mask_lt<S>(px, py);
        bool any = false, any_number = false;
        for (int j = 0; j < W; ++j) {
            any = any || xb[j] < yb[j];
            any_number = any_number || !std::isnan(xb[j]);
        }
        CHECK(simd::mask_any<S>(m) == any);
        CHECK(simd::mask_any<S>(simd::mask_not_nan<S>(px)) == any_number);
        ei::pstore(out, simd::mask_zero_unless<S>(m, py));
        for (int j = 0; j < W; ++j) {
            INFO("zero_unless lane " << j << ": x = " << xb[j] << ", y = " << yb[j]);
            CHECK(same_bits(out[j], xb[j] < yb[j] ? yb[j] : S(0)));
        }
        // a row of W − 1 entries: the last lane is past its end and reads as 0
        ei::pstore(out, simd::load_kept<S>(yb, 0, W - 1, m));
        for (int j = 0; j < W; ++j) {
            INFO("load_kept lane " << j << ": x = " << xb[j] << ", y = " << yb[j]);
            CHECK(same_bits(out[j], j < W - 1 && xb[j] < yb[j] ? yb[j] : S(0)));
        }
    }
    // the passes' finiteness flag: a packet is flagged exactly when a lane of x or y is NaN
    // or ±inf
    {
        P bad = ei::pset1<P>(S(0));
        bool non_finite = false;
        for (int j = 0; j < W; ++j)
            non_finite = non_finite || !std::isfinite(xb[j]) || !std::isfinite(yb[j]);
        simd::flag_non_finite<S>(bad, px, py);
        CHECK(simd::any_flagged<S>(bad) == non_finite);
        // and stays flagged after finite packets
        simd::flag_non_finite<S>(bad, pa, pb);
        CHECK(simd::any_flagged<S>(bad) == non_finite);
    }
    // selecting NaN and signed zeros keeps their bits
    ei::pstore(out, simd::mask_select<S>(simd::mask_lt<S>(px, py), px, py));
    for (int j = 0; j < W; ++j) CHECK(same_bits(out[j], xb[j] < yb[j] ? xb[j] : yb[j]));
}

template <class S>
int check_all_pairs() {
    constexpr int W = simd::width<S>;
    const std::vector<S> v = specials<S>();
    std::vector<S> xs, ys;
    for (S x : v)
        for (S y : v) {
            xs.push_back(x);
            ys.push_back(y);
        }
    while (xs.size() % W != 0) {  // whole packets
        xs.push_back(S(0));
        ys.push_back(S(0));
    }
    int checked = 0;
    for (std::size_t k = 0; k < xs.size(); k += W)
        check_lanes<S>(std::vector<S>(xs.begin() + static_cast<std::ptrdiff_t>(k),
                                      xs.begin() + static_cast<std::ptrdiff_t>(k + W)),
                       std::vector<S>(ys.begin() + static_cast<std::ptrdiff_t>(k),
                                      ys.begin() + static_cast<std::ptrdiff_t>(k + W)),
                       checked);
    return checked;
}

}  // namespace

TEST_CASE("lane masks: every special pair as the scalar compare and as Eigen's masks",
          "[core][simd]") {
    // 15 × 15 pairs × 7 masks (padded to whole packets)
    CHECK(check_all_pairs<float>() >= 7 * 225);
    CHECK(check_all_pairs<double>() >= 7 * 225);
}

TEST_CASE("lane masks: AVX-512 builds use mask registers", "[core][simd]") {
#if defined(__AVX512F__)
    CHECK(simd::kMaskRegisters<float>);
    CHECK(simd::kMaskRegisters<double>);
    CHECK(sizeof(simd::LaneMask<float>) == sizeof(std::uint16_t));
#else
    CHECK_FALSE(simd::kMaskRegisters<float>);
    CHECK(sizeof(simd::LaneMask<float>) == sizeof(simd::Packet<float>));
#endif
}
