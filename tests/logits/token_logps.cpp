// token_logps (forward, backward, fused vjp) against finite differences, the PyTorch autograd
// reference (tests/reference/logits.py), properties and every documented bad input.
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/invariance.hpp"
#include "support/torch_reference.hpp"

#include <rlpo/logits/token_logps.hpp>
#include <rlpo/testing/random.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using rlpo::Index;
using rlpo::Mat;
using rlpo::logits::TokenLogpsOptions;
using bf16 = Eigen::bfloat16;
using Labels = Eigen::Matrix<std::int64_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

struct Case {
    Mat<double> z;     // [B·T, V]
    Labels y;          // [B, T]
    Mat<double> mask;  // [B, T]
    Mat<double> g, h;  // [B, T]
};

/// Random logits (scale `spread`, shifted by `offset`), labels, a mask with zeros whose rows
/// hold NaN and out-of-range labels, and upstream gradients.
Case make_case(std::uint64_t seed, Index B, Index T, Index V, double spread = 2.0,
               double offset = 0.0, bool masked = true) {
    rlpo::testing::Generator gen(seed);
    Case c;
    c.z = gen.normal<double>(B * T, V, spread, offset);
    c.y.resize(B, T);
    c.mask = Mat<double>::Ones(B, T);
    c.g = gen.normal<double>(B, T);
    c.h = gen.normal<double>(B, T);
    for (Index b = 0; b < B; ++b)
        for (Index t = 0; t < T; ++t) {
            c.y(b, t) = static_cast<std::int64_t>(gen.uniform() * static_cast<double>(V)) % V;
            if (masked && (b + 2 * t) % 5 == 3) {
                c.mask(b, t) = 0;
                c.y(b, t) = -100;
                c.z.row(b * T + t).setConstant(kNaN);
            }
        }
    return c;
}

template <class S>
Mat<S> as(const Mat<double>& x) {
    return x.cast<S>();
}

}  // namespace

TEST_CASE("token_logps: gradient equals central finite differences", "[logits][fd]") {
    std::uint64_t seed = 1;
    for (const Index V : {Index(37), Index(2100)})
        for (const double tau : {1.0, 0.7})
            for (const bool with_h : {false, true}) {
                INFO("V " << V << " tau " << tau << " entropy upstream " << with_h);
                const Case c = V > 100 ? make_case(seed++, 1, 2, V, 2.0, 0.0, false)
                                       : make_case(seed++, 3, 4, V);
                TokenLogpsOptions o;
                o.temperature = tau;
                const auto value = [&](const Mat<double>& x) {
                    const auto none = rlpo::no_grad<double>();
                    return with_h
                               ? rlpo::logits::token_logps_vjp(x, c.y, c.mask, c.g, c.h, o, none)
                                     .value
                               : rlpo::logits::token_logps_vjp(x, c.y, c.mask, c.g, o, none).value;
                };
                const auto r = with_h ? rlpo::logits::token_logps_vjp(c.z, c.y, c.mask, c.g, c.h, o)
                                      : rlpo::logits::token_logps_vjp(c.z, c.y, c.mask, c.g, o);
                REQUIRE(std::isfinite(r.value));
                const Index T = c.mask.cols();
                for (Index n = 0; n < c.z.rows(); ++n)
                    if (c.mask(n / T, n % T) == 0) CHECK(r.grad.row(n).isZero(0.0));
                // the value sums up to 12 rows of g·logp (|value| ~ 30): the central difference
                // carries ~1e-8 of round-off, hence the absolute floor
                rlpo_test::require_fd_gradient(value, c.z, r.grad, 1e-6, 1e-7, [&](Index k) {
                    const Index n = k / V;
                    return c.mask(n / T, n % T) == 0;
                });
            }
}

TEMPLATE_TEST_CASE("token_logps: agrees with the PyTorch autograd reference", "[logits][torch]",
                   float, double, bf16) {
    using S = TestType;
    using A = rlpo::logits::arith_t<S>;
    const std::string tag =
        std::is_same<S, double>::value ? "d" : (std::is_same<S, float>::value ? "f" : "b");
    rlpo_test::TorchReference tr("logits", "token_logps_" + tag);
    struct Run {
        Case c;
        Mat<S> z;
        TokenLogpsOptions o;
        bool with_h;
    };
    std::vector<Run> runs;
    std::uint64_t seed = 100;
    for (int variant = 0; variant < 6; ++variant) {
        const Index V = variant == 4 ? 4500 : (variant == 5 ? 2048 : 29);
        const double offset = variant == 2 ? 1000.0 : (variant == 3 ? -500.0 : 0.0);
        Case c = make_case(seed++, 3, 4, V, variant == 1 ? 8.0 : 2.0, offset);
        if (variant == 1) {  // −inf logits (zero probabilities) off the labels
            for (Index n = 0; n < c.z.rows(); ++n)
                if (c.mask(n / 4, n % 4) != 0)
                    for (Index j = 0; j < V; j += 3)
                        if (j != c.y(n / 4, n % 4)) c.z(n, j) = -kInf;
        }
        for (const bool with_h : {false, true}) {
            TokenLogpsOptions o;
            o.temperature = variant % 2 ? 0.6 : (variant == 4 ? 2.0 : 1.0);
            o.entropy = true;
            Run r{c, as<S>(c.z), o, with_h};
            Mat<double> zin = r.z.template cast<double>();  // the rounded inputs
            auto& k = tr.add("token_logps", "float64");
            k.in("logits", zin).in("mask", c.mask).in("g", c.g).p("temperature", o.temperature);
            k.in("labels", Mat<double>(c.y.cast<double>()));
            if (with_h) k.in("h", c.h);
            runs.push_back(std::move(r));
        }
    }
    tr.run();
    const double tol = std::is_same<S, double>::value ? 1e-10 : 2e-5;
    for (std::size_t i = 0; i < runs.size(); ++i) {
        const Run& r = runs[i];
        INFO("case " << i << " entropy upstream " << r.with_h);
        const Mat<A> g = r.c.g.template cast<A>(), h = r.c.h.template cast<A>();
        const auto out = r.with_h ? rlpo::logits::token_logps_vjp(r.z, r.c.y, r.c.mask, g, h, r.o)
                                  : rlpo::logits::token_logps_vjp(r.z, r.c.y, r.c.mask, g, r.o);
        Mat<double> gref = r.c.g.template cast<A>().template cast<double>();
        CHECK(rlpo_test::max_rel_err(out.logp, tr.out(i, "logp")) < tol);
        if (std::is_same<S, double>::value) {
            CHECK(rlpo_test::max_rel_err(out.entropy, tr.out(i, "entropy")) < tol);
        } else {
            // in float, ln S (S = 1 + the rest) carries ~6e-8 absolute: entropies of nearly
            // one-hot rows (1e-6) are only absolutely accurate, as in a float logsumexp
            const Mat<double> d = out.entropy.template cast<double>() - tr.out(i, "entropy");
            const Mat<double> bound = (1e-5 * tr.out(i, "entropy").cwiseAbs()).array() + 1e-6;
            CHECK((d.cwiseAbs().array() <= bound.array()).all());
        }
        CHECK(rlpo_test::max_rel_err(out.grad.template cast<double>(), tr.out(i, "grad")) <
              (std::is_same<S, bf16>::value ? 1e-2 : tol));
        // the value is formed from the upstream as given (here rounded to A), the reference
        // from the double upstream: compare at the rounding of g
        CHECK(rlpo_test::rel_err(out.value, tr.scalar(i, "value"), 1.0) <
              (std::is_same<S, double>::value ? 1e-10 : 1e-5));
        // the separate forward + backward give the same, bit for bit
        const auto fwd = rlpo::logits::token_logps(r.z, r.c.y, r.c.mask, r.o);
        const auto bwd = r.with_h
                             ? rlpo::logits::token_logps_backward(r.z, r.c.y, r.c.mask, fwd, g, h)
                             : rlpo::logits::token_logps_backward(r.z, r.c.y, r.c.mask, fwd, g);
        CHECK(fwd.logp == out.logp);
        CHECK(fwd.entropy == out.entropy);
        CHECK(bwd.grad == out.grad);
        CHECK(bwd.value == out.value);
    }
}

TEST_CASE("token_logps: properties", "[logits][properties]") {
    SECTION("exp(logp) sums to 1 over the labels; the entropy matches −Σ p log p") {
        for (const Index V : {Index(5), Index(3000)}) {
            rlpo::testing::Generator gen(7);
            const Mat<double> row = gen.normal<double>(1, V, 3.0);
            Mat<double> z(V, V);
            Labels y(V, 1);
            for (Index j = 0; j < V; ++j) {
                z.row(j) = row;
                y(j, 0) = j;
            }
            TokenLogpsOptions o;
            o.temperature = 1.3;
            o.entropy = true;
            const auto r = rlpo::logits::token_logps(z, y, Mat<double>::Ones(V, 1), o);
            double total = 0, negent = 0;
            for (Index j = 0; j < V; ++j) {
                total += std::exp(r.logp(j, 0));
                negent += std::exp(r.logp(j, 0)) * r.logp(j, 0);
            }
            CHECK(std::abs(total - 1.0) < 1e-12);
            CHECK(std::abs(r.entropy(0, 0) + negent) < 1e-11);
            const auto rf =
                rlpo::logits::token_logps(z.cast<float>(), y, Mat<float>::Ones(V, 1), o);
            double tf = 0;
            for (Index j = 0; j < V; ++j) tf += std::exp(static_cast<double>(rf.logp(j, 0)));
            CHECK(std::abs(tf - 1.0) < 1e-5);
        }
    }
    SECTION("uniform logits: logp = −log V, H = log V") {
        const Index V = 4097;
        const Mat<double> z = Mat<double>::Constant(2, V, 0.25);
        Labels y(1, 2);
        y << 0, V - 1;
        TokenLogpsOptions o;
        o.entropy = true;
        const auto r = rlpo::logits::token_logps(z, y, Mat<double>::Ones(1, 2), o);
        CHECK(std::abs(r.logp(0, 0) + std::log(4097.0)) < 1e-13);
        CHECK(std::abs(r.logp(0, 1) + std::log(4097.0)) < 1e-13);
        CHECK(std::abs(r.entropy(0, 1) - std::log(4097.0)) < 1e-12);
    }
    SECTION("shift invariance and temperature scaling") {
        const Case c = make_case(21, 2, 3, 2500, 2.0, 0.0, false);
        TokenLogpsOptions o;
        o.temperature = 0.8;
        o.entropy = true;
        const auto r = rlpo::logits::token_logps_vjp(c.z, c.y, c.mask, c.g, c.h, o);
        Mat<double> shifted = c.z;
        for (Index n = 0; n < c.z.rows(); ++n) shifted.row(n).array() += 37.5 * (n - 2);
        const auto rs = rlpo::logits::token_logps_vjp(shifted, c.y, c.mask, c.g, c.h, o);
        CHECK(rlpo_test::max_rel_err(rs.logp, r.logp) < 1e-11);
        CHECK(rlpo_test::max_rel_err(rs.entropy, r.entropy) < 1e-11);
        CHECK(rlpo_test::max_rel_err(rs.grad, r.grad) < 1e-9);
        // log softmax(z/τ) at τ equals log softmax(z/τ) at 1; the gradient w.r.t. z is 1/τ that
        // w.r.t. z/τ
        const Mat<double> zt = c.z / o.temperature;
        TokenLogpsOptions one;
        one.entropy = true;
        const auto r1 = rlpo::logits::token_logps_vjp(zt, c.y, c.mask, c.g, c.h, one);
        CHECK(rlpo_test::max_rel_err(r1.logp, r.logp) < 1e-12);
        CHECK(rlpo_test::max_rel_err(r1.entropy, r.entropy) < 1e-12);
        CHECK(rlpo_test::max_rel_err(Mat<double>(r1.grad / o.temperature), r.grad) < 1e-11);
    }
    SECTION("every gradient row sums to 0; a confident label's gradient") {
        Case c = make_case(22, 2, 2, 300, 2.0, 0.0, false);
        c.z(1, c.y(0, 1)) = 40.0;  // p_y = 1 − O(e^−30): 1 − p_y would cancel in float
        const auto r = rlpo::logits::token_logps_vjp(c.z, c.y, c.mask, c.g);
        for (Index n = 0; n < 4; ++n) CHECK(std::abs(r.grad.row(n).sum()) < 1e-13);
        const auto rf =
            rlpo::logits::token_logps_vjp(c.z.cast<float>(), c.y, c.mask, c.g.cast<float>());
        // g·(1 − p_y) with 1 − p_y = Σ_{j≠y} e^{z_j − z_y} / Σ_j e^{z_j − z_y}, no cancellation
        const Index y = c.y(0, 1);
        double rest = 0;
        for (Index j = 0; j < 300; ++j)
            if (j != y) rest += std::exp(c.z(1, j) - c.z(1, y));
        const double expect = c.g(0, 1) * rest / (1.0 + rest);
        CHECK(std::abs(expect) < 1e-10);
        CHECK(std::abs(expect) > 0);
        // 1 − p_y = −expm1(logp) is known to the absolute accuracy of the row sum: ~1e-16 in
        // double, ~1e-7 in float (the label's entry is never 1/τ·g·(1 − fl(p_y)) with p_y's error
        // relative to p_y)
        CHECK(std::abs(r.grad(1, y) - expect) < 1e-15 * std::abs(c.g(0, 1)));
        CHECK(std::abs(rf.grad(1, y) - expect) < 1e-7 * std::abs(c.g(0, 1)));
    }
    SECTION("masked rows are never read; add_to adds, write_to overwrites") {
        const Case c = make_case(23, 3, 4, 70);
        const auto own = rlpo::logits::token_logps_vjp(c.z, c.y, c.mask, c.g);
        Mat<double> buf = Mat<double>::Constant(12, 70, 0.5);
        const auto r2 = rlpo::logits::token_logps_vjp(c.z, c.y, c.mask, c.g, TokenLogpsOptions{},
                                                      rlpo::add_to<double>(buf, 2.0));
        CHECK(r2.grad.size() == 0);
        CHECK(r2.value == 2.0 * own.value);
        for (Index n = 0; n < 12; ++n)
            for (Index j = 0; j < 70; ++j) {
                const double expect = c.mask(n / 4, n % 4) == 0 ? 0.5 : 0.5 + 2.0 * own.grad(n, j);
                CHECK(buf(n, j) == Approx(expect).epsilon(1e-14));
            }
        buf.setConstant(9.0);
        rlpo::logits::token_logps_vjp(c.z, c.y, c.mask, c.g, TokenLogpsOptions{},
                                      rlpo::write_to<double>(buf));
        CHECK(buf == own.grad);
        for (Index n = 0; n < 12; ++n)
            if (c.mask(n / 4, n % 4) == 0) {
                CHECK(own.logp(n / 4, n % 4) == 0.0);
                CHECK(own.grad.row(n).isZero(0.0));
            }
        // no_grad: the forward and the value only
        const auto nv = rlpo::logits::token_logps_vjp(c.z, c.y, c.mask, c.g, TokenLogpsOptions{},
                                                      rlpo::no_grad<double>());
        CHECK(nv.grad.size() == 0);
        CHECK(nv.value == Approx(own.value).epsilon(1e-14));
    }
    SECTION("float streaming rows: unaligned and aligned buffers agree") {
        const Case c = make_case(24, 2, 2, 4099, 2.0, 0.0, false);
        const Mat<float> zf = c.z.cast<float>();
        const Mat<float> gf = c.g.cast<float>();
        const auto own = rlpo::logits::token_logps_vjp(zf, c.y, c.mask, gf);
        std::vector<float> raw(4 * 4100 + 1, 7.0f);  // stride 4100, start off by one float
        Eigen::Map<Mat<float>, 0, Eigen::OuterStride<>> m(raw.data() + 1, 4, 4099,
                                                          Eigen::OuterStride<>(4100));
        rlpo::GradientOut<float> out{rlpo::GradMode::Write, raw.data() + 1, 4, 4099, 4100, 1.0};
        rlpo::logits::token_logps_vjp(zf, c.y, c.mask, gf, TokenLogpsOptions{}, out);
        CHECK(Mat<float>(m) == own.grad);
        CHECK(raw[0] == 7.0f);
        CHECK(raw[4100] == 7.0f);  // the padding entry between rows 0 and 1
    }
}

TEST_CASE("token_logps: identical results for any thread count", "[logits][threads]") {
    for (const Index V : {Index(2048 + 37), Index(300)}) {
        const Case c = make_case(31, 8, 9, V, 3.0, 1.0);
        const Mat<float> z = c.z.cast<float>();
        const Mat<float> g = c.g.cast<float>(), h = c.h.cast<float>();
        TokenLogpsOptions o;
        o.temperature = 0.9;
        const auto one = rlpo_test::with_threads(
            1, [&] { return rlpo::logits::token_logps_vjp(z, c.y, c.mask, g, h, o); });
        for (const int k : {2, 3}) {
            const auto many = rlpo_test::with_threads(
                k, [&] { return rlpo::logits::token_logps_vjp(z, c.y, c.mask, g, h, o); });
            CHECK(many.logp == one.logp);
            CHECK(many.entropy == one.entropy);
            CHECK(many.grad == one.grad);
            CHECK(many.value == one.value);
        }
    }
}

TEST_CASE("token_logps: bad input", "[logits][errors]") {
    const Case c = make_case(41, 2, 3, 10);
    const TokenLogpsOptions o;
    using rlpo::logits::token_logps;
    using rlpo::logits::token_logps_backward;
    using rlpo::logits::token_logps_vjp;
    SECTION("shapes") {
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(token_logps(Mat<double>(c.z.topRows(5)), c.y, c.mask, o),
                                        "logits: expected 6 rows");
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(token_logps(c.z, Labels(c.y.leftCols(2)), c.mask, o),
                                        "labels: expected shape");
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(
            token_logps_vjp(c.z, c.y, c.mask, Mat<double>(c.g.leftCols(2)), o),
            "grad_logp: expected shape");
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(
            token_logps_vjp(c.z, c.y, c.mask, c.g, Mat<double>(c.h.topRows(1)), o),
            "grad_entropy: expected shape");
        Mat<double> gbuf(6, 9);
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(
            token_logps_vjp(c.z, c.y, c.mask, c.g, o, rlpo::write_to<double>(gbuf)),
            "GradientOut: expected shape");
        const auto fwd = token_logps(c.z, c.y, c.mask, o);
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(token_logps_backward(c.z, c.y, c.mask, fwd, c.g, c.h),
                                        "without the entropy");
        const Case other = make_case(42, 3, 2, 10);
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(
            token_logps_backward(other.z, other.y, other.mask, fwd, other.g),
            "fwd: a forward of shape");
    }
    SECTION("temperature and mask") {
        for (const double tau : {0.0, -1.0, kInf, kNaN}) {
            TokenLogpsOptions b;
            b.temperature = tau;
            RLPO_REQUIRE_THROWS_WITH_SUBSTR(token_logps(c.z, c.y, c.mask, b), "temperature");
        }
        Mat<double> m = c.mask;
        m(1, 1) = -1.0;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(token_logps(c.z, c.y, m, o), "mask: entries must be");
        m(1, 1) = kNaN;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(token_logps(c.z, c.y, m, o), "mask: entries must be");
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(
            token_logps_vjp(c.z, c.y, c.mask, c.g, o,
                            rlpo::GradientOut<double>{rlpo::GradMode::Own, nullptr, 0, 0, 0, kNaN}),
            "GradientOut::coef");
    }
    SECTION("labels outside [0, V) under the mask (masked rows are not checked)") {
        for (const std::int64_t bad : {std::int64_t(-1), std::int64_t(10), std::int64_t(-100)}) {
            Labels y = c.y;
            y(0, 0) = bad;
            RLPO_REQUIRE_THROWS_WITH_SUBSTR(token_logps(c.z, y, c.mask, o), "is outside [0, 10)");
        }
        Labels y = c.y;
        y(1, 1) = 12345;  // row 4 is masked
        REQUIRE(c.mask(1, 1) == 0);
        CHECK_NOTHROW(token_logps(c.z, y, c.mask, o));
    }
    SECTION("non-finite logits and upstream gradients under the mask") {
        for (const bool fl : {false, true}) {
            Mat<double> z = c.z;
            z(1, 4) = kNaN;
            const auto run = [&](const Mat<double>& x) {
                return fl ? token_logps_vjp(x.cast<float>(), c.y, c.mask, c.g.cast<float>(), o)
                                .value
                          : token_logps_vjp(x, c.y, c.mask, c.g, o).value;
            };
            RLPO_REQUIRE_THROWS_WITH_SUBSTR(run(z), "NaN logit");
            RLPO_REQUIRE_THROWS_WITH_SUBSTR(run(z), "at [1, 4]");
            z(1, 4) = kInf;
            RLPO_REQUIRE_THROWS_WITH_SUBSTR(run(z), "+inf logit");
            z.row(1).setConstant(-kInf);
            RLPO_REQUIRE_THROWS_WITH_SUBSTR(run(z), "every logit is -inf");
            z = c.z;
            z(2, c.y(0, 2)) = -kInf;
            RLPO_REQUIRE_THROWS_WITH_SUBSTR(run(z), "the label's logit is -inf");
            // a NaN in a long row's later chunk is found too
            const Case l = make_case(43, 1, 2, 5000, 2.0, 0.0, false);
            Mat<double> zl = l.z;
            zl(1, 4500) = kNaN;
            RLPO_REQUIRE_THROWS_WITH_SUBSTR(token_logps(zl, l.y, l.mask, o), "at [1, 4500]");
        }
        Mat<double> g = c.g;
        g(0, 1) = kNaN;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(token_logps_vjp(c.z, c.y, c.mask, g, o),
                                        "grad_logp: nan at [0, 1]");
        Mat<double> h = c.h;
        h(0, 0) = -kInf;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(token_logps_vjp(c.z, c.y, c.mask, c.g, h, o),
                                        "grad_entropy: -inf at [0, 0]");
        TokenLogpsOptions e;
        e.entropy = true;
        const auto fwd = token_logps(c.z, c.y, c.mask, e);
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(token_logps_backward(c.z, c.y, c.mask, fwd, g),
                                        "grad_logp: nan");
    }
    SECTION("a chunk of only −inf logits is a zero-probability block, not an error") {
        const Case l = make_case(44, 1, 2, 5000, 2.0, 0.0, false);
        Mat<double> z = l.z;
        z.block(0, 2048, 2, 2048).setConstant(-kInf);
        Labels y = l.y;
        y(0, 0) = 10;
        y(0, 1) = 4200;
        const auto r = token_logps_vjp(z, y, l.mask, l.g);
        Mat<double> ref = z;
        for (Index n = 0; n < 2; ++n) {
            const double mx = z.row(n).maxCoeff();
            double s = 0;
            for (Index j = 0; j < 5000; ++j) s += std::exp(z(n, j) - mx);
            CHECK(std::abs(r.logp(0, n) - (z(n, y(0, n)) - mx - std::log(s))) < 1e-12);
        }
        CHECK(r.grad.block(0, 2048, 2, 2048).isZero(0.0));
    }
}

// A finite upstream gradient whose product with 1/τ overflows the storage type (float, g = 3e37,
// τ = 1e-3: entries ≈ 3e40): numerical_error naming the entry, never an inf gradient. An input
// error in a later row outranks it (invalid_argument). The same gradient in double is finite
// and equals g/τ·(δ − p) (checked against the float64 call on the same inputs).
TEST_CASE("token_logps: a gradient beyond the storage type is numerical_error",
          "[logits][errors]") {
    using rlpo::logits::token_logps_vjp;
    Case c = make_case(43, 2, 2, 6, 2.0, 0.0, /*masked=*/false);
    TokenLogpsOptions o;
    o.temperature = 1e-3;
    c.g.setConstant(3e37);
    const Mat<float> z = c.z.cast<float>(), m = c.mask.cast<float>(), g = c.g.cast<float>();
    RLPO_REQUIRE_NUMERICAL_ERROR(token_logps_vjp(z, c.y, m, g, o), "gradient overflows");
    Mat<float> zn = z;
    zn(3, 1) = std::numeric_limits<float>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(token_logps_vjp(zn, c.y, m, g, o), "NaN");
    const auto rd = token_logps_vjp(c.z, c.y, c.mask, c.g, o);
    CHECK(rd.grad.array().isFinite().all());
    CHECK(rd.grad.cwiseAbs().maxCoeff() > 1e39);
    // an ordinary upstream gradient at the same temperature is not affected
    c.g.setConstant(1.0);
    CHECK(
        token_logps_vjp(z, c.y, m, Mat<float>(c.g.cast<float>()), o).grad.array().isFinite().all());
}

TEST_CASE("token_logps: a chunk of only -inf logits in a long row", "[logits][properties]") {
    // V = 5000 spans three chunks of the sweeps; the middle one is all −inf (a banned
    // vocabulary range): its probabilities and gradient are exactly 0, the rest is the
    // softmax by hand, and the fused call equals forward + backward bit for bit
    const Case c = make_case(51, 2, 3, 5000, 1.5, 0.0, false);
    Mat<double> z = c.z;
    for (Index n = 0; n < z.rows(); ++n)
        for (Index j = 2048; j < 4096; ++j) z(n, j) = -kInf;
    Labels y = c.y;
    for (Index k = 0; k < y.size(); ++k)
        if (y.data()[k] >= 2048 && y.data()[k] < 4096) y.data()[k] = 7;
    TokenLogpsOptions o;
    o.temperature = 1.5;
    const auto r = rlpo::logits::token_logps_vjp(z, y, c.mask, c.g, o);
    const auto fwd = rlpo::logits::token_logps(z, y, c.mask, o);
    const auto bwd = rlpo::logits::token_logps_backward(z, y, c.mask, fwd, c.g);
    CHECK(bwd.grad == r.grad);
    CHECK(fwd.logp == r.logp);
    const Index T = c.mask.cols();
    for (Index n = 0; n < z.rows(); ++n) {
        if (c.mask(n / T, n % T) == 0) continue;
        double m = -kInf;
        for (Index j = 0; j < z.cols(); ++j) m = std::max(m, z(n, j));
        double s = 0;
        for (Index j = 0; j < z.cols(); ++j) s += std::exp((z(n, j) - m) / 1.5);
        const double g = c.g(n / T, n % T);
        const Index lab = static_cast<Index>(y(n / T, n % T));
        for (Index j = 0; j < z.cols(); ++j) {
            const double p = std::exp((z(n, j) - m) / 1.5) / s;
            const double expect = g / 1.5 * ((j == lab ? 1.0 : 0.0) - p);
            if (j >= 2048 && j < 4096)
                CHECK(r.grad(n, j) == 0.0);
            else
                CHECK(std::abs(r.grad(n, j) - expect) <=
                      1e-12 * std::abs(g) + 1e-13 * std::abs(expect));
        }
    }
}
