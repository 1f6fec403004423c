// rlpo over an inference engine's raw buffers (the calls a ggml / llama.cpp-style engine makes):
// plain pointers and shapes, wrapped in Eigen::Map without a copy, and what rlpo says when a
// buffer's layout is wrong.
//
//   1. logits [N, V] row-major (llama.cpp's llama_get_logits: one row of n_vocab floats per
//      token), sampled token ids (int32) → per-token log-probs → PPO-clip loss → the gradient
//      w.r.t. the logits, written into a buffer the engine owns;
//   2. a strided source: a ggml tensor whose rows are padded (nb[1] > ne[0]·sizeof(float)),
//      read in place through an OuterStride map; the gradient written into padded rows too;
//   3. a column-major source (vocabulary-major: token n's logits are column n of a [V, N]
//      column-major array, as a BLAS GEMM may leave them): described as such by the Map type,
//      rlpo reads it through a row-major copy and gives the same result;
//   4. wrong layouts: a shape that does not match, a GradientOut whose stride is shorter than
//      its rows, and (at compile time) a column-major gradient destination.
// Exits 1 if any result differs from the row-major reference call or an error is not raised.
#include <rlpo/distill/divergences.hpp>
#include <rlpo/logits/token_logps.hpp>
#include <rlpo/policy/ppo_clip.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <random>
#include <vector>

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
    std::printf("  %-58s %s\n", what, ok ? "ok" : "FAILED");
    if (!ok) ++failures;
}

template <class F>
void expect_error(const char* what, F&& f) {
    try {
        f();
        std::printf("  %s: no error raised: FAILED\n", what);
        ++failures;
    } catch (const rlpo::invalid_argument& e) {
        std::printf("  %s:\n    %s\n", what, e.what());
    }
}

}  // namespace

int main() try {
    using rlpo::Index;
    // The engine's sizes: 2 sequences of 3 generated tokens, vocabulary 8.
    const Index B = 2, T = 3, N = B * T, V = 8;
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 2.0f);
    std::vector<float> logits(static_cast<std::size_t>(N * V));  // row-major [N, V]
    for (float& x : logits) x = normal(rng);
    std::vector<std::int32_t> tokens{3, 1, 7, 0, 5, 2};  // [B, T] sampled ids
    std::vector<float> mask{1, 1, 1, 1, 1, 0};           // [B, T]; the last token is padding
    std::vector<float> old_logp{-2.0f, -1.5f, -3.0f, -2.2f, -1.0f, 0.0f};
    std::vector<float> adv{0.7f, 0.7f, 0.7f, -0.7f, -0.7f, 0.0f};

    // 1. row-major buffers, read in place: rlpo::view(ptr, rows, cols) is an Eigen::Map.
    using IdsMap = Eigen::Map<
        const Eigen::Matrix<std::int32_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
    const auto z = rlpo::view(logits.data(), N, V);
    const IdsMap ids(tokens.data(), B, T);
    const auto m = rlpo::view(mask.data(), B, T);
    const auto fwd = rlpo::logits::token_logps(z, ids, m);  // logp [B, T]
    std::vector<float> grad_logp(static_cast<std::size_t>(B * T));
    const auto pg = rlpo::policy::ppo_clip(fwd.logp, rlpo::view(old_logp.data(), B, T),
                                           rlpo::view(adv.data(), B, T), m,
                                           rlpo::policy::PPOClipOptions::verl(), {},
                                           rlpo::write_to(rlpo::view(grad_logp.data(), B, T)));
    std::vector<float> grad_logits(logits.size());  // the engine's gradient buffer
    rlpo::logits::token_logps_backward(z, ids, m, fwd, rlpo::view(grad_logp.data(), B, T),
                                       rlpo::write_to(rlpo::view(grad_logits.data(), N, V)));
    std::printf("1. row-major: ppo_clip %.6f, d loss / d logits[0, 0..3] = %.5f %.5f %.5f %.5f\n",
                pg.value, static_cast<double>(grad_logits[0]), static_cast<double>(grad_logits[1]),
                static_cast<double>(grad_logits[2]), static_cast<double>(grad_logits[3]));

    // The distillation reference for 2 and 3: forward KL against a teacher, row-major.
    std::vector<float> teacher(logits.size());
    for (float& x : teacher) x = normal(rng);
    std::vector<float> g_ref(logits.size());
    const auto kl_ref = rlpo::distill::forward_kl(z, rlpo::view(teacher.data(), N, V), m, {}, {},
                                                  rlpo::write_to(rlpo::view(g_ref.data(), N, V)));

    // 2. padded rows (ggml: nb[1] = 12 floats for ne[0] = 8): an OuterStride map, no copy; the
    //    gradient goes into padded rows as well (GradientOut keeps the stride).
    const Index ld = 12;
    std::vector<float> teacher_padded(static_cast<std::size_t>(N * ld), -1e30f);
    std::vector<float> g_padded(static_cast<std::size_t>(N * ld), 0.0f);
    for (Index n = 0; n < N; ++n)
        for (Index v = 0; v < V; ++v)
            teacher_padded[static_cast<std::size_t>(n * ld + v)] =
                teacher[static_cast<std::size_t>(n * V + v)];
    using Strided = Eigen::Map<rlpo::Mat<float>, 0, Eigen::OuterStride<>>;
    using ConstStrided = Eigen::Map<const rlpo::Mat<float>, 0, Eigen::OuterStride<>>;
    const ConstStrided y_padded(teacher_padded.data(), N, V, Eigen::OuterStride<>(ld));
    Strided g_pad(g_padded.data(), N, V, Eigen::OuterStride<>(ld));
    const auto kl_pad = rlpo::distill::forward_kl(z, y_padded, m, {}, {}, rlpo::write_to(g_pad));
    double gdiff = 0.0;
    for (Index n = 0; n < N; ++n)
        for (Index v = 0; v < V; ++v)
            gdiff = std::max(
                gdiff, std::abs(static_cast<double>(g_pad(n, v)) -
                                static_cast<double>(g_ref[static_cast<std::size_t>(n * V + v)])));
    std::printf("2. strided (padded rows): forward_kl %.6f (row-major %.6f)\n", kl_pad.value,
                kl_ref.value);
    expect(kl_pad.value == kl_ref.value, "strided teacher: same value");
    expect(gdiff == 0.0, "strided gradient destination: same gradient");
    expect(g_padded[static_cast<std::size_t>(ld - 1)] == 0.0f, "row padding left untouched");

    // 3. column-major (vocabulary-major) student logits: say so with the Map type; rlpo reads
    //    it through a row-major copy (Eigen::Ref), with the same result.
    std::vector<float> z_colmajor(logits.size());
    for (Index n = 0; n < N; ++n)
        for (Index v = 0; v < V; ++v)
            z_colmajor[static_cast<std::size_t>(v * N + n)] =
                logits[static_cast<std::size_t>(n * V + v)];
    const Eigen::Map<const Eigen::MatrixXf> z_cm(z_colmajor.data(), N, V);
    std::vector<float> g_cm(logits.size());
    const auto kl_cm = rlpo::distill::forward_kl(z_cm, rlpo::view(teacher.data(), N, V), m, {}, {},
                                                 rlpo::write_to(rlpo::view(g_cm.data(), N, V)));
    std::printf("3. column-major source: forward_kl %.6f (row-major %.6f)\n", kl_cm.value,
                kl_ref.value);
    expect(kl_cm.value == kl_ref.value && g_cm == g_ref,
           "column-major source: same value and gradient");
    // (A raw pointer carries no layout: viewing z_colmajor with rlpo::view(ptr, N, V) would read
    // the transpose, and no library can tell. The Map type is where the layout is stated.)

    // 4. what rlpo says when a layout is wrong.
    std::printf("4. wrong layouts:\n");
    expect_error("mask given as [3, 2] instead of [B, T] = [2, 3]", [&] {
        (void)rlpo::policy::ppo_clip(fwd.logp, rlpo::view(old_logp.data(), B, T),
                                     rlpo::view(adv.data(), B, T), rlpo::view(mask.data(), T, B));
    });
    expect_error("logits rows (6) are not B*T of a [3, 3] mask", [&] {
        std::vector<float> m9(9, 1.0f);
        (void)rlpo::distill::forward_kl(z, rlpo::view(teacher.data(), N, V),
                                        rlpo::view(m9.data(), 3, 3));
    });
    expect_error("a GradientOut with stride 4 < cols 8 (rows overlap)", [&] {
        const rlpo::GradientOut<float> bad{rlpo::GradMode::Write, g_cm.data(), N, V, 4, 1.0};
        (void)rlpo::distill::forward_kl(z, rlpo::view(teacher.data(), N, V), m, {}, {}, bad);
    });
    // A column-major gradient destination does not compile, with one message:
    //   Eigen::MatrixXf g(N, V);  rlpo::write_to(g);
    //   error: static assertion failed: rlpo::write_to / rlpo::add_to: the gradient destination
    //   must be row-major with contiguous rows (...)
    // (tests/compile_fail/column_major_gradient.cpp checks it.)
    if (failures == 0)
        std::printf("all checks passed\n");
    else
        std::printf("%d check(s) FAILED\n", failures);
    return failures == 0 ? 0 : 1;
} catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
}
