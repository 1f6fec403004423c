// HyPO (DPO on offline pairs + λ·reverse KL on online samples with an RLOO gradient,
// arXiv 2406.01462), four ways.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/invariance.hpp"
#include "support/torch_reference.hpp"

#include <rlpo/preference/hypo.hpp>
#include <rlpo/testing/random.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace {

using rlpo::Index;
using rlpo::Mat;
using rlpo::preference::DPOLoss;
using rlpo::preference::hypo_kl_loss;
using rlpo::preference::hypo_loss;
using rlpo::preference::HyPOOptions;
using Vec = Eigen::VectorXd;

struct Data {
    Vec pc, pr, rc, rr;
    Mat<double> on, on_ref;  // [P, k]
};
Data make_data(std::uint64_t seed, Index B, Index P, Index k, double spread) {
    rlpo::testing::Generator gen(seed);
    Data d;
    for (Vec* v : {&d.pc, &d.pr, &d.rc, &d.rr}) v->resize(B);
    for (Index i = 0; i < B; ++i) {
        d.rc(i) = -gen.uniform(5.0, 80.0);
        d.rr(i) = -gen.uniform(5.0, 80.0);
        d.pc(i) = d.rc(i) + gen.uniform(-spread, spread);
        d.pr(i) = d.rr(i) + gen.uniform(-spread, spread);
    }
    d.on.resize(P, k);
    d.on_ref.resize(P, k);
    for (Index p = 0; p < P; ++p)
        for (Index j = 0; j < k; ++j) {
            d.on(p, j) = -gen.uniform(5.0, 120.0);
            d.on_ref(p, j) = d.on(p, j) - gen.uniform(-0.3 * spread, spread);
        }
    return d;
}

HyPOOptions options(double beta, double lambda) {
    HyPOOptions o;
    o.dpo.beta = beta;
    o.lambda = lambda;
    return o;
}

}  // namespace

TEST_CASE("hypo: gradients equal finite differences of their closed forms",
          "[preference][hypo][fd]") {
    std::uint64_t seed = 21;
    for (double beta : {0.1, 0.6})
        for (Index k : {2, 3, 6}) {
            INFO("beta " << beta << " k " << k);
            const Data d = make_data(seed++, 7, 4, k, 5.0);
            HyPOOptions o = options(beta, 0.3);
            if (k == 3) o.num_prompts = 9.0;
            const auto r = hypo_loss(d.pc, d.pr, d.rc, d.rr, d.on, d.on_ref, o);
            REQUIRE(r.grad_pairs.rows() == 2);
            REQUIRE(r.grad_online.rows() == 4);
            REQUIRE(r.grad_online.cols() == k);
            // the pairs: the derivative of the value (the KL part does not depend on them)
            Mat<double> x(2, 7);
            x.row(0) = d.pc.transpose();
            x.row(1) = d.pr.transpose();
            rlpo_test::require_fd_gradient(
                [&](const Mat<double>& y) {
                    const Vec c = y.row(0).transpose(), q = y.row(1).transpose();
                    return hypo_loss(c, q, d.rc, d.rr, d.on, d.on_ref, o, rlpo::no_grad<double>(),
                                     rlpo::no_grad<double>())
                        .value;
                },
                x, r.grad_pairs);
            // the online samples: the RLOO gradient λ·A/(M·k) is exactly the gradient of
            // λ/(2M(k−1))·Σ_p Σ_j (r_pj − mean_j r_pj)², r = logp − ref (half the unbiased
            // sample variance of each prompt's log-ratios, summed, times λ/M)
            const double m = o.num_prompts ? *o.num_prompts : 4.0;
            rlpo_test::require_fd_gradient(
                [&](const Mat<double>& on) {
                    const Mat<double> rr = on - d.on_ref;
                    double v = 0;
                    for (Index p = 0; p < rr.rows(); ++p) {
                        const double mean = rr.row(p).mean();
                        for (Index j = 0; j < rr.cols(); ++j)
                            v += (rr(p, j) - mean) * (rr(p, j) - mean);
                    }
                    return 0.3 * v / (2 * m * static_cast<double>(k - 1));
                },
                d.on, r.grad_online);
        }
}

TEST_CASE("hypo: the RLOO gradient's expectation is the exact ∇KL(π‖π_ref) (enumeration)",
          "[preference][hypo][properties]") {
    // π = softmax(θ) over V = 3 "completions"; every k-tuple of samples enumerated
    const Vec theta = (Vec(3) << 0.3, -1.1, 0.7).finished();
    const Vec ref_logits = (Vec(3) << -0.2, 0.5, 0.1).finished();
    const auto log_softmax = [](const Vec& z) {
        const double mx = z.maxCoeff();
        return Vec(z.array() - (mx + std::log((z.array() - mx).exp().sum())));
    };
    const Vec lp = log_softmax(theta), lref = log_softmax(ref_logits);
    const Vec pi = lp.array().exp();
    const Vec ell = lp - lref;
    const double kl = pi.dot(ell);
    Vec exact(3);
    for (Index a = 0; a < 3; ++a) exact(a) = pi(a) * (ell(a) - kl);  // ∂KL/∂θ_a
    const double lambda = 0.7;
    for (Index k : {2, 3, 4}) {
        INFO("k " << k);
        Vec expected = Vec::Zero(3);
        double expected_value = 0;
        Index tuples = 1;
        for (Index j = 0; j < k; ++j) tuples *= 3;
        for (Index t = 0; t < tuples; ++t) {
            Mat<double> on(1, k), on_ref(1, k);
            std::vector<Index> y(static_cast<std::size_t>(k));
            double prob = 1;
            Index c = t;
            for (Index j = 0; j < k; ++j) {
                y[static_cast<std::size_t>(j)] = c % 3;
                c /= 3;
                on(0, j) = lp(y[static_cast<std::size_t>(j)]);
                on_ref(0, j) = lref(y[static_cast<std::size_t>(j)]);
                prob *= pi(y[static_cast<std::size_t>(j)]);
            }
            const auto r = hypo_kl_loss(on, on_ref, options(0.1, lambda));
            expected_value += prob * r.value;
            for (Index j = 0; j < k; ++j) {  // chain rule: ∂log π(y)/∂θ = e_y − π
                Vec dlogp = -pi;
                dlogp(y[static_cast<std::size_t>(j)]) += 1;
                expected += prob * r.grad(0, j) * dlogp;
            }
        }
        CHECK(expected_value == Approx(lambda * kl).epsilon(1e-12));
        CHECK(rlpo_test::max_rel_err(expected, Vec(lambda * exact)) < 1e-12);
    }
}

TEMPLATE_TEST_CASE("hypo: agrees with the PyTorch autograd reference (RLOO surrogate)",
                   "[preference][hypo][torch]", float, double) {
    using S = TestType;
    using V = Eigen::Matrix<S, Eigen::Dynamic, 1>;
    rlpo_test::TorchReference ref("preference_seed",
                                  std::string("hypo_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        V pc, pr, rc, rr;
        Mat<S> on, on_ref;
        HyPOOptions o;
    };
    std::vector<Run> runs;
    const auto add = [&](const Data& d, const HyPOOptions& o) {
        Run r{d.pc.cast<S>(),
              d.pr.cast<S>(),
              d.rc.cast<S>(),
              d.rr.cast<S>(),
              d.on.cast<S>(),
              d.on_ref.cast<S>(),
              o};
        auto& c = ref.add<S>("hypo");
        c.in("policy_chosen_logps", Mat<double>(r.pc.template cast<double>()))
            .in("policy_rejected_logps", Mat<double>(r.pr.template cast<double>()))
            .in("ref_chosen_logps", Mat<double>(r.rc.template cast<double>()))
            .in("ref_rejected_logps", Mat<double>(r.rr.template cast<double>()))
            .in("online_logps", r.on)
            .in("online_ref_logps", r.on_ref);
        c.p("beta", o.dpo.beta)
            .p("lambda", *o.lambda)
            .p("label_smoothing", o.dpo.label_smoothing)
            .p("sigmoid_smoothing", o.dpo.sigmoid_label_smoothing ? 1.0 : 0.0);
        if (o.dpo.num_pairs) c.p("num_pairs", *o.dpo.num_pairs);
        if (o.num_prompts) c.p("num_prompts", *o.num_prompts);
        c.s("loss", rlpo::preference::to_string(o.dpo.terms.front().loss));
        runs.push_back(std::move(r));
    };
    std::uint64_t seed = 400;
    for (Index k : {2, 4, 8})
        for (double lambda : {0.05, 1.0}) {
            HyPOOptions o = options(0.1, lambda);
            add(make_data(seed++, 6, 5, k, 4.0), o);
            o.dpo = rlpo::preference::DPOOptions::of(DPOLoss::Hinge, 0.5);
            o.dpo.num_pairs = 10.0;
            o.num_prompts = 12.0;
            add(make_data(seed++, 6, 3, k, 60.0), o);  // large log-ratios
        }
    ref.run();
    const double tol = sizeof(S) == 4 ? 1e-5 : 1e-12;
    for (std::size_t c = 0; c < runs.size(); ++c) {
        const auto& r = runs[c];
        INFO("case " << c << " lambda " << *r.o.lambda << " k " << r.on.cols());
        const auto res = hypo_loss(r.pc, r.pr, r.rc, r.rr, r.on, r.on_ref, r.o);
        CHECK(rlpo_test::rel_err(res.value, ref.scalar(c, "value")) < tol);
        CHECK(rlpo_test::max_rel_err(res.grad_pairs, ref.out(c, "grad_pairs")) < tol);
        CHECK(rlpo_test::max_rel_err(res.grad_online, ref.out(c, "grad_online")) < tol);
        for (const char* m :
             {"objective/kl", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
              "rewards/margins", "logps/chosen", "logps/rejected"}) {
            INFO(m);
            CHECK(rlpo_test::rel_err(res.metrics[m], ref.scalar(c, m), 1e-9) < tol);
        }
    }
}

TEST_CASE("hypo: properties", "[preference][hypo][properties]") {
    const Data d = make_data(31, 8, 5, 4, 6.0);
    SECTION("λ = 0 is DPO; the DPO part is dpo_loss whatever λ") {
        const auto h = hypo_loss(d.pc, d.pr, d.rc, d.rr, d.on, d.on_ref, options(0.1, 0.0));
        const auto p = rlpo::preference::dpo_loss(d.pc, d.pr, d.rc, d.rr);
        CHECK(h.value == p.value);
        CHECK(h.grad_pairs == p.grad);
        CHECK(h.grad_online.cwiseAbs().maxCoeff() == 0.0);
        const auto h2 = hypo_loss(d.pc, d.pr, d.rc, d.rr, d.on, d.on_ref, options(0.1, 2.0));
        CHECK(h2.grad_pairs == p.grad);
        CHECK(h2.metrics["rewards/margins"] == p.metrics["rewards/margins"]);
    }
    SECTION("value = DPO + λ·mean(logp − ref); the online gradient sums to 0 per prompt") {
        const auto h = hypo_loss(d.pc, d.pr, d.rc, d.rr, d.on, d.on_ref, options(0.1, 0.4));
        const auto p = rlpo::preference::dpo_loss(d.pc, d.pr, d.rc, d.rr);
        const double kl = (d.on - d.on_ref).mean();
        CHECK(h.value == Approx(p.value + 0.4 * kl).epsilon(1e-13));
        CHECK(h.metrics["objective/kl"] == Approx(kl).epsilon(1e-13));
        for (Index q = 0; q < 5; ++q) CHECK(std::abs(h.grad_online.row(q).sum()) < 1e-15);
        // k = 2: A = ±(r_1 − r_2), gradient ±λ·(r_1 − r_2)/(P·2)
        const Data two = make_data(32, 3, 4, 2, 6.0);
        const auto t = hypo_kl_loss(two.on, two.on_ref, options(0.1, 0.4));
        for (Index q = 0; q < 4; ++q) {
            const double diff =
                (two.on(q, 0) - two.on_ref(q, 0)) - (two.on(q, 1) - two.on_ref(q, 1));
            CHECK(t.grad(q, 0) == Approx(0.4 * diff / 8).epsilon(1e-13));
        }
    }
    SECTION("policy = reference, or equal log-ratios within a prompt: no online gradient") {
        const auto z = hypo_kl_loss(d.on, d.on, options(0.1, 1.0));
        CHECK(z.value == 0.0);
        CHECK(z.grad.cwiseAbs().maxCoeff() == 0.0);
        const Mat<double> shifted = d.on.array() + 2.5;  // r = −2.5 everywhere
        const auto c = hypo_kl_loss(d.on, shifted, options(0.1, 1.0));
        CHECK(c.value == Approx(-2.5).epsilon(1e-14));
        CHECK(c.grad.cwiseAbs().maxCoeff() < 1e-14);
    }
    SECTION("micro-batches over prompts (global num_prompts) add up to the whole batch") {
        HyPOOptions o = options(0.1, 0.6);
        const auto whole = hypo_kl_loss(d.on, d.on_ref, o);
        o.num_prompts = 5.0;
        rlpo_test::require_example_invariance(
            whole, 5,
            [&](Index r0, Index n) {
                return hypo_kl_loss(d.on.middleRows(r0, n), d.on_ref.middleRows(r0, n), o);
            },
            {1e-13, {}, /*by_cols=*/false});
    }
    SECTION("two sinks: write_to / add_to each gradient, no_grad; float inputs") {
        const HyPOOptions o = options(0.2, 0.5);
        const auto own = hypo_loss(d.pc, d.pr, d.rc, d.rr, d.on, d.on_ref, o);
        Mat<double> gp = Mat<double>::Constant(2, 8, 9.0), go = Mat<double>::Constant(5, 4, 9.0);
        const auto w = hypo_loss(d.pc, d.pr, d.rc, d.rr, d.on, d.on_ref, o,
                                 rlpo::write_to<double>(gp, 2.0), rlpo::write_to<double>(go));
        CHECK(w.grad_pairs.size() == 0);
        CHECK(w.grad_online.size() == 0);
        const auto p = rlpo::preference::dpo_loss(d.pc, d.pr, d.rc, d.rr, o.dpo);
        CHECK(w.value == Approx(own.value + p.value).epsilon(1e-14));  // coef 2 on the DPO part
        CHECK(rlpo_test::max_rel_err(gp, Mat<double>(2 * own.grad_pairs)) < 1e-15);
        CHECK(rlpo_test::max_rel_err(go, own.grad_online) < 1e-15);
        (void)hypo_loss(d.pc, d.pr, d.rc, d.rr, d.on, d.on_ref, o, rlpo::add_to<double>(gp, -2.0),
                        rlpo::add_to<double>(go, -1.0));
        CHECK(gp.cwiseAbs().maxCoeff() < 1e-15);
        CHECK(go.cwiseAbs().maxCoeff() < 1e-15);
        const auto n = hypo_loss(d.pc, d.pr, d.rc, d.rr, d.on, d.on_ref, o, rlpo::no_grad<double>(),
                                 rlpo::no_grad<double>());
        CHECK(n.value == own.value);
        const Mat<float> onf = d.on.cast<float>(), reff = d.on_ref.cast<float>();
        const auto f = hypo_loss(d.pc.cast<float>(), d.pr.cast<float>(), d.rc.cast<float>(),
                                 d.rr.cast<float>(), onf, reff, o);
        CHECK(f.value == Approx(own.value).epsilon(1e-4));
    }
    SECTION("B = 0 and P = 0: the empty part contributes 0") {
        const Vec e(0);
        const Mat<double> none(0, 4);
        const auto a = hypo_loss(e, e, e, e, d.on, d.on_ref, options(0.1, 0.5));
        CHECK(a.value == Approx(0.5 * (d.on - d.on_ref).mean()).epsilon(1e-13));
        CHECK(a.grad_pairs.size() == 0);
        const auto b = hypo_loss(d.pc, d.pr, d.rc, d.rr, none, none, options(0.1, 0.5));
        CHECK(b.value == rlpo::preference::dpo_loss(d.pc, d.pr, d.rc, d.rr).value);
        CHECK(b.grad_online.size() == 0);
        CHECK(b.metrics["objective/kl"] == 0.0);
    }
}

TEST_CASE("hypo: bad input gives the documented error", "[preference][hypo][bad-input]") {
    const Vec x = Vec::Constant(3, -5.0), y = Vec::Constant(4, -5.0);
    const Mat<double> on = Mat<double>::Constant(2, 3, -7.0);
    const HyPOOptions o = options(0.1, 0.5);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(hypo_loss(x, y, x, x, on, on, o),
                                    "preference::hypo_loss(): policy_rejected_logps: expected 3 "
                                    "entries (same as policy_chosen_logps), given 4");
    Vec bad = x;
    bad(1) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(hypo_loss(x, x, bad, x, on, on, o),
                                    "preference::hypo_loss(): ref_chosen_logps: NaN at pair 1");
    HyPOOptions b = o;
    b.dpo.beta = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(hypo_loss(x, x, x, x, on, on, b),
                                    "preference::hypo_loss(): beta: must be > 0");
    b = o;
    b.dpo = rlpo::preference::DPOOptions::of(DPOLoss::IPO);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(hypo_loss(x, x, x, x, on, on, b),
                                    "averages the log-ratios over the completion lengths");
    const Mat<double> on23 = Mat<double>::Constant(2, 2, -7.0), on1 = Mat<double>::Zero(2, 1);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(hypo_loss(x, x, x, x, on, on23, o),
                                    "preference::hypo_loss(): online_ref_logps: expected shape "
                                    "[2, 3] (same as online_logps), given [2, 2]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(hypo_kl_loss(on1, on1, o),
                                    "preference::hypo_kl_loss(): online_logps: the leave-one-out "
                                    "baseline needs k >= 2 samples per prompt (columns), given 1");
    {  // a bad online input is reported before the pair gradient is written
        Mat<double> gp = Mat<double>::Constant(2, 3, 9.0);
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(
            hypo_loss(x, x, x, x, on, on23, o, rlpo::write_to<double>(gp)), "online_ref_logps");
        CHECK(gp.cwiseAbs().minCoeff() == 9.0);
    }
    Mat<double> nan = on;
    nan(1, 2) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(hypo_loss(x, x, x, x, nan, on, o),
                                    "online_logps: non-finite value nan at [1, 2]");
    nan(1, 2) = -std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(hypo_kl_loss(on, nan, o),
                                    "online_ref_logps: non-finite value -inf at [1, 2]");
    b = o;
    b.lambda.reset();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(hypo_loss(x, x, x, x, on, on, b),
                                    "preference::hypo_loss(): lambda: HyPO's KL weight has no "
                                    "confirmed default");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(hypo_kl_loss(on, on, HyPOOptions{}),
                                    "lambda: HyPO's KL weight");
    b.lambda = -0.1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(hypo_loss(x, x, x, x, on, on, b), "lambda: must be >= 0");
    b.lambda = std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(hypo_kl_loss(on, on, b), "lambda: must be >= 0");
    b = o;
    b.num_prompts = 0.0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(hypo_loss(x, x, x, x, on, on, b), "num_prompts: must be > 0");
}
