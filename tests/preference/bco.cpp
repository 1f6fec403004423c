// BCO (TRL BCOTrainer.bco_loss), four ways.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/torch_reference.hpp"

#include <rlpo/preference/bco.hpp>
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
using rlpo::preference::bco_loss;
using rlpo::preference::BCOOptions;
using rlpo::preference::ExampleWeights;
using Vec = Eigen::VectorXd;

/// n_c desirable and n_r undesirable examples, |u| ≲ spread.
struct Examples {
    Vec pc, rc, pr, rr;
};
Examples random_examples(std::uint64_t seed, Index nc, Index nr, double spread) {
    rlpo::testing::Generator gen(seed);
    Examples e;
    const auto fill = [&](Vec& p, Vec& r, Index n) {
        p.resize(n);
        r.resize(n);
        for (Index i = 0; i < n; ++i) {
            r(i) = -gen.uniform(5.0, 80.0);
            p(i) = r(i) + gen.uniform(-spread, spread);
        }
    };
    fill(e.pc, e.rc, nc);
    fill(e.pr, e.rr, nr);
    return e;
}

Vec random_weights(std::uint64_t seed, Index n) {
    rlpo::testing::Generator gen(seed);
    Vec w(n);
    for (Index i = 0; i < n; ++i) w(i) = gen.uniform(0.5, 10.0);  // TRL's default UDM clamp
    return w;
}

/// [1, n_c + n_r]: the chosen policy log-probs, then the rejected ones.
Mat<double> stacked(const Examples& e) {
    Mat<double> x(1, e.pc.size() + e.pr.size());
    x.leftCols(e.pc.size()) = e.pc.transpose();
    x.rightCols(e.pr.size()) = e.pr.transpose();
    return x;
}

double value_at(const Mat<double>& x, const Examples& e, const BCOOptions& o,
                const ExampleWeights& w) {
    const Vec c = x.leftCols(e.pc.size()).transpose(), r = x.rightCols(e.pr.size()).transpose();
    return bco_loss(c, r, e.rc, e.rr, o, rlpo::no_grad<double>(), w).value;
}

}  // namespace

TEST_CASE("bco: gradient equals central finite differences", "[preference][bco][fd]") {
    std::uint64_t seed = 10;
    for (double beta : {0.1, 0.5})
        for (double delta : {0.0, 0.37})
            for (double spread : {3.0, 30.0})
                for (const auto& [nc, nr] : {std::pair<Index, Index>{5, 4}, {6, 0}, {0, 3}}) {
                    INFO("beta " << beta << " delta " << delta << " spread " << spread << " n "
                                 << nc << "/" << nr);
                    const Examples e = random_examples(seed++, nc, nr, spread);
                    BCOOptions o;
                    o.beta = beta;
                    o.delta = delta;
                    ExampleWeights w;
                    if (delta != 0) w.rejected = random_weights(seed, nr);  // UDM weights
                    const auto r = bco_loss(e.pc, e.pr, e.rc, e.rr, o, {}, w);
                    REQUIRE(r.grad.rows() == 1);
                    REQUIRE(r.grad.cols() == nc + nr);
                    rlpo_test::require_fd_gradient(
                        [&](const Mat<double>& x) { return value_at(x, e, o, w); }, stacked(e),
                        r.grad, 1e-6, 1e-9);
                }
    SECTION("weights on both sides and a global example count") {
        const Examples e = random_examples(99, 7, 5, 10.0);
        BCOOptions o;
        o.num_examples = 31.0;
        o.delta = -0.2;
        ExampleWeights w{random_weights(1, 7), random_weights(2, 5)};
        const auto r = bco_loss(e.pc, e.pr, e.rc, e.rr, o, {}, w);
        rlpo_test::require_fd_gradient([&](const Mat<double>& x) { return value_at(x, e, o, w); },
                                       stacked(e), r.grad);
    }
}

TEMPLATE_TEST_CASE("bco: agrees with the PyTorch autograd reference (TRL's formulas)",
                   "[preference][bco][torch]", float, double) {
    using S = TestType;
    using V = Eigen::Matrix<S, Eigen::Dynamic, 1>;
    rlpo_test::TorchReference ref("preference_unpaired",
                                  std::string("bco_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        V pc, pr, rc, rr;
        BCOOptions o;
        ExampleWeights w;
    };
    std::vector<Run> runs;
    const auto add = [&](const Examples& e, const BCOOptions& o, const ExampleWeights& w) {
        Run r{e.pc.cast<S>(), e.pr.cast<S>(), e.rc.cast<S>(), e.rr.cast<S>(), o, w};
        auto& c = ref.add<S>("bco");
        c.in("policy_chosen_logps", Mat<double>(r.pc.template cast<double>()))
            .in("policy_rejected_logps", Mat<double>(r.pr.template cast<double>()))
            .in("ref_chosen_logps", Mat<double>(r.rc.template cast<double>()))
            .in("ref_rejected_logps", Mat<double>(r.rr.template cast<double>()));
        if (w.chosen) c.in("chosen_weights", Mat<double>(*w.chosen));
        if (w.rejected) c.in("rejected_weights", Mat<double>(*w.rejected));
        c.p("beta", o.beta).p("delta", o.delta);
        if (o.num_examples) c.p("num_examples", *o.num_examples);
        runs.push_back(std::move(r));
    };
    std::uint64_t seed = 500;
    for (double beta : {0.1, 0.7})
        for (double delta : {0.0, 0.45}) {
            BCOOptions o;
            o.beta = beta;
            o.delta = delta;
            add(random_examples(seed++, 9, 7, 4.0), o, {});
            const Vec udm = random_weights(seed, 11);
            add(random_examples(seed++, 4, 11, 4.0), o, {std::nullopt, udm});
            // adversarial: |β·u − δ| up to ~100 (saturated sigmoids), β·u = δ exactly
            Examples a = random_examples(seed++, 8, 8, 150.0);
            a.pc(0) = a.rc(0) + delta / beta;
            a.pr(0) = a.rr(0) + delta / beta;
            add(a, o, {});
            add(random_examples(seed++, 6, 0, 4.0), o, {});  // no undesirable examples
            add(random_examples(seed++, 0, 5, 4.0), o, {});  // no desirable examples
        }
    {  // weights on both sides, one of them 0, and a global example count
        BCOOptions o;
        o.beta = 0.3;
        o.delta = -0.6;
        o.num_examples = 40.0;
        Vec wc = random_weights(3, 7);
        wc(2) = 0.0;
        add(random_examples(seed++, 7, 6, 5.0), o, {wc, random_weights(4, 6)});
    }
    ref.run();
    const double tol = sizeof(S) == 4 ? 1e-5 : 1e-12;
    for (std::size_t k = 0; k < runs.size(); ++k) {
        const auto& r = runs[k];
        INFO("case " << k << " (beta " << r.o.beta << ", delta " << r.o.delta << ", n "
                     << r.pc.size() << "/" << r.pr.size() << ")");
        const auto res = bco_loss(r.pc, r.pr, r.rc, r.rr, r.o, {}, r.w);
        CHECK(rlpo_test::rel_err(res.value, ref.scalar(k, "value")) < tol);
        const Mat<double> tg = ref.out(k, "grad");
        REQUIRE(tg.size() == res.grad.size());
        const Mat<double> rg = res.grad.template cast<double>();
        INFO("rlpo\n" << rg << "\ntorch\n" << tg.transpose());
        const Mat<double> tgr = Eigen::Map<const Mat<double>>(tg.data(), 1, tg.size());
        if (tg.size() > 0) CHECK(rlpo_test::max_rel_err(rg, tgr) < tol);
        CHECK(res.metrics["delta"] == ref.scalar(k, "delta"));
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

TEST_CASE("bco: properties", "[preference][bco][properties]") {
    const Examples e = random_examples(7, 6, 5, 6.0);
    SECTION("β·u = δ everywhere: each loss is log 2 and each gradient ∓β/2 (times w/N)") {
        BCOOptions o;
        o.beta = 0.2;
        o.delta = 0.3;
        Examples s = e;
        s.pc = s.rc.array() + o.delta / o.beta;
        s.pr = s.rr.array() + o.delta / o.beta;
        const auto r = bco_loss(s.pc, s.pr, s.rc, s.rr, o);
        CHECK(r.value == Approx(std::log(2.0)).epsilon(1e-14));
        for (Index i = 0; i < 6; ++i) CHECK(r.grad(0, i) == Approx(-0.1 / 11).epsilon(1e-14));
        for (Index i = 6; i < 11; ++i) CHECK(r.grad(0, i) == Approx(0.1 / 11).epsilon(1e-14));
        CHECK(r.metrics["rewards/chosen"] == Approx(0.3).epsilon(1e-12));
        CHECK(r.metrics["rewards/margins"] == Approx(0.0).margin(1e-14));
        CHECK(r.metrics["delta"] == 0.3);
    }
    SECTION("only β·u − δ matters: shifting every u by c and δ by β·c changes nothing") {
        BCOOptions o;
        o.beta = 0.4;
        o.delta = 0.1;
        const auto a = bco_loss(e.pc, e.pr, e.rc, e.rr, o);
        const Vec pc = e.pc.array() + 2.5, pr = e.pr.array() + 2.5;
        o.delta += 0.4 * 2.5;
        const auto b = bco_loss(pc, pr, e.rc, e.rr, o);
        CHECK(b.value == Approx(a.value).epsilon(1e-13));
        CHECK(rlpo_test::max_rel_err(b.grad, a.grad) < 1e-12);
    }
    SECTION("n_c = n_r without weights: half of dpo_loss's bco_pair on the same pairs") {
        const Examples p = random_examples(8, 7, 7, 5.0);
        BCOOptions o;
        o.beta = 0.3;
        o.delta = 0.2;
        const auto u = bco_loss(p.pc, p.pr, p.rc, p.rr, o);
        auto d = rlpo::preference::DPOOptions::of(rlpo::preference::DPOLoss::BCOPair, 0.3);
        d.bco_delta = 0.2;
        const auto pair = rlpo::preference::dpo_loss(p.pc, p.pr, p.rc, p.rr, d);
        CHECK(u.value == Approx(0.5 * pair.value).epsilon(1e-14));
        for (Index i = 0; i < 7; ++i) {
            CHECK(u.grad(0, i) == Approx(0.5 * pair.grad(0, i)).epsilon(1e-13));
            CHECK(u.grad(0, 7 + i) == Approx(0.5 * pair.grad(1, i)).epsilon(1e-13));
        }
        CHECK(u.metrics["rewards/margins"] == Approx(pair.metrics["rewards/margins"]));
    }
    SECTION("weights: all 1 is unweighted, 2 doubles their side, 0 removes an example") {
        const auto plain = bco_loss(e.pc, e.pr, e.rc, e.rr);
        const auto ones =
            bco_loss(e.pc, e.pr, e.rc, e.rr, {}, {}, ExampleWeights{Vec::Ones(6), Vec::Ones(5)});
        CHECK(ones.value == plain.value);
        CHECK(ones.grad == plain.grad);
        Vec wr = Vec::Constant(5, 2.0);
        wr(3) = 0.0;
        const auto w = bco_loss(e.pc, e.pr, e.rc, e.rr, {}, {}, ExampleWeights{std::nullopt, wr});
        for (Index i = 0; i < 6; ++i) CHECK(w.grad(0, i) == plain.grad(0, i));
        CHECK(w.grad(0, 9) == 0.0);
        for (Index i : {6, 7, 8, 10}) CHECK(w.grad(0, i) == Approx(2 * plain.grad(0, i)));
        CHECK(w.metrics["rewards/rejected"] == plain.metrics["rewards/rejected"]);  // unweighted
    }
    SECTION("empty sides: metrics of the missing side absent; nothing at all gives 0") {
        const auto c = bco_loss(e.pc, Vec(0), e.rc, Vec(0));
        CHECK(c.grad.cols() == 6);
        CHECK_FALSE(c.metrics.contains("rewards/rejected"));
        CHECK_FALSE(c.metrics.contains("rewards/margins"));
        const auto none = bco_loss(Vec(0), Vec(0), Vec(0), Vec(0));
        CHECK(none.value == 0.0);
        CHECK(none.grad.size() == 0);
        CHECK(none.metrics.contains("delta"));
    }
    SECTION("micro-batches with the global example count add up to the whole batch") {
        const Examples b = random_examples(31, 10, 9, 8.0);
        BCOOptions o;
        o.delta = 0.15;
        const Vec wr = random_weights(5, 9);
        const auto full = bco_loss(b.pc, b.pr, b.rc, b.rr, o, {}, ExampleWeights{std::nullopt, wr});
        o.num_examples = 19.0;
        double value = 0;
        rlpo::Metrics merged;
        Mat<double> grad(1, 19);
        const Index cs[] = {0, 7, 10}, rs[] = {0, 2, 9};
        for (int k = 0; k < 2; ++k) {
            const Index c0 = cs[k], cn = cs[k + 1] - c0, r0 = rs[k], rn = rs[k + 1] - r0;
            const auto part = bco_loss(b.pc.segment(c0, cn), b.pr.segment(r0, rn),
                                       b.rc.segment(c0, cn), b.rr.segment(r0, rn), o, {},
                                       ExampleWeights{std::nullopt, Vec(wr.segment(r0, rn))});
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
        CHECK(merged.at("logps/rejected").count == 9.0);
    }
    SECTION("GradientOut: write_to and add_to on TRL's concatenated buffer, coef") {
        const auto own = bco_loss(e.pc, e.pr, e.rc, e.rr);
        std::vector<double> buf(11, 7.0);
        auto view = rlpo::view(buf.data(), 1, 11);
        const auto w = bco_loss(e.pc, e.pr, e.rc, e.rr, {}, rlpo::write_to<double>(view, 2.0));
        CHECK(w.value == Approx(2 * own.value).epsilon(1e-15));
        for (Index i = 0; i < 11; ++i)
            CHECK(buf[static_cast<std::size_t>(i)] == Approx(2 * own.grad(0, i)).epsilon(1e-15));
        (void)bco_loss(e.pc, e.pr, e.rc, e.rr, {}, rlpo::add_to<double>(view, -2.0));
        for (double g : buf) CHECK(g == Approx(0.0).margin(1e-17));
        CHECK(BCOOptions::trl().beta == 0.1);
        CHECK(BCOOptions::trl().delta == 0.0);
    }
}

TEST_CASE("bco: bad input gives the documented error", "[preference][bco][bad-input]") {
    const Vec x = Vec::Constant(3, -5.0), y = Vec::Constant(4, -5.0);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(bco_loss(x, y, y, y),
                                    "preference::bco_loss(): ref_chosen_logps: expected 3 "
                                    "entries (same as policy_chosen_logps), given 4");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(bco_loss(x, y, x, x), "ref_rejected_logps: expected 4 entries");
    const Mat<double> m = Mat<double>::Zero(2, 3);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(bco_loss(x, m, x, y),
                                    "policy_rejected_logps: expected a vector");
    Vec bad = x;
    bad(0) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(bco_loss(bad, y, x, y),
                                    "preference::bco_loss(): policy_chosen_logps: NaN at pair 0");
    bad(0) = -std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(bco_loss(x, y, bad, y),
                                    "ref_chosen_logps: non-finite value -inf at pair 0");
    BCOOptions o;
    o.beta = -0.1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(bco_loss(x, y, x, y, o),
                                    "preference::bco_loss(): beta: must be > 0");
    o = {};
    o.delta = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(bco_loss(x, y, x, y, o), "delta: must be finite");
    o = {};
    o.num_examples = -1.0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(bco_loss(x, y, x, y, o), "num_examples: must be > 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(bco_loss(x, y, x, y, {}, {}, ExampleWeights{std::nullopt, x}),
                                    "weights.rejected: expected 4 entries (same as "
                                    "policy_rejected_logps), given 3");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(bco_loss(x, y, x, y, {}, {}, ExampleWeights{y, std::nullopt}),
                                    "weights.chosen: expected 3 entries");
    Vec w = Vec::Ones(3);
    w(1) = -0.5;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(bco_loss(x, y, x, y, {}, {}, ExampleWeights{w, std::nullopt}),
                                    "weights.chosen: must be >= 0, given -0.5 at pair 1");
    w(1) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(bco_loss(x, y, x, y, {}, {}, ExampleWeights{w, std::nullopt}),
                                    "weights.chosen: NaN at pair 1");
    w(1) = std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(bco_loss(x, y, x, y, {}, {}, ExampleWeights{w, std::nullopt}),
                                    "weights.chosen: non-finite value inf at pair 1");
}
