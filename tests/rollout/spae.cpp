// SPAE (rollout/spae.hpp): the reference written from the paper's formulas, closed forms of
// f and the potential, and bad input.
#include "rollout/common.hpp"
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/torch_reference.hpp"

#include <rlpo/rollout/spae.hpp>

#include <cmath>
#include <vector>

using rlpo::Index;
using rlpo::Mat;
using rlpo::Vec;
namespace rr = rlpo::rollout;

namespace {
/// Steps of random lengths covering a prefix of each row (the tail: a summary outside every
/// step, then padding), potentials from random Acc/Conf, some of them saturated.
struct StepCase {
    Mat<double> mask, potentials, step_mask, token_step;
};
StepCase steps_for(rlpo::testing::Generator& gen, Index B, Index T, Index K) {
    StepCase c{Mat<double>::Zero(B, T), Mat<double>::Zero(B, K), Mat<double>::Zero(B, K),
               Mat<double>::Constant(B, T, -1.0)};
    for (Index i = 0; i < B; ++i) {
        const Index n_steps = gen.integer(1, K);
        Index t = 0;
        for (Index k = 0; k < n_steps && t < T; ++k) {
            c.step_mask(i, k) = 1;
            const double acc = gen.uniform() < 0.3 ? 1.0 : gen.uniform(), conf = gen.uniform();
            c.potentials(i, k) = rr::step_potential(acc, conf);
            const Index len = gen.integer(1, 4);
            for (Index j = 0; j < len && t < T; ++j, ++t)
                c.token_step(i, t) = static_cast<double>(k);
        }
        const Index summary = gen.integer(0, 2);
        const Index end = std::min(T, t + summary);
        c.mask.row(i).head(end).setOnes();
    }
    return c;
}
}  // namespace

TEST_CASE("spae: agrees with the reference written from the paper's formulas",
          "[rollout][spae][torch]") {
    rlpo_test::TorchReference tr("rollout", "spae");
    struct Run {
        rollout_test::GroupedBatch b;
        StepCase c;
        rr::SPAEOptions o;
    };
    std::vector<Run> runs;
    for (int rep = 0; rep < 3; ++rep) {
        rlpo::testing::Generator gen(700 + rep);
        Run r{rollout_test::grouped_batch(710 + rep), {}, {}};
        r.c = steps_for(gen, r.b.n(), 16, 6);
        if (rep == 1) r.o.alpha = 0.2, r.o.xi = 1.0, r.o.saturation = 0.5;
        if (rep == 2) r.o.alpha = 1.0, r.o.xi = 0.0;
        auto& k = tr.add<double>("spae");
        k.in("scores", Mat<double>(r.b.scores))
            .in("group_ids", r.b.ids)
            .in("mask", r.c.mask)
            .in("potentials", r.c.potentials)
            .in("step_mask", r.c.step_mask)
            .in("token_step", r.c.token_step);
        k.p("alpha", r.o.alpha).p("xi", r.o.xi).p("saturation", r.o.saturation);
        runs.push_back(r);
    }
    tr.run();
    for (std::size_t k = 0; k < runs.size(); ++k) {
        INFO("case " << k);
        const auto& r = runs[k];
        const Mat<double> a = rr::spae_advantages(r.b.scores, r.c.potentials, r.c.step_mask,
                                                  r.c.token_step, r.c.mask, r.b.groups, r.o);
        CHECK(rlpo_test::max_rel_err(a, tr.out(k, "advantages")) < 1e-12);
    }
}

TEST_CASE("spae: closed forms", "[rollout][spae][properties]") {
    // the potential's corners: right and sure 1, wrong and sure −1, wrong and unsure 0
    CHECK(rr::step_potential(1, 1) == 1.0);
    CHECK(rr::step_potential(0, 1) == -1.0);
    CHECK(rr::step_potential(0, 0) == 0.0);
    CHECK(rr::step_potential(1, 0) == 0.5);
    // one group of two responses, R = 1 and 0 (Â = ±½); response 0 has three steps with
    // Φ = 0.95, 0.95, 0.2 (two saturated before step 2), response 1 one step; ξ = 0 leaves
    // Â·f: f = 1, 1 − α(1 − e^{−1}), 1 − α(1 − e^{−2}); whitening is checked by the reference
    Vec<double> R(2);
    R << 1, 0;
    Mat<double> phi(2, 3), sm(2, 3), ts(2, 4), mask(2, 4);
    phi << 0.95, 0.95, 0.2, 0.1, 0, 0;
    sm << 1, 1, 1, 1, 0, 0;
    ts << 0, 1, 2, -1, 0, 0, -1, -1;
    mask << 1, 1, 1, 1, 1, 1, 1, 0;
    rr::SPAEOptions o;
    o.xi = 0;
    const Mat<double> a = rr::spae_advantages(R, phi, sm, ts, mask, rr::Groups::equal(2, 2), o);
    // the whitening is affine, so ratios of differences are those before it:
    // (Â·f1 − Â) / (Â − (−Â)) = (f1 − 1) / 2 for Â = ½
    const double f1 = 1 - 0.5 * (1 - std::exp(-1.0)), f2 = 1 - 0.5 * (1 - std::exp(-2.0));
    const double unit = a(0, 0) - a(1, 0);
    CHECK((a(0, 1) - a(0, 0)) / unit == Approx((f1 - 1) / 2).epsilon(1e-12));
    CHECK((a(0, 2) - a(0, 0)) / unit == Approx((f2 - 1) / 2).epsilon(1e-12));
    CHECK(a(0, 3) == Approx(a(0, 0)).epsilon(1e-14));  // the summary token: Â alone (f = 1)
    CHECK(a(1, 1) == Approx(a(1, 0)).epsilon(1e-14));
    CHECK(a(1, 3) == 0.0);  // masked
}

TEST_CASE("spae: bad input gives the documented error", "[rollout][spae][bad-input]") {
    Vec<double> R(2);
    R << 1, 0;
    Mat<double> phi = Mat<double>::Zero(2, 2), sm = Mat<double>::Ones(2, 2),
                ts = Mat<double>::Zero(2, 3), mask = Mat<double>::Ones(2, 3);
    const auto g = rr::Groups::equal(2, 2);
    rr::SPAEOptions o;
    o.alpha = 2;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::spae_advantages(R, phi, sm, ts, mask, g, o),
                                    "rollout::spae_advantages(): alpha: must be in [0, 1]");
    o = {};
    o.xi = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::spae_advantages(R, phi, sm, ts, mask, g, o),
                                    "xi: must be >= 0");
    Mat<double> ts_bad = ts;
    ts_bad(1, 2) = 5;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::spae_advantages(R, phi, sm, ts_bad, mask, g),
                                    "token_step: step 5 at [1, 2] is not in [0, 2)");
    Mat<double> sm0 = sm;
    sm0(1, 0) = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::spae_advantages(R, phi, sm0, ts, mask, g),
                                    "whose step_mask is 0");
    Mat<double> phi_nan = phi;
    phi_nan(0, 1) = std::nan("");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::spae_advantages(R, phi_nan, sm, ts, mask, g),
                                    "potentials: non-finite value");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::spae_advantages(R, phi.leftCols(1), sm, ts, mask, g),
                                    "potentials, step_mask: expected [2, K] each");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::spae_advantages(R, phi, sm, ts.leftCols(2), mask, g),
                                    "token_step: expected shape [2, 3]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::step_potential(1.5, 0.5), "accuracy: must be in [0, 1]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::step_potential(0.5, -0.1), "confidence: must be in [0, 1]");
}
