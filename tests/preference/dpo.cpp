// The DPO family (TRL DPOTrainer loss types), four ways.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/invariance.hpp"
#include "support/torch_reference.hpp"

#include <rlpo/preference/dpo.hpp>
#include <rlpo/testing/random.hpp>

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace {

using rlpo::Index;
using rlpo::Mat;
using rlpo::preference::CompletionLengths;
using rlpo::preference::dpo_loss;
using rlpo::preference::DPOLoss;
using rlpo::preference::DPOOptions;
using Vec = Eigen::VectorXd;

const std::vector<DPOLoss>& all_losses() {
    static const std::vector<DPOLoss> v{
        DPOLoss::Sigmoid,     DPOLoss::Hinge,      DPOLoss::IPO,      DPOLoss::Robust,
        DPOLoss::EXOPair,     DPOLoss::NCAPair,    DPOLoss::SPPOHard, DPOLoss::AOT,
        DPOLoss::AOTUnpaired, DPOLoss::APOZero,    DPOLoss::APODown,  DPOLoss::DiscoPOP,
        DPOLoss::BCOPair,     DPOLoss::SigmoidNorm};
    return v;
}

/// B pairs of summed log-probs: policy and reference near each other (|u| ≲ `spread`).
struct Pairs {
    Vec pc, pr, rc, rr;
    CompletionLengths len;
};
Pairs random_pairs(std::uint64_t seed, Index B, double spread) {
    rlpo::testing::Generator gen(seed);
    Pairs p;
    p.pc.resize(B);
    p.pr.resize(B);
    p.rc.resize(B);
    p.rr.resize(B);
    p.len.chosen.resize(B);
    p.len.rejected.resize(B);
    for (Index i = 0; i < B; ++i) {
        p.rc(i) = -gen.uniform(5.0, 80.0);
        p.rr(i) = -gen.uniform(5.0, 80.0);
        p.pc(i) = p.rc(i) + gen.uniform(-spread, spread);
        p.pr(i) = p.rr(i) + gen.uniform(-spread, spread);
        p.len.chosen(i) = std::floor(gen.uniform(0.0, 40.0));  // 0 is clamped to 1
        p.len.rejected(i) = std::floor(gen.uniform(1.0, 40.0));
    }
    return p;
}

DPOOptions options_for(DPOLoss l, double beta) {
    DPOOptions o = DPOOptions::of(l, beta);
    o.label_smoothing = 0.1;  // read by sigmoid (cDPO), robust, exo_pair, aot*
    o.bco_delta = 0.03;
    o.discopop_tau = 0.05;
    return o;
}

/// [2, B] matrix of the policy inputs (row 0 chosen, row 1 rejected).
Mat<double> stacked(const Pairs& p) {
    Mat<double> x(2, p.pc.size());
    x.row(0) = p.pc.transpose();
    x.row(1) = p.pr.transpose();
    return x;
}

double value_at(const Mat<double>& x, const Pairs& p, const DPOOptions& o) {
    const Vec c = x.row(0).transpose(), r = x.row(1).transpose();
    return dpo_loss(c, r, p.rc, p.rr, o, rlpo::no_grad<double>(), p.len).value;
}

}  // namespace

TEST_CASE("dpo: gradient equals central finite differences", "[preference][dpo][fd]") {
    std::uint64_t seed = 10;
    for (DPOLoss l : all_losses())
        for (double beta : {0.1, 0.5})
            for (double spread : {3.0, 30.0}) {
                INFO(rlpo::preference::to_string(l) << " beta " << beta << " spread " << spread);
                const Pairs p = random_pairs(seed++, 9, spread);
                const DPOOptions o = options_for(l, beta);
                const auto r = dpo_loss(p.pc, p.pr, p.rc, p.rr, o, {}, p.len);
                REQUIRE(r.grad.rows() == 2);
                REQUIRE(r.grad.cols() == 9);
                // hinge: skip pairs within the step of its kink h = 1
                const auto skip = [&](Index k) {
                    if (l != DPOLoss::Hinge) return false;
                    const Index i = k % 9;
                    const double h = beta * ((p.pc(i) - p.rc(i)) - (p.pr(i) - p.rr(i)));
                    return std::abs(h - 1) < 1e-3;
                };
                rlpo_test::require_fd_gradient(
                    [&](const Mat<double>& x) { return value_at(x, p, o); }, stacked(p), r.grad,
                    1e-6, 1e-9, skip);
            }
    SECTION("every loss type under each f-divergence score") {
        for (auto f : {rlpo::preference::FDivergence::ForwardKL, rlpo::preference::FDivergence::JS,
                       rlpo::preference::FDivergence::Alpha})
            for (DPOLoss l : all_losses()) {
                INFO(rlpo::preference::to_string(l) << " " << rlpo::preference::to_string(f));
                const Pairs p = random_pairs(seed++, 7, 3.0);
                DPOOptions o = options_for(l, 0.5);
                o.f_divergence = f;
                o.f_alpha = 0.5;
                const auto r = dpo_loss(p.pc, p.pr, p.rc, p.rr, o, {}, p.len);
                const auto skip = [&](Index k) {
                    if (l != DPOLoss::Hinge) return false;
                    const Index i = k % 7;
                    const double uc = p.pc(i) - p.rc(i), ur = p.pr(i) - p.rr(i);
                    const double
                        sc = rlpo::preference::detail::f_score(uc, o.f_divergence, o.f_alpha).first,
                        sr = rlpo::preference::detail::f_score(ur, o.f_divergence, o.f_alpha).first;
                    return std::abs(0.5 * (sc - sr) - 1) < 1e-3;
                };
                rlpo_test::require_fd_gradient(
                    [&](const Mat<double>& x) { return value_at(x, p, o); }, stacked(p), r.grad,
                    1e-6, 1e-9, skip);
            }
    }
    SECTION("WPO pair weights on every non-sorting loss type") {
        rlpo::testing::Generator gen(5);
        for (DPOLoss l : all_losses()) {
            if (l == DPOLoss::AOT || l == DPOLoss::AOTUnpaired) continue;
            INFO(rlpo::preference::to_string(l));
            const Pairs p = random_pairs(seed++, 7, 3.0);
            Vec w(7);
            for (Index i = 0; i < 7; ++i) w(i) = gen.uniform(0.0, 2.0);
            const DPOOptions o = options_for(l, 0.5);
            const auto r = dpo_loss(p.pc, p.pr, p.rc, p.rr, o, {}, p.len, w);
            rlpo_test::require_fd_gradient(
                [&](const Mat<double>& x) {
                    const Vec c = x.row(0).transpose(), q = x.row(1).transpose();
                    return dpo_loss(c, q, p.rc, p.rr, o, rlpo::no_grad<double>(), p.len, w).value;
                },
                stacked(p), r.grad, 1e-6, 1e-9,
                [&](Index k) {
                    if (l != DPOLoss::Hinge) return false;
                    const Index i = k % 7;
                    return std::abs(0.5 * ((p.pc(i) - p.rc(i)) - (p.pr(i) - p.rr(i))) - 1) < 1e-3;
                });
        }
    }
    SECTION("several loss types with weights, and a global pair count") {
        const Pairs p = random_pairs(99, 8, 10.0);
        DPOOptions o = rlpo::preference::make_dpo_options({"sigmoid", "ipo", "aot", "bco_pair"},
                                                          {0.8, 0.2, 1.0, -0.5});
        o.num_pairs = 20.0;
        const auto r = dpo_loss(p.pc, p.pr, p.rc, p.rr, o, {}, p.len);
        rlpo_test::require_fd_gradient([&](const Mat<double>& x) { return value_at(x, p, o); },
                                       stacked(p), r.grad);
    }
}

TEMPLATE_TEST_CASE("dpo: agrees with the PyTorch autograd reference (TRL's formulas)",
                   "[preference][dpo][torch]", float, double) {
    using S = TestType;
    using V = Eigen::Matrix<S, Eigen::Dynamic, 1>;
    rlpo_test::TorchReference ref("preference", std::string("dpo_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        V pc, pr, rc, rr;
        CompletionLengths len;
        DPOOptions o;
        std::string names;
        std::optional<Vec> w;
    };
    std::vector<Run> runs;
    const auto add = [&](const Pairs& p, const DPOOptions& o, const std::string& names,
                         const std::vector<double>& weights,
                         const std::optional<Vec>& pair_weights = std::nullopt) {
        Run r{p.pc.cast<S>(), p.pr.cast<S>(), p.rc.cast<S>(), p.rr.cast<S>(), p.len, o,
              names,          pair_weights};
        auto& c = ref.add<S>("dpo");
        c.in("policy_chosen_logps", Mat<double>(r.pc.template cast<double>()))
            .in("policy_rejected_logps", Mat<double>(r.pr.template cast<double>()))
            .in("ref_chosen_logps", Mat<double>(r.rc.template cast<double>()))
            .in("ref_rejected_logps", Mat<double>(r.rr.template cast<double>()))
            .in("len_chosen", Mat<double>(p.len.chosen))
            .in("len_rejected", Mat<double>(p.len.rejected));
        c.p("beta", o.beta)
            .p("label_smoothing", o.label_smoothing)
            .p("sigmoid_smoothing", o.sigmoid_label_smoothing ? 1.0 : 0.0)
            .p("discopop_tau", o.discopop_tau)
            .p("bco_delta", o.bco_delta);
        if (o.num_pairs) c.p("num_pairs", *o.num_pairs);
        if (!weights.empty()) {
            Mat<double> w(static_cast<Index>(weights.size()), 1);
            for (std::size_t k = 0; k < weights.size(); ++k)
                w(static_cast<Index>(k), 0) = weights[k];
            c.p("weights", w);
        }
        c.s("losses", names);
        if (pair_weights) c.in("pair_weights", Mat<double>(*pair_weights));
        c.s("f_divergence", rlpo::preference::to_string(o.f_divergence)).p("f_alpha", o.f_alpha);
        runs.push_back(std::move(r));
    };
    std::uint64_t seed = 500;
    for (DPOLoss l : all_losses()) {
        const std::string name = rlpo::preference::to_string(l);
        for (double beta : {0.1, 0.7}) {
            add(random_pairs(seed++, 11, 4.0), options_for(l, beta), name, {});
            // adversarial: |β·h| up to ~100 (saturated sigmoids), h = 0 exactly, tiny margins
            Pairs a = random_pairs(seed++, 11, 150.0);
            a.pc(0) = a.rc(0);
            a.pr(0) = a.rr(0);  // u_c = u_r = 0
            a.pc(1) = a.rc(1) + 1e-9;
            a.pr(1) = a.rr(1);
            DPOOptions o = options_for(l, beta);
            if (l == DPOLoss::EXOPair) o.label_smoothing = 1e-3;  // the EXO paper's ε
            if (l == DPOLoss::Sigmoid) o.label_smoothing = 0.0;   // plain DPO
            add(a, o, name, {});
        }
    }
    // f-DPO scores (TRL f_divergence_type) under every loss type
    for (const char* f : {"forward_kl", "js_divergence", "alpha_divergence"})
        for (double alpha : {0.5, 1.0, 2.5}) {
            if (std::string(f) != "alpha_divergence" && alpha != 0.5) continue;
            for (DPOLoss l : all_losses()) {
                DPOOptions o = options_for(l, 0.3);
                o.f_divergence = rlpo::preference::parse_f_divergence(f);
                o.f_alpha = alpha;
                add(random_pairs(seed++, 7, 4.0), o, rlpo::preference::to_string(l), {});
            }
        }
    {  // α-divergence beyond TRL's clamp (α − 1)·u ≤ 80: constant score, no gradient
        DPOOptions o = rlpo::preference::make_dpo_options({"sigmoid", "sppo_hard"});
        o.f_divergence = rlpo::preference::FDivergence::Alpha;
        o.f_alpha = 3.0;
        // sppo_hard's gradient 2·score·e^t (~1e69) overflows float: double only
        if (sizeof(S) == 4) o.terms.pop_back();
        add(random_pairs(seed++, 8, 90.0), o, sizeof(S) == 4 ? "sigmoid" : "sigmoid,sppo_hard", {});
    }
    {  // WPO pair weights (TRL use_weighting) on every non-sorting loss type, with zeros
        rlpo::testing::Generator gen(77);
        for (DPOLoss l : all_losses()) {
            if (l == DPOLoss::AOT || l == DPOLoss::AOTUnpaired) continue;
            Vec w(9);
            for (Index i = 0; i < 9; ++i) w(i) = gen.uniform(0.0, 1.0);
            w(3) = 0.0;
            add(random_pairs(seed++, 9, 4.0), options_for(l, 0.2), rlpo::preference::to_string(l),
                {}, w);
        }
    }
    {  // current TRL's sigmoid ignores label_smoothing
        DPOOptions o = DPOOptions::trl();
        o.label_smoothing = 0.3;
        add(random_pairs(seed++, 6, 5.0), o, "sigmoid", {});
    }
    {  // TRL loss_type list + loss_weights (MPO-like), with a global pair count
        DPOOptions o = rlpo::preference::make_dpo_options(
            {"sigmoid", "ipo", "aot_pair", "discopop"}, {0.8, 0.2, 1.0, 0.5});
        o.num_pairs = 30.0;
        add(random_pairs(seed++, 10, 6.0), o, "sigmoid,ipo,aot_unpaired,discopop",
            {0.8, 0.2, 1.0, 0.5});
    }
    ref.run();
    // float inputs are compared with the exact (float64) answer for the same rounded inputs
    const double tol = sizeof(S) == 4 ? 1e-5 : 1e-12;
    for (std::size_t k = 0; k < runs.size(); ++k) {
        const auto& r = runs[k];
        INFO("case " << k << " (" << r.names << ", beta " << r.o.beta << ")");
        const auto res = dpo_loss(r.pc, r.pr, r.rc, r.rr, r.o, {}, r.len, r.w);
        CHECK(rlpo_test::rel_err(res.value, ref.scalar(k, "value")) < tol);
        const double grad_err = rlpo_test::max_rel_err(res.grad, ref.out(k, "grad"));
        INFO("gradient: max relative error " << grad_err << "\nrlpo\n"
                                             << res.grad << "\ntorch\n"
                                             << ref.out(k, "grad"));
        // f-DPO scores e^{(α−1)u} enter saturated sigmoids (σ(h)σ(−h) ≈ e^{−|h|}): TRL's term-wise
        // autograd and rlpo's closed form differ by a few 1e-15 absolute there, 1e-12 relative
        // on entries 40× below the largest
        const bool scored = r.o.f_divergence != rlpo::preference::FDivergence::ReverseKL;
        CHECK(grad_err < (scored && sizeof(S) == 8 ? 1e-11 : tol));
        for (const char* m : {"rewards/chosen", "rewards/rejected", "rewards/accuracies",
                              "rewards/margins", "logps/chosen", "logps/rejected"}) {
            INFO(m);
            CHECK(rlpo_test::rel_err(res.metrics[m], ref.scalar(k, m), 1e-9) < tol);
        }
    }
}

TEST_CASE("dpo: properties", "[preference][dpo][properties]") {
    const Pairs p = random_pairs(7, 10, 6.0);
    SECTION("sigmoid with label smoothing 0 is plain DPO, −log σ(βh), gradient ∓β σ(−βh)/B") {
        const DPOOptions o = DPOOptions::of(DPOLoss::Sigmoid, 0.2);
        const auto r = dpo_loss(p.pc, p.pr, p.rc, p.rr, o);
        double v = 0;
        for (Index i = 0; i < 10; ++i) {
            const double h = 0.2 * ((p.pc(i) - p.rc(i)) - (p.pr(i) - p.rr(i)));
            v += std::log1p(std::exp(-h)) / 10;
            const double g = -0.2 / (1 + std::exp(h)) / 10;
            CHECK(r.grad(0, i) == Approx(g).epsilon(1e-13));
            CHECK(r.grad(1, i) == Approx(-g).epsilon(1e-13));
        }
        CHECK(r.value == Approx(v).epsilon(1e-13));
        DPOOptions t = DPOOptions::trl();  // current TRL: ε ignored by sigmoid
        t.beta = 0.2;
        t.label_smoothing = 0.4;
        const auto x = dpo_loss(p.pc, p.pr, p.rc, p.rr, t);
        CHECK(x.value == r.value);
        CHECK(x.grad == r.grad);
    }
    SECTION("robust and aot with ε = 0 equal sigmoid (aot on sorted pairs: same sum when B = 1)") {
        const auto s = dpo_loss(p.pc, p.pr, p.rc, p.rr, DPOOptions::of(DPOLoss::Sigmoid));
        const auto rb = dpo_loss(p.pc, p.pr, p.rc, p.rr, DPOOptions::of(DPOLoss::Robust));
        CHECK(rb.value == Approx(s.value).epsilon(1e-14));
        const auto a = dpo_loss(p.pc.head(1), p.pr.head(1), p.rc.head(1), p.rr.head(1),
                                DPOOptions::of(DPOLoss::AOT));
        const auto b = dpo_loss(p.pc.head(1), p.pr.head(1), p.rc.head(1), p.rr.head(1),
                                DPOOptions::of(DPOLoss::Sigmoid));
        CHECK(a.value == Approx(b.value).epsilon(1e-14));
    }
    SECTION(
        "f-divergences: α = 1 is reverse KL; JS is TRL 0.24's h − β·(softplus(u_c) − "
        "softplus(u_r))") {
        DPOOptions a = DPOOptions::of(DPOLoss::Sigmoid, 0.3);
        const auto rev = dpo_loss(p.pc, p.pr, p.rc, p.rr, a);
        a.f_divergence = rlpo::preference::FDivergence::Alpha;
        a.f_alpha = 1.0;
        const auto one = dpo_loss(p.pc, p.pr, p.rc, p.rr, a);
        CHECK(one.value == rev.value);
        CHECK(one.grad == rev.grad);
        a.f_divergence = rlpo::preference::FDivergence::JS;
        const auto js = dpo_loss(p.pc, p.pr, p.rc, p.rr, a);
        double v = 0;
        for (Index i = 0; i < 10; ++i) {
            const double uc = p.pc(i) - p.rc(i), ur = p.pr(i) - p.rr(i);
            const double h =
                0.3 * ((uc - ur) - (std::log1p(std::exp(uc)) - std::log1p(std::exp(ur))));
            v += std::log1p(std::exp(-h)) / 10;
        }
        CHECK(js.value == Approx(v).epsilon(1e-12));
    }
    SECTION("IPO's minimiser: per-token log-ratio margin 1/(2β) gives value 0 and gradient 0") {
        const double beta = 0.25;
        Vec pc = p.rc, pr = p.rr;
        CompletionLengths len{Vec::Constant(10, 4.0), Vec::Constant(10, 2.0)};
        for (Index i = 0; i < 10; ++i) {
            const double ur = 0.5 * i - 2;  // any u_r; u_c/4 − u_r/2 = 1/(2β) = 2
            pr(i) = p.rr(i) + ur;
            pc(i) = p.rc(i) + 4 * (2 + ur / 2);
        }
        const auto r = dpo_loss(pc, pr, p.rc, p.rr, DPOOptions::of(DPOLoss::IPO, beta), {}, len);
        CHECK(r.value == Approx(0.0).margin(1e-24));
        CHECK(r.grad.cwiseAbs().maxCoeff() < 1e-12);
        // off the minimiser by e (per token): value e², gradient 2e/|y_c|/B for the chosen
        pc(0) += 4 * 0.1;
        const auto q = dpo_loss(pc, pr, p.rc, p.rr, DPOOptions::of(DPOLoss::IPO, beta), {}, len);
        CHECK(q.value == Approx(0.01 / 10).epsilon(1e-9));
        CHECK(q.grad(0, 0) == Approx(2 * 0.1 / 4 / 10).epsilon(1e-9));
        CHECK(q.grad(1, 0) == Approx(-2 * 0.1 / 2 / 10).epsilon(1e-9));
    }
    SECTION("symmetric pairs (a, b) and (b, a): accuracy 0.5, margin 0, symmetric rewards") {
        Vec pc(2), pr(2), rc(2), rr(2);
        pc << -10, -12;
        pr << -12, -10;
        rc << -11, -11;
        rr << -11, -11;
        for (DPOLoss l : all_losses()) {
            INFO(rlpo::preference::to_string(l));
            DPOOptions o = options_for(l, 0.1);
            const auto r =
                dpo_loss(pc, pr, rc, rr, o, {}, CompletionLengths{Vec::Ones(2), Vec::Ones(2)});
            CHECK(r.metrics["rewards/accuracies"] == 0.5);
            CHECK(r.metrics["rewards/margins"] == Approx(0.0).margin(1e-15));
            CHECK(r.metrics["rewards/chosen"] == Approx(r.metrics["rewards/rejected"]));
            CHECK(r.metrics["logps/chosen"] == -11.0);
        }
    }
    SECTION("β → 0: sigmoid → log 2 with ∂/∂π_c → −β/(2B); hinge → 1; apo_zero → 1") {
        const double beta = 1e-9;
        const auto s = dpo_loss(p.pc, p.pr, p.rc, p.rr, DPOOptions::of(DPOLoss::Sigmoid, beta));
        CHECK(s.value == Approx(std::log(2.0)).epsilon(1e-7));
        CHECK(s.grad(0, 3) / beta == Approx(-0.5 / 10).epsilon(1e-7));
        const auto h = dpo_loss(p.pc, p.pr, p.rc, p.rr, DPOOptions::of(DPOLoss::Hinge, beta));
        CHECK(h.value == Approx(1.0).epsilon(1e-7));
        const auto z = dpo_loss(p.pc, p.pr, p.rc, p.rr, DPOOptions::of(DPOLoss::APOZero, beta));
        CHECK(z.value == Approx(1.0).epsilon(1e-7));
    }
    SECTION("micro-batches with a global pair count add up to the whole batch") {
        for (DPOLoss l : all_losses()) {
            if (l == DPOLoss::AOT || l == DPOLoss::AOTUnpaired) continue;  // sort per call
            INFO(rlpo::preference::to_string(l));
            DPOOptions o = options_for(l, 0.3);
            const auto whole = dpo_loss(p.pc, p.pr, p.rc, p.rr, o, {}, p.len);
            o.num_pairs = 10.0;
            rlpo_test::require_example_invariance(whole, 10, [&](Index r0, Index n) {
                const CompletionLengths len{p.len.chosen.segment(r0, n),
                                            p.len.rejected.segment(r0, n)};
                return dpo_loss(p.pc.segment(r0, n), p.pr.segment(r0, n), p.rc.segment(r0, n),
                                p.rr.segment(r0, n), o, {}, len);
            });
        }
    }
    SECTION("GradientOut: write_to a [2, B] view of TRL's concatenated buffer, add_to, no_grad") {
        const auto own = dpo_loss(p.pc, p.pr, p.rc, p.rr);
        std::vector<double> buf(20, 7.0);
        auto view = rlpo::view(buf.data(), 2, 10);
        const auto w = dpo_loss(p.pc, p.pr, p.rc, p.rr, {}, rlpo::write_to<double>(view, 2.0));
        CHECK(w.grad.size() == 0);
        CHECK(w.value == Approx(2 * own.value).epsilon(1e-15));
        for (Index i = 0; i < 10; ++i) {
            CHECK(buf[static_cast<std::size_t>(i)] == Approx(2 * own.grad(0, i)));       // chosen
            CHECK(buf[static_cast<std::size_t>(10 + i)] == Approx(2 * own.grad(1, i)));  // rejected
        }
        (void)dpo_loss(p.pc, p.pr, p.rc, p.rr, {}, rlpo::add_to<double>(view, -2.0));
        for (double x : buf) CHECK(x == Approx(0.0).margin(1e-15));
        const auto n = dpo_loss(p.pc, p.pr, p.rc, p.rr, {}, rlpo::no_grad<double>());
        CHECK(n.value == own.value);
        CHECK(n.metrics["rewards/margins"] == own.metrics["rewards/margins"]);
    }
    SECTION("float and double inputs, row vectors and maps give the same loss") {
        const auto d = dpo_loss(p.pc, p.pr, p.rc, p.rr);
        const Eigen::RowVectorXd row = p.pr.transpose();
        const Eigen::Map<const Vec> map(p.rc.data(), 10);
        const auto r = dpo_loss(p.pc, row, map, p.rr);
        CHECK(r.value == d.value);
        const Eigen::VectorXf f = p.pc.cast<float>();
        const auto fr = dpo_loss(f, p.pr.cast<float>(), p.rc.cast<float>(), p.rr.cast<float>());
        CHECK(fr.value == Approx(d.value).epsilon(1e-4));
    }
    SECTION("discopop stays finite where exp(−h)·σ(h/τ) is inf·0 in TRL's product form") {
        Vec pc(1), pr(1), z(1);
        pc << -5000.0;
        pr << 0.0;
        z << 0.0;  // h = β·(−5000) = −500: exp(500) is finite, σ(−10⁴) underflows to 0
        const auto r = dpo_loss(pc, pr, z, z, DPOOptions::of(DPOLoss::DiscoPOP));
        CHECK(std::isfinite(r.value));
        CHECK(r.value == Approx(500.0).epsilon(1e-12));  // → −logσ(h) ≈ −h
        CHECK(std::isfinite(r.grad(0, 0)));
    }
    SECTION("pair weights: all 1 is unweighted, all 2 doubles value and gradient") {
        const auto u = dpo_loss(p.pc, p.pr, p.rc, p.rr);
        const auto one = dpo_loss(p.pc, p.pr, p.rc, p.rr, {}, {}, std::nullopt, Vec(Vec::Ones(10)));
        CHECK(one.value == u.value);
        CHECK(one.grad == u.grad);
        const auto two =
            dpo_loss(p.pc, p.pr, p.rc, p.rr, {}, {}, std::nullopt, Vec(Vec::Constant(10, 2.0)));
        CHECK(two.value == 2 * u.value);
        CHECK(two.grad == 2 * u.grad);
        CHECK(two.metrics["rewards/margins"] == u.metrics["rewards/margins"]);  // unweighted
    }
    SECTION("B = 0: value 0, empty gradient, metrics 0") {
        const Vec e(0);
        const auto r = dpo_loss(e, e, e, e);
        CHECK(r.value == 0.0);
        CHECK(r.grad.size() == 0);
        CHECK(r.metrics["rewards/accuracies"] == 0.0);
    }
    SECTION("the registry: TRL names parse (aot_pair = aot_unpaired) and print canonically") {
        for (DPOLoss l : all_losses())
            CHECK(rlpo::preference::parse_dpo_loss(rlpo::preference::to_string(l)) == l);
        CHECK(rlpo::preference::parse_dpo_loss("aot_pair") == DPOLoss::AOTUnpaired);
        CHECK(std::string(rlpo::preference::to_string(DPOLoss::AOTUnpaired)) == "aot_unpaired");
        const DPOOptions o = rlpo::preference::make_dpo_options({"ipo", "sigmoid"});
        REQUIRE(o.terms.size() == 2);
        CHECK(o.terms[0].loss == DPOLoss::IPO);
        CHECK(o.terms[1].weight == 1.0);
        CHECK_FALSE(o.sigmoid_label_smoothing);  // current TRL
    }
}

TEST_CASE("dpo: bad input gives the documented error", "[preference][dpo][bad-input]") {
    const Vec x = Vec::Constant(3, -5.0), y = Vec::Constant(4, -5.0);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(dpo_loss(x, y, x, x),
                                    "preference::dpo_loss(): policy_rejected_logps: expected 3 "
                                    "entries (same as policy_chosen_logps), given 4");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(dpo_loss(x, x, y, x), "ref_chosen_logps: expected 3 entries");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(dpo_loss(x, x, x, y), "ref_rejected_logps: expected 3 entries");
    const Mat<double> m = Mat<double>::Zero(2, 3);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(dpo_loss(m, x, x, x),
                                    "policy_chosen_logps: expected a vector (one entry per pair)");
    Vec bad = x;
    bad(2) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(dpo_loss(x, bad, x, x),
                                    "preference::dpo_loss(): policy_rejected_logps: NaN at pair 2");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(dpo_loss(x, x, x, bad), "ref_rejected_logps: NaN at pair 2");
    bad(2) = -std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(dpo_loss(bad, x, x, x),
                                    "policy_chosen_logps: non-finite value -inf at pair 2");
    DPOOptions o;
    o.beta = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(dpo_loss(x, x, x, x, o),
                                    "preference::dpo_loss(): beta: must be > 0, given 0");
    o.beta = -0.1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(dpo_loss(x, x, x, x, o), "beta: must be > 0");
    o = {};
    o.label_smoothing = 0.6;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(dpo_loss(x, x, x, x, o),
                                    "label_smoothing: must be in [0, 0.5], given 0.6");
    o.label_smoothing = -0.01;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(dpo_loss(x, x, x, x, o),
                                    "label_smoothing: must be in [0, 0.5]");
    o = DPOOptions::of(DPOLoss::Robust);
    o.label_smoothing = 0.5;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(dpo_loss(x, x, x, x, o), "must be < 0.5 for 'robust'");
    o = DPOOptions::of(DPOLoss::EXOPair);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(dpo_loss(x, x, x, x, o), "must be > 0 for 'exo_pair'");
    o = DPOOptions::of(DPOLoss::DiscoPOP);
    o.discopop_tau = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(dpo_loss(x, x, x, x, o), "discopop_tau: must be > 0");
    o = DPOOptions::of(DPOLoss::BCOPair);
    o.bco_delta = std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(dpo_loss(x, x, x, x, o), "bco_delta: must be finite");
    for (DPOLoss l : {DPOLoss::IPO, DPOLoss::SigmoidNorm}) {
        o = DPOOptions::of(l);
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(dpo_loss(x, x, x, x, o),
                                        "averages the log-ratios over the completion lengths");
    }
    o = DPOOptions::of(DPOLoss::IPO);
    CompletionLengths short_len, negative_len;
    short_len.chosen = Vec::Ones(3);
    short_len.rejected = Vec::Ones(2);
    negative_len.chosen = -Vec::Ones(3);
    negative_len.rejected = Vec::Ones(3);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(dpo_loss(x, x, x, x, o, {}, short_len),
                                    "lengths.rejected: expected 3 entries");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(dpo_loss(x, x, x, x, o, {}, negative_len),
                                    "lengths: must be >= 0");
    const Vec w3 = Vec::Ones(3), w2 = Vec::Ones(2);
    Vec wneg = w3, wnan = w3;
    wneg(1) = -0.5;
    wnan(1) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(dpo_loss(x, x, x, x, {}, {}, std::nullopt, w2),
                                    "pair_weights: expected 3 entries");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(dpo_loss(x, x, x, x, {}, {}, std::nullopt, wneg),
                                    "pair_weights: must be >= 0, given -0.5 at pair 1");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(dpo_loss(x, x, x, x, {}, {}, std::nullopt, wnan),
                                    "pair_weights: NaN at pair 1");
    for (DPOLoss l : {DPOLoss::AOT, DPOLoss::AOTUnpaired})
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(
            dpo_loss(x, x, x, x, DPOOptions::of(l), {}, std::nullopt, w3),
            "sorts the pairs, which would misalign per-pair weights");
    o = {};
    o.num_pairs = 0.0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(dpo_loss(x, x, x, x, o), "num_pairs: must be > 0");
    o = {};
    o.terms.clear();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(dpo_loss(x, x, x, x, o), "terms: at least one loss type");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::preference::parse_dpo_loss("dpo"),
        "preference::parse_dpo_loss(): name: unknown DPO loss type 'dpo'; valid names: sigmoid, "
        "hinge, ipo, robust, exo_pair, nca_pair, sppo_hard, aot, aot_unpaired, aot_pair, apo_zero, "
        "apo_down, discopop, bco_pair, sigmoid_norm, sft");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::preference::parse_f_divergence("kl"),
                                    "preference::parse_f_divergence(): name: unknown f-divergence "
                                    "'kl'; valid names: reverse_kl, forward_kl, js_divergence, "
                                    "alpha_divergence");
    o = {};
    o.f_divergence = rlpo::preference::FDivergence::Alpha;
    o.f_alpha = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(dpo_loss(x, x, x, x, o), "f_alpha: must be finite");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::preference::make_dpo_options({"sigmoid", "kto_pair"}),
                                    "unknown DPO loss type 'kto_pair'");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::preference::make_dpo_options({"sigmoid", "ipo"}, {1.0}),
        "preference::make_dpo_options(): loss_weights: expected 2 weights");
}
