#pragma once
// Data-parallel scenarios shared by the simulated-ranks test (tests/dist/simulated.cpp, threads
// in one process) and the MPI test (tests/mpi/dist_mpi.cpp, under mpirun). Every rank builds the
// same global batch from a fixed seed, takes its shard (whole groups, uneven blocks, rank 1's
// rows without a valid token, rank 2 without rows when there are four ranks), calls the
// function with the reductions, and compares with one call on the whole batch made on the same
// rank (the reference): values, the gradient of the rank's rows and the metrics, 1e-12
// relative in double (float: 1e-5). Failures are returned as messages, so the caller decides
// how to report them (Catch2 or the exit code of an MPI rank).
#include <rlpo/dist/dist.hpp>
#include <rlpo/rlpo.hpp>
#include <rlpo/testing/random.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

namespace dist_test {

using rlpo::Index;
using rlpo::Mat;
using rlpo::Vec;

struct Report {
    std::vector<std::string> failures;
    int checks = 0;
    template <class... P>
    void fail(const P&... parts) {
        std::ostringstream os;
        (os << ... << parts);
        failures.push_back(os.str());
    }
};

// |a − b| ≤ tol · max(scale, |b|): `scale` is the size of the quantity compared (the largest
// entry of a whole-batch array), so entries that cancel to ~0 are judged on the array's scale.
inline void close(Report& rep, const std::string& what, double a, double b, double tol,
                  double scale = 0.0) {
    ++rep.checks;
    const double s = std::max({std::abs(b), scale, 1e-300});
    if (!(std::abs(a - b) <= tol * s))
        rep.fail(what, ": ", a, " vs whole batch ", b, " (rel. error ", std::abs(a - b) / s, ")");
}

template <class A, class B>
void close_rows(Report& rep, const std::string& what, const A& shard, const B& whole, Index row0,
                double tol) {
    ++rep.checks;
    if (shard.rows() + row0 > whole.rows() || (shard.rows() > 0 && shard.cols() != whole.cols())) {
        rep.fail(what, ": shape [", shard.rows(), ", ", shard.cols(), "] at row ", row0,
                 " does not fit the whole batch [", whole.rows(), ", ", whole.cols(), "]");
        return;
    }
    double scale = 0.0;
    for (Index k = 0; k < whole.size(); ++k)
        scale = std::max(scale, std::abs(static_cast<double>(whole.data()[k])));
    for (Index i = 0; i < shard.rows(); ++i)
        for (Index t = 0; t < shard.cols(); ++t) {
            const double a = static_cast<double>(shard(i, t)),
                         b = static_cast<double>(whole(row0 + i, t));
            if (!(std::abs(a - b) <= tol * std::max({std::abs(b), scale, 1e-300}))) {
                rep.fail(what, ": entry [", row0 + i, ", ", t, "]: ", a, " vs whole batch ", b);
                return;
            }
        }
}

inline void close_metrics(Report& rep, const std::string& what, const rlpo::Metrics& shard,
                          const rlpo::Metrics& whole, double tol) {
    ++rep.checks;
    if (shard.size() != whole.size()) {
        rep.fail(what, ": ", shard.size(), " metrics vs ", whole.size(), " for the whole batch");
        return;
    }
    for (const auto& e : whole) {
        if (!shard.contains(e.first)) {
            rep.fail(what, ": metric ", e.first, " missing");
            continue;
        }
        close(rep, what + " metric " + e.first, shard[e.first], e.second.value(), tol);
        close(rep, what + " count of " + e.first, shard.at(e.first).count, e.second.count, tol);
    }
}

// The global batch and this rank's block of it.
struct Batch {
    Index B = 0, T = 12;
    std::vector<Index> group_of;    // group id per response (ids 100 + g)
    std::vector<Index> group_size;  // per group
    Vec<double> scores, lengths;
    Mat<double> logp, old_logp, ref_logp, adv, mask, rewards, values, old_values;
    // shard
    Index row0 = 0, rows = 0;
    std::vector<Index> ids() const {
        return {group_of.begin() + row0, group_of.begin() + row0 + rows};
    }
    template <class M>
    auto block(const M& m) const {
        return m.middleRows(row0, rows);
    }
};

// Groups of 1..6 responses (group 1 a singleton, group 2 all equal), split over P ranks in
// uneven blocks of whole groups; the rows of rank 1 carry no valid token, rank 2 of four holds
// no rows at all.
inline Batch make_batch(int rank, int P, std::uint64_t seed = 1234) {
    rlpo::testing::Generator gen(seed);
    Batch b;
    const Index G = 23;
    for (Index g = 0; g < G; ++g) {
        Index n = gen.integer(2, 6);
        if (g == 1) n = 1;
        b.group_size.push_back(n);
        for (Index k = 0; k < n; ++k) b.group_of.push_back(100 + g);
    }
    b.B = static_cast<Index>(b.group_of.size());
    const Index B = b.B, T = b.T;
    b.scores.resize(B);
    for (Index i = 0; i < B; ++i)
        b.scores(i) = b.group_of[static_cast<std::size_t>(i)] == 102 ? 0.7 : gen.normal();
    b.lengths.resize(B);
    b.logp = gen.normal(B, T, 0.3, -1.0);
    b.old_logp = b.logp + gen.normal(B, T, 0.05);
    b.ref_logp = b.logp + gen.normal(B, T, 0.1);
    b.rewards = gen.normal(B, T, 0.5);
    b.values = gen.normal(B, T, 0.5);
    b.old_values = b.values + gen.normal(B, T, 0.1);
    b.mask = gen.mask<double>(B, T, 1, true);
    // group boundaries → rank blocks: cut after group ⌊G·w_r⌋ with uneven weights
    std::vector<Index> group_begin{0};
    for (Index n : b.group_size) group_begin.push_back(group_begin.back() + n);
    std::vector<Index> cuts{0};
    double wsum = 0.0;
    std::vector<double> w;
    for (int r = 0; r < P; ++r)
        w.push_back(P == 4 && r == 2 ? 0.0 : 1.0 + 0.7 * r), wsum += w.back();
    double acc = 0.0;
    for (int r = 0; r < P; ++r) {
        acc += w[static_cast<std::size_t>(r)];
        cuts.push_back(r == P - 1 ? G : static_cast<Index>(std::floor(G * acc / wsum)));
    }
    b.row0 = group_begin[static_cast<std::size_t>(cuts[static_cast<std::size_t>(rank)])];
    b.rows =
        group_begin[static_cast<std::size_t>(cuts[static_cast<std::size_t>(rank) + 1])] - b.row0;
    if (P >= 2) {  // rank 1: rows without a valid token
        const Index r1 = group_begin[static_cast<std::size_t>(cuts[1])],
                    e1 = group_begin[static_cast<std::size_t>(cuts[2])];
        b.mask.middleRows(r1, e1 - r1).setZero();
    }
    for (Index i = 0; i < B; ++i) b.lengths(i) = b.mask.row(i).sum();
    // token advantages: ties on purpose (KL-Cov's top-k): a constant per row, and equal
    // log-probs at a few positions
    b.adv.resize(B, T);
    for (Index i = 0; i < B; ++i) b.adv.row(i).setConstant(std::round(gen.normal() * 2) / 2);
    for (Index i = 0; i < B; i += 3) b.logp(i, 0) = b.logp(i, 1) = -0.5;
    return b;
}

inline const char* mode_name(rlpo::Aggregation a) { return rlpo::to_string(a); }

// Every scenario, on this rank.
inline Report run_all(const rlpo::dist::Reductions& red) {
    namespace rd = rlpo::dist;
    namespace rr = rlpo::rollout;
    Report rep;
    const int P = red.size(), rank = red.rank();
    const Batch b = make_batch(rank, P);
    const double tol = 1e-12;
    const std::string at = "rank " + std::to_string(rank) + "/" + std::to_string(P) + ": ";
    const Mat<double> mask = b.block(b.mask), lp = b.block(b.logp), olp = b.block(b.old_logp),
                      A = b.block(b.adv);
    const std::vector<Index> ids = b.ids();

    // 1. normaliser counts and a token-level objective, every aggregation mode (+ verl's)
    const rlpo::Aggregation modes[] = {rlpo::Aggregation::TokenMean, rlpo::Aggregation::TokenSum,
                                       rlpo::Aggregation::SeqMeanTokenSum,
                                       rlpo::Aggregation::SeqMeanTokenMean,
                                       rlpo::Aggregation::SeqMeanTokenSumNorm};
    for (auto mode : modes)
        for (int verl = 0; verl < 2; ++verl) {
            const std::string what = at + "ppo_clip " + mode_name(mode) + (verl ? " (verl)" : "");
            rlpo::Normalizer base = verl ? rlpo::Normalizer::verl(mode) : rlpo::Normalizer{};
            base.mode = mode;
            const rlpo::Normalizer nd = rd::with_global_counts(base, mask, red);
            rlpo::Normalizer nw = base;
            const rlpo::Normalizer g = rlpo::global_normalizer(b.mask, mode);
            nw.num_tokens = g.num_tokens;
            nw.num_seqs = g.num_seqs;
            close(rep, what + " num_tokens", *nd.num_tokens, *nw.num_tokens, 0.0);
            close(rep, what + " num_seqs", *nd.num_seqs, *nw.num_seqs, 0.0);
            const auto opts = rlpo::policy::PPOClipOptions::verl();
            auto rs = rlpo::policy::ppo_clip(lp, olp, A, mask, opts, nd);
            rd::reduce(rs, red);
            const auto rw = rlpo::policy::ppo_clip(b.logp, b.old_logp, b.adv, b.mask, opts, nw);
            close(rep, what + " value", rs.value, rw.value, tol);
            close_rows(rep, what + " grad", rs.grad, rw.grad, b.row0, tol);
            close_metrics(rep, what, rs.metrics, rw.metrics, tol);
        }
    {  // float: within float rounding
        const rlpo::Normalizer nd = rd::global_normalizer(mask, rlpo::Aggregation::TokenMean, red);
        const Mat<float> lpf = lp.cast<float>(), olpf = olp.cast<float>(), Af = A.cast<float>(),
                         mf = mask.cast<float>();
        auto rs = rlpo::policy::ppo_clip(lpf, olpf, Af, mf, {}, nd);
        rd::reduce(rs, red);
        const auto rw =
            rlpo::policy::ppo_clip(b.logp.cast<float>().eval(), b.old_logp.cast<float>().eval(),
                                   b.adv.cast<float>().eval(), b.mask.cast<float>().eval(), {},
                                   rlpo::global_normalizer(b.mask, rlpo::Aggregation::TokenMean));
        close(rep, at + "ppo_clip float value", rs.value, rw.value, 1e-5);
        close_rows(rep, at + "ppo_clip float grad", rs.grad, rw.grad, b.row0, 1e-5);
        close_metrics(rep, at + "ppo_clip float", rs.metrics, rw.metrics, 1e-5);
    }

    // 2. group estimators (whole groups per rank)
    const rr::Groups gw = rr::Groups::from_ids(b.group_of);
    const Vec<double> sc = b.block(b.scores);
    {
        const rr::GRPOOptions variants[] = {
            rr::GRPOOptions{}, rr::GRPOOptions::verl(), rr::GRPOOptions::dler(),
            rr::GRPOOptions::trl(rr::AdvantageScale::Batch), rr::GRPOOptions::dr_grpo()};
        int k = 0;
        for (const auto& o : variants) {
            const Vec<double> as = rd::grpo_advantages(sc, ids, o, red);
            const Vec<double> aw = rr::grpo_advantages(b.scores, gw, o);
            close_rows(rep, at + "grpo_advantages variant " + std::to_string(k++), as, aw, b.row0,
                       tol);
        }
        {  // GDPO: three reward components, batch normalisation over the ranks
            rlpo::testing::Generator g2(5);
            const Mat<double> R = g2.normal(b.B, 3, 1.0);
            for (const auto& o : {rr::GDPOOptions{}, rr::GDPOOptions::trl()})
                close_rows(rep, at + "gdpo_advantages",
                           rd::gdpo_advantages(b.block(R), ids, o, red),
                           rr::gdpo_advantages(R, gw, o), b.row0, tol);
        }
        close_rows(rep, at + "rloo_advantages", rd::rloo_advantages(sc, ids, {}, red),
                   rr::rloo_advantages(b.scores, gw), b.row0, tol);
        close_rows(rep, at + "opo_advantages",
                   rd::opo_advantages(sc, b.block(b.lengths), ids, {}, red),
                   rr::opo_advantages(b.scores, b.lengths, gw), b.row0, tol);
        close_rows(rep, at + "reinforce_pp_baseline_advantages",
                   rd::reinforce_pp_baseline_advantages(sc, ids, mask, {}, red),
                   rr::reinforce_pp_baseline_advantages(b.scores, gw, b.mask), b.row0, tol);
        const auto ds = rd::dynamic_sampling_filter(sc, ids, {}, red);
        const auto dw = rr::dynamic_sampling_filter(b.scores, gw);
        close(rep, at + "dynamic sampling kept groups", ds.kept_groups,
              static_cast<double>(dw.kept_groups.size()), 0.0);
        close(rep, at + "dynamic sampling dropped groups", ds.dropped_groups,
              static_cast<double>(dw.num_dropped_groups), 0.0);
        close(rep, at + "dynamic sampling kept responses", ds.kept_responses,
              static_cast<double>(dw.kept_responses.size()), 0.0);
    }

    // 3. whitening, REINFORCE++, GAE (global mean / variance over the masked tokens)
    for (int flavour = 0; flavour < 2; ++flavour) {
        const auto wo = flavour ? rr::WhitenOptions::openrlhf() : rr::WhitenOptions::verl();
        const std::string f = flavour ? " (openrlhf)" : " (verl)";
        close_rows(rep, at + "whiten" + f, rr::whiten(b.block(b.rewards), mask, wo, red),
                   rr::whiten(b.rewards, b.mask, wo), b.row0, tol);
        rr::ReinforcePPOptions po;
        po.gamma = 0.97;
        po.whitening = wo;
        const auto ps = rr::reinforce_pp_advantages(b.block(b.rewards), mask, po, red);
        const auto pw = rr::reinforce_pp_advantages(b.rewards, b.mask, po);
        close_rows(rep, at + "reinforce_pp advantages" + f, ps.advantages, pw.advantages, b.row0,
                   tol);
        close_rows(rep, at + "reinforce_pp returns" + f, ps.returns, pw.returns, b.row0, tol);
        rr::GAEOptions go = flavour ? rr::GAEOptions::openrlhf() : rr::GAEOptions::ppo_paper();
        const auto gs = rr::gae_advantages(b.block(b.rewards), b.block(b.values), mask, go, red);
        const auto gw2 = rr::gae_advantages(b.rewards, b.values, b.mask, go);
        close_rows(rep, at + "gae advantages" + f, gs.advantages, gw2.advantages, b.row0, tol);
        close_rows(rep, at + "gae returns" + f, gs.returns, gw2.returns, b.row0, tol);
    }

    // 4. KL-Cov and Clip-Cov: the selection over the whole batch (ties included; the second
    // pass quantises logp and the advantages so that most covariances tie across ranks and
    // only the global position breaks them)
    for (int tied = 0; tied < 2; ++tied)
        for (double ratio : {0.02, 0.2, 0.45, 1.0}) {
            const std::string r = " ratio " + std::to_string(ratio) + (tied ? " tied" : "");
            Mat<double> lpw = b.logp, Aw = b.adv;
            if (tied) {
                lpw = (b.logp.array() > -1.0)
                          .select(Mat<double>::Constant(b.B, b.T, -0.5),
                                  Mat<double>::Constant(b.B, b.T, -1.5));
                Aw = (b.adv.array() > 0.0)
                         .select(Mat<double>::Constant(b.B, b.T, 1.0),
                                 Mat<double>::Constant(b.B, b.T, -1.0));
            }
            const Mat<double> lp = b.block(lpw), A = b.block(Aw);
            const rlpo::Normalizer nd =
                rd::global_normalizer(mask, rlpo::Aggregation::TokenMean, red);
            const rlpo::Normalizer nw =
                rlpo::global_normalizer(b.mask, rlpo::Aggregation::TokenMean);
            rlpo::policy::KLCovOptions ko;
            ko.ratio = ratio;
            auto ks = rlpo::policy::kl_cov(lp, olp, A, mask, ko, nd, {}, std::nullopt, red);
            rd::reduce(ks, red);
            const auto kw = rlpo::policy::kl_cov(lpw, b.old_logp, Aw, b.mask, ko, nw);
            close(rep, at + "kl_cov value" + r, ks.value, kw.value, tol);
            close_rows(rep, at + "kl_cov grad" + r, ks.grad, kw.grad, b.row0, tol);
            close_metrics(rep, at + "kl_cov" + r, ks.metrics, kw.metrics, tol);
            rlpo::policy::ClipCovOptions co;
            co.ratio = ratio;
            co.cov_lb = -0.5;
            co.cov_ub = 0.5;
            co.seed = 7;
            const Mat<double> sel_s = rlpo::policy::clip_cov_selection(lp, olp, A, mask, co, red);
            const Mat<double> sel_w =
                rlpo::policy::clip_cov_selection(lpw, b.old_logp, Aw, b.mask, co);
            close_rows(rep, at + "clip_cov selection" + r, sel_s, sel_w, b.row0, 0.0);
            auto cs = rlpo::policy::clip_cov(lp, olp, A, mask, co, nd, {}, std::nullopt, red);
            rd::reduce(cs, red);
            const auto cw = rlpo::policy::clip_cov(lpw, b.old_logp, Aw, b.mask, co, nw);
            close(rep, at + "clip_cov value" + r, cs.value, cw.value, tol);
            close_rows(rep, at + "clip_cov grad" + r, cs.grad, cw.grad, b.row0, tol);
            close_metrics(rep, at + "clip_cov" + r, cs.metrics, cw.metrics, tol);
        }

    // 5. KTO: examples and KL completions spread unevenly over the ranks
    {
        rlpo::testing::Generator gen(99);
        const Index nc = 13, nr = 9, nk = 11;
        const Vec<double> pc = gen.normal(nc, 1, 3.0, -20.0), rc = pc + gen.normal(nc, 1, 0.5),
                          pr = gen.normal(nr, 1, 3.0, -20.0), rrj = pr + gen.normal(nr, 1, 0.5),
                          pk = gen.normal(nk, 1, 3.0, -20.0),
                          rk = (pk + gen.normal(nk, 1, 0.7)).array() - 0.3;
        // rank r takes [lo, hi) of each side: rank 1 none of the chosen, the last rank all the
        // remaining
        const auto part = [&](Index n, int side) {
            std::vector<Index> cut{0};
            for (int q = 0; q < P; ++q) {
                Index take = (n * (q + 1 + side)) / (P + side + 1) - cut.back();
                if (q == 1 && side == 0) take = 0;
                if (q == P - 1) take = n - cut.back();
                cut.push_back(cut.back() + std::max<Index>(take, 0));
            }
            return std::pair<Index, Index>{
                cut[static_cast<std::size_t>(rank)],
                cut[static_cast<std::size_t>(rank) + 1] - cut[static_cast<std::size_t>(rank)]};
        };
        const auto [c0, cn] = part(nc, 0);
        const auto [r0, rn] = part(nr, 1);
        const auto [k0, kn] = part(nk, 2);
        const auto kl =
            rlpo::preference::KLBaseline::from_logps(pk.segment(k0, kn), rk.segment(k0, kn));
        const auto ks = rd::kto_loss(pc.segment(c0, cn), pr.segment(r0, rn), rc.segment(c0, cn),
                                     rrj.segment(r0, rn), kl, {}, red);
        const auto kw = rlpo::preference::kto_loss(
            pc, pr, rc, rrj, rlpo::preference::KLBaseline::from_logps(pk, rk));
        close(rep, at + "kto value", ks.value, kw.value, tol);
        Mat<double> gs(1, cn + rn), gw(1, cn + rn);
        gs = ks.grad;
        gw << kw.grad.block(0, c0, 1, cn), kw.grad.block(0, nc + r0, 1, rn);
        close_rows(rep, at + "kto grad", gs, gw, 0, tol);
        close_metrics(rep, at + "kto", ks.metrics, kw.metrics, tol);
    }

    // 6. the training step: PPO clip + KL loss + value loss, every aggregation mode
    for (auto mode : modes) {
        const std::string sm = std::string(" ") + mode_name(mode);
        rlpo::train::StepOptions o;
        o.kl = rlpo::penalties::KLOptions{};
        o.value_coef = 0.5;
        o.norm.mode = mode;
        rlpo::train::StepOptions ow = o;
        o.norm = rd::with_global_counts(o.norm, mask, red);
        const rlpo::Normalizer g = rlpo::global_normalizer(b.mask, ow.norm.mode);
        ow.norm.num_tokens = g.num_tokens;
        ow.norm.num_seqs = g.num_seqs;
        const Mat<double> rets = b.block(b.rewards), vals = b.block(b.values),
                          ovals = b.block(b.old_values), ref = b.block(b.ref_logp);
        rlpo::train::StepInputs<double> in;
        in.logp = lp;
        in.mask = mask;
        in.advantages = A;
        in.old_logp = olp;
        in.ref_logp = ref;
        in.values = vals;
        in.old_values = ovals;
        in.returns = rets;
        auto ss = rlpo::train::TrainingStep<double>(o)(in);
        rd::reduce(ss, red);
        rlpo::train::StepInputs<double> iw;
        iw.logp = b.logp;
        iw.mask = b.mask;
        iw.advantages = b.adv;
        iw.old_logp = b.old_logp;
        iw.ref_logp = b.ref_logp;
        iw.values = b.values;
        iw.old_values = b.old_values;
        iw.returns = b.rewards;
        const auto sw = rlpo::train::TrainingStep<double>(ow)(iw);
        close(rep, at + "step loss" + sm, ss.loss, sw.loss, tol);
        close(rep, at + "step pg_loss" + sm, ss.pg_loss, sw.pg_loss, tol);
        close(rep, at + "step kl_loss" + sm, ss.kl_loss, sw.kl_loss, tol);
        close(rep, at + "step vf_loss" + sm, ss.vf_loss, sw.vf_loss, tol);
        close_rows(rep, at + "step grad_logp" + sm, ss.grad_logp, sw.grad_logp, b.row0, tol);
        close_rows(rep, at + "step grad_values" + sm, ss.grad_values, sw.grad_values, b.row0, tol);
        close_metrics(rep, at + "step" + sm, ss.metrics, sw.metrics, tol);
    }

    // 7. the training step with a batch-level selection (KL-Cov, Clip-Cov): given the
    // reductions, the step selects over every rank's rows
    for (const char* name : {"kl_cov", "clip_cov"}) {
        const std::string sn = std::string(" ") + name;
        rlpo::train::StepOptions o;
        o.policy = rlpo::policy::make_policy_loss(name);
        o.policy.kl_cov.ratio = 0.2;
        o.policy.clip_cov.ratio = 0.2;
        o.policy.clip_cov.cov_lb = -0.5;
        o.policy.clip_cov.cov_ub = 0.5;
        rlpo::train::StepOptions ow = o;
        o.norm = rd::with_global_counts(o.norm, mask, red);
        o.reductions = &red;
        ow.norm = rlpo::global_normalizer(b.mask, ow.norm.mode);
        rlpo::train::StepInputs<double> in;
        in.logp = lp;
        in.mask = mask;
        in.advantages = A;
        in.old_logp = olp;
        auto ss = rlpo::train::TrainingStep<double>(o)(in);
        rd::reduce(ss, red);
        rlpo::train::StepInputs<double> iw;
        iw.logp = b.logp;
        iw.mask = b.mask;
        iw.advantages = b.adv;
        iw.old_logp = b.old_logp;
        const auto sw = rlpo::train::TrainingStep<double>(ow)(iw);
        close(rep, at + "step loss" + sn, ss.loss, sw.loss, tol);
        close_rows(rep, at + "step grad_logp" + sn, ss.grad_logp, sw.grad_logp, b.row0, tol);
        close_metrics(rep, at + "step" + sn, ss.metrics, sw.metrics, tol);
    }
    return rep;
}

// A group split across ranks 0 and 1 (the first response of rank 1 carries the id of rank 0's
// last group): every rank must throw rlpo::invalid_argument naming the group. Returns the
// message ("" when nothing was thrown).
inline std::string straddling_message(const rlpo::dist::Reductions& red) {
    const Batch b = make_batch(red.rank(), red.size());
    std::vector<Index> ids = b.ids();
    if (red.rank() == 1 && !ids.empty()) {
        const Batch b0 = make_batch(0, red.size());
        ids.front() = b0.ids().back();
        for (Index k = 1; k < static_cast<Index>(ids.size()) &&
                          ids[static_cast<std::size_t>(k)] == b.ids().front();
             ++k)
            ids[static_cast<std::size_t>(k)] = ids.front();  // keep the group contiguous
    }
    try {
        rlpo::dist::grpo_advantages(b.block(b.scores), ids, {}, red);
    } catch (const rlpo::invalid_argument& e) {
        return e.what();
    }
    return "";
}

}  // namespace dist_test
