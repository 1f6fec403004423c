// Dense distillation divergences (forward/reverse KL, JSD, skew KL/RKL, TVD) against
// references: central finite differences and PyTorch autograd (float, double, bfloat16).
#include "distill/divergences_common.hpp"
#include "support/torch_reference.hpp"

#include <rlpo/distill/divergences.hpp>
#include <rlpo/testing/random.hpp>

#include <cmath>
#include <limits>
#include <vector>

TEST_CASE("distill divergences: gradient equals central finite differences", "[distill][fd]") {
    std::uint64_t seed = 11;
    for (Divergence d : kAll)
        for (double tau : {1.0, 2.5})
            for (Aggregation mode : rlpo_test::all_modes()) {
                INFO(rlpo::distill::to_string(d) << " tau " << tau << " " << rlpo::to_string(mode));
                const Case c = make_case(seed++, d);
                const DistillOptions o = opts_for(d, tau, tau > 1);
                rlpo::Normalizer n;
                n.mode = mode;
                const auto r = rlpo::distill::divergence(c.z, c.y, c.mask, o, n);
                REQUIRE(std::isfinite(r.value));
                // masked rows: exactly zero gradient
                for (Index k = 0; k < c.z.rows(); ++k)
                    if (c.mask(k / 2, k % 2) == 0) CHECK(r.grad.row(k).isZero(0.0));
                const auto near_kink = [&](Index k) {
                    if (d != Divergence::TVD) return false;  // |p − q| kinks where p = q
                    const Index row = k / c.z.cols();
                    const Mat<double> zr = c.z.row(row) / tau, yr = c.y.row(row) / tau;
                    const double lz =
                        std::log((zr.array() - zr.maxCoeff()).exp().sum()) + zr.maxCoeff();
                    const double ly =
                        std::log((yr.array() - yr.maxCoeff()).exp().sum()) + yr.maxCoeff();
                    for (Index j = 0; j < c.z.cols(); ++j)
                        if (std::abs(std::exp(zr(0, j) - lz) - std::exp(yr(0, j) - ly)) < 1e-4)
                            return true;
                    return false;
                };
                Mat<double> zc = c.z;  // FD only through unmasked finite entries
                rlpo_test::require_fd_gradient(
                    [&](const Mat<double>& x) {
                        return rlpo::distill::divergence(x, c.y, c.mask, o, n,
                                                         rlpo::no_grad<double>())
                            .value;
                    },
                    zc, r.grad, 1e-6, 1e-9,
                    [&](Index k) {
                        const Index row = k / c.z.cols();
                        return c.mask(row / 2, row % 2) == 0 || near_kink(k);
                    });
            }
}

TEMPLATE_TEST_CASE("distill divergences: agree with the PyTorch autograd reference",
                   "[distill][torch]", float, double, bf16) {
    using S = TestType;
    const std::string tag =
        std::is_same<S, double>::value ? "d" : (std::is_same<S, float>::value ? "f" : "b");
    rlpo_test::TorchReference tr("distill", "div_" + tag);
    struct Run {
        Mat<S> z, y;
        Mat<double> mask;
        DistillOptions o;
        rlpo::Normalizer n;
    };
    std::vector<Run> runs;
    std::uint64_t seed = 500;
    for (Divergence d : kAll)
        for (int variant = 0; variant < 4; ++variant)
            for (Aggregation mode : {Aggregation::TokenMean, Aggregation::SeqMeanTokenMean,
                                     Aggregation::SeqMeanTokenSumNorm}) {
                const Index V = variant == 3 ? 300 : 11;
                // the JSD endpoints are forward / reverse KL: their supports must allow those
                const Divergence shape = d != Divergence::JSD ? d
                                         : variant == 1       ? Divergence::ForwardKL
                                         : variant == 3       ? Divergence::ReverseKL
                                                              : d;
                const Case c = make_case(seed++, shape, 4, 3, V, variant == 2 ? 8.0 : 2.0);
                Run r;
                r.z = cast<S>(c.z);
                r.y = cast<S>(c.y);
                r.mask = c.mask;
                r.o = opts_for(d, variant == 1 ? 0.7 : (variant == 2 ? 2.0 : 1.0), variant == 2);
                if (d == Divergence::JSD && variant == 1) r.o.beta = 0.0;  // endpoint
                if (d == Divergence::JSD && variant == 3) r.o.beta = 1.0;
                r.n.mode = mode;
                if (seed % 2) r.n.num_tokens = 40.0, r.n.num_seqs = 9.0;
                auto& tc = tr.add<S>("divergence");
                tc.in("student", r.z).in("teacher", r.y).in("mask", r.mask);
                tc.p("temperature", r.o.temperature).p("tsq", r.o.temperature_squared ? 1.0 : 0.0);
                tc.p("beta", r.o.beta).p("alpha", r.o.alpha);
                tc.s("kind", rlpo::distill::to_string(d)).s("agg", rlpo::to_string(mode));
                if (r.n.num_tokens) tc.p("num_tokens", *r.n.num_tokens);
                if (r.n.num_seqs) tc.p("num_seqs", *r.n.num_seqs);
                runs.push_back(std::move(r));
            }
    tr.run();
    for (std::size_t i = 0; i < runs.size(); ++i) {
        const auto& r = runs[i];
        INFO("case " << i << " " << rlpo::distill::to_string(r.o.divergence));
        const auto res = rlpo::distill::divergence(r.z, r.y, r.mask, r.o, r.n);
        CHECK(rlpo_test::rel_err(res.value, tr.scalar(i, "value"), 1e-6) < value_tol<S>());
        const Mat<double> g = res.grad.template cast<double>();
        CHECK(grad_err<S>(g, tr.out(i, "grad")) < grad_tol<S>());
        CHECK(rlpo_test::rel_err(res.metrics[rlpo::distill::to_string(r.o.divergence)],
                                 tr.scalar(i, "metric"), 1e-6) < value_tol<S>());
    }
}
