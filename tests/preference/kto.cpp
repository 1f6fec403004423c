// KTO (TRL KTOTrainer loss types kto and apo_zero_unpaired), four ways.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/torch_reference.hpp"

#include <rlpo/preference/kto.hpp>
#include <rlpo/testing/random.hpp>

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace {

using rlpo::Index;
using rlpo::Mat;
using rlpo::preference::KLBaseline;
using rlpo::preference::kto_loss;
using rlpo::preference::KTOLoss;
using rlpo::preference::KTOOptions;
using Vec = Eigen::VectorXd;

/// n_c desirable and n_r undesirable examples (|u| ≲ spread) and n_kl KL completions.
struct Examples {
    Vec pc, rc, pr, rr, pkl, rkl;
};
Examples random_examples(std::uint64_t seed, Index nc, Index nr, double spread, Index nkl = 6,
                         double kl_shift = 0.5) {
    rlpo::testing::Generator gen(seed);
    Examples e;
    const auto fill = [&](Vec& p, Vec& r, Index n, double s, double shift) {
        p.resize(n);
        r.resize(n);
        for (Index i = 0; i < n; ++i) {
            r(i) = -gen.uniform(5.0, 80.0);
            p(i) = r(i) + shift + gen.uniform(-s, s);
        }
    };
    fill(e.pc, e.rc, nc, spread, 0.0);
    fill(e.pr, e.rr, nr, spread, 0.0);
    fill(e.pkl, e.rkl, nkl, 1.0, kl_shift);
    return e;
}

/// [1, n_c + n_r]: the chosen policy log-probs, then the rejected ones.
Mat<double> stacked(const Examples& e) {
    Mat<double> x(1, e.pc.size() + e.pr.size());
    x.leftCols(e.pc.size()) = e.pc.transpose();
    x.rightCols(e.pr.size()) = e.pr.transpose();
    return x;
}

double value_at(const Mat<double>& x, const Examples& e, const KLBaseline& kl,
                const KTOOptions& o) {
    const Vec c = x.leftCols(e.pc.size()).transpose(), r = x.rightCols(e.pr.size()).transpose();
    return kto_loss(c, r, e.rc, e.rr, kl, o, rlpo::no_grad<double>()).value;
}

KLBaseline baseline_for(KTOLoss l, const Examples& e) {
    return l == KTOLoss::KTO ? KLBaseline::from_logps(e.pkl, e.rkl) : KLBaseline{};
}

}  // namespace

TEST_CASE("kto: gradient equals central finite differences", "[preference][kto][fd]") {
    std::uint64_t seed = 10;
    for (KTOLoss l : {KTOLoss::KTO, KTOLoss::APOZeroUnpaired})
        for (double beta : {0.1, 0.5})
            for (double spread : {3.0, 30.0})
                for (const auto& [nc, nr] : {std::pair<Index, Index>{5, 4}, {6, 0}, {0, 3}}) {
                    INFO(rlpo::preference::to_string(l)
                         << " beta " << beta << " spread " << spread << " n " << nc << "/" << nr);
                    const Examples e = random_examples(seed++, nc, nr, spread);
                    KTOOptions o = KTOOptions::of(l, beta);
                    o.desirable_weight = 1.3;
                    o.undesirable_weight = 0.7;
                    const KLBaseline kl = baseline_for(l, e);
                    const auto r = kto_loss(e.pc, e.pr, e.rc, e.rr, kl, o);
                    REQUIRE(r.grad.rows() == 1);
                    REQUIRE(r.grad.cols() == nc + nr);
                    rlpo_test::require_fd_gradient(
                        [&](const Mat<double>& x) { return value_at(x, e, kl, o); }, stacked(e),
                        r.grad, 1e-6, 1e-9);
                }
    SECTION("a given z0 and a global example count") {
        const Examples e = random_examples(99, 7, 5, 10.0);
        KTOOptions o;
        o.num_examples = 31.0;
        const KLBaseline kl = KLBaseline::given(0.8);
        const auto r = kto_loss(e.pc, e.pr, e.rc, e.rr, kl, o);
        rlpo_test::require_fd_gradient([&](const Mat<double>& x) { return value_at(x, e, kl, o); },
                                       stacked(e), r.grad);
    }
}

TEMPLATE_TEST_CASE("kto: agrees with the PyTorch autograd reference (TRL's formulas)",
                   "[preference][kto][torch]", float, double) {
    using S = TestType;
    using V = Eigen::Matrix<S, Eigen::Dynamic, 1>;
    rlpo_test::TorchReference ref("preference_unpaired",
                                  std::string("kto_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        V pc, pr, rc, rr;
        KLBaseline kl;
        KTOOptions o;
    };
    std::vector<Run> runs;
    const auto add = [&](const Examples& e, const KTOOptions& o, bool given_kl,
                         double kl_value = 0.0) {
        Run r{e.pc.cast<S>(), e.pr.cast<S>(), e.rc.cast<S>(), e.rr.cast<S>(), {}, o};
        // the KL inputs are rounded to S as well, so both sides see the same numbers
        const Vec pkl = e.pkl.cast<S>().template cast<double>(),
                  rkl = e.rkl.cast<S>().template cast<double>();
        if (o.loss == KTOLoss::KTO)
            r.kl = given_kl ? KLBaseline::given(kl_value) : KLBaseline::from_logps(pkl, rkl);
        auto& c = ref.add<S>("kto");
        c.in("policy_chosen_logps", Mat<double>(r.pc.template cast<double>()))
            .in("policy_rejected_logps", Mat<double>(r.pr.template cast<double>()))
            .in("ref_chosen_logps", Mat<double>(r.rc.template cast<double>()))
            .in("ref_rejected_logps", Mat<double>(r.rr.template cast<double>()));
        if (o.loss == KTOLoss::KTO) {
            if (given_kl)
                c.p("kl", kl_value);
            else
                c.in("policy_KL_logps", Mat<double>(pkl)).in("ref_KL_logps", Mat<double>(rkl));
        }
        c.p("beta", o.beta)
            .p("desirable_weight", o.desirable_weight)
            .p("undesirable_weight", o.undesirable_weight)
            .s("loss_type", rlpo::preference::to_string(o.loss));
        if (o.num_examples) c.p("num_examples", *o.num_examples);
        runs.push_back(std::move(r));
    };
    std::uint64_t seed = 500;
    for (KTOLoss l : {KTOLoss::KTO, KTOLoss::APOZeroUnpaired})
        for (double beta : {0.1, 0.7}) {
            KTOOptions o = KTOOptions::of(l, beta);
            add(random_examples(seed++, 9, 7, 4.0), o, false);
            o.desirable_weight = 1.33;
            o.undesirable_weight = 0.5;
            add(random_examples(seed++, 4, 11, 4.0), o, false);
            // adversarial: |β·(u − z0)| up to ~100 (saturated sigmoids), u = z0 exactly
            Examples a = random_examples(seed++, 8, 8, 150.0);
            a.pc(0) = a.rc(0);
            a.pr(0) = a.rr(0);
            add(a, o, l == KTOLoss::KTO, 0.0);
            add(random_examples(seed++, 6, 0, 4.0), o, false);  // no undesirable examples
            add(random_examples(seed++, 0, 5, 4.0), o, false);  // no desirable examples
        }
    // z0 clamped at 0: KL log-probs with a negative mean difference, and a negative given value
    add(random_examples(seed++, 5, 5, 3.0, 8, -2.0), KTOOptions{}, false);
    add(random_examples(seed++, 5, 5, 3.0), KTOOptions{}, true, -0.4);
    {  // a given z0 and a global example count
        KTOOptions o = KTOOptions::of(KTOLoss::KTO, 0.3);
        o.num_examples = 40.0;
        add(random_examples(seed++, 7, 6, 5.0), o, true, 1.7);
    }
    ref.run();
    const double tol = sizeof(S) == 4 ? 1e-5 : 1e-12;
    for (std::size_t k = 0; k < runs.size(); ++k) {
        const auto& r = runs[k];
        INFO("case " << k << " (" << rlpo::preference::to_string(r.o.loss) << ", beta " << r.o.beta
                     << ", n " << r.pc.size() << "/" << r.pr.size() << ")");
        const auto res = kto_loss(r.pc, r.pr, r.rc, r.rr, r.kl, r.o);
        CHECK(rlpo_test::rel_err(res.value, ref.scalar(k, "value")) < tol);
        const Mat<double> tg = ref.out(k, "grad");
        REQUIRE(tg.size() == res.grad.size());
        const Mat<double> rg = res.grad.template cast<double>();
        INFO("rlpo\n" << rg << "\ntorch\n" << tg.transpose());
        const Mat<double> tgr = Eigen::Map<const Mat<double>>(tg.data(), 1, tg.size());
        if (tg.size() > 0) CHECK(rlpo_test::max_rel_err(rg, tgr) < tol);
        CHECK(rlpo_test::rel_err(res.metrics["kl"], ref.scalar(k, "kl"), 1e-9) < tol);
        const bool nc = r.pc.size() > 0, nr = r.pr.size() > 0;
        CHECK(res.metrics.contains("rewards/chosen") == nc);
        CHECK(res.metrics.contains("logps/chosen") == nc);
        CHECK(res.metrics.contains("rewards/rejected") == nr);
        CHECK(res.metrics.contains("logps/rejected") == nr);
        CHECK(res.metrics.contains("rewards/margins") == (nc && nr));
        for (const char* m : {"rewards/chosen", "logps/chosen", "rewards/rejected",
                              "logps/rejected", "rewards/margins"}) {
            if (!res.metrics.contains(m)) continue;
            INFO(m);
            CHECK(rlpo_test::rel_err(res.metrics[m], ref.scalar(k, m), 1e-9) < tol);
        }
    }
}

TEST_CASE("kto: properties", "[preference][kto][properties]") {
    const Examples e = random_examples(7, 6, 5, 6.0);
    SECTION("z0 is the clamped mean of the KL log-ratios; a negative mean or value gives 0") {
        const auto r = kto_loss(e.pc, e.pr, e.rc, e.rr, KLBaseline::from_logps(e.pkl, e.rkl));
        const double z0 = (e.pkl - e.rkl).mean();
        REQUIRE(z0 > 0);
        CHECK(r.metrics["kl"] == Approx(z0).epsilon(1e-14));
        const auto g = kto_loss(e.pc, e.pr, e.rc, e.rr, KLBaseline::given(z0));
        CHECK(g.value == Approx(r.value).epsilon(1e-14));
        const auto neg = kto_loss(e.pc, e.pr, e.rc, e.rr, KLBaseline::from_logps(e.rkl, e.pkl));
        const auto negv = kto_loss(e.pc, e.pr, e.rc, e.rr, KLBaseline::given(-3.0));
        const auto zero = kto_loss(e.pc, e.pr, e.rc, e.rr, KLBaseline::given(0.0));
        CHECK(neg.metrics["kl"] == 0.0);
        CHECK(negv.metrics["kl"] == 0.0);
        CHECK(neg.value == zero.value);
        CHECK(negv.grad == zero.grad);
    }
    SECTION("kto with z0 = 0 is apo_zero_unpaired; the closed form 1 − σ(βu), σ(βu)") {
        const double beta = 0.3;
        const auto k = kto_loss(e.pc, e.pr, e.rc, e.rr, KLBaseline::given(0.0),
                                KTOOptions::of(KTOLoss::KTO, beta));
        const auto a = kto_loss(e.pc, e.pr, e.rc, e.rr, KLBaseline{},
                                KTOOptions::of(KTOLoss::APOZeroUnpaired, beta));
        CHECK(k.value == Approx(a.value).epsilon(1e-14));
        CHECK(rlpo_test::max_rel_err(k.grad, a.grad) < 1e-14);
        CHECK(a.metrics["kl"] == 0.0);
        double v = 0;
        for (Index i = 0; i < 6; ++i) {
            const double s = 1 / (1 + std::exp(-beta * (e.pc(i) - e.rc(i))));
            v += (1 - s) / 11;
            CHECK(a.grad(0, i) == Approx(-beta * s * (1 - s) / 11).epsilon(1e-12));
        }
        for (Index i = 0; i < 5; ++i) {
            const double s = 1 / (1 + std::exp(-beta * (e.pr(i) - e.rr(i))));
            v += s / 11;
            CHECK(a.grad(0, 6 + i) == Approx(beta * s * (1 - s) / 11).epsilon(1e-12));
        }
        CHECK(a.value == Approx(v).epsilon(1e-13));
    }
    SECTION("u = z0 everywhere: each loss is 1/2 and each gradient ∓β/4 (times λ/N)") {
        Examples s = e;
        const double z0 = 0.25;
        s.pc = s.rc.array() + z0;
        s.pr = s.rr.array() + z0;
        KTOOptions o = KTOOptions::of(KTOLoss::KTO, 0.2);
        o.desirable_weight = 2.0;
        o.undesirable_weight = 0.5;
        const auto r = kto_loss(s.pc, s.pr, s.rc, s.rr, KLBaseline::given(z0), o);
        CHECK(r.value == Approx(0.5 * (2.0 * 6 + 0.5 * 5) / 11).epsilon(1e-14));
        for (Index i = 0; i < 6; ++i) CHECK(r.grad(0, i) == Approx(-2.0 * 0.05 / 11));
        for (Index i = 6; i < 11; ++i) CHECK(r.grad(0, i) == Approx(0.5 * 0.05 / 11));
        CHECK(r.metrics["rewards/margins"] == Approx(0.0).margin(1e-15));
    }
    SECTION("the weights scale their side: λ = 2 doubles, λ_U = 0 keeps only the chosen part") {
        const KLBaseline kl = KLBaseline::given(0.4);
        const auto one = kto_loss(e.pc, e.pr, e.rc, e.rr, kl);
        KTOOptions two;
        two.desirable_weight = two.undesirable_weight = 2.0;
        const auto r2 = kto_loss(e.pc, e.pr, e.rc, e.rr, kl, two);
        CHECK(r2.value == Approx(2 * one.value).epsilon(1e-14));
        CHECK(rlpo_test::max_rel_err(r2.grad, Mat<double>(2 * one.grad)) < 1e-15);
        KTOOptions only_c;
        only_c.undesirable_weight = 0.0;
        const auto c = kto_loss(e.pc, e.pr, e.rc, e.rr, kl, only_c);
        const auto chosen_only = kto_loss(e.pc, Vec(0), e.rc, Vec(0), kl);
        CHECK(c.value == Approx(chosen_only.value * 6.0 / 11.0).epsilon(1e-14));
        for (Index i = 6; i < 11; ++i) CHECK(c.grad(0, i) == 0.0);
        // metrics do not depend on the weights (TRL's are unweighted)
        CHECK(c.metrics["rewards/rejected"] == one.metrics["rewards/rejected"]);
    }
    SECTION("empty sides: metrics of the missing side absent; nothing at all gives 0") {
        const auto c = kto_loss(e.pc, Vec(0), e.rc, Vec(0), KLBaseline::given(0.1));
        CHECK(c.grad.cols() == 6);
        CHECK(c.metrics.contains("rewards/chosen"));
        CHECK_FALSE(c.metrics.contains("rewards/rejected"));
        CHECK_FALSE(c.metrics.contains("rewards/margins"));
        const auto none = kto_loss(Vec(0), Vec(0), Vec(0), Vec(0), KLBaseline::given(0.1));
        CHECK(none.value == 0.0);
        CHECK(none.grad.size() == 0);
        CHECK(none.metrics["kl"] == Approx(0.1));
        CHECK_FALSE(none.metrics.contains("logps/chosen"));
    }
    SECTION("micro-batches with the global z0 and example count add up to the whole batch") {
        const Examples b = random_examples(31, 10, 9, 8.0);
        const KLBaseline kl = KLBaseline::given(0.6);
        KTOOptions o;
        o.desirable_weight = 1.2;
        const auto full = kto_loss(b.pc, b.pr, b.rc, b.rr, kl, o);
        o.num_examples = 19.0;
        double value = 0;
        rlpo::Metrics merged;
        Mat<double> grad(1, 19);
        // parts: chosen [0,4) + rejected [0,6); chosen [4,10) + rejected [6,9)
        const Index cs[] = {0, 4, 10}, rs[] = {0, 6, 9};
        for (int k = 0; k < 2; ++k) {
            const Index c0 = cs[k], cn = cs[k + 1] - c0, r0 = rs[k], rn = rs[k + 1] - r0;
            const auto part = kto_loss(b.pc.segment(c0, cn), b.pr.segment(r0, rn),
                                       b.rc.segment(c0, cn), b.rr.segment(r0, rn), kl, o);
            value += part.value;
            grad.block(0, c0, 1, cn) = part.grad.leftCols(cn);
            grad.block(0, 10 + r0, 1, rn) = part.grad.rightCols(rn);
            merged.merge(part.metrics);
        }
        CHECK(value == Approx(full.value).epsilon(1e-14));
        CHECK(rlpo_test::max_rel_err(grad, full.grad) < 1e-14);
        for (const char* m :
             {"rewards/chosen", "logps/chosen", "rewards/rejected", "logps/rejected"})
            CHECK(merged[m] == Approx(full.metrics[m]).epsilon(1e-13));
        CHECK(merged.at("rewards/chosen").count == 10.0);
    }
    SECTION("GradientOut: write_to and add_to on TRL's concatenated buffer, coef") {
        const KLBaseline kl = KLBaseline::given(0.2);
        const auto own = kto_loss(e.pc, e.pr, e.rc, e.rr, kl);
        std::vector<double> buf(11, 7.0);
        auto view = rlpo::view(buf.data(), 1, 11);
        const auto w = kto_loss(e.pc, e.pr, e.rc, e.rr, kl, {}, rlpo::write_to<double>(view, 2.0));
        CHECK(w.value == Approx(2 * own.value).epsilon(1e-15));
        CHECK(w.grad.size() == 0);
        for (Index i = 0; i < 11; ++i)
            CHECK(buf[static_cast<std::size_t>(i)] == Approx(2 * own.grad(0, i)).epsilon(1e-15));
        (void)kto_loss(e.pc, e.pr, e.rc, e.rr, kl, {}, rlpo::add_to<double>(view, -2.0));
        for (double g : buf) CHECK(g == Approx(0.0).margin(1e-17));
    }
    SECTION("names: TRL's loss_type spellings") {
        CHECK(rlpo::preference::parse_kto_loss("kto") == KTOLoss::KTO);
        CHECK(rlpo::preference::parse_kto_loss("apo_zero_unpaired") == KTOLoss::APOZeroUnpaired);
        CHECK(std::string(rlpo::preference::to_string(KTOLoss::APOZeroUnpaired)) ==
              "apo_zero_unpaired");
        const KTOOptions t = KTOOptions::trl();
        CHECK(t.beta == 0.1);
        CHECK(t.desirable_weight == 1.0);
        CHECK(t.undesirable_weight == 1.0);
        CHECK(t.loss == KTOLoss::KTO);
    }
}

TEST_CASE("kto: bad input gives the documented error", "[preference][kto][bad-input]") {
    const Vec x = Vec::Constant(3, -5.0), y = Vec::Constant(4, -5.0);
    const KLBaseline kl = KLBaseline::given(0.1);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(kto_loss(x, y, y, y, kl),
                                    "preference::kto_loss(): ref_chosen_logps: expected 3 "
                                    "entries (same as policy_chosen_logps), given 4");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(kto_loss(x, y, x, x, kl),
                                    "ref_rejected_logps: expected 4 entries (same as "
                                    "policy_rejected_logps), given 3");
    const Mat<double> m = Mat<double>::Zero(2, 3);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(kto_loss(m, y, x, y, kl),
                                    "policy_chosen_logps: expected a vector");
    Vec bad = x;
    bad(2) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(kto_loss(x, y, bad, y, kl),
                                    "preference::kto_loss(): ref_chosen_logps: NaN at pair 2");
    bad(2) = std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(kto_loss(x, bad, x, x, kl),
                                    "policy_rejected_logps: non-finite value inf at pair 2");
    KTOOptions o;
    o.beta = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(kto_loss(x, y, x, y, kl, o),
                                    "preference::kto_loss(): beta: must be > 0, given 0");
    o = {};
    o.desirable_weight = -1.0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(kto_loss(x, y, x, y, kl, o), "desirable_weight: must be >= 0");
    o = {};
    o.undesirable_weight = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(kto_loss(x, y, x, y, kl, o),
                                    "undesirable_weight: must be >= 0");
    o = {};
    o.num_examples = 0.0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(kto_loss(x, y, x, y, kl, o), "num_examples: must be > 0");
    o = {};
    o.loss = static_cast<KTOLoss>(7);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(kto_loss(x, y, x, y, kl, o), "loss: invalid KTOLoss value 7");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(kto_loss(x, y, x, y, KLBaseline{}),
                                    "kl: loss type 'kto' needs the batch KL baseline z0");
    KLBaseline both = KLBaseline::from_logps(x, x);
    both.value = 0.1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(kto_loss(x, y, x, y, both),
                                    "kl: give either the value of z0 or the KL log-probs");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        kto_loss(x, y, x, y, KLBaseline::given(std::numeric_limits<double>::infinity())),
        "kl.value: must be finite");
    KLBaseline half;
    half.policy_logps = x;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(kto_loss(x, y, x, y, half),
                                    "kl: both policy_logps and ref_logps");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(kto_loss(x, y, x, y, KLBaseline::from_logps(Vec(0), Vec(0))),
                                    "kl.policy_logps: at least one KL completion is needed");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(kto_loss(x, y, x, y, KLBaseline::from_logps(x, y)),
                                    "kl.ref_logps: expected 3 entries (same as kl.policy_logps)");
    Vec kbad = x;
    kbad(1) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(kto_loss(x, y, x, y, KLBaseline::from_logps(kbad, x)),
                                    "kl.policy_logps: NaN at pair 1");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        kto_loss(x, y, x, y, kl, KTOOptions::of(KTOLoss::APOZeroUnpaired)),
        "kl: loss type 'apo_zero_unpaired' has no KL baseline");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::preference::parse_kto_loss("sigmoid"),
                                    "preference::parse_kto_loss(): name: unknown KTO loss type "
                                    "'sigmoid'; valid names: kto, apo_zero_unpaired");
}
