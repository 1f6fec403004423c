// Token KL estimators k1 / abs / k2 / k3, four ways, plus the exact-enumeration truth table.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/invariance.hpp"
#include "support/torch_reference.hpp"

#include <rlpo/core/math.hpp>
#include <rlpo/penalties/kl_estimators.hpp>
#include <rlpo/testing/random.hpp>

#include <algorithm>
#include <cmath>
#include <limits>

using rlpo::Aggregation;
using rlpo::Index;
using rlpo::Mat;
using rlpo::penalties::KLEstimator;
using rlpo::penalties::KLOptions;
namespace rt = rlpo::testing;
constexpr double inf = std::numeric_limits<double>::infinity();

static const KLEstimator kAll[] = {KLEstimator::K1,    KLEstimator::Abs,    KLEstimator::K2,
                                   KLEstimator::K3,    KLEstimator::K1Plus, KLEstimator::AbsPlus,
                                   KLEstimator::K3Plus};

TEST_CASE("kl_penalty: gradient equals central finite differences", "[penalties][kl][fd]") {
    rt::Generator gen(31);
    const Mat<double> logp = gen.logprobs(6, 9);
    Mat<double> ref = gen.perturbed(logp, 1.0);
    ref(0, 0) = logp(0, 0) + 25.0;  // beyond the ±20 clamp
    ref(0, 1) = logp(0, 1) - 3.0;   // k3 value e^3 − 4 ≈ 16 > 10: value clamp
    const Mat<double> m = gen.mask(6, 9, 1, true);
    for (KLEstimator e : kAll)
        for (Aggregation mode : rlpo_test::all_modes()) {
            INFO(rlpo::penalties::to_string(e) << " " << rlpo::to_string(mode));
            rlpo::Normalizer n;
            n.mode = mode;
            const KLOptions o = KLOptions::verl(e);
            const auto r = rlpo::penalties::kl_penalty(logp, ref, m, o, n);
            // straight-through X+: the gradient is that of k2 (its own value is X's)
            const KLOptions o_grad =
                rlpo::penalties::is_straight_through(e) ? KLOptions::verl(KLEstimator::K2) : o;
            const auto near_kink = [&](Index k) {
                const double d = logp.data()[k] - ref.data()[k];
                const double v = std::exp(-d) + d - 1;
                return std::abs(d) < 1e-4 || std::abs(std::abs(d) - 20) < 1e-4 ||
                       std::abs(v - 10) < 1e-3;
            };
            rlpo_test::require_fd_gradient(
                [&](const Mat<double>& x) {
                    return rlpo::penalties::kl_penalty(x, ref, m, o_grad, n,
                                                       rlpo::no_grad<double>())
                        .value;
                },
                logp, r.grad, 1e-6, 1e-10, near_kink);
        }
}

TEST_CASE("kl_penalty_corrected: gradient equals central finite differences",
          "[penalties][kl][fd]") {
    rt::Generator gen(32);
    const Mat<double> logp = gen.logprobs(5, 8);
    Mat<double> old = gen.perturbed(logp, 0.7), ref = gen.perturbed(logp, 1.0);
    old(0, 0) =
        logp(0, 0) +
        23.0;  // importance log-ratio beyond the ±20 clamp: w = e^-20, no gradient through w
    ref(1, 1) = logp(1, 1) - 3.0;  // k3 value clamp
    const Mat<double> m = gen.mask(5, 8, 1, true);
    for (KLEstimator e : {KLEstimator::K1, KLEstimator::Abs, KLEstimator::K2, KLEstimator::K3})
        for (bool trl : {false, true})
            for (Aggregation mode : rlpo_test::all_modes()) {
                INFO(rlpo::penalties::to_string(e)
                     << " trl " << trl << " " << rlpo::to_string(mode));
                rlpo::Normalizer n;
                n.mode = mode;
                const KLOptions o = trl ? KLOptions::trl(e) : KLOptions::verl(e);
                const auto r = rlpo::penalties::kl_penalty_corrected(logp, old, ref, m, o, n);
                const auto near_kink = [&](Index k) {
                    const double d = logp.data()[k] - ref.data()[k],
                                 lr = logp.data()[k] - old.data()[k];
                    const double v = std::exp(-d) + d - 1;
                    return std::abs(d) < 1e-4 || std::abs(std::abs(lr) - 20) < 1e-4 ||
                           std::abs(v - 10) < 1e-3;
                };
                rlpo_test::require_fd_gradient(
                    [&](const Mat<double>& x) {
                        return rlpo::penalties::kl_penalty_corrected(x, old, ref, m, o, n,
                                                                     rlpo::no_grad<double>())
                            .value;
                    },
                    // atol 1e-8: the clamped token's gradient is w = e^-20 ≈ 2e-9, below what a
                    // central difference of an O(1) value resolves
                    logp, r.grad, 1e-6, 1e-8, near_kink);
            }
}

TEMPLATE_TEST_CASE("kl_penalty: agrees with the PyTorch autograd reference",
                   "[penalties][kl][torch]", float, double) {
    using S = TestType;
    rlpo_test::TorchReference tr("penalties", std::string("kl_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        Mat<S> logp, ref, mask;
        KLOptions o;
        rlpo::Normalizer n;
    };
    std::vector<Run> runs;
    std::uint64_t seed = 300;
    for (KLEstimator e : kAll)
        for (bool trl : {false, true})
            for (Aggregation mode : rlpo_test::all_modes()) {
                rt::Generator gen(seed++);
                Run r;
                r.logp = gen.logprobs<S>(7, 11);
                r.ref = gen.perturbed<S>(r.logp, 2.0);
                r.ref(0, 0) = r.logp(0, 0) + S(22);  // beyond the clamp
                r.ref(0, 2) = r.logp(0, 2) - S(21);
                r.ref(1, 0) = r.logp(1, 0) - S(4);  // k3 value clamp
                r.mask = gen.mask<S>(7, 11, 1, true);
                r.mask.row(0).setOnes();
                r.mask.row(1).setOnes();
                r.mask(2, 0) = 0;
                r.logp(2, 0) = std::numeric_limits<S>::quiet_NaN();  // masked garbage
                if (!trl) {
                    r.logp(1, 3) = -std::numeric_limits<S>::infinity();  // clamped k3: finite
                    if (e != KLEstimator::K3) r.logp(1, 3) = S(-50);
                }
                r.o = trl ? KLOptions::trl(e) : KLOptions::verl(e);
                r.n.mode = mode;
                if (seed % 2) r.n.num_tokens = 200.0, r.n.num_seqs = 20.0;
                auto& c = tr.add<S>("kl_penalty");
                c.in("logp", r.logp).in("ref_logp", r.ref).in("mask", r.mask);
                c.p("log_ratio_clamp", r.o.log_ratio_clamp).p("value_clamp", r.o.value_clamp);
                c.s("estimator", rlpo::penalties::to_string(e)).s("agg", rlpo::to_string(mode));
                if (r.n.num_tokens) c.p("num_tokens", *r.n.num_tokens);
                if (r.n.num_seqs) c.p("num_seqs", *r.n.num_seqs);
                runs.push_back(std::move(r));
            }
    // importance-corrected (TRL use_bias_correction_kl) and KL-in-reward cases
    struct Extra {
        Mat<S> logp, old, ref, scores, mask;
        KLOptions o;
        rlpo::Normalizer n;
        double beta;
        std::size_t idx;
    };
    std::vector<Extra> corrected, in_reward;
    for (KLEstimator e : kAll)
        for (bool trl : {false, true}) {
            rt::Generator gen(seed++);
            Extra x;
            x.logp = gen.logprobs<S>(6, 13);
            x.old = gen.perturbed<S>(x.logp, 0.8);
            x.ref = gen.perturbed<S>(x.logp, 1.5);
            x.scores = gen.normal<S>(6, 13);
            x.mask = gen.mask<S>(6, 13, 1, true);
            x.mask.row(0).setOnes();
            x.ref(0, 1) = x.logp(0, 1) - S(4);             // k3 value clamp
            if (!trl) x.old(0, 2) = x.logp(0, 2) - S(21);  // importance ratio clamp
            x.mask(1, 0) = 0;
            x.logp(1, 0) = std::numeric_limits<S>::quiet_NaN();  // masked garbage
            x.old(1, 0) = std::numeric_limits<S>::quiet_NaN();
            x.o = trl ? KLOptions::trl(e) : KLOptions::verl(e);
            x.n.mode = rlpo_test::all_modes()[static_cast<std::size_t>(seed % 5)];
            x.beta = 0.05 * static_cast<double>(seed % 3 + 1);
            auto& c = tr.add<S>("kl_penalty_corrected");
            c.in("logp", x.logp).in("old_logp", x.old).in("ref_logp", x.ref).in("mask", x.mask);
            c.p("log_ratio_clamp", x.o.log_ratio_clamp).p("value_clamp", x.o.value_clamp);
            c.s("estimator", rlpo::penalties::to_string(e)).s("agg", rlpo::to_string(x.n.mode));
            x.idx = tr.size() - 1;
            corrected.push_back(x);
            auto& cr = tr.add<S>("kl_in_reward");
            cr.in("scores", x.scores)
                .in("old_logp", x.old)
                .in("ref_logp", x.ref)
                .in("mask", x.mask);
            cr.p("log_ratio_clamp", x.o.log_ratio_clamp)
                .p("value_clamp", x.o.value_clamp)
                .p("beta", x.beta);
            cr.s("estimator", rlpo::penalties::to_string(rlpo::penalties::base_estimator(e)));
            x.idx = tr.size() - 1;
            in_reward.push_back(x);
        }
    tr.run();
    const double tol = rlpo_test::ref_tol<S>();
    // single tokens: k3's e^δ − δ − 1 cancels for small δ (absolute error ~ ε of 1, values ~ δ²/2),
    // so a per-token comparison in float needs a few times the tolerance of the sums
    const double tok_tol = sizeof(S) == 4 ? 8 * tol : tol;
    for (std::size_t i = 0; i < runs.size(); ++i) {
        INFO("case " << i);
        const auto& r = runs[i];
        // per-token values into a buffer holding garbage: overwritten, 0 at masked tokens
        Mat<S> values = Mat<S>::Constant(r.logp.rows(), r.logp.cols(), S(7));
        const auto res = rlpo::penalties::kl_penalty(r.logp, r.ref, r.mask, r.o, r.n, {},
                                                     rlpo::write_to(values));
        CHECK(rlpo_test::rel_err(res.value, tr.scalar(i, "value")) < tol);
        CHECK(rlpo_test::max_rel_err(res.grad, tr.out(i, "grad")) < tol);
        CHECK(rlpo_test::rel_err(res.metrics["kl"], tr.scalar(i, "kl")) < tol);
        CHECK(rlpo_test::max_rel_err(values, tr.out(i, "token_values")) < tok_tol);
        // add_to(buf, c): buf + c·values at unmasked tokens, untouched at masked ones
        Mat<S> acc = Mat<S>::Constant(r.logp.rows(), r.logp.cols(), S(1));
        const auto again = rlpo::penalties::kl_penalty(r.logp, r.ref, r.mask, r.o, r.n,
                                                       rlpo::no_grad<S>(), rlpo::add_to(acc, 0.5));
        CHECK(again.value == res.value);
        const Mat<double> want = (Mat<double>::Ones(acc.rows(), acc.cols()).array() +
                                  0.5 * tr.out(i, "token_values").array() *
                                      (r.mask.array() != 0).template cast<double>())
                                     .matrix();
        CHECK(rlpo_test::max_rel_err(acc, want) < tok_tol);
    }
    for (const auto& x : corrected) {
        INFO("corrected case " << x.idx);
        Mat<S> values = Mat<S>::Constant(x.logp.rows(), x.logp.cols(), S(-3));
        const auto res = rlpo::penalties::kl_penalty_corrected(x.logp, x.old, x.ref, x.mask, x.o,
                                                               x.n, {}, rlpo::write_to(values));
        CHECK(rlpo_test::rel_err(res.value, tr.scalar(x.idx, "value")) < tol);
        CHECK(rlpo_test::max_rel_err(res.grad, tr.out(x.idx, "grad")) < tol);
        CHECK(rlpo_test::rel_err(res.metrics["kl"], tr.scalar(x.idx, "kl")) < tol);
        CHECK(rlpo_test::max_rel_err(values, tr.out(x.idx, "token_values")) < tok_tol);
    }
    for (const auto& x : in_reward) {
        INFO("in-reward case " << x.idx);
        const auto res = rlpo::penalties::kl_in_reward(x.scores, x.old, x.ref, x.mask, x.beta, x.o);
        CHECK(rlpo_test::max_rel_err(res.rewards, tr.out(x.idx, "rewards")) < tol);
        CHECK(rlpo_test::max_rel_err(res.kl, tr.out(x.idx, "kl")) < tol);
        CHECK(rlpo_test::max_rel_err(Mat<double>(res.seq_kl), tr.out(x.idx, "seq_kl")) < tol);
        CHECK(rlpo_test::rel_err(res.metrics["reward_kl_penalty"],
                                 tr.scalar(x.idx, "reward_kl_penalty")) < tol);
        CHECK(res.metrics["reward_kl_penalty_coeff"] == x.beta);
    }
}

TEST_CASE("kl estimators: what each gradient follows, by exact enumeration",
          "[penalties][kl][properties]") {
    // Small vocabulary; a "batch" of one row whose column x is the sample x, weighted by π(x)
    // through the mask, summed (token-sum): value = E_π[k(x)], grad_x = π(x)·∂k/∂logp(x).
    // The expected gradient w.r.t. the policy logits z is then J^T g of log-softmax.
    rt::Generator gen(77);
    const Index V = 6;
    const Mat<double> z = gen.logits(1, V, 1.0), zr = gen.logits(1, V, 1.0);
    const Mat<double> lp = rlpo::log_softmax_rows(z), lref = rlpo::log_softmax_rows(zr);
    const Mat<double> pi = lp.array().exp();
    rlpo::Normalizer sum;
    sum.mode = Aggregation::TokenSum;
    const auto expected_grad = [&](KLEstimator e) {
        const auto r = rlpo::penalties::kl_penalty(lp, lref, pi, KLOptions::trl(e), sum);
        return Mat<double>(rlpo::log_softmax_vjp(z, r.grad));
    };
    const auto reverse_kl = [&](const Mat<double>& zz) {
        const Mat<double> l = rlpo::log_softmax_rows(zz);
        return (l.array().exp() * (l - lref).array()).sum();
    };
    const auto forward_kl = [&](const Mat<double>& zz) {
        const Mat<double> l = rlpo::log_softmax_rows(zz);
        return (lref.array().exp() * (lref - l).array()).sum();
    };
    const auto fd = [&](auto&& f) {
        Mat<double> g(1, V), x = z;
        for (Index j = 0; j < V; ++j) {
            const double h = 1e-6;
            x(0, j) = z(0, j) + h;
            const double fp = f(x);
            x(0, j) = z(0, j) - h;
            const double fm = f(x);
            x(0, j) = z(0, j);
            g(0, j) = (fp - fm) / (2 * h);
        }
        return g;
    };
    const Mat<double> g_rev = fd(reverse_kl), g_fwd = fd(forward_kl);
    // k1 → 0
    CHECK(expected_grad(KLEstimator::K1).cwiseAbs().maxCoeff() < 1e-14);
    // k2 → ∇ KL(π‖π_ref)
    CHECK(rlpo_test::max_rel_err(expected_grad(KLEstimator::K2), g_rev) < 1e-7);
    // k3 → ∇ KL(π_ref‖π), the forward KL — not the reverse KL its value estimates
    CHECK(rlpo_test::max_rel_err(expected_grad(KLEstimator::K3), g_fwd) < 1e-7);
    CHECK(rlpo_test::max_rel_err(expected_grad(KLEstimator::K3), g_rev) > 1e-2);
    // abs → ∇ Σ|π − π_ref| (twice the total variation): sign(log π/π_ref) = sign(π − π_ref)
    const auto abs_div = [&](const Mat<double>& zz) {
        const Mat<double> l = rlpo::log_softmax_rows(zz);
        return (l.array().exp() - lref.array().exp()).abs().sum();
    };
    CHECK(rlpo_test::max_rel_err(expected_grad(KLEstimator::Abs), fd(abs_div)) < 1e-7);
    // every straight-through X+ → ∇ KL(π‖π_ref), whatever X's value
    for (KLEstimator e : {KLEstimator::K1Plus, KLEstimator::AbsPlus, KLEstimator::K3Plus}) {
        INFO(rlpo::penalties::to_string(e));
        CHECK(rlpo_test::max_rel_err(expected_grad(e), g_rev) < 1e-7);
    }
    // importance-corrected X with samples from π_old ≠ π (weights π_old through the mask):
    // the expected gradient is ∇ E_π[X] — ∇KL(π‖π_ref) for k1 and k3, ∇ E_π[½d²] for k2,
    // ∇ E_π|d| for abs — on-policy (π_old = π) included.
    const Mat<double> z_old = gen.logits(1, V, 1.0);
    const Mat<double> lold = rlpo::log_softmax_rows(z_old);
    const auto corrected_grad = [&](KLEstimator e, const Mat<double>& lo) {
        const Mat<double> w_old = lo.array().exp();
        const auto r =
            rlpo::penalties::kl_penalty_corrected(lp, lo, lref, w_old, KLOptions::trl(e), sum);
        return Mat<double>(rlpo::log_softmax_vjp(z, r.grad));
    };
    const auto e_half_d2 = [&](const Mat<double>& zz) {
        const Mat<double> l = rlpo::log_softmax_rows(zz);
        return (l.array().exp() * 0.5 * (l - lref).array().square()).sum();
    };
    const auto e_abs_d = [&](const Mat<double>& zz) {
        const Mat<double> l = rlpo::log_softmax_rows(zz);
        return (l.array().exp() * (l - lref).array().abs()).sum();
    };
    for (const Mat<double>* lo : {&lold, &lp}) {
        CHECK(rlpo_test::max_rel_err(corrected_grad(KLEstimator::K1, *lo), g_rev) < 1e-7);
        CHECK(rlpo_test::max_rel_err(corrected_grad(KLEstimator::K3, *lo), g_rev) < 1e-7);
        CHECK(rlpo_test::max_rel_err(corrected_grad(KLEstimator::K2, *lo), fd(e_half_d2)) < 1e-7);
        CHECK(rlpo_test::max_rel_err(corrected_grad(KLEstimator::Abs, *lo), fd(e_abs_d)) < 1e-7);
    }
    // without the correction, samples from π_old bias even k2: its expected gradient is not ∇KL
    {
        const Mat<double> w_old = lold.array().exp();
        const auto r =
            rlpo::penalties::kl_penalty(lp, lref, w_old, KLOptions::trl(KLEstimator::K2), sum);
        CHECK(rlpo_test::max_rel_err(Mat<double>(rlpo::log_softmax_vjp(z, r.grad)), g_rev) > 1e-2);
    }
    // and the values: E_π[k1] = E_π[k3] = KL(π‖π_ref) exactly
    const double kl = reverse_kl(z);
    CHECK(rlpo::penalties::kl_penalty(lp, lref, pi, KLOptions::trl(KLEstimator::K1), sum).value ==
          Approx(kl).epsilon(1e-12));
    CHECK(rlpo::penalties::kl_penalty(lp, lref, pi, KLOptions::trl(KLEstimator::K3), sum).value ==
          Approx(kl).epsilon(1e-12));
}

TEST_CASE("kl estimators: closed-form values and names", "[penalties][kl][properties]") {
    Mat<double> lp(1, 3), ref(1, 3);
    lp << -1.0, -2.0, -0.5;
    ref << -1.5, -2.0, -0.1;
    const Mat<double> m = Mat<double>::Ones(1, 3);
    rlpo::Normalizer sum;
    sum.mode = Aggregation::TokenSum;
    auto v = [&](KLEstimator e) {
        return rlpo::penalties::kl_penalty(lp, ref, m, KLOptions::verl(e), sum).value;
    };
    CHECK(v(KLEstimator::K1) == Approx(0.5 + 0.0 - 0.4));
    CHECK(v(KLEstimator::Abs) == Approx(0.5 + 0.0 + 0.4));
    CHECK(v(KLEstimator::K2) == Approx(0.5 * (0.25 + 0.16)));
    CHECK(v(KLEstimator::K3) == Approx((std::exp(-0.5) + 0.5 - 1) + (std::exp(0.4) - 0.4 - 1)));
    const auto same = rlpo::penalties::kl_penalty(lp, lp, m);
    CHECK(same.value == 0.0);
    CHECK(same.grad.isZero());
    CHECK(rlpo::penalties::parse_kl_estimator("low_var_kl") == KLEstimator::K3);
    CHECK(rlpo::penalties::parse_kl_estimator("mse") == KLEstimator::K2);
    CHECK(rlpo::penalties::parse_kl_estimator("kl") == KLEstimator::K1);
    CHECK(rlpo::penalties::parse_kl_estimator("abs") == KLEstimator::Abs);
    CHECK(rlpo::penalties::parse_kl_estimator("k3+") == KLEstimator::K3Plus);
    CHECK(rlpo::penalties::parse_kl_estimator("low_var_kl+") == KLEstimator::K3Plus);
    CHECK(rlpo::penalties::parse_kl_estimator("kl+") == KLEstimator::K1Plus);
    CHECK(rlpo::penalties::parse_kl_estimator("k1+") == KLEstimator::K1Plus);
    CHECK(rlpo::penalties::parse_kl_estimator("abs+") == KLEstimator::AbsPlus);
    CHECK(rlpo::penalties::parse_kl_estimator("mse+") == KLEstimator::K2);  // verl: k2+ is k2
    CHECK(rlpo::penalties::parse_kl_estimator("k2+") == KLEstimator::K2);
    for (KLEstimator e : kAll)
        CHECK(rlpo::penalties::parse_kl_estimator(rlpo::penalties::to_string(e)) == e);
    // X+: value of X, gradient d = logp − ref_logp (k2's), also where X's clamps stop its own
    {
        rlpo::Normalizer tsum;
        tsum.mode = Aggregation::TokenSum;
        const auto p3 =
            rlpo::penalties::kl_penalty(lp, ref, m, KLOptions::verl(KLEstimator::K3Plus), tsum);
        const auto k3 =
            rlpo::penalties::kl_penalty(lp, ref, m, KLOptions::verl(KLEstimator::K3), tsum);
        CHECK(p3.value == k3.value);
        CHECK(p3.metrics["kl"] == k3.metrics["kl"]);
        CHECK(rlpo_test::max_rel_err(p3.grad, Mat<double>(lp - ref)) == 0.0);
    }
    // KL in reward: closed form on this row (k1, β = 0.1), and the fold into a sequence score
    {
        const Mat<double> scores = Mat<double>::Constant(1, 3, 1.0);
        const auto kr = rlpo::penalties::kl_in_reward(scores, lp, ref, m, 0.1,
                                                      KLOptions::verl(KLEstimator::K1));
        CHECK(kr.rewards(0, 0) == Approx(1.0 - 0.1 * 0.5));
        CHECK(kr.rewards(0, 1) == Approx(1.0));
        CHECK(kr.rewards(0, 2) == Approx(1.0 + 0.1 * 0.4));
        CHECK(kr.seq_kl(0) == Approx(0.5 + 0.0 - 0.4));
        CHECK(kr.metrics["reward_kl_penalty"] == Approx(0.1 / 3));
    }
    // k3 with −inf current log-prob is clamped to the value cap, gradient 0
    Mat<double> ninf = lp;
    ninf(0, 0) = -inf;
    const auto r = rlpo::penalties::kl_penalty(ninf, ref, m, KLOptions::verl(), sum);
    CHECK(std::isfinite(r.value));
    CHECK(r.grad(0, 0) == 0.0);
    // k3+: the value of clamped k3 (finite) but the gradient of k2, d = −inf: no finite limit,
    // rejected naming the inputs (it used to give value 10 with gradient −inf); the same for
    // every estimator whose value or gradient is ±inf there, and for unclamped k3
    for (KLEstimator e : {KLEstimator::K3Plus, KLEstimator::K1Plus, KLEstimator::AbsPlus,
                          KLEstimator::K1, KLEstimator::Abs, KLEstimator::K2}) {
        INFO(rlpo::penalties::to_string(e));
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(
            rlpo::penalties::kl_penalty(ninf, ref, m, KLOptions::verl(e), sum),
            "inputs at [0, 0] give a non-finite loss or gradient");
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(
            rlpo::penalties::kl_penalty(ninf, ref, m, KLOptions::verl(e), sum,
                                        rlpo::no_grad<double>()),
            "inputs at [0, 0] give a non-finite loss or gradient");
    }
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::kl_penalty(ninf, ref, m, KLOptions::trl()),
                                    "inputs at [0, 0] give a non-finite loss or gradient");
    // finite extremes: k2 of d = 1e200 overflows per token (named); each k1 = 1e308 is finite
    // but their token sum overflows (numerical_error)
    Mat<double> big = lp;
    big(0, 0) = 1e200;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::penalties::kl_penalty(big, ref, m, KLOptions::verl(KLEstimator::K2)),
        "inputs at [0, 0] give a non-finite loss or gradient");
    const Mat<double> huge = Mat<double>::Constant(1, 3, 1e308), zero = Mat<double>::Zero(1, 3);
    RLPO_REQUIRE_NUMERICAL_ERROR(
        rlpo::penalties::kl_penalty(huge, zero, m, KLOptions::verl(KLEstimator::K1), sum),
        "value: the loss is not finite");
    // per-token values: coefficient × a finite estimate beyond the float range is named,
    // not stored as inf (written or added; a finite product passes)
    {
        Mat<float> lpf(1, 3), reff = Mat<float>::Zero(1, 3), mf = Mat<float>::Ones(1, 3);
        lpf << -1e10F, -1.0F, -2.0F;
        Mat<float> vals = Mat<float>::Zero(1, 3);
        const auto abs_est = KLOptions::verl(KLEstimator::Abs);
        RLPO_REQUIRE_NUMERICAL_ERROR(
            rlpo::penalties::kl_penalty(lpf, reff, mf, abs_est, {}, rlpo::no_grad<float>(),
                                        rlpo::add_to(vals, 1e30)),
            "token_values: row 0");
        vals.setConstant(3e38F);
        RLPO_REQUIRE_NUMERICAL_ERROR(
            rlpo::penalties::kl_penalty(lpf, reff, mf, abs_est, {}, rlpo::no_grad<float>(),
                                        rlpo::add_to(vals, 1e28)),
            "token_values: row 0");
        vals.setZero();
        (void)rlpo::penalties::kl_penalty(lpf, reff, mf, abs_est, {}, rlpo::no_grad<float>(),
                                          rlpo::add_to(vals, 1e20));
        CHECK(vals(0, 0) == Approx(1e30));
    }
    // kl_in_reward: an infinite estimate is named, not stored
    const Mat<double> scores = Mat<double>::Ones(1, 3);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::penalties::kl_in_reward(scores, ninf, ref, m, 0.1, KLOptions::verl(KLEstimator::K1)),
        "inputs at [0, 0] give a non-finite loss or gradient");
    RLPO_REQUIRE_NUMERICAL_ERROR(
        rlpo::penalties::kl_in_reward(scores, huge, zero, m, 0.0, KLOptions::verl(KLEstimator::K1)),
        "seq_kl");
    // an overflowing row 0 and a NaN in row 1: the input error outranks the overflow
    {
        Mat<double> old2(2, 3), ref2 = Mat<double>::Zero(2, 3);
        old2.row(0).setConstant(1e308);
        old2.row(1) << -1.0, std::numeric_limits<double>::quiet_NaN(), -2.0;
        const Mat<double> s2 = Mat<double>::Ones(2, 3), m2 = Mat<double>::Ones(2, 3);
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(
            rlpo::penalties::kl_in_reward(s2, old2, ref2, m2, 0.0,
                                          KLOptions::verl(KLEstimator::K1)),
            "[1, 1]");
    }
}

TEST_CASE("kl_penalty, kl_penalty_corrected: micro-batch invariance, long rows",
          "[penalties][kl][properties]") {
    rt::Generator gen(91);
    const Index B = 9, T = 1030;  // several packets per row and a ragged tail
    const Mat<double> lp = gen.logprobs(B, T), old = gen.perturbed(lp, 0.5),
                      ref = gen.perturbed(lp, 1.0);
    const Mat<double> m = gen.mask(B, T, 1, true);
    for (KLEstimator e : kAll) {
        INFO(rlpo::penalties::to_string(e));
        const KLOptions o = KLOptions::verl(e);
        rlpo_test::Invariance inv;
        inv.bitwise_grad = true;
        inv.metrics = {"kl"};
        rlpo_test::require_micro_batch_invariance(
            [&](Index r0, Index nr, const rlpo::Normalizer& n) {
                return rlpo::penalties::kl_penalty(Mat<double>(lp.middleRows(r0, nr)),
                                                   Mat<double>(ref.middleRows(r0, nr)),
                                                   Mat<double>(m.middleRows(r0, nr)), o, n);
            },
            m, inv);
        inv.metrics.clear();
        rlpo_test::require_micro_batch_invariance(
            [&](Index r0, Index nr, const rlpo::Normalizer& n) {
                return rlpo::penalties::kl_penalty_corrected(
                    Mat<double>(lp.middleRows(r0, nr)), Mat<double>(old.middleRows(r0, nr)),
                    Mat<double>(ref.middleRows(r0, nr)), Mat<double>(m.middleRows(r0, nr)), o, n);
            },
            m, inv);
        // the vectorised pass agrees with the scalar estimator, token by token
        rlpo::Normalizer sum;
        sum.mode = Aggregation::TokenSum;
        const auto tok = rlpo::penalties::kl_penalty(lp, ref, m, o, sum);
        double expect = 0, worst = 0;
        for (Index i = 0; i < B; ++i)
            for (Index t = 0; t < T; ++t)
                if (m(i, t) != 0) {
                    const auto lg = rlpo::penalties::kl_estimate(lp(i, t) - ref(i, t), o);
                    expect += lg.loss;
                    worst = std::max(worst, std::abs(tok.grad(i, t) - lg.grad) /
                                                std::max(1.0, std::abs(lg.grad)));
                }
        CHECK(worst < 1e-13);
        CHECK(tok.value == Approx(expect).epsilon(1e-12));
    }
}

TEST_CASE("kl_penalty: bad input gives the documented error", "[penalties][kl][bad-input]") {
    const Mat<double> x = Mat<double>::Zero(2, 3), m = Mat<double>::Ones(2, 3), y(3, 3);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::kl_penalty(x, y, m),
                                    "penalties::kl_penalty(): ref_logp: expected shape [2, 3]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::kl_penalty(x, x, y), "mask: expected shape");
    KLOptions o;
    o.log_ratio_clamp = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::kl_penalty(x, x, m, o),
                                    "log_ratio_clamp: must be > 0");
    o = {};
    o.value_clamp = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::kl_penalty(x, x, m, o),
                                    "value_clamp: must be > 0");
    Mat<double> bad = x;
    bad(0, 1) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::kl_penalty(x, bad, m),
                                    "ref_logp: NaN at [0, 1]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::parse_kl_estimator("k4"),
                                    "valid names: kl, k1, abs, mse, k2, low_var_kl, k3");
    const auto empty = rlpo::penalties::kl_penalty(x, x, Mat<double>::Zero(2, 3));
    CHECK(empty.value == 0.0);
    CHECK(empty.metrics["kl"] == 0.0);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::parse_kl_estimator("k4+"), "low_var_kl+, k3+");
    // per-token values: wrong shape, or the default (allocating) mode
    Mat<double> small(2, 2);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::penalties::kl_penalty(x, x, m, {}, {}, {}, rlpo::write_to(small)),
        "GradientOut: expected shape [2, 3], given [2, 2]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::penalties::kl_penalty(x, x, m, {}, {}, {}, rlpo::GradientOut<double>{}),
        "token_values: pass rlpo::write_to(buffer), rlpo::add_to(buffer) or nothing");
    // importance-corrected
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::penalties::kl_penalty_corrected(x, y, x, m),
        "penalties::kl_penalty_corrected(): old_logp: expected shape [2, 3]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::kl_penalty_corrected(x, x, y, m),
                                    "ref_logp: expected shape");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::kl_penalty_corrected(x, bad, x, m),
                                    "old_logp: NaN at [0, 1]");
    o = {};
    o.value_clamp = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::kl_penalty_corrected(x, x, x, m, o),
                                    "value_clamp: must be > 0");
    // KL in reward
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::kl_in_reward(x, x, x, m, -0.1),
                                    "penalties::kl_in_reward(): beta: must be >= 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::kl_in_reward(x, y, x, m, 0.1),
                                    "old_logp: expected shape");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::kl_in_reward(bad, x, x, m, 0.1),
                                    "scores: NaN at [0, 1]");
    Mat<double> neg_mask = m;
    neg_mask(1, 1) = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::kl_in_reward(x, x, x, neg_mask, 0.1),
                                    "mask: entries must be finite and >= 0");
    const auto r0 = rlpo::penalties::kl_in_reward(x, x, x, Mat<double>::Zero(2, 3), 0.1);
    CHECK(r0.metrics["reward_kl_penalty"] == 0.0);
    CHECK(r0.rewards.isZero());
}
