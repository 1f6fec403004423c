// Entropy bonus at extreme logits: shift invariance at large offsets (the entropy is a
// function of the differences of the logits), ties at 1e17, and no per-call heap traffic
// proportional to the input. Expected values come from a long double reference.
#include "support/alloc_counter.hpp"
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/reference_ld.hpp"

#include <rlpo/regularizers/entropy.hpp>
#include <rlpo/testing/random.hpp>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <new>
#include <vector>

namespace alloc = rlpo_test::alloc;

using rlpo::Index;
using rlpo::Mat;
namespace rr = rlpo::regularizers;
namespace rt = rlpo::testing;

namespace {
// mean H of the rows in long double (support/reference_ld.hpp)
template <class S>
long double ref_entropy_mean(const Mat<S>& z) {
    long double total = 0;
    for (Index n = 0; n < z.rows(); ++n) total += rlpo_test::entropy_ld(rlpo_test::row_ld(z, n));
    return total / static_cast<long double>(z.rows());
}
}  // namespace

TEMPLATE_TEST_CASE("entropy_bonus: shift invariant at large offsets", "[regularizers][entropy]",
                   float, double) {
    using S = TestType;
    const Index B = 2, T = 3, V = 40;
    const Mat<S> mask = Mat<S>::Ones(B, T);
    for (double offset : {1e6, 1e17, -1e17, 1e30}) {
        const S off = static_cast<S>(offset);
        // the logits' unit: one ulp of the offset, so that base + offset is exact
        const S u =
            std::nextafter(std::abs(off), std::numeric_limits<S>::infinity()) - std::abs(off);
        rt::Generator gen(21);
        Mat<S> base = (gen.logits(B * T, V) * 3.0).array().round().template cast<S>() * u;
        base(0, 0) = base(0, 1) = base.row(0).maxCoeff() + u;  // a tie at the maximum
        const Mat<S> z = (base.array() + off).matrix();
        REQUIRE(((z.array() - off) == base.array()).all());
        const auto r0 = rr::entropy_bonus(base, mask);
        const auto r1 = rr::entropy_bonus(z, mask);
        const double ref = static_cast<double>(ref_entropy_mean(base));
        INFO("offset " << offset << " H(base) " << r0.value << " H(shifted) " << r1.value << " ref "
                       << ref);
        const double tol = std::is_same<S, double>::value ? 1e-12 : 1e-6;
        CHECK(std::abs(r1.value - ref) <= tol * std::max(1.0, std::abs(ref)));
        CHECK(std::abs(r0.value - ref) <= tol * std::max(1.0, std::abs(ref)));
        CHECK(r1.value >= 0);
        const double gerr = (r1.grad - r0.grad).cwiseAbs().maxCoeff();
        CHECK(gerr <= tol);
    }
    // two tied logits at 1e17 and the rest far below: H = log 2
    Mat<S> z = Mat<S>::Constant(B * T, V, static_cast<S>(-1e30));
    z.col(3).setConstant(static_cast<S>(1e17));
    z.col(7).setConstant(static_cast<S>(1e17));
    const auto r = rr::entropy_bonus(z, mask);
    CHECK(std::abs(r.value - std::log(2.0)) <= 1e-6);
}

TEST_CASE("entropy_bonus: no heap traffic proportional to the input", "[regularizers][entropy]") {
    rt::Generator gen(4);
    const Index B = 16, T = 32, V = 4096;
    const Mat<float> z = gen.logits(B * T, V).cast<float>();
    const Mat<float> mask = Mat<float>::Ones(B, T);
    Mat<float> grad(B * T, V);
    (void)rr::entropy_bonus(z, mask, rlpo::Normalizer{}, rlpo::write_to<float>(grad));  // warm up
    alloc::bytes = 0;
    alloc::calls = 0;
    alloc::counting = true;
    (void)rr::entropy_bonus(z, mask, rlpo::Normalizer{}, rlpo::write_to<float>(grad));
    alloc::counting = false;
    INFO("bytes " << alloc::bytes.load() << " allocations " << alloc::calls.load());
    // the per-sequence partial sums and the row weights only (B entries each), nothing of V
    CHECK(alloc::bytes.load() < 64 * 1024);
}

TEST_CASE("entropy_bonus: an empty vocabulary is rejected", "[regularizers][entropy]") {
    const Mat<double> z(6, 0), mask = Mat<double>::Ones(2, 3);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::entropy_bonus(z, mask), "logits: V = 0");
}

// A Normalizer count near 0 makes the row factor c·m = 1e300, beyond float's range: the float
// gradient would be inf or NaN (inf·0). It is rlpo::numerical_error naming the row factor. A
// factor large enough to be checked but inside the range (double, 1e302) is exact: the
// gradient scales with 1/num_tokens.
TEST_CASE("entropy bonus: a row factor beyond the type's range is numerical_error",
          "[regularizers][entropy][bad_input]") {
    rt::Generator gen(5);
    const Mat<double> zd = gen.logits(6, 30);
    const Mat<double> md = Mat<double>::Ones(2, 3);
    rlpo::Normalizer tiny, six;
    tiny.num_tokens = 1e-300;
    six.num_tokens = 6.0;
    RLPO_REQUIRE_NUMERICAL_ERROR(
        rr::entropy_bonus(Mat<float>(zd.cast<float>()), Mat<float>(md.cast<float>()), tiny),
        "row factor");
    CHECK(
        std::isfinite(rr::entropy_bonus(Mat<float>(zd.cast<float>()), Mat<float>(md.cast<float>()),
                                        tiny, rlpo::no_grad<float>())
                          .value));
    // a +inf logit later in the same sequence outranks the overflow (invalid_argument)
    Mat<float> zi = zd.cast<float>();
    zi(2, 4) = std::numeric_limits<float>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::entropy_bonus(zi, Mat<float>(md.cast<float>()), tiny),
                                    "[2, 4]");
    rlpo::Normalizer big;
    big.num_tokens = 1e-302;
    const auto r6 = rr::entropy_bonus(zd, md, six), rb = rr::entropy_bonus(zd, md, big);
    CHECK(rlpo_test::max_rel_err(rb.grad, r6.grad * (6.0 / 1e-302)) < 1e-12);
}
