// Best-of-N utilities: the BoN pmf against brute-force enumeration of all K^N draws (PyTorch
// reference), the tilted optimum against a torch logsumexp, finite differences of the
// log-partition (∂ log Z/∂r = π*/β), the KL bound and its tightness, and bad input.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/torch_reference.hpp"

#include <rlpo/rollout/best_of_n.hpp>
#include <rlpo/testing/random.hpp>

#include <cmath>
#include <functional>
#include <limits>

using rlpo::Index;
using rlpo::Mat;
using rlpo::Vec;
namespace rr = rlpo::rollout;
namespace rt = rlpo::testing;

namespace {
Vec<double> random_pmf(rt::Generator& gen, Index K, bool with_zero = false) {
    Vec<double> p(K);
    for (Index k = 0; k < K; ++k) p(k) = gen.uniform(0.05, 1.0);
    if (with_zero) p(1) = 0.0;
    return p / p.sum();
}
}  // namespace

TEMPLATE_TEST_CASE("best-of-N pmf and tilt agree with the PyTorch reference",
                   "[rollout][best_of_n][torch]", float, double) {
    using S = TestType;
    rlpo_test::TorchReference tr("rollout", std::string("bon_") + (sizeof(S) == 4 ? "f" : "d"));
    std::vector<std::function<void(std::size_t)>> checks;
    const double tol = rlpo_test::ref_tol<S>();
    rt::Generator gen(1200);
    for (Index n : {1, 2, 3, 5})
        for (bool ties : {false, true}) {
            const Index K = 5;
            const Vec<S> p = random_pmf(gen, K, ties).template cast<S>();
            Vec<S> r(K);
            for (Index k = 0; k < K; ++k) r(k) = static_cast<S>(gen.normal());
            if (ties) r(3) = r(0), r(4) = r(0);
            auto& c = tr.add<S>("bon_enumerated");
            c.in("p", Mat<S>(p)).in("rewards", Mat<S>(r)).p("n", double(n));
            checks.push_back([=, &tr](std::size_t i) {
                const Vec<S> q = rr::bon_distribution(p, r, n);
                CHECK(rlpo_test::max_rel_err(Mat<double>(q.template cast<double>()),
                                             tr.out(i, "q")) < tol);
                CHECK(rlpo_test::rel_err(rr::bon_kl(p, r, n), tr.scalar(i, "kl"), 1e-6) < tol);
            });
        }
    for (double beta : {0.05, 1.0, 30.0}) {
        const Index K = 7;
        const Vec<S> p = random_pmf(gen, K, true).template cast<S>();
        Vec<S> r(K);
        for (Index k = 0; k < K; ++k) r(k) = static_cast<S>(3.0 * gen.normal());
        auto& c = tr.add<S>("tilt");
        c.in("p", Mat<S>(p)).in("rewards", Mat<S>(r)).p("beta", beta);
        checks.push_back([=, &tr](std::size_t i) {
            double logz = 0;
            const Vec<S> q = rr::tilted_distribution(p, r, beta, &logz);
            CHECK(rlpo_test::max_rel_err(Mat<double>(q.template cast<double>()), tr.out(i, "q")) <
                  tol);
            CHECK(rlpo_test::rel_err(logz, tr.scalar(i, "logz")) < tol);
        });
    }
    tr.run();
    for (std::size_t i = 0; i < checks.size(); ++i) {
        INFO("case " << i);
        checks[i](i);
    }
}

TEST_CASE("tilted optimum: ∂ log Z / ∂r equals π*/β (finite differences)",
          "[rollout][best_of_n][fd]") {
    rt::Generator gen(7);
    const Vec<double> p = random_pmf(gen, 6, true);
    for (double beta : {0.1, 1.0, 4.0}) {
        const Mat<double> r = gen.normal(1, 6, 2.0);
        double logz = 0;
        const Vec<double> q =
            rr::tilted_distribution(p, Vec<double>(r.row(0).transpose()), beta, &logz);
        const Mat<double> grad = (q / beta).transpose();
        rlpo_test::require_fd_gradient(
            [&](const Mat<double>& x) {
                double lz = 0;
                (void)rr::tilted_distribution(p, Vec<double>(x.row(0).transpose()), beta, &lz);
                return lz;
            },
            r, grad, 1e-6, 1e-10);
        // KL(π* ‖ p) = E_π*[r]/β − log Z, and the tilt maximises E[r] − β·KL over a random competitor
        double kl = 0, er = 0;
        for (Index k = 0; k < 6; ++k)
            if (q(k) > 0) kl += q(k) * std::log(q(k) / p(k)), er += q(k) * r(0, k);
        CHECK(kl == Approx(er / beta - logz).epsilon(1e-10));
        const Vec<double> other = random_pmf(gen, 6, true);
        double kl2 = 0, er2 = 0;
        for (Index k = 0; k < 6; ++k)
            if (other(k) > 0)
                kl2 += other(k) * std::log(other(k) / p(k)), er2 += other(k) * r(0, k);
        CHECK(er - beta * kl >= er2 - beta * kl2);
    }
    // β → ∞ gives p back; huge r/β does not overflow
    Vec<double> r(3);
    r << 1, 2, 3;
    const Vec<double> p3 = Vec<double>::Constant(3, 1.0 / 3);
    CHECK((rr::tilted_distribution(p3, r, 1e12) - p3).cwiseAbs().maxCoeff() < 1e-9);
    r << 1e6, 2e6, 3e6;
    const Vec<double> hot = rr::tilted_distribution(p3, r, 1.0);
    CHECK(hot(2) == 1.0);
    CHECK(hot(0) == 0.0);
}

TEST_CASE("best-of-N: KL bound, its tightness without ties, and N = 1",
          "[rollout][best_of_n][properties]") {
    CHECK(rr::bon_kl_bound(1) == 0.0);
    CHECK(rr::bon_kl_bound(2) == Approx(std::log(2.0) - 0.5));
    CHECK(rr::bon_kl_bound(16) == Approx(std::log(16.0) - 15.0 / 16));
    rt::Generator gen(9);
    for (Index n : {2, 4, 8, 32}) {
        // many equally likely distinct outcomes: the exact KL approaches the bound from below
        const Index K = 4000;
        const Vec<double> p = Vec<double>::Constant(K, 1.0 / K);
        Vec<double> r(K);
        for (Index k = 0; k < K; ++k) r(k) = double(k);
        const double kl = rr::bon_kl(p, r, n);
        CHECK(kl <= rr::bon_kl_bound(n) + 1e-12);
        CHECK(kl == Approx(rr::bon_kl_bound(n)).epsilon(2e-2));
        // with random p and ties the bound still holds
        const Vec<double> pr = random_pmf(gen, 6);
        Vec<double> rt6(6);
        rt6 << 1, 1, 2, 3, 3, 3;
        CHECK(rr::bon_kl(pr, rt6, n) <= rr::bon_kl_bound(n) + 1e-12);
        const Vec<double> q = rr::bon_distribution(pr, rt6, n);
        CHECK(q.sum() == Approx(1.0).epsilon(1e-12));
        CHECK((q.array() >= 0).all());
    }
    const Vec<double> p = random_pmf(gen, 5);
    const Vec<double> r = gen.normal(5, 1).col(0);
    CHECK((rr::bon_distribution(p, r, 1) - p).cwiseAbs().maxCoeff() < 1e-15);
    CHECK(rr::bon_kl(p, r, 1) == Approx(0.0).margin(1e-15));
    // all rewards equal: BoN = p, KL 0
    CHECK((rr::bon_distribution(p, Vec<double>::Ones(5), 7) - p).cwiseAbs().maxCoeff() < 1e-12);
}

TEST_CASE("best-of-N: bad input gives the documented error", "[rollout][best_of_n][bad-input]") {
    Vec<double> p(3), r(3);
    p << 0.2, 0.3, 0.5;
    r << 1, 2, 3;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::bon_kl_bound(0),
                                    "rollout::bon_kl_bound(): n: must be >= 1, given 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::bon_distribution(p, r, 0),
                                    "rollout::bon_distribution(): n: must be >= 1");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::bon_distribution(p, Vec<double>::Ones(2), 2),
                                    "rewards: expected 3 entries (one per outcome), given 2");
    Vec<double> bad = p;
    bad(0) = 0.3;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::bon_distribution(bad, r, 2),
                                    "p: must sum to 1, sums to 1.1");
    bad(0) = -0.2, bad(2) = 0.9;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::tilted_distribution(bad, r, 1.0),
                                    "p: probabilities must be >= 0, given -0.2 at outcome 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::tilted_distribution(p, r, 0.0),
                                    "rollout::tilted_distribution(): beta: must be > 0");
    r(1) = std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::tilted_distribution(p, r, 1.0),
                                    "rewards: non-finite value inf at response 1");
}
