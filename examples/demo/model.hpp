#pragma once
// A tiny autoregressive policy written with Eigen: token, prompt and position embeddings, one
// tanh hidden layer, a softmax head; manual back-propagation; Adam. Everything row-major so
// that the logits and log-probs are handed to rlpo without a copy.
#include <rlpo/core/types.hpp>

#include <Eigen/Core>

#include <array>
#include <cmath>
#include <random>
#include <vector>

namespace demo {

using RM = rlpo::Mat<float>;
using rlpo::Index;

/// One context row: the prompt (a, b), the previous token and the position.
struct Context {
    int a, b, prev, pos;
};

/// MLP over the concatenated embeddings [E_a[a] | E_b[b] | E_ab[10a + b] | E_prev[prev] | E_pos[pos]].
class Net {
public:
    enum { Ea, Eb, Epair, Eprev, Epos, W1, B1, W2, B2, kParams };

    Net() = default;
    Net(int n_digits, int n_prev, int n_pos, int dim, int hidden, int out, std::mt19937_64& rng) {
        const int in = 5 * dim;
        auto init = [&](Index r, Index c, float scale) {
            std::normal_distribution<float> nd(0.0f, scale);
            RM m(r, c);
            for (Index k = 0; k < m.size(); ++k) m.data()[k] = nd(rng);
            return m;
        };
        p_[Ea] = init(n_digits, dim, 1.0f);
        p_[Eb] = init(n_digits, dim, 1.0f);
        p_[Epair] = init(n_digits * n_digits, dim, 1.0f);
        p_[Eprev] = init(n_prev, dim, 1.0f);
        p_[Epos] = init(n_pos, dim, 1.0f);
        p_[W1] = init(in, hidden, 1.0f / std::sqrt(static_cast<float>(in)));
        p_[B1] = RM::Zero(1, hidden);
        p_[W2] = init(hidden, out, 0.1f / std::sqrt(static_cast<float>(hidden)));
        p_[B2] = RM::Zero(1, out);
    }

    /// Forward over contexts; keeps the activations for `backward`. Returns [rows, out].
    const RM& forward(const std::vector<Context>& ctx) {
        const Index n = static_cast<Index>(ctx.size()), d = p_[Ea].cols();
        x_.resize(n, 5 * d);
        for (Index r = 0; r < n; ++r) {
            const Context& c = ctx[static_cast<std::size_t>(r)];
            x_.row(r).segment(0, d) = p_[Ea].row(c.a);
            x_.row(r).segment(d, d) = p_[Eb].row(c.b);
            x_.row(r).segment(2 * d, d) = p_[Epair].row(c.a * 10 + c.b);
            x_.row(r).segment(3 * d, d) = p_[Eprev].row(c.prev);
            x_.row(r).segment(4 * d, d) = p_[Epos].row(c.pos);
        }
        h_.noalias() = x_ * p_[W1];
        h_.rowwise() += p_[B1].row(0);
        h_ = h_.array().tanh();
        out_.noalias() = h_ * p_[W2];
        out_.rowwise() += p_[B2].row(0);
        ctx_ = ctx;
        return out_;
    }

    /// Back-propagate dL/d(out) of the last forward; accumulates into `grads`.
    void backward(const RM& d_out, std::array<RM, kParams>& grads) const {
        const Index d = p_[Ea].cols();
        grads[W2].noalias() += h_.transpose() * d_out;
        grads[B2] += d_out.colwise().sum();
        RM dh = d_out * p_[W2].transpose();
        dh.array() *= (1.0f - h_.array().square());
        grads[W1].noalias() += x_.transpose() * dh;
        grads[B1] += dh.colwise().sum();
        const RM dx = dh * p_[W1].transpose();
        for (Index r = 0; r < dx.rows(); ++r) {
            const Context& c = ctx_[static_cast<std::size_t>(r)];
            grads[Ea].row(c.a) += dx.row(r).segment(0, d);
            grads[Eb].row(c.b) += dx.row(r).segment(d, d);
            grads[Epair].row(c.a * 10 + c.b) += dx.row(r).segment(2 * d, d);
            grads[Eprev].row(c.prev) += dx.row(r).segment(3 * d, d);
            grads[Epos].row(c.pos) += dx.row(r).segment(4 * d, d);
        }
    }

    std::array<RM, kParams> zeros() const {
        std::array<RM, kParams> g;
        for (int k = 0; k < kParams; ++k) g[k] = RM::Zero(p_[k].rows(), p_[k].cols());
        return g;
    }
    std::array<RM, kParams>& params() { return p_; }

private:
    std::array<RM, kParams> p_;
    RM x_, h_, out_;
    std::vector<Context> ctx_;
};

/// Adam with global-norm gradient clipping (as verl's actor: grad_clip 1.0).
class Adam {
public:
    Adam(const Net& net, float lr, float clip = 1.0f)
        : lr_(lr), clip_(clip), m_(net.zeros()), v_(net.zeros()) {}
    void step(Net& net, std::array<RM, Net::kParams>& g) {
        double norm2 = 0.0;
        for (const auto& x : g) norm2 += static_cast<double>(x.squaredNorm());
        const float scale = norm2 > static_cast<double>(clip_) * clip_
                                ? clip_ / static_cast<float>(std::sqrt(norm2))
                                : 1.0f;
        ++t_;
        const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
        const float c1 = 1.0f - std::pow(b1, static_cast<float>(t_));
        const float c2 = 1.0f - std::pow(b2, static_cast<float>(t_));
        for (int k = 0; k < Net::kParams; ++k) {
            const RM gk = g[k] * scale;
            m_[k] = b1 * m_[k] + (1 - b1) * gk;
            v_[k] = b2 * v_[k] + (1 - b2) * gk.cwiseProduct(gk);
            net.params()[k].array() -=
                lr_ * (m_[k].array() / c1) / ((v_[k].array() / c2).sqrt() + eps);
        }
    }

private:
    float lr_, clip_;
    long t_ = 0;
    std::array<RM, Net::kParams> m_, v_;
};

}  // namespace demo
