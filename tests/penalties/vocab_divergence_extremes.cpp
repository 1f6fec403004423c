// Full-vocabulary divergences at bad and extreme input: +inf logits, an empty vocabulary,
// and JS values at wide logit ranges against a long double reference.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"

#include <rlpo/penalties/vocab_divergence.hpp>
#include <rlpo/testing/random.hpp>

#include <cmath>
#include <limits>

using rlpo::Index;
using rlpo::Mat;
using rlpo::penalties::VocabDivergence;
using rlpo::penalties::VocabDivergenceOptions;
namespace rt = rlpo::testing;

static const VocabDivergence kDivs[] = {
    VocabDivergence::ReverseKL, VocabDivergence::ForwardKL, VocabDivergence::ChiSquared,
    VocabDivergence::TotalVariation, VocabDivergence::JensenShannon};

static VocabDivergenceOptions make(VocabDivergence d) {
    VocabDivergenceOptions o;
    o.divergence = d;
    return o;
}

TEMPLATE_TEST_CASE("vocab_divergence: a +inf logit is rejected with its position",
                   "[penalties][vocab_divergence][bad_input]", float, double) {
    using S = TestType;
    rt::Generator gen(31);
    // (151936: rows long enough for the row split and JSD's lean sweep)
    for (Index V : {Index(7), Index(300), Index(5000), Index(151936)}) {
        const Mat<S> z = gen.logits(4, V).template cast<S>(),
                     zr = gen.logits(4, V).template cast<S>();
        const Mat<S> mask = Mat<S>::Ones(2, 2);
        const S pinf = std::numeric_limits<S>::infinity();
        for (VocabDivergence d : kDivs) {
            INFO("V " << V << " divergence " << rlpo::penalties::to_string(d));
            Mat<S> a = z, b = zr;
            a(2, 3) = pinf;
            RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::vocab_divergence(a, zr, mask, make(d)),
                                            "logits: +inf at [2, 3]");
            b(1, 5) = pinf;
            RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::vocab_divergence(z, b, mask, make(d)),
                                            "ref_logits: +inf at [1, 5]");
            // +inf in both at one entry, and next to a −inf
            a(2, 3) = pinf;
            b = zr;
            b(2, 3) = pinf;
            b(2, V - 1) = -pinf;
            RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::vocab_divergence(a, b, mask, make(d)),
                                            "+inf at [2, 3]");
            // at a large temperature (1/τ · inf is still inf)
            VocabDivergenceOptions o = make(d);
            o.temperature = 1e30;
            a = z;
            a(3, V - 1) = pinf;
            RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::vocab_divergence(a, zr, mask, o),
                                            "logits: +inf at [3, ");
        }
    }
}

TEST_CASE("vocab_divergence: an empty vocabulary is rejected",
          "[penalties][vocab_divergence][bad_input]") {
    const Mat<double> z(4, 0), mask = Mat<double>::Ones(2, 2);
    for (VocabDivergence d : kDivs)
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::vocab_divergence(z, z, mask, make(d)),
                                        "logits: V = 0");
}

// A Normalizer count near 0 makes the row factor 1e300, beyond float's range: the float
// gradient would be inf or NaN. It is rlpo::numerical_error naming the row factor; inside the
// range (double, 1e302: a checked factor) the gradient scales exactly with 1/num_tokens.
TEST_CASE("vocab_divergence: a row factor beyond the type's range is numerical_error",
          "[penalties][vocab_divergence][bad_input]") {
    rt::Generator gen(8);
    const Mat<double> zd = gen.logits(4, 50), rd = gen.logits(4, 50);
    const Mat<double> md = Mat<double>::Ones(2, 2);
    const Mat<float> z = zd.cast<float>(), r = rd.cast<float>(), m = md.cast<float>();
    rlpo::Normalizer tiny, four, big;
    tiny.num_tokens = 1e-300;
    four.num_tokens = 4.0;
    big.num_tokens = 1e-302;
    for (VocabDivergence d : kDivs) {
        INFO(rlpo::penalties::to_string(d));
        RLPO_REQUIRE_NUMERICAL_ERROR(rlpo::penalties::vocab_divergence(z, r, m, make(d), tiny),
                                     "row factor");
        const auto r4 = rlpo::penalties::vocab_divergence(zd, rd, md, make(d), four);
        const auto rb = rlpo::penalties::vocab_divergence(zd, rd, md, make(d), big);
        CHECK(rlpo_test::max_rel_err(rb.grad, r4.grad * (4.0 / 1e-302)) < 1e-12);
    }
}
