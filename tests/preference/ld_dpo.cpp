// LD-DPO's length-desensitised sequence log-probs (TRL `ld_alpha`), four ways.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/torch_reference.hpp"

#include <rlpo/preference/dpo.hpp>
#include <rlpo/preference/ld_dpo.hpp>
#include <rlpo/testing/random.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace {

using rlpo::Index;
using rlpo::Mat;
using rlpo::preference::ld_logps;
using rlpo::preference::ld_logps_vjp;
using Vec = Eigen::VectorXd;

/// [2B, T] token log-probs and a completion mask: a prompt of 0..3 masked tokens, a completion
/// of 0..T−4 tokens (one interior 0 allowed), then padding.
struct Tokens {
    Mat<double> logp, mask;
};
Tokens random_tokens(std::uint64_t seed, Index B, Index T) {
    rlpo::testing::Generator gen(seed);
    Tokens x;
    x.logp.resize(2 * B, T);
    x.mask = Mat<double>::Zero(2 * B, T);
    for (Index i = 0; i < 2 * B; ++i) {
        const Index start = static_cast<Index>(gen.uniform(0.0, 3.99));
        const Index n = static_cast<Index>(gen.uniform(0.0, static_cast<double>(T - 3)));
        for (Index t = start; t < std::min(T, start + n); ++t) x.mask(i, t) = 1;
        if (n > 4 && gen.uniform(0.0, 1.0) < 0.3) x.mask(i, start + 2) = 0;
        for (Index t = 0; t < T; ++t) x.logp(i, t) = -gen.uniform(0.0, 6.0);
    }
    return x;
}

}  // namespace

TEST_CASE("ld_dpo: the VJP equals finite differences of <g, ld_logps>", "[preference][ld][fd]") {
    for (double alpha : {0.0, 0.3, 1.0}) {
        INFO("alpha " << alpha);
        const Tokens x = random_tokens(3 + static_cast<std::uint64_t>(alpha * 10), 4, 9);
        rlpo::testing::Generator gen(11);
        Mat<double> g(2, 4);
        for (Index k = 0; k < 8; ++k) g.data()[k] = gen.uniform(-2.0, 2.0);
        const Mat<double> tg = ld_logps_vjp(g, x.mask, alpha);
        rlpo_test::require_fd_gradient(
            [&](const Mat<double>& l) {
                return (ld_logps(l, x.mask, alpha).array() * g.array()).sum();
            },
            x.logp, tg);
    }
}

TEMPLATE_TEST_CASE("ld_dpo: agrees with the PyTorch reference (TRL's cumsum masks)",
                   "[preference][ld][torch]", float, double) {
    using S = TestType;
    rlpo_test::TorchReference ref("preference_reffree",
                                  std::string("ld_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        Mat<S> logp;
        Mat<double> mask, g;
        double alpha;
    };
    std::vector<Run> runs;
    std::uint64_t seed = 40;
    for (double alpha : {0.0, 0.25, 0.8, 1.0})
        for (Index T : {1, 7, 30}) {
            const Tokens x = random_tokens(seed++, 5, std::max<Index>(T, 4));
            rlpo::testing::Generator gen(seed++);
            Mat<double> g(2, 5);
            for (Index k = 0; k < 10; ++k) g.data()[k] = gen.uniform(-2.0, 2.0);
            Run r{x.logp.cast<S>(), x.mask, g, alpha};
            ref.add<S>("ld_logps")
                .in("token_logps", Mat<double>(r.logp.template cast<double>()))
                .in("mask", x.mask)
                .in("g", g)
                .p("ld_alpha", alpha);
            runs.push_back(std::move(r));
        }
    ref.run();
    const double tol = sizeof(S) == 4 ? 1e-5 : 1e-12;
    for (std::size_t k = 0; k < runs.size(); ++k) {
        INFO("case " << k << " alpha " << runs[k].alpha);
        const auto& r = runs[k];
        CHECK(rlpo_test::max_rel_err(ld_logps(r.logp, r.mask, r.alpha), ref.out(k, "logps")) < tol);
        CHECK(rlpo_test::max_rel_err(ld_logps_vjp(r.g.template cast<S>().eval(), r.mask, r.alpha),
                                     ref.out(k, "token_grad")) < tol);
    }
}

TEST_CASE("ld_dpo: properties", "[preference][ld][properties]") {
    const Tokens x = random_tokens(5, 6, 12);
    SECTION("α = 1 gives the plain masked sums") {
        const Mat<double> s = ld_logps(x.logp, x.mask, 1.0);
        for (Index k = 0; k < 6; ++k) {
            CHECK(s(0, k) == Approx((x.logp.row(k).array() * x.mask.row(k).array()).sum()));
            CHECK(s(1, k) == Approx((x.logp.row(6 + k).array() * x.mask.row(6 + k).array()).sum()));
        }
    }
    SECTION("hand example: lengths 3 and 5, α = 0.5: the rejected tail (tokens 4, 5) is halved") {
        Mat<double> l(2, 6), m(2, 6);
        l << -1, -2, -3, -4, -5, -6, -1, -2, -3, -4, -5, -6;
        m << 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 0;
        const Mat<double> s = ld_logps(l, m, 0.5);
        CHECK(s(0, 0) == -9.0);                         // −2 −3 −4, all shared
        CHECK(s(1, 0) == -1 - 2 - 3 + 0.5 * (-4 - 5));  // 3 shared, 2 in the tail
        Mat<double> g(2, 1);
        g << 2.0, -1.0;
        const Mat<double> tg = ld_logps_vjp(g, m, 0.5);
        Mat<double> want(2, 6);
        want << 0, 2, 2, 2, 0, 0, -1, -1, -1, -0.5, -0.5, 0;
        CHECK(tg == want);
    }
    SECTION("a non-finite log-prob under mask 0 is ignored, as TRL zeroes it") {
        Tokens y = x;
        Index i = 0, t = 0;
        while (y.mask(i, t) != 0) ++t;
        y.logp(i, t) = -std::numeric_limits<double>::infinity();
        CHECK(ld_logps(y.logp, y.mask, 0.4) == ld_logps(x.logp, x.mask, 0.4));
    }
    SECTION("feeds dpo_loss, and the chain rule gives the token gradient") {
        const Mat<double> s = ld_logps(x.logp, x.mask, 0.5);
        const Vec ref_c = Vec::Constant(6, -20.0), ref_r = Vec::Constant(6, -20.0);
        const auto r = rlpo::preference::dpo_loss(s.row(0), s.row(1), ref_c, ref_r);
        const Mat<double> tg = ld_logps_vjp(r.grad, x.mask, 0.5);
        rlpo_test::require_fd_gradient(
            [&](const Mat<double>& l) {
                const Mat<double> q = ld_logps(l, x.mask, 0.5);
                return rlpo::preference::dpo_loss(q.row(0), q.row(1), ref_c, ref_r).value;
            },
            x.logp, tg);
    }
}

TEST_CASE("ld_dpo: bad input gives the documented error", "[preference][ld][bad-input]") {
    const Mat<double> l = Mat<double>::Constant(4, 3, -1.0), m = Mat<double>::Ones(4, 3);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        ld_logps(l, m, 1.5), "preference::ld_logps(): ld_alpha: must be in [0, 1], given 1.5");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(ld_logps(l, m, -0.1), "ld_alpha: must be in [0, 1]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(ld_logps(l, m, std::numeric_limits<double>::quiet_NaN()),
                                    "ld_alpha: must be in [0, 1]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(ld_logps(Mat<double>(Mat<double>::Ones(4, 2)), m, 0.5),
                                    "token_logps: expected the mask's shape [4, 3], given [4, 2]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        ld_logps(Mat<double>(l.topRows(3)), Mat<double>(m.topRows(3)), 0.5),
        "mask: expected 2B rows ([chosen; rejected]), given 3");
    Mat<double> bm = m;
    bm(1, 2) = 0.5;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(ld_logps(l, bm, 0.5),
                                    "mask: entries must be 0 or 1, given 0.5 at [1, 2]");
    Mat<double> bl = l;
    bl(2, 1) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(ld_logps(bl, m, 0.5),
                                    "token_logps: non-finite value nan at [2, 1] under mask 1");
    const Mat<double> g = Mat<double>::Ones(2, 2);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(ld_logps_vjp(Mat<double>(Mat<double>::Ones(2, 3)), m, 0.5),
                                    "preference::ld_logps_vjp(): grad: expected shape [2, 2]");
    Mat<double> bg = g;
    bg(1, 0) = std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(ld_logps_vjp(bg, m, 0.5),
                                    "grad: non-finite value inf at [1, 0]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(ld_logps_vjp(g, m, 2.0), "ld_alpha: must be in [0, 1]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(ld_logps_vjp(g, bm, 0.5), "mask: entries must be 0 or 1");
}
