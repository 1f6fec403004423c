// Dense distillation divergences: the row pipeline at vocabulary scale and row by row against
// a naive reference, thread-count invariance bit for bit, the row split and its balancing.
#include "distill/divergences_common.hpp"

#include <rlpo/distill/divergences.hpp>
#include <rlpo/testing/random.hpp>

#include <cmath>
#include <limits>
#include <vector>

TEST_CASE("distill divergences: float rows at vocabulary scale, threads, chunked gradient",
          "[distill][properties][threads]") {
    rt::Generator gen(9);
    const Index N = 24, V = 20000;
    const Mat<float> z = gen.logits<float>(N, V, 3.0), y = gen.logits<float>(N, V, 3.0);
    const Mat<double> zd = z.cast<double>(), yd = y.cast<double>();
    const Mat<double> m = Mat<double>::Ones(N, 1);
    for (Divergence d : kAll) {
        INFO(rlpo::distill::to_string(d));
        const DistillOptions o = opts_for(d, 1.0, false);
        const auto rf = rlpo::distill::divergence(z, y, m, o);
        const auto rd = rlpo::distill::divergence(zd, yd, m, o);
        // float accumulation over 20k entries vs double
        CHECK(rlpo_test::rel_err(rf.value, rd.value) < 1e-5);
        // 20k-term rows: a few float roundings per entry; TVD's sign(q − p) may flip where
        // q ≈ p in float, a discontinuity of the exact gradient, so only its value is compared.
        if (d != Divergence::TVD) CHECK(grad_err<float>(rf.grad.cast<double>(), rd.grad) < 5e-5);
#if defined(RLPO_USE_OPENMP)
        const auto run = [&] { return rlpo::distill::divergence(z, y, m, o); };
        const auto r1 = with_threads(1, run), r2 = with_threads(2, run);
        CHECK(rlpo_test::rel_err(r1.value, r2.value) <= 1e-6);
        CHECK(rlpo_test::max_rel_err(r1.grad, r2.grad) <= 1e-6);
#endif
        // chunked: the gradient streamed in row blocks equals the whole
        Mat<float> g(N, V);
        double total = 0;
        for (Index r0 = 0; r0 < N; r0 += 5) {
            const Index nr = std::min<Index>(5, N - r0);
            rlpo::Normalizer n;
            n.num_tokens = static_cast<double>(N);
            Eigen::Ref<Mat<float>> gb = g.middleRows(r0, nr);
            total +=
                rlpo::distill::divergence(z.middleRows(r0, nr), y.middleRows(r0, nr),
                                          Mat<double>::Ones(nr, 1), o, n, rlpo::write_to<float>(gb))
                    .value;
        }
        CHECK(rlpo_test::rel_err(total, rf.value) < 1e-6);
        CHECK(rlpo_test::max_rel_err(g, rf.grad) < 1e-6);
    }
}

TEMPLATE_TEST_CASE("distill divergences: row pipeline matches a naive reference row by row",
                   "[distill][pipeline]", float, double, bf16) {
    using S = TestType;
    // Rows of several chunks with a ragged last chunk (not a multiple of any packet width),
    // masked rows holding NaN garbage, rows with zero-probability columns (the exact path in
    // the middle of the pipeline), a single-chunk row length, and τ ≠ 1.
    // (65573: TVD's value sweep leaves the pipeline when its work rows outgrow the budget,
    // and JSD takes its lean value sweep; the other lengths run JSD in all three ways)
    for (const int lean : kLeanModes) {
        for (Index V : {Index(3 * 2048 + 37), Index(2048), Index(29), Index(65573)}) {
            if (lean == 1 && V > 60000) continue;
            const std::size_t lean_bytes = lean > 0    ? 0
                                           : V > 60000 ? rlpo::distill::FastPathTuning{}.lean_bytes
                                                       : std::numeric_limits<std::size_t>::max();
            rt::Generator gen(static_cast<std::uint64_t>(V));
            const Index N = 13;
            Mat<double> z = gen.logits(N, V, 3.0), y = gen.perturbed(z, 2.0);
            Mat<double> mask = Mat<double>::Ones(N, 1);
            mask(2, 0) = mask(7, 0) = 0;
            z(2, 5) = std::numeric_limits<double>::quiet_NaN();
            y(7, V - 1) = std::numeric_limits<double>::quiet_NaN();
            z(4, 3) = y(4, 3) = -inf;  // a zero column in both rows
            z(10, V - 2) = y(10, V - 2) = -inf;
            const Mat<S> zs = cast<S>(z), ys = cast<S>(y);
            const Mat<double> zr = zs.template cast<double>(), yr = ys.template cast<double>();
            for (Divergence d : kAll) {
                if (V > 60000 && d != Divergence::TVD && d != Divergence::JSD) continue;
                if (lean && d != Divergence::JSD) continue;
                INFO(rlpo::distill::to_string(d) << " V=" << V << " lean " << lean);
                const DistillOptions o = with_lean(opts_for(d, 0.7, false), lean_bytes, lean == 2);
                double expect = 0, count = 0;
                Mat<double> gexp = Mat<double>::Zero(N, V);
                for (Index n = 0; n < N; ++n) {
                    if (mask(n, 0) == 0) continue;
                    Eigen::RowVectorXd gr;
                    expect +=
                        naive_row(d, zr.row(n), yr.row(n), o.temperature, o.beta, o.alpha, gr);
                    gexp.row(n) = gr;
                    count += 1;
                }
                expect /= count;
                gexp /= count;
                const auto r = rlpo::distill::divergence(zs, ys, mask, o);
                CHECK(rlpo_test::rel_err(r.value, expect) <
                      (std::is_same<S, double>::value ? 1e-12 : 2e-5));
                CHECK(grad_err<S>(r.grad.template cast<double>(), gexp) <
                      (std::is_same<S, double>::value ? 1e-12 : grad_tol<S>()));
                CHECK(r.grad.row(2).template cast<double>().cwiseAbs().maxCoeff() == 0.0);
                // value only (no gradient rows in the pipeline), and added gradients
                const auto v = rlpo::distill::divergence(zs, ys, mask, o, rlpo::Normalizer{},
                                                         rlpo::no_grad<S>());
                CHECK(v.value == r.value);
                // (bfloat16 cannot resolve a gradient added to 1: its rows start at 0)
                const double base = std::is_same<S, bf16>::value ? 0.0 : 1.0;
                Mat<S> acc = Mat<S>::Constant(N, V, static_cast<S>(base));
                rlpo::distill::divergence(zs, ys, mask, o, rlpo::Normalizer{},
                                          rlpo::add_to<S>(acc));
                const Mat<double> added = acc.template cast<double>().array() - base;
                // (1 + g − 1 keeps ~1e−16 absolute of entries ~1e−4: 1e−9 normwise for double)
                const double added_tol = std::is_same<S, double>::value  ? 1e-9
                                         : std::is_same<S, float>::value ? 1e-4
                                                                         : 1e-2;
                CHECK(grad_err<S>(added, gexp) < added_tol);
#if defined(RLPO_USE_OPENMP)
                const auto run = [&] { return rlpo::distill::divergence(zs, ys, mask, o); };
                const auto r1 = with_threads(1, run), r2 = with_threads(2, run),
                           r3 = with_threads(3, run);
                CHECK(r1.value == r2.value);
                CHECK(r1.value == r3.value);
                CHECK(r1.grad == r2.grad);
                CHECK(r1.grad == r3.grad);
                // The row split (the threads share each row) forced: the same bits as one thread,
                // for the value, the gradient and an added gradient, with 3 threads on uneven
                // chunk ranges, and with 2 threads on ranges that move every step. (Without
                // forcing, V = 65573 splits JSD.)
                Mat<S> acc2 = Mat<S>::Constant(N, V, static_cast<S>(base));
                const DistillOptions os = force_row_split(o, true), of = force_row_split(o, false);
                const auto s2 = [&] {
                    with_threads(2, [&] {
                        return rlpo::distill::divergence(zs, ys, mask, os, rlpo::Normalizer{},
                                                         rlpo::add_to<S>(acc2));
                    });
                    return with_threads(
                        2, [&] { return rlpo::distill::divergence(zs, ys, mask, os); });
                }();
                const auto s3 =
                    with_threads(3, [&] { return rlpo::distill::divergence(zs, ys, mask, of); });
                CHECK(s2.value == r1.value);
                CHECK(s3.value == r1.value);
                CHECK(s2.grad == r1.grad);
                CHECK(s3.grad == r1.grad);
                CHECK(acc2 == acc);
#endif
            }
        }
    }
}

TEST_CASE("distill divergences: the row split's ranges move toward equal sweep times",
          "[distill][pipeline]") {
    using rlpo::distill::detail::balance_ranges;
    // 3 threads over 30 chunks, 10 each: a boundary moves one chunk when two neighbours'
    // times differ by more than one chunk of the slower one
    std::vector<Index> kb = {0, 10, 20, 30};
    std::vector<double> t = {1.0, 1.05, 1.5};  // 0 vs 1: within a chunk (0.105); 1 vs 2: not
    balance_ranges(kb.data(), t.data(), 3, 30, 0);
    CHECK(kb == std::vector<Index>{0, 10, 21, 30});  // thread 2 gives one chunk to thread 1
    t = {2.0, 1.0, 1.0};
    balance_ranges(kb.data(), t.data(), 3, 30, 1);
    CHECK(kb == std::vector<Index>{0, 9, 21, 30});  // thread 0 gives one to thread 1
    // a thread keeps one chunk however slow; an empty thread takes one
    kb = {0, 1, 3, 3};
    t = {5.0, 1.0, 0.0};
    balance_ranges(kb.data(), t.data(), 3, 3, 2);
    CHECK(kb == std::vector<Index>{0, 1, 2, 3});
}

#if defined(RLPO_USE_OPENMP)
TEMPLATE_TEST_CASE("distill divergences: row split with fewer chunks than threads",
                   "[distill][pipeline]", float, double) {
    // rows of 2 chunks over 3 threads (one thread sweeps no chunk but still plans and merges
    // every step) and 40 rows, one masked and one on the exact path: the naive reference, and
    // the same bits as one thread
    using S = TestType;
    rt::Generator gen(5);
    const Index N = 40, V = 2500;
    Mat<double> z = gen.logits(N, V, 3.0), y = gen.perturbed(z, 2.0);
    Mat<double> mask = Mat<double>::Ones(N, 1);
    mask(3, 0) = 0;
    z(11, 2) = y(11, 2) = -inf;
    const Mat<S> zs = cast<S>(z), ys = cast<S>(y);
    for (Divergence d : kAll) {
        INFO(rlpo::distill::to_string(d));
        const DistillOptions o = opts_for(d, 0.7, false);
        const auto run = [&] { return rlpo::distill::divergence(zs, ys, mask, o); };
        const auto r1 = with_threads(1, run);
        // the row split forced: 0 to 2 chunks a thread, changing every step
        const DistillOptions os = force_row_split(o, true);
        const auto runs = [&] { return rlpo::distill::divergence(zs, ys, mask, os); };
        const auto s3 = with_threads(3, runs), s2 = with_threads(2, runs);
        const Mat<double> zr = zs.template cast<double>(), yr = ys.template cast<double>();
        double expect = 0, count = 0;
        Mat<double> gexp = Mat<double>::Zero(N, V);
        for (Index n = 0; n < N; ++n) {
            if (mask(n, 0) == 0) continue;
            Eigen::RowVectorXd gr;
            expect += naive_row(d, zr.row(n), yr.row(n), o.temperature, o.beta, o.alpha, gr);
            gexp.row(n) = gr;
            count += 1;
        }
        expect /= count;
        gexp /= count;
        CHECK(rlpo_test::rel_err(s3.value, expect) <
              (std::is_same<S, double>::value ? 1e-12 : 2e-5));
        CHECK(grad_err<S>(s3.grad.template cast<double>(), gexp) <
              (std::is_same<S, double>::value ? 1e-12 : grad_tol<S>()));
        CHECK(s3.value == r1.value);
        CHECK(s2.value == r1.value);
        CHECK(s3.grad == r1.grad);
        CHECK(s2.grad == r1.grad);
    }
}
#endif

#if defined(RLPO_USE_OPENMP)
TEMPLATE_TEST_CASE("distill divergences: a row split giving way to row blocks, blocks of any size",
                   "[distill][pipeline]", float, double) {
    // The row split lets no row in after a given step and finishes in row blocks (what it does
    // when its threads wait more than they work), and row blocks of 1, 3 and 7 rows taken by
    // 2 or 3 threads: the same bits as one thread for the value, the gradient and an added
    // gradient, and the fallback counted once when rows were left. 40 rows of 3 chunks, one
    // masked and one on the exact path; TVD also on rows long enough for its value sweep on
    // its own (`inline2`: 4 barriers a step), JSD also in its lean sweep.
    using S = TestType;
    struct Shape {
        Index N, V;
    };
    for (const Shape sh : {Shape{40, 5000}, Shape{9, 66000}}) {
        rt::Generator gen(17);
        const Index N = sh.N, V = sh.V;
        Mat<double> z = gen.logits(N, V, 3.0), y = gen.perturbed(z, 2.0);
        Mat<double> mask = Mat<double>::Ones(N, 1);
        mask(3, 0) = 0;
        z(5, 2) = y(5, 2) = -inf;
        z(6, 1) = 1e30;  // beyond the fast range: the exact path
        const Mat<S> zs = cast<S>(z), ys = cast<S>(y);
        for (Divergence d : kAll) {
            if (N < 40 && d != Divergence::TVD && d != Divergence::JSD) continue;
            for (int lean = 0; lean < (d == Divergence::JSD ? 2 : 1); ++lean) {
                INFO(rlpo::distill::to_string(d) << " N=" << N << " lean " << lean);
                const DistillOptions o = lean_mode(opts_for(d, 0.7, false), lean);
                const auto r1 =
                    with_threads(1, [&] { return rlpo::distill::divergence(zs, ys, mask, o); });
                Mat<S> acc1 = Mat<S>::Ones(N, V);
                with_threads(1, [&] {
                    return rlpo::distill::divergence(zs, ys, mask, o, rlpo::Normalizer{},
                                                     rlpo::add_to<S>(acc1));
                });
                // value, gradient and an added gradient under `oo` with nt threads: one thread's
                const auto same_as_one_thread = [&](const DistillOptions& oo, int nt) {
                    const auto r = with_threads(
                        nt, [&] { return rlpo::distill::divergence(zs, ys, mask, oo); });
                    Mat<S> acc = Mat<S>::Ones(N, V);
                    with_threads(nt, [&] {
                        return rlpo::distill::divergence(zs, ys, mask, oo, rlpo::Normalizer{},
                                                         rlpo::add_to<S>(acc));
                    });
                    CHECK(r.value == r1.value);
                    CHECK(r.grad == r1.grad);
                    CHECK(acc == acc1);
                };
                for (const Index step : {Index(0), Index(1), Index(4), N - 2, N - 1, N + 1}) {
                    for (const int nt : {2, 3}) {
                        INFO("fallback after step " << step << ", " << nt << " threads");
                        rlpo::distill::FastPathStats stats;
                        DistillOptions of = force_row_split(o, step % 2 == 1);
                        of.tuning.split_fallback_step = step;
                        of.tuning.split_idle_fraction = 2.0;   // (never by the clock here,
                        of.tuning.split_checkin_seconds = -1;  // nor at the team's check-in)
                        of.stats = &stats;
                        same_as_one_thread(of, nt);
                        CHECK(stats.split_fallbacks.load() == (step + 1 < N ? 2u : 0u));
                        CHECK(stats.exact_rows.load() == 4u);  // rows 5 and 6, two calls
                    }
                }
                for (const Index rows : {Index(1), Index(3), Index(7)}) {
                    for (const int nt : {2, 3}) {
                        INFO(rows << " rows a block, " << nt << " threads");
                        DistillOptions ob = o;
                        ob.tuning.row_block_rows = rows;
                        ob.tuning.split_bytes = std::numeric_limits<std::size_t>::max();
                        same_as_one_thread(ob, nt);
                    }
                }
            }
        }
    }
}
#endif

TEMPLATE_TEST_CASE("distill divergences: chi2 (the penalties' chi-squared) through the pipeline",
                   "[distill][chi2]", float, double) {
    // The kind penalties::vocab_divergence runs in double; here float too (its fused exponent
    // argument), against the naive reference, with zero columns (both −inf; student-only
    // −inf), a masked NaN row, rows long enough for the row split, and thread counts.
    using S = TestType;
    rt::Generator gen(77);
    for (const Index V : {Index(300), Index(20000)}) {
        const Index N = 6;
        Mat<double> z = gen.logits(N, V, 2.0), y = gen.perturbed(z, 0.8);
        Mat<double> mask = Mat<double>::Ones(N, 1);
        mask(3, 0) = 0;
        z(3, 1) = std::numeric_limits<double>::quiet_NaN();
        z(1, 4) = y(1, 4) = -inf;
        z(2, V - 1) = -inf;  // student zero where the teacher has mass: finite
        const Mat<S> zs = cast<S>(z), ys = cast<S>(y);
        const Mat<double> zr = zs.template cast<double>(), yr = ys.template cast<double>();
        const DistillOptions o = opts_for(Divergence::ChiSquared, 0.8, false);
        double expect = 0;
        Mat<double> gexp = Mat<double>::Zero(N, V);
        for (Index n = 0; n < N; ++n) {
            if (mask(n, 0) == 0) continue;
            Eigen::RowVectorXd gr;
            expect += naive_row(Divergence::ChiSquared, zr.row(n), yr.row(n), o.temperature, o.beta,
                                o.alpha, gr) /
                      5;
            gexp.row(n) = gr / 5;
        }
        INFO("V " << V);
        const auto r = rlpo::distill::chi2(zs, ys, mask, o);
        CHECK(rlpo_test::rel_err(r.value, expect) <
              (std::is_same<S, double>::value ? 1e-12 : 2e-5));
        CHECK(grad_err<S>(r.grad.template cast<double>(), gexp) <
              (std::is_same<S, double>::value ? 1e-12 : grad_tol<S>()));
        CHECK(r.grad.row(3).isZero());
        CHECK(r.metrics["chi2"] == Approx(r.value).epsilon(1e-12));
#if defined(RLPO_USE_OPENMP)
        const auto run = [&] { return rlpo::distill::chi2(zs, ys, mask, o); };
        const auto r1 = with_threads(1, run);
        CHECK(r1.value == r.value);
        CHECK(r1.grad == r.grad);
        const auto rs = with_threads(
            2, [&] { return rlpo::distill::chi2(zs, ys, mask, force_row_split(o, true)); });
        CHECK(rs.value == r1.value);
        CHECK(rs.grad == r1.grad);
#endif
        // the teacher has no mass where the student has: infinite, an error naming the row
        Mat<S> hole = ys;
        hole(4, 7) = -std::numeric_limits<S>::infinity();
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::chi2(zs, hole, mask, o),
                                        "in row 4 (row under a non-zero mask)");
    }
}
