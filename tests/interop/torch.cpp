// The LibTorch adapter (rlpo/interop/torch.hpp): the gradient that reaches `.grad` through
// rlpo's autograd wrappers equals LibTorch autograd of the same formula, written here with
// torch ops (independently of rlpo's kernels), for the policy loss (verl and TRL presets, by
// options and by name), the KL penalty (k1, k2, k3) and the distillation divergences (forward
// KL, reverse KL, JSD; float, double and bfloat16 logits); and every documented tensor error.
#include "support/catch.hpp"
#include "support/checks.hpp"

#include <rlpo/interop/torch.hpp>

#include <string>

namespace rl = rlpo::libtorch;

namespace {

at::Tensor rand_normal(std::initializer_list<int64_t> sizes, double scale, at::ScalarType dt) {
    return (at::randn(sizes, at::TensorOptions().dtype(at::kDouble)) * scale).to(dt);
}

/// 0/1 mask with every row keeping its first position (no empty sequence).
at::Tensor rand_mask(int64_t B, int64_t T, at::ScalarType dt) {
    at::Tensor m = (at::rand({B, T}, at::TensorOptions().dtype(at::kDouble)) > 0.3).to(dt);
    m.select(1, 0).fill_(1.0);
    return m;
}

double tol(at::ScalarType dt) { return dt == at::kDouble ? 1e-10 : 2e-5; }

/// Runs `rlpo_loss(x)` and `ref_loss(x)` (x a leaf that requires grad), back-propagates
/// 2.5 · loss through both, and compares values and x.grad.
template <class F, class G>
void same_value_and_grad(const at::Tensor& x0, F&& rlpo_loss, G&& ref_loss, double rtol) {
    at::Tensor x = x0.detach().clone().requires_grad_(true);
    at::Tensor y = x0.detach().clone().requires_grad_(true);
    at::Tensor a = rlpo_loss(x);
    at::Tensor b = ref_loss(y);
    REQUIRE(a.dim() == 0);
    CHECK(a.scalar_type() == (x0.scalar_type() == at::kBFloat16 ? at::kFloat : x0.scalar_type()));
    const double va = a.item<double>(), vb = b.item<double>();
    INFO("rlpo " << va << "  reference " << vb);
    CHECK(std::abs(va - vb) <= rtol * (1.0 + std::abs(vb)));
    (2.5 * a).backward();
    (2.5 * b).backward();
    REQUIRE(x.grad().defined());
    const at::Tensor ga = x.grad().to(at::kDouble), gb = y.grad().to(at::kDouble);
    const double err = (ga - gb).abs().max().item<double>();
    const double scale = 1.0 + gb.abs().max().item<double>();
    INFO("max |grad difference| " << err << " (max |grad| " << scale - 1.0 << ")");
    CHECK(err <= rtol * scale);
}

at::Tensor masked_token_mean(const at::Tensor& per_token, const at::Tensor& mask) {
    return (per_token * mask).sum() / mask.sum();
}

/// PPO clip from its definition (Schulman et al. 2017), dual clip as verl's
/// compute_policy_loss_vanilla.
at::Tensor ppo_reference(const at::Tensor& logp, const at::Tensor& old, const at::Tensor& adv,
                         const at::Tensor& mask, double eps, std::optional<double> dual) {
    const at::Tensor ratio = at::exp(logp - old);
    const at::Tensor unclipped = -adv * ratio;
    const at::Tensor clipped = -adv * at::clamp(ratio, 1.0 - eps, 1.0 + eps);
    at::Tensor per = at::maximum(unclipped, clipped);
    if (dual) per = at::where(adv < 0, at::minimum(per, -adv * *dual), per);
    return masked_token_mean(per, mask);
}

struct TokenBatch {
    at::Tensor logp, old, adv, ref, mask;
};

TokenBatch token_batch(at::ScalarType dt, int64_t B = 6, int64_t T = 9) {
    TokenBatch b;
    b.logp = -at::rand({B, T}, at::TensorOptions().dtype(at::kDouble)).mul(3.0).to(dt);
    b.old = (b.logp.to(at::kDouble) + rand_normal({B, T}, 0.4, at::kDouble)).to(dt);
    b.ref = (b.logp.to(at::kDouble) + rand_normal({B, T}, 0.5, at::kDouble)).to(dt);
    b.adv = rand_normal({B, T}, 1.0, dt);
    b.mask = rand_mask(B, T, dt);
    return b;
}

}  // namespace

TEST_CASE("libtorch: policy loss gradients equal LibTorch autograd of the formula",
          "[interop][torch][policy]") {
    at::manual_seed(1);
    for (at::ScalarType dt : {at::kFloat, at::kDouble}) {
        const TokenBatch b = token_batch(dt);
        SECTION(std::string("verl preset (dual clip 3), ") + c10::toString(dt)) {
            same_value_and_grad(
                b.logp,
                [&](const at::Tensor& x) {
                    return rl::ppo_clip(x, b.old, b.adv, b.mask,
                                        rlpo::policy::PPOClipOptions::verl());
                },
                [&](const at::Tensor& x) {
                    return ppo_reference(x, b.old, b.adv, b.mask, 0.2, 3.0);
                },
                tol(dt));
        }
        SECTION(std::string("trl preset (no dual clip), ") + c10::toString(dt)) {
            same_value_and_grad(
                b.logp,
                [&](const at::Tensor& x) {
                    return rl::ppo_clip(x, b.old, b.adv, b.mask,
                                        rlpo::policy::PPOClipOptions::trl());
                },
                [&](const at::Tensor& x) {
                    return ppo_reference(x, b.old, b.adv, b.mask, 0.2, std::nullopt);
                },
                tol(dt));
        }
        SECTION(std::string("by name: vanilla (verl) and the TRL anchor, ") + c10::toString(dt)) {
            same_value_and_grad(
                b.logp,
                [&](const at::Tensor& x) {
                    return rl::policy_loss("vanilla", x, b.old, b.adv, b.mask);
                },
                [&](const at::Tensor& x) {
                    return ppo_reference(x, b.old, b.adv, b.mask, 0.2, 3.0);
                },
                tol(dt));
            same_value_and_grad(
                b.logp,
                [&](const at::Tensor& x) {
                    return rl::policy_loss("vanilla", x, b.old, b.adv, b.mask,
                                           rlpo::policy::Anchor::TRL);
                },
                [&](const at::Tensor& x) {
                    return ppo_reference(x, b.old, b.adv, b.mask, 0.2, std::nullopt);
                },
                tol(dt));
        }
    }
}

TEST_CASE("libtorch: sequence-mean aggregation and metrics come through",
          "[interop][torch][policy]") {
    at::manual_seed(2);
    const TokenBatch b = token_batch(at::kDouble);
    rlpo::Normalizer norm;
    norm.mode = rlpo::Aggregation::SeqMeanTokenMean;
    rlpo::Metrics metrics;
    same_value_and_grad(
        b.logp,
        [&](const at::Tensor& x) {
            return rl::ppo_clip(x, b.old, b.adv, b.mask, rlpo::policy::PPOClipOptions::trl(), norm,
                                &metrics);
        },
        [&](const at::Tensor& x) {
            const at::Tensor ratio = at::exp(x - b.old);
            const at::Tensor per = at::maximum(-b.adv * ratio, -b.adv * at::clamp(ratio, 0.8, 1.2));
            return ((per * b.mask).sum(1) / b.mask.sum(1)).mean();
        },
        1e-10);
    // verl: the fraction of tokens whose clipped term is the larger one
    const at::Tensor ratio = at::exp(b.logp - b.old);
    const double clipfrac =
        masked_token_mean((-b.adv * at::clamp(ratio, 0.8, 1.2) > -b.adv * ratio).to(at::kDouble),
                          b.mask)
            .item<double>();
    CHECK(std::abs(metrics["pg_clipfrac"] - clipfrac) < 1e-12);
}

TEST_CASE("libtorch: KL penalty gradients equal LibTorch autograd of the estimators",
          "[interop][torch][kl]") {
    at::manual_seed(3);
    namespace pen = rlpo::penalties;
    for (at::ScalarType dt : {at::kFloat, at::kDouble}) {
        const TokenBatch b = token_batch(dt);
        // Schulman's estimators of KL(π‖π_ref) with r = π_ref/π: k1 = −log r, k2 = ½ (log r)²,
        // k3 = r − 1 − log r (the TRL preset: no clamps)
        SECTION(std::string("k1, k2, k3, ") + c10::toString(dt)) {
            for (auto e : {pen::KLEstimator::K1, pen::KLEstimator::K2, pen::KLEstimator::K3}) {
                same_value_and_grad(
                    b.logp,
                    [&](const at::Tensor& x) {
                        return rl::kl_penalty(x, b.ref, b.mask, pen::KLOptions::trl(e));
                    },
                    [&](const at::Tensor& x) {
                        const at::Tensor lr = b.ref - x;
                        const at::Tensor k = e == pen::KLEstimator::K1   ? -lr
                                             : e == pen::KLEstimator::K2 ? 0.5 * lr * lr
                                                                         : at::exp(lr) - 1.0 - lr;
                        return masked_token_mean(k, b.mask);
                    },
                    tol(dt));
            }
        }
    }
}

namespace {

at::Tensor rows_mean(const at::Tensor& per_row, const at::Tensor& row_mask) {
    return (per_row * row_mask).sum() / row_mask.sum();
}

/// Forward KL(p‖q), reverse KL(q‖p) and JSD_β (TRL generalized_jsd_loss) per row, from
/// log_softmax of the logits over τ.
at::Tensor divergence_reference(const std::string& kind, const at::Tensor& z, const at::Tensor& y,
                                double tau, double beta) {
    const at::Tensor lq = at::log_softmax(z / tau, 1), lp = at::log_softmax(y / tau, 1);
    const at::Tensor q = lq.exp(), p = lp.exp();
    if (kind == "forward_kl") return (p * (lp - lq)).sum(1);
    if (kind == "reverse_kl") return (q * (lq - lp)).sum(1);
    const at::Tensor lm = at::log(beta * p + (1.0 - beta) * q);
    return beta * (p * (lp - lm)).sum(1) + (1.0 - beta) * (q * (lq - lm)).sum(1);
}

}  // namespace

TEST_CASE("libtorch: distillation gradients equal LibTorch autograd of the divergences",
          "[interop][torch][distill]") {
    at::manual_seed(4);
    const int64_t B = 3, T = 4, V = 37;
    for (at::ScalarType dt : {at::kFloat, at::kDouble}) {
        const at::Tensor z = rand_normal({B * T, V}, 2.0, dt);
        const at::Tensor y = rand_normal({B * T, V}, 2.0, dt);
        const at::Tensor mask = rand_mask(B, T, dt);
        const at::Tensor row_mask = mask.reshape({B * T});
        for (const char* kind_name : {"forward_kl", "reverse_kl", "jsd"}) {
            const std::string kind = kind_name;
            for (double tau : {1.0, 2.0}) {
                DYNAMIC_SECTION(kind << ", tau " << tau << ", " << c10::toString(dt)) {
                    rlpo::distill::DistillOptions o;
                    o.temperature = tau;
                    o.beta = 0.3;
                    same_value_and_grad(
                        z,
                        [&](const at::Tensor& x) {
                            if (kind == "forward_kl") return rl::forward_kl(x, y, mask, o);
                            if (kind == "reverse_kl") return rl::reverse_kl(x, y, mask, o);
                            return rl::jsd(x, y, mask, o);
                        },
                        [&](const at::Tensor& x) {
                            return rows_mean(divergence_reference(kind, x, y, tau, 0.3), row_mask);
                        },
                        tol(dt));
                }
            }
        }
        SECTION(std::string("no mask: every row, token-mean, ") + c10::toString(dt)) {
            rlpo::distill::DistillOptions o;
            o.divergence = rlpo::distill::Divergence::ReverseKL;
            same_value_and_grad(
                z, [&](const at::Tensor& x) { return rl::divergence(x, y, {}, o); },
                [&](const at::Tensor& x) {
                    return divergence_reference("reverse_kl", x, y, 1.0, 0.0).mean();
                },
                tol(dt));
        }
    }
    SECTION("bfloat16 logits (float32 mask): the float formula of the rounded logits") {
        const at::Tensor z = rand_normal({B * T, V}, 2.0, at::kBFloat16);
        const at::Tensor y = rand_normal({B * T, V}, 2.0, at::kBFloat16);
        const at::Tensor mask = rand_mask(B, T, at::kFloat);
        same_value_and_grad(
            z, [&](const at::Tensor& x) { return rl::forward_kl(x, y, mask); },
            [&](const at::Tensor& x) {
                const at::Tensor per =
                    divergence_reference("forward_kl", x.to(at::kFloat), y.to(at::kFloat), 1.0, 0);
                return rows_mean(per, mask.reshape({B * T}));
            },
            // the gradient is stored in bfloat16 (8 significant bits) on both sides
            1e-2);
    }
}

TEST_CASE("libtorch: no gradient asked, no gradient computed; views read in place",
          "[interop][torch]") {
    at::manual_seed(5);
    const TokenBatch b = token_batch(at::kFloat);
    const at::Tensor loss = rl::ppo_clip(b.logp, b.old, b.adv, b.mask);
    CHECK_FALSE(loss.requires_grad());
    CHECK(std::abs(loss.item<double>() -
                   ppo_reference(b.logp, b.old, b.adv, b.mask, 0.2, std::nullopt).item<double>()) <
          1e-5);
    const auto v = rl::view<float>(b.logp, "logp");
    CHECK(v.data() == b.logp.data_ptr<float>());
    CHECK(v.rows() == 6);
    CHECK(v.cols() == 9);
    // a gradient written straight into a tensor (no autograd): the training-step route
    at::Tensor g = at::zeros_like(b.logp);
    const auto r = rlpo::policy::ppo_clip(v, rl::view<float>(b.old), rl::view<float>(b.adv),
                                          rl::view<float>(b.mask), {}, {}, rl::grad_out<float>(g));
    CHECK(r.grad.size() == 0);
    at::Tensor x = b.logp.clone().requires_grad_(true);
    rl::ppo_clip(x, b.old, b.adv, b.mask).backward();
    CHECK(at::allclose(g, x.grad()));
}

TEST_CASE("libtorch: tensor errors name the argument and what is wrong", "[interop][torch][bad]") {
    at::manual_seed(6);
    const TokenBatch b = token_batch(at::kFloat, 4, 4);
    // device: no CUDA here; a meta tensor takes the same path (not host memory)
    const at::Tensor meta =
        at::empty({4, 4}, at::TensorOptions().dtype(at::kFloat).device(at::kMeta));
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rl::ppo_clip(b.logp, meta, b.adv, b.mask),
                                    "libtorch::ppo_clip(): old_logp: expected a CPU tensor, given "
                                    "one on meta");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rl::view<float>(meta, "x"), "x: expected a CPU tensor");
    // non-contiguous (a transpose): named, with its strides
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rl::ppo_clip(b.logp, b.old, b.adv.t(), b.mask),
                                    "advantages: must be contiguous");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rl::kl_penalty(b.logp.index({at::indexing::Slice(), at::indexing::Slice(0, 4, 2)}),
                       b.ref.index({at::indexing::Slice(), at::indexing::Slice(0, 2)}),
                       b.mask.index({at::indexing::Slice(), at::indexing::Slice(0, 2)})),
        "logp: must be contiguous");
    // dtype: a mixed call, an integer tensor, bf16 token data, a bf16 mask for bf16 logits
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rl::ppo_clip(b.logp, b.old.to(at::kDouble), b.adv, b.mask),
                                    "old_logp: expected dtype Float (the dtype of logp), given "
                                    "Double");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rl::kl_penalty(b.logp.to(at::kInt), b.ref, b.mask),
        "libtorch::kl_penalty(): logp: expected dtype Float or Double, given Int");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rl::kl_penalty(b.logp.to(at::kBFloat16), b.ref, b.mask),
                                    "logp: expected dtype Float or Double, given BFloat16");
    const at::Tensor zb = rand_normal({4, 5}, 1.0, at::kBFloat16);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rl::forward_kl(zb, zb, at::ones({4}, at::kBFloat16)),
                                    "mask: expected dtype Float, given BFloat16");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rl::forward_kl(zb, zb.to(at::kFloat)),
                                    "teacher_logits: expected dtype BFloat16 (the dtype of "
                                    "student_logits), given Float");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rl::divergence(zb.to(at::kHalf), zb),
                                    "student_logits: expected dtype Float, Double or BFloat16");
    // rank
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rl::ppo_clip(b.logp.reshape({2, 2, 4}), b.old, b.adv, b.mask),
                                    "logp: expected a 2-D tensor, given 3-D [2, 2, 4]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rl::ppo_clip(b.logp, b.old, b.adv, b.mask.reshape({16})),
                                    "mask: expected a 2-D tensor, given 1-D");
    // shape: rlpo's own check
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rl::ppo_clip(b.logp, b.old.index({at::indexing::Slice(0, 3)}), b.adv, b.mask),
        "old_logp: expected shape [4, 4]");
    // undefined tensors, unknown names, invalid options
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rl::ppo_clip(b.logp, at::Tensor(), b.adv, b.mask),
                                    "old_logp: undefined tensor");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rl::policy_loss("no_such_loss", b.logp, b.old, b.adv, b.mask),
                                    "no_such_loss");
    rlpo::policy::PPOClipOptions bad;
    bad.clip_low = -0.1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rl::ppo_clip(b.logp, b.old, b.adv, b.mask, bad), "clip_low");
    // a std::invalid_argument for callers that catch the standard type
    CHECK_THROWS_AS(rl::ppo_clip(b.logp, meta, b.adv, b.mask), std::invalid_argument);
}
