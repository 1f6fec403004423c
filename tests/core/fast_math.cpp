// The short float exponential and logarithm of the vocabulary sweeps
// (core/simd/fast_math.hpp), against double precision: exp2 over the whole range a softmax
// uses, with the edge cases the distillation kernels rely on (−inf → exact 0, NaN kept,
// underflow to 0, subnormals); log over the float range, near 1, and at 0, inf, NaN.
// Built for the baseline ISA (the generic Eigen packet path) and again for fixed x86-64
// instruction sets (tests/CMakeLists.txt: the AVX2 and AVX-512 paths, where the CPU has them).
#include "support/catch.hpp"

#include <rlpo/core/simd/fast_math.hpp>
#include <rlpo/core/simd/packet.hpp>

#include <Eigen/Core>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <utility>
#include <vector>

namespace ei = Eigen::internal;
using P = ei::packet_traits<float>::type;
constexpr int W = ei::packet_traits<float>::size;

namespace {
int lane_mismatches = 0;
// f of a packet holding x in all lanes (the lanes must agree).
template <class F>
float on_packet(F f, float x) {
    alignas(64) float out[W];
    ei::pstore(out, f(ei::pset1<P>(x)));
    for (int i = 1; i < W; ++i)
        if (!(std::isnan(out[i]) ? std::isnan(out[0]) : out[i] == out[0])) ++lane_mismatches;
    return out[0];
}
float packet_exp2(float t) {
    return on_packet([](const P& v) { return rlpo::detail::pexp2(v); }, t);
}
double rel(float got, double want) { return std::abs(static_cast<double>(got) - want) / want; }
}  // namespace

TEST_CASE("fast exp2: relative error within 2 ulp over the softmax range", "[core][fast_exp]") {
    double worst_packet = 0, worst_scalar = 0;
    // every 1/4099-th step over [−126, 8]: all fractional parts, normal results
    for (int i = -126 * 4099; i <= 8 * 4099; ++i) {
        const float t = static_cast<float>(i) / 4099.0f;
        const double want = std::exp2(static_cast<double>(t));
        worst_packet = std::max(worst_packet, rel(packet_exp2(t), want));
        worst_scalar = std::max(worst_scalar, rel(rlpo::detail::exp2_scalar(t), want));
    }
    INFO("packet " << worst_packet << " scalar " << worst_scalar);
    // float ulp is 2^−23 ≈ 1.19e−7 relative at most; the fit is 2e−9, the rest is rounding
    CHECK(worst_packet < 1.5e-7);
    CHECK(lane_mismatches == 0);
    CHECK(worst_scalar < 1.5e-7);
    // exact at integers (p(0) = 1 exactly)
    for (int n = -126; n <= 20; ++n) {
        CHECK(packet_exp2(static_cast<float>(n)) == std::ldexp(1.0f, n));
        CHECK(rlpo::detail::exp2_scalar(static_cast<float>(n)) == std::ldexp(1.0f, n));
    }
}

TEST_CASE("fast exp2: edge cases", "[core][fast_exp]") {
    const float ninf = -std::numeric_limits<float>::infinity();
    const float nan = std::numeric_limits<float>::quiet_NaN();
    for (float t : {ninf, -1e30f, -1000.0f, -200.0f, -151.0f}) {
        CHECK(packet_exp2(t) == 0.0f);
        CHECK(rlpo::detail::exp2_scalar(t) == 0.0f);
    }
    CHECK(std::isnan(packet_exp2(nan)));
    CHECK(std::isnan(rlpo::detail::exp2_scalar(nan)));
    // overflow to +inf; floor(t) of a huge t is never converted to int (undefined behaviour
    // before the upper clamp: 1e22 does not fit, which the sanitizer build reports)
    for (float t : {129.0f, 200.0f, 1e22f, 1e30f, std::numeric_limits<float>::infinity()}) {
        CHECK(std::isinf(packet_exp2(t)));
        CHECK(std::isinf(rlpo::detail::exp2_scalar(t)));
    }
    CHECK(packet_exp2(0.0f) == 1.0f);
    CHECK(packet_exp2(-0.0f) == 1.0f);
    CHECK(packet_exp2(-1e-30f) == Approx(1.0).epsilon(1e-7));
    // subnormal results: within one subnormal step (2^−149) of the true value
    for (float t : {-127.5f, -135.25f, -140.0f, -145.7f, -149.0f}) {
        const double want = std::exp2(static_cast<double>(t));
        CHECK(std::abs(packet_exp2(t) - want) <= std::ldexp(1.0, -149));
        CHECK(std::abs(rlpo::detail::exp2_scalar(t) - want) <= std::ldexp(1.0, -149));
    }
    // monotone over a fine grid (a softmax keeps the order of its logits)
    float prev = 0.0f;
    int decreasing = 0;
    for (int i = -40000; i <= 0; ++i) {
        const float v = packet_exp2(static_cast<float>(i) / 1000.0f);
        if (v < prev) ++decreasing;
        prev = v;
    }
    CHECK(decreasing == 0);
}

namespace {
float packet_log(float x) {
    return on_packet([](const P& v) { return rlpo::detail::plog(v); }, x);
}
}  // namespace

TEST_CASE("fast log: the cell tables", "[core][fast_log]") {
    // each cell of [1, 2): rcp = 1/centre rounded to float, lnc = −ln(rcp) rounded to float
    using T = rlpo::detail::LogTable;
    for (int i = 0; i < 32; ++i) {
        const double c = 1.0 + (i + 0.5) / 32.0;
        CHECK(T::rcp[i] == static_cast<float>(1.0 / c));
        CHECK(T::lnc[i] == static_cast<float>(-std::log(static_cast<double>(T::rcp[i]))));
    }
    // the polynomial r + r²(a + b r) against ln(1 + r) over the reduced range, in double
    double worst = 0;
    for (int k = -1000; k <= 1000; ++k) {
        const double r = 0.0154 * k / 1000.0;
        const double p = r + r * r * (static_cast<double>(T::a) + static_cast<double>(T::b) * r);
        worst = std::max(worst, std::abs(p - std::log1p(r)));
    }
    CHECK(worst < 3e-9);
    CHECK(static_cast<double>(T::ln2) == Approx(std::log(2.0)).epsilon(1e-7));
}

TEST_CASE("fast log: accuracy over the float range, edge cases", "[core][fast_log]") {
    // error relative to max(1, |ln x|): relative where |ln x| > 1, absolute near x = 1 (the
    // divergences use ln M in differences with inputs of that absolute accuracy)
    double worst = 0, worst_near1 = 0;
    for (int i = 0; i < 2000000; ++i) {
        // log-uniform over [2^−126, 2^100]: all mantissas and exponents of normal floats
        const double u = -126.0 + 226.0 * (static_cast<double>(i) + 0.5) / 2000000.0;
        const float x = static_cast<float>(std::exp2(u));
        if (!(x > 0)) continue;
        const double want = std::log(static_cast<double>(x));
        const double got = packet_log(x);
        worst = std::max(worst, std::abs(got - want) / std::max(1.0, std::abs(want)));
    }
    for (int i = -100000; i <= 100000; ++i) {
        const float x = 1.0f + static_cast<float>(i) * 3e-6f;
        const double want = std::log(static_cast<double>(x));
        worst_near1 = std::max(worst_near1, std::abs(packet_log(x) - want));
    }
    INFO("relative to max(1, |ln x|) " << worst << ", absolute near 1 " << worst_near1);
    CHECK(worst < 1.5e-7);
    CHECK(worst_near1 < 1e-7);
    CHECK(lane_mismatches == 0);
    CHECK(std::abs(packet_log(1.0f)) < 1e-8);
    CHECK(packet_log(2.0f) == Approx(std::log(2.0)).epsilon(1e-7));
    CHECK(packet_log(0.0f) == -std::numeric_limits<float>::infinity());
    CHECK(packet_log(std::numeric_limits<float>::infinity()) ==
          std::numeric_limits<float>::infinity());
    CHECK(std::isnan(packet_log(std::numeric_limits<float>::quiet_NaN())));
#if defined(__AVX512F__)
    // subnormal arguments are exact on the AVX-512 path (Eigen's generic plog clamps them)
    for (float x : {std::numeric_limits<float>::denorm_min(), 3e-42f, 1e-40f, 1.1e-38f})
        CHECK(packet_log(x) == Approx(std::log(static_cast<double>(x))).epsilon(1e-7));
#endif
}

namespace {
using PD = ei::packet_traits<double>::type;
constexpr int WD = ei::packet_traits<double>::size;

/// xorshift64*: random bits, and doubles uniform in [0, 1).
struct Bits {
    std::uint64_t state;
    std::uint64_t operator()() {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        return state * 2685821657736338717ULL;
    }
    double uniform() { return static_cast<double>((*this)() >> 11) * 0x1.0p-53; }
};

/// rlpo's packet function `ours` against Eigen's `theirs` on every x (padded to whole
/// packets): how many results differ in any bit (the first few are reported), and the worst
/// relative error against the scalar `ref` over the x that `use` accepts.
template <class Ours, class Theirs, class Ref, class Use>
std::pair<int, double> against_eigen(std::vector<double> xs, Ours ours, Theirs theirs, Ref ref,
                                     Use use) {
    while (xs.size() % WD) xs.push_back(0.5);
    int differ = 0;
    double worst = 0;
    for (std::size_t k = 0; k < xs.size(); k += WD) {
        const PD x = ei::ploadu<PD>(xs.data() + k);
        alignas(64) double a[WD], b[WD];
        ei::pstore(a, ours(x));
        ei::pstore(b, theirs(x));
        for (int j = 0; j < WD; ++j) {
            const double xj = xs[k + j];
            if (std::memcmp(&a[j], &b[j], sizeof(double)) != 0 && ++differ <= 5)
                WARN("x = " << xj << ": " << a[j] << " vs Eigen " << b[j]);
            if (use(xj)) worst = std::max(worst, std::abs(a[j] - ref(xj)) / std::abs(ref(xj)));
        }
    }
    return {differ, worst};
}

/// f on a packet holding the first WD entries of `in` (cycled).
template <class F>
std::vector<double> on_lanes(F f, std::initializer_list<double> in) {
    std::vector<double> x;
    while (static_cast<int>(x.size()) < WD)
        x.push_back(*(in.begin() + static_cast<std::ptrdiff_t>(x.size() % in.size())));
    std::vector<double> out(static_cast<std::size_t>(WD));
    ei::pstoreu(out.data(), f(ei::ploadu<PD>(x.data())));
    return out;
}
}  // namespace

// simd::pexp on double packets (on AVX-512: avx512::exp, Eigen's operations with the final
// 2^n scaling in one vscalefpd) against Eigen's own pexp, bit for bit, and against std::exp:
// random arguments over Eigen's whole clamp range, the subnormal results below −708.4, the
// clamps and the special values. Without AVX-512, simd::pexp is Eigen's pexp itself.
TEST_CASE("double exp: Eigen's pexp bit for bit, within 2 ulp of std::exp", "[core][fast_exp]") {
    Bits rng{12345};
    std::vector<double> xs;
    for (int i = 0; i < 400000; ++i) xs.push_back(-720.0 + 1440.0 * rng.uniform());
    for (int i = 0; i < 100000; ++i) xs.push_back(-2.0 + 4.0 * rng.uniform());
    for (int i = 0; i < 100000; ++i) xs.push_back(-745.5 + 38.0 * rng.uniform());  // subnormal
    const double inf = std::numeric_limits<double>::infinity();
    for (double x : {0.0, -0.0, 1.0, -1.0, 709.78, 709.784, 709.79, -709.784, -709.79, -745.0,
                     -746.0, 1e300, -1e300, inf, -inf, std::numeric_limits<double>::quiet_NaN(),
                     std::numeric_limits<double>::denorm_min(), 0.6931471805599453})
        xs.push_back(x);
    const auto [differ, worst] = against_eigen(
        xs, [](const PD& x) { return rlpo::detail::simd::pexp(x); },
        [](const PD& x) { return ei::pexp(x); }, [](double x) { return std::exp(x); },
        [](double x) {
            const double e = std::exp(x);
            return std::isfinite(x) && e >= 0x1.0p-1022 && e <= 1e308;
        });
    CHECK(differ == 0);
    INFO("worst relative error " << worst);
    CHECK(worst < 4.5e-16);  // 2 ulp: a double ulp is at most 2^−52 ≈ 2.2e−16 relative
    const auto out = on_lanes([](const PD& x) { return rlpo::detail::simd::pexp(x); },
                              {0.0, inf, std::numeric_limits<double>::quiet_NaN(), -1e300});
    CHECK(out[0] == 1.0);
    if (WD > 1) CHECK(out[1] == inf);
    if (WD > 2) CHECK(std::isnan(out[2]));
    if (WD > 3) CHECK(out[3] >= 0.0);
    if (WD > 3) CHECK(out[3] < 1e-300);
}

// rlpo::detail::plog on double packets (on AVX-512: avx512::log, Eigen's operations with the
// significand / exponent split in vgetmantpd / vgetexppd) against Eigen's own plog, bit for
// bit, and against std::log: uniform and log-uniform arguments down to the subnormals, random
// bit patterns (negative, NaN, ±inf), the special values. Without AVX-512 it is Eigen's plog.
TEST_CASE("double log: Eigen's plog bit for bit, within 2 ulp of std::log", "[core][fast_log]") {
    Bits rng{777};
    std::vector<double> xs;
    for (int i = 0; i < 200000; ++i) xs.push_back(rng.uniform());
    for (int i = 0; i < 200000; ++i) xs.push_back(std::exp(-745.0 * rng.uniform()));
    for (int i = 0; i < 100000; ++i) xs.push_back(0.5 + rng.uniform());
    for (int i = 0; i < 100000; ++i) {
        const std::uint64_t b = rng();
        double x;
        std::memcpy(&x, &b, sizeof x);
        xs.push_back(x);
    }
    const double inf = std::numeric_limits<double>::infinity();
    for (double x :
         {0.0, -0.0, 1.0, -1.0, 2.0, 0.5, 0.7071067811865476, 0.70710678118654746,
          std::numeric_limits<double>::min(), std::numeric_limits<double>::denorm_min(),
          std::numeric_limits<double>::max(), inf, -inf, std::numeric_limits<double>::quiet_NaN()})
        xs.push_back(x);
    // normal arguments away from 1 (near 1, ln x → 0 and the error is absolute)
    const auto [differ, worst] = against_eigen(
        xs, [](const PD& x) { return rlpo::detail::plog(x); },
        [](const PD& x) { return ei::plog(x); }, [](double x) { return std::log(x); },
        [](double x) {
            return x >= std::numeric_limits<double>::min() && x <= 1e308 && std::abs(x - 1) > 0.1;
        });
    CHECK(differ == 0);
    INFO("worst relative error " << worst);
    CHECK(worst < 4.5e-16);  // 2 ulp
    const auto out =
        on_lanes([](const PD& x) { return rlpo::detail::plog(x); }, {0.0, inf, -1.0, 1.0});
    CHECK(out[0] == -inf);
    if (WD > 1) CHECK(out[1] == inf);
    if (WD > 2) CHECK(std::isnan(out[2]));
    if (WD > 3) CHECK(out[3] == 0.0);
}
