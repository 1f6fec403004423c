// DPO (+ SFT) from logits (train/preference_step.hpp): a PyTorch reference of TRL's
// concatenated-batch computation, finite differences of the whole loss w.r.t. the logits, the
// sinks, and bad input.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/torch_reference.hpp"

#include <rlpo/testing/gradcheck.hpp>
#include <rlpo/testing/random.hpp>
#include <rlpo/train/preference_step.hpp>

#include <cstdint>
#include <string>
#include <vector>

using rlpo::Index;
using rlpo::Mat;
namespace rp = rlpo::preference;
namespace rt = rlpo::testing;

namespace {
using Labels = Eigen::Matrix<std::int64_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct Case {
    Mat<double> z, mask;
    Labels y;
    Eigen::VectorXd rc, rr;
};

/// 2B completions of T tokens over V logits; some masked tail tokens hold garbage labels.
Case make_case(std::uint64_t seed, Index B, Index T, Index V) {
    rt::Generator gen(seed);
    Case c;
    c.z = gen.normal(2 * B * T, V);
    c.mask = Mat<double>::Ones(2 * B, T);
    c.y.resize(2 * B, T);
    for (Index i = 0; i < 2 * B; ++i)
        for (Index t = 0; t < T; ++t) c.y(i, t) = gen.integer(0, V - 1);
    for (Index i = 0; i < 2 * B; ++i) {
        const Index keep = 1 + gen.integer(0, T - 1);
        for (Index t = keep; t < T; ++t) c.mask(i, t) = 0, c.y(i, t) = -100;
    }
    c.rc = -3.0 * Eigen::VectorXd::Ones(B) + gen.normal(B, 1).col(0);
    c.rr = -3.0 * Eigen::VectorXd::Ones(B) + gen.normal(B, 1).col(0);
    return c;
}

rp::DPOOptions dpo_sft(double beta, double eps, double w_sft) {
    rp::DPOOptions o = rp::make_dpo_options({"sigmoid", "sft"}, {1.0, w_sft});
    o.beta = beta;
    o.label_smoothing = eps;
    o.sigmoid_label_smoothing = true;  // cDPO (TRL <= 0.24); current TRL ignores ε for sigmoid
    return o;
}
}  // namespace

TEST_CASE("dpo_from_logits: agrees with the PyTorch reference (DPO + SFT, concatenated batch)",
          "[train][preference_step][torch]") {
    rlpo_test::TorchReference ref("step", "dpo_from_logits");
    struct Run {
        Case c;
        double beta, eps, w, tau;
    };
    std::vector<Run> runs;
    for (int k = 0; k < 3; ++k) {
        Run r{make_case(70 + k, 3, 5, 11), 0.1 + 0.2 * k, 0.1 * k, 0.5 * k, 1.0 + 0.25 * k};
        auto& c = ref.add<double>("dpo_from_logits");
        c.in("logits", r.c.z)
            .in("labels", Mat<double>(r.c.y.cast<double>()))
            .in("mask", r.c.mask)
            .in("ref_chosen", Mat<double>(r.c.rc))
            .in("ref_rejected", Mat<double>(r.c.rr));
        c.p("temperature", r.tau)
            .p("beta", r.beta)
            .p("label_smoothing", r.eps)
            .p("sft_weight", r.w);
        runs.push_back(r);
    }
    ref.run();
    for (std::size_t k = 0; k < runs.size(); ++k) {
        INFO("case " << k);
        const auto& r = runs[k];
        const auto res = rlpo::train::dpo_from_logits(r.c.z, r.c.y, r.c.mask, r.c.rc, r.c.rr,
                                                      dpo_sft(r.beta, r.eps, r.w), {}, r.tau);
        CHECK(rlpo_test::rel_err(res.value, ref.scalar(k, "value")) < 1e-12);
        CHECK(rlpo_test::max_rel_err(res.grad_logits, ref.out(k, "grad_logits")) < 1e-10);
        for (const char* name : {"rewards/chosen", "rewards/margins", "logps/rejected"})
            CHECK(rlpo_test::rel_err(res.metrics[name], ref.scalar(k, name), 1e-12) < 1e-12);
    }
}

TEST_CASE("dpo_from_logits: gradient equals central finite differences; sinks",
          "[train][preference_step][fd]") {
    const Case c = make_case(90, 2, 4, 7);
    const auto o = dpo_sft(0.3, 0.1, 0.7);
    const auto res = rlpo::train::dpo_from_logits(c.z, c.y, c.mask, c.rc, c.rr, o, {}, 1.3);
    rlpo_test::require_fd_gradient(
        [&](const Mat<double>& z) {
            return rlpo::train::dpo_from_logits(z, c.y, c.mask, c.rc, c.rr, o,
                                                rlpo::no_grad<double>(), 1.3)
                .value;
        },
        c.z, res.grad_logits, 1e-6, 1e-9);
    // write_to with a coefficient scales value and gradient; add_to adds
    Mat<double> buf = Mat<double>::Constant(c.z.rows(), c.z.cols(), 5.0);
    const auto w = rlpo::train::dpo_from_logits(c.z, c.y, c.mask, c.rc, c.rr, o,
                                                rlpo::write_to(buf, 0.5), 1.3);
    CHECK(w.value == Approx(0.5 * res.value).epsilon(1e-15));
    CHECK(rlpo_test::max_rel_err(buf, Mat<double>(0.5 * res.grad_logits)) < 1e-15);
    const auto a =
        rlpo::train::dpo_from_logits(c.z, c.y, c.mask, c.rc, c.rr, o, rlpo::add_to(buf, 0.5), 1.3);
    CHECK(a.value == w.value);
    CHECK(rlpo_test::max_rel_err(buf, res.grad_logits) < 1e-14);
    // the sequence-level gradient is dpo_loss's on the summed log-probs
    CHECK(res.grad_logp.rows() == 2);
    CHECK(res.grad_logp.cols() == 2);
}

TEST_CASE("dpo_from_logits: bad input gives the documented error",
          "[train][preference_step][bad-input]") {
    const Case c = make_case(95, 2, 3, 5);
    const Mat<double> odd = c.mask.topRows(3);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::train::dpo_from_logits(c.z, c.y, odd, c.rc, c.rr),
        "train::dpo_from_logits(): mask: expected [2B, T] (chosen rows, then rejected rows)");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::train::dpo_from_logits(c.z, c.y, c.mask, c.rc.head(1).eval(), c.rr),
        "ref_chosen, ref_rejected: expected 2 entries each, given 1 and 2");
    Labels bad = c.y;
    bad(0, 0) = 99;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::train::dpo_from_logits(c.z, bad, c.mask, c.rc, c.rr),
                                    "label");
    rp::DPOOptions o;
    o.beta = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::train::dpo_from_logits(c.z, c.y, c.mask, c.rc, c.rr, o),
                                    "beta");
}
