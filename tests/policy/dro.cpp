// DRO, four ways.
#include "policy/policy_support.hpp"

#include <rlpo/policy/dro.hpp>

using namespace policy_test;
using rlpo::policy::DROOptions;

namespace {
std::vector<DROOptions> option_sets() { return {DROOptions{}, DROOptions{0.0}, DROOptions{2.5}}; }
const auto call = [](const auto& lp, const auto& old, const auto& a, const auto& m,
                     const DROOptions& o, const rlpo::Normalizer& n, const auto& out,
                     const auto& w) { return rlpo::policy::dro(lp, old, a, m, o, n, out, w); };
}  // namespace

TEST_CASE("dro: gradient equals central finite differences", "[policy][dro][fd]") {
    const Batch b = spread_batch(17, 8, 16, 0.15, false);
    for (const auto& o : option_sets())
        for (Aggregation mode : rlpo_test::all_modes()) {
            const rlpo::Normalizer n = norm_for(mode, 2);
            rlpo::policy::TokenWeights<double> w;
            if (mode == Aggregation::TokenMean) w.emplace(b.w);
            const auto r = rlpo::policy::dro(b.logp, b.old, b.adv, b.mask, o, n, {}, w);
            rlpo_test::require_fd_gradient(
                [&](const Mat<double>& x) {
                    return rlpo::policy::dro(x, b.old, b.adv, b.mask, o, n, rlpo::no_grad<double>(),
                                             w)
                        .value;
                },
                b.logp, r.grad, 1e-6, 1e-9);
        }
}

TEMPLATE_TEST_CASE("dro: agrees with the PyTorch autograd reference", "[policy][dro][torch]", float,
                   double) {
    torch_suite<TestType>(
        "dro", "dro", 1100, option_sets(), call,
        [](rlpo_test::TorchReference::Case& c, const DROOptions& o) { c.p("beta", o.beta); },
        {"ppo_kl"}, [](const DROOptions&, Aggregation m) { return m; }, 0.15, false);
}

TEST_CASE("dro: properties", "[policy][dro][properties]") {
    const Batch b = spread_batch(18, 8, 16, 0.15, false);
    SECTION("at lr = 0 DRO is REINFORCE: gradient −A, the penalty vanishes with its gradient") {
        rlpo::Normalizer n;
        n.mode = Aggregation::TokenSum;
        const auto r = rlpo::policy::dro(b.logp, b.logp, b.adv, b.mask, DROOptions{}, n);
        CHECK(rlpo_test::max_rel_err(r.grad, Mat<double>(-(b.adv.array() * b.mask.array()))) <
              1e-15);
    }
    SECTION("the gradient is that of the squared DRO loss (A − β·lr)²/(2β) w.r.t. logp") {
        const double beta = 0.7;
        rlpo::Normalizer n;
        n.mode = Aggregation::TokenSum;
        const auto r = rlpo::policy::dro(b.logp, b.old, b.adv, b.mask, DROOptions{beta}, n);
        Mat<double> sq = Mat<double>::Zero(b.logp.rows(), b.logp.cols());
        for (Index k = 0; k < sq.size(); ++k) {
            const double lr = b.logp.data()[k] - b.old.data()[k];
            sq.data()[k] =
                b.mask.data()[k] * -(b.adv.data()[k] - beta * lr);  // ∂/∂logp of (A − β lr)²/(2β)
        }
        CHECK(rlpo_test::max_rel_err(r.grad, sq) < 1e-13);
    }
    SECTION("micro-batches with global counts add up to the whole batch") {
        require_micro_batch_invariance(
            [&](Index r0, Index nr, const rlpo::Normalizer& n) {
                return rlpo::policy::dro(b.logp.middleRows(r0, nr), b.old.middleRows(r0, nr),
                                         b.adv.middleRows(r0, nr), b.mask.middleRows(r0, nr),
                                         DROOptions{}, n);
            },
            b.mask);
    }
}

TEST_CASE("dro: bad input gives the documented error", "[policy][dro][bad-input]") {
    const Mat<double> x = Mat<double>::Zero(2, 3), m = Mat<double>::Ones(2, 3),
                      y = Mat<double>::Zero(2, 4);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::policy::dro(x, y, x, m),
        "policy::dro(): old_logp: expected shape [2, 3] (same as logp), given [2, 4]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::dro(x, x, x, y), "mask: expected shape");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::dro(x, x, x, m, DROOptions{-0.1}),
                                    "beta: must be >= 0");
    Mat<double> bad = x;
    bad(0, 1) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::dro(x, x, bad, m), "advantages: NaN at [0, 1]");
    const Mat<double> ninf = Mat<double>::Constant(2, 3, -std::numeric_limits<double>::infinity());
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::dro(ninf, ninf, m, m),
                                    "non-finite loss or gradient");
    const auto empty = rlpo::policy::dro(x, x, x, Mat<double>::Zero(2, 3));
    CHECK(empty.value == 0.0);
}
