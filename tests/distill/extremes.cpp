// Every distillation entry point at extreme logits: each loss depends on the differences of
// a row's logits only, so rows moved by a large offset (exactly: the logits are multiples of
// the offset's ulp) must give the unshifted value and gradient; all-equal rows, V = 1, −inf
// entries and huge temperatures give finite results.
#include "support/catch.hpp"
#include "support/checks.hpp"

#include <rlpo/distill/divergences.hpp>
#include <rlpo/distill/nkd.hpp>
#include <rlpo/distill/sinkhorn.hpp>
#include <rlpo/distill/taid.hpp>
#include <rlpo/distill/topk.hpp>
#include <rlpo/testing/random.hpp>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

using rlpo::Index;
using rlpo::Mat;
namespace rd = rlpo::distill;
namespace rt = rlpo::testing;

namespace {

template <class S>
using Loss = std::function<rlpo::Result<S>(const Mat<S>&, const Mat<S>&)>;

// The entry points, each as (student, teacher) → result.
template <class S>
std::vector<std::pair<std::string, Loss<S>>> entry_points(Index N) {
    std::vector<std::pair<std::string, Loss<S>>> out;
    const Mat<S> mask = Mat<S>::Ones(N, 1);
    for (rd::Divergence d :
         {rd::Divergence::ForwardKL, rd::Divergence::ReverseKL, rd::Divergence::JSD,
          rd::Divergence::SkewKL, rd::Divergence::SkewReverseKL, rd::Divergence::TVD}) {
        out.emplace_back(rd::to_string(d), [d, mask](const Mat<S>& z, const Mat<S>& y) {
            return rd::divergence(z, y, mask, rd::DistillOptions::make(d));
        });
    }
    out.emplace_back("taid", [mask](const Mat<S>& z, const Mat<S>& y) {
        rd::TAIDOptions o;
        o.t = 0.6;
        return rd::taid(z, y, mask, o);
    });
    out.emplace_back("nkd", [mask](const Mat<S>& z, const Mat<S>& y) {
        rd::NKDOptions o;
        o.temperature = 2.0;
        return rd::nkd(z, y, mask, {}, o);
    });
    out.emplace_back("dac_kl",
                     [mask](const Mat<S>& z, const Mat<S>& y) { return rd::dac_kl(z, y, mask); });
    out.emplace_back("topk", [mask](const Mat<S>& z, const Mat<S>&) {
        // fixed teacher pairs: the student alone moves
        Mat<double> idx(z.rows(), 3), lp(z.rows(), 3);
        for (Index n = 0; n < z.rows(); ++n) {
            idx.row(n) << 0, 2, 5;
            lp.row(n) << -0.5, -1.5, -3.0;
        }
        rd::TopKOptions o;
        o.tail = rd::TopKTail::Renormalize;
        return rd::forward_kl_topk(z, idx, lp, mask, o);
    });
    out.emplace_back("topk_bucket", [mask](const Mat<S>& z, const Mat<S>&) {
        Mat<double> idx(z.rows(), 3), lp(z.rows(), 3);
        for (Index n = 0; n < z.rows(); ++n) {
            idx.row(n) << 0, 2, 5;
            lp.row(n) << -0.5, -1.5, -3.0;
        }
        return rd::forward_kl_topk(z, idx, lp, mask);
    });
    out.emplace_back("sinkhorn",
                     [mask](const Mat<S>& z, const Mat<S>& y) { return rd::sinkhorn(z, y, mask); });
    return out;
}

template <class S>
void require_finite(const rlpo::Result<S>& r) {
    CHECK(std::isfinite(r.value));
    CHECK(r.grad.array().isFinite().all());
    for (const auto& e : r.metrics) CHECK(std::isfinite(e.second.value()));
}

}  // namespace

TEMPLATE_TEST_CASE("distillation entry points: shift invariant at large offsets",
                   "[distill][extremes]", float, double) {
    using S = TestType;
    const Index N = 4, V = 37;
    for (double offset : {1e6, 1e15, -1e15, 1e30, -1e30}) {
        const S off = static_cast<S>(offset);
        const S u =
            std::nextafter(std::abs(off), std::numeric_limits<S>::infinity()) - std::abs(off);
        rt::Generator gen(41);
        const Mat<S> zb = (gen.logits(N, V) * 2.0).array().round().template cast<S>() * u;
        const Mat<S> yb = (gen.logits(N, V) * 2.0).array().round().template cast<S>() * u;
        const Mat<S> z = (zb.array() + off).matrix(), y = (yb.array() - off).matrix();
        REQUIRE(((z.array() - off) == zb.array()).all());
        REQUIRE(((y.array() + off) == yb.array()).all());
        for (const auto& [name, loss] : entry_points<S>(N)) {
            const auto r0 = loss(zb, yb);
            const auto r1 = loss(z, y);
            INFO("offset " << offset << " " << name << ": unshifted " << r0.value << ", shifted "
                           << r1.value);
            require_finite(r1);
            const double tol = std::is_same<S, double>::value ? 1e-9 : 2e-5;
            CHECK(std::abs(r1.value - r0.value) <= tol * std::abs(r0.value) + 1e-6);
            const double gs = std::max(1.0, r0.grad.cwiseAbs().maxCoeff() * 1.0);
            CHECK((r1.grad - r0.grad).cwiseAbs().maxCoeff() <= tol * gs + 1e-6);
        }
    }
}

TEMPLATE_TEST_CASE("distillation entry points: degenerate rows give finite results",
                   "[distill][extremes]", float, double) {
    using S = TestType;
    const S ninf = -std::numeric_limits<S>::infinity();
    const Index N = 3, V = 9;
    rt::Generator gen(43);
    std::vector<std::pair<std::string, std::pair<Mat<S>, Mat<S>>>> cases;
    cases.push_back({"all equal", {Mat<S>::Constant(N, V, S(3)), Mat<S>::Constant(N, V, S(-7))}});
    cases.push_back(
        {"all equal huge", {Mat<S>::Constant(N, V, S(1e30)), Mat<S>::Constant(N, V, S(-1e30))}});
    Mat<S> z = gen.logits(N, V).template cast<S>(), y = gen.logits(N, V).template cast<S>();
    z(0, 7) = y(0, 7) = ninf;  // a shared zero-probability entry
    z(1, 8) = y(1, 8) = ninf;
    cases.push_back({"shared -inf", {z, y}});
    Mat<S> w = z, v = y;
    w(2, 3) = S(1e30);  // one entry far above the rest, in both
    v(2, 3) = S(1e30);
    cases.push_back({"one huge entry", {w, v}});
    for (const auto& [what, zy] : cases)
        for (const auto& [name, loss] : entry_points<S>(N)) {
            INFO(what << ": " << name);
            const auto r = loss(zy.first, zy.second);
            require_finite(r);
            CHECK(r.value >= -1e-6);
        }
}

TEMPLATE_TEST_CASE("distillation entry points: huge temperatures", "[distill][extremes]", float,
                   double) {
    using S = TestType;
    rt::Generator gen(47);
    const Index N = 3, V = 9;
    const Mat<S> z = gen.logits(N, V).template cast<S>(), y = gen.logits(N, V).template cast<S>();
    const Mat<S> mask = Mat<S>::Ones(N, 1);
    for (double tau : {1e4, 1e30, 1e300}) {
        INFO("tau " << tau);
        for (rd::Divergence d :
             {rd::Divergence::ForwardKL, rd::Divergence::ReverseKL, rd::Divergence::JSD,
              rd::Divergence::SkewKL, rd::Divergence::SkewReverseKL, rd::Divergence::TVD,
              rd::Divergence::ChiSquared}) {
            rd::DistillOptions o = rd::DistillOptions::make(d);
            o.temperature = tau;
            const auto r = rd::divergence(z, y, mask, o);
            require_finite(r);
            CHECK(std::abs(r.value) <= 1e-3);
        }
        rd::TAIDOptions t;
        t.temperature = tau;
        require_finite(rd::taid(z, y, mask, t));
        rd::NKDOptions k;
        k.temperature = tau;
        if (tau < 1e150)
            require_finite(rd::nkd(z, y, mask, {}, k));
        else  // γτ² overflows: a typed error, not an "infinite divergence"
            RLPO_REQUIRE_NUMERICAL_ERROR(rd::nkd(z, y, mask, {}, k), "temperature");
        // Hinton's τ² scaling overflows the same way
        rd::DistillOptions h = rd::DistillOptions::hinton(tau);
        if (tau < 1e150)
            require_finite(rd::divergence(z, y, mask, h));
        else
            RLPO_REQUIRE_NUMERICAL_ERROR(rd::divergence(z, y, mask, h), "temperature");
        rd::DacKLOptions a;
        a.temperature = tau;
        require_finite(rd::dac_kl(z, y, mask, a));
        rd::SinkhornOptions s;
        s.temperature = tau;
        require_finite(rd::sinkhorn(z, y, mask, s));
    }
}

TEMPLATE_TEST_CASE("distillation entry points: one vocabulary entry", "[distill][extremes]", float,
                   double) {
    using S = TestType;
    const Mat<S> z = Mat<S>::Constant(3, 1, S(2)), y = Mat<S>::Constant(3, 1, S(-5));
    const Mat<S> mask = Mat<S>::Ones(3, 1);
    for (rd::Divergence d :
         {rd::Divergence::ForwardKL, rd::Divergence::ReverseKL, rd::Divergence::JSD,
          rd::Divergence::SkewKL, rd::Divergence::SkewReverseKL, rd::Divergence::TVD,
          rd::Divergence::ChiSquared}) {
        const auto r = rd::divergence(z, y, mask, rd::DistillOptions::make(d));
        require_finite(r);
        CHECK(r.value == 0.0);
    }
    require_finite(rd::taid(z, y, mask));
    require_finite(rd::dac_kl(z, y, mask));
    require_finite(rd::sinkhorn(z, y, mask));
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rd::nkd(z, y, mask), "at least 2");
}

TEST_CASE("sinkhorn: a small epsilon gives a finite result", "[distill][extremes]") {
    rt::Generator gen(53);
    const Mat<double> z = gen.logits(5, 12), y = gen.logits(5, 12);
    const Mat<double> mask = Mat<double>::Ones(5, 1);
    rd::SinkhornOptions o;
    o.epsilon = 1e-4;
    const auto r = rd::sinkhorn(z, y, mask, o);
    require_finite(r);
}
