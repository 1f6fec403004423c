// DPO's `sft` loss type (TRL DPOTrainer: cross-entropy of the chosen completions), four ways.
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

struct Pairs {
    Vec pc, pr, rc, rr;
    CompletionLengths len;
};
Pairs random_pairs(std::uint64_t seed, Index B) {
    rlpo::testing::Generator gen(seed);
    Pairs p;
    for (Vec* v : {&p.pc, &p.pr, &p.rc, &p.rr, &p.len.chosen, &p.len.rejected}) v->resize(B);
    for (Index i = 0; i < B; ++i) {
        p.len.chosen(i) = std::floor(gen.uniform(1.0, 40.0));
        p.len.rejected(i) = std::floor(gen.uniform(1.0, 40.0));
        p.pc(i) = -p.len.chosen(i) * gen.uniform(0.05, 2.5);
        p.pr(i) = -p.len.rejected(i) * gen.uniform(0.05, 2.5);
        p.rc(i) = p.pc(i) + gen.uniform(-4.0, 4.0);
        p.rr(i) = p.pr(i) + gen.uniform(-4.0, 4.0);
    }
    return p;
}

Mat<double> stacked(const Pairs& p) {
    Mat<double> x(2, p.pc.size());
    x.row(0) = p.pc.transpose();
    x.row(1) = p.pr.transpose();
    return x;
}

}  // namespace

TEST_CASE("dpo sft: gradient equals central finite differences", "[preference][dpo][sft][fd]") {
    const Pairs p = random_pairs(3, 9);
    rlpo::testing::Generator gen(4);
    Vec w(9);
    for (Index i = 0; i < 9; ++i) w(i) = gen.uniform(0.0, 2.0);
    for (const bool weighted : {false, true}) {
        INFO("weighted " << weighted);
        DPOOptions o = rlpo::preference::make_dpo_options({"sigmoid", "sft"}, {0.7, 1.3});
        o.num_pairs = 12.0;
        const std::optional<Vec> pw = weighted ? std::optional<Vec>(w) : std::nullopt;
        const auto r = dpo_loss(p.pc, p.pr, p.rc, p.rr, o, {}, p.len, pw);
        rlpo_test::require_fd_gradient(
            [&](const Mat<double>& x) {
                const Vec c = x.row(0).transpose(), q = x.row(1).transpose();
                return dpo_loss(c, q, p.rc, p.rr, o, rlpo::no_grad<double>(), p.len, pw).value;
            },
            stacked(p), r.grad);
    }
}

TEMPLATE_TEST_CASE("dpo sft: agrees with the PyTorch autograd reference (TRL's formula)",
                   "[preference][dpo][sft][torch]", float, double) {
    using S = TestType;
    using V = Eigen::Matrix<S, Eigen::Dynamic, 1>;
    rlpo_test::TorchReference ref("preference_reffree",
                                  std::string("dpo_sft_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        V pc, pr, rc, rr;
        CompletionLengths len;
        DPOOptions o;
        std::optional<Vec> w;
    };
    std::vector<Run> runs;
    const auto add = [&](const Pairs& p, double w_sig, double w_sft, std::optional<double> n,
                         std::optional<double> tokens, const std::optional<Vec>& w) {
        DPOOptions o = rlpo::preference::make_dpo_options({"sigmoid", "sft"}, {w_sig, w_sft});
        o.beta = 0.2;
        o.num_pairs = n;
        o.num_sft_tokens = tokens;
        Run r{p.pc.cast<S>(), p.pr.cast<S>(), p.rc.cast<S>(), p.rr.cast<S>(), p.len, o, w};
        auto& c = ref.add<S>("dpo_sft");
        c.in("policy_chosen_logps", Mat<double>(r.pc.template cast<double>()))
            .in("policy_rejected_logps", Mat<double>(r.pr.template cast<double>()))
            .in("ref_chosen_logps", Mat<double>(r.rc.template cast<double>()))
            .in("ref_rejected_logps", Mat<double>(r.rr.template cast<double>()))
            .in("len_chosen", Mat<double>(p.len.chosen))
            .in("len_rejected", Mat<double>(p.len.rejected));
        if (w) c.in("pair_weights", Mat<double>(*w));
        c.p("beta", 0.2).p("w_sigmoid", w_sig).p("w_sft", w_sft);
        if (n) c.p("num_pairs", *n);
        if (tokens) c.p("num_sft_tokens", *tokens);
        runs.push_back(std::move(r));
    };
    rlpo::testing::Generator gen(9);
    Vec w(10);
    for (Index i = 0; i < 10; ++i) w(i) = gen.uniform(0.0, 1.5);
    w(2) = 0.0;
    add(random_pairs(20, 10), 1.0, 1.0, std::nullopt, std::nullopt, std::nullopt);
    add(random_pairs(21, 10), 0.0, 1.0, std::nullopt, std::nullopt, std::nullopt);
    add(random_pairs(22, 10), 0.5, 2.0, 30.0, 900.0, std::nullopt);
    add(random_pairs(23, 10), 1.0, 0.8, std::nullopt, std::nullopt, w);
    ref.run();
    const double tol = sizeof(S) == 4 ? 1e-5 : 1e-12;
    for (std::size_t k = 0; k < runs.size(); ++k) {
        INFO("case " << k);
        const auto& r = runs[k];
        const auto res = dpo_loss(r.pc, r.pr, r.rc, r.rr, r.o, {}, r.len, r.w);
        CHECK(rlpo_test::rel_err(res.value, ref.scalar(k, "value")) < tol);
        CHECK(rlpo_test::max_rel_err(res.grad, ref.out(k, "grad")) < tol);
    }
}

TEST_CASE("dpo sft: properties", "[preference][dpo][sft][properties]") {
    const Pairs p = random_pairs(7, 10);
    const double tokens = p.len.chosen.sum();
    const DPOOptions o = DPOOptions::of(DPOLoss::SFT);
    SECTION("the token-mean NLL of the chosen completions: value and gradient −1/N, no reference") {
        const auto r = dpo_loss(p.pc, p.pr, p.rc, p.rr, o, {}, p.len);
        CHECK(r.value == Approx(-p.pc.sum() / tokens).epsilon(1e-14));
        for (Index i = 0; i < 10; ++i) {
            CHECK(r.grad(0, i) == Approx(-1 / tokens).epsilon(1e-14));
            CHECK(r.grad(1, i) == 0.0);
        }
        const auto s = dpo_loss(p.pc, p.pr, Vec(p.rc.array() + 3.0), p.rr, o, {}, p.len);
        CHECK(s.value == r.value);  // the reference does not enter
        DPOOptions t = o;
        t.num_sft_tokens = tokens;  // the same count given: no lengths needed
        CHECK(dpo_loss(p.pc, p.pr, p.rc, p.rr, t).value == Approx(r.value).epsilon(1e-15));
    }
    SECTION("added to sigmoid with weights: w_sig·DPO + w_sft·NLL") {
        const auto a = dpo_loss(p.pc, p.pr, p.rc, p.rr, DPOOptions::of(DPOLoss::Sigmoid));
        const auto b = dpo_loss(p.pc, p.pr, p.rc, p.rr, o, {}, p.len);
        const auto c =
            dpo_loss(p.pc, p.pr, p.rc, p.rr,
                     rlpo::preference::make_dpo_options({"sigmoid", "sft"}, {0.3, 2.0}), {}, p.len);
        CHECK(c.value == Approx(0.3 * a.value + 2.0 * b.value).epsilon(1e-14));
        CHECK(rlpo_test::max_rel_err(c.grad, Mat<double>(0.3 * a.grad + 2.0 * b.grad)) < 1e-14);
    }
    SECTION("micro-batches with global pair and token counts add up to the whole batch") {
        DPOOptions m = rlpo::preference::make_dpo_options({"sigmoid", "sft"});
        const auto whole = dpo_loss(p.pc, p.pr, p.rc, p.rr, m, {}, p.len);
        m.num_pairs = 10.0;
        m.num_sft_tokens = tokens;
        rlpo_test::require_example_invariance(whole, 10, [&](Index r0, Index n) {
            const CompletionLengths len{p.len.chosen.segment(r0, n), p.len.rejected.segment(r0, n)};
            return dpo_loss(p.pc.segment(r0, n), p.pr.segment(r0, n), p.rc.segment(r0, n),
                            p.rr.segment(r0, n), m, {}, len);
        });
    }
    SECTION("pair weights: TRL's mean(ω)·NLL; no chosen tokens gives 0") {
        const Vec w = Vec::LinSpaced(10, 0.0, 2.0);
        const auto r = dpo_loss(p.pc, p.pr, p.rc, p.rr, o, {}, p.len, w);
        CHECK(r.value == Approx(w.mean() * -p.pc.sum() / tokens).epsilon(1e-14));
        const CompletionLengths none{Vec::Zero(10), p.len.rejected};
        const auto z = dpo_loss(p.pc, p.pr, p.rc, p.rr, o, {}, none);
        CHECK(z.value == 0.0);
        CHECK(z.grad.cwiseAbs().maxCoeff() == 0.0);
    }
}

TEST_CASE("dpo sft: bad input gives the documented error", "[preference][dpo][sft][bad-input]") {
    const Vec x = Vec::Constant(3, -5.0);
    const DPOOptions o = DPOOptions::of(DPOLoss::SFT);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(dpo_loss(x, x, x, x, o),
                                    "preference::dpo_loss(): lengths: loss type 'sft' is a mean "
                                    "over the chosen completion tokens");
    DPOOptions t = o;
    t.num_sft_tokens = -1.0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(dpo_loss(x, x, x, x, t), "num_sft_tokens: must be >= 0");
    t.num_sft_tokens = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(dpo_loss(x, x, x, x, t), "num_sft_tokens: must be >= 0");
    CHECK(rlpo::preference::parse_dpo_loss("sft") == DPOLoss::SFT);
    CHECK(std::string(rlpo::preference::to_string(DPOLoss::SFT)) == "sft");
}
