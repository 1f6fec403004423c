// Bad and extreme input for every distillation entry point (the non-finite rule of
// docs/contract.md, section 5): an empty vocabulary, +inf logits, cancellation at large logit
// ranges, extreme temperatures and top-k log-probs above 0. Values are compared with a long
// double reference written here.
#include "support/alloc_counter.hpp"
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/reference_ld.hpp"

#include <rlpo/distill/divergences.hpp>
#include <rlpo/distill/nkd.hpp>
#include <rlpo/distill/sinkhorn.hpp>
#include <rlpo/distill/taid.hpp>
#include <rlpo/distill/topk.hpp>
#include <rlpo/testing/random.hpp>

#include <algorithm>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <new>
#include <vector>

namespace alloc = rlpo_test::alloc;

using rlpo::Index;
using rlpo::Mat;
using rlpo::distill::DistillOptions;
using rlpo::distill::Divergence;
namespace rd = rlpo::distill;
namespace rt = rlpo::testing;

namespace {

constexpr Divergence kKinds[] = {Divergence::ForwardKL, Divergence::ReverseKL,     Divergence::JSD,
                                 Divergence::SkewKL,    Divergence::SkewReverseKL, Divergence::TVD,
                                 Divergence::ChiSquared};

using rlpo_test::LD;
using rlpo_test::log_softmax_ld;

// log(w1 e^a + w2 e^b), both may be −inf
LD log_mix_ld(LD a, LD b, LD w1, LD w2) {
    if (w1 == 0) return std::log(w2) + b;
    if (w2 == 0) return std::log(w1) + a;
    const LD u = a + std::log(w1), v = b + std::log(w2);
    const LD mx = std::max(u, v);
    if (mx == -std::numeric_limits<LD>::infinity()) return mx;
    return mx + std::log1p(std::exp(-std::fabs(u - v)));
}

// The divergence of one row from its definition, in long double (q student, p teacher).
LD ref_row(Divergence d, const std::vector<LD>& z, const std::vector<LD>& y, LD tau, LD beta,
           LD alpha) {
    const std::vector<LD> lq = log_softmax_ld(z, tau), lp = log_softmax_ld(y, tau);
    const LD ninf = -std::numeric_limits<LD>::infinity();
    LD L = 0;
    for (std::size_t j = 0; j < z.size(); ++j) {
        const LD q = std::exp(lq[j]), p = std::exp(lp[j]);
        switch (d) {
            case Divergence::ForwardKL:
                if (lp[j] > ninf) L += p * (lp[j] - lq[j]);
                break;
            case Divergence::ReverseKL:
                if (lq[j] > ninf) L += q * (lq[j] - lp[j]);
                break;
            case Divergence::JSD: {
                const LD lm = log_mix_ld(lp[j], lq[j], beta, 1 - beta);
                if (lp[j] > ninf) L += beta * p * (lp[j] - lm);
                if (lq[j] > ninf) L += (1 - beta) * q * (lq[j] - lm);
                break;
            }
            case Divergence::SkewKL: {
                const LD lm = log_mix_ld(lp[j], lq[j], alpha, 1 - alpha);
                if (lp[j] > ninf) L += p * (lp[j] - lm);
                break;
            }
            case Divergence::SkewReverseKL: {
                const LD lm = log_mix_ld(lp[j], lq[j], 1 - alpha, alpha);
                if (lq[j] > ninf) L += q * (lq[j] - lm);
                break;
            }
            case Divergence::TVD: L += std::fabs(p - q) / 2; break;
            case Divergence::ChiSquared:
                if (lq[j] > ninf) L += q * (std::exp(lq[j] - lp[j]) - 1);
                break;
        }
    }
    return L;
}

template <class S>
double ref_value(Divergence d, const Mat<S>& z, const Mat<S>& y, double tau, double beta,
                 double alpha) {
    LD total = 0;
    for (Index n = 0; n < z.rows(); ++n) {
        std::vector<LD> zr(static_cast<std::size_t>(z.cols())), yr(zr.size());
        for (Index j = 0; j < z.cols(); ++j) {
            zr[static_cast<std::size_t>(j)] = static_cast<LD>(z(n, j));
            yr[static_cast<std::size_t>(j)] = static_cast<LD>(y(n, j));
        }
        total += ref_row(d, zr, yr, tau, beta, alpha);
    }
    return static_cast<double>(total / static_cast<LD>(z.rows()));
}

template <class S>
bool all_finite(const Mat<S>& g) {
    return g.array().isFinite().all();
}

DistillOptions opts(Divergence d, double tau = 1.0) {
    DistillOptions o = DistillOptions::make(d);
    o.temperature = tau;
    o.beta = 0.5;
    o.alpha = 0.1;
    return o;
}

}  // namespace

TEST_CASE("distillation: an empty vocabulary is rejected by every entry point",
          "[distill][bad_input]") {
    const Mat<float> z(3, 0), y(3, 0), mask = Mat<float>::Ones(3, 1);
    const Mat<float> idx(3, 0), lp(3, 0);
    for (Divergence d : kKinds)
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(rd::divergence(z, y, mask, opts(d)), "logits: V = 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rd::forward_kl_topk(z, idx, lp, mask), "logits: V = 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rd::dac_kl(z, y, mask), "logits: V = 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rd::taid(z, y, mask), "logits: V = 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rd::nkd(z, y, mask), "logits: V = 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rd::sinkhorn(z, y, mask), "logits: V = 0");
    // also when every row is masked (the shape is wrong, whatever the mask)
    const Mat<float> none = Mat<float>::Zero(3, 1);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rd::divergence(z, y, none), "logits: V = 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rd::taid(z, y, none), "logits: V = 0");
}

TEST_CASE("distillation: zero rows are a legal empty batch (value 0)", "[distill][bad_input]") {
    const Mat<double> z(0, 5), y(0, 5), mask(0, 1), idx(0, 2), lp(0, 2);
    for (Divergence d : kKinds) {
        const auto r = rd::divergence(z, y, mask, opts(d));
        CHECK(r.value == 0.0);
        CHECK(r.grad.rows() == 0);
    }
    CHECK(rd::forward_kl_topk(z, idx, lp, mask).value == 0.0);
    CHECK(rd::dac_kl(z, y, mask).value == 0.0);
    CHECK(rd::taid(z, y, mask).value == 0.0);
    CHECK(rd::nkd(z, y, mask).value == 0.0);
    CHECK(rd::sinkhorn(z, y, mask).value == 0.0);
}

TEMPLATE_TEST_CASE("distillation: a +inf logit is rejected with its position",
                   "[distill][bad_input]", float, double) {
    using S = TestType;
    rt::Generator gen(7);
    Mat<S> z = gen.logits(4, 300).template cast<S>(), y = gen.logits(4, 300).template cast<S>();
    const Mat<S> mask = Mat<S>::Ones(4, 1);
    const S pinf = std::numeric_limits<S>::infinity();
    for (Divergence d : kKinds) {
        Mat<S> zz = z, yy = y;
        zz(2, 17) = pinf;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(rd::divergence(zz, y, mask, opts(d)), "[2, 17]");
        yy(1, 5) = pinf;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(rd::divergence(z, yy, mask, opts(d)), "[1, 5]");
    }
}

TEST_CASE("JSD: no cancellation when the student is masked far below the teacher",
          "[distill][accuracy]") {
    // the student puts large negative (finite) logits where the teacher has most mass
    for (double low : {-1e3, -1e6, -1e9, -1e30}) {
        rt::Generator gen(11);
        const Index N = 3, V = 5000;
        Mat<float> y = gen.logits(N, V).cast<float>(), z = y;
        for (Index n = 0; n < N; ++n)
            for (Index j = 0; j < V; j += 3) z(n, j) = static_cast<float>(low);
        for (double beta : {0.1, 0.5, 0.9}) {
            DistillOptions o = opts(Divergence::JSD);
            o.beta = beta;
            const auto r = rd::divergence(z, y, o);
            const double ref = ref_value(Divergence::JSD, z, y, 1.0, beta, 0.1);
            INFO("low " << low << " beta " << beta << " value " << r.value << " ref " << ref);
            CHECK(std::abs(r.value - ref) <= 1e-5 * std::abs(ref));
            CHECK(all_finite(r.grad));
            for (Divergence d : {Divergence::SkewKL, Divergence::SkewReverseKL, Divergence::TVD}) {
                const auto rs = rd::divergence(z, y, opts(d));
                const double rf = ref_value(d, z, y, 1.0, 0.5, 0.1);
                INFO("kind " << static_cast<int>(d) << " value " << rs.value << " ref " << rf);
                CHECK(std::abs(rs.value - rf) <= 1e-5 * std::abs(rf) + 1e-7);
            }
        }
    }
}

TEMPLATE_TEST_CASE("dense divergences: identical rows give 0 at large logit offsets",
                   "[distill][accuracy]", float, double) {
    using S = TestType;
    // |logit/τ| up to the documented range: 1e30 in double, 1e30 in float as well
    const std::vector<double> offsets = {1e6, 1e14, 1e15, 1e20, 1e30};
    for (double off : offsets)
        for (double sign : {1.0, -1.0})
            for (double spread : {1.0, off}) {
                rt::Generator gen(3);
                const Index N = 3, V = 4100;
                Mat<S> z = (gen.logits(N, V).array() * spread + sign * off).template cast<S>();
                for (Divergence d : kKinds) {
                    const auto r = rd::divergence(z, z, opts(d));
                    INFO("offset " << sign * off << " spread " << spread << " kind "
                                   << static_cast<int>(d) << " value " << r.value);
                    CHECK(std::abs(r.value) <= 1e-5);
                    CHECK(all_finite(r.grad));
                }
            }
}

TEMPLATE_TEST_CASE("dense divergences: values are never negative under random extreme rows",
                   "[distill][accuracy]", float, double) {
    using S = TestType;
    for (std::uint64_t seed = 0; seed < 30; ++seed) {
        rt::Generator gen(100 + seed);
        const double scale = std::pow(10.0, static_cast<double>(seed % 16));
        const Index N = 2, V = 2100;
        Mat<S> z = (gen.logits(N, V).array() * scale).template cast<S>();
        Mat<S> y = (gen.logits(N, V).array() * scale).template cast<S>();
        for (Divergence d : kKinds) {
            if (d == Divergence::ChiSquared) continue;  // may be infinite (numerical_error)
            const auto r = rd::divergence(z, y, opts(d));
            const double ref = ref_value(d, z, y, 1.0, 0.5, 0.1);
            INFO("seed " << seed << " scale " << scale << " kind " << static_cast<int>(d)
                         << " value " << r.value << " ref " << ref);
            CHECK(r.value >= 0);
            CHECK(std::abs(r.value - ref) <= 1e-4 * std::abs(ref) + 1e-6);
        }
    }
}

TEST_CASE("skew reverse KL: alpha 0 at a small temperature has a finite gradient",
          "[distill][bad_input]") {
    rt::Generator gen(5);
    const Mat<float> z = gen.logits(4, 64).cast<float>(), y = gen.logits(4, 64).cast<float>();
    for (double alpha : {0.0, 1e-6, 0.1})
        for (double tau : {1e-3, 1e-2, 1.0}) {
            DistillOptions o = opts(Divergence::SkewReverseKL, tau);
            o.alpha = alpha;
            const auto r = rd::divergence(z, y, o);
            const double ref = ref_value(Divergence::SkewReverseKL, z, y, tau, 0.5, alpha);
            INFO("alpha " << alpha << " tau " << tau << " value " << r.value << " ref " << ref);
            CHECK(std::isfinite(r.value));
            CHECK(all_finite(r.grad));
            CHECK(std::abs(r.value - ref) <= 1e-4 * std::abs(ref) + 1e-6);
        }
}

TEST_CASE("reverse KL: temperatures below the documented range are rejected",
          "[distill][bad_input]") {
    rt::Generator gen(9);
    const Mat<float> z = gen.logits(2, 32).cast<float>(), y = gen.logits(2, 32).cast<float>();
    for (Divergence d : kKinds) {
        for (double tau : {1e-7, 1e-30, 1e-45}) {
            RLPO_REQUIRE_THROWS_WITH_SUBSTR(rd::divergence(z, y, opts(d, tau)), "temperature");
        }
        // and huge temperatures: every distribution is uniform, the divergence 0
        const auto r = rd::divergence(z, y, opts(d, 1e30));
        CHECK(std::abs(r.value) <= 1e-6);
        CHECK(all_finite(r.grad));
    }
}

TEST_CASE("top-k forward KL: log-probs above 0 are rejected", "[distill][bad_input]") {
    rt::Generator gen(13);
    const Mat<double> z = gen.logits(2, 16);
    const Mat<double> mask = Mat<double>::Ones(2, 1);
    Mat<double> idx(2, 3), lp(2, 3);
    idx << 0, 1, 2, 3, 4, 5;
    lp << -1, -2, -3, -1, -2, -3;
    for (auto tail : {rd::TopKTail::Bucket, rd::TopKTail::Renormalize}) {
        rd::TopKOptions o;
        o.tail = tail;
        Mat<double> bad = lp;
        bad(1, 2) = 800.0;  // e^800 overflows: teacher_topk_mass would be inf
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(rd::forward_kl_topk(z, idx, bad, mask, o), "[1, 2]");
        bad(1, 2) = 0.5;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(rd::forward_kl_topk(z, idx, bad, mask, o), "[1, 2]");
        bad.row(1) << -40.0, -40.0, 1e-9;  // rounding of a log-prob 0 is accepted
        const auto r = rd::forward_kl_topk(z, idx, bad, mask, o);
        CHECK(std::isfinite(r.value));
    }
}

TEMPLATE_TEST_CASE("dense divergences: accurate at every logit offset", "[distill][accuracy]",
                   float, double) {
    using S = TestType;
    // two independent rows around a common offset: the divergence depends on the differences
    // only; 10^0 … 10^30 (the fast path up to 2^20, the exact path beyond)
    for (int k = 0; k <= 30; ++k) {
        const double off = std::pow(10.0, k);
        for (double sign : {1.0, -1.0}) {
            rt::Generator gen(3);
            const Index N = 2, V = 4100;
            const Mat<S> z = (gen.logits(N, V).array() + sign * off).template cast<S>();
            const Mat<S> y = (gen.logits(N, V).array() + sign * off).template cast<S>();
            for (Divergence d : kKinds) {
                const auto r = rd::divergence(z, y, opts(d));
                const double ref = ref_value(d, z, y, 1.0, 0.5, 0.1);
                INFO("offset " << sign * off << " kind " << static_cast<int>(d) << " value "
                               << r.value << " ref " << ref);
                const double tol = std::is_same<S, double>::value ? 1e-9 : 2e-5;
                CHECK(std::abs(r.value - ref) <= tol * std::abs(ref) + 2e-6);
                CHECK(r.value >= -2e-6);
            }
        }
    }
}

TEST_CASE("DAC-KL: no per-row allocations (the region by selection)", "[distill][dac_kl]") {
    rt::Generator gen(17);
    const Index N = 64, V = 32768;
    // a flat teacher (large top-p regions) and a peaked one
    Mat<float> y = (gen.logits(N, V) * 0.3).cast<float>();
    y.bottomRows(N / 2) = (gen.logits(N / 2, V) * 4.0).cast<float>();
    const Mat<float> z = gen.logits(N, V).cast<float>();
    const Mat<float> mask = Mat<float>::Ones(N, 1);
    Mat<float> grad(N, V);
    rd::DacKLOptions o;
    (void)rd::dac_kl(z, y, mask, o, rlpo::Normalizer{}, rlpo::write_to<float>(grad));
    alloc::bytes = 0;
    alloc::calls = 0;
    alloc::counting = true;
    const auto r = rd::dac_kl(z, y, mask, o, rlpo::Normalizer{}, rlpo::write_to<float>(grad));
    alloc::counting = false;
    INFO("bytes " << alloc::bytes.load() << " allocations " << alloc::calls.load());
    // per thread: two scratch rows, the order and the region buffers (a few V-rows)
    CHECK(alloc::bytes.load() < 16LL * V * 8 * 2);
    CHECK(alloc::calls.load() < 200);
    // the region walk is the full sort's: compare with a sort-based region in double
    double total = 0;
    for (Index n = 0; n < N; ++n) {
        std::vector<Index> order(static_cast<std::size_t>(V));
        for (Index j = 0; j < V; ++j) order[static_cast<std::size_t>(j)] = j;
        std::sort(order.begin(), order.end(), [&](Index a, Index b) {
            return y(n, a) > y(n, b) || (y(n, a) == y(n, b) && a < b);
        });
        long double my = y.row(n).maxCoeff(), s = 0, sq = 0, mz = z.row(n).maxCoeff();
        for (Index j = 0; j < V; ++j) {
            s += std::exp(static_cast<long double>(y(n, j)) - my);
            sq += std::exp(static_cast<long double>(z(n, j)) - mz);
        }
        const long double lse = my + std::log(s), lsq = mz + std::log(sq);
        long double cum = 0, pk = 0;
        std::vector<Index> reg;
        for (Index j : order) {
            if (!(cum < 0.9L)) break;
            reg.push_back(j);
            cum += std::exp(static_cast<long double>(y(n, j)) - lse);
        }
        pk = cum;
        long double L = 0;
        for (Index j : reg) {
            const long double lp = static_cast<long double>(y(n, j)) - lse - std::log(pk);
            L += std::exp(lp) * (lp - (static_cast<long double>(z(n, j)) - lsq));
        }
        total += static_cast<double>(L);
    }
    CHECK(std::abs(r.value - total / N) <= 1e-5 * std::abs(total / N));
}

// A Normalizer count near 0 (num_tokens = 1e-300: valid, > 0 and finite) makes the row factor
// c·m = 1e300, beyond float's range: the float gradient would be inf (or inf·0 = NaN where an
// entry's derivative is 0). It is rlpo::numerical_error naming the row factor. A factor inside
// the range — also one large enough to be checked (double, 1e302) — is exact: the gradient
// scales with 1/num_tokens (expected: the gradient at num_tokens = 4, the local count, times
// 4/num_tokens).
TEST_CASE("distillation: a row factor beyond the type's range is numerical_error",
          "[distill][bad_input]") {
    rt::Generator gen(31);
    const Mat<double> zd = gen.logits(4, 40), yd = gen.logits(4, 40);
    const Mat<float> z = zd.cast<float>(), y = yd.cast<float>();
    const Mat<float> mask = Mat<float>::Ones(2, 2);
    rlpo::Normalizer tiny;
    tiny.num_tokens = 1e-300;
    const char* needle = "row factor";
    for (Divergence d : kKinds) {
        INFO(rd::to_string(d));
        RLPO_REQUIRE_NUMERICAL_ERROR(rd::divergence(z, y, mask, opts(d), tiny), needle);
    }
    Mat<float> idx(4, 3), lp(4, 3);
    idx << 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11;
    lp.setConstant(std::log(0.2f));
    RLPO_REQUIRE_NUMERICAL_ERROR(rd::forward_kl_topk(z, idx, lp, mask, {}, tiny), needle);
    RLPO_REQUIRE_NUMERICAL_ERROR(rd::dac_kl(z, y, mask, {}, tiny), needle);
    RLPO_REQUIRE_NUMERICAL_ERROR(rd::taid(z, y, mask, {}, tiny), needle);
    RLPO_REQUIRE_NUMERICAL_ERROR(rd::nkd(z, y, mask, {}, {}, tiny), needle);
    // Sinkhorn takes no Normalizer; its scale is the row factor
    rd::SinkhornOptions so;
    so.scale = 1e300;
    RLPO_REQUIRE_NUMERICAL_ERROR(rd::sinkhorn(z, y, mask, so), needle);
    // no gradient asked for: nothing overflows (the value is a double)
    CHECK(std::isfinite(
        rd::divergence(z, y, mask, opts(Divergence::JSD), tiny, rlpo::no_grad<float>()).value));

    // inside the range: exact scaling, with and without the at-risk scan
    for (Divergence d : kKinds) {
        INFO(rd::to_string(d));
        rlpo::Normalizer four, big;
        four.num_tokens = 4.0;
        big.num_tokens = 1e-302;  // factor 1e302 > 2^-40·max(double): the row is scanned
        const Mat<double> md = Mat<double>::Ones(2, 2);
        const auto r4 = rd::divergence(zd, yd, md, opts(d), four);
        const auto rb = rd::divergence(zd, yd, md, opts(d), big);
        CHECK(rlpo_test::max_rel_err(rb.grad, r4.grad * (4.0 / 1e-302)) < 1e-12);
        big.num_tokens = 1e-20;  // float factor 1e20: not at risk
        const auto f4 = rd::divergence(z, y, mask, opts(d), four);
        const auto fb = rd::divergence(z, y, mask, opts(d), big);
        // float: normwise (entries that cancel carry the float rounding of the row's scale)
        CHECK(rlpo_test::grad_err<float>(fb.grad.cast<double>(), f4.grad.cast<double>() * 4e20) <
              1e-6);
    }
}

// A teacher logit near float's maximum at a small τ sends the row to the exact path (the fast
// path gave a NaN gradient here), where the reverse KL's gradient q_j (h_j − E_q h)/τ at the
// teacher's mode (h ≈ −3e41) is beyond float: the value (in double) is finite, the gradient is
// numerical_error naming the entry. A NaN in a later row outranks it (invalid_argument).
// Forward KL, whose gradient (q − p)/τ stays bounded, gives finite results on the same rows.
TEST_CASE("dense divergences: a gradient beyond float on the exact path is numerical_error",
          "[distill][bad_input]") {
    rt::Generator gen(17);
    Mat<float> z = gen.logits(3, 7).cast<float>(), y = gen.logits(3, 7).cast<float>();
    y(0, 2) = 3e38f;
    const Mat<float> mask = Mat<float>::Ones(3, 1);
    DistillOptions o = opts(Divergence::ReverseKL, 1e-3);
    RLPO_REQUIRE_NUMERICAL_ERROR(rd::divergence(z, y, mask, o), "overflows the storage type");
    Mat<float> zn = z;
    zn(2, 4) = std::numeric_limits<float>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rd::divergence(zn, y, mask, o), "[2, 4]");
    // without a gradient the value alone is finite
    CHECK(std::isfinite(rd::divergence(z, y, mask, o, {}, rlpo::no_grad<float>()).value));
    // forward KL on the same rows: finite, and the row's gradient is (q − p)/τ with p one-hot
    const auto f = rd::divergence(z, y, mask, opts(Divergence::ForwardKL, 1e-3));
    CHECK(std::isfinite(f.value));
    REQUIRE(f.grad.array().isFinite().all());
    CHECK(f.grad(0, 2) < -300.0);  // −(1 − q_2)/(3τ) with q_2 < 0.1: the teacher's mode
}

namespace {

// The gradient of forward / reverse KL of one row, in long double (q student, p teacher), from
// the definitions: (q − p)/τ and q (h − Σ q h)/τ with h = log q − log p (0 where q = 0).
std::vector<LD> ref_grad_row(Divergence d, const std::vector<LD>& z, const std::vector<LD>& y,
                             LD tau) {
    const std::vector<LD> lq = log_softmax_ld(z, tau), lp = log_softmax_ld(y, tau);
    const LD ninf = -std::numeric_limits<LD>::infinity();
    std::vector<LD> g(z.size(), 0);
    if (d == Divergence::ForwardKL) {
        for (std::size_t j = 0; j < z.size(); ++j) g[j] = (std::exp(lq[j]) - std::exp(lp[j])) / tau;
        return g;
    }
    LD eh = 0;
    for (std::size_t j = 0; j < z.size(); ++j)
        if (lq[j] > ninf) eh += std::exp(lq[j]) * (lq[j] - lp[j]);
    for (std::size_t j = 0; j < z.size(); ++j)
        if (lq[j] > ninf) g[j] = std::exp(lq[j]) * ((lq[j] - lp[j]) - eh) / tau;
    return g;
}

}  // namespace

// One logit near the type's lowest value beside ordinary ones at a small τ: the row's spread
// over τ (3e41 in float, 1.6e311 in double) is beyond the type's range although its maxima
// are ordinary. The fast path's per-entry log-ratio (x − max)/τ overflowed there (reverse KL:
// an inf gradient beside a finite value for a low teacher logit, NaN for a low student
// logit). Every kind, either side, rows with the low entry in the vectorised body and in the
// scalar tail: a value (and for forward / reverse KL a gradient) that matches the long double
// reference, or a typed error where the reference itself is beyond the type (the value's
// double, or the gradient's S).
TEMPLATE_TEST_CASE("dense divergences: a logit spread over tau beyond the type's range",
                   "[distill][bad_input]", float, double) {
    using S = TestType;
    const S low = std::numeric_limits<S>::lowest() * S(0.9);
    const double tau = 1e-3;
    const double smax = static_cast<double>(std::numeric_limits<S>::max());
    rt::Generator gen(23);
    const Index N = 3, V = 300;  // (V % 16 = 12: a scalar tail for every packet width)
    // (ordinary rows: logits/τ of a few units, so that the softmax is not one-hot)
    const Mat<S> z0 = (gen.logits(N, V).array() * tau).template cast<S>();
    const Mat<S> y0 = (gen.logits(N, V).array() * tau).template cast<S>();
    for (int side = 0; side < 2; ++side)
        for (Divergence d : kKinds) {
            Mat<S> z = z0, y = y0;
            Mat<S>& x = side == 0 ? z : y;
            x(0, 5) = low;      // vectorised body
            x(1, V - 1) = low;  // scalar tail
            INFO(rd::to_string(d) << (side == 0 ? ", low student logit" : ", low teacher logit"));
            const LD ref = [&] {
                LD total = 0;
                for (Index n = 0; n < N; ++n)
                    total +=
                        ref_row(d, rlpo_test::row_ld(z, n), rlpo_test::row_ld(y, n), tau, 0.5, 0.1);
                return total / N;
            }();
            const bool kl = d == Divergence::ForwardKL || d == Divergence::ReverseKL;
            Mat<double> gref = Mat<double>::Zero(N, V);
            bool gref_fits = true;
            if (kl)
                for (Index n = 0; n < N; ++n) {
                    const auto g = ref_grad_row(d, rlpo_test::row_ld(z, n), rlpo_test::row_ld(y, n),
                                                static_cast<LD>(tau));
                    for (Index j = 0; j < V; ++j) {
                        const LD v = g[static_cast<std::size_t>(j)] / N;
                        gref_fits = gref_fits && std::fabs(v) <= static_cast<LD>(smax);
                        gref(n, j) = static_cast<double>(v);
                    }
                }
            const bool ref_fits = std::isfinite(ref) && std::fabs(ref) <= static_cast<LD>(1.7e308);
            INFO("reference value " << static_cast<double>(ref) << ", gradient fits " << gref_fits);
            if (!ref_fits) {
                // an infinite divergence (χ² where p_j ≈ 0 < q_j: e^(3e41) is beyond any type)
                RLPO_REQUIRE_THROWS_WITH_SUBSTR(rd::divergence(z, y, opts(d, tau)), "infinite");
                continue;
            }
            if (!gref_fits) {
                RLPO_REQUIRE_NUMERICAL_ERROR(rd::divergence(z, y, opts(d, tau)), "gradient");
                // the value alone is finite and right
                const auto rv =
                    rd::divergence(z, y, Mat<S>::Ones(N, 1), opts(d, tau), {}, rlpo::no_grad<S>());
                CHECK(rlpo_test::rel_err(rv.value, static_cast<double>(ref)) < 1e-5);
                continue;
            }
            const auto r = rd::divergence(z, y, opts(d, tau));
            INFO("value " << r.value);
            CHECK(rlpo_test::rel_err(r.value, static_cast<double>(ref), 1e-6) < 1e-4);
            CHECK(all_finite(r.grad));
            if (kl) CHECK(rlpo_test::grad_err<S>(r.grad.template cast<double>(), gref) < 1e-4);
        }
}

TEST_CASE("chi-squared in double: a row spread over tau beyond the exponential's exact range",
          "[distill][bad_input]") {
    // χ²(q‖p) = Σ q²/p − 1 needs p exactly however small; double's fast exponential clamps
    // arguments below about −708 instead of giving 0 (a finite, wrong value and an inf
    // gradient before the fix). Rows whose spread over τ exceeds that take the exact path:
    // the long double reference where it is finite, an "infinite" error where it is not.
    // The first row is the case fuzzing found (student flat at −2, a teacher logit of −120,
    // τ = 1e−3).
    struct Row {
        double z0, y0, tau;
    };
    for (const Row c : {Row{-2.0, -120.0, 1e-3}, Row{-2.0, -800.0, 1.0}, Row{-2.0, -2.5, 1e-3},
                        Row{-760.0, -740.0, 1.0}, Row{-2.0, -600.0, 1.0}}) {
        INFO("z0 " << c.z0 << " y0 " << c.y0 << " tau " << c.tau);
        Mat<double> z = Mat<double>::Constant(1, 19, -2.0), y = z;
        z(0, 0) = c.z0;
        y(0, 0) = c.y0;
        y(0, 1) = -1.9843137254901961;
        y(0, 2) = -1.9530632486457618;
        const LD ref = ref_row(Divergence::ChiSquared, rlpo_test::row_ld(z, 0),
                               rlpo_test::row_ld(y, 0), static_cast<LD>(c.tau), 0.5, 0.1);
        INFO("reference " << static_cast<double>(ref));
        const DistillOptions o = opts(Divergence::ChiSquared, c.tau);
        if (!(std::fabs(ref) <= static_cast<LD>(1e300))) {
            RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::divergence(z, y, o), "infinite");
            continue;
        }
        const auto r = rlpo::distill::divergence(z, y, o);
        CHECK(rlpo_test::rel_err(r.value, static_cast<double>(ref)) < 1e-10);
        CHECK(all_finite(r.grad));
    }
}
