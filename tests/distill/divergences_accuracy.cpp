// Dense distillation divergences: float accuracy of the fast path where probabilities
// underflow, under large logit offsets, and for close distributions (JSD's lean sweeps).
#include "distill/divergences_common.hpp"

#include <rlpo/distill/divergences.hpp>
#include <rlpo/testing/random.hpp>

#include <cmath>
#include <limits>
#include <vector>

TEMPLATE_TEST_CASE("distill divergences: mixtures stay finite where a probability underflows",
                   "[distill][properties]", float, bf16) {
    // JSD, skew KL and skew reverse KL are finite for any rows, but their mixture, e.g.
    // M = βp + (1−β)q, rounds to 0 in float where p is the smallest subnormal and q is 0
    // (logit ranges beyond ~103 nats): row 0 has teacher log-probabilities on a fine grid
    // through the subnormal range where the student's are −300; row 1 the same, swapped.
    // The value and gradient must match the double reference, not be reported infinite.
    // Rows 2 and 3 (JSD's lean sweep, whose ratio form e_p/e_q needs a normal e_q): on a
    // grid, the student's logits from 5 to 80 nats (row 2, first chunk: the ratio form with
    // e_p/e_q up to 2^115) and from 5 to 100 nats (row 3, second chunk: past e_q's normal
    // range, the log form) below the chunk's maximum, where the teacher's are 1 below it;
    // row 4 as row 2 in its second chunk, but the whole chunk 40 nats lower for the student
    // (c_k = β f_p/f_q about 2^57, so that c_k e_p/e_q would overflow: the log form).
    using S = TestType;
    rt::Generator gen(8);
    const Index N = 5, V = 2500, G = 400;
    const double tau = 0.5;
    Mat<double> z = gen.logits(N, V, 2.0), y = gen.perturbed(z, 1.0);
    for (Index j = 1; j <= G; ++j) {
        // log-probabilities about −(80 … 100): through the subnormal range (below −87.3)
        const double fine = -(80.0 + 0.05 * static_cast<double>(j)) * tau;
        y(0, j) = fine;
        z(0, j) = -300.0 * tau;
        z(1, j) = fine;
        y(1, j) = -300.0 * tau;
        const double jg = static_cast<double>(j) / static_cast<double>(G);
        z(2, j) = (10.0 - (5.0 + 75.0 * jg)) * tau;
        z(3, 2048 + j) = (10.0 - (5.0 + 95.0 * jg)) * tau;
        z(4, 2048 + j) = (10.0 - 40.0 - (5.0 + 75.0 * jg)) * tau;
        y(2, j) = y(3, 2048 + j) = y(4, 2048 + j) = 9.0 * tau;
    }
    z.row(4).segment(2048 + G + 1, V - 2048 - G - 1).array() -= 40.0 * tau;
    z(2, 0) = y(2, 0) = z(3, 2048) = y(3, 2048) = y(4, 2048) = 10.0 * tau;  // chunk maxima
    z(4, 2048) = (10.0 - 40.0) * tau;
    const Mat<S> zs = cast<S>(z), ys = cast<S>(y);
    const Mat<double> zr = zs.template cast<double>(), yr = ys.template cast<double>();
    for (const int lean : kLeanModes)
        for (Divergence d : {Divergence::JSD, Divergence::SkewKL, Divergence::SkewReverseKL}) {
            if (lean && d != Divergence::JSD) continue;
            INFO(rlpo::distill::to_string(d) << " lean " << lean);
            const DistillOptions o = lean_mode(opts_for(d, tau, false), lean);
            const auto r = rlpo::distill::divergence(zs, ys, o);
            double expect = 0;
            Mat<double> gexp(N, V);
            for (Index n = 0; n < N; ++n) {
                Eigen::RowVectorXd gr;
                expect += naive_row(d, zr.row(n), yr.row(n), tau, o.beta, o.alpha, gr) / N;
                gexp.row(n) = gr / N;
            }
            REQUIRE(std::isfinite(r.value));
            CHECK(rlpo_test::rel_err(r.value, expect) <
                  (std::is_same<S, float>::value ? 2e-5 : 1e-2));
            CHECK(grad_err<S>(r.grad.template cast<double>(), gexp) < grad_tol<S>());
            if (d == Divergence::JSD) {
                // rows 2 to 4 stay on the fast path, whichever form their chunks take
                rlpo::distill::FastPathStats stats;
                DistillOptions os = o;
                os.stats = &stats;
                const Mat<S> z23 = zs.bottomRows(3), y23 = ys.bottomRows(3);
                const auto r23 = rlpo::distill::divergence(z23, y23, os);
                CHECK(stats.exact_rows.load() == 0);
                double e23 = 0;
                for (Index n = 2; n < N; ++n) {
                    Eigen::RowVectorXd gr;
                    e23 += naive_row(d, zr.row(n), yr.row(n), tau, o.beta, o.alpha, gr) / 3;
                }
                CHECK(rlpo_test::rel_err(r23.value, e23) <
                      (std::is_same<S, float>::value ? 2e-5 : 1e-2));
            }
        }
}

TEST_CASE("distill divergences: float kernels keep their accuracy under large logit offsets",
          "[distill][pipeline][properties]") {
    // rows offset by +1000 / −500 must match the naive double reference of the same (rounded)
    // float rows to float accuracy, not lose digits to the size of the offset
    rt::Generator gen(21);
    const Index N = 6, V = 2 * 2048 + 11;
    const Mat<double> z0 = gen.logits(N, V, 3.0), y0 = gen.perturbed(z0, 2.0);
    Mat<float> z = (z0.array() + 1000.0).cast<float>().matrix();
    Mat<float> y = (y0.array() - 500.0).cast<float>().matrix();
    // row 2 holds a zero-probability column: it takes the exact path
    z(2, 7) = y(2, 7) = -std::numeric_limits<float>::infinity();
    const Mat<double> m = Mat<double>::Ones(N, 1);
    for (const int lean : kLeanModes) {
        for (Divergence d : kAll) {
            if (lean && d != Divergence::JSD) continue;
            INFO(rlpo::distill::to_string(d) << " lean " << lean);
            const DistillOptions o = lean_mode(opts_for(d, 0.7, false), lean);
            const auto rf = rlpo::distill::divergence(z, y, m, o);
            const Mat<double> zd = z.cast<double>(), yd = y.cast<double>();
            double expect = 0;
            Mat<double> gexp(N, V);
            for (Index n = 0; n < N; ++n) {
                Eigen::RowVectorXd gr;
                expect +=
                    naive_row(d, zd.row(n), yd.row(n), o.temperature, o.beta, o.alpha, gr) / N;
                gexp.row(n) = gr / static_cast<double>(N);
            }
            CHECK(rlpo_test::rel_err(rf.value, expect) < 2e-5);
            if (d != Divergence::TVD) CHECK(grad_err<float>(rf.grad.cast<double>(), gexp) < 2e-5);
        }
    }
}

TEST_CASE("distill divergences: float JSD keeps its accuracy for close distributions",
          "[distill][pipeline][properties]") {
    // teacher and student close (JSD ~ 2e−5 and 2e−3): the value sweeps (the lean one in
    // both forms, the log form with its per-chunk log-factor roundings restored) must match
    // the naive double reference of the same float rows to float accuracy (absolute: the
    // value is a sum of differences of log terms of size ~10, each rounded in float)
    rt::Generator gen(33);
    const Index N = 5, V = 3 * 2048 + 37;
    const Mat<double> z0 = gen.logits(N, V, 3.0);
    for (double spread : {0.01, 0.1}) {
        const Mat<float> z = z0.cast<float>(), y = gen.perturbed(z0, spread).cast<float>();
        const Mat<double> zd = z.cast<double>(), yd = y.cast<double>();
        for (const int lean : kLeanModes) {
            INFO("spread " << spread << " lean " << lean);
            const DistillOptions o = lean_mode(opts_for(Divergence::JSD, 0.7, false), lean);
            const auto r = rlpo::distill::divergence(z, y, o);
            double expect = 0;
            Mat<double> gexp(N, V);
            for (Index n = 0; n < N; ++n) {
                Eigen::RowVectorXd gr;
                expect += naive_row(Divergence::JSD, zd.row(n), yd.row(n), o.temperature, o.beta,
                                    o.alpha, gr) /
                          static_cast<double>(N);
                gexp.row(n) = gr / static_cast<double>(N);
            }
            // float's own limit: the log terms (|log q| ~ 10) carry ~5e−7 each
            CHECK(std::abs(r.value - expect) < 5e-8 + 1e-5 * expect);
            // the log form restores the roundings e_k of fl(log f_k): 5e−9 and 2e−9 off here
            // with them, 4.5e−8 and 3.9e−8 with their sign flipped (measured)
            if (lean == 2) CHECK(std::abs(r.value - expect) < 2e-8);
            CHECK(grad_err<float>(r.grad.cast<double>(), gexp) < 2e-4);
        }
    }
}

TEST_CASE("distill divergences: a row's least logit beyond the fast range takes the exact path",
          "[distill][pipeline][properties]") {
    // One logit near float's lowest value beside ordinary ones (logit/τ of a few units) at
    // τ = 1e−3: the row's spread over τ (3e41) is beyond float although its maxima are
    // ordinary, and (x − max)/τ overflowed on the fast path (reverse KL: NaN gradient). Stage
    // 1 finds the row's minima with its maxima: the first chunk of a thread's range in
    // `chunk_range`, the next ones one chunk ahead in the fused sweep (body and scalar tail).
    // Rows 1 to 4 hold the low logit in chunk 0, 1 and 2 and in the last entry (the tail),
    // on the side where the divergence stays finite; rows 0 and 5 are ordinary. Every mode
    // (one and two threads, the row split with moving ranges) must send exactly rows 1 to 4
    // to the exact path, and match the double reference.
    const double tau = 1e-3;
    const Index N = 6, V = 3 * 2048 + 37;
    const Index where[] = {3, 2048 + 17, 2 * 2048 + 5, V - 1};
    rt::Generator gen(41);
    const Mat<double> z0 = gen.logits(N, V) * tau, y0 = gen.logits(N, V) * tau;
    const float low = std::numeric_limits<float>::lowest() * 0.9f;
    for (Divergence d : kAll) {
        // the sides where a zero probability keeps the divergence finite
        const bool student_ok = d != Divergence::ForwardKL;
        const bool teacher_ok = d != Divergence::ReverseKL && d != Divergence::ChiSquared;
        Mat<float> z = z0.cast<float>(), y = y0.cast<float>();
        for (Index r = 0; r < 4; ++r) {
            const bool student = student_ok && (!teacher_ok || r % 2 == 0);
            (student ? z : y)(r + 1, where[r]) = low;
        }
        const Mat<double> zr = z.cast<double>(), yr = y.cast<double>();
        DistillOptions o = opts_for(d, tau, false);
        double expect = 0;
        Mat<double> gexp(N, V);
        for (Index n = 0; n < N; ++n) {
            Eigen::RowVectorXd gr;
            expect += naive_row(d, zr.row(n), yr.row(n), tau, o.beta, o.alpha, gr) / N;
            gexp.row(n) = gr / static_cast<double>(N);
        }
        std::vector<DistillOptions> modes = {o};
#if defined(RLPO_USE_OPENMP)
        modes.push_back(force_row_split(o, true));
#endif
        for (std::size_t m = 0; m < modes.size(); ++m)
            for (int threads : {1, 2}) {
                INFO(rlpo::distill::to_string(d) << " mode " << m << " threads " << threads);
                rlpo::distill::FastPathStats stats;
                DistillOptions os = modes[m];
                os.stats = &stats;
                const auto r =
                    with_threads(threads, [&] { return rlpo::distill::divergence(z, y, os); });
                CHECK(stats.exact_rows.load() == 4);
                REQUIRE(std::isfinite(r.value));
                CHECK(rlpo_test::rel_err(r.value, expect) < value_tol<float>());
                CHECK(r.grad.array().isFinite().all());
                CHECK(grad_err<float>(r.grad.cast<double>(), gexp) < grad_tol<float>());
            }
    }
}

TEST_CASE("distill divergences: skew KLs at alpha = 0 are the plain KLs where a mixture underflows",
          "[distill][properties]") {
    // Skew KL at α = 0 is KL(p‖q) (m = q) and skew reverse KL at α = 0 is KL(q‖p) (m = p).
    // Where the student (skew KL) or the teacher (skew reverse KL) lies 200 nats below the
    // other on some entries, m underflows in float while both KLs and their gradients are
    // finite: the skew factor −(1−α) p/m (resp. log(q/m)) overflowed and skew KL reported a
    // gradient overflow. The double reference of the plain KL (closed form of α = 0) decides.
    const double tau = 0.01;
    const Index N = 4, V = 2 * 2048 + 45;
    rt::Generator gen(29);
    const Mat<double> zu = gen.logits(N, V, 2.0);
    const Mat<double> z0 = zu * tau, y0 = gen.perturbed(zu, 1.0) * tau;
    for (Divergence d : {Divergence::SkewKL, Divergence::SkewReverseKL}) {
        const Divergence plain =
            d == Divergence::SkewKL ? Divergence::ForwardKL : Divergence::ReverseKL;
        Mat<double> z = z0, y = y0;
        // the low side: the student for skew KL, the teacher for skew reverse KL; entries in
        // the vectorised body of chunks 0 and 1 and in the scalar tail, the other side high
        Mat<double>& low = d == Divergence::SkewKL ? z : y;
        Mat<double>& high = d == Divergence::SkewKL ? y : z;
        for (Index n = 0; n < N; ++n)
            for (Index j : {Index(5 + n), Index(2048 + 7 * n), Index(V - 1 - n)}) {
                low(n, j) = low.row(n).maxCoeff() - 200.0 * tau;
                high(n, j) = high.row(n).maxCoeff() + 1.0 * tau;
            }
        const Mat<float> zs = z.cast<float>(), ys = y.cast<float>();
        const Mat<double> zr = zs.cast<double>(), yr = ys.cast<double>();
        DistillOptions o = opts_for(d, tau, false);
        o.alpha = 0.0;
        double expect = 0;
        Mat<double> gexp(N, V);
        for (Index n = 0; n < N; ++n) {
            Eigen::RowVectorXd gr;
            expect += naive_row(plain, zr.row(n), yr.row(n), tau, o.beta, 0.0, gr) / N;
            gexp.row(n) = gr / static_cast<double>(N);
        }
        INFO(rlpo::distill::to_string(d));
        const auto r = rlpo::distill::divergence(zs, ys, o);
        REQUIRE(std::isfinite(r.value));
        CHECK(expect > 1.0);  // the 200-nat entries dominate
        CHECK(rlpo_test::rel_err(r.value, expect) < value_tol<float>());
        REQUIRE(r.grad.array().isFinite().all());
        CHECK(grad_err<float>(r.grad.cast<double>(), gexp) < grad_tol<float>());
    }
}
